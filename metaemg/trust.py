"""Directories other local users must not control: the runtime directory (the daemon's control
socket) and the state directory (patient clips, reports and models).

A directory is trusted when it is a real directory (not a symbolic link), owned by this user (or
root, where a caller allows it), and not writable by group or others: otherwise another user
could replace a socket or a model in it (a control socket another user created answered "paused"
while the hand kept moving). So is every directory above it (and above its real path, where a
parent is a symbolic link): each owned by this user or root, and not writable by group or others
unless sticky (``/tmp``: others may add entries there but not rename ours), since whoever may
rename a parent may put a directory of their own in its place. New ones are created 0700.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from metaemg.errors import ConfigError


def private_dir(path: str | os.PathLike, what: str, *, create: bool = True, allow_root: bool = False) -> Path:
    """``path`` checked as a trusted directory (created 0700 with its parents when missing and
    ``create``); ConfigError naming the path and what to do otherwise."""
    path = Path(path)
    if create:
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{what} {path}: cannot create it: {exc.strerror or exc}") from None
    check_dir(path, what, allow_root=allow_root)
    return path


def check_dir(path: Path, what: str, *, allow_root: bool = False) -> None:
    """ConfigError unless ``path`` is a trusted directory (see the module docstring)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot inspect it: {exc.strerror or exc}") from None
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(
            f"{what} {path} is a symbolic link: refusing to use it (another user could point it elsewhere)"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{what} {path} is not a directory")
    _check_parents(path, what)
    uid = os.getuid()
    if st.st_uid != uid and not (allow_root and st.st_uid == 0):
        raise ConfigError(
            f"{what} {path} belongs to uid {st.st_uid}, not to this user (uid {uid}): refusing to use "
            "it (another user could replace what is in it)"
        )
    if st.st_mode & 0o022:
        raise ConfigError(
            f"{what} {path} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}): refusing "
            f"to use it; run: chmod go-w {path}"
        )


def _check_parents(path: Path, what: str) -> None:
    """ConfigError when a directory above ``path`` could be replaced by another user."""
    path = Path(os.path.abspath(path))
    above = [*path.parents, *Path(os.path.realpath(path)).parents]
    uid = os.getuid()
    for parent in dict.fromkeys(above):
        try:
            st = os.lstat(parent)
        except OSError as exc:
            raise ConfigError(f"{what} {path}: cannot inspect {parent}: {exc.strerror or exc}") from None
        if st.st_uid not in (uid, 0):
            raise ConfigError(
                f"{what} {path}: the directory above it, {parent}, belongs to uid {st.st_uid}, neither this user "
                "nor root: refusing to use it (that user could put a directory of their own in its place)"
            )
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise ConfigError(
                f"{what} {path}: the directory above it, {parent}, is writable by other users (mode "
                f"{stat.S_IMODE(st.st_mode):04o}): refusing to use it (they could put a directory of their own in "
                "its place)"
            )


def check_socket_dir(endpoint: str, what: str = "control socket directory") -> bool:
    """Whether an ``ipc://`` socket is there; ConfigError when the directory it is in is not
    trusted (another user could have put a socket of their own there, or could later). True for
    any other transport. A client connects to an ``ipc://`` socket only once this is True: ZeroMQ
    connected earlier follows whatever socket appears at the path."""
    if not endpoint.startswith("ipc://"):
        return True
    path = Path(endpoint[len("ipc://") :])
    if not path.parent.is_dir():
        return False
    check_dir(path.parent, what, allow_root=True)
    return path.exists()
