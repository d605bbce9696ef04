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

With ``--console`` (what ``make demo`` runs) the armband is a simulated patient
(``metaemg-patient``) who plays the same recording but follows a calibration's cues, and the
clinician's console (``metaemg-console``) serves the session in a browser: its URL is printed,
and a whole session (calibrate, install, use, roll back) can be rehearsed from the page.

It then shows the recording's label, the daemon's decision and the orthosis state a few times per
second (a legend first; the daemon's state in words, :func:`controller.explain.explain`, whenever
it changes) until Ctrl-C (or ``--duration``), stops everything cleanly (the daemon first: it sends
STOP) and prints a summary: decisions, their agreement with the recording's labels, the commands
the simulator accepted. The logs stay in ``--workdir DIR``; without it they are in a temporary
directory, removed at the end (kept, and said so, when the demo fails).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from controller.explain import Explanation, ctl_command
from controller.monitor import subscribe
from controller.monitor_cli import position_bar
from controller.view import MonitorView
from metaemg.cli import entry_point
from metaemg.errors import DataError, MetaEMGError, ModelError
from metaemg.intents import INTENTS
from metalearn.myo import default_myo_root
from rig.processes import Daemon, JsonLines, Sim, end_process, monitor_endpoint, spawn

REACTION_S = 0.3  # commands are scored against the label this long before (window + vote delay)
PRINT_EVERY_S = 0.25
URL_EVERY_S = 30.0  # the console's URL again, before it scrolls away
# start-up: what the daemon waits for, said on one updating line instead of as alarms
STARTING = {
    "starting": "starting the controller",
    "waiting_for_link": "waiting for the simulated orthosis",
    "waiting_for_stream": "waiting for the simulated armband",
    "stale": "waiting for the armband's first good samples",
}
HEADER_EVERY = 20  # rows: the header again, so that the columns stay named on screen
LOG_FILES = "controller.log, replay.jsonl, sim.jsonl"
LEGEND = f"""\
  decision  the daemon's intent after its policy (SAFE: none); in brackets, (open): decided but not
            sent, the daemon is not running (its state is explained in the -- lines)
  p         the model's probability of the decided class (-: SAFE)
  *         the decision differs from the recording's label at that moment; the hand follows about
            {REACTION_S:g} s later, so a * right after the label changes is expected
  position  the orthosis: 0 fully open .. 1000 fully closed; X marks it, open at the left"""


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


class PatientLabels(Labels):
    """What the simulated patient plays over time, from its log: a cued intent, or the
    recording's label at the row it has reached (the patient's samples are stamped ``at + k /
    rate`` from each change on)."""

    def __init__(self, labels, rate: float) -> None:
        super().__init__()
        self.recording = [INTENTS[int(k)] for k in labels]
        self.rate = rate
        self.changes: list[tuple[str, int]] = []  # (what is played, from which row)

    def add(self, record: dict) -> None:
        if record.get("event") == "intent":
            self.times.append(record["at"])
            self.changes.append((record["intent"], int(record["row"])))

    def at(self, t: float) -> str | None:
        i = bisect.bisect_right(self.times, t) - 1
        if i < 0:
            return None
        playing, row = self.changes[i]
        if playing in INTENTS:
            return playing
        return self.recording[(row + int(round((t - self.times[i]) * self.rate))) % len(self.recording)]


def _model_path(arg: Path | None, rec) -> Path:
    """``--model``, else the packaged model that fits the source recording ``rec`` (its rate and
    channels)."""
    if arg is not None:
        if not arg.is_file():
            raise ModelError(f"{arg}: model file not found")
        return arg
    from metaemg.modelfile import default_model_path, shipped_model_for

    path = default_model_path()
    if not path.is_file():
        raise ModelError(
            f"{path}: the default model is not there; give --model FILE "
            "(train one with metaemg-train, then metaemg-export RUN --out FILE)"
        )
    return shipped_model_for(rec.sample_rate, rec.n_channels)


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
        "--console",
        action="store_true",
        help="the armband is a simulated patient who follows calibration cues, and the clinician's console "
        "serves the session in a browser (its URL is printed)",
    )
    p.add_argument("--console-port", type=int, default=8765, help="the console's port (default 8765; 0: any free one)")
    p.add_argument(
        "--no-calibrate",
        action="store_true",
        help="run the default meta-model as shipped (it is not calibrated: it mostly rejects)",
    )
    args = p.parse_args(argv)

    myo_root = args.myo_root or default_myo_root()
    if args.myo_root is not None and not (myo_root / "EvaluationDataset").is_dir():
        raise DataError("Myo armband dataset not found (no EvaluationDataset/ there)", path=myo_root)
    if args.console:
        _check_console_port(args.console_port)  # at once: before minutes of set-up
    source = args.source or ("myo:Male13/Test0" if (myo_root / "EvaluationDataset").is_dir() else "synth")
    from rig.replay import load_source

    rec = load_source(source, myo_root)  # once: its rate picks the model, and it is what the armband plays
    model = _model_path(args.model, rec)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        rc = _run(args, model, source, rec, myo_root, args.workdir)
        print(f"logs     kept in {args.workdir}")
        return rc
    work = Path(tempfile.mkdtemp(prefix="metaemg-demo-"))
    rc = 1
    try:
        rc = _run(args, model, source, rec, myo_root, work)
    finally:
        if rc == 0:
            shutil.rmtree(work, ignore_errors=True)
            print(f"logs     {work} removed (--workdir DIR keeps them)")
        else:
            print(f"logs     kept in {work}, the demo did not end cleanly (remove it when done)", flush=True)
    return rc


def _check_console_port(port: int) -> None:
    """DemoError when the console's port is taken (another demo, or a console, runs)."""
    import socket

    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise DemoError(
                f"port {port} on 127.0.0.1 is taken (another metaemg-demo or metaemg-console?): stop it, or give "
                "--console-port N (0: any free port)"
            ) from None


def _logs_line(work: Path, kept: bool) -> str:
    if kept:
        return f"logs     {work} ({LOG_FILES}; kept)"
    return f"logs     {work} (temporary: removed at the end unless the demo fails; --workdir DIR keeps them)"


def _calibrate(args, model: Path, source: str, full, myo_root: Path, work: Path) -> Path:
    """The packaged model calibrated as a clinic does: for a session of the Myo dataset (raw, or
    rendered as the MyHand armband reports it), on the same subject's ``training0`` session; for
    any other recording (``full``, the source's), on its own first cycle (the research protocol's
    support). ``model`` unchanged (with the reason printed) when that is not possible."""
    if args.model is not None or args.no_calibrate:
        return model
    from metalearn.recording import write_recording
    from rig.replay import load_source

    kind, _, rest = source.partition(":")
    if kind in ("myo", "myhand") and not source.endswith("/training0"):
        subject = rest.split("/")[0]
        try:
            from calibration.protocol import CueProtocol

            # the session and, as the calibration protocol ends, the patient's wrist movements
            rec = load_source(f"{kind}:{subject}/training0", myo_root, move_s=CueProtocol().move_s)
        except DataError:
            print(f"calibration: skipped ({subject} has no training0 session)")
            return model
        what = f"{subject}/training0"
    else:
        from metalearn.tasks import find_split

        try:
            rec = full.slice(0, find_split(full.labels))
        except DataError as exc:
            print(f"calibration: skipped (the recording has no relax-open-relax-close cycle to calibrate on: {exc})")
            return model
        what = "the recording's first cycle"
    clip = write_recording(work / "calibration_clip.csv", rec)
    out = work / "calibrated.onnx"
    print(f"calibration: adapting {model.name} on {what} (metaemg-calibrate) ...", flush=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "calibration.cli",
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


@dataclass
class Parts:
    """The demo's processes, each None until started (closed in reverse by :meth:`close`)."""

    sim: Sim | None = None
    armband: subprocess.Popen | None = None
    daemon: Daemon | None = None
    console: subprocess.Popen | None = None
    url: str | None = None

    def check_alive(self, work: Path) -> None:
        """DemoError naming the first process that exited."""
        assert self.daemon is not None and self.sim is not None  # started before the loop
        for proc, what in (
            (self.daemon.proc, "myhand-controller"),
            (self.armband, "the armband"),
            (self.sim.proc, "the simulator"),
            (self.console, "metaemg-console"),
        ):
            if proc is not None and proc.poll() is not None:
                raise DemoError(
                    f"{what} exited with status {proc.returncode} (see the logs in {work}: "
                    f"{_tail(work / 'controller.log')})"
                )

    def close(self) -> int | None:
        """Stop everything; the daemon's exit status."""
        if self.console is not None:
            end_process(self.console)
        daemon_rc = None if self.daemon is None else self.daemon.stop()
        if self.armband is not None:
            end_process(self.armband)
        if self.sim is not None:
            self.sim.stop()
        return daemon_rc


class Screen:
    """The live lines: start-up on one updating line, each new state in words, a row of the
    decision four times a second, the console's URL every :data:`URL_EVERY_S`."""

    def __init__(self, control: str, url: str | None, t_start: float) -> None:
        self.control, self.url, self.t_start = control, url, t_start
        self.shown: Explanation | None = None
        self.rows = 0
        self.next_print, self.next_url = t_start, t_start + URL_EVERY_S
        self.starting = True  # until the first state that is not start-up

    def update(self, now: float, expl: Explanation | None, view: MonitorView, labels: Labels) -> None:
        if expl is not None and self.starting and expl.state in STARTING:
            if self.shown is None or expl.state != self.shown.state:
                self.shown = expl
                print(f"\rstarting: {STARTING[expl.state]} ...".ljust(60), end="", flush=True)
            return
        if expl is not None and (self.shown is None or expl.state != self.shown.state):
            if self.starting:
                print("\r" + " " * 60 + "\r", end="")  # the start-up line gives way
                self.starting = False
            self.shown = expl
            print(_state_lines(expl, self.control), flush=True)
        if self.url is not None and now >= self.next_url:
            self.next_url = now + URL_EVERY_S
            print(f"console  {self.url}", flush=True)
        if now >= self.next_print and view.decision is not None:
            self.next_print = now + PRINT_EVERY_S
            if self.rows % HEADER_EVERY == 0:
                print(HEADER)
            self.rows += 1
            d = view.decision
            label = labels.at(d["lsl_ts"]) if d.get("lsl_ts") is not None else None
            print(_row(now - self.t_start, d, view.status or {}, expl, label), flush=True)


def _run(args, model: Path, source: str, rec, myo_root: Path, work: Path) -> int:
    import zmq

    model = _calibrate(args, model, source, rec, myo_root, work)
    name = f"metaemg-demo-{os.getpid()}"
    control = f"ipc://{work}/control.sock"
    parts = Parts()
    stopping: list[str] = []
    old_int = signal.signal(signal.SIGINT, lambda *_: stopping.append("interrupted"))
    old_term = signal.signal(signal.SIGTERM, lambda *_: stopping.append("terminated"))
    ctx = zmq.Context()
    sub = None
    stats: dict = {"decisions": 0, "agree": 0, "scored": 0, "latency": [], "states": Counter()}
    labels: Labels = PatientLabels(rec.labels, rec.sample_rate) if args.console else Labels()
    replay_log = JsonLines(work / "replay.jsonl")
    t_start = t_end = time.monotonic()
    try:
        _start(parts, args, model, source, name, control, myo_root, work)
        assert parts.daemon is not None  # started
        sub = _subscribe(ctx, parts, work)
        t_start = time.monotonic()
        deadline = None if args.duration is None else t_start + args.duration
        screen = Screen(control, parts.url, t_start)
        view = MonitorView()
        if not args.quiet:
            print(LEGEND + "\n")
        while not stopping and (deadline is None or time.monotonic() < deadline):
            parts.check_alive(work)
            for record in replay_log.poll():
                labels.add(record)
            _receive(sub, view, stats, labels)
            now = time.monotonic()
            if not args.quiet:
                screen.update(now, None if view.status_at is None else view.explanation(now), view, labels)
        t_end = time.monotonic()
    finally:
        daemon_rc = parts.close()
        if sub is not None:
            sub.close(0)
        ctx.term()
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    for record in replay_log.poll():
        labels.add(record)
    commands = [c for c in (parts.sim.log.events("command") if parts.sim is not None else []) if c["t"] <= t_end]
    _summary(stats, commands, labels, daemon_rc, stopping, t_end - t_start)
    if parts.url is not None:
        print(f"  console                            {parts.url} (stopped with the demo)")
    return 0 if daemon_rc == 0 else 1


def _start(parts: Parts, args, model: Path, source: str, name: str, control: str, myo_root: Path, work: Path) -> None:
    """The simulator, the armband (a replay, or with ``--console`` a patient who follows the cues),
    the daemon and, with ``--console``, the console; each kept in ``parts`` as it starts."""
    link = work / "myhand"
    armband = "patient  (follows calibration cues)" if args.console else "replay  "
    print(
        f"model    {model}\n{armband} {source} as LSL stream {name!r}\northosis simulator on {link}\n"
        f"{_logs_line(work, args.workdir is not None)}\n"
    )
    try:
        parts.sim = Sim(work, output=work / "sim.out", start_new_session=True)
    except RuntimeError:
        raise DemoError(f"the orthosis simulator did not start (see {work / 'sim.out'})") from None
    if args.console:  # the daemon's monitor (a Daemon's): where the patient hears the cues
        armband_argv = ["rig.patient", source, "--monitor", monitor_endpoint(work), "--lsl-stream", name]
    else:
        armband_argv = ["rig.replay", source, "--lsl-stream", name, "--loop"]
    parts.armband = spawn(
        [sys.executable, "-m", *armband_argv, "--myo-root", str(myo_root), "--log", str(work / "replay.jsonl")],
        work / "replay.out",
        start_new_session=True,
    )
    parts.daemon = Daemon(
        work,
        stream=name,
        port=str(link),
        model=model,
        control=control,
        output=work / "controller.log",
        start_new_session=True,
    )
    if args.console:
        parts.console, parts.url = _start_console(args.console_port, parts.daemon, control, model, work)


def _subscribe(ctx, parts: Parts, work: Path, timeout: float = 10.0):
    """The daemon's monitor stream (:func:`controller.monitor.subscribe`, once its socket is there)."""
    assert parts.daemon is not None  # started
    deadline = time.monotonic() + timeout
    while (sub := subscribe(ctx, parts.daemon.monitor)) is None:
        parts.check_alive(work)
        if time.monotonic() > deadline:
            raise DemoError(
                f"no monitor stream from the controller after {timeout:g} s (see {work / 'controller.log'})"
            )
        time.sleep(0.05)
    return sub


def _receive(sub, view: MonitorView, stats: dict, labels: Labels) -> None:
    """The monitor messages that arrived (at most 50 ms of waiting) into ``view``, decisions scored."""
    import zmq

    if sub.poll(50):
        while True:
            try:
                topic, body = sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            msg = json.loads(body)
            view.update(topic.decode(), msg)
            if topic == b"decision":
                _score(stats, msg, labels)


def _start_console(port: int, daemon: Daemon, control: str, model: Path, work: Path) -> tuple[subprocess.Popen, str]:
    """``metaemg-console`` for the demo's daemon: the process and its URL (printed). Its
    calibrations adapt the packaged default model (or ``model`` when it is not a calibrated one)
    into ``work/calibration``."""
    from metaemg.modelfile import default_model_path, read_model_info

    base = model if read_model_info(model).calibration is None else default_model_path()
    cfg = work / "console_calibration.yaml"
    cfg.write_text(f"base_model: {json.dumps(str(base))}\ncues:\n  endpoint: null\n", encoding="utf-8")
    argv = [sys.executable, "-m", "console.server", "--control", control, "--monitor", daemon.monitor]
    argv += ["--port", str(port), "--state-dir", str(work / "calibration"), "--calibration-config", str(cfg)]
    argv += ["--token-file", str(work / "console.token")]
    proc = spawn(argv, work / "console.out", pipe_stdout=True, start_new_session=True)
    assert proc.stdout is not None  # pipe_stdout
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        end_process(proc)
        raise DemoError(f"metaemg-console did not start: {_tail(work / 'console.out')}")
    print(
        f"console  {url}\n"
        "         open it in a browser on this machine: live state, controls, a rehearsal calibration\n"
    )
    return proc, url


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


HEADER = (
    f"{'time':>6}  {'recording':<9} {'decision':<9} {'p':>4}  {'daemon':<18} {'orthosis':<8} {'pos':>4} open  closed"
)


def _state_lines(expl: Explanation, control: str) -> str:
    """The daemon's state in words (controller.explain), and the command that does the next step."""
    text = f"-- {expl.headline} - {expl.meaning}\n   next: {expl.next_step}"
    if expl.action is not None:
        text += f": {ctl_command(expl.action, control=control)}"
    return text


def _row(t: float, d: dict, status: dict, expl: Explanation | None, label: str | None) -> str:
    """One live line: the recording's label, the decision (in brackets when it was not sent: not
    ``running``, or the daemon's state not live), p of the decided class, the daemon state, the
    orthosis's state and position between open (left) and closed (right)."""
    link = status.get("link") or {}
    live = expl is not None and expl.live and d.get("state") == "running"
    intent = d.get("intent")
    shown = intent or "SAFE"
    shown = shown if live else f"({shown})"
    probs = d.get("probabilities") or []
    k = INTENTS.index(intent) if intent in INTENTS else None
    p = probs[k] if k is not None and k < len(probs) and isinstance(probs[k], (int, float)) else None
    state = str(d.get("state"))
    reason = status.get("reason") if status.get("state") == state else None  # the status may be older
    state = state if state == "running" or not reason else f"{state} ({reason})"[:18]
    position = link.get("position")
    mark = "" if label is None or intent is None else ("" if label == intent else " *")
    return (
        f"{t:6.1f}  {label or '-':<9} {shown:<9} {'   -' if p is None else f'{p:4.2f}'}  {state:<18} "
        f"{link.get('device_state') or '-':<8} {'' if position is None else position:>4} "
        f"{position_bar(position)}{mark}"
    ).rstrip()


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
