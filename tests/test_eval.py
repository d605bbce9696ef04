"""metaemg-eval: a model over recordings through exactly the daemon's chain, torch-free."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from calibrate_helpers import NO_TORCH, base_model, clean_env, last_json, myo_recording, run_cli, write_clip

from metaemg.errors import DataError
from metaemg.modelfile import OnnxModel
from metaemg.signal import SignalChain, Windower
from metalearn.evaluate_cli import decide_recording, evaluate, main
from metalearn.recording import Recording, read_recording, write_recording


@pytest.fixture(scope="session")
def base(myo_src, tmp_path_factory) -> Path:
    return base_model(myo_src, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def tests_male14(myo_src, tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("eval")
    return [write_clip(myo_recording(myo_src, "Male14", s), d / f"Male14_{s}.csv") for s in ("Test0", "Test1")]


def test_eval_json_without_torch(base, tests_male14, tmp_path):
    proc = run_cli("metaemg-eval", ["--model", str(base), *map(str, tests_male14), "--json"], clean_env(tmp_path),
                   python_prelude=NO_TORCH)
    assert proc.returncode == 0, proc.stderr
    doc = last_json(proc.stdout)
    recs = doc["recordings"]
    assert [r["path"] for r in recs] == [str(p) for p in tests_male14]
    assert doc["windows"] == sum(r["windows"] for r in recs)
    pooled = sum(r["accuracy"] * r["windows"] for r in recs) / doc["windows"]
    assert doc["accuracy"] == pytest.approx(pooled)
    for r in recs:
        cm = np.array(r["confusion"])
        assert cm.shape == (3, 3) and cm.sum() == r["windows"]
        assert r["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
        assert set(r["recall"]) == {"relax", "open", "close"}
        assert r["delay"]["changes"] == len(r["changes"]) == 16  # 4 cycles x 4 label changes
        assert all(c["delay_ms"] is None or c["delay_ms"] >= 0 for c in r["changes"])
    assert "recording" in proc.stdout and "confusion over all recordings" in proc.stdout


def test_decisions_are_those_of_the_daemons_chain_fed_in_chunks(base, tests_male14):
    """The daemon filters chunk by chunk and windows with the Windower; eval runs the file as one
    stream: the same windows, the same decisions."""
    model = OnnxModel(base)
    rec = read_recording(tests_male14[0])
    ends, decisions = decide_recording(model, rec)
    info = model.info
    chain, windower = SignalChain(info.signal), Windower(info.window, info.stride, info.channels)
    rng = np.random.default_rng(0)
    live_ends, live = [], []
    i = 0
    while i < rec.n_samples:
        n = int(rng.integers(1, 40))
        windows, e = windower.push(chain.process(rec.emg[i:i + n]))
        for w, end in zip(windows, e, strict=True):
            live_ends.append(int(end))
            live.append(int(model.predict(w[None]).argmax()))
        i += n
    assert live_ends == ends.tolist()
    assert live == decisions.tolist()


def test_a_bad_recording_is_one_line_and_exit_2(base, tests_male14, tmp_path):
    bad = tmp_path / "bad.csv"
    lines = tests_male14[0].read_text().splitlines()
    lines[5] = lines[5].replace(",", ",x", 1)
    bad.write_text("\n".join(lines[:100]) + "\n")
    proc = run_cli("metaemg-eval", ["--model", str(base), str(tests_male14[0]), str(bad)], clean_env(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
    assert f"{bad}, row 5:" in proc.stderr and proc.stdout == ""  # checked before any work


def test_rate_mismatch_missing_model_and_short_recording(base, tests_male14, tmp_path, capsys):
    rec = read_recording(tests_male14[0])
    slow = write_recording(tmp_path / "slow.csv", Recording(rec.time * 2, rec.emg, rec.labels))
    with pytest.raises(DataError, match="sample rate 100.0 Hz does not match the model's 200 Hz"):
        evaluate(base, [slow])
    short = write_recording(tmp_path / "short.csv", rec.slice(0, 20))
    with pytest.raises(DataError, match="too short"):
        evaluate(base, [short])
    assert main(["--model", str(tmp_path / "none.onnx"), str(tests_male14[0])]) == 2
    assert "model file not found" in capsys.readouterr().err
