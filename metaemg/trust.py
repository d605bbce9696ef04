"""Directories other local users must not control: the runtime directory (the daemon's control
socket) and the state directory (patient clips, reports and models).

A directory is trusted when it is a real directory (not a symbolic link), owned by this user (or
root, where a caller allows it), and not writable by group or others: otherwise another user
could replace a socket or a model in it (a control socket another user created answered "paused"
while the hand kept moving). New ones are created 0700.
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
