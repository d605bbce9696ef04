"""The shipped default Myo meta-model: loadable without torch, honest metadata, safe until
calibrated, and calibrated on one session it works on a later one."""

import numpy as np
from calibrate_helpers import clean_env, last_json, run_cli

from metaemg.modelfile import OnnxModel, default_model_path
from metaemg.signal import SignalChain, make_windows
from metalearn.evaluate_cli import evaluate
from metalearn.recording import read_recording

DEFAULT = default_model_path()


def test_metadata_describes_a_myo_model_trained_on_pretraining_subjects_only():
    model = OnnxModel(DEFAULT)
    info = model.info
    assert (info.sample_rate, info.channels, info.window, info.stride) == (200.0, 8, 50, 10)
    assert info.class_names == ("relax", "open", "close")
    assert info.kind == "feat"
    assert not info.signal.rectify and info.signal.envelope_hz is None and info.signal.highpass_hz == 20
    assert dict(info.inner) == {
        "optimizer": "adam",
        "steps": 0,
        "lr": 0.01,
        "first_order": False,
        "batch_size": None,
        "head": "lda",
        "shrinkage": 0.3,
        "reject": 3.0,
    }
    config = dict(info.to_dict())
    assert config["calibration"] is None
    model.check_stream(200.0, 8)
    model.self_test()


def test_uncalibrated_it_never_moves_the_hand(myo_data):
    """As shipped its head is zero: equal probabilities, below the daemon's threshold (0.5)."""
    model = OnnxModel(DEFAULT)
    rec = read_recording(myo_data / "myo_Male13_Test0" / "t0_myo_rorcr.csv")
    w, _ = make_windows(SignalChain(model.info.signal).process(rec.emg), model.info.window, model.info.stride)
    probs = model.predict(w.astype(np.float32))
    assert np.allclose(probs, 1 / 3, atol=1e-6)


def test_calibrated_on_training0_it_works_on_test0_and_rejects_some_wrist_movements(myo_data, tmp_path):
    """metaemg-calibrate on Male13's training0 (the hardest of the three evaluation subjects),
    scored by metaemg-eval on Test0 (a later donning) and on the four other gestures of Test0,
    as the daemon decides. Measured when the model was built: accuracy 0.951, steady 0.973,
    onset delay median 110 ms, all as before the two rejections; the other gestures still open or
    close the hand in 30 % of their windows (58 % with neither the novelty rejection nor the
    non-intent classes, 54 % with the first alone; docs/evidence.md, "The default model": the target, 5 %,
    is not met)."""
    out = tmp_path / "male13.onnx"
    proc = run_cli(
        "metaemg-calibrate",
        [
            "--from-recording",
            str(myo_data / "myo_Male13_training0" / "g0_myo_rorcr.csv"),
            "--out",
            str(out),
            "--no-png",
            "--json",
            "--state-dir",
            str(tmp_path / "s"),
        ],
        clean_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    res = last_json(proc.stdout)
    assert res["gate"]["passed"] and res["accuracy_after"] > 0.95
    from controller.config import PolicyConfig

    doc = evaluate(
        out,
        [myo_data / "myo_Male13_Test0" / "t0_myo_rorcr.csv"],
        non_intent=[myo_data / "other_gestures" / "myo_Male13_Test0.csv"],
        policy=PolicyConfig(),
    )
    assert doc["accuracy"] > 0.93 and doc["steady_accuracy"] > 0.96
    assert doc["wrong_direction"] < 0.005 and min(doc["recall"].values()) > 0.9
    assert doc["delay"]["missed"] == 0 and doc["delay"]["median_ms"] <= 120
    assert doc["non_intent"]["false_activation"] < 0.35


# ------------------------------------------------------------------------------ the MyHand model
MYHAND = DEFAULT.parent / "myhand_meta.onnx"


def test_the_myhand_model_is_for_the_myhand_armbands_format_and_safe_until_calibrated():
    model = OnnxModel(MYHAND)
    info = model.info
    assert (info.sample_rate, info.channels, info.window, info.stride) == (100.0, 8, 25, 5)
    assert info.kind == "feat" and info.signal.input_range == (0.0, 1000.0) and info.signal.envelope_hz is None
    assert info.inner["head"] == "lda" and info.inner.get("reject") is None and info.calibration is None
    w = np.random.default_rng(0).uniform(0, 0.5, (20, 25, 8)).astype(np.float32)
    assert np.allclose(model.predict(w), 1 / 3, atol=1e-6)  # uncalibrated: never moves the hand
    model.self_test()


def test_the_myhand_model_calibrated_from_one_cycle_works_on_the_rest(myo_src, tmp_path):
    """The research protocol on Male13's training0 rendered as the MyHand armband reports it:
    metaemg-calibrate (no base model named: it picks this one) on the first cycle, metaemg-eval on
    the rest and on a later session (Test0). Measured when the model was built: 0.97 on the rest
    of the recording, 0.90 on Test0 (open recall 0.83: the armband was put on again)."""
    from metalearn.myhand import render_myhand
    from metalearn.recording import write_recording
    from metalearn.tasks import find_split
    from rig.models import myo_recording

    rec = render_myhand(myo_recording(myo_src, "Male13", "training0"), seed=0)
    split = find_split(rec.labels)
    clip = write_recording(tmp_path / "support.csv", rec.slice(0, split))
    query = write_recording(tmp_path / "query.csv", rec.slice(split))
    later = write_recording(tmp_path / "test0.csv", render_myhand(myo_recording(myo_src, "Male13", "Test0"), seed=1))
    out = tmp_path / "male13_myhand.onnx"
    args = ["--from-recording", str(clip), "--out", str(out), "--no-png", "--json", "--state-dir", str(tmp_path / "s")]
    proc = run_cli("metaemg-calibrate", args, clean_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    res = last_json(proc.stdout)
    assert (
        res["base_model"] == str(MYHAND)
        and res["holdout"] == "cross-validation over the halves of the clip's one cycle"
    )
    assert res["gate"]["passed"] and res["accuracy_after"] > 0.9
    doc = evaluate(out, [query])
    assert doc["accuracy"] > 0.93 and min(doc["recall"].values()) > 0.9, (doc["accuracy"], doc["recall"])
    doc = evaluate(out, [later])  # another donning of the armband: harder from one cycle
    assert doc["accuracy"] > 0.85 and min(doc["recall"].values()) > 0.75, (doc["accuracy"], doc["recall"])
