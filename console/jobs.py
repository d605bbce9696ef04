"""Calibration from the page: ``metaemg-calibrate`` as a child process, one at a time.

The console never adapts a model itself: it runs the same command a clinician would type (so the
gate, the store, the hot swap and their messages are the tool's own) and keeps its output lines
(shown as text, never parsed). The result document comes through a channel nothing else writes:
``--result-file`` in a directory private to the console (0700), read once the child has exited;
a line of output that looks like JSON is only a line. A live calibration's cues reach the page
through the daemon's monitor stream (``cues.via_daemon``), like the patient's armband.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

from calibration.gate import EXIT_REFUSED

KINDS = ("calibrate", "install", "rollback")


class Busy(Exception):
    """A calibration job is running already."""


class Job:
    """One ``metaemg-calibrate`` run: ``kind`` (calibrate, install, rollback), its lines and result."""

    def __init__(self, kind: str, argv: list[str], patient: str | None, result_file: Path) -> None:
        self.kind, self.argv, self.patient = kind, [*argv, "--result-file", str(result_file)], patient
        self.result_file = result_file
        self.state = "running"  # running, done (exit 0), refused (exit 3: the gate said no), failed, cancelled
        self.lines: deque[str] = deque(maxlen=200)
        self.result: dict | None = None
        self.returncode: int | None = None
        self.started_wall = time.time()
        self.ended_wall: float | None = None
        self._proc: asyncio.subprocess.Process | None = None

    async def run(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert self._proc.stdout is not None  # PIPE
        async for raw in self._proc.stdout:
            self.lines.append(raw.decode("utf-8", "replace").rstrip())
        self.returncode = await self._proc.wait()
        self.ended_wall = time.time()
        self.result = _read_result(self.result_file)
        if self.state == "cancelled":
            return
        if self.returncode == 0:
            self.state = "done"
        elif self.returncode == EXIT_REFUSED and self.result is not None and "gate" in self.result:
            self.state = "refused"
        else:
            self.state = "failed"

    def cancel(self) -> bool:
        """Interrupt a running job as Ctrl-C would (the tool keeps the partial clip)."""
        if self._proc is None or self.returncode is not None:
            return False
        self.state = "cancelled"
        with contextlib.suppress(ProcessLookupError):
            self._proc.send_signal(signal.SIGINT)
        return True

    def to_dict(self) -> dict:
        error = None
        if self.state == "failed":
            error = (self.result or {}).get("error") or (self.lines[-1] if self.lines else "no output")
        return {
            "kind": self.kind,
            "state": self.state,
            "patient": self.patient,
            "started_wall": self.started_wall,
            "ended_wall": self.ended_wall,
            "returncode": self.returncode,
            "result": self.result,
            "error": error,
            "lines": list(self.lines)[-12:],
        }


def _read_result(path: Path) -> dict | None:
    """The child's result document (None when it wrote none: it died, or was interrupted early)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
    return doc if isinstance(doc, dict) else None


class Jobs:
    """The console's calibration jobs: at most one runs; every one is kept for the session report.
    ``common``: the arguments every run gets (control endpoint, state directory, configuration)."""

    def __init__(self, common: list[str], python: str | None = None) -> None:
        self.common = common
        self.python = python or sys.executable
        self.history: list[Job] = []
        self._task: asyncio.Task | None = None
        self._results = Path(tempfile.mkdtemp(prefix="metaemg-console-"))  # 0700: only this user writes there

    @property
    def current(self) -> Job | None:
        return self.history[-1] if self.history else None

    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self, kind: str, args: list[str], patient: str | None) -> Job:
        if kind not in KINDS:
            raise ValueError(f"unknown job {kind!r}")
        if self.running():
            raise Busy("a calibration is running; wait for it or cancel it")
        argv = [self.python, "-m", "calibration.cli", *self.common, *args]
        job = Job(kind, argv, patient, self._results / f"result-{len(self.history)}.json")
        self.history.append(job)
        self._task = asyncio.get_running_loop().create_task(job.run(), name=f"calibrate-{kind}")
        return job

    async def close(self) -> None:
        job = self.current
        if job is not None and self.running():
            job.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._task), 10)  # type: ignore[arg-type]
        shutil.rmtree(self._results, ignore_errors=True)
