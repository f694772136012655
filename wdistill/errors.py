"""Every error class of wdistill, in one place below every other module.

The command line prints each of them as one paragraph without a traceback and exits with the code
named here (``wdistill.cli``); ``--debug`` adds the traceback.
"""


class ConfigError(ValueError):
    """A configuration or input that cannot be run; the message names the key and the fix. Exit 2."""


class FileLoadError(ValueError):
    """A file could not be loaded safely; the message names the file, the reason and the fix. Exit 2."""


class FetchError(ValueError):
    """A published teacher could not be fetched or verified; the message says what to do. Exit 2."""


class NonFiniteLoss(RuntimeError):
    """The loss or its gradient became NaN or inf; the message names the step, the terms and their
    weights, and what to change. Exit 3."""


class RunBusy(RuntimeError):
    """Another live process is training this run (raised instead of waiting when asked not to wait)."""
