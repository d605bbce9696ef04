"""bench.latency's pure helpers: the /proc CPU parsing, the "late" rule, the simulator's expiries."""

from __future__ import annotations

from bench.latency import cpu_percent, cpu_ticks, late_count, stats, watchdog_trips


def test_cpu_ticks_counts_fields_after_the_command_name():
    # the command name may hold spaces and parentheses; utime (14) = 250, stime (15) = 50
    stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194304 1000 0 0 0 250 50 0 0 20 0 5 0 100 0 0"
    assert cpu_ticks(stat) == 300


def test_cpu_percent_of_one_core():
    assert cpu_percent(100, 160, 20.0, 100) == 3.0  # 0.6 s of CPU in 20 s
    assert cpu_percent(0, 400, 2.0, 100) == 200.0  # two cores busy


def test_late_means_more_than_one_decision_period():
    assert late_count([], 50.0) == 0
    assert late_count([0.4, 49.9, 50.0, 50.01, 120.0], 50.0) == 2  # exactly one period is on time


def test_watchdog_trips_are_expiries_to_safe_in_the_interval():
    records = [
        {"t": 1.0, "event": "state", "state": "safe", "reason": "ttl"},  # before the interval
        {"t": 2.0, "event": "state", "state": "safe", "reason": "ttl"},
        {"t": 3.0, "event": "state", "state": "safe", "reason": "watchdog"},
        {"t": 3.5, "event": "state", "state": "safe", "reason": "stop"},  # the host's STOP: no expiry
        {"t": 4.0, "event": "state", "state": "open", "prev": "safe", "reason": None},
        {"t": 4.5, "event": "command", "seq": 3},
    ]
    assert watchdog_trips(records, 1.5, 5.0) == {"ttl": 1, "watchdog": 1}


def test_stats_has_p999():
    s = stats(list(range(1, 1001)))
    assert s["n"] == 1000 and s["max"] == 1000 and 999 <= s["p999"] <= 1000
    assert stats([])["p999"] is None
