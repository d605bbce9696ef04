import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metaemg.errors import ConfigError
from metaemg.signal import SignalChain, SignalSpec, Windower, make_windows, rate_matches


def _split_points(n, cuts):
    return sorted({min(n, c) for c in cuts})


def _feed(chain_or_windower, x, points, windows=False):
    outs, ends = [], []
    prev = 0
    for p in [*points, len(x)]:
        chunk = x[prev:p]
        prev = p
        if windows:
            w, e = chain_or_windower.push(chunk)
            outs.append(w)
            ends.append(e)
        else:
            outs.append(chain_or_windower.process(chunk))
    if windows:
        return np.concatenate(outs), np.concatenate(ends)
    return np.concatenate(outs)


SPECS = {
    "myo": SignalSpec.myo(),
    "myhand": SignalSpec.myhand(),
    "myo-50hz-norect": SignalSpec.myo(mains_hz=50, rectify=False, envelope_hz=None),
}


@pytest.mark.parametrize("name", sorted(SPECS))
@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(0, 600), max_size=12), seed=st.integers(0, 2**16))
def test_chunked_equals_one_call(name, cuts, seed):
    spec = SPECS[name]
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 60, (600, 8)) + rng.normal(0, 30, 8)
    whole = SignalChain(spec).process(x)
    chunked = _feed(SignalChain(spec), x, _split_points(600, cuts))
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(0, 300), max_size=15), window=st.integers(1, 40), stride=st.integers(1, 17))
def test_windower_chunked_equals_naive(cuts, window, stride):
    x = np.arange(300 * 3, dtype=float).reshape(300, 3)
    got, ends = _feed(Windower(window, stride, 3), x, _split_points(300, cuts), windows=True)
    starts = list(range(0, 300 - window + 1, stride))
    expected = np.stack([x[s : s + window] for s in starts]) if starts else np.empty((0, window, 3))
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(ends, [s + window - 1 for s in starts])
    w2, e2 = make_windows(x, window, stride)
    np.testing.assert_array_equal(w2, expected)
    np.testing.assert_array_equal(e2, ends)


def _amplitude(y, fs, f):
    """Amplitude of frequency f in the second half of y (after transients)."""
    seg = y[len(y) // 2 :]
    t = np.arange(len(seg)) / fs
    return 2 * abs(np.mean(seg * np.exp(-2j * np.pi * f * t)))


def test_notch_highpass_and_envelope_do_their_jobs():
    spec = SignalSpec.myo(rectify=False, envelope_hz=None, scale=1.0)
    fs = spec.sample_rate
    t = np.arange(4000) / fs
    x = 40 * np.sin(2 * np.pi * 60 * t) + 30 * np.sin(2 * np.pi * 80 * t) + 50 + 20 * np.sin(2 * np.pi * 2 * t)
    y = SignalChain(spec).process(np.repeat(x[:, None], 8, axis=1))[:, 0]
    assert _amplitude(y, fs, 60) < 0.02 * 40  # mains removed (> 34 dB)
    assert _amplitude(y, fs, 80) > 0.9 * 30  # EMG band kept
    assert _amplitude(y, fs, 2) < 0.01 * 20  # motion artefact removed
    assert abs(np.mean(y[len(y) // 2 :])) < 0.5  # DC removed


def test_envelope_tracks_amplitude():
    spec = SignalSpec.myo()
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (2000, 8)) * np.where(np.arange(2000) < 1000, 10, 60)[:, None]
    y = SignalChain(spec).process(x)
    quiet, loud = y[500:1000].mean(), y[1500:].mean()
    assert loud / quiet == pytest.approx(6, rel=0.2)
    assert y.min() > -0.05  # a rectified envelope stays (nearly) positive


def test_input_is_clipped_to_the_armband_range():
    spec = SignalSpec.myhand()
    x = np.full((10, 8), 5000.0)
    assert np.allclose(SignalChain(spec).process(x), 1.0)
    assert SignalChain(spec).saturated(np.array([[0.0] * 8, [500] * 8, [1000] + [5] * 7])).tolist() == [
        True,
        False,
        True,
    ]


def test_myhand_preset_has_no_notch_at_100hz():
    assert not SignalSpec.myhand().notch_active
    assert SignalSpec.myo().notch_active


def test_spec_round_trips_through_json():
    spec = SignalSpec.myo(window=40, stride=8, mains_hz=50)
    text = spec.to_json()
    assert json.loads(text)["window"] == 40
    assert SignalSpec.from_json(text) == spec


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"sample_rate": 200, "highpass_hz": 150}, "highpass_hz"),
        ({"sample_rate": 200, "mains_hz": 55}, "mains_hz"),
        ({"sample_rate": 200, "window": 0}, "window"),
        ({"sample_rate": -1}, "sample_rate"),
        ({"sample_rate": 200, "bogus": 1}, "unknown key(s) bogus"),
        ({"window": 10}, "sample_rate is required"),
        ({"sample_rate": 200, "input_range": [5, 1]}, "input_range"),
        ({"sample_rate": "fast"}, "sample_rate must be a number"),
    ],
)
def test_bad_spec_is_a_one_line_config_error(data, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        SignalSpec.from_dict(data)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_wrong_channel_count_is_refused():
    with pytest.raises(ConfigError, match=r"\(n, 8\)"):
        SignalChain(SignalSpec.myo()).process(np.zeros((5, 7)))


def test_the_rate_rule_is_five_percent_of_the_expected_rate():
    assert rate_matches(210.0, 200.0) and rate_matches(190.0, 200.0) and rate_matches(201.0, 200.0)
    assert not rate_matches(210.5, 200.0) and not rate_matches(100.0, 200.0)
    assert not rate_matches(float("nan"), 200.0)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_chain_equals_scipy_public_sosfilt(name):
    """The chain's fast kernel computes what scipy.signal.sosfilt computes, stage by stage."""
    from scipy import signal as sps

    from metaemg.signal import design

    spec = SPECS[name]
    x = np.random.default_rng(3).normal(0, 50, (2000, 8)) + 20
    pre, post = design(spec)
    y = np.clip(x, *(spec.input_range or (-np.inf, np.inf)))
    if pre is not None:
        y = sps.sosfilt(pre, y, axis=0, zi=sps.sosfilt_zi(pre)[:, :, None] * y[0][None, None, :])[0]
    if spec.rectify:
        y = np.abs(y)
    if post is not None:
        y = sps.sosfilt(post, y, axis=0, zi=sps.sosfilt_zi(post)[:, :, None] * y[0][None, None, :])[0]
    expected = (y - spec.offset) / spec.scale
    np.testing.assert_allclose(SignalChain(spec).process(x), expected, rtol=0, atol=1e-12)


def test_chain_does_not_modify_its_input():
    x = np.random.default_rng(4).normal(0, 50, (1, 8))
    before = x.copy()
    SignalChain(SignalSpec.myo(input_range=None)).process(x)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("order", range(1, 9))
@pytest.mark.parametrize("btype, cutoff", [("highpass", 20.0), ("lowpass", 5.0)])
def test_filters_are_designed_as_scipy_designs_them(order, btype, cutoff):
    """The daemon designs its filters without importing scipy (half a second at every start):
    the same frequency response as scipy.signal.butter / iirnotch, and the same start-up state."""
    from scipy import signal as sps

    from metaemg.signal import butter_sos, notch_sos, sos_zi

    mine = butter_sos(order, cutoff, 200.0, btype)
    ref = sps.butter(order, cutoff, btype=btype, fs=200.0, output="sos")
    _, h_mine = sps.sosfreqz(mine, worN=256, fs=200.0)
    _, h_ref = sps.sosfreqz(ref, worN=256, fs=200.0)
    np.testing.assert_allclose(h_mine, h_ref, rtol=0, atol=1e-11)
    # the start-up state: a constant input stays constant through the cascade from the first sample
    y, _ = sps.sosfilt(mine, np.full(50, 3.0), zi=3.0 * sos_zi(mine))
    np.testing.assert_allclose(y, 3.0 * np.prod(mine[:, :3].sum(axis=1) / mine[:, 3:].sum(axis=1)), atol=1e-9)
    b, a = sps.iirnotch(60.0, 30.0, fs=200.0)
    np.testing.assert_allclose(notch_sos(60.0, 30.0, 200.0)[0], np.r_[b, a], rtol=0, atol=1e-12)


def test_a_short_chunk_and_a_long_one_filter_the_same_and_the_daemon_imports_no_scipy():
    """Short chunks (the daemon's) and long ones (recordings, cut into blocks) give the same
    numbers, and filtering imports no scipy (the daemon starts half a second sooner)."""
    import subprocess
    import sys

    spec = SignalSpec.myo()
    x = np.random.default_rng(5).normal(0, 40, (3000, 8))
    whole = SignalChain(spec).process(x)  # one long call: block by block
    chain = SignalChain(spec)
    parts, i = [], 0
    for n in np.random.default_rng(6).integers(1, 2 * 64, 60):  # short and long chunks mixed
        parts.append(chain.process(x[i : i + n]))
        i += n
    np.testing.assert_allclose(np.vstack(parts), whole[:i], rtol=0, atol=1e-9)
    code = (
        "import sys, numpy as np; from metaemg.signal import SignalChain, SignalSpec; "
        "c = SignalChain(SignalSpec.myo()); [c.process(np.ones((5, 8))) for _ in range(3)]; "
        "print('scipy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
