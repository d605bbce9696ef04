"""The armband input: an LSL stream read by one thread, which is also the daemon's hot path.

The reader thread resolves the stream (by name, type and/or source id), checks it (the daemon's
``check`` callback compares channel count and nominal rate with the model), opens an inlet with a
small buffer and then waits for the *first* sample with ``pull_sample(timeout)`` and drains
whatever else is already there with ``pull_chunk(timeout=0.0)``: a chunk is handed on as soon as
one sample is there (``pull_chunk`` with a timeout would wait for a full buffer). The thread calls
``on_data(samples, stamps, t_recv)`` itself: input -> decision -> frame runs here, with no hop to
the asyncio loop (which had cost a wake-up of the loop per chunk). A thread that fell behind
drains the backlog as one larger chunk. Events (connected, lost, ...) go to the loop; the thread
reads no sample of a stream before the loop has handled its "connected".

``on_data`` returns how many samples the consumer needs before its next window. While that is
more than :data:`BATCH_MARGIN`, the thread sleeps until all but that many should have arrived and
then takes what came as one chunk: about 4 wake-ups per 200 Hz window of 10 samples instead of
10. A sleep is sized at the nominal rate, or at the pace the samples of the last sleep showed if
that is faster (a replay at 10x), and lasts at most ``batch_max_s`` (:data:`BATCH_MAX_S`; the
daemon gives a quarter of its ``policy.stale_ms``, so that a sleep never looks like a silent
armband). The sample that completes a window is still waited for in ``pull_sample``, so a
decision is not later for it; a sample between two windows is checked up to ``batch_max_s``
later, and always before the window it belongs to is decided.

When the outlet disappears the inlet raises ``LostError`` (``recover=False``): the thread reports
it and resolves again. liblsl is imported only here, in the thread.

A stream is one armband. The reader binds to the first stream it connects to, by its source id
and host (:func:`metaemg.lsl.identity`), and afterwards follows only that armband: another stream with the
same name (a second armband in the room) is reported ("foreign") and never read, until an operator
says so (:meth:`LslSource.rebind`, ``myhand-controller ctl rebind``). Before it is bound, two
armbands that both match the configured name are "ambiguous": neither is read.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import numpy as np

from controller.config import LslConfig
from metaemg.lsl import FATAL_ONLY, StreamDesc, choose, describe, gather, identity, quiet_liblsl

MAX_CHUNK = 512  # samples drained per pull (more waits for the next pull)
PULL_WAIT_S = 0.1  # how long the thread blocks for a first sample (bounds its stop latency)
RESOLVE_SLICE_S = 0.25  # resolve in slices so that stop() is quick
BATCH_MARGIN = 2  # samples before a window that are waited for one by one (a late sender's jitter)
BATCH_MAX_S = 0.025  # the longest sleep between two takes: a quarter of the default policy.stale_ms


# event kinds sent to the loop: ("missing", text), ("mismatch", text), ("ambiguous", text),
# ("foreign", text), ("connected", desc), ("lost", text), ("error", text)
Event = tuple[str, object]


def batch_wait(needed: int | None, rate: float, max_s: float = BATCH_MAX_S) -> float:
    """How long the reader sleeps after a chunk when the consumer needs ``needed`` more samples
    before its next window (module docstring): 0 for the last :data:`BATCH_MARGIN` of them, at
    most ``max_s``."""
    if needed is None or needed <= BATCH_MARGIN or rate <= 0:
        return 0.0
    return min((needed - BATCH_MARGIN) / rate, max_s)


class LslSource:
    """Reads one LSL stream in a background thread; see the module docstring."""

    def __init__(
        self,
        config: LslConfig,
        loop: asyncio.AbstractEventLoop,
        *,
        check: Callable[[StreamDesc], str | None],
        on_data: Callable[[np.ndarray, np.ndarray, int], int | None],
        on_event: Callable[[str, object], None],
        batch_max_s: float = BATCH_MAX_S,
    ) -> None:
        """``batch_max_s``: the longest sleep between two takes (the daemon gives a quarter of its
        ``policy.stale_ms``, so that a sleep never looks like a silent armband)."""
        self.config = config
        self.batch_max_s = batch_max_s
        self._loop = loop
        self._check = check
        self._on_data = on_data
        self._on_event = on_event
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lsl-reader", daemon=True)
        self.stream: StreamDesc | None = None  # set while an inlet is open
        self.connected = False
        self.problem: str | None = "resolving"
        self.bound: tuple[str, str] | None = None  # identity() of the armband this source follows
        self.thread_id: int | None = None  # the reader's (the hot path's) native thread id, once it runs

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

    def _deliver(self, samples: np.ndarray, stamps: np.ndarray, t_recv: int) -> int | None:
        """One chunk to the consumer, in the calling thread: ``samples`` (n, C) float64,
        ``stamps`` (n,), ``t_recv`` the receive time of its first sample (time.monotonic_ns()).
        Returns the samples the consumer needs before its next window (None: no hint)."""
        return self._on_data(samples, stamps, t_recv)

    def _event(self, kind: str, detail: object, *, wait: bool = False) -> None:
        """Hand an event to the loop; ``wait``: return only once the loop has handled it (or the
        source is stopping)."""
        handled = threading.Event()

        def handle() -> None:
            try:
                self._on_event(kind, detail)
            finally:
                handled.set()

        try:
            self._loop.call_soon_threadsafe(handle)
        except RuntimeError:  # the loop is closed: we are shutting down
            return
        while wait and not handled.wait(PULL_WAIT_S) and not self._stop.is_set():
            pass

    # -- thread side -----------------------------------------------------------------------------

    def _run(self) -> None:
        self.thread_id = threading.get_native_id()
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
        """``(info, "", None)`` of the stream to read among those found, or ``(None, kind, why)``
        (:func:`metaemg.lsl.choose`)."""
        descs = [describe(info) for info in infos]
        index, kind, candidates = choose(descs, self.bound)
        if index is not None:
            return infos[index], "", None
        armbands = "; ".join(candidates)
        if kind == "foreign":
            assert self.bound is not None  # choose() says foreign only when bound
            why = (
                f"stream {descs[0].describe()} is another armband ({armbands}), not the one this daemon is bound "
                f"to (source id {self.bound[0]!r} on {self.bound[1]!r}): not read; if the armband was replaced, "
                "run: myhand-controller ctl rebind"
            )
        else:
            why = (
                f"{len(candidates)} armbands match {self.config.predicate()} ({armbands}): none is read; switch "
                "one off, or set lsl.source_id"
            )
        return None, kind, why

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
                return gather(pylsl, predicate, found)
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
            self._event("connected", desc, wait=True)  # the daemon sets up for this stream first
            buf = np.empty((MAX_CHUNK, desc.channels), dtype=inlet.np_dtype)
            pace, slept = desc.rate, 0.0  # samples per second the sleeps are sized for; the last sleep
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
                if slept:  # the samples that came during the last sleep: the stream's real pace
                    pace = max(desc.rate, n / slept, 0.9 * pace)  # a stall of the sender lowers it slowly
                slept = batch_wait(self._deliver(buf[:n].astype(np.float64), stamps, t_recv), pace, self.batch_max_s)
                if slept:
                    self._stop.wait(slept)
        except pylsl.util.LostError:
            self.problem = f"stream {desc.describe()} lost"
            self._event("lost", self.problem)
        finally:
            self.connected = False
            self.stream = None
            inlet.close_stream()
            del inlet
