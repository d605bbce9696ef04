"""Soak: the real chain (replay outlet -> myhand-controller -> orthosis simulator on a pty) for a
long run, recordings replayed faster than real time.

    python -m bench.soak                         # 1 minute at 10x (10 minutes of data)
    python -m bench.soak --minutes 6 --speed 10  # an hour of data: the documented target run
    python -m bench.soak --minutes 2 --json
    python -m bench.soak --minutes 6 --speed 10 --load 2   # beside two CPU-bound processes
    python -m bench.soak --minutes 6 --speed 10 --load 2 --peers-rt   # the stand-ins real-time

Recordings: every session of the Myo dataset's subject Male13 (or ``--source``), concatenated and
looped; synthetic EMG without the dataset. The outlet announces the recording's own rate (the
daemon checks it) and pushes ``speed`` times faster, one sample per push.

Reported: the daemon's resident memory (after a warm-up, at the end, growth, and the slope per
hour of data), its open file descriptors, samples pushed vs received and windows expected vs
evaluated (both from the moment the daemon runs), skipped windows, decisions without a command,
commands accepted by the simulator, state changes (there should be none after start-up), and the
daemon's latency (chunk received -> COMMAND written) per tenth of the run, to show drift.
Target: an hour of data at 10x with memory growth < 10 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.latency import PEER_PRIORITY, rss_kb
from rig.processes import Daemon, Sim, Sub, realtime, unique_name

REPO = Path(__file__).resolve().parents[1]


def load_recordings(source: str | None) -> tuple[np.ndarray, float, str]:
    from rig.replay import default_myo_root, load_source

    if source:
        rec = load_source(source)
        return rec.emg, rec.sample_rate, source
    root = default_myo_root()
    if (root / "EvaluationDataset").is_dir():
        from metalearn.myo import build_recording, find_sessions

        recs = [build_recording(s) for s in find_sessions(root) if s.subject == "Male13"]
        return np.concatenate([r.emg for r in recs]), recs[0].sample_rate, f"myo:Male13 ({len(recs)} sessions)"
    rec = load_source("synth")
    return rec.emg, rec.sample_rate, "synth"


def fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


@dataclass
class Watched:
    """What one soak saw of the daemon: memory and fds over time, latency by tenth of the run,
    decisions and state changes, and the counters at its start and end."""

    samples: list[dict] = field(default_factory=list)
    lat_slices: list[list[float]] = field(default_factory=lambda: [[] for _ in range(10)])
    decisions: int = 0
    no_command: int = 0
    state_events: int = 0
    reasons: Counter = field(default_factory=Counter)  # state changes after start-up, by state and reason
    pushed: int = 0
    first: dict = field(default_factory=dict)  # the counters once running
    final: dict = field(default_factory=dict)
    status: dict = field(default_factory=dict)
    rc: int | None = None
    exit_s: float | None = None


def run(
    minutes: float, speed: float, source: str | None, sample_s: float = 2.0, load: int = 0, peers_rt: bool = False
) -> dict:
    from bench.latency import Load
    from metaemg.modelfile import default_model_path
    from rig.replay import Replay

    emg, rate, label = load_recordings(source)
    duration = minutes * 60
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        work = Path(tmp)
        busy = Load(work, busy=load).start()  # for the whole soak, from before the daemon starts
        # peers_rt: the stand-ins of the hardware run real-time where this machine grants it: this
        # process (the armband's replay, in a thread started below, and the monitor's subscriber)
        # and the simulator (the orthosis's microcontroller), at FIFO 10, below the daemon's 20
        # (as bench.latency --peers-rt)
        replay_rt = realtime(os.getpid(), PEER_PRIORITY) if peers_rt else False
        sim = Sim(work)
        sim_rt = realtime(sim.proc.pid, PEER_PRIORITY) if peers_rt else False
        name = unique_name("soak-emg")
        replay = Replay(emg, None, rate, name=name, loop=True, speed=speed, data_time=speed != 1).start()
        daemon = Daemon(work, stream=name, port=str(sim.link), model=default_model_path())
        sub = Sub(daemon.monitor, topics=("decision", "event"))
        try:
            w = watch(daemon, sub, replay, duration, sample_s, lambda: sim.proc.poll() is None)
        finally:
            sub.close()
            daemon.stop()
            replay.close()
            sim.stop()
            busy.stop()
        commands = len(sim.log.events("command"))
    return {
        "machine": {"node": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "source": label,
        "load": load,
        "simulator_realtime": sim_rt,
        "peers_rt": peers_rt,
        "replay_realtime": replay_rt,
        "rate": rate,
        "speed": speed,
        "wall_minutes": minutes,
        **figures(w, duration, speed, commands),
    }


def watch(daemon, sub, replay, duration: float, sample_s: float, sim_alive) -> Watched:
    """Follow the running daemon for ``duration`` seconds: every decision and state change from
    its monitor stream, its memory and open files every ``sample_s``; then stop it (SIGTERM)."""
    sub.wait_for(lambda topic, m: topic == "event" and m.get("state") == "running", 30, "running")
    w = Watched(first=daemon.request(cmd="status")["status"]["counters"])  # from here on: pushed vs received
    pid = daemon.proc.pid
    pushed0 = replay.pushed
    t0 = time.monotonic()
    warm = t0 + min(10.0, 0.1 * duration)
    next_sample = t0
    while (now := time.monotonic()) < t0 + duration:
        while sub.sock.poll(50):
            topic, body = sub.sock.recv_multipart()
            m = json.loads(body)
            if topic == b"decision":
                w.decisions += 1
                if m["command_seq"] is None:
                    w.no_command += 1
                k = min(9, int((m["t_mono"] - t0) / duration * 10))
                if k >= 0:
                    w.lat_slices[k].append(m["latency_ms"])
            elif m.get("event") == "state":
                w.state_events += 1
                w.reasons[f"{m.get('state')} ({m.get('reason')})"] += 1
            if time.monotonic() >= next_sample:
                break
        if now >= next_sample:
            next_sample = now + sample_s
            w.samples.append({"t": now - t0, "rss_kb": rss_kb(pid), "fds": fds(pid), "warm": now >= warm})
        if daemon.proc.poll() is not None:
            raise RuntimeError(f"the daemon exited ({daemon.proc.returncode})")
    w.pushed = replay.pushed - pushed0
    # counted before asking for the status: that control connection is one more fd
    w.final = {"rss_kb": rss_kb(pid), "fds": fds(pid), "sim_alive": sim_alive()}
    w.status = daemon.request(cmd="status")["status"]
    w.rc, w.exit_s = daemon.terminate()
    return w


def figures(w: Watched, duration: float, speed: float, commands: int) -> dict:
    """The soak's figures: memory and fd growth, windows and decisions against what was pushed,
    the link's counters, latency by tenth of the run, and how the daemon exited."""
    counters, first, final = w.status["counters"], w.first, w.final
    warm_samples = [s for s in w.samples if s["warm"]] or w.samples
    rss0, rss1 = warm_samples[0]["rss_kb"], final["rss_kb"]
    ts = np.array([s["t"] for s in warm_samples])
    rss = np.array([s["rss_kb"] for s in warm_samples], dtype=float)
    slope = float(np.polyfit(ts, rss, 1)[0]) if len(ts) > 2 else 0.0  # kB per wall second
    stride = 10
    lat = [float(np.median(s)) if s else None for s in w.lat_slices]
    p99 = [float(np.percentile(s, 99)) if s else None for s in w.lat_slices]
    return {
        "data_hours": duration * speed / 3600,
        "rss_start_mb": rss0 / 1024,
        "rss_end_mb": rss1 / 1024,
        "rss_growth_mb": (rss1 - rss0) / 1024,
        "rss_slope_mb_per_data_hour": slope * 3600 / speed / 1024 if speed else None,
        "fds_start": warm_samples[0]["fds"],
        "fds_end": final["fds"],
        "fds_max": max(s["fds"] for s in w.samples if s["fds"] is not None),
        "samples_pushed": w.pushed,
        "samples_received": counters.get("samples", 0) - first.get("samples", 0),
        "windows": counters.get("windows", 0) - first.get("windows", 0),
        "windows_expected": w.pushed // stride,
        "skipped_windows": counters.get("skipped_windows", 0) - first.get("skipped_windows", 0),
        "decisions": w.decisions,
        "decisions_without_command": w.no_command,
        "commands_at_sim": commands,
        "state_events_after_start": w.state_events,
        "state_changes_by_reason": dict(w.reasons.most_common()),
        "link_counters": {
            k: counters.get(k, 0) - first.get(k, 0)
            for k in ("commands_sent", "acks_ok", "acks_unmatched", "ack_retries", "write_overflows", "device_silent")
        },
        "stale_events": counters.get("stale_events", 0),
        "latency_p50_ms_by_tenth": lat,
        "latency_p99_ms_by_tenth": p99,
        "latency_drift_ms": None if lat[0] is None or lat[-1] is None else lat[-1] - lat[0],
        "exit_code": w.rc,
        "exit_s": w.exit_s,
        "sim_alive": final["sim_alive"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=1.0, help="wall-clock minutes (default 1)")
    p.add_argument("--speed", type=float, default=10.0, help="replay speed factor (default 10)")
    p.add_argument("--source", help="a recording (csv, myo:SUBJECT/SESSION, synth) instead of Male13's sessions")
    p.add_argument("--load", type=int, default=0, metavar="N", help="N CPU-bound processes for the whole soak")
    p.add_argument(
        "--peers-rt",
        action="store_true",
        help="run the armband's replay and the orthosis simulator under SCHED_FIFO 10 (below the daemon) where granted",
    )
    p.add_argument("--json", action="store_true", help="end with one JSON document")
    args = p.parse_args(argv)
    load = f", beside {args.load} busy-loop processes" if args.load else ""
    print(
        f"soak: {args.minutes:g} min at {args.speed:g}x ({args.minutes * args.speed:g} minutes of data){load} ...",
        flush=True,
    )
    r = run(args.minutes, args.speed, args.source, load=args.load, peers_rt=args.peers_rt)
    fmt = lambda v, f="{:.3f}": "-" if v is None else f.format(v)  # noqa: E731
    print(
        f"\n{r['machine']['node']}, {r['machine']['cpus']} CPUs; {r['source']} at {r['rate']:g} Hz x {r['speed']:g}: "
        f"{r['data_hours'] * 60:.1f} minutes of data in {r['wall_minutes']:g} min"
        + (
            (f"; beside {r['load']} busy loops" if r["load"] else "")
            + (
                f"; real-time stand-ins: replay {r['replay_realtime']}, simulator {r['simulator_realtime']}"
                if r["peers_rt"]
                else "; stand-ins (replay, simulator) at normal priority"
            )
        )
    )
    print(
        f"  daemon memory (RSS)     {r['rss_start_mb']:.1f} MB after warm-up -> {r['rss_end_mb']:.1f} MB "
        f"(growth {r['rss_growth_mb']:+.2f} MB; "
        f"trend {fmt(r['rss_slope_mb_per_data_hour'], '{:+.2f}')} MB per hour of data)"
    )
    print(f"  file descriptors        {r['fds_start']} -> {r['fds_end']} (max {r['fds_max']})")
    print(f"  samples                 pushed {r['samples_pushed']}, received {r['samples_received']}")
    print(
        f"  windows                 evaluated {r['windows']} of ~{r['windows_expected']}, "
        f"skipped {r['skipped_windows']}"
    )
    print(
        f"  decisions               {r['decisions']} ({r['decisions_without_command']} without a command); "
        f"commands accepted by the simulator {r['commands_at_sim']}"
    )
    print(
        f"  state changes           {r['state_events_after_start']} after running "
        f"(stale events, start-up included: {r['stale_events']})"
        + "".join(f"\n                          {n} x {why}" for why, n in r["state_changes_by_reason"].items())
    )
    print("  link                    " + ", ".join(f"{k} {v}" for k, v in r["link_counters"].items()))
    print("  latency p50 by tenth    " + " ".join(fmt(v, "{:.2f}") for v in r["latency_p50_ms_by_tenth"]) + " ms")
    print("  latency p99 by tenth    " + " ".join(fmt(v, "{:.2f}") for v in r["latency_p99_ms_by_tenth"]) + " ms")
    print(
        f"  exit                    {r['exit_code']} after SIGTERM in {r['exit_s'] * 1000:.0f} ms; "
        f"simulator alive: {r['sim_alive']}"
    )
    if args.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
