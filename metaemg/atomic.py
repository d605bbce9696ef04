"""Atomic file writes: a reader sees the old file or the new one, never half of one.

``mode`` sets the file's permissions from its creation (the temporary file already has them);
:data:`PRIVATE` is for patient data (calibration clips, reports, a patient's models)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from metaemg.errors import StorageError

_UMASK = os.umask(0)
os.umask(_UMASK)
PRIVATE = 0o600  # patient data: the service's user only


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", *, perms: int | None = None, **open_kw) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``.
    ``perms``: the file's mode bits (default: the usual ``0666 & ~umask``).

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.chmod(tmp, 0o666 & ~_UMASK if perms is None else perms)  # mkstemp makes 0600
    try:
        with os.fdopen(fd, mode, **open_kw) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, StorageError):  # disk full, file too large, ...
            raise StorageError(
                f"cannot write {path}: {exc.strerror or exc}; the old file (if any) is untouched"
            ) from None
        raise


def write_bytes(path: str | os.PathLike, data: bytes, *, perms: int | None = None) -> None:
    with atomic_write(path, "wb", perms=perms) as fh:
        fh.write(data)


def write_text(path: str | os.PathLike, text: str, *, perms: int | None = None) -> None:
    with atomic_write(path, "w", perms=perms, encoding="utf-8", newline="") as fh:
        fh.write(text)
