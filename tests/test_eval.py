"""metaemg-eval: a model over recordings through exactly the daemon's chain, torch-free."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from calibrate_helpers import NO_TORCH, base_model, clean_env, last_json, run_cli, write_clip

from metaemg.errors import DataError
from metaemg.modelfile import OnnxModel
from metaemg.signal import SignalChain, Windower
from metalearn.evaluate_cli import decide_recording, evaluate, main
from metalearn.recording import Recording, read_recording, write_recording
from rig.models import myo_recording


@pytest.fixture(scope="session")
def base(myo_src, once) -> Path:
    return once("base_model", lambda out: base_model(myo_src, out))


@pytest.fixture(scope="module")
def tests_male14(myo_src, tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("eval")
    return [write_clip(myo_recording(myo_src, "Male14", s), d / f"Male14_{s}.csv") for s in ("Test0", "Test1")]


def test_eval_json_without_torch(base, tests_male14, tmp_path):
    proc = run_cli(
        "metaemg-eval",
        ["--model", str(base), *map(str, tests_male14), "--json"],
        clean_env(tmp_path),
        python_prelude=NO_TORCH,
    )
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
        windows, e = windower.push(chain.process(rec.emg[i : i + n]))
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
    with pytest.raises(DataError, match=re.escape("sample rate 100.0 Hz does not match the model's 200 Hz")):
        evaluate(base, [slow])
    short = write_recording(tmp_path / "short.csv", rec.slice(0, 20))
    with pytest.raises(DataError, match="too short"):
        evaluate(base, [short])
    assert main(["--model", str(tmp_path / "none.onnx"), str(tests_male14[0])]) == 2
    assert "model file not found" in capsys.readouterr().err


# ------------------------------------------------------------------ the metrics a patient feels
def test_metrics_on_a_constructed_sequence_with_known_answers():
    from metalearn.metrics import steady_windows, summary

    labels = np.array([0] * 10 + [1] * 10 + [0] * 10 + [2] * 10)
    ends = np.arange(4, 40, 5)  # windows of 5 samples ending at 4, 9, ..., 39
    steady = steady_windows(labels, ends, 5)
    # windows ending at 10..13 / 20..23 / 30..33 would straddle; these end at 4,9,14,19,24,29,34,39
    assert steady.tolist() == [True] * 8
    assert steady_windows(labels, np.array([9, 10, 13, 14]), 5).tolist() == [True, False, False, True]
    y = labels[ends]  # relax relax open open relax relax close close
    decided = np.array([0, 1, 2, 1, 0, 0, 1, 2])  # one false activation, one open->close, one close->open
    s = summary(y, decided, steady)
    assert s["windows"] == 8 and s["accuracy"] == pytest.approx(5 / 8) and s["steady_accuracy"] == pytest.approx(5 / 8)
    assert s["false_activation"] == pytest.approx(1 / 4)  # 1 of the 4 relax windows moves the hand
    assert s["wrong_direction"] == pytest.approx(2 / 4)  # 2 of the 4 open/close windows go the wrong way
    assert s["recall"] == {"relax": 0.75, "open": 0.5, "close": 0.5}
    only_relax = summary(np.zeros(3), np.zeros(3))
    assert only_relax["wrong_direction"] is None and only_relax["steady_accuracy"] is None
    assert only_relax["false_activation"] == 0.0 and only_relax["recall"]["open"] is None


def test_daemon_policy_replay_votes_and_holds():
    from controller.config import PolicyConfig
    from controller.policy import replay

    open_, close, relax, unsure = [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.8, 0.1, 0.1], [0.4, 0.35, 0.25]
    probs = [relax] * 8 + [open_] + [relax] * 4 + [open_] * 6 + [close] * 12 + [unsure] * 4
    times = np.arange(len(probs)) * 0.05 + 0.25  # window i ends at 0.25 + 0.05 i s
    got = replay(np.array(probs), times, PolicyConfig(), start=0.0)
    assert got[:14] == [0] * 14  # arming (300 ms of good input), relax; one stray open window cannot move the hand
    assert got[14:20] == [1] * 6  # the second agreeing open window does (vote 3)
    assert got[20] == 0  # two close votes first end the opening: never open -> close directly
    assert got[21:26] == [0] * 5 and got[26] == 2  # close only refractory_ms (300 ms) after the opening ended
    assert got[31] == 2 and got[32:] == [0] * 3  # windows below the threshold vote relax
    assert replay(np.array(probs), times, PolicyConfig(threshold=0.3, vote=1), start=0.0)[8] == 1


def test_as_daemon_non_intent_and_recordings_named_by_path(base, tests_male14, myo_src, tmp_path):
    from metalearn.myo import OTHER, find_sessions, read_dat

    sess = next(s for s in find_sessions(myo_src) if s.subject == "Male14" and s.name == "Test0")
    emg = np.concatenate([read_dat(sess.path / f"classe_{g}.dat") for g in OTHER])
    lines = ["time_elapsed," + ",".join(f"emg{i}" for i in range(8)) + ",gesture"]
    lines += [f"{i / 200!r}," + ",".join(str(int(v)) for v in row) + ",1" for i, row in enumerate(emg)]
    other = tmp_path / "male14_other.csv"
    other.write_text("\n".join(lines) + "\n")
    sub = [tmp_path / "a" / "rec.csv", tmp_path / "b" / "rec.csv"]
    for src, dst in zip(tests_male14, sub, strict=True):
        dst.parent.mkdir()
        dst.write_bytes(src.read_bytes())
    raw = evaluate(base, sub, non_intent=[other])
    from controller.config import PolicyConfig

    daemon = evaluate(base, sub, non_intent=[other], policy=PolicyConfig())
    assert raw["decisions"] == "argmax" and daemon["decisions"] == "daemon" and daemon["policy"]["vote"] == 3
    for doc in (raw, daemon):
        assert doc["non_intent"]["windows"] == (len(emg) - 50) // 10 + 1
        r = doc["non_intent"]["recordings"][0]
        assert r["false_activation"] == pytest.approx((r["decided"]["open"] + r["decided"]["close"]) / r["windows"])
        assert doc["steady_accuracy"] is not None and 0 <= doc["wrong_direction"] <= 1
    # the daemon needs two agreeing windows: no label change is caught earlier than by the raw argmax
    for r_raw, r_daemon in zip(raw["recordings"], daemon["recordings"], strict=True):
        for a, b in zip(r_raw["changes"], r_daemon["changes"], strict=True):
            assert b["delay_ms"] is None or (a["delay_ms"] is not None and b["delay_ms"] >= a["delay_ms"])
    proc = run_cli(
        "metaemg-eval",
        ["--model", str(base), *map(str, sub), "--non-intent", str(other), "--as-daemon"],
        clean_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    assert "a/rec.csv" in proc.stdout and "b/rec.csv" in proc.stdout  # two files named rec.csv stay apart
    assert "as the daemon decides" in proc.stdout and "false activation" in proc.stdout
    bad = run_cli(
        "metaemg-eval", ["--model", str(base), str(sub[0]), "--config", str(tmp_path / "c.yaml")], clean_env(tmp_path)
    )
    assert bad.returncode == 2 and "--config applies to --as-daemon" in bad.stderr


def test_adapt_calibrates_in_memory_then_scores_and_an_uncalibrated_model_gets_a_note(myo_src, tmp_path, capsys):
    """--adapt CLIP.csv: the packaged meta-model calibrated on Male15's training0 in memory, scored
    on Test0; without it, the meta-model as shipped is scored with a note that it is not calibrated."""
    from metaemg.modelfile import default_model_path

    clip = write_clip(myo_recording(myo_src, "Male15", "training0"), tmp_path / "clip.csv", 32)
    test0 = write_clip(myo_recording(myo_src, "Male15", "Test0"), tmp_path / "test0.csv")
    png = tmp_path / "eval.png"
    args = ["--model", str(default_model_path()), str(test0), "--adapt", str(clip), "--plot", str(png), "--json"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"plot: {png}" in out and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = last_json(out)
    assert f"adapted {default_model_path()} on {clip} in memory (every window of the clip" in out
    assert doc["accuracy"] > 0.9 and doc["calibration"] is not None and doc["model"].endswith(f"adapted on {clip}")
    assert main(["--model", str(default_model_path()), str(test0), "--json"]) == 0
    out = capsys.readouterr().out
    assert f"note: {default_model_path()} is not calibrated" in out and last_json(out)["accuracy"] < 0.5
