"""metaemg-monitor against a real PUB socket speaking the documented schema (the daemon's own
encoder), plus the pure view and text rendering."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
import zmq

from controller import monitor as daemon_monitor
from controller.monitor_cli import SCHEMA, CtlHint, position_bar, render
from controller.view import MonitorView

REPO = Path(__file__).resolve().parents[1]
EXE = str(REPO / ".venv" / "bin" / "metaemg-monitor")


def status_payload(state: str = "running") -> dict:
    return {
        "state": state,
        "reason": "decoding",
        "since": 1.0,
        "ready": True,
        "paused": False,
        "input": {
            "connected": True,
            "stream": {"name": "MyHand-EMG", "channels": 8, "rate": 200.0},
            "problem": None,
            "last_sample_age_ms": 12.0,
            "measured_rate": 199.6,
            "saturated_fraction": 0.0,
        },
        "link": {
            "url": "pty:///dev/pts/7",
            "open": True,
            "phase": "ready",
            "ready": True,
            "problem": None,
            "fault": False,
            "device_state": "open",
            "position": 120,
            "fault_flags": 0,
            "firmware": "1.2.0",
        },
        "model": {"path": "m.onnx", "model_id": "myo-meta-3f2a", "kind": "meta", "last_error": None},
        "policy": {"armed": True, "intent": "open", "reason": None},
        "control": {"endpoint": "ipc:///run/myhand/control.sock"},
        "counters": {"samples": 4000, "decisions": 380, "rejected": 12, "commands_sent": 380, "acks_ok": 379},
    }


def decision_payload(i: int = 0) -> dict:
    return {
        "label": "open",
        "probabilities": [0.1, 0.8, 0.1],
        "confidence": 0.8,
        "rejected": False,
        "vote": "open",
        "intent": "open",
        "changed": False,
        "held": None,
        "safe_reason": None,
        "state": "running",
        "command_seq": i,
        "latency_ms": 2.0 + (i % 10) * 0.5,
        "stages_us": {"input": 50.0, "signal": 300.0, "model": 900.0, "policy": 10.0, "link": 40.0},
        "skipped": 0,
        "model_id": "myo-meta-3f2a",
    }


class Publisher:
    """A real ZeroMQ PUB socket sending status (10/s), decision (50/s) and emg, encoded by the
    daemon's own encoder, from a thread."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            if i % 5 == 0:
                self.sock.send_multipart(daemon_monitor.encode("status", status_payload()))
            self.sock.send_multipart(daemon_monitor.encode("decision", decision_payload(i)))
            self.sock.send_multipart(
                daemon_monitor.encode(
                    "emg",
                    {
                        "first_index": i * 4,
                        "decimation": 1,
                        "rate": 200.0,
                        "samples": [[float((i + k + c) % 7) for c in range(8)] for k in range(4)],
                    },
                )
            )
            i += 1
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def publisher():
    pub = Publisher()
    yield pub
    pub.close()


def test_a_message_of_another_schema_is_counted_and_not_shown():
    view = MonitorView()
    view.update("decision", {"schema": "metaemg.monitor/0", "t_mono": 1.0, **decision_payload()}, now=1.0)
    assert view.foreign == 1 and view.decision is None and view.received == 0
    assert "ignored 1 message(s) without schema metaemg.monitor/1" in render(view, now=1.0)


def test_one_percentile_rule_for_every_viewer():
    from controller.monitor import percentiles

    assert percentiles([]) is None
    assert percentiles([5.0]) == {"p50": 5.0, "p95": 5.0, "p99": 5.0, "max": 5.0}
    xs = [float(v) for v in range(1, 101)]  # 1..100: rank round(p * 99), halves up
    assert percentiles(xs) == {"p50": 51.0, "p95": 95.0, "p99": 99.0, "max": 100.0}
    assert percentiles([4.0, 1.0, 3.0, 2.0])["p50"] == 3.0  # rank 1.5 -> 2 (sorted: 1, 2, 3, 4)


def test_render_shows_intent_bars_state_counters_latency():
    view = MonitorView()
    for i in range(20):
        view.update("decision", {"schema": SCHEMA, "t_mono": 100 + i * 0.05, **decision_payload(i)}, now=10.0)
    view.update("status", {"schema": SCHEMA, **status_payload()}, now=10.0)
    view.update(
        "event",
        {"schema": SCHEMA, "event": "state", "prev": "ready", "state": "running", "reason": "decoding"},
        now=10.0,
    )
    text = render(view, "tcp://x:1", now=10.5)
    assert "state   RUNNING\n        the hand follows the decisions\n" in text
    assert "next    pause before adjusting the armband or the hand\n        myhand-controller ctl pause\n" in text
    assert "intent  OPEN" in text
    bars = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ")}
    assert bars["open"].count("#") > 3 * bars["relax"].count("#") and bars["open"].endswith("<")
    assert "0.80" in bars["open"]
    assert "input   connected  MyHand-EMG 8 ch @ 200.0 Hz" in text
    assert "link    ready  pty:///dev/pts/7  fw 1.2.0" in text
    assert "hand    device open  position 120  open [-X--------] closed" in text
    assert "model   myo-meta-3f2a" in text
    assert "p50 4.5 ms" in text  # 2.0 + 0.5*k for k in 0..9, twice: rank round(0.5 * 19) = 10 -> 4.5
    assert "decisions 380" in text and "commands_sent 380" in text
    assert "now RUNNING" in text
    assert "NO DATA" not in text and "\x1b[" not in text
    assert "\x1b[" in render(view, now=10.5, color=True)
    lat = view.latency_percentiles()
    assert lat["max"] == 6.5 and lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]


def test_render_waiting_stale_safe_and_foreign():
    view = MonitorView()
    assert "waiting for the daemon" in render(view, now=0)
    d = decision_payload()
    d.update(intent=None, rejected=True, safe_reason="stale", probabilities=[0.4, None, 0.3])
    view.update("decision", {"schema": SCHEMA, **d}, now=1.0)
    view.update("status", {"schema": "other/9"}, now=1.0)
    text = render(view, now=1.5)  # a decision but no status: the controller is not heard, nothing is live
    assert "state   NO CONTROLLER\n        nothing heard from the controller\n" in text
    assert (
        "intent  last decision 0.5 s ago, sent then; now NO CONTROLLER  (policy: safe)"
        "  rejected (below threshold)  safe: stale" in text
    )
    assert "SAFE (no command)" not in text
    assert "input   (no status yet)" in text
    assert "ignored 1 message(s)" in text
    assert re.search(r"^  open +\? +\|\?+\|", text, re.M)
    assert "not ready" not in text
    text = render(view, now=5.0)  # the decision too old to show its probabilities
    assert "intent  last decision 4.0 s ago, sent then; now NO CONTROLLER" in text
    assert "\n  open " not in text and "|" not in text


def test_waiting_at_start_then_not_heard():
    view = MonitorView(started_at=100.0)
    assert (
        render(view, "tcp://x:1", now=101.0) == "metaemg-monitor  tcp://x:1\nwaiting for the daemon (no message yet)\n"
    )
    text = render(view, "tcp://x:1", now=103.0)
    assert text.splitlines()[1:] == [
        "state   NO CONTROLLER",
        "        nothing heard from the controller",
        "next    check that the myhand-controller service runs (systemctl status myhand-controller)",
        "waiting for the daemon (no message yet)",
    ]


def fed(state: str, reason: str | None, decided_in: str, **status_fields) -> MonitorView:
    """A view fed at local time 10.0 with ten decisions taken in ``decided_in`` and one status."""
    view = MonitorView()
    for i in range(10):
        d = {**decision_payload(i), "state": decided_in}
        view.update("decision", {"schema": SCHEMA, "t_mono": 100 + i * 0.05, **d}, now=10.0)
    st = status_payload(state)
    st.update(reason=reason, **status_fields)
    st["policy"]["threshold"] = 0.6
    st["control"] = {"endpoint": "ipc:///run/myhand/control.sock"}
    view.update("status", {"schema": SCHEMA, **st}, now=10.0)
    return view


def test_render_running_is_live():
    text = render(fed("running", None, "running"), now=10.2)
    lines = text.splitlines()
    assert lines[1:6] == [
        "state   RUNNING",
        "        the hand follows the decisions",
        "next    pause before adjusting the armband or the hand",
        "        myhand-controller ctl pause",
        "intent  OPEN",
    ]
    bars = {line.split()[0]: line for line in lines if line.startswith("  ")}
    assert bars["open"].count("#") == 45 and bars["open"].endswith("|<")
    # the threshold (0.6 from the status) marks the bars it is above: cell 34 of 56
    assert bars["relax"].index(":") - bars["relax"].index("|") == 34 and ":" not in bars["open"]
    colored = render(fed("running", None, "running"), now=10.2, color=True)
    assert "\x1b[1;32mRUNNING\x1b[0m" in colored and "\x1b[1;32mOPEN\x1b[0m" in colored


def test_render_paused_greys_the_decision_and_says_how_to_resume():
    view = fed("paused", "operator", "paused", paused=True)
    text = render(view, "ipc:///run/myhand/monitor.sock", now=10.1, ctl=CtlHint(config="/etc/myhand/c.yaml"))
    lines = text.splitlines()
    assert lines[1:9] == [
        "state   PAUSED",
        "        the hand is held; decisions are not sent",
        "next    resume when the patient is ready",
        "        myhand-controller ctl --config /etc/myhand/c.yaml resume",
        "intent  last decision 0.1 s ago, not sent: PAUSED  (policy: open)",
        "  relax  0.10 |------...........................:......................|",
        "  open   0.80 |---------------------------------------------...........|<",
        "  close  0.10 |------...........................:......................|",
    ]
    assert "intent  OPEN" not in text and "#" not in text
    colored = render(view, now=10.1, color=True)
    assert "\x1b[1;33mPAUSED\x1b[0m" in colored
    assert "\x1b[90mintent  last decision 0.1 s ago, not sent: PAUSED  (policy: open)\x1b[0m" in colored
    assert "1;32" not in colored.split("intent")[1].split("input")[0]  # never bold green
    # four seconds later nothing more was heard: the controller, not the pause, is the news
    text = render(view, now=14.2)
    assert "state   NO CONTROLLER\n        nothing heard from the controller for 4 s\n" in text
    assert "intent  last decision 4.2 s ago, not sent: PAUSED  (policy: open)" in text
    assert "\n  open " not in text  # too old for bars
    assert "the lines below are from the last status, 4.2 s old\ninput   connected" in text
    colored = render(view, now=14.2, color=True)
    assert "\x1b[90mhand    device open  position 120  open [-X--------] closed\x1b[0m" in colored


def test_render_fault_says_how_to_leave_it():
    view = fed("fault", "device fault: overcurrent", "fault", paused=True)
    text = render(view, "tcp://127.0.0.1:5556", now=10.3, ctl=CtlHint(by_endpoint=True))
    assert text.splitlines()[1:6] == [
        "state   FAULT: device fault: overcurrent  (also paused by the operator)",
        "        the hand is stopped",
        "next    check the hand, then clear the fault",
        "        myhand-controller ctl --control ipc:///run/myhand/control.sock clear",
        "intent  last decision 0.3 s ago, not sent: FAULT  (policy: open)",
    ]
    assert "\x1b[1;31mFAULT: device fault: overcurrent\x1b[0m" in render(view, now=10.3, color=True)
    mismatch = fed("fault", "protocol mismatch: version 2", "fault")
    text = render(mismatch, now=10.3)
    assert "next    update the controller or the orthosis firmware so that their versions match\nintent" in text
    assert "ctl" not in text


def test_render_running_status_with_a_decision_of_another_state():
    # the status says running, the last decision was taken while re-arming: not sent
    text = render(fed("running", None, "stale"), now=10.1)
    assert "intent  last decision 0.1 s ago, not sent: NO USABLE SIGNAL  (policy: open)" in text
    # a decision taken running, then the daemon went on running but decided nothing for 3 s
    view = fed("running", None, "running")
    view.update("status", {"schema": SCHEMA, **status_payload()}, now=13.0)
    assert "intent  last decision 3.0 s ago, none since  (policy: open)" in render(view, now=13.0)


def test_rejected_names_the_threshold():
    view = MonitorView(threshold=0.55)
    d = {**decision_payload(), "rejected": True, "intent": "relax"}
    view.update("decision", {"schema": SCHEMA, **d}, now=1.0)
    st = status_payload()
    del st["policy"]
    view.update("status", {"schema": SCHEMA, **st}, now=1.0)
    assert view.threshold == 0.55  # the configuration's, the status does not say
    assert "intent  RELAX  rejected (below threshold 0.55)" in render(view, now=1.1)
    st["policy"] = {"threshold": 0.7}
    view.update("status", {"schema": SCHEMA, **st}, now=1.2)
    assert view.threshold == 0.7  # the daemon's own


def test_position_bar_open_at_the_left():
    assert position_bar(0) == "[X---------]"  # firmware: 0 fully open
    assert position_bar(1000) == "[---------X]"  # 1000 fully closed
    assert position_bar(500) == "[----X-----]"
    assert position_bar(-5) == "[X---------]" and position_bar(None) == "[??????????]"


def test_plot_shows_state_threshold_and_position(monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from controller.monitor_cli import LivePlot

    plot = LivePlot()
    try:
        view = fed("paused", "operator", "paused", paused=True)
        view.status["link"]["position"] = 800
        plot.update(view, now=10.1, ctl=CtlHint(config="/c.yaml"))
        assert plot.title.get_text() == "PAUSED" and plot.title.get_color() == "tab:orange"
        assert plot.subtitle.get_text() == (
            "the hand is held; decisions are not sent; next: resume when the patient is ready "
            "(myhand-controller ctl --config /c.yaml resume)"
        )
        assert plot.dec_title.get_text() == "no intent sent  (policy: open)"
        assert plot.dec_note.get_text() == "last decision 0.1 s ago, not sent: PAUSED"
        assert all(line.get_alpha() == 0.25 for line in plot.prob_lines)
        assert plot.threshold_line.get_visible() and list(plot.threshold_line.get_ydata()) == [0.6, 0.6]
        assert plot.threshold_line.get_label() == "threshold 0.60"
        assert plot.position_line.get_visible() and list(plot.position_line.get_xdata()) == [800, 800]
        assert [t.get_text() for t in plot.ax_pos.get_xticklabels()] == ["open (0)", "", "closed (1000)"]
        assert plot.pos_title.get_text() == "orthosis: device open, position 800"
        running = fed("running", None, "running")
        plot.update(running, now=10.1)
        assert plot.title.get_text() == "RUNNING" and plot.title.get_color() == "tab:green"
        assert plot.dec_title.get_text() == "intent OPEN  model myo-meta-3f2a" and plot.dec_note.get_text() == ""
        assert all(line.get_alpha() == 1.0 for line in plot.prob_lines)
        fault = fed("fault", "device fault: overcurrent", "fault")
        plot.update(fault, now=10.1)
        assert plot.title.get_text() == "FAULT: device fault: overcurrent" and plot.title.get_color() == "tab:red"
        assert "clear the fault (myhand-controller ctl clear)" in plot.subtitle.get_text()
        plot.update(fault, now=20.0)
        assert plot.title.get_text() == "NO CONTROLLER"
        assert plot.dec_title.get_text() == "no intent sent  (policy: open)"
        assert plot.dec_note.get_text() == "last decision 10.0 s ago, not sent: FAULT"
    finally:
        plot.close()


def test_once_json_prints_one_status_and_exits(publisher):
    t0 = time.monotonic()
    proc = subprocess.run(
        [EXE, "--endpoint", publisher.endpoint, "--once", "--json", "--timeout", "10"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert "note: --endpoint is now --monitor" in proc.stderr  # the old spelling, kept for one release
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    msg = json.loads(lines[0])
    assert msg["schema"] == SCHEMA and msg["topic"] == "status"
    assert msg["model"]["model_id"] == "myo-meta-3f2a" and msg["counters"]["decisions"] == 380
    assert time.monotonic() - t0 < 10


def test_once_times_out_with_one_line(tmp_path):
    proc = subprocess.run(
        [EXE, "--monitor", "tcp://127.0.0.1:1", "--once", "--json", "--timeout", "0.3"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("error: no status message from tcp://127.0.0.1:1 within 0.3 s")
    assert len(proc.stderr.splitlines()) == 1
    proc = subprocess.run([EXE, "--monitor", "bogus", "--once"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and proc.stderr.startswith("error: cannot connect to monitor endpoint 'bogus'")


def test_live_loop_redraws_until_duration(publisher):
    t0 = time.monotonic()
    proc = subprocess.run(
        [EXE, "--monitor", publisher.endpoint, "--duration", "1.5", "--refresh", "8", "--plain"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - t0 < 15
    frames = proc.stdout.split("metaemg-monitor  ")[1:]
    assert len(frames) >= 5
    last = frames[-1]
    assert "intent  OPEN" in last and "model   myo-meta-3f2a" in last and "latency p50" in last
    assert "link    ready" in last and "\x1b[" not in proc.stdout
    # pointed at an endpoint without a configuration: the ctl command names the daemon's control socket
    assert "state   RUNNING" in last and "myhand-controller ctl --control ipc:///run/myhand/control.sock pause" in last


def test_plot_window_updates_and_saves_a_frame(publisher, tmp_path):
    png = tmp_path / "monitor.png"
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run(
        [EXE, "--monitor", publisher.endpoint, "--duration", "1.5", "--plain", "--plot", "--save-plot", str(png)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_against_the_real_daemon(tmp_path):
    """The real daemon (default model, synthetic replay armband, orthosis simulator): --once --json
    returns its status, and the live view shows its state, link and model."""
    from metaemg.modelfile import default_model_path
    from rig.processes import Daemon, Sim, unique_name
    from rig.replay import Replay, load_source

    rec = load_source("synth")
    name = unique_name()
    sim = Sim(tmp_path)
    replay = Replay(rec.emg, rec.labels, 200.0, name=name, loop=True).start()
    daemon = Daemon(tmp_path, stream=name, port=str(sim.link), model=default_model_path())
    try:
        proc = subprocess.run(
            [EXE, "--monitor", daemon.monitor, "--once", "--json", "--timeout", "20"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr + daemon.stderr
        status = json.loads(proc.stdout)
        assert status["schema"] == SCHEMA and status["pid"] == daemon.proc.pid
        assert status["policy"]["threshold"] == 0.5  # the plot's threshold line, from the daemon itself
        deadline = time.monotonic() + 20
        while True:  # until the daemon decides (stream and link up)
            proc = subprocess.run(
                [EXE, "--monitor", daemon.monitor, "--duration", "1", "--plain"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.returncode == 0, proc.stderr
            last = proc.stdout.split("metaemg-monitor  ")[-1]
            if "latency p50" in last or time.monotonic() > deadline:
                break
        assert "latency p50" in last, last
        assert "input   connected" in last and "link    ready" in last
        assert f"model   {status['model']['model_id']}" in last
        assert re.search(r"^hand    device \w+  position \d+  open \[-*X-*\] closed$", last, re.M)
        assert re.search(r"^  close +\d\.\d\d \|", last, re.M)
    finally:
        daemon.stop()
        replay.close()
        sim.stop()


def test_render_status_only_has_no_bars():
    view = MonitorView()
    view.update("status", {"schema": SCHEMA, **status_payload()}, now=0.0)
    text = render(view, now=0.1)
    assert "intent  - (no decision yet)" in text and "|" not in text
    assert "latency -" in text and all(line == line.rstrip() for line in text.splitlines())


def test_by_default_the_monitor_is_private_and_every_tool_finds_the_daemon_from_its_config(tmp_path):
    """issue 14: any local user could subscribe to tcp://127.0.0.1:5556 (raw EMG, decisions), and
    tools run from another shell looked in another runtime directory than the daemon's. Now the
    monitor is ipc://<runtime dir>/monitor.sock (the directory 0700, the socket 0600) and ctl,
    metaemg-monitor and metaemg-calibrate resolve the sockets from the daemon's configuration."""
    import stat

    from rig.processes import BIN, end_process, wait_until

    run = tmp_path / "run"
    cfg = tmp_path / "controller.yaml"
    cfg.write_text(
        f"lsl:\n  name: nobody-{os.getpid()}\nserial:\n  port: {tmp_path / 'none'}\ncontrol:\n  runtime_dir: {run}\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RUNTIME_DIRECTORY", "MYHAND_CONFIG")}
    daemon = subprocess.Popen(
        [str(BIN / "myhand-controller"), "--config", str(cfg)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: (run / "control.sock").exists() and (run / "monitor.sock").exists(), 20, "the sockets")
        assert stat.S_IMODE(os.stat(run).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(run / "monitor.sock").st_mode) == 0o600
        ctl = subprocess.run(
            [str(BIN / "myhand-controller"), "ctl", "status"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**env, "MYHAND_CONFIG": str(cfg)},
        )
        status = json.loads(ctl.stdout)["status"]
        assert status["monitor"]["endpoint"] == f"ipc://{run}/monitor.sock"
        mon = subprocess.run(
            [str(BIN / "metaemg-monitor"), "--once", "--json", "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        assert mon.returncode == 0, mon.stderr
        assert json.loads(mon.stdout)["pid"] == daemon.pid
        lost = subprocess.run(
            [str(BIN / "metaemg-monitor"), "--once"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**env, "XDG_RUNTIME_DIR": str(tmp_path / "xdg")},
        )
        assert lost.returncode == 2 and f"looked in {tmp_path / 'xdg' / 'myhand'} ($XDG_RUNTIME_DIR" in lost.stderr
    finally:
        end_process(daemon)
