"""Synthetic patients: determinism, format, protocol, and the properties the model promises."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import datetime
from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.signal import welch

from metaemg.errors import ConfigError
from metalearn.recording import INTENTS, N_CHANNELS, read_recording, recording_path
from metalearn.synth import (
    CONDITIONS,
    STYLES,
    Patient,
    condition_names,
    generate_dataset,
    make_patient,
    synth_recording,
)

EXPECTED_CHANGES = [1, -1, 2, -2, 1]


@cache
def rec_of(seed: int, index: int, condition: str = "111_baseline", style: str = "myo", mains_hz=None):
    return synth_recording(make_patient(seed, index), condition, style=style, seed=seed, mains_hz=mains_hz)


def label_runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """(label, start, stop) of each run of equal labels."""
    edges = np.r_[0, np.flatnonzero(np.diff(labels)) + 1, len(labels)]
    return [(int(labels[a]), int(a), int(b)) for a, b in itertools.pairwise(edges)]


def window_features(rec, win: int):
    """log(1 + mean absolute value) per window and channel, the window's label, and whether the
    label is constant in it."""
    n = len(rec.labels) // win * win
    feats = np.log1p(np.abs(rec.emg[:n]).reshape(-1, win, N_CHANNELS).mean(axis=1))
    lab = rec.labels[:n].reshape(-1, win)
    return feats, lab[:, 0], (lab == lab[:, :1]).all(axis=1)


def first_cycle_split(rec, win: int):
    """Train on the first cycle (up to the second relax -> open), test on the rest."""
    feats, y, ok = window_features(rec, win)
    cut = (np.flatnonzero(np.diff(rec.labels))[4] + 1) // win
    return (feats[:cut][ok[:cut]], y[:cut][ok[:cut]]), (feats[cut:][ok[cut:]], y[cut:][ok[cut:]])


def nearest_centroid_accuracy(train, test) -> float:
    """Balanced accuracy of a nearest-centroid classifier."""
    (xtr, ytr), (xte, yte) = train, test
    centroids = np.stack([xtr[ytr == k].mean(axis=0) for k in range(len(INTENTS))])
    pred = np.argmin(((xte[:, None, :] - centroids) ** 2).sum(axis=-1), axis=1)
    return float(np.mean([(pred[yte == k] == k).mean() for k in range(len(INTENTS))]))


def median_frequency(x: np.ndarray, fs: float) -> float:
    f, p = welch(x, fs=fs, axis=0, nperseg=128)
    cum = np.cumsum(p.sum(axis=1))
    return float(f[np.searchsorted(cum, cum[-1] / 2)])


# --- determinism and files -------------------------------------------------------------------


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_dataset_is_deterministic_and_patient_k_does_not_depend_on_count(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    tasks_a = generate_dataset(a, patients=2, conditions=1, seed=3)
    tasks_b = generate_dataset(b, patients=3, conditions=1, seed=3)
    generate_dataset(c, patients=1, conditions=1, seed=4)
    files_a, files_b = _tree(a), _tree(b)
    assert sorted(files_a) == ["synth_p00/00_111_baseline.csv", "synth_p01/01_111_baseline.csv"]
    assert all(files_b[name] == data for name, data in files_a.items())  # byte-identical
    assert "synth_p02/02_111_baseline.csv" in files_b
    assert _tree(c)["synth_p00/00_111_baseline.csv"] != files_a["synth_p00/00_111_baseline.csv"]
    assert tasks_a == [
        {"session": "synth_p00", "condition": "111_baseline"},
        {"session": "synth_p01", "condition": "111_baseline"},
    ]
    assert tasks_b[:2] == tasks_a and len(tasks_b) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # nothing outside out


def test_myhand_dataset_is_deterministic_and_round_trips(tmp_path):
    tasks = generate_dataset(tmp_path / "x", patients=1, conditions=2, seed=0, style="myhand")
    generate_dataset(tmp_path / "y", patients=1, conditions=2, seed=0, style="myhand")
    assert _tree(tmp_path / "x") == _tree(tmp_path / "y")
    assert [t["condition"] for t in tasks] == list(CONDITIONS[:2])
    path = recording_path(tmp_path / "x", "synth_p00", "112_fatigue")
    header = path.read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header == ["", "time_elapsed", *[f"emg{i}" for i in range(8)], "gt", "current_time", "current_task"]
    back = read_recording(path)
    rec, _ = rec_of(0, 0, "112_fatigue", "myhand")
    np.testing.assert_array_equal(back.time, rec.time)
    np.testing.assert_array_equal(back.emg, rec.emg)
    np.testing.assert_array_equal(back.labels, rec.labels)


def test_myo_file_round_trips(tmp_path):
    (task,) = generate_dataset(tmp_path, patients=1, conditions=1, seed=0)
    back = read_recording(recording_path(tmp_path, task["session"], task["condition"]))
    rec, extra = rec_of(0, 0)
    assert extra == {}
    np.testing.assert_array_equal(back.time, rec.time)
    np.testing.assert_array_equal(back.emg, rec.emg)
    np.testing.assert_array_equal(back.labels, rec.labels)
    assert [p.name for p in tmp_path.rglob("*")] == ["synth_p00", "00_111_baseline.csv"]  # no temp files


def test_progress_bar_goes_to_stderr(tmp_path, capsys):
    generate_dataset(tmp_path, patients=1, conditions=1, seed=0, progress=True)
    captured = capsys.readouterr()
    assert "synth" in captured.err and "1/1" in captured.err
    assert captured.out == ""


# --- patients and conditions -------------------------------------------------------------------


def test_patients_are_reproducible_distinct_and_frozen():
    p = make_patient(0, 3)
    assert p == make_patient(0, 3) and hash(p) == hash(make_patient(0, 3))
    assert p != make_patient(0, 4) and p != make_patient(1, 3)
    assert (p.seed, p.index) == (0, 3)
    assert len(p.gains) == N_CHANNELS and all(g > 0 for g in p.gains)
    assert -2.0 <= p.rotation <= 2.0 and 0.0 <= p.difficulty <= 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.rotation = 0.0  # type: ignore[misc]


def test_difficulty_knob():
    easy, hard = make_patient(0, 1, difficulty=0.0), make_patient(0, 1, difficulty=1.0)
    assert (easy.difficulty, hard.difficulty) == (0.0, 1.0)
    assert easy.rotation == hard.rotation and easy.gains == hard.gains  # same forearm, same armband
    assert hard.noise_rms > easy.noise_rms and hard.trial_sd > easy.trial_sd
    acc = {}
    for name, d in [("easy", 0.0), ("hard", 1.0)]:
        scores = []
        for k in range(3):
            rec, _ = synth_recording(make_patient(0, k, difficulty=d), "111_baseline")
            scores.append(nearest_centroid_accuracy(*first_cycle_split(rec, 40)))
        acc[name] = np.mean(scores)
    assert acc["easy"] > acc["hard"] + 0.05, acc


def test_open_and_close_differ_in_space_and_relax_is_quiet():
    for k in range(5):
        pattern = make_patient(0, k).pattern_array
        relax, open_, close = pattern
        cosine = open_ @ close / np.linalg.norm(open_) / np.linalg.norm(close)
        assert cosine < 0.9
        assert relax.max() < 0.25 * min(open_.max(), close.max())


def test_condition_names_pick_and_cycle_with_distinct_codes():
    assert condition_names(3) == list(CONDITIONS[:3])
    names = condition_names(2 * len(CONDITIONS) + 1)
    assert len(set(names)) == len(names)
    assert names[len(CONDITIONS)] == "211_baseline" and names[-1] == "311_baseline"
    assert names[: len(CONDITIONS)] == list(CONDITIONS)
    assert all(name.split("_")[0].isdigit() for name in names)
    p = make_patient(0, 0)
    a, _ = synth_recording(p, "211_baseline", n_cycles=2)
    b, _ = synth_recording(p, "111_baseline", n_cycles=2)
    assert a.n_samples != b.n_samples or not np.array_equal(a.emg, b.emg)


@pytest.mark.parametrize(
    "call",
    [
        lambda: synth_recording(make_patient(0, 0), "111_baseline", style="emg"),
        lambda: synth_recording(make_patient(0, 0), "111_nonsense"),
        lambda: synth_recording(make_patient(0, 0), "baseline"),
        lambda: synth_recording(make_patient(0, 0), "111_baseline", n_cycles=1),
        lambda: synth_recording(make_patient(0, 0), "111_baseline", seed=-1),
        lambda: synth_recording(make_patient(0, 0), "111_baseline", mains_hz=120.0),
        lambda: synth_recording(make_patient(0, 0), "111_baseline", mains_hz=True),
        lambda: synth_recording(make_patient(0, 0), 111),  # type: ignore[arg-type]
        lambda: synth_recording("patient", "111_baseline"),  # type: ignore[arg-type]
        lambda: make_patient(-1, 0),
        lambda: make_patient(0, -2),
        lambda: make_patient(0, 0, difficulty=1.5),
        lambda: dataclasses.replace(make_patient(0, 0), gains=(1.0,) * 7),
        lambda: dataclasses.replace(make_patient(0, 0), difficulty=-0.1),
        lambda: condition_names(0),
    ],
)
def test_bad_arguments_raise_config_error(call):
    with pytest.raises(ConfigError) as info:
        call()
    assert "\n" not in str(info.value) and str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"patients": 0, "conditions": 1, "seed": 0},
        {"patients": 1, "conditions": 0, "seed": 0},
        {"patients": 1, "conditions": 1, "seed": -1},
        {"patients": True, "conditions": 1, "seed": 0},
        {"patients": 1, "conditions": 1, "seed": 0, "style": "MYO"},
    ],
)
def test_generate_dataset_rejects_bad_arguments_before_writing(tmp_path, kwargs):
    with pytest.raises(ConfigError):
        generate_dataset(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


# --- format per style --------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_values_rates_and_types(style):
    rec, _extra = rec_of(0, 1, "111_baseline", style)
    lo, hi, rate = (-128, 127, 200.0) if style == "myo" else (0, 1000, 100.0)
    assert rec.emg.shape[1] == N_CHANNELS
    assert np.array_equal(rec.emg, np.round(rec.emg))  # integers
    assert rec.emg.min() >= lo and rec.emg.max() <= hi
    assert rec.labels.dtype == np.int64 and set(np.unique(rec.labels)) == {0, 1, 2}
    assert rec.sample_rate == pytest.approx(rate, rel=0.02)
    dt = np.diff(rec.time)
    assert (dt > 0).all() and rec.time[0] >= 0
    assert np.std(dt) > 0  # host timestamps jitter
    assert 5 * 4 * 3.0 <= rec.duration <= 4 * 4 * 6.0 + 6.0  # 4 cycles + final relax


def test_myo_contractions_use_the_range_and_saturate_only_occasionally():
    sat, p99 = [], []
    for k in range(6):
        rec, _ = rec_of(0, k)
        sat.append(np.mean((rec.emg == -128) | (rec.emg == 127)))
        p99.append(np.percentile(np.abs(rec.emg[rec.labels > 0]), 99))
    assert max(sat) > 0 and max(sat) < 0.05
    assert np.median(p99) > 50


def test_myhand_rows_repeat_like_a_slow_armband():
    rec, _extra = rec_of(0, 2, "111_baseline", "myhand")
    same = np.all(np.diff(rec.emg, axis=0) == 0, axis=1)
    assert 0.3 < same.mean() < 0.75  # 35-55 Hz updates logged at 100 Hz
    runs = np.diff(np.flatnonzero(np.r_[True, ~same, True]))  # rows per armband update
    assert np.mean(runs) == pytest.approx(100.0 / make_patient(0, 2).armband_rate_hz, rel=0.2)
    assert runs.max() <= 10
    myo, _ = rec_of(0, 2)
    assert np.all(np.diff(myo.emg, axis=0) == 0, axis=1).mean() < 0.01
    relax = rec.emg[rec.labels == 0].mean()
    active = rec.emg[rec.labels > 0].mean()
    assert active > 2.5 * relax


def test_myhand_extra_columns():
    rec, extra = rec_of(0, 2, "111_baseline", "myhand")
    assert set(extra) == {"current_time", "current_task"}
    assert list(extra["current_task"]) == [INTENTS[k] for k in rec.labels]
    stamps = [datetime.fromisoformat(s) for s in extra["current_time"]]
    elapsed = np.array([(s - stamps[0]).total_seconds() for s in stamps])
    np.testing.assert_allclose(elapsed, rec.time - rec.time[0], atol=2e-6)


# --- protocol ----------------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_label_protocol(style):
    rec, _ = rec_of(0, 0, "112_fatigue", style)
    runs = label_runs(rec.labels)
    assert [b[0] - a[0] for a, b in itertools.pairwise(runs)][:5] == EXPECTED_CHANGES
    assert [r[0] for r in runs] == [0, 1, 0, 2] * 4 + [0]
    dt = 1.0 / rec.sample_rate
    for _, a, b in runs:
        length = rec.time[b - 1] - rec.time[a] + dt
        assert 3.0 - 2 * dt <= length <= 6.0 + 2 * dt


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    index=st.integers(0, 500),
    n_cycles=st.integers(2, 3),
    condition=st.sampled_from(CONDITIONS),
)
def test_protocol_holds_for_any_patient(seed, index, n_cycles, condition):
    rec, _ = synth_recording(make_patient(seed, index), condition, seed=seed, n_cycles=n_cycles)
    runs = label_runs(rec.labels)
    assert [r[0] for r in runs] == [0, 1, 0, 2] * n_cycles + [0]
    assert np.isfinite(rec.emg).all() and rec.emg.min() >= -128 and rec.emg.max() <= 127


def test_activation_follows_the_cue_with_a_short_lag():
    rec, _ = rec_of(0, 3)
    level = np.abs(rec.emg).mean(axis=1)
    runs = label_runs(rec.labels)
    for (lab, a, b), (_prev, _pa, _) in zip(runs[1:], runs, strict=False):
        if lab == 0:
            continue
        before = level[a - 40 : a].mean()  # 0.2 s before the cue
        early = level[a : a + 20].mean()  # first 0.1 s: the muscle has not answered yet
        held = level[a + 200 : b].mean()  # from 1 s on
        assert held > 3 * before and early < 0.5 * held


# --- the learning problem ----------------------------------------------------------------------


@pytest.mark.parametrize(("style", "win"), [("myo", 40), ("myhand", 20)])
def test_intents_separable_within_patient_but_not_across(style, win):
    splits = [first_cycle_split(rec_of(0, k, "111_baseline", style)[0], win) for k in range(6)]
    within = [nearest_centroid_accuracy(tr, te) for tr, te in splits]
    across = [nearest_centroid_accuracy(splits[i][0], splits[j][1]) for i in range(6) for j in range(6) if i != j]
    assert np.mean(within) > 0.85 and min(within) > 0.7  # chance is 1/3
    assert np.mean(across) < np.mean(within) - 0.1


def _cycle_stats(rec):
    runs = [r for r in label_runs(rec.labels) if r[0] > 0]
    held = lambda a, b: rec.emg[a + 200 : b]  # noqa: E731  (skip the onset)
    first = {lab: held(a, b) for lab, a, b in runs[:2]}
    last = {lab: held(a, b) for lab, a, b in runs[-2:]}
    return first, last


def test_fatigue_raises_amplitude_and_lowers_median_frequency():
    ratios, base_ratios, mdf_drop = [], [], []
    for k in range(8):
        first, last = _cycle_stats(rec_of(0, k, "112_fatigue")[0])
        ratios += [np.abs(last[i]).mean() / np.abs(first[i]).mean() for i in (1, 2)]
        f0 = median_frequency(np.concatenate([first[1], first[2]]), 200.0)
        f1 = median_frequency(np.concatenate([last[1], last[2]]), 200.0)
        mdf_drop.append((f0, f1))
        bfirst, blast = _cycle_stats(rec_of(0, k, "111_baseline")[0])
        base_ratios += [np.abs(blast[i]).mean() / np.abs(bfirst[i]).mean() for i in (1, 2)]
    # Cue-to-cue strength varies (log-sd 0.1-0.25), so judge the geometric mean over patients.
    fatigued, rested = np.exp(np.mean(np.log(ratios))), np.exp(np.mean(np.log(base_ratios)))
    assert fatigued > 1.15 and fatigued > rested + 0.1
    assert np.mean(np.array(ratios) > 1) >= 0.7
    for f0, f1 in mdf_drop:
        assert 65 <= f0 <= 85 and 50 <= f1 <= 66 and f1 < f0 - 6


@pytest.mark.parametrize("mains_hz", [50.0, 60.0])
def test_mains_peak_when_asked(mains_hz):
    clean, _ = rec_of(0, 0)
    hum, _ = rec_of(0, 0, "111_baseline", "myo", mains_hz)

    def peak_ratio(rec):
        _, a, b = label_runs(rec.labels)[0]  # the first relax: no contraction yet
        f, p = welch(rec.emg[a:b], fs=200.0, axis=0, nperseg=200)
        p = p.sum(axis=1)
        at = np.argmin(np.abs(f - mains_hz))
        return p[at] / np.median(p[(np.abs(f - mains_hz) > 3) & (np.abs(f - mains_hz) < 15)])

    assert peak_ratio(hum) > 20 and peak_ratio(clean) < 3


def test_mains_condition_uses_the_patients_mains_frequency():
    p = make_patient(0, 0)
    rec, _ = rec_of(0, 0, "141_mains")
    _, a, b = label_runs(rec.labels)[0]
    f, psd = welch(rec.emg[a:b], fs=200.0, axis=0, nperseg=200)
    psd = psd.sum(axis=1)
    assert f[np.argmax(psd)] == pytest.approx(p.mains_hz, abs=0.5)


def test_armband_shift_moves_the_spatial_pattern():
    def centre(rec):
        act = np.abs(rec.emg[rec.labels == 2]).mean(axis=0)
        angle = np.angle(np.sum(act * np.exp(2j * np.pi * np.arange(N_CHANNELS) / N_CHANNELS)))
        return angle * N_CHANNELS / (2 * np.pi)

    def moved(condition):
        deltas = [centre(rec_of(0, k, condition)[0]) - centre(rec_of(0, k)[0]) for k in range(4)]
        return np.mean([abs((d + N_CHANNELS / 2) % N_CHANNELS - N_CHANNELS / 2) for d in deltas])

    assert moved("121_armband_shift") > max(0.5, 2 * moved("141_mains"))  # re-donned vs. not


def test_every_condition_generates_valid_recordings():
    p = make_patient(5, 7)
    assert isinstance(p, Patient)
    for condition in CONDITIONS:
        for style, (lo, hi) in zip(STYLES, [(-128, 127), (0, 1000)], strict=True):
            rec, extra = synth_recording(p, condition, style=style, n_cycles=2)
            assert [r[0] for r in label_runs(rec.labels)] == [0, 1, 0, 2, 0, 1, 0, 2, 0]
            assert rec.emg.min() >= lo and rec.emg.max() <= hi
            assert np.array_equal(rec.emg, np.round(rec.emg))
            assert all(len(col) == rec.n_samples for col in extra.values())
            active = np.abs(rec.emg[rec.labels > 0]).mean()
            assert active > 1.5 * np.abs(rec.emg[rec.labels == 0]).mean()


# --- the stroke profile ------------------------------------------------------------------------


@cache
def stroke_of(index: int, style: str = "myhand", condition: str = "111_baseline"):
    return synth_recording(make_patient(0, index, profile="stroke"), condition, style=style, seed=0)[0]


def _best_channel(rec, intent: int) -> tuple[float, float]:
    """Relax and ``intent`` levels on the channel ``intent`` raises most."""
    rest = rec.emg[rec.labels == 0].mean(axis=0)
    level = rec.emg[rec.labels == intent].mean(axis=0)
    c = int(np.argmax(level - rest))
    return float(rest[c]), float(level[c])


def test_stroke_patients_keep_the_forearm_and_are_deterministic():
    for k in range(3):
        typical, stroke = make_patient(0, k), make_patient(0, k, profile="stroke")
        assert (
            typical.profile == "typical" and typical.stroke is None and make_patient(0, k, profile="typical") == typical
        )
        assert stroke.profile == "stroke" and stroke == make_patient(0, k, profile="stroke")
        same = ("rotation", "gains", "muscle_positions", "muscle_widths", "armband_rate_hz", "mains_hz")
        assert all(getattr(stroke, f) == getattr(typical, f) for f in same)
        assert stroke.pattern != typical.pattern and 0.35 <= stroke.trial_sd <= 0.55
        assert 3.0 <= stroke.stroke.tremor_hz <= 6.0 and 0.2 <= stroke.stroke.fatigue_loss <= 0.45
    a, b = stroke_of(1), synth_recording(make_patient(0, 1, profile="stroke"), "111_baseline", style="myhand")[0]
    np.testing.assert_array_equal(a.emg, b.emg)
    assert make_patient(0, 0, profile="stroke") != make_patient(1, 0, profile="stroke")


def test_stroke_dataset_from_the_command_line(tmp_path, capsys):
    from metalearn.cli import synth_main

    argv = ["--patients", "1", "--conditions", "1", "--style", "myhand", "--quiet"]
    assert synth_main([str(tmp_path / "stroke"), *argv, "--profile", "stroke"]) == 0
    assert "style myhand, profile stroke" in capsys.readouterr().out
    assert synth_main([str(tmp_path / "typical"), *argv]) == 0
    generate_dataset(tmp_path / "explicit", patients=1, conditions=1, seed=0, style="myhand", profile="typical")
    name = "synth_p00/00_111_baseline.csv"
    stroke, typical = _tree(tmp_path / "stroke"), _tree(tmp_path / "typical")
    assert typical[name] == _tree(tmp_path / "explicit")[name]  # the default profile is the typical one
    assert sorted(stroke) == sorted(typical) and stroke[name] != typical[name]
    back = read_recording(tmp_path / "stroke" / name)
    np.testing.assert_array_equal(back.emg, stroke_of(0).emg)


def test_stroke_contractions_are_weak_and_near_the_rest_level():
    """A real stroke patient's channel read relax 62, open 114; typical synthetic patients read
    relax ~100, active 300-700."""
    stroke = [_best_channel(stroke_of(k), 1) for k in range(8)]
    typical = [_best_channel(rec_of(0, k, "111_baseline", "myhand")[0], 1) for k in range(8)]
    relax, opened = np.array(stroke).T
    assert 40 <= np.median(relax) <= 90 and relax.max() < 130
    ratio = opened / relax
    assert 1.3 <= np.median(ratio) <= 2.0 and ratio.min() > 1.0 and ratio.max() < 2.6 and opened.max() < 300
    assert min(o / r for r, o in typical) > 2.5 and np.median([o for _, o in typical]) > 300
    closed = np.array([_best_channel(stroke_of(k), 2) for k in range(8)])
    assert 1.3 <= np.median(closed[:, 1] / closed[:, 0]) <= 2.2


def test_stroke_cocontraction_and_spasticity():
    for k in range(6):
        typical_pattern, stroke_pattern = (
            make_patient(0, k).pattern_array,
            make_patient(0, k, profile="stroke").pattern_array,
        )
        cosine = [p[1] @ p[2] / np.linalg.norm(p[1]) / np.linalg.norm(p[2]) for p in (typical_pattern, stroke_pattern)]
        assert cosine[1] > cosine[0] and cosine[1] > 0.8  # open and close drive the same muscles
        rest_tone = [p[0] @ p[2] / (p[2] @ p[2]) for p in (typical_pattern, stroke_pattern)]
        assert rest_tone[1] > rest_tone[0]  # spastic flexor tone at rest

    def flexor_and_open(rec):
        """Close's channel, and the open excess over relax on it relative to open's own channel."""
        rest = rec.emg[rec.labels == 0].mean(axis=0)
        opened = rec.emg[rec.labels == 1].mean(axis=0) - rest
        flexor = int(np.argmax(rec.emg[rec.labels == 2].mean(axis=0) - rest))
        return flexor, opened[flexor] / opened.max()

    stroke = [flexor_and_open(stroke_of(k)) for k in range(8)]
    typical = [flexor_and_open(rec_of(0, k, "111_baseline", "myhand")[0])[1] for k in range(8)]
    assert min(r for _, r in stroke) > 0.35  # close activity during open
    assert np.mean([r for _, r in stroke]) > np.mean(typical) + 0.15
    early_late = []
    for k, (flexor, _) in enumerate(stroke):
        rec = stroke_of(k)
        opens = [(a, b) for lab, a, b in label_runs(rec.labels) if lab == 1]
        early = np.mean([rec.emg[a + 30 : a + 130, flexor].mean() for a, _ in opens])  # 0.3-1.3 s
        late = np.mean([rec.emg[b - 150 : b, flexor].mean() for _, b in opens])
        early_late.append(early / late)
    assert np.mean(early_late) > 1.2  # the stretch reflex burst as the extensors start to pull
    typical_early_late = []
    for k in range(8):
        rec = rec_of(0, k, "111_baseline", "myhand")[0]
        flexor = flexor_and_open(rec)[0]
        opens = [(a, b) for lab, a, b in label_runs(rec.labels) if lab == 1]
        early = np.mean([rec.emg[a + 30 : a + 130, flexor].mean() for a, _ in opens])
        typical_early_late.append(early / np.mean([rec.emg[b - 150 : b, flexor].mean() for _, b in opens]))
    assert np.mean(typical_early_late) < 1.05


def test_stroke_tremor_shows_in_the_active_envelope():
    def spectrum(rec):
        x = np.abs(rec.emg[rec.labels > 0])
        f, p = welch(x - x.mean(axis=0), fs=200.0, axis=0, nperseg=400)
        band = (f > 1.5) & (f < 12)
        return f[band], p.sum(axis=1)[band]

    for k in range(3):
        tremor_hz = make_patient(0, k, profile="stroke").stroke.tremor_hz
        f, p = spectrum(stroke_of(k, "myo"))
        at = np.argmin(np.abs(f - tremor_hz))
        assert abs(f[np.argmax(p)] - tremor_hz) <= 0.5 and p[at] / np.median(p) > 2.5
        f, p = spectrum(rec_of(0, k)[0])  # the typical patient: no peak there
        assert p[at] / np.median(p) < 2.0


def test_stroke_drive_fades_over_the_recording():
    def last_over_first(rec):
        runs = [r for r in label_runs(rec.labels) if r[0] > 0]
        rest = rec.emg[rec.labels == 0][:200].mean(axis=0)
        level = lambda a, b: (rec.emg[a + 100 : b] - rest).mean()  # noqa: E731
        return np.mean([level(a, b) for _, a, b in runs[-2:]]) / np.mean([level(a, b) for _, a, b in runs[:2]])

    stroke = [last_over_first(stroke_of(k)) for k in range(8)]
    typical = [last_over_first(rec_of(0, k, "111_baseline", "myhand")[0]) for k in range(8)]
    geo = lambda r: float(np.exp(np.mean(np.log(np.clip(r, 0.05, None)))))  # noqa: E731
    assert geo(stroke) < 0.8 and geo(stroke) < geo(typical) - 0.25


def test_stroke_patients_are_harder_but_not_hopeless():
    stroke = [nearest_centroid_accuracy(*first_cycle_split(stroke_of(k), 20)) for k in range(6)]
    typical = [
        nearest_centroid_accuracy(*first_cycle_split(rec_of(0, k, "111_baseline", "myhand")[0], 20)) for k in range(6)
    ]
    assert np.mean(stroke) < np.mean(typical) - 0.2
    assert np.mean(stroke) > 0.45  # chance is 1/3


@pytest.mark.parametrize("style", STYLES)
def test_stroke_recordings_keep_the_protocol_and_the_format(style):
    p = make_patient(2, 3, profile="stroke")
    lo, hi = (-128, 127) if style == "myo" else (0, 1000)
    for condition in CONDITIONS:
        rec, extra = synth_recording(p, condition, style=style, n_cycles=2)
        assert [r[0] for r in label_runs(rec.labels)] == [0, 1, 0, 2, 0, 1, 0, 2, 0]
        assert rec.emg.min() >= lo and rec.emg.max() <= hi and np.array_equal(rec.emg, np.round(rec.emg))
        assert all(len(col) == rec.n_samples for col in extra.values())


@pytest.mark.parametrize(
    "call",
    [
        lambda tmp: make_patient(0, 0, profile="Stroke"),
        lambda tmp: generate_dataset(tmp / "out", patients=1, conditions=1, seed=0, profile="mild"),
        lambda tmp: dataclasses.replace(make_patient(0, 0), stroke="yes"),
        lambda tmp: dataclasses.replace(make_patient(0, 0, profile="stroke").stroke, tremor_depth=1.5),
    ],
)
def test_bad_profiles_raise_config_error(tmp_path, call):
    with pytest.raises(ConfigError) as info:
        call(tmp_path)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()
