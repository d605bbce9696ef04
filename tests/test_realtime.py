"""controller.realtime: the scheduling the daemon asks for and the garbage collector kept off the
hot path. Real-time scheduling is asked in a child process: never in the test runner."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

from controller.config import RealtimeConfig
from controller.realtime import GEN0_THRESHOLD, GcGuard, request


def test_asking_for_real_time_says_what_was_granted():
    code = (
        "import json; from controller.config import RealtimeConfig; from controller.realtime import request, current; "
        "s = request(RealtimeConfig(priority=20)); print(json.dumps([s.to_dict(), current().policy]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    got, policy = json.loads(out.stdout)
    assert got["policy"] == policy  # what it reports is what it runs under
    if got["realtime"]:  # root, or within RLIMIT_RTPRIO
        assert (got["policy"], got["priority"], got["note"]) == ("fifo", 20, None)
    else:
        assert got["note"].startswith("SCHED_FIFO 20 not granted (") and "CPUSchedulingPolicy=fifo" in got["note"]


def test_priority_zero_asks_for_nothing():
    s = request(RealtimeConfig(priority=0))
    assert not s.realtime and s.note == "realtime.priority is 0: not asked"


def test_the_heap_is_frozen_and_collections_are_timed():
    threshold = gc.get_threshold()
    guard = GcGuard(True)
    try:
        guard.after_startup()
        assert guard.frozen == gc.get_freeze_count() > 1000 and gc.get_threshold()[0] == GEN0_THRESHOLD
        before = guard.collections
        junk = [[i] for i in range(1000)]  # young objects
        guard.tick()
        del junk
        status = guard.status()
        assert status["collections"] == before + 1 and 0 < status["max_pause_ms"] < 1000
    finally:
        guard.close()
        gc.unfreeze()
        gc.set_threshold(*threshold)
    off = GcGuard(False)
    off.after_startup()
    assert off.status()["frozen_objects"] == 0
    off.close()
