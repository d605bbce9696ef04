"""One exception tree for the whole project.

Catch :class:`MetaEMGError` to catch everything the project raises on purpose. Each error's
``str()`` is a single line naming the file, field or frame at fault, so a command-line tool can
print it as it is.
"""

from __future__ import annotations


class MetaEMGError(Exception):
    """Root of every error MetaEMG raises on purpose."""


class DataError(MetaEMGError, ValueError):
    """A recording, task or task collection is malformed or inconsistent."""

    def __init__(self, message: str, *, path: object | None = None, row: int | None = None):
        self.path = None if path is None else str(path)
        self.row = row
        where = ""
        if self.path is not None:
            where = self.path + (f", row {row}" if row is not None else "") + ": "
        super().__init__(where + message)


class ConfigError(MetaEMGError, ValueError):
    """A configuration file or value is invalid (unknown key, wrong type, out of range)."""


class ModelError(MetaEMGError):
    """A model file is unreadable, inconsistent with its metadata, or with the input stream."""


class StorageError(MetaEMGError, OSError):
    """A file could not be written (disk full, file too large, read-only); nothing was replaced."""


class MissingDependencyError(MetaEMGError, ImportError):
    """An optional dependency needed for this command is not installed."""
