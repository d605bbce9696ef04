"""The pieces of bench.myo_accuracy that decide what is compared: clip selection, features, LDA."""

import numpy as np

from bench.myo_accuracy import LDA, clip_mask, td_features


def test_clip_takes_the_first_seconds_of_each_intent():
    labels = np.array([0] * 10 + [1] * 10 + [0] * 10 + [2] * 10)
    ends = np.arange(40)
    mask = clip_mask(labels, ends, rate=2.0, seconds=2.0)  # 4 samples of each intent
    assert np.flatnonzero(mask).tolist() == [0, 1, 2, 3, 10, 11, 12, 13, 30, 31, 32, 33]


def test_td_features_on_a_known_window():
    w = np.array([[1.0, -1.0, 2.0, -2.0]]).T[None]  # one window, 4 samples, 1 channel
    mav, wl, zc, ssc = td_features(w, zc_thresh=0.5)[0]
    assert mav == 1.5 and wl == 2 + 3 + 4 and zc == 3 and ssc == 2


def test_lda_separates_gaussian_classes():
    rng = np.random.default_rng(0)
    means = np.array([[0, 0, 0], [3, 0, 0], [0, 3, 0]])
    y = np.repeat([0, 1, 2], 100)
    x = means[y] + rng.normal(0, 1, (300, 3))
    xt = means[y] + rng.normal(0, 1, (300, 3))
    acc = (LDA().fit(x, y).predict(xt) == y).mean()
    assert acc > 0.85
