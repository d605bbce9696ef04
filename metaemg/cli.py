"""Plumbing shared by the command-line tools: one-line errors and exit codes."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable

from metaemg.errors import MetaEMGError

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
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED

    return wrapper
