"""The pieces of bench.myo_accuracy that decide what is compared: clips, cases, features, LDA."""

import numpy as np

from bench.myo_accuracy import LDA, calibration_clip, cases, other_gestures, recording, runs, td_features


def test_a_clip_takes_s_seconds_of_each_intent_over_its_cycles(myo_data):
    rec = recording(myo_data, "Male14", "training0")
    assert [rec.labels[a] for a, _ in runs(rec.labels)] == [0, 1, 0, 2] * 4 + [0]
    clip = calibration_clip(rec, 2.0, (0, 1))
    # per cycle: 0.5 s relax, 1 s open, 0.5 s relax, 1 s close; then 0.5 s relax
    assert [(clip.labels[a], b - a) for a, b in runs(clip.labels)] == [(0, 100), (1, 200), (0, 100), (2, 200)] * 2 + [
        (0, 100)
    ]
    counts = np.bincount(clip.labels, minlength=3) / 200
    assert counts[1] == counts[2] == 2.0 and counts[0] == 2.5
    r = runs(rec.labels)
    assert np.array_equal(clip.emg[100:300], rec.emg[r[1][0] : r[1][0] + 200])  # the first second of cycle 0's open
    assert np.array_equal(clip.emg[600:700], rec.emg[r[4][0] : r[4][0] + 100])  # cycle 1 starts with its relax
    assert np.allclose(np.diff(clip.time), 1 / 200)
    one = calibration_clip(rec, 5.0, (0,))  # one cycle: a gesture file holds 3.7-5.2 s, the clip takes what is there
    assert [one.labels[a] for a, _ in runs(one.labels)] == [0, 1, 0, 2, 0]
    assert np.bincount(one.labels)[1] == min(1000, r[1][1] - r[1][0])


def test_cases_score_later_sessions_or_the_later_cycles(myo_data):
    (s,) = cases(myo_data, "sessions", ("Male15",), 2.0)
    assert [t[1] for t in s.tests] == [0, 0] and len(s.others) == 2
    assert s.tests[0][0].path.parent.name == "myo_Male15_Test0"
    (r,) = cases(myo_data, "rotation", ("Female3",), 2.0)
    ((rec, start),) = r.tests
    assert rec.path.parent.name == "myo_Female3_training0" and start == runs(rec.labels)[4][0]
    full = other_gestures(myo_data, "Female3", "training0")
    assert abs(r.others[0].n_samples / full.n_samples - 0.75) < 0.02  # cycles 1-3 of the four
    assert (r.others[0].labels == 0).all()


def test_td_features_on_a_known_window():
    w = np.array([[1.0, -1.0, 2.0, -2.0]]).T[None]  # one window, 4 samples, 1 channel
    mav, wl, zc, ssc = td_features(w, zc_thresh=0.5)[0]
    assert mav == 1.5 and wl == 2 + 3 + 4 and zc == 3 and ssc == 2


def test_lda_separates_gaussian_classes_and_gives_probabilities():
    rng = np.random.default_rng(0)
    means = np.array([[0, 0, 0], [3, 0, 0], [0, 3, 0]])
    y = np.repeat([0, 1, 2], 100)
    x = means[y] + rng.normal(0, 1, (300, 3))
    xt = means[y] + rng.normal(0, 1, (300, 3))
    lda = LDA().fit(x, y)
    assert (lda.predict(xt) == y).mean() > 0.85
    p = lda.probabilities(xt)
    assert p.shape == (300, 3) and np.allclose(p.sum(1), 1)
    two = LDA().fit(x[y < 2], y[y < 2]).probabilities(xt)
    assert (two[:, 2] == 0).all()  # a class it never saw gets no probability
