"""The daemon's hot path against the rest of the device PC: real-time scheduling and the garbage
collector (the ``realtime`` section of the configuration; docs/controller.md, "Configuration").

- **Scheduling.** A device PC is never idle during a session (the console, a browser, a
  calibration adapting, logging). Under the default policy a busy core delays the daemon by a
  scheduler slice or more; under ``SCHED_FIFO`` it runs as soon as its data arrives and keeps the
  core until it waits again (a few hundred microseconds a window). The service unit asks for it
  (``CPUSchedulingPolicy=fifo``); otherwise the daemon asks itself (``realtime.priority``; Linux
  grants it to root or within ``RLIMIT_RTPRIO``: ``LimitRTPRIO=``). Either way the log says which
  policy it runs under, and why not real-time when it was not granted. The kernel keeps 5 % of
  every second for other work (``sched_rt_runtime_us``), and the service's watchdog restarts a
  daemon that stops answering.
- **Garbage collector.** A collection of the older generations scans every live object (the
  model, the libraries: about a hundred thousand) and can take milliseconds; it runs whenever
  enough allocations happened, which is on the hot path. After start-up the daemon collects once,
  freezes what is alive (``gc.freeze``: never scanned again), raises the threshold of the young
  generation so that a collection is rare, and collects the young generation itself in the
  control loop, between windows (:meth:`GcGuard.tick`). Every collection is timed
  (``gc.callbacks``): the status reports their count and the longest since start-up.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass

from controller.config import RealtimeConfig

GEN0_THRESHOLD = 50_000  # allocations before an automatic young collection (Python's default: 700)


@dataclass(frozen=True)
class Scheduling:
    policy: str  # "fifo", "rr", "other", ...
    priority: int
    note: str | None  # why it is not real-time, when it is not

    @property
    def realtime(self) -> bool:
        return self.policy in ("fifo", "rr")

    def to_dict(self) -> dict:
        return {"policy": self.policy, "priority": self.priority, "realtime": self.realtime, "note": self.note}


_POLICIES = {
    getattr(os, name): label
    for name, label in (("SCHED_OTHER", "other"), ("SCHED_FIFO", "fifo"), ("SCHED_RR", "rr"), ("SCHED_BATCH", "batch"))
    if hasattr(os, name)
}


def current() -> Scheduling:
    if not hasattr(os, "sched_getscheduler"):
        return Scheduling("unknown", 0, "this system has no sched_getscheduler")
    policy = os.sched_getscheduler(0)
    return Scheduling(_POLICIES.get(policy, str(policy)), os.sched_getparam(0).sched_priority, None)


def request(config: RealtimeConfig) -> Scheduling:
    """Run under SCHED_FIFO at ``config.priority`` unless the service gave it already (or the
    configuration asks for nothing); what the process runs under in the end, and why."""
    now = current()
    if now.realtime or config.priority == 0 or not hasattr(os, "sched_setscheduler"):
        note = "realtime.priority is 0: not asked" if config.priority == 0 and not now.realtime else now.note
        return Scheduling(now.policy, now.priority, note)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(config.priority))
    except OSError as exc:
        return Scheduling(
            now.policy,
            now.priority,
            f"SCHED_FIFO {config.priority} not granted ({exc.strerror or exc}): under CPU load a decision can be "
            "late; let the service have it (CPUSchedulingPolicy=fifo, or LimitRTPRIO= for the daemon to ask)",
        )
    return current()


class GcGuard:
    """The garbage collector kept off the hot path (module docstring)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.collections = 0
        self.max_pause_ms = 0.0
        self.frozen = 0
        self._t0 = 0.0
        gc.callbacks.append(self._timed)

    def _timed(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.collections += 1
            self.max_pause_ms = max(self.max_pause_ms, (time.perf_counter() - self._t0) * 1000)

    def after_startup(self) -> None:
        if not self.enabled:
            return
        gc.collect()
        gc.freeze()
        self.frozen = gc.get_freeze_count()
        gc.set_threshold(GEN0_THRESHOLD, *gc.get_threshold()[1:])
        self.collections, self.max_pause_ms = 0, 0.0  # from here on: what the running daemon sees

    def tick(self) -> None:
        """Between windows (the control loop): collect the young generation, which is short."""
        if self.enabled:
            gc.collect(0)

    def status(self) -> dict:
        return {
            "frozen_objects": self.frozen,
            "collections": self.collections,
            "max_pause_ms": round(self.max_pause_ms, 3),
        }

    def close(self) -> None:
        if self._timed in gc.callbacks:
            gc.callbacks.remove(self._timed)
