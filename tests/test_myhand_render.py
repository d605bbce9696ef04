"""Myo recordings rendered as the MyHand armband reports them (metalearn.myhand): each step, the
format's properties on real Myo sessions, and the import (metaemg-import myoarmband --as myhand)."""

from __future__ import annotations

import itertools
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from conftest import myhand_like_csv, myo_root

from metaemg.errors import ConfigError, DataError
from metalearn.myhand import (
    armband_updates,
    envelope,
    held_update,
    logger_times,
    myhand_columns,
    rectify,
    render_myhand,
    repeated_rows,
    source_index,
    to_myhand,
)
from metalearn.myo import build_recording, find_sessions, import_myoarmband, read_other_gestures
from metalearn.recording import Recording, read_recording
from metalearn.tasks import find_split, load_collection, load_task

BIN = Path(sys.executable).parent
RATE = 200.0


def label_runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
    edges = np.r_[0, np.flatnonzero(np.diff(labels)) + 1, len(labels)]
    return [(int(labels[a]), int(a), int(b)) for a, b in itertools.pairwise(edges)]


@cache
def myo_session(subject: str, name: str) -> Recording:
    (sess,) = [s for s in find_sessions(myo_root()) if (s.subject, s.name) == (subject, name)]
    return build_recording(sess)


@cache
def rendered(subject: str, name: str, seed: int = 0, armband_rate_hz: float | None = None) -> Recording:
    return render_myhand(myo_session(subject, name), seed=seed, armband_rate_hz=armband_rate_hz)


# --- the steps -----------------------------------------------------------------------------------


def test_rectify_removes_the_myo_offset_before_taking_the_magnitude():
    t = np.arange(2000) / RATE
    x = np.column_stack([-1.0 + 10 * np.sin(2 * np.pi * 60 * t), np.full_like(t, -1.0)])
    y = rectify(x, RATE)
    assert y.shape == x.shape and (y >= 0).all()
    assert y[400:, 0].mean() == pytest.approx(20 / np.pi, rel=0.05)  # |sin| averages 2/pi, not shifted
    assert y[:, 1].max() < 1e-9  # a pure offset (starts in the filter's steady state): nothing


def test_envelope_is_causal_follows_a_contraction_and_starts_at_rest():
    rng = np.random.default_rng(0)
    x = np.abs(rng.normal(0.0, 1.0, (800, 1)))
    x[400:] *= 20.0  # contraction at 2 s
    env = envelope(x, RATE)
    later = x.copy()
    later[300:] = 0.0
    np.testing.assert_array_equal(envelope(later, RATE)[:300], env[:300])  # nothing from the future
    rest, held = 0.8, 16.0  # mean |N(0, 1)| = 0.80
    assert env[:400].mean() == pytest.approx(rest, rel=0.15)
    assert env[0, 0] == pytest.approx(x[:50].mean(), rel=0.05)  # started in steady state, no ramp from 0
    assert env[650:].mean() == pytest.approx(held, rel=0.1)
    half = 400 + int(np.argmax(env[400:, 0] > (rest + held) / 2))
    assert 0.03 <= (half - 400) / RATE <= 0.12  # follows within about 0.1 s (4 Hz, 2nd order)
    assert envelope(np.full((400, 1), 3.0), RATE)[-1, 0] == pytest.approx(3.0)


def test_to_myhand_is_40_plus_20_per_myo_count_rounded_and_clipped():
    np.testing.assert_array_equal(
        to_myhand(np.array([0.0, 1.0, 1.26, 23.0, 48.0, 500.0])), [40, 60, 65, 500, 1000, 1000]
    )
    np.testing.assert_array_equal(to_myhand(np.array([-5.0]), offset=0.0, gain=1.0), [0])


def test_logger_rows_come_at_100_hz_with_jitter():
    times = logger_times(np.random.default_rng(1), 20.0)
    dt = np.diff(times)
    assert len(times) == pytest.approx(2000, rel=0.01) and 0 < times[0] <= 0.025 and times[-1] < 20.0
    assert (dt >= 0.006 - 1e-12).all() and (dt <= 0.014 + 1e-12).all()
    assert np.median(dt) == pytest.approx(0.01, rel=0.02) and np.std(dt) == pytest.approx(0.0008, rel=0.15)


def test_armband_updates_and_the_value_each_row_holds():
    upd = armband_updates(np.random.default_rng(2), 20.0, 40.0)
    assert len(upd) == pytest.approx(800, rel=0.02) and np.diff(upd).min() >= 0.5 / 40 - 1e-12
    assert np.diff(upd).max() <= 1.5 / 40 + 1e-12
    rows = np.array([0.005, 0.031, 0.05, 0.069, 0.071])
    # updates at 10, 30, 50 ms, 20 ms latency: arrivals at 30, 50, 70 ms
    np.testing.assert_array_equal(held_update(rows, np.array([0.01, 0.03, 0.05]), 0.02), [0, 0, 1, 1, 2])
    np.testing.assert_array_equal(source_index(np.array([0.0, 0.005, 0.01]), np.array([0.0, 0.007, 0.02])), [0, 1, 2])


def test_extra_columns_are_the_wall_clock_and_the_task():
    cols = myhand_columns(np.array([0.0125, 1.5]), np.array([0, 2]))
    assert list(cols["current_time"]) == ["2019-01-01 09:00:00.012500", "2019-01-01 09:00:01.500000"]
    assert list(cols["current_task"]) == ["relax", "close"]


def _noise_recording(seconds: float = 12.0) -> Recording:
    rng = np.random.default_rng(3)
    n = int(seconds * RATE)
    labels = np.repeat([0, 1, 0, 2, 0, 1], -(-n // 6))[:n]
    emg = np.round(rng.normal(-1.0, 2.0 + 20.0 * (labels > 0)[:, None], (n, 8))).clip(-128, 127)
    return Recording(np.arange(n) / RATE, emg, labels)


def test_rendering_is_deterministic_from_the_seed():
    src = _noise_recording()
    a, b = render_myhand(src, seed=5), render_myhand(src, seed=5)
    np.testing.assert_array_equal(a.time, b.time)
    np.testing.assert_array_equal(a.emg, b.emg)
    np.testing.assert_array_equal(a.labels, b.labels)
    c = render_myhand(src, seed=[5, 1])
    assert len(c.time) != len(a.time) or not np.array_equal(c.time, a.time)
    fixed = render_myhand(src, seed=0, armband_rate_hz=50.0)
    fraction, runs = repeated_rows(fixed.emg)
    assert runs.mean() == pytest.approx(2.0, rel=0.05) and fraction == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize(
    "call",
    [
        lambda: render_myhand(_noise_recording(), seed=-1),
        lambda: render_myhand(_noise_recording(), seed=True),  # type: ignore[arg-type]
        lambda: render_myhand(_noise_recording(), seed="x"),  # type: ignore[arg-type]
        lambda: render_myhand(_noise_recording(), seed=0, armband_rate_hz=150.0),
    ],
)
def test_bad_arguments_are_one_line_config_errors(call):
    with pytest.raises(ConfigError) as info:
        call()
    assert "\n" not in str(info.value)


def test_a_recording_too_slow_to_render_is_refused():
    slow = Recording(np.arange(100) / 30.0, np.zeros((100, 8)), np.zeros(100))
    with pytest.raises(DataError, match="sample rate 30 Hz is too low"):
        render_myhand(slow, seed=0)


# --- real Myo sessions, rendered -------------------------------------------------------------------


def test_rendered_rows_are_the_myhand_format(myo_src):
    for subject, name in [("Male13", "Test0"), ("Male14", "training0")]:
        src, rec = myo_session(subject, name), rendered(subject, name)
        assert rec.sample_rate == pytest.approx(100.0, rel=0.01)
        assert (np.diff(rec.time) > 0).all() and 0 < rec.time[0] < 0.025
        assert rec.time[-1] == pytest.approx(src.time[-1], abs=0.02)
        assert rec.n_channels == 8 and np.array_equal(rec.emg, np.round(rec.emg))
        assert rec.emg.min() >= 40 and rec.emg.max() <= 1000  # the MyHand floor, the clip
        fraction, runs = repeated_rows(rec.emg)  # the armband's 35-55 Hz logged at 100 Hz
        assert 0.3 < fraction < 0.75 and 100 / 55 * 0.9 < runs.mean() < 100 / 35 * 1.1 and runs.max() <= 10
        fixed = rendered(subject, name, 0, 40.0)
        assert repeated_rows(fixed.emg)[1].mean() == pytest.approx(2.5, rel=0.05)  # 100 Hz / 40 Hz


def test_repeated_rows_match_the_format_of_the_reference_file(myo_src, tmp_path):
    like = read_recording(myhand_like_csv(tmp_path / "s_p1" / "p1_a.csv", seconds=30))
    like_fraction, like_runs = repeated_rows(like.emg)
    assert like_fraction == pytest.approx(0.5, abs=0.01) and set(like_runs.tolist()) <= {1, 2}
    fraction, runs = repeated_rows(rendered("Male13", "Test0", 0, 50.0).emg)  # the reference's 50 Hz
    assert fraction == pytest.approx(like_fraction, abs=0.05) and np.median(runs) == np.median(like_runs) == 2


def test_labels_keep_their_times(myo_src):
    src, rec = myo_session("Male13", "Test0"), rendered("Male13", "Test0")
    src_runs, runs = label_runs(src.labels), label_runs(rec.labels)
    assert [r[0] for r in runs] == [r[0] for r in src_runs] == [0, 1, 0, 2] * 4 + [0]
    for (_, a, _), (_, b, _) in zip(src_runs[1:], runs[1:], strict=True):
        assert rec.time[b - 1] < src.time[a] <= rec.time[b]  # the first row at or after the change
        assert rec.time[b] - src.time[a] < 0.015
    assert 0.2 < find_split(rec.labels) / rec.n_samples < 0.35  # the support is still the first cycle


def test_the_envelope_follows_the_intents(myo_src):
    rest_medians, active_p95 = [], []
    for subject, name in [("Male13", "Test0"), ("Male14", "Test1"), ("Male15", "training0")]:
        rec = rendered(subject, name)
        rest = rec.emg[rec.labels == 0].mean(axis=0)
        rest_medians.append(np.median(rec.emg[rec.labels == 0]))
        for intent in (1, 2):
            level = rec.emg[rec.labels == intent].mean(axis=0)
            channel = int(np.argmax(level - rest))  # the channel that intent drives most
            assert level[channel] > 1.8 * rest[channel] and level[channel] > 150
            active_p95.append(np.percentile(rec.emg[rec.labels == intent], 95))
        # every held contraction (from 1 s after its cue) is above the relax rows' median
        for intent, a, b in label_runs(rec.labels):
            if intent:
                assert rec.emg[a + 100 : b].mean() > np.median(rec.emg[rec.labels == 0]) * 1.5
    assert 50 <= np.median(rest_medians) <= 90  # near the MyHand's rest level (a patient: 62)
    assert min(active_p95) > 200 and np.median(active_p95) > 300 and max(active_p95) <= 1000


# --- the import ----------------------------------------------------------------------------------------


def _small_source(myo_src: Path, tmp_path: Path) -> Path:
    """One pre-training subject and one evaluation subject (three sessions), by symbolic links."""
    src = tmp_path / "src"
    for group, subject in [("PreTrainingDataset", "Female0"), ("EvaluationDataset", "Male13")]:
        (src / group).mkdir(parents=True)
        (src / group / subject).symlink_to(myo_src / group / subject)
    return src


def test_import_as_myhand(myo_src, tmp_path):
    src, out = _small_source(myo_src, tmp_path), tmp_path / "myhand"
    cmd = [str(BIN / "metaemg-import"), "myoarmband", str(src), str(out), "--as", "myhand", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"imported 4 recordings as the MyHand armband reports them (seed 0) into {out}" in proc.stdout
    assert "myhand_pretrain.json: 1 tasks, the 22 pre-training subjects (training)" in proc.stdout
    colls = {p.name: load_collection(p) for p in (out / "task_collections").glob("*.json")}
    assert {k: len(v) for k, v in colls.items()} == {
        "myhand_pretrain.json": 1,
        "myhand_eval_training0.json": 1,
        "myhand_eval_test.json": 2,
    }
    path = out / "myo_Male13_Test0" / "t0_myhand_rorcr.csv"
    header = path.read_text().splitlines()[0].split(",")
    assert header == ["", "time_elapsed", *[f"emg{i}" for i in range(8)], "gt", "current_time", "current_task"]
    task = load_task(out, colls["myhand_eval_test.json"][0])
    assert task.ref.condition == "myhand_rorcr" and task.recording.sample_rate == pytest.approx(100, rel=0.01)
    # the same as rendering in process, from the session's own seed
    again = import_myoarmband(src, tmp_path / "again", fmt="myhand", other_gestures=False)
    assert sorted(again) == sorted(colls)
    assert (tmp_path / "again" / "myo_Male13_Test0" / "t0_myhand_rorcr.csv").read_bytes() == path.read_bytes()
    rec, codes = read_other_gestures(out / "other_gestures" / "myo_Male13_Test0.csv")
    assert rec.sample_rate == pytest.approx(100, rel=0.01) and set(codes.tolist()) == {1, 2, 3, 4}
    assert np.array_equal(rec.emg, np.round(rec.emg)) and rec.emg.min() >= 40 and rec.emg.max() <= 1000
    assert 0.3 < repeated_rows(rec.emg)[0] < 0.75
    with pytest.raises(DataError, match=r"holds the myhand import \(myo_\w+/\w+_myhand_rorcr.csv\); import as myo"):
        import_myoarmband(src, out)
    assert not list(out.glob("*/*_myo_rorcr.csv"))
