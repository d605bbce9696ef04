"""Movements that are not intents (issue 27): the calibration's movement segment from the cues to
the installed model. Real Myo recordings, the packaged model, real onnxruntime, metaemg-calibrate
and metaemg-eval's own code, the daemon's policy replayed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calibration.cli import main
from calibration.gate import GateRules, decide
from calibration.protocol import CueProtocol, labels_from_cues
from controller.config import Config
from metaemg.errors import ConfigError, DataError
from metaemg.feathead import feat_head, softmax
from metaemg.intents import MOVE
from metaemg.modelfile import OnnxModel
from metalearn.clip import prepare_clip
from metalearn.evaluate_cli import evaluate
from metalearn.export import load_torch_from_onnx
from metalearn.metrics import summary
from metalearn.myo import movement_segment, other_gestures
from metalearn.recording import Recording, read_recording, write_recording
from metalearn.tasks import TaskRef, load_task
from rig.models import myo_recording, myo_session

SUBJECT = "Male13"  # its wrist extension is the closest to its open of the three evaluation subjects
MOVE_S = CueProtocol().move_s


def protocol_clip(myo_src: Path, subject: str, move_s: float) -> Recording:
    """A clip as the default protocol records it: 2 s of each cue in two cycles of the
    calibration session (:func:`bench.myo_accuracy.calibration_clip`), then ``move_s`` of its
    wrist movements, labelled move."""
    from bench.myo_accuracy import calibration_clip

    clip = calibration_clip(myo_recording(myo_src, subject, "training0"), 4.0, (0, 1))
    moves = movement_segment(*other_gestures(myo_session(myo_src, subject, "training0")), move_s)
    emg = np.concatenate([clip.emg, moves])
    labels = np.concatenate([clip.labels, np.full(len(moves), MOVE)])
    return Recording(np.arange(len(emg)) / 200.0, emg, labels)


@pytest.fixture(scope="module")
def files(myo_src, tmp_path_factory) -> dict[str, Path]:
    """The clip with and without its movement segment; the later sessions; their wrist movements
    as recordings labelled move (every window should decide relax)."""
    d = tmp_path_factory.mktemp("nonintent")
    out = {
        "clip": write_recording(d / "clip.csv", protocol_clip(myo_src, SUBJECT, MOVE_S)),
        "clip without": write_recording(d / "clip_without.csv", protocol_clip(myo_src, SUBJECT, 0.0)),
    }
    for t in ("Test0", "Test1"):
        out[t] = write_recording(d / f"{t}.csv", myo_recording(myo_src, SUBJECT, t))
        emg, _ = other_gestures(myo_session(myo_src, SUBJECT, t))
        moves = Recording(np.arange(len(emg)) / 200.0, emg, np.full(len(emg), MOVE))
        out[f"{t} wrist"] = write_recording(d / f"{t}_wrist.csv", moves)
    return out


def calibrate(clip: Path, out: Path, state: Path, capsys, *extra: str) -> dict:
    args = ["--from-recording", str(clip), "--out", str(out), "--no-png", "--json", "--state-dir", str(state)]
    rc = main([*args, "--control", f"ipc://{state}/no-daemon.sock", *extra])
    stdout = capsys.readouterr().out
    result = json.loads(stdout.strip().splitlines()[-1])
    assert rc == 0, stdout
    result["stdout"] = stdout
    return result


# ------------------------------------------------------------------------------ the clip's layout
def test_the_protocol_ends_with_the_movement_segment_and_the_clip_keeps_its_label(tmp_path):
    p = CueProtocol()
    cues = p.cues()
    assert [(c.name, c.label, c.duration) for c in cues[-2:]] == [("relax", 0, 2.0), ("move", MOVE, 6.0)]
    assert cues[-1].cycle == 2 and p.duration_s == 24.0 and p.duration_s + p.countdown_s <= 60
    assert [c.name for c in CueProtocol(move_s=0).cues()][-1] == "relax"
    with pytest.raises(ConfigError, match=r"protocol\.move_s: must be 0"):
        CueProtocol(move_s=0.5)
    shown = np.array([c.start for c in cues])
    t = np.array([17.9, 18.29, 18.31, 23.9])
    assert labels_from_cues(t, shown, np.array([c.label for c in cues]), 0.3).tolist() == [0, 0, MOVE, MOVE]
    rec = Recording(np.arange(6) / 200.0, np.ones((6, 8)), np.array([0, 1, 0, 2, 0, MOVE]))
    back = read_recording(write_recording(tmp_path / "clip.csv", rec))
    assert back.labels.tolist() == [0, 1, 0, 2, 0, MOVE]
    # a clip is no training task: its movement segment is refused there by name
    task_dir = tmp_path / "sess01"
    task_dir.mkdir()
    write_recording(task_dir / "01_myo_rorcr.csv", rec)
    with pytest.raises(DataError, match=r"01_myo_rorcr\.csv.*label 3 \(a movement segment\)"):
        load_task(tmp_path, TaskRef("sess01", "myo_rorcr"))


def test_the_clip_keeps_the_movement_segment_apart_from_the_intents(files):
    spec = OnnxModel(Path("metaemg/default_model/myo_meta.onnx")).info.signal
    with_moves = prepare_clip(read_recording(files["clip"]), spec)
    without = prepare_clip(read_recording(files["clip without"]), spec)
    # the intents' windows, labels and folds are those of the clip without the segment
    np.testing.assert_array_equal(with_moves.windows, without.windows)
    np.testing.assert_array_equal(with_moves.labels, without.labels)
    for (_, a_train, a_held, a_samples), (_, b_train, b_held, b_samples) in zip(
        with_moves.folds(), without.folds(), strict=True
    ):
        assert (a_train == b_train).all() and (a_held == b_held).all()
        n = len(b_samples)  # the scaler never sees the segment's samples
        assert (a_samples[:n] == b_samples).all() and not a_samples[n:].any()
    # the segment's windows: only those whose samples are all movement (not the relax before it)
    labels = with_moves.recording.labels
    w = spec.window
    assert len(with_moves.move_windows) == (MOVE_S * 200 - w) // spec.stride + 1
    assert all((labels[e - w + 1 : e + 1] == MOVE).all() for e in with_moves.move_ends)
    # its cross-validation: every window held out once, learned only from windows sharing no sample
    held_count = np.zeros(len(with_moves.move_ends), dtype=int)
    for learn, held in with_moves.move_folds():
        held_count += held
        gaps = np.abs(with_moves.move_ends[learn][:, None] - with_moves.move_ends[held][None, :])
        assert learn.any() and gaps.min() >= w
    assert (held_count == 1).all()


def test_metrics_count_the_movement_windows_apart():
    y = np.array([0, 1, 2, MOVE, MOVE, MOVE, MOVE])
    d = np.array([0, 1, 1, 0, 1, 2, 0])
    s = summary(y, d)
    assert s["move_activation"] == 0.5 and s["windows"] == 3 and s["recall"]["close"] == 0.0
    assert summary(y[:3], d[:3])["move_activation"] is None


def test_the_gate_refuses_a_clip_whose_movements_would_move_the_hand():
    before = {"accuracy": 0.3, "recall": {"relax": 1.0, "open": 0.0, "close": 0.0}, "move_activation": 0.0}
    after = {"accuracy": 0.95, "recall": {"relax": 0.95, "open": 0.95, "close": 0.95}, "move_activation": 0.3}
    points = {"steady": {"move_activation": 0.1}, "balanced": {"move_activation": 0.3}}
    refused = decide(before, after, GateRules(), points=points)
    assert not refused.passed and refused.reasons == (
        "the movement segment would open or close the hand in 30% of its windows (limit 25%); the operating "
        "point 'steady' gives 10%",
    )
    assert decide(before, dict(after, move_activation=0.25), GateRules()).passed
    assert decide(before, dict(after, move_activation=None), GateRules()).passed  # no segment: nothing to check


# ------------------------------------------------------------------------------ end to end
def test_the_shipped_model_with_the_movement_segment_keeps_wrist_movements_from_moving_the_hand(
    files, tmp_path, capsys
):
    """Calibrated on the clip with its movement segment, the packaged model decides open or close
    on few of the subject's wrist-movement windows of two later sessions, as the daemon decides,
    where the same clip without the segment moves the hand on many; its recall stays."""
    with_moves = calibrate(files["clip"], tmp_path / "with.onnx", tmp_path / "state", capsys)
    without = calibrate(files["clip without"], tmp_path / "without.onnx", tmp_path / "state", capsys)

    points = with_moves["operating_points"]
    assert with_moves["operating_point"] == "balanced" and list(points) == ["steady", "balanced", "responsive"]
    assert with_moves["move_activation_after"] == points["balanced"]["move_activation"] <= 0.25
    assert with_moves["gate"]["max_move_activation"] == 0.25 and with_moves["gate"]["passed"]
    assert with_moves["movement_seconds"] == pytest.approx(5.8) and without["operating_points"] == {}
    assert "movement segment: 5.8 s" in with_moves["stdout"] and " * balanced" in with_moves["stdout"]
    assert without["move_activation_after"] is None

    model = OnnxModel(tmp_path / "with.onnx")
    w = model.weights
    own = len(w["other_means"]) - 4
    assert 1 <= own <= 4 and w["other_log_prior"].tolist() == [-18.0] * 4 + [-6.0] * own
    assert model.info.calibration["operating_point"] == "balanced"

    daemon = Config()
    scored = {}
    for name in ("with", "without"):
        doc = evaluate(
            tmp_path / f"{name}.onnx",
            [files["Test0"], files["Test1"], files["Test0 wrist"], files["Test1 wrist"]],
            policy=daemon.policy,
            adapt=daemon.adapt,
        )
        scored[name] = (doc["move_activation"], doc["recall"]["open"], doc["recall"]["close"])
    print(f"{SUBJECT} as the daemon decides, (wrist movements moving the hand, open, close): {scored}")
    moved, open_recall, close_recall = scored["with"]
    assert moved < 0.10 and scored["without"][0] > 2 * moved
    assert open_recall > 0.8 and close_recall > 0.9

    # the daemon's numpy head (the session adaptation's) decides as onnxruntime, own classes included
    head = feat_head(model)
    assert head is not None
    rec = read_recording(files["Test0 wrist"])
    from metaemg.signal import SignalChain, make_windows

    windows, _ = make_windows(SignalChain(model.info.signal).process(rec.emg), model.info.window, model.info.stride)
    onnx = model.predict(windows.astype(np.float32))
    ours = softmax(head.logits(head.embed(windows)))
    assert np.abs(ours - onnx).max() < 1e-4 and (ours.argmax(1) == onnx.argmax(1)).all()
    # and the file is a base model again for the next calibration (its own classes go then)
    torch_model, _ = load_torch_from_onnx(tmp_path / "with.onnx")
    assert torch_model.other_means.shape[0] == 4 + own


def test_the_operating_point_is_the_clinicians_and_eval_reports_the_segment(files, tmp_path, capsys):
    steady = calibrate(
        files["clip"], tmp_path / "steady.onnx", tmp_path / "state", capsys, "--operating-point", "steady"
    )
    assert steady["operating_point"] == "steady"
    assert steady["move_activation_after"] == steady["operating_points"]["steady"]["move_activation"]
    assert OnnxModel(tmp_path / "steady.onnx").weights["other_log_prior"][4:].max() > -1e-5  # as likely as an intent
    doc = evaluate(tmp_path / "steady.onnx", [files["clip"]])  # the clip itself through metaemg-eval
    assert doc["move_activation"] is not None and doc["windows"] < len(read_recording(files["clip"]).labels)
