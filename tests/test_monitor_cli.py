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
from controller.monitor_cli import SCHEMA, MonitorView, render

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


def test_schema_matches_the_daemon():
    assert SCHEMA == daemon_monitor.SCHEMA


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
    assert "intent  OPEN" in text
    bars = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ")}
    assert bars["open"].count("#") > 3 * bars["relax"].count("#") and bars["open"].endswith("<")
    assert "0.80" in bars["open"]
    assert "input   connected  MyHand-EMG 8 ch @ 200.0 Hz" in text
    assert "link    ready" in text and "device open" in text
    assert "model   myo-meta-3f2a" in text
    assert "p50 4.2 ms" in text or "p50 4.5 ms" in text  # 2.0 + 0.5*k for k in 0..9, twice
    assert "decisions 380" in text and "commands_sent 380" in text
    assert "state ready -> running" in text
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
    text = render(view, now=5.0)
    assert "NO DATA: nothing received for 4.0 s" in text
    assert "SAFE (no command)" in text and "rejected" in text and "safe: stale" in text
    assert "input   (no status yet)" in text
    assert "ignored 1 message(s)" in text
    assert re.search(r"^  open +\? +\|\?+\|", text, re.M)
    assert "not ready" not in text


def test_once_json_prints_one_status_and_exits(publisher):
    t0 = time.monotonic()
    proc = subprocess.run(
        [EXE, "--endpoint", publisher.endpoint, "--once", "--json", "--timeout", "10"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    msg = json.loads(lines[0])
    assert msg["schema"] == SCHEMA and msg["topic"] == "status"
    assert msg["model"]["model_id"] == "myo-meta-3f2a" and msg["counters"]["decisions"] == 380
    assert time.monotonic() - t0 < 10


def test_once_times_out_with_one_line(tmp_path):
    proc = subprocess.run(
        [EXE, "--endpoint", "tcp://127.0.0.1:1", "--once", "--json", "--timeout", "0.3"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("error: no status message from tcp://127.0.0.1:1 within 0.3 s")
    assert len(proc.stderr.splitlines()) == 1
    proc = subprocess.run([EXE, "--endpoint", "bogus", "--once"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and proc.stderr.startswith("error: cannot connect to monitor endpoint 'bogus'")


def test_live_loop_redraws_until_duration(publisher):
    t0 = time.monotonic()
    proc = subprocess.run(
        [EXE, "--endpoint", publisher.endpoint, "--duration", "1.5", "--refresh", "8", "--plain"],
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


def test_plot_window_updates_and_saves_a_frame(publisher, tmp_path):
    png = tmp_path / "monitor.png"
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run(
        [EXE, "--endpoint", publisher.endpoint, "--duration", "1.5", "--plain", "--plot", "--save-plot", str(png)],
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
            [EXE, "--endpoint", daemon.monitor, "--once", "--json", "--timeout", "20"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr + daemon.stderr
        status = json.loads(proc.stdout)
        assert status["schema"] == SCHEMA and status["pid"] == daemon.proc.pid
        deadline = time.monotonic() + 20
        while True:  # until the daemon decides (stream and link up)
            proc = subprocess.run(
                [EXE, "--endpoint", daemon.monitor, "--duration", "1", "--plain"],
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
