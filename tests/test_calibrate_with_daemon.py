"""metaemg-calibrate against the real daemon: the installed model is hot-swapped by a running
myhand-controller (real LSL outlet, real simulator on a pty, real control socket)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from calibrate_helpers import base_model, write_clip

from metaemg.modelfile import read_model_info
from rig.models import myo_recording
from rig.processes import Daemon, Sim, unique_name, wait_until

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def base(myo_src, once):
    return once("base_model", lambda out: base_model(myo_src, out))


def test_calibration_is_taken_up_by_the_running_daemon(myo_src, base, tmp_path):
    from rig.replay import Replay

    state = tmp_path / "state"
    (state / "models").mkdir(parents=True)
    current = state / "models" / "current.onnx"
    shutil.copy(base, current)  # the daemon runs the installed model, as in a clinic
    clip = write_clip(myo_recording(myo_src, "Male15", "training0"), tmp_path / "clip.csv", seconds=45)
    rec = myo_recording(myo_src, "Male15", "Test0")
    name = unique_name("cal-daemon")
    sim = Sim(tmp_path)
    replay = Replay(rec.emg, rec.labels, 200.0, name=name).start()
    daemon = Daemon(tmp_path, stream=name, port=str(sim.link), model=current)
    try:
        wait_until(lambda: (daemon.status() or {}).get("state") == "running", 30, "the daemon running")
        before = daemon.ctl("status")["status"]["model"]["model_id"]
        assert before == read_model_info(base).model_id
        proc = subprocess.run(
            [
                str(BIN / "metaemg-calibrate"),
                "--from-recording",
                str(clip),
                "--base-model",
                str(base),
                "--state-dir",
                str(state),
                "--control",
                daemon.control,
                "--no-png",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["accuracy_after"] > result["accuracy_before"]
        assert result["daemon"]["status"] == "reloaded"
        new_id = read_model_info(current).model_id
        assert new_id == result["model_id"] != before
        assert daemon.ctl("status")["status"]["model"]["model_id"] == new_id
        wait_until(lambda: (daemon.status() or {}).get("state") == "running", 10, "running on the new model")
    finally:
        daemon.stop()
        replay.close()
        sim.stop()
