"""``metaemg-demo``: the whole MyHand chain live on one machine, no hardware.

It starts three processes, as a clinic runs them but with stand-ins for the hardware:

1. a replay armband (``metaemg-replay``): an LSL outlet playing a real Myo recording (Male13,
   session Test0, from ``../shared/datasets/myoarmband``) in real time, looping; synthetic EMG when
   the dataset is not there;
2. the orthosis simulator (``metaemg-sim orthosis``) on a pseudo-terminal behind a symlink;
3. the daemon (``myhand-controller``) with the default model (or ``--model``). The default
   meta-model is made to be adapted to each patient: for a Myo session the demo first calibrates
   it (``metaemg-calibrate``) on the same subject's ``training0`` session, as a clinic does at the
   start of a session, and replays another session (Test0), which the model has never seen;

then shows the recording's label, the daemon's decision and the orthosis state a few times per
second until Ctrl-C (or ``--duration``), stops everything cleanly (the daemon first: it sends STOP)
and prints a summary: decisions, their agreement with the recording's labels, the commands the
simulator accepted.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from metaemg.cli import entry_point
from metaemg.errors import DataError, MetaEMGError, ModelError
from metaemg.intents import INTENTS
from metalearn.myo import default_myo_root
from rig.processes import Daemon, JsonLines, Sim, end_process, spawn

REACTION_S = 0.3  # commands are scored against the label this long before (window + vote delay)
PRINT_EVERY_S = 0.25


class DemoError(MetaEMGError):
    """A demo process did not start or died."""


class Labels:
    """The recording's label over time, from the replay's log (LSL time = time.monotonic)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.labels: list[str] = []

    def add(self, record: dict) -> None:
        if record.get("event") == "label":
            self.times.append(record["lsl_t"])
            self.labels.append(record["label"])

    def at(self, t: float) -> str | None:
        i = bisect.bisect_right(self.times, t) - 1
        return self.labels[i] if i >= 0 else None


def _model_path(arg: Path | None) -> Path:
    if arg is not None:
        if not arg.is_file():
            raise ModelError(f"{arg}: model file not found")
        return arg
    from metaemg.modelfile import default_model_path

    path = default_model_path()
    if not path.is_file():
        raise ModelError(
            f"{path}: the default model is not there; give --model FILE "
            "(train one with metaemg-train, then metaemg-export RUN --out FILE)"
        )
    return path


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="metaemg-demo", description=__doc__.splitlines()[0].replace("`", ""))
    p.add_argument("--model", type=Path, help="ONNX model (default: the packaged default model)")
    p.add_argument(
        "--source",
        help="recording to replay: myo:SUBJECT/SESSION, synth[:SEED] or a CSV "
        "(default myo:Male13/Test0, or synth without the dataset)",
    )
    p.add_argument(
        "--myo-root", type=Path, help="Myo dataset (default $METAEMG_MYO_ROOT or ../shared/datasets/myoarmband)"
    )
    p.add_argument("--duration", type=float, help="stop after this many seconds and print the summary")
    p.add_argument("--workdir", type=Path, help="keep logs and sockets here (default: a temporary directory)")
    p.add_argument("--quiet", action="store_true", help="no live lines, only the summary")
    p.add_argument(
        "--no-calibrate",
        action="store_true",
        help="run the default meta-model as shipped (it is not calibrated: it mostly rejects)",
    )
    args = p.parse_args(argv)

    model = _model_path(args.model)
    myo_root = args.myo_root or default_myo_root()
    if args.myo_root is not None and not (myo_root / "EvaluationDataset").is_dir():
        raise DataError("Myo armband dataset not found (no EvaluationDataset/ there)", path=myo_root)
    source = args.source or ("myo:Male13/Test0" if (myo_root / "EvaluationDataset").is_dir() else "synth")
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return _run(args, model, source, myo_root, args.workdir)
    with tempfile.TemporaryDirectory(prefix="metaemg-demo-") as tmp:
        return _run(args, model, source, myo_root, Path(tmp))


def _calibrate(args, model: Path, source: str, myo_root: Path, work: Path) -> Path:
    """The default model calibrated on the replayed subject's training0 session, or ``model``
    unchanged (with the reason printed) when that is not possible."""
    if args.model is not None or args.no_calibrate:
        return model
    if not source.startswith("myo:") or source.endswith("/training0"):
        print("calibration: skipped (only for Myo sessions other than training0); the model runs as shipped")
        return model
    from metalearn.myo import build_recording, find_sessions
    from metalearn.recording import write_recording

    subject = source[len("myo:") :].split("/")[0]
    found = [s for s in find_sessions(myo_root) if s.subject == subject and s.name == "training0"]
    if not found:
        print(f"calibration: skipped ({subject} has no training0 session)")
        return model
    clip = write_recording(work / f"{subject}_training0.csv", build_recording(found[0]))
    out = work / "calibrated.onnx"
    print(f"calibration: adapting the default model on {subject}/training0 (metaemg-calibrate) ...", flush=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "calibration.calibrate",
            "--from-recording",
            str(clip),
            "--base-model",
            str(model),
            "--out",
            str(out),
            "--state-dir",
            str(work / "calibration"),
            "--no-reload",
            "--no-png",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        result = {}
    if proc.returncode != 0 or not result.get("ok") or not out.is_file():
        why = result.get("gate", {}).get("line") or (proc.stderr.strip().splitlines() or ["unknown"])[-1]
        print(f"calibration: failed ({why}); the model runs as shipped")
        return model
    print(
        f"calibration: held-out accuracy {result['accuracy_before']:.0%} -> {result['accuracy_after']:.0%} "
        f"in {result.get('total_seconds', 0):.1f} s\n"
    )
    return out


def _run(args, model: Path, source: str, myo_root: Path, work: Path) -> int:
    import zmq

    model = _calibrate(args, model, source, myo_root, work)
    py = sys.executable
    name = f"metaemg-demo-{os.getpid()}"
    link, control = work / "myhand", f"ipc://{work}/control.sock"
    sim: Sim | None = None
    replay: subprocess.Popen | None = None
    daemon: Daemon | None = None
    stopping = []
    old_int = signal.signal(signal.SIGINT, lambda *_: stopping.append("interrupted"))
    old_term = signal.signal(signal.SIGTERM, lambda *_: stopping.append("terminated"))
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt_string(zmq.SUBSCRIBE, "")
    stats: dict = {"decisions": 0, "agree": 0, "scored": 0, "latency": [], "states": Counter()}
    try:
        print(
            f"model    {model}\nreplay   {source} as LSL stream {name!r}\northosis simulator on {link}\n"
            f"logs     {work}\n"
        )
        try:
            sim = Sim(work, output=work / "sim.out", start_new_session=True)
        except RuntimeError:
            raise DemoError(f"the orthosis simulator did not start (see {work / 'sim.out'})") from None
        replay = spawn(
            [
                py,
                "-m",
                "rig.replay",
                source,
                "--name",
                name,
                "--loop",
                "--myo-root",
                str(myo_root),
                "--log",
                str(work / "replay.jsonl"),
            ],
            work / "replay.out",
            start_new_session=True,
        )
        daemon = Daemon(
            work,
            stream=name,
            port=str(link),
            model=model,
            control=control,
            output=work / "controller.log",
            start_new_session=True,
        )
        sub.connect(daemon.monitor)
        labels, replay_log = Labels(), JsonLines(work / "replay.jsonl")
        t_start = time.monotonic()
        deadline = None if args.duration is None else t_start + args.duration
        last: dict = {}
        next_print = t_start
        if not args.quiet:
            print(f"{'time':>6}  {'recording':<9} {'decision':<9} {'p':>4}  {'daemon':<18} {'orthosis':<9} position")
        while not stopping and (deadline is None or time.monotonic() < deadline):
            for proc, what in ((daemon.proc, "myhand-controller"), (replay, "the replay"), (sim.proc, "the simulator")):
                if proc.poll() is not None:
                    raise DemoError(
                        f"{what} exited with status {proc.returncode} (see the logs in {work}: "
                        f"{_tail(work / 'controller.log')})"
                    )
            for record in replay_log.poll():
                labels.add(record)
            if sub.poll(50):
                while True:
                    try:
                        topic, body = sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    msg = json.loads(body)
                    last[topic.decode()] = msg
                    if topic == b"decision":
                        _score(stats, msg, labels)
            now = time.monotonic()
            if not args.quiet and now >= next_print and "decision" in last:
                next_print = now + PRINT_EVERY_S
                _print_line(now - t_start, last, labels)
        t_end = time.monotonic()
    finally:
        daemon_rc = None if daemon is None else daemon.stop()
        if replay is not None:
            end_process(replay)
        if sim is not None:
            sim.stop()
        sub.close(0)
        ctx.term()
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    for record in replay_log.poll():
        labels.add(record)
    commands = sim.log.events("command") if sim is not None else []
    commands = [c for c in commands if c["t"] <= t_end]
    _summary(stats, commands, labels, daemon_rc, stopping, t_end - t_start)
    return 0 if daemon_rc == 0 else 1


def _tail(path: Path, n: int = 1) -> str:
    try:
        return " | ".join(path.read_text(encoding="utf-8").strip().splitlines()[-n:])
    except OSError:
        return ""


def _score(stats: dict, msg: dict, labels: Labels) -> None:
    stats["decisions"] += 1
    stats["states"][msg["state"]] += 1
    if msg.get("latency_ms") is not None:
        stats["latency"].append(msg["latency_ms"])
    if msg.get("intent") is not None and msg.get("lsl_ts") is not None:
        label = labels.at(msg["lsl_ts"] - REACTION_S)
        if label is not None:
            stats["scored"] += 1
            stats["agree"] += label == msg["intent"]


def _print_line(t: float, last: dict, labels: Labels) -> None:
    d = last["decision"]
    status = last.get("status", {})
    link = status.get("link", {})
    label = labels.at(d["lsl_ts"]) if d.get("lsl_ts") is not None else None
    intent = d["intent"] or "SAFE"
    state = d["state"] if d["state"] == "running" else f"{d['state']} ({status.get('reason') or ''})"[:18]
    position = link.get("position")
    bar = "" if position is None else "[" + "#" * round(position / 100) + "." * (10 - round(position / 100)) + "]"
    mark = "" if label is None or d["intent"] is None else ("  " if label == d["intent"] else " *")
    print(
        f"{t:6.1f}  {label or '-':<9} {intent:<9} {d['confidence'] or 0:4.2f}  {state:<18} "
        f"{link.get('device_state') or '-':<9} {'' if position is None else position:>4} {bar}{mark}",
        flush=True,
    )


def _summary(stats: dict, commands: list[dict], labels: Labels, daemon_rc, stopping, seconds: float) -> None:
    import numpy as np

    by_intent = Counter(c["intent"] for c in commands)
    scored = [(c["intent"], labels.at(c["t"] - REACTION_S)) for c in commands]
    scored = [(i, lab) for i, lab in scored if lab is not None]
    lat = np.array(stats["latency"]) if stats["latency"] else None
    print("\nsummary" + (f" ({stopping[0]})" if stopping else ""))
    print(f"  ran for                  {seconds:.1f} s")
    print(
        f"  decisions                {stats['decisions']} ({', '.join(f'{k} {v}' for k, v in stats['states'].items())})"
    )
    if stats["scored"]:
        print(
            f"  decisions agreeing       {stats['agree'] / stats['scored']:.1%} of {stats['scored']} "
            f"with the recording's label {REACTION_S:g} s earlier"
        )
    print(
        f"  commands accepted by the simulator  {len(commands)} ({', '.join(f'{k} {by_intent[k]}' for k in INTENTS)})"
    )
    if scored:
        agreement = sum(i == lab for i, lab in scored) / len(scored)
        print(f"  agreement with the labels          {agreement:.1%} of {len(scored)} commands (chance: 33%)")
    if lat is not None:
        print(
            f"  daemon latency (chunk in -> command out)  p50 {np.median(lat):.2f} ms, "
            f"p99 {np.percentile(lat, 99):.2f} ms"
        )
    print(f"  myhand-controller exit status      {daemon_rc}")
