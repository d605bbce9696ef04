"""Recordings rendered as the MyHand armband reports them: ~100 Hz rows of envelopes 0..1000.

No real MyHand recording is shared, so the models for MyHand are meta-trained on real Myo EMG
(200 Hz raw, -128..127, :mod:`metalearn.myo`) turned into what the MyHand armband and its logger
write: the armband rectifies and smooths each channel in its firmware, sends the envelope a few
dozen times a second, and the logger writes a row about every 10 ms holding the last values it
received, so consecutive rows often repeat (docs/training.md, "Formats"). One small function per step:

* :func:`rectify`: causal 2nd-order Butterworth high-pass at 20 Hz, then ``|x|``. The Myo's raw
  counts carry a DC offset of about -1 count (up to 2.4 on a channel), the size of the rest
  level itself (median rest envelope 1.3 counts); rectified, it would pass for muscle tone.
  20 Hz is the usual lower edge of surface EMG (motion artefacts lie below) and the signal
  chain's ``myo`` preset.
* :func:`envelope`: causal 2nd-order Butterworth low-pass at 4 Hz, its state started at the mean
  of the first 0.25 s (the armband was on before the log started). Like an armband's firmware,
  it removes the 20-100 Hz carrier and follows a contraction's onset in about 0.1 s (half-way in
  50-60 ms); it is also the synthetic ``myhand`` style's cut-off.
* :func:`to_myhand`: ``40 + 20 * envelope`` (Myo counts), rounded, clipped to 0..1000. The gain
  puts the 99th percentile of the 22 pre-training subjects' open/close envelopes (46 counts) at
  960 (0.6 % of open/close rows clip at 1000) and the median open on its best channel (23
  counts) near 500; the offset, the MyHand's floor, puts the median rest row at 67, beside a
  real stroke patient's rest (62) and the typical synthetic patients' (~100).
* :func:`armband_updates`: the armband sends new values at 35-55 Hz (drawn per recording), each
  interval jittered ``N(1, 0.15)`` clipped to 0.5-1.5 of the mean; each update carries the
  latest envelope sample (the firmware's filter output at that moment).
* :func:`logger_times`: logger rows at 100 Hz, each interval ``N(1, 0.08)`` clipped to 0.6-1.4
  of 10 ms, the first within 20 ms of the start: strictly increasing, jittered.
* :func:`held_update`: each row holds the last update received, after a 10-30 ms transit
  (drawn per recording). A row repeats the previous one when no update arrived between them:
  ``100 / rate`` = 1.8-2.9 rows per value on average, about half the rows repeat (the tests'
  ``myhand_like_csv`` holds every value over exactly 2 rows).
* labels: each row keeps the label (the cue on screen) of the source at the row's time
  (:func:`source_index`), so label changes stay where they were in time, to within a row; the
  envelope follows the muscles with the filter's lag.

The timing model (:func:`armband_updates`, :func:`logger_times`, :func:`held_update`) and the
extra columns (:func:`myhand_columns`) are also those of the synthetic patients' ``myhand``
style (:mod:`metalearn.synth`). A rendering is deterministic from its seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from metaemg.errors import ConfigError, DataError
from metaemg.intents import INTENTS
from metalearn.recording import Recording

LOGGER_RATE_HZ = 100.0  # rows per second written by the MyHand logger
LOGGER_JITTER = 0.08  # sd of a row interval, as a fraction of 10 ms (clipped to 0.6-1.4)
ARMBAND_RATE_HZ = (35.0, 55.0)  # the armband's update rate, drawn per recording
ARMBAND_JITTER = 0.15  # sd of an update interval, as a fraction of the mean (clipped to 0.5-1.5)
LATENCY_S = (0.01, 0.03)  # armband -> logger transit, drawn per recording
HIGHPASS_HZ = 20.0
ENVELOPE_HZ = 4.0
ENVELOPE_START_S = 0.25  # the envelope filter starts at the mean of this much rectified signal
GAIN = 20.0  # MyHand units per Myo count of envelope
OFFSET = 40.0  # MyHand units at a flat zero envelope
LIMITS = (0, 1000)
NOMINAL_START = np.datetime64("2019-01-01T09:00:00", "us")  # current_time of a Myo rendering


def rectify(emg: np.ndarray, rate: float, *, highpass_hz: float = HIGHPASS_HZ) -> np.ndarray:
    """Full-wave rectified EMG (n, channels) after a causal 2nd-order Butterworth high-pass at
    ``highpass_hz`` (removes the DC offset and motion artefacts). The high-pass starts in the
    steady state of the first sample, so a recording does not start with a step."""
    from scipy import signal

    _check_rate(rate, 2.5 * highpass_hz)
    x = np.asarray(emg, dtype=np.float64)
    sos = signal.butter(2, highpass_hz, "highpass", fs=rate, output="sos")
    zi = signal.sosfilt_zi(sos)[:, :, None] * x[0][None, None, :]
    y, _ = signal.sosfilt(sos, x, axis=0, zi=zi)
    return np.abs(y)


def envelope(rectified: np.ndarray, rate: float, *, cutoff_hz: float = ENVELOPE_HZ) -> np.ndarray:
    """Causal 2nd-order Butterworth low-pass of rectified EMG (n, channels), started in the
    steady state of the mean of the first :data:`ENVELOPE_START_S` seconds."""
    from scipy import signal

    _check_rate(rate, 4.0 * cutoff_hz)
    x = np.asarray(rectified, dtype=np.float64)
    sos = signal.butter(2, cutoff_hz, "lowpass", fs=rate, output="sos")
    start = x[: max(1, int(round(ENVELOPE_START_S * rate)))].mean(axis=0)
    zi = signal.sosfilt_zi(sos)[:, :, None] * start[None, None, :]
    y, _ = signal.sosfilt(sos, x, axis=0, zi=zi)
    return np.maximum(y, 0.0)  # the filter's small undershoot after a contraction


def to_myhand(env: np.ndarray, *, gain: float = GAIN, offset: float = OFFSET) -> np.ndarray:
    """Envelope in Myo counts -> MyHand units: ``offset + gain * env``, rounded, clipped to
    0..1000 (integers, as float64)."""
    return np.clip(np.round(offset + gain * np.asarray(env, dtype=np.float64)), *LIMITS)


def logger_times(rng: np.random.Generator, duration: float) -> np.ndarray:
    """Times (s, from the start) of the logger's rows in ``[0, duration)``: 100 Hz, jittered."""
    n_log = int(duration * LOGGER_RATE_HZ * 1.2) + 10
    dt = np.clip(rng.normal(1.0, LOGGER_JITTER, n_log), 0.6, 1.4) / LOGGER_RATE_HZ
    times = rng.uniform(0.0, 0.01) + np.cumsum(dt)
    return times[times < duration]


def armband_updates(rng: np.random.Generator, duration: float, rate_hz: float) -> np.ndarray:
    """Times (s) in ``[0, duration)`` at which the armband sends new values: ``rate_hz`` on
    average, each interval jittered."""
    n_upd = int(duration * rate_hz * 1.5) + 10
    first = rng.uniform(0.0, 1.0 / rate_hz)
    upd = first + np.cumsum(np.clip(rng.normal(1.0, ARMBAND_JITTER, n_upd), 0.5, 1.5) / rate_hz)
    return upd[upd < duration]


def held_update(row_times: np.ndarray, update_times: np.ndarray, latency: float) -> np.ndarray:
    """Index of the update each row holds: the last one sent at least ``latency`` before the row
    (rows before the first arrival show the first update)."""
    idx = np.searchsorted(update_times, np.asarray(row_times) - latency, side="right") - 1
    return np.clip(idx, 0, len(update_times) - 1)


def source_index(source_time: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the source sample current at each of ``times``: the last at or before it."""
    idx = np.searchsorted(source_time, times, side="right") - 1
    return np.clip(idx, 0, len(source_time) - 1)


def render_myhand(
    rec: Recording,
    *,
    seed: int | Sequence[int],
    armband_rate_hz: float | None = None,
    gain: float = GAIN,
    offset: float = OFFSET,
) -> Recording:
    """``rec`` (raw EMG in Myo counts, e.g. 200 Hz -128..127) as the MyHand armband's logger
    writes it: rows at about 100 Hz, integer envelopes 0..1000 held over repeated rows, the
    labels of the source at each row's time. Row times count from the source's first sample.
    ``armband_rate_hz`` fixes the update rate (else drawn from 35-55 Hz); everything random
    comes from ``seed`` (an integer or a sequence of integers, e.g. ``[seed, session_key]``)."""
    rate = rec.sample_rate
    env = envelope(rectify(rec.emg, rate), rate)
    rng = np.random.default_rng(np.random.SeedSequence(_entropy(seed)))
    if armband_rate_hz is None:
        armband_rate_hz = float(rng.uniform(*ARMBAND_RATE_HZ))
    elif not (isinstance(armband_rate_hz, (int, float)) and 0 < armband_rate_hz <= LOGGER_RATE_HZ):
        raise ConfigError(f"armband_rate_hz must be in (0, {LOGGER_RATE_HZ:g}] Hz (got {armband_rate_hz!r})")
    time = rec.time - rec.time[0]
    duration = float(time[-1] + 1.0 / rate)
    rows = logger_times(rng, duration)
    updates = armband_updates(rng, duration, armband_rate_hz)
    latency = float(rng.uniform(*LATENCY_S))
    sent = to_myhand(env[source_index(time, updates)], gain=gain, offset=offset)
    emg = sent[held_update(rows, updates, latency)]
    return Recording(rows, emg, rec.labels[source_index(time, rows)], rec.path)


def myhand_columns(times: np.ndarray, labels: np.ndarray, start: np.datetime64 = NOMINAL_START) -> dict:
    """The extra columns of a MyHand file: ``current_time`` (wall clock of each row, ``start``
    plus its time, microseconds) and ``current_task`` (the cue's intent name)."""
    stamps = start + np.round(np.asarray(times) * 1e6).astype("timedelta64[us]")
    return {
        "current_time": np.char.replace(np.datetime_as_string(stamps, unit="us"), "T", " "),
        "current_task": np.asarray(INTENTS)[np.asarray(labels)],
    }


def repeated_rows(emg: np.ndarray) -> tuple[float, np.ndarray]:
    """The repeated-row statistics of a MyHand-like table: the fraction of rows equal to the
    previous one in every channel, and the run lengths (rows per held value)."""
    same = np.all(np.diff(np.asarray(emg), axis=0) == 0, axis=1)
    runs = np.diff(np.flatnonzero(np.r_[True, ~same, True]))
    return float(same.mean()), runs


def _entropy(seed: int | Sequence[int]) -> list[int]:
    values = list(seed) if isinstance(seed, Sequence) else [seed]
    if not values or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ConfigError(f"seed must be an integer >= 0 or a sequence of them (got {seed!r})")
    return [int(v) for v in values]


def _check_rate(rate: float, minimum: float) -> None:
    if not (np.isfinite(rate) and rate >= minimum):
        raise DataError(f"sample rate {rate:g} Hz is too low to render as the MyHand armband (need >= {minimum:g} Hz)")
