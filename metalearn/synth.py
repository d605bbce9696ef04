"""Synthetic patients: labelled EMG recordings with known ground truth and known difficulty.

Model (one patient = one forearm, one armband):

* Seven muscle groups sit at angles around the forearm (in channel units, 0..8); electrode ``c``
  sits at angle ``2*pi*(c + rotation)/8``. A muscle reaches an electrode through a smooth bump
  over the angle (von Mises, width ``kappa``) times the electrode's gain (log-normal).
* Each intent (relax, open, close) activates the muscles with a base pattern shared by everyone
  (finger/wrist extensors for open, flexors for close, low tone for relax), perturbed per patient
  and blurred by co-contraction that grows with the patient's ``difficulty`` (0 easy .. 1 hard;
  it also raises the noise, weakens "open" and makes contractions less repeatable).
* Raw EMG is activation-modulated band-limited Gaussian noise per muscle, mixed into the
  channels (part shared across channels, part independent), plus electrode noise and optional
  mains. Fatigue accumulates with effort: amplitude rises and the spectrum slides from a
  high-pass shape (median ~75 Hz at 200 Hz sampling; real Myo contractions measure ~67 Hz)
  towards a 20-70 Hz band (median ~45 Hz): a rested recording's median frequency is ~70 Hz,
  a fatigued one ends near ~58 Hz.
* Style "myo": 200 Hz, integers -128..127 (strong contractions occasionally saturate).
  Style "myhand": the same signal rectified and low-passed (4 Hz), scaled to 0..1000, sent by
  the armband at 35-55 Hz with jitter and logged at ~100 Hz with sample-and-hold, so many
  consecutive rows repeat; extra columns ``current_time`` and ``current_task``.

Everything is deterministic: patient ``k`` depends only on ``(seed, k)``, a recording only on
the patient, the condition name and the recording seed.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import signal

from metaemg.errors import ConfigError
from metalearn.recording import INTENTS, N_CHANNELS, Recording, recording_path, write_recording

STYLES = ("myo", "myhand")
RAW_RATE_HZ = 200.0
LOGGER_RATE_HZ = 100.0
SEGMENT_S = (3.0, 6.0)
DELAY_S = (0.1, 0.3)
RAMP_S = (0.1, 0.5)

MUSCLES = (
    "ext_digitorum",
    "ext_carpi_radialis",
    "brachioradialis",
    "flex_carpi_radialis",
    "flex_digitorum",
    "flex_carpi_ulnaris",
    "ext_carpi_ulnaris",
)
_MUSCLE_POS = np.array([0.5, 1.8, 3.0, 4.2, 5.2, 6.3, 7.3])  # channel units around the forearm
ROTATION_RANGE = 2.0  # armband rotation across patients, +- channels (electrode 0 placed by eye)
_MUSCLE_KAPPA = 3.0  # bump width: a neighbour electrode sees ~40 %, two away ~5 %
# Intent x muscle activation, shared by every patient (fraction of the patient's strength).
_BASE_PATTERN = np.array(
    [
        [0.03, 0.03, 0.02, 0.03, 0.04, 0.03, 0.02],  # relax: residual tone
        [1.00, 0.55, 0.20, 0.10, 0.15, 0.10, 0.50],  # open: extensors
        [0.20, 0.35, 0.30, 0.60, 1.00, 0.70, 0.20],  # close: flexors
    ]
)
_SHARED_FRACTION = 0.5  # part of a muscle's signal common to all electrodes that see it
_FATIGUE_AMPLITUDE = 0.5  # amplitude gain per unit of fatigue
_FATIGUE_SPECTRUM = 0.45  # weight of the fatigued spectrum per unit of fatigue
_MYO_LIMITS = (-128, 127)
_MYHAND_LIMITS = (0, 1000)
_MYHAND_SCALE = 15.0  # envelope counts per raw MAV count


@dataclass(frozen=True)
class _Condition:
    fatigue: tuple[float, float] = (0.0, 0.15)  # fatigue at start and end of the recording
    shift_sd: float = 0.15  # armband re-placement, channels (normal)
    shift_min: float = 0.0  # at least this much shift (random sign), channels
    gain_sd: float = 0.05  # per-electrode contact change (log-normal)
    noise: tuple[float, float] = (1.0, 1.0)  # noise multiplier at start and end
    mains: bool = False
    muscle_gain: tuple[float, ...] = (1.0,) * len(MUSCLES)
    muscle_shift: float = 0.0  # muscles move under the skin, channels
    artefacts: bool = False


_KINDS: dict[str, _Condition] = {
    "baseline": _Condition(),
    "fatigue": _Condition(fatigue=(0.2, 1.3)),
    "armband_shift": _Condition(shift_min=0.7, shift_sd=0.3, gain_sd=0.2),
    "elbow_flexed": _Condition(muscle_gain=(0.9, 1.1, 2.5, 0.85, 0.9, 0.85, 1.0), muscle_shift=0.2),
    "mains": _Condition(mains=True),
    "long_session": _Condition(fatigue=(0.4, 1.4), noise=(1.0, 1.6), gain_sd=0.1),
    "forearm_pronated": _Condition(muscle_gain=(1.0, 0.9, 0.8, 1.1, 1.0, 1.1, 0.9), muscle_shift=0.5),
    "loose_band": _Condition(gain_sd=0.3, noise=(1.5, 1.5), artefacts=True),
}
CONDITIONS = (
    "111_baseline",
    "112_fatigue",
    "121_armband_shift",
    "131_elbow_flexed",
    "141_mains",
    "151_long_session",
    "132_forearm_pronated",
    "161_loose_band",
)


def condition_names(n: int) -> list[str]:
    """The first ``n`` conditions; past the end of :data:`CONDITIONS` the list repeats with
    the code raised by 100 per round (``211_baseline``, ...), so names stay distinct."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"number of conditions must be an integer >= 1 (got {n!r})")
    out = []
    for i in range(n):
        code, _, kind = CONDITIONS[i % len(CONDITIONS)].partition("_")
        out.append(f"{int(code) + 100 * (i // len(CONDITIONS))}_{kind}")
    return out


def _parse_condition(condition: str) -> _Condition:
    code, _, kind = condition.partition("_") if isinstance(condition, str) else ("", "", "")
    if not code.isdigit() or kind not in _KINDS:
        raise ConfigError(f"condition {condition!r} is not '<digits>_<kind>' with kind one of {', '.join(_KINDS)}")
    return _KINDS[kind]


@dataclass(frozen=True)
class Patient:
    """Per-patient parameters (plain tuples, so patients compare and hash by value)."""

    seed: int
    index: int
    difficulty: float  # 0 easy .. 1 hard
    rotation: float  # armband rotation, channels
    gains: tuple[float, ...]  # per electrode
    muscle_positions: tuple[float, ...]  # channel units
    muscle_widths: tuple[float, ...]  # von Mises kappa
    pattern: tuple[tuple[float, ...], ...]  # intent x muscle, in raw counts (std dev)
    trial_sd: float  # log-normal spread of a contraction's strength from one cue to the next
    noise_rms: float  # electrode noise, raw counts
    armband_rate_hz: float  # MyHand armband update rate
    mains_hz: float  # local mains frequency, used by the "mains" condition

    def __post_init__(self) -> None:
        m = len(MUSCLES)
        checks = [
            (len(self.gains) == N_CHANNELS, f"gains must have {N_CHANNELS} values"),
            (len(self.muscle_positions) == m and len(self.muscle_widths) == m, f"muscles must have {m} values"),
            (len(self.pattern) == len(INTENTS) and all(len(r) == m for r in self.pattern), "pattern must be 3 x 7"),
            (0.0 <= self.difficulty <= 1.0, "difficulty must be in [0, 1]"),
            (all(g > 0 for g in self.gains) and all(w > 0 for w in self.muscle_widths), "gains and widths must be > 0"),
            (all(v >= 0 for r in self.pattern for v in r), "pattern must be >= 0"),
            (self.trial_sd >= 0 and self.noise_rms > 0, "trial_sd must be >= 0 and noise_rms > 0"),
            (0 < self.armband_rate_hz <= LOGGER_RATE_HZ, "armband_rate_hz must be in (0, 100]"),
            (0 < self.mains_hz < RAW_RATE_HZ / 2, "mains_hz must be in (0, 100)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"patient {self.index}: {msg}")
        values = [self.difficulty, self.rotation, *self.gains, *self.muscle_positions, *self.muscle_widths]
        if not np.all(np.isfinite(values + [v for r in self.pattern for v in r])):
            raise ConfigError(f"patient {self.index}: parameters must be finite")

    @property
    def pattern_array(self) -> np.ndarray:
        return np.array(self.pattern, dtype=np.float64)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum} (got {value!r})")
    return int(value)


def make_patient(seed: int, index: int, *, difficulty: float | None = None) -> Patient:
    """Patient ``index`` of the population drawn with ``seed``; ``difficulty`` (0..1) overrides
    the drawn one (Beta(2, 2))."""
    seed = _check_int("seed", seed, 0)
    index = _check_int("patient index", index, 0)
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    d = float(rng.beta(2.0, 2.0))
    if difficulty is not None:
        if isinstance(difficulty, bool) or not (isinstance(difficulty, (int, float)) and 0.0 <= difficulty <= 1.0):
            raise ConfigError(f"difficulty must be in [0, 1] (got {difficulty!r})")
        d = float(difficulty)
    m = len(MUSCLES)
    # Draw everything in a fixed order whatever the difficulty, so it only scales the draws.
    rotation = rng.uniform(-ROTATION_RANGE, ROTATION_RANGE)
    gains = np.exp(rng.normal(0.0, 0.35, N_CHANNELS))  # skin, fat, contact
    positions = _MUSCLE_POS + rng.normal(0.0, 0.25, m)
    widths = _MUSCLE_KAPPA * np.exp(rng.normal(0.0, 0.2, m))
    perturb = np.exp(rng.normal(0.0, 1.0, (len(INTENTS), m)) * (0.25 + 0.2 * d))
    strength = 38.0 * np.exp(rng.normal(0.0, 0.25))
    noise_rms = (1.5 + 2.0 * d) * np.exp(rng.normal(0.0, 0.15))
    armband_rate = rng.uniform(35.0, 55.0)
    mains = float(rng.choice([50.0, 60.0]))
    base = _BASE_PATTERN * perturb
    relax, open_, close = base
    # Stroke: weak extensors, flexor co-contraction when opening, spastic flexor tone at rest.
    open_mix = (1.0 - 0.3 * d) * open_ + (0.1 + 0.3 * d) * close
    close_mix = close + (0.05 + 0.15 * d) * open_
    relax_mix = relax + 0.04 * d * close
    pattern = strength * np.stack([relax_mix, open_mix, close_mix])
    return Patient(
        seed=seed,
        index=index,
        difficulty=d,
        rotation=float(rotation),
        gains=tuple(float(g) for g in gains),
        muscle_positions=tuple(float(p) for p in positions),
        muscle_widths=tuple(float(w) for w in widths),
        pattern=tuple(tuple(float(v) for v in row) for row in pattern),
        trial_sd=0.1 + 0.15 * d,
        noise_rms=float(noise_rms),
        armband_rate_hz=float(armband_rate),
        mains_hz=mains,
    )


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _unit_power(sos: np.ndarray) -> np.ndarray:
    """Scale ``sos`` so white noise of unit variance comes out with unit variance."""
    impulse = signal.sosfilt(sos, np.r_[1.0, np.zeros(4095)])
    sos = sos.copy()
    sos[0, :3] /= np.sqrt(np.sum(impulse**2))
    return sos


_FRESH_SOS = _unit_power(signal.butter(2, 50.0, "highpass", fs=RAW_RATE_HZ, output="sos"))
_FATIGUED_SOS = _unit_power(signal.butter(2, [20.0, 70.0], "bandpass", fs=RAW_RATE_HZ, output="sos"))
_NOISE_SOS = _unit_power(signal.butter(1, 10.0, "highpass", fs=RAW_RATE_HZ, output="sos"))
_SLOW_SOS = _unit_power(signal.butter(2, 1.5, "lowpass", fs=RAW_RATE_HZ, output="sos"))
_ENVELOPE_SOS = signal.butter(2, 4.0, "lowpass", fs=RAW_RATE_HZ, output="sos")


def _protocol(rng: np.random.Generator, n_cycles: int) -> tuple[np.ndarray, np.ndarray]:
    """Segment intents (relax, open, relax, close) * n_cycles + relax, and their boundaries
    (start of each segment, then the end)."""
    intents = np.array([0, 1, 0, 2] * n_cycles + [0])
    lengths = rng.uniform(*SEGMENT_S, len(intents))
    return intents, np.r_[0.0, np.cumsum(lengths)]


def _activation(rng, patient, cond, intents, bounds, t) -> np.ndarray:
    """Muscle activation (n, muscles) in raw counts: per-cue strength, delayed ramps, slow
    fluctuation."""
    pattern = patient.pattern_array * np.asarray(cond.muscle_gain)
    k = len(intents)
    levels = pattern[intents] * np.exp(
        rng.normal(0.0, patient.trial_sd, (k, 1)) + rng.normal(0.0, 0.1, (k, len(MUSCLES)))
    )
    onset = bounds[1:-1] + rng.uniform(*DELAY_S, k - 1)
    ramp = rng.uniform(*RAMP_S, k - 1)
    steps = _smoothstep((t[:, None] - onset) / ramp)  # (n, k-1)
    act = levels[0] + np.einsum("tk,km->tm", steps, np.diff(levels, axis=0))
    wobble = signal.sosfilt(_SLOW_SOS, rng.standard_normal((len(t), len(MUSCLES))), axis=0)
    return np.maximum(act * (1.0 + 0.08 * wobble), 0.0)


def _mixing(rng, patient, cond) -> np.ndarray:
    """Electrode x muscle mixing matrix for this recording (armband and muscle shifts)."""
    shift = rng.normal(0.0, cond.shift_sd)
    if cond.shift_min:
        shift += np.sign(shift or 1.0) * cond.shift_min
    gains = np.asarray(patient.gains) * np.exp(rng.normal(0.0, cond.gain_sd, N_CHANNELS))
    theta = 2 * np.pi * (np.arange(N_CHANNELS) + patient.rotation + shift) / N_CHANNELS
    phi = 2 * np.pi * (np.asarray(patient.muscle_positions) + cond.muscle_shift) / N_CHANNELS
    kappa = np.asarray(patient.muscle_widths)
    return gains[:, None] * np.exp(kappa * (np.cos(theta[:, None] - phi[None, :]) - 1.0))


def _shaped_noise(rng, drive: np.ndarray, mix: np.ndarray, own_sd: np.ndarray, sos: np.ndarray) -> np.ndarray:
    """Band-limited EMG per electrode: muscle noise modulated by ``drive`` (n, muscles) and mixed
    (``own_sd``: the std dev of the part each electrode sees on its own). Products use einsum,
    not BLAS, so the result does not depend on BLAS threads or kernels."""
    shared = np.einsum("tm,cm->tc", drive * rng.standard_normal(drive.shape), mix)
    own = own_sd * rng.standard_normal(own_sd.shape)
    white = np.sqrt(_SHARED_FRACTION) * shared + np.sqrt(1.0 - _SHARED_FRACTION) * own
    return signal.sosfilt(sos, white, axis=0)


def _artefacts(rng, t: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Motion artefacts of a loose band: damped low-frequency swings after some cues."""
    cues = bounds[1:-1][rng.random(len(bounds) - 2) < 0.5]
    out = np.zeros((len(t), N_CHANNELS))
    if len(cues) == 0:
        return out
    start = cues + rng.uniform(0.1, 0.4, len(cues))
    dt = t[:, None] - start
    freq = rng.uniform(2.0, 8.0, len(cues))
    burst = np.where(dt > 0, np.exp(-np.maximum(dt, 0) / 0.25) * np.sin(2 * np.pi * freq * dt), 0.0)
    weights = rng.uniform(0.0, 1.0, (len(cues), N_CHANNELS)) ** 3 * rng.uniform(20.0, 60.0, (len(cues), 1))
    return np.einsum("tk,kc->tc", burst, weights)


def _raw_emg(rng, patient, cond, intents, bounds, t, mains_hz) -> np.ndarray:
    """Float raw EMG (n, channels) in Myo counts, before quantisation."""
    act = _activation(rng, patient, cond, intents, bounds, t)
    effort = np.cumsum(act.sum(axis=1))
    fatigue = cond.fatigue[0] + (cond.fatigue[1] - cond.fatigue[0]) * effort / effort[-1]
    drive = act * (1.0 + _FATIGUE_AMPLITUDE * fatigue)[:, None]
    mix = _mixing(rng, patient, cond)
    w = np.clip(_FATIGUE_SPECTRUM * fatigue, 0.0, 1.0)[:, None]
    own_sd = np.sqrt(np.einsum("tm,cm->tc", drive**2, mix**2))
    x = np.sqrt(1.0 - w) * _shaped_noise(rng, drive, mix, own_sd, _FRESH_SOS)
    x += np.sqrt(w) * _shaped_noise(rng, drive, mix, own_sd, _FATIGUED_SOS)
    noise_level = patient.noise_rms * np.interp(t, [t[0], t[-1]], cond.noise)
    electrode = np.exp(rng.normal(0.0, 0.2, N_CHANNELS))
    x += noise_level[:, None] * electrode * signal.sosfilt(_NOISE_SOS, rng.standard_normal(x.shape), axis=0)
    if mains_hz is not None:
        amp = rng.uniform(3.0, 8.0) * rng.uniform(0.5, 1.5, N_CHANNELS)
        phase = rng.uniform(0, 2 * np.pi) + rng.normal(0.0, 0.3, N_CHANNELS)
        x += amp * np.sin(2 * np.pi * mains_hz * t[:, None] + phase)
    if cond.artefacts:
        x += _artefacts(rng, t, bounds)
    return x


def _labels_at(times: np.ndarray, intents: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    seg = np.clip(np.searchsorted(bounds, times, side="right") - 1, 0, len(intents) - 1)
    return intents[seg]


def _myhand(rng, patient, raw, t, intents, bounds, condition) -> tuple[Recording, dict[str, np.ndarray]]:
    env = signal.sosfilt(_ENVELOPE_SOS, np.abs(raw), axis=0)
    env = rng.uniform(5.0, 40.0, N_CHANNELS) + _MYHAND_SCALE * env
    end = bounds[-1]
    # Logger rows at ~100 Hz with jitter; armband updates at 35-55 Hz with jitter and latency.
    n_log = int(end * LOGGER_RATE_HZ * 1.2) + 10
    dt = np.clip(rng.normal(1.0, 0.08, n_log), 0.6, 1.4) / LOGGER_RATE_HZ
    times = rng.uniform(0.0, 0.01) + np.cumsum(dt)
    times = times[times < end]
    rate = patient.armband_rate_hz
    n_upd = int(end * rate * 1.5) + 10
    upd = rng.uniform(0.0, 1.0 / rate) + np.cumsum(np.clip(rng.normal(1.0, 0.15, n_upd), 0.5, 1.5) / rate)
    upd = upd[upd < end]
    values = np.stack([np.interp(upd, t, env[:, c]) for c in range(N_CHANNELS)], axis=1)
    latency = rng.uniform(0.01, 0.03)
    idx = np.clip(np.searchsorted(upd, times - latency, side="right") - 1, 0, len(upd) - 1)
    emg = np.clip(np.round(values[idx]), *_MYHAND_LIMITS)
    labels = _labels_at(times, intents, bounds)
    start = np.datetime64("2024-03-04T09:00:00", "us") + np.timedelta64(patient.index, "D")
    start += np.timedelta64(int(zlib.crc32(condition.encode()) % 28800), "s")
    stamps = start + np.round(times * 1e6).astype("timedelta64[us]")
    extra = {
        "current_time": np.char.replace(np.datetime_as_string(stamps, unit="us"), "T", " "),
        "current_task": np.asarray(INTENTS)[labels],
    }
    return Recording(times, emg, labels), extra


def synth_recording(
    patient: Patient,
    condition: str,
    *,
    style: str = "myo",
    seed: int = 0,
    n_cycles: int = 4,
    mains_hz: float | None = None,
) -> tuple[Recording, dict[str, np.ndarray]]:
    """One recording of ``patient`` under ``condition`` (``<code>_<kind>``, see
    :data:`CONDITIONS`): ``n_cycles`` cycles of relax, open, relax, close, then relax.

    ``mains_hz`` adds mains interference at that frequency to any condition; the "mains"
    condition adds it at the patient's local frequency when ``mains_hz`` is None. Returns the
    recording and the extra columns to write (empty for "myo").
    """
    if not isinstance(patient, Patient):
        raise ConfigError(f"patient must be a Patient (got {type(patient).__name__})")
    if style not in STYLES:
        raise ConfigError(f"unknown style {style!r}; expected one of {', '.join(STYLES)}")
    cond = _parse_condition(condition)
    seed = _check_int("seed", seed, 0)
    n_cycles = _check_int("n_cycles", n_cycles, 2)
    if mains_hz is not None and (
        isinstance(mains_hz, bool) or not (isinstance(mains_hz, (int, float)) and 0 < mains_hz < RAW_RATE_HZ / 2)
    ):
        raise ConfigError(f"mains_hz must be in (0, {RAW_RATE_HZ / 2:g}) Hz (got {mains_hz!r})")
    if mains_hz is None and cond.mains:
        mains_hz = patient.mains_hz
    entropy = [patient.seed, patient.index, zlib.crc32(condition.encode()), seed, 0x5EED]
    rng = np.random.default_rng(np.random.SeedSequence(entropy))
    intents, bounds = _protocol(rng, n_cycles)
    t = np.arange(int(round(bounds[-1] * RAW_RATE_HZ))) / RAW_RATE_HZ
    raw = _raw_emg(rng, patient, cond, intents, bounds, t, mains_hz)
    if style == "myhand":
        return _myhand(rng, patient, raw, t, intents, bounds, condition)
    emg = np.clip(np.round(raw), *_MYO_LIMITS)
    times = t + np.clip(rng.normal(0.0, 5e-4, len(t)), -2e-3, 2e-3)  # host timestamp jitter
    times = np.maximum.accumulate(times - times[0])
    return Recording(times, emg, _labels_at(t, intents, bounds)), {}


def session_name(index: int) -> str:
    return f"synth_p{index:02d}"


def generate_dataset(
    out: Path,
    *,
    patients: int,
    conditions: int,
    seed: int,
    style: str = "myo",
    progress: bool = False,
) -> list[dict]:
    """Write ``patients`` x ``conditions`` recordings under ``out`` (sessions ``synth_p00``,
    ...) and return the task collection ``[{"session": ..., "condition": ...}, ...]``."""
    patients = _check_int("patients", patients, 1)
    names = condition_names(conditions)
    seed = _check_int("seed", seed, 0)
    if style not in STYLES:
        raise ConfigError(f"unknown style {style!r}; expected one of {', '.join(STYLES)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a directory")
    jobs = [(p, c) for p in range(patients) for c in names]
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc="synth", unit="rec")
    tasks = []
    patient = None
    for p, condition in jobs:
        if patient is None or patient.index != p:
            patient = make_patient(seed, p)
        rec, extra = synth_recording(patient, condition, style=style, seed=seed)
        session = session_name(p)
        write_recording(recording_path(out, session, condition), rec, extra=extra)
        tasks.append({"session": session, "condition": condition})
    return tasks
