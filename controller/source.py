"""The armband input: an LSL stream read by one thread that hands chunks to the asyncio loop.

The reader thread resolves the stream (by name, type and/or source id), checks it (the daemon's
``check`` callback compares channel count and nominal rate with the model), opens an inlet with a
small buffer and then waits for the *first* sample with ``pull_sample(timeout)`` and drains
whatever else is already there with ``pull_chunk(timeout=0.0)``: a chunk reaches the loop as soon
as one sample is there (``pull_chunk`` with a timeout would wait for a full buffer). Chunks are
queued and the loop is woken once with ``call_soon_threadsafe``; :meth:`LslSource.take` gives the
loop everything queued since, so a loop that fell behind sees one larger chunk, not a backlog.

When the outlet disappears the inlet raises ``LostError`` (``recover=False``): the thread reports
it and resolves again. liblsl is imported only here, in the thread.

A stream is one armband. The reader binds to the first stream it connects to, by its source id
and host (:func:`identity`), and afterwards follows only that armband: another stream with the
same name (a second armband in the room) is reported ("foreign") and never read, until an operator
says so (:meth:`LslSource.rebind`, ``myhand-controller ctl rebind``). Before it is bound, two
armbands that both match the configured name are "ambiguous": neither is read.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from controller.config import LslConfig
from metaemg.lsl import FATAL_ONLY, StreamDesc, describe, quiet_liblsl

MAX_CHUNK = 512  # samples drained per pull (more waits for the next pull)
PULL_WAIT_S = 0.1  # how long the thread blocks for a first sample (bounds its stop latency)
RESOLVE_SLICE_S = 0.25  # resolve in slices so that stop() is quick
GATHER_S = 0.2  # once one stream is found, how long to look for a second one with the same name


# event kinds sent to the loop: ("missing", text), ("mismatch", text), ("ambiguous", text),
# ("foreign", text), ("connected", desc), ("lost", text), ("error", text)
Event = tuple[str, object]


def identity(desc: StreamDesc) -> tuple[str, str]:
    """Which armband a stream is: its source id and host (its uid when it has no source id, which
    then changes when the sender restarts)."""
    return (desc.source_id or f"uid {desc.uid}", desc.hostname)


def _who(desc: StreamDesc) -> str:
    sid, host = identity(desc)
    return f"source id {sid!r} on {host}"


class LslSource:
    """Reads one LSL stream in a background thread; see the module docstring."""

    def __init__(
        self,
        config: LslConfig,
        loop: asyncio.AbstractEventLoop,
        *,
        check: Callable[[StreamDesc], str | None],
        on_data: Callable[[], None],
        on_event: Callable[[str, object], None],
    ) -> None:
        self.config = config
        self._loop = loop
        self._check = check
        self._on_data = on_data
        self._on_event = on_event
        self._pending: deque[tuple[np.ndarray, np.ndarray, int]] = deque()
        self._wake_scheduled = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lsl-reader", daemon=True)
        self.stream: StreamDesc | None = None  # set while an inlet is open
        self.connected = False
        self.problem: str | None = "resolving"
        self.bound: tuple[str, str] | None = None  # identity() of the armband this source follows

    def rebind(self) -> tuple[str, str] | None:
        """Forget the armband this source is bound to (the operator's decision): the next stream
        that matches and is alone is taken. Returns the identity it was bound to."""
        was, self.bound = self.bound, None
        return was

    # -- loop side -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 0.3) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def take(self) -> tuple[np.ndarray, np.ndarray, int] | None:
        """Everything queued since the last call, as one chunk: ``(samples (n, C) float64,
        timestamps (n,), receive time of the first part in time.monotonic_ns())``."""
        self._wake_scheduled = False  # before draining: a chunk added now schedules a new wake
        pending = self._pending
        if not pending:
            return None
        first = pending.popleft()
        if not pending:
            return first
        parts = [first]
        while pending:
            parts.append(pending.popleft())
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), first[2])

    def _deliver(self, samples: np.ndarray, stamps: np.ndarray, t_recv: int) -> None:
        self._pending.append((samples, stamps, t_recv))
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self._loop.call_soon_threadsafe(self._on_data)

    def _event(self, kind: str, detail: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self._on_event, kind, detail)
        except RuntimeError:  # the loop is closed: we are shutting down
            pass

    # -- thread side -----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            import pylsl

            quiet_liblsl(pylsl, FATAL_ONLY)
            while not self._stop.is_set():
                infos = self._resolve(pylsl)
                if not infos:
                    continue
                info, kind, problem = self._choose(infos)
                if info is None:
                    self.problem = problem
                    self._event(kind, problem)
                    self._stop.wait(self.config.retry_s)
                    continue
                desc = describe(info)
                problem = self._check(desc)
                if problem is not None:
                    self.problem = f"stream mismatch: {problem}"
                    self._event("mismatch", problem)
                    self._stop.wait(self.config.retry_s)
                    continue
                self._read(pylsl, info, desc)
        except Exception as exc:
            self._event("error", f"{type(exc).__name__}: {exc}")

    def _choose(self, infos) -> tuple[object | None, str, str | None]:
        """``(info, "", None)`` of the stream to read among those found, or ``(None, kind, why)``."""
        descs = [(info, describe(info)) for info in infos]
        if self.bound is not None:
            mine = [info for info, d in descs if identity(d) == self.bound]
            if mine:
                return mine[0], "", None
            others = "; ".join(sorted({_who(d) for _, d in descs}))
            return (
                None,
                "foreign",
                (
                    f"stream {descs[0][1].describe()} is another armband ({others}), not the one "
                    f"this daemon is bound to (source id {self.bound[0]!r} on {self.bound[1]}): "
                    "not read; if the armband was replaced, run: myhand-controller ctl rebind"
                ),
            )
        armbands = sorted({_who(d) for _, d in descs})
        if len(armbands) > 1:
            return (
                None,
                "ambiguous",
                (
                    f"{len(armbands)} armbands match {self.config.predicate()} ({'; '.join(armbands)}): "
                    "none is read; switch one off, or set lsl.source_id"
                ),
            )
        return descs[0][0], "", None

    def _resolve(self, pylsl) -> list:
        """Every stream that matches (one search, then :data:`GATHER_S` for a second one)."""
        cfg = self.config
        predicate = cfg.predicate()
        deadline = time.monotonic() + cfg.resolve_timeout_s
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            found = pylsl.resolve_bypred(predicate, 1, min(left, RESOLVE_SLICE_S))
            if found:
                more = pylsl.resolve_bypred(predicate, 2, GATHER_S)
                return list({info.uid(): info for info in [*found, *more]}.values())
        if not self._stop.is_set():
            self.problem = f"no LSL stream matching {predicate}"
            self._event("missing", self.problem)
            self._stop.wait(cfg.retry_s)
        return []

    def _read(self, pylsl, info, desc: StreamDesc) -> None:
        flags = pylsl.proc_clocksync if self.config.clock_sync else pylsl.proc_none
        inlet = pylsl.StreamInlet(info, max_buflen=self.config.max_buffer_s, recover=False, processing_flags=flags)
        try:
            try:
                inlet.open_stream(timeout=self.config.resolve_timeout_s)
            except (pylsl.util.TimeoutError, pylsl.util.LostError) as exc:
                # not a new loss: typically a resolve that still returned an outlet that just
                # vanished (or has not come back yet); the thread resolves again
                self.problem = f"cannot open stream {desc.describe()}: {exc}"
                self._event("missing", self.problem)
                return
            self.stream, self.connected, self.problem = desc, True, None
            self.bound = identity(desc)
            self._event("connected", desc)
            buf = np.empty((MAX_CHUNK, desc.channels), dtype=inlet.np_dtype)
            rest = buf[1:]
            while not self._stop.is_set():
                sample, stamp = inlet.pull_sample(timeout=PULL_WAIT_S)
                if sample is None:
                    continue
                t_recv = time.monotonic_ns()
                buf[0] = sample
                _, more = inlet.pull_chunk(timeout=0.0, max_samples=MAX_CHUNK - 1, dest_obj=rest)
                n = 1 + len(more)
                stamps = np.empty(n)
                stamps[0] = stamp
                stamps[1:] = more
                self._deliver(buf[:n].astype(np.float64), stamps, t_recv)
        except pylsl.util.LostError:
            self.problem = f"stream {desc.describe()} lost"
            self._event("lost", self.problem)
        finally:
            self.connected = False
            self.stream = None
            inlet.close_stream()
            del inlet
