"""What ``metaemg-train`` says while it runs: to the terminal and, the same lines timestamped, to
the run directory's ``train.log``; and each phase's progress with an ETA.

Hydra's job logging puts a file handler (``<run dir>/<job name>.log``, ``train.log`` here) on the
root logger before the run starts, so the file exists; but it only receives :mod:`logging`
records, and the run used to ``print()``, so it stayed empty. The run now says everything through
:data:`LOG`. Its records do not propagate to the root logger (Hydra's console handler would print
each line a second time, prefixed), so :func:`run_log` gives it its own two handlers for the run:
the terminal (the message as ``print`` writes it: info to stdout, warnings and errors to stderr)
and ``train.log`` (appended to: Hydra's handler writes other libraries' records there too).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LOG = logging.getLogger("metalearn.run")
LOG.propagate = False
LOG.setLevel(logging.INFO)
LOG_FILE = "train.log"
FILE_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"


class _Terminal(logging.Handler):
    """The terminal's copy: the bare message, to the ``sys.stdout`` / ``sys.stderr`` of the moment
    (a test's captured streams included)."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        try:
            print(record.getMessage(), file=stream, flush=True)
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def run_log(run_dir: Path | None, *, lead: bool = True) -> Iterator[Path | None]:
    """While open, :data:`LOG` writes to the terminal and to ``run_dir/train.log`` (yielded; None
    without ``run_dir``). A process other than the lead (``torchrun`` rank > 0) writes no file and
    shows warnings and errors only."""
    terminal = _Terminal(logging.INFO if lead else logging.WARNING)
    handlers: list[logging.Handler] = [terminal]
    path = None
    if run_dir is not None and lead:
        path = Path(run_dir) / LOG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(path, encoding="utf-8")
        file.setFormatter(logging.Formatter(FILE_FORMAT))
        handlers.append(file)
    for h in handlers:
        LOG.addHandler(h)
    try:
        yield path
    finally:
        for h in handlers:
            LOG.removeHandler(h)
            h.close()


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(int(round(seconds)), 60)
    return f"{minutes} min {s:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class Progress:
    """A phase's progress as lines ``PHASE: DONE/TOTAL UNIT (P%), T elapsed, ETA T | DETAIL`` on
    :data:`LOG`: at the first step, at the last (``... done in T``), and between them whenever
    ``every`` seconds have passed since the last line, so a phase is never silent for longer
    than that or one step. The ETA assumes the remaining work goes at the pace of the done work;
    where steps differ in cost, ``total_weight`` and each step's ``weight`` (e.g. its inner
    steps) measure that work."""

    def __init__(self, phase: str, total: int, unit: str, *, total_weight: float | None = None, every: float = 2.0):
        self.phase, self.total, self.unit, self.every = phase, total, unit, every
        self.total_weight = float(total if total_weight is None else total_weight)
        self.done, self.weight, self.lines = 0, 0.0, 0
        self.start = self.last = time.monotonic()

    def advance(self, detail: str = "", *, weight: float = 1.0) -> None:
        self.done += 1
        self.weight += weight
        now = time.monotonic()
        final = self.done >= self.total
        if not (self.lines == 0 or final or now - self.last >= self.every):
            return
        elapsed = now - self.start
        line = f"{self.phase}: {self.done}/{self.total} {self.unit} ({100 * self.done / max(self.total, 1):.0f}%), "
        if final:
            line += f"done in {_duration(elapsed)}"
        else:
            left = max(self.total_weight - self.weight, 0.0)
            eta = _duration(elapsed / self.weight * left) if self.weight > 0 else "unknown"
            line += f"{_duration(elapsed)} elapsed, ETA {eta}"
        LOG.info(line + (f" | {detail}" if detail else ""))
        self.last, self.lines = now, self.lines + 1
