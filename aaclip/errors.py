"""Errors a user can cause. The CLIs turn them into one line on stderr and exit code 2."""


class AaclipError(Exception):
    """Base class: the message names the file, key or value and says what to do."""


class ConfigError(AaclipError):
    """A configuration file, key or value is wrong."""


class DataError(AaclipError):
    """A dataset root, metadata file, image or mask is missing or malformed."""


class CheckpointError(AaclipError):
    """A checkpoint is missing, corrupt, or belongs to another architecture or configuration."""


class BackboneError(AaclipError):
    """Weights cannot be found or loaded."""
