"""A session belongs to a patient (issue 28): the real daemon in this process (its armband fed by
the test, as in test_daemon_inprocess.py), the real calibration store with models calibrated for
two patients by metaemg-calibrate, the real control socket."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calibration.cli import main as calibrate
from firmware_protocol.messages import Command
from metaemg.modelfile import OnnxModel, default_model_path
from metaemg.patients import SESSION_FILE, latest_model, read_session
from metalearn.recording import write_recording
from rig.models import myo_recording
from tests.test_daemon_inprocess import Harness, run

CLIP_S = 32


@pytest.fixture(scope="module")
def state(myo_src, tmp_path_factory) -> Path:
    """A state directory holding a calibrated model for P1 (Male13's clip) and one for P2 (Male15's)."""
    root = tmp_path_factory.mktemp("sessions")
    for patient, subject in (("P1", "Male13"), ("P2", "Male15")):
        clip = write_recording(
            root / f"{subject}.csv", myo_recording(myo_src, subject, "training0").slice(0, CLIP_S * 200)
        )
        args = ["--from-recording", str(clip), "--patient", patient, "--no-png", "--state-dir", str(root / "state")]
        assert calibrate([*args, "--control", f"ipc://{root}/no-daemon.sock"]) == 0
    return root / "state"


def mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def model_id(state: Path, patient: str) -> str:
    found = latest_model(state, patient)
    assert found is not None
    return found[1].model_id


def fresh(state: Path, tmp: Path) -> Path:
    """A copy of the state directory of its own (a test opens and ends sessions in it)."""
    import shutil

    out = tmp / "state"
    shutil.copytree(state, out)
    return out


def test_held_until_a_session_is_open_and_never_another_patients_model(state, tmp_path, emg):
    sessions = fresh(state, tmp_path)
    p1, p2 = model_id(sessions, "P1"), model_id(sessions, "P2")
    base_id = OnnxModel(default_model_path()).info.model_id

    async def scenario(h: Harness) -> dict:
        out: dict = {}
        await h.feed_until(lambda: h.state() == "paused", 10, "held without a session")
        out["held"] = (h.ctrl.sm.reason, (await h.ctl(cmd="status"))["status"]["session"])
        out["resume without"] = await h.ctl(cmd="resume")
        out["open P2"] = await h.ctl(cmd="session", patient="P2")
        out["after open"] = (h.state(), h.ctrl.sm.reason, json.loads((sessions / SESSION_FILE).read_text()))
        out["P1 in P2's session"] = await h.ctl(cmd="reload", path=str(latest_model(sessions, "P1")[0]))
        out["still P2"] = h.ctrl.model.info.model_id
        commands = len(h.device.of_type(Command))
        h.push(1.0)
        out["commands while held"] = len(h.device.of_type(Command)) - commands
        out["keep"] = await h.ctl(cmd="resume")
        await h.feed_until(lambda: h.state() == "running", 5, "running on P2's model")
        out["kept"] = read_session(sessions)
        out["open P3"] = await h.ctl(cmd="session", patient="P3")  # no model yet: the base model, held
        out["P3"] = (h.state(), h.ctrl.model.info.model_id)
        out["bad id"] = await h.ctl(cmd="session", patient="Jane Doe")
        out["end"] = await h.ctl(cmd="session", end=True)
        out["ended"] = (h.state(), h.ctrl.sm.reason, (sessions / SESSION_FILE).exists(), h.ctrl.model.info.model_id)
        return out

    r = run(tmp_path, emg, scenario, sessions=sessions)
    assert r["held"][0] == "no patient session" and r["held"][1]["patient"] is None
    assert r["resume without"]["ok"] is False and "no patient session is open" in r["resume without"]["error"]
    opened = r["open P2"]["session"]
    assert r["open P2"]["ok"] and opened["patient"] == "P2" and opened["kept"] is False
    assert opened["model"]["model_id"] == p2 and opened["model"]["patient"] == "P2" and opened["model"]["calibrated"]
    assert r["after open"][:2] == ("paused", "session opened: keep the model or calibrate")
    assert r["after open"][2]["patient"] == "P2" and r["after open"][2]["model_id"] == p2
    refused = r["P1 in P2's session"]
    assert refused["ok"] is False and "calibrated for patient P1; this session is P2's" in refused["error"]
    assert r["still P2"] == p2 and r["commands while held"] == 0 and p1 != p2
    assert r["keep"]["ok"] and r["kept"].kept and r["kept"].model_id == p2
    assert r["open P3"]["ok"] and r["P3"] == ("paused", base_id)
    assert r["bad id"]["ok"] is False and "a patient id is 1-32 letters" in r["bad id"]["error"]
    assert r["end"]["ok"] and r["ended"] == ("paused", "no patient session", False, base_id)


def test_a_restart_within_a_session_reopens_its_model_and_a_lost_model_is_not_replaced(state, tmp_path, emg):
    sessions = fresh(state, tmp_path)
    p1 = model_id(sessions, "P1")

    async def first(h: Harness) -> dict:
        await h.feed_until(lambda: h.state() == "paused", 10, "held")
        assert (await h.ctl(cmd="session", patient="P1"))["ok"]
        assert (await h.ctl(cmd="resume"))["ok"]
        await h.feed_until(lambda: h.state() == "running", 5, "running")
        return {}

    run(mkdir(tmp_path / "a"), emg, first, sessions=sessions)

    async def after_restart(h: Harness) -> dict:
        await h.feed_until(lambda: h.state() == "running", 10, "running again after the restart")
        return {"model": h.ctrl.model.info.model_id, "session": (await h.ctl(cmd="status"))["status"]["session"]}

    r = run(mkdir(tmp_path / "b"), emg, after_restart, sessions=sessions)
    assert r["model"] == p1 and r["session"]["patient"] == "P1" and r["session"]["kept"] is True

    # the session's model file is gone (pruned by hand): the base model, held, never another one
    latest_model(sessions, "P1")[0].unlink()

    async def lost(h: Harness) -> dict:
        await h.feed_until(lambda: h.state() == "paused", 10, "held")
        return {"model": h.ctrl.model.info.model_id, "reason": h.ctrl.sm.reason}

    r = run(mkdir(tmp_path / "c"), emg, lost, sessions=sessions)
    assert r["model"] == OnnxModel(default_model_path()).info.model_id
    assert r["reason"] == "session opened: keep the model or calibrate"


@pytest.fixture
def emg() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.standard_normal((4000, 8)) * 20).astype(np.float32)


def test_a_calibration_is_for_the_sessions_patient_and_opens_one_when_none_is(state, myo_src, tmp_path, emg, capsys):
    import asyncio

    sessions = fresh(state, tmp_path)
    clip = write_recording(tmp_path / "clip.csv", myo_recording(myo_src, "Male13", "training0").slice(0, CLIP_S * 200))

    def calibrate_for(patient: str, endpoint: str) -> tuple[int, str]:
        args = ["--from-recording", str(clip), "--patient", patient, "--no-png", "--state-dir", str(sessions)]
        try:
            rc = calibrate([*args, "--control", endpoint])
        except SystemExit as exc:  # the console script's one-line error
            rc = int(exc.code or 0)
        out = capsys.readouterr()
        return rc, out.out + out.err

    async def scenario(h: Harness) -> dict:
        await h.feed_until(lambda: h.state() == "paused", 10, "held")
        assert (await h.ctl(cmd="session", patient="P2"))["ok"]
        out = {"other": await asyncio.to_thread(calibrate_for, "P1", h.endpoint)}
        out["models after other"] = sorted(p.name for p in (sessions / "models").glob("adapted_*"))
        assert (await h.ctl(cmd="session", end=True))["ok"]
        out["none open"] = await asyncio.to_thread(calibrate_for, "P1", h.endpoint)
        out["daemon"] = (h.ctrl.model.info.model_id, h.ctrl.session)
        return out

    before = sorted(p.name for p in (sessions / "models").glob("adapted_*"))
    r = run(tmp_path, emg, scenario, sessions=sessions)
    rc, text = r["other"]
    assert rc == 2 and "the controller's session is patient P2's, not P1's: nothing recorded" in text
    assert r["models after other"] == before  # nothing installed
    rc, text = r["none open"]
    assert rc == 0 and "session opened for patient P1" in text
    new = latest_model(sessions, "P1")
    model, session = r["daemon"]
    assert model == new[1].model_id and session.patient == "P1" and session.model_id == model
