"""metaemg-demo as a user runs it: three real processes, a real recording, a summary."""

from __future__ import annotations

import re
import subprocess

import pytest

from metaemg.modelfile import default_model_path
from rig.models import male13_model
from rig.processes import BIN

pytestmark = [pytest.mark.slow]


def run_demo(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "metaemg-demo"), *args], capture_output=True, text=True, timeout=timeout)


def test_demo_replays_a_recording_through_daemon_and_simulator(myo_src, tmp_path_factory, tmp_path):
    model = male13_model(tmp_path_factory.getbasetemp(), myo_src)
    proc = run_demo("--duration", "7", "--model", str(model), "--workdir", str(tmp_path))
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "replay   myo:Male13/Test0" in out
    live = [line for line in out.splitlines() if re.match(r"\s+\d+\.\d\s+(relax|open|close|-)\s", line)]
    assert len(live) >= 8  # about four lines per second
    decisions = int(re.search(r"decisions\s+(\d+)", out).group(1))
    commands = int(re.search(r"commands accepted by the simulator\s+(\d+)", out).group(1))
    agreement = float(re.search(r"agreement with the labels\s+([\d.]+)%", out).group(1))
    # 20 a second once running: about 110 decisions in 7 s on an idle machine, after the start and
    # 1.3 s of rate check. How many depends on how fast three processes start: beside two CPU hogs
    # 41 decisions and 27 commands were seen. What must hold anywhere: the chain decides and
    # commands, and never commands more than it decides.
    assert decisions >= 20 and 10 <= commands <= decisions
    assert agreement >= 60  # a calibrated model on an unseen session of the same subject
    assert "myhand-controller exit status      0" in out
    assert (tmp_path / "controller.log").read_text().count('"event": "stopped"') == 1


def test_demo_calibrates_the_packaged_default_model(tmp_path):
    path = default_model_path()
    if path.is_file():  # shipped: calibrated on Male13/training0, then driving the replay of Test0
        proc = run_demo("--duration", "6", "--quiet", "--workdir", str(tmp_path))
        out = proc.stdout
        assert proc.returncode == 0, out + proc.stderr
        assert "calibration: adapting the default model on Male13/training0" in out
        assert re.search(r"calibration: held-out accuracy \d+% -> \d+%", out), out
        assert f"model    {tmp_path / 'calibrated.onnx'}" in out
        assert int(re.search(r"decisions\s+(\d+)", out).group(1)) > 30
        assert int(re.search(r"commands accepted by the simulator\s+(\d+)", out).group(1)) > 0
    else:  # not shipped: a clear one-line error naming the path
        proc = run_demo("--duration", "1")
        assert proc.returncode == 2
        assert proc.stderr.startswith(f"error: {path}: the default model is not there; give --model FILE")
