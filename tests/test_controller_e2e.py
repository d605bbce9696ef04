"""End to end, all real: a replayed real Myo recording (LSL outlet in this process), the orthosis
simulator on a pseudo-terminal behind a symlink, the daemon as a subprocess, the monitor and
control sockets over ZeroMQ.

One scenario runs once per module (``scenario``); each test asserts one of its measurements:

1. 24 s of Male13/Test0 drive the daemon; the simulator's accepted commands are scored against
   the recording's labels.
2. pause/resume over the control socket: STOP (operator) at once, commands again after resume.
3. hot swap: a garbage file and a model for another stream are refused (the old model keeps
   running), a valid replacement of the watched file is swapped in.
4. NaN samples: STOP at once; commands again only after ``rearm_ms`` of good data.
5. the armband goes quiet: STOP within 150 ms at the simulator.
6. SIGTERM: STOP (host shutdown), exit status 0 within 1 s, sockets removed.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from firmware_protocol.messages import StopReason
from rig.models import male13_model, myo_recording, train_model
from rig.processes import Daemon, Sim, Sub, unique_name, wait_until

pytestmark = [pytest.mark.slow]

AGREEMENT_S = 16.0
# Commands are compared with the label REACTION_S earlier: a window covers 250 ms, the envelope
# filter lags ~60 ms and the 3-window majority vote needs 2 windows (50-100 ms).
REACTION_S = 0.3
# Measured 0.91 here (the same model decodes 96 % of this session's single windows offline; the
# 0.3 s allowance does not cover every transition). Chance is 1/3, and an orthosis left at relax
# would score about 0.35 on these 16 s (a 15 s cycle: open 5 s, relax 2.5 s, close 5 s, relax 2.5 s,
# so every intent appears wherever the daemon starts); a swapped class order or a broken chain
# scores below that.
MIN_AGREEMENT = 0.75
STALE_LIMIT_S = 0.150


@pytest.fixture(scope="session")
def trained_model(myo_src, tmp_path_factory) -> Path:
    return male13_model(tmp_path_factory.getbasetemp(), myo_src)


@pytest.fixture(scope="session")
def other_models(myo_src, tmp_path_factory, trained_model) -> dict[str, Path]:
    """A second valid model (another seed) and one for a 100 Hz stream (quick, barely trained)."""
    root = tmp_path_factory.mktemp("ctl_other")
    rec = myo_recording(myo_src, "Male13", "training0")
    return {
        "second": train_model(root / "second.onnx", [rec], steps=30, seed=1),
        "rate100": train_model(root / "rate100.onnx", [rec], steps=1, rate=100.0),
    }


def _label_at(replay, t: float) -> int | None:
    return replay.label_at(t)


def _stop_after(sim, t: float, reason: StopReason, what: str) -> dict:
    """The first STOP with ``reason`` after ``t``: under load a late ACK can make the host probe
    with a STOP (host error) first, and nothing orders the two."""
    return sim.log.wait_for(lambda e: e["event"] == "stop" and e["t"] > t and e["reason"] == reason, 2, what)


@pytest.fixture(scope="module")
def scenario(myo_src, trained_model, other_models, tmp_path_factory):
    from rig.replay import Replay

    tmp = tmp_path_factory.mktemp("e2e")
    rec = myo_recording(myo_src, "Male13", "Test0")
    name = unique_name()
    model = tmp / "model.onnx"
    shutil.copy(trained_model, model)
    sim = Sim(tmp)
    replay = Replay(rec.emg, rec.labels, 200.0, name=name).start()
    daemon = Daemon(tmp, stream=name, port=str(sim.link), model=model)
    sub = Sub(daemon.monitor)
    r: dict = {"tmp": tmp, "sim": sim, "replay": replay, "daemon": daemon, "sub": sub}
    try:
        running = sub.wait_for(lambda topic, m: topic == "event" and m.get("state") == "running", 20, "running")
        r["t_running"] = running["t_mono"]

        # 1. agreement with the labels
        t_end = r["t_running"] + AGREEMENT_S
        r["t_end"] = t_end
        wait_until(lambda: time.monotonic() > t_end, AGREEMENT_S + 5, "the agreement phase", poll=0.1)
        sub.drain()
        r["commands"] = [c for c in sim.log.events("command") if r["t_running"] <= c["t"] <= t_end]
        r["decisions"] = [m for topic, m in sub.messages if topic == "decision"]

        # 2. pause / resume
        t = time.monotonic()
        r["pause"] = daemon.ctl("pause")
        r["pause_stop"] = _stop_after(sim, t, StopReason.OPERATOR, "STOP on pause")
        t_paused = time.monotonic()
        sub.wait_for(lambda topic, m: topic == "decision" and m["t_mono"] > t_paused + 0.2, 2, "decisions while paused")
        r["paused_commands"] = [c for c in sim.log.events("command") if t_paused < c["t"] < time.monotonic()]
        r["paused_state"] = daemon.ctl("status")["status"]["state"]
        r["resume"] = daemon.ctl("resume")
        t = time.monotonic()
        r["resumed_command"] = sim.log.wait_for(
            lambda e: e["event"] == "command" and e["t"] > t, 3, "commands after resume"
        )

        # 3. hot swap
        garbage = tmp / "garbage.onnx"
        garbage.write_bytes(b"this is not an onnx model" * 10)
        r["reload_garbage"] = daemon.ctl("reload", f"path={garbage}")
        r["reload_rate100"] = daemon.ctl("reload", f"path={other_models['rate100']}")
        t = time.monotonic()
        tmp_copy = tmp / ".model.onnx.new"
        shutil.copy(other_models["second"], tmp_copy)
        os.replace(tmp_copy, model)  # replace the watched file atomically
        r["reload_event"] = sub.wait_for(
            lambda topic, m: topic == "event" and m.get("event") == "reload" and m["t_mono"] > t,
            5,
            "the file-watch reload",
        )
        r["after_swap_decision"] = sub.wait_for(
            lambda topic, m: topic == "decision" and m["t_mono"] > r["reload_event"]["t_mono"],
            3,
            "a decision of the new model",
        )
        r["status_after_swap"] = daemon.status()
        r["pid"] = daemon.proc.pid

        # 4. NaN samples
        wait_until(lambda: daemon.status()["state"] == "running", 5, "running before the NaN")
        t = time.monotonic()
        replay.inject("nan", 5)
        r["nan_stop"] = _stop_after(sim, t, StopReason.SIGNAL_LOST, "STOP on NaN")
        r["nan_event"] = sub.wait_for(lambda topic, m: topic == "event" and m.get("state") == "stale", 2, "stale")
        r["nan_rearm_command"] = sim.log.wait_for(
            lambda e: e["event"] == "command" and e["t"] > r["nan_stop"]["t"], 3, "commands after the NaN"
        )
        r["nan_injected_at"] = t

        # 5. stale: the armband goes quiet
        wait_until(lambda: daemon.status()["state"] == "running", 5, "running before the pause")
        time.sleep(0.2)  # not synchronisation: a stretch of normal streaming before the silence
        r["t_last_sample"] = replay.pause()
        r["stale_stop"] = _stop_after(sim, r["t_last_sample"], StopReason.SIGNAL_LOST, "STOP after the input stopped")
        r["stale_state"] = sim.log.wait_for(
            lambda e: e["event"] == "state" and e["t"] > r["t_last_sample"], 2, "the device's safe state"
        )
        r["stale_status"] = daemon.status()
        r["commands_after_silence"] = [c for c in sim.log.events("command") if c["t"] > r["stale_stop"]["t"]]
        replay.resume()
        wait_until(lambda: daemon.status()["state"] == "running", 5, "running again")

        # 6. SIGTERM
        t = time.monotonic()
        r["exit_code"], r["exit_s"] = daemon.terminate()
        r["term_stop"] = _stop_after(sim, t, StopReason.HOST_SHUTDOWN, "STOP on SIGTERM")
        r["term_commands"] = [c for c in sim.log.events("command") if c["t"] > r["term_stop"]["t"]]
        r["final_state"] = list(sim.log.events("state"))[-1]
        yield r
    finally:
        sub.close()
        daemon.stop()
        replay.close()
        sim.stop()


def test_commands_agree_with_the_recording_labels(scenario):
    commands, replay = scenario["commands"], scenario["replay"]
    # a command for every decision; a loop that fell behind (a loaded CPU) decides the newest window
    # and counts the ones it skipped, so together they account for every 50 ms window
    during = [d for d in scenario["decisions"] if scenario["t_running"] <= d["t_mono"] <= scenario["t_end"]]
    decided = [d for d in during if d["command_seq"] is not None]
    # under load the daemon may rightly stop commanding for a while (a starved simulator: fault, no ACK)
    assert len(commands) >= len(decided) - 3 and len(commands) >= 0.25 * AGREEMENT_S * 20
    assert sum(1 + d["skipped"] for d in during) >= 0.9 * AGREEMENT_S * 20
    scored = [(c["intent"], _label_at(replay, c["t"] - REACTION_S)) for c in commands]
    scored = [(intent, label) for intent, label in scored if label is not None]
    agreement = np.mean([intent == ("relax", "open", "close")[label] for intent, label in scored])
    intents = {intent for intent, _ in scored}
    print(f"\nagreement {agreement:.3f} over {len(scored)} commands; intents {sorted(intents)}")
    assert intents == {"relax", "open", "close"}
    assert agreement >= MIN_AGREEMENT


def test_decision_messages_carry_timing_for_every_command(scenario):
    during = [d for d in scenario["decisions"] if scenario["t_running"] <= d["t_mono"] <= scenario["t_end"]]
    assert sum(1 + d["skipped"] for d in during) >= 0.9 * AGREEMENT_S * 20  # every window (see above)
    decisions = [d for d in during if d["command_seq"] is not None]
    assert len(decisions) >= 0.25 * AGREEMENT_S * 20
    by_seq = {c["seq"]: c for c in scenario["sim"].log.events("command")}
    d = decisions[-1]
    assert d["schema"] == "metaemg.monitor/1" and d["topic"] == "decision"
    assert set(d["stages_us"]) == {"input", "signal", "model", "policy", "link"}
    assert abs(sum(d["probabilities"]) - 1) < 1e-4 and d["label"] in ("relax", "open", "close")
    assert d["intent"] in ("relax", "open", "close") and d["state"] == "running"
    # the LSL timestamp of the window's last sample, then the command at the simulator
    e2e = np.array([by_seq[d["command_seq"]]["t"] - d["lsl_ts"] for d in decisions if d["command_seq"] in by_seq])
    inside = np.array([d["latency_ms"] for d in decisions])
    print(
        f"\nend-to-end (last sample pushed -> command at the simulator): p50 {1e3 * np.median(e2e):.2f} ms, "
        f"p99 {1e3 * np.percentile(e2e, 99):.2f} ms; daemon (chunk received -> written): "
        f"p50 {np.median(inside):.3f} ms, p99 {np.percentile(inside, 99):.3f} ms"
    )
    assert len(e2e) >= 0.9 * len(decisions)
    assert (e2e > 0).all()
    assert np.median(e2e) < 0.02 and np.median(inside) < 5


def test_the_hot_path_runs_in_its_own_thread_under_the_requested_scheduling(scenario):
    rt = scenario["status_after_swap"]["realtime"]
    # the loop is the process's main thread; input -> decision -> frame runs in the reader's
    assert rt["threads"]["loop"] == scenario["pid"]
    assert isinstance(rt["threads"]["hot_path"], int) and rt["threads"]["hot_path"] != scenario["pid"]
    assert rt["policy"] in ("fifo", "other") and rt["realtime"] == (rt["policy"] == "fifo")


def test_pause_sends_stop_and_resume_commands_again(scenario):
    assert scenario["pause"] == {"ok": True, "state": "paused"}
    assert scenario["pause_stop"]["reason"] == StopReason.OPERATOR
    assert scenario["paused_state"] == "paused"
    assert scenario["paused_commands"] == []
    assert scenario["resume"]["ok"] is True
    assert scenario["resumed_command"]["intent"] in ("relax", "open", "close")


def test_hot_swap_refuses_bad_files_and_swaps_a_good_one(scenario):
    garbage, rate100 = scenario["reload_garbage"], scenario["reload_rate100"]
    assert garbage["ok"] is False and "not a valid ONNX model" in garbage["error"]
    assert rate100["ok"] is False and "100 Hz" in rate100["error"] and "200 Hz" in rate100["error"]
    old_id = garbage["model_id"]
    assert rate100["model_id"] == old_id
    event = scenario["reload_event"]
    assert event["ok"] is True and event["previous_model_id"] == old_id and event["model_id"] != old_id
    assert scenario["after_swap_decision"]["model_id"] == event["model_id"]
    status = scenario["status_after_swap"]
    assert status["model"]["model_id"] == event["model_id"]
    assert status["counters"]["reloads_failed"] == 2 and status["counters"]["reloads_ok"] == 1


def test_nan_input_is_safe_at_once_and_rearms_after_good_data(scenario):
    stop = scenario["nan_stop"]
    assert stop["reason"] == StopReason.SIGNAL_LOST
    assert stop["t"] - scenario["nan_injected_at"] < 0.1
    assert scenario["nan_event"]["reason"] in ("nonfinite", "rearming")
    # commands again only after rearm_ms (300 ms) of good samples
    assert scenario["nan_rearm_command"]["t"] - stop["t"] >= 0.3


def test_stale_input_gives_the_safe_command_within_150_ms(scenario):
    delay = scenario["stale_stop"]["t"] - scenario["t_last_sample"]
    print(f"\nlast sample -> STOP at the simulator: {delay * 1000:.1f} ms")
    assert scenario["stale_stop"]["reason"] == StopReason.SIGNAL_LOST
    assert 0.1 <= delay <= STALE_LIMIT_S  # stale_ms = 100 by default: not before, and promptly
    assert scenario["stale_state"]["state"] == "safe"
    assert scenario["stale_status"]["state"] == "stale" and scenario["stale_status"]["policy"]["reason"] == "stale"
    assert scenario["commands_after_silence"] == []


def test_sigterm_sends_stop_and_exits_0_within_1_s(scenario):
    print(f"\nSIGTERM -> exit: {scenario['exit_s'] * 1000:.0f} ms")
    assert scenario["exit_code"] == 0, scenario["daemon"].stderr
    assert scenario["exit_s"] < 1.0
    assert scenario["term_stop"]["reason"] == StopReason.HOST_SHUTDOWN
    assert scenario["term_commands"] == []
    assert scenario["final_state"]["state"] == "safe"
    assert not Path(scenario["daemon"].control[len("ipc://") :]).exists()
    stopped = scenario["daemon"].events("stopped")
    assert stopped and stopped[0]["exit_code"] == 0
