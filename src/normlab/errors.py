"""The one exception type users see for bad input.

Every message names the offending key (or file) and the fix, on one line, so the command-line entry
points can print it as ``normlab: error: <message>`` and exit non-zero without a traceback.
"""


class ConfigError(ValueError):
    """Bad configuration or missing input: the message names the key and how to fix it."""


class DataError(ConfigError):
    """A data set could not be found, downloaded or verified; the message says how to provide it."""


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became non-finite; no checkpoint was written after that step."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, permissions); the previous one is intact."""
