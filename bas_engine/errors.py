"""Errors the engine raises on purpose: each names the input and what is wrong with it."""
from __future__ import annotations


class BASError(Exception):
    """Base class of every error the engine raises for bad input or a bad file.

    ``field`` is the name of the input the error is about, as data (a TrainConfig field such as
    ``"resolution"``, or ``"image"``, ``"masks"``, ``"names"``, ``"initializers"``, ``"tokens"``, ``"pack"``),
    so callers (the CLI, the nodes) map it onto their own input names without parsing the message.
    ``item`` is the position within that input when it is a list (the mask index), else None.
    """

    def __init__(self, message: str, *, field: str | None = None, item: int | None = None):
        super().__init__(message)
        self.field = field
        self.item = item


class InputError(BASError, ValueError):
    """A scene, mask, name or setting given by the caller is unusable."""


class ModelError(BASError):
    """A model folder or checkpoint cannot be used (unknown family, missing part, unreadable)."""


class PackError(BASError):
    """A concept pack file is missing, corrupt, of another format version or for another base model."""


class Cancelled(BASError):
    """Training was cancelled through the callbacks; nothing was written."""
