"""Plumbing shared by the command-line tools: one-line errors and exit codes."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable

from metaemg.errors import ConfigError, MetaEMGError

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def entry_point(func: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a ``main(argv)`` so that project errors become one line on stderr and exit code 2.

    Unexpected exceptions still show their traceback: those are bugs, not bad input.
    """

    @functools.wraps(func)
    def wrapper(argv: list[str] | None = None) -> int:
        prog = os.path.basename(sys.argv[0]) or func.__module__
        try:
            return int(func(argv) or 0)
        except MetaEMGError as exc:
            print(f"error: {one_line(str(exc))}", file=sys.stderr)
            return EXIT_ERROR
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED

    return wrapper


def renamed(parser, old: str, new: str) -> None:
    """Keep ``old`` working (hidden from ``--help``) for one release as the flag now spelt ``new``
    (issue 29: one spelling for one thing across the tools), with one line on stderr when used."""
    import argparse

    dest = new.lstrip("-").replace("-", "_")

    class Renamed(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            print(f"note: {old} is now {new} (the old spelling goes in the next release)", file=sys.stderr)
            setattr(namespace, dest, values)

    parser.add_argument(old, dest=dest, action=Renamed, help=argparse.SUPPRESS)


def one_line(text: str) -> str:
    """``text`` as one line: line breaks and other control characters written as escapes (``\\n``),
    so that a message carrying the sender's words (a stream name, a host name) cannot forge a line
    of its own in a log or in another program reading this one's output."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def control_request(words: list[str]) -> dict:
    """A control request from command-line words: one JSON object, or ``CMD [key=value ...]``
    (each value parsed as JSON when it is, else kept as text). Used by ``myhand-controller ctl``
    and ``metaemg-sim control``."""
    if len(words) == 1 and words[0].lstrip().startswith("{"):
        try:
            return json.loads(words[0])
        except ValueError as exc:
            raise ConfigError(f"control request is not valid JSON: {exc}") from None
    request: dict = {"cmd": words[0]}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if not sep:
            raise ConfigError(f"control request: expected key=value, got {word!r}")
        try:
            request[key] = json.loads(value)
        except ValueError:
            request[key] = value
    return request
