"""Typed configuration from one explicit YAML file: the one mechanism of the device side's tools
(the controller's and the calibration tool's configs). Sections are frozen dataclasses derived
from :class:`Section`, with simple field types (bool, int, float, str, or ``X | None``) and
their rules in :meth:`Section.check`, which runs whenever one is built (from a file, by
``dataclasses.replace`` for a command-line override, or in code). Every problem is one
ConfigError naming the dotted key: ``KEY: PROBLEM, got VALUE``."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar

from metaemg.errors import ConfigError


def require(ok: bool, key: str, problem: str, value: object) -> None:
    """The rule of every section: ConfigError ``KEY: PROBLEM, got VALUE`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}: {problem}, got {value!r}")


ENDPOINTS = {"tcp": "tcp://HOST:PORT", "ipc": "ipc://PATH"}  # the ZeroMQ transports the tools use


def require_endpoint(value: str | None, key: str, schemes: tuple[str, ...] = ("tcp", "ipc"), why: str = "") -> str:
    """The one rule for a ZeroMQ endpoint key: null, or one of ``schemes`` with an address;
    returns the scheme ("" for null). ``why``: said after the forms (a socket that is local only)."""
    if value is None:
        return ""
    scheme, sep, rest = str(value).partition("://")
    forms = " or ".join(ENDPOINTS[s] for s in schemes)
    require(bool(sep) and scheme in schemes and rest != "", key, f"must be {forms}{why} or null", value)
    return scheme


def require_range(value: object, key: str, lo: float, hi: float, what: str = "a number") -> None:
    """The one rule for a numeric key: a number (not a bool) in ``[lo, hi]``."""
    require(is_number(value) and lo <= value <= hi, key, f"must be {what} in [{lo:g}, {hi:g}]", value)  # type: ignore[operator]


class Section:
    """Base of a configuration section (a frozen dataclass): :meth:`check` states its rules with
    :func:`require`, under the section's dotted key :attr:`KEY`."""

    KEY: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.check(self.KEY)

    def check(self, key: str) -> None:
        """Raise ConfigError for a value this section does not accept (``key``: its dotted key)."""


def is_number(value: object) -> bool:
    """A finite int or float, not a bool (YAML's true would otherwise pass as 1)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_yaml(path: str | os.PathLike) -> Any:
    """The parsed document; a missing, unreadable or malformed file is one ConfigError line."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file (byte {exc.start} is not UTF-8)") from None
    try:
        return yaml.load(text, Loader=_loader())
    except _DuplicateKey as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None


class _DuplicateKey(Exception):
    pass


_LOADER = None
# YAML 1.2 floats: PyYAML (YAML 1.1) reads 1e-1 or 5E3 (no dot) as text; a config means a number
_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


def _loader():
    """yaml.SafeLoader that refuses a key given twice in one mapping (the second would silently
    win) and reads 1e-1 as a number."""
    global _LOADER
    if _LOADER is None:
        import yaml

        class Loader(yaml.SafeLoader):
            def construct_mapping(self, node, deep=False):
                seen: dict = {}
                for key_node, _ in node.value:
                    key = self.construct_object(key_node, deep=True)
                    if key in seen:
                        raise _DuplicateKey(
                            f"key {key!r} is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1})"
                        )
                    seen[key] = key_node.start_mark.line
                return super().construct_mapping(node, deep)

        Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789"))
        _LOADER = Loader
    return _LOADER


def coerce(hint: Any, value: Any, key: str) -> Any:
    """Check ``value`` against a simple type hint (bool, int, float, str, X | None)."""
    args = typing.get_args(hint)
    optional = isinstance(hint, types.UnionType) and type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: must not be null")
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, got {value!r}")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be an integer, got {value!r}")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{key}: must be a number, got {value!r}")
        return float(value)
    if base is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string, got {value!r}")
        return value
    raise AssertionError(f"unsupported config type {hint!r}")  # pragma: no cover - definition error


def section(cls: type, data: Any, name: str = "") -> Any:
    """Build the dataclass ``cls`` from the mapping ``data`` of section ``name`` (dotted), or of the
    document's top level for ``""``. A field typed as a dataclass is a section of its own."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    only_sections = all(dataclasses.is_dataclass(hints[k]) for k in known)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        if name:
            raise ConfigError(f"{name}: must be a mapping, got {type(data).__name__}")
        of = " of sections" if only_sections else ""
        raise ConfigError(f"the top level must be a mapping{of}, got {type(data).__name__}")
    values = {}
    for key, value in data.items():
        path = f"{name}.{key}" if name else key
        if key not in known:
            listed = f"known in {name}" if name else "known sections" if only_sections else "known"
            raise ConfigError(f"unknown key '{path}' ({listed}: {', '.join(known)})")
        hint = hints[key]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):  # a hint is a class, never an instance
            values[key] = section(hint, value, path)
        else:
            values[key] = coerce(hint, value, path)
    return cls(**values)


def document(cls: type, data: Any, where: str) -> Any:
    """The dataclass ``cls`` from a whole parsed file ``where``: :func:`section` at the top level,
    every error prefixed with ``where``."""
    try:
        return section(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
