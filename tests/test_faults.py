"""Fault injection with real processes: the orthosis simulator on a pty, a replay LSL outlet, the
daemon as a subprocess. One fresh rig per test; every wait is a poll with a deadline.

Each case has one row in :data:`FAULTS`: the fault, the expected reaction and its time limit, as
asserted below from the simulator's log (what the orthosis received) and the monitor stream / the
control socket (what the daemon says). "Nothing lost or crashed": both processes are still alive
at the end (except where the fault is the daemon's death), and commands resume.

Some of these are also exercised, within longer scenarios, by test_controller_faults.py and
test_controller_e2e.py; here every case is short and on its own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from controller_helpers import BIN, Daemon, Sim, myo_recording, wait_until
from fault_helpers import STOP_HOST_ERROR, STOP_HOST_SHUTDOWN, STOP_SIGNAL_LOST, Rig, default_model

pytestmark = [pytest.mark.faults]

# case: (fault, expected reaction, time limit in seconds)
FAULTS = {
    "outlet_dies": ("the LSL outlet disappears, then comes back",
                    "STOP (signal lost) at the device, state waiting_for_stream; running again on the new outlet", 0.2),
    "outlet_silent": ("the outlet stays but stops sending",
                      "STOP (signal lost) after stale_ms (100 ms), state stale; commands again >= rearm_ms after it resumes", 0.2),
    "rate_changes": ("the stream comes back with another nominal rate",
                     "refused (stream mismatch), waiting_for_stream, no command, daemon alive", 0.2),
    "channels_change": ("the stream comes back with 4 channels instead of 8",
                        "refused (stream mismatch), waiting_for_stream, no command, daemon alive", 0.2),
    "nan": ("NaN samples", "STOP at once, state stale; commands again only after rearm_ms (300 ms) of good input", 0.15),
    "inf": ("Inf samples", "STOP at once, state stale; commands again only after rearm_ms of good input", 0.15),
    "saturated": ("saturated samples (> 20 % of a window at the rail)",
                  "STOP, state stale (saturated); commands again after rearm_ms", 0.2),
    "unplug_same_path": ("the orthosis is unplugged for 0.5 s and comes back behind the same symlink",
                         "waiting_for_link at once, no command while away, running again", 2.0),
    "unplug_new_path": ("the orthosis comes back as another device node (the symlink is moved)",
                        "waiting_for_link, then a new handshake and commands on the new node", 3.0),
    "device_reboot": ("the device reboots mid-session",
                      "reboot detected, handshake again, commands resume", 2.0),
    "corrupt_drop": ("1 % of the bytes dropped and 1 % corrupted, both directions",
                     "decode errors counted, ACK retries; >= 80 % of commands arrive, no crash", 3.0),
    "device_fault": ("the device raises a fault (overcurrent)",
                     "state fault, no command until `clear`; running again after it", 0.2),
    "no_ack": ("the device stops acking", "state fault (no ACK), STOP probes, no command; running again when ACKs return",
               0.5),
    "model_garbage": ("the watched model file is replaced by garbage",
                      "reload refused, the old model keeps deciding, no STOP", 3.0),
    "model_other_stream": ("the watched model file is replaced by a model for a 250 Hz stream",
                           "reload refused, the old model keeps deciding, no STOP", 3.0),
    "bad_config": ("a bad configuration file", "exit 2 with a one-line error, the port is never opened", 10.0),
    "sigterm": ("SIGTERM", "STOP (host shutdown), exit 0, no command after it", 1.0),
    "sigkill_restart": ("SIGKILL, then a restart",
                        "the device goes safe by its own watchdog/TTL; the restarted daemon runs again", 0.4),
}


def limit(case: str) -> float:
    return FAULTS[case][2]


@pytest.fixture(scope="module")
def emg(myo_src) -> np.ndarray:
    return myo_recording(myo_src, "Male13", "Test0").emg


@pytest.fixture
def rig(tmp_path, emg):
    model = tmp_path / "model.onnx"
    shutil.copy(default_model(), model)
    r = Rig(tmp_path, model, emg)
    yield r
    r.close()


def _replace_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name("." + path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@pytest.fixture(scope="module")
def other_stream_model(tmp_path_factory) -> bytes:
    """The default model with metadata for a 250 Hz stream (weights unchanged, id recomputed)."""
    import onnx
    from onnx import numpy_helper

    from metaemg.modelfile import compute_model_id

    m = onnx.load(str(default_model()))
    prop = next(p for p in m.metadata_props if p.key == "metaemg")
    meta = json.loads(prop.value)
    meta["sample_rate"] = 250.0
    meta["signal"]["sample_rate"] = 250.0
    weights = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    meta["model_id"] = compute_model_id(weights, meta)
    prop.value = json.dumps(meta)
    return m.SerializeToString()


def test_every_fault_case_has_a_test():
    names = {n[len("test_"):] for n in globals() if n.startswith("test_")}
    assert set(FAULTS) <= names, sorted(set(FAULTS) - names)


# -- the armband ----------------------------------------------------------------------------------


def test_outlet_dies(rig):
    from controller.replay import Replay

    t_last = rig.replay.pause()
    rig.replay.close()
    stop = rig.wait_stop_after(t_last, 2)
    assert stop["reason"] == STOP_SIGNAL_LOST and stop["t"] - t_last <= limit("outlet_dies")
    rig.wait_state("waiting_for_stream", 5)
    t_back = time.monotonic()
    rig.replay = Replay(rig.emg, None, rig.rate, name=rig.name, loop=True).start()
    running = rig.state_event("running", t_back, 10)
    assert rig.commands(stop["t"], running["t_mono"]) == []
    rig.wait_command_after(running["t_mono"], 2)
    s = rig.status()
    assert s["counters"]["stream_lost"] == 1 and s["counters"]["stream_connects"] == 2 and rig.alive()


def test_outlet_silent(rig):
    t_last = rig.replay.pause()
    stop = rig.wait_stop_after(t_last, 2)
    assert stop["reason"] == STOP_SIGNAL_LOST
    assert 0.1 <= stop["t"] - t_last <= limit("outlet_silent")  # stale_ms = 100: not before, promptly
    s = rig.wait_state("stale", 2)
    assert s["policy"]["reason"] == "stale"
    wait_until(lambda: rig.device_state() == "safe", 1, "the device's safe state")
    t_resume = time.monotonic()
    rig.replay.resume()
    again = rig.wait_command_after(t_resume, 3)
    assert rig.commands(stop["t"], t_resume) == []
    assert again["t"] - t_resume >= 0.3  # rearm_ms of good input first
    assert rig.alive()


@pytest.mark.parametrize("case", ["rate_changes", "channels_change"])
def test_stream_metadata_changes(rig, case):
    from controller.replay import Replay

    t_last = rig.replay.pause()
    rig.replay.close()
    stop = rig.wait_stop_after(t_last, 2)
    assert stop["t"] - t_last <= limit(case)
    if case == "rate_changes":
        rig.replay = Replay(rig.emg, None, 100.0, name=rig.name, loop=True).start()
        expect = "the model expects 200 Hz, the stream's nominal rate is 100 Hz"
    else:
        rig.replay = Replay(rig.emg[:, :4], None, rig.rate, name=rig.name, loop=True).start()
        expect = "the model expects 8 channels, the stream has 4"
    s = wait_until(lambda: (st := rig.status())["input"]["problem"] and "mismatch" in st["input"]["problem"] and st,
                   10, "the stream mismatch")
    assert s["state"] == "waiting_for_stream" and expect in s["input"]["problem"]
    assert s["counters"]["stream_mismatches"] >= 1
    assert rig.commands(stop["t"]) == [] and rig.device_state() == "safe" and rig.alive()


def test_stream_metadata_changes_cover_both_cases():
    assert {"rate_changes", "channels_change"} <= set(FAULTS)


def test_rate_changes():
    """Run as test_stream_metadata_changes[rate_changes]."""


def test_channels_change():
    """Run as test_stream_metadata_changes[channels_change]."""


def _inject_inf(rig: Rig, count: int) -> float:
    """Make ``count`` rows a little ahead of the replay Inf; returns their (approximate) push time."""
    ahead = 10
    i = rig.replay.pushed + ahead
    n = len(rig.emg)
    for k in range(count):
        rig.emg[(i + k) % n] = np.inf
    return time.monotonic() + ahead / rig.rate


@pytest.mark.parametrize("case", ["nan", "inf", "saturated"])
def test_bad_samples(rig, case):
    t = time.monotonic()
    if case == "nan":
        rig.replay.inject("nan", 5)
    elif case == "saturated":
        rig.replay.inject("saturate", 40)
    else:
        t = _inject_inf(rig, 5)
    stop = rig.wait_stop_after(t - 0.05, 2)
    assert stop["reason"] == STOP_SIGNAL_LOST and stop["t"] - t <= limit(case)
    event = rig.state_event("stale", t - 0.05, 2)
    expected = {"nan": "nonfinite", "inf": "nonfinite", "saturated": "saturated"}[case]
    assert expected in (event["reason"] or "") or event["reason"] == "rearming"
    again = rig.wait_command_after(stop["t"], 3)
    assert again["t"] - stop["t"] >= 0.3  # rearm_ms of good input before commands resume
    counters = rig.status()["counters"]
    assert counters["bad_input_" + ("saturated" if case == "saturated" else "nonfinite")] >= 1 and rig.alive()


def test_nan():
    """Run as test_bad_samples[nan]."""


def test_inf():
    """Run as test_bad_samples[inf]."""


def test_saturated():
    """Run as test_bad_samples[saturated]."""
