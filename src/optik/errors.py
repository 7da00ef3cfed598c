"""Errors a user can cause: each says what was wrong and what to do. The CLI prints them and exits 2."""


class OptikError(Exception):
    """Base class of every error caused by user input (config, data, files, options)."""


class ConfigError(OptikError):
    """The configuration is invalid: an unknown key, a wrong type or value."""


class DataError(OptikError):
    """The data on disk does not match what the config says."""


class ImageDecodeError(DataError):
    """An image file (or byte string) cannot be decoded."""

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"cannot read image {source}: {reason}")

    def __reduce__(self):  # keep the type across DataLoader worker processes
        return (ImageDecodeError, (self.source, self.reason))


class ModelError(OptikError):
    """A model cannot be built or its weights cannot be loaded."""


class Interrupted(Exception):
    """Training stopped by SIGINT (Ctrl-C) or SIGTERM; the CLI prints the message and exits 128 + signal."""

    def __init__(self, signum: int, message: str):
        self.signum = signum
        super().__init__(message)
