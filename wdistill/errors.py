"""The one error type for input a user can fix: every layer raises it, the CLI prints it without a
traceback. It lives here, below every other module, so data/ and models/ need not import the engine."""


class ConfigError(ValueError):
    """A configuration that cannot be run; the message names the key and the fix."""
