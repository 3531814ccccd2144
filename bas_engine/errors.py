"""Errors the engine raises on purpose: each names the input and what is wrong with it."""


class BASError(Exception):
    """Base class of every error the engine raises for bad input or a bad file."""


class InputError(BASError, ValueError):
    """A scene, mask, name or setting given by the caller is unusable."""


class ModelError(BASError):
    """A model folder or checkpoint cannot be used (unknown family, missing part, unreadable)."""


class PackError(BASError):
    """A concept pack file is missing, corrupt, of another format version or for another base model."""


class Cancelled(BASError):
    """Training was cancelled through the callbacks; nothing was written."""
