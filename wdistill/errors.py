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


class BadImages(ConfigError):
    """Images that cannot be read (truncated, empty, not an image) under ``data.on_bad_image: error``;
    the message lists every bad file found so far and the fixes. Exit 2."""


class Preempted(RuntimeError):
    """A stop signal (SIGTERM, SIGUSR1, ...) ended the run after its checkpoint was written; the same
    command with ``--resume`` (or ``--auto-resume``) continues it. Exit 75 (EX_TEMPFAIL: try again)."""


class StorageError(OSError):
    """A run file could not be written: the disk is full, over quota or read-only, or the file is
    larger than the process may write. The previous file is untouched; the message names the path,
    the space needed and the fix. Exit 74 (EX_IOERR)."""


class PeerLost(RuntimeError):
    """Another process of a torchrun job died or stopped, so a collective failed here: not a bug of
    this process. torchrun restarts the job (``--max-restarts``), which resumes by itself. Exit 1."""
