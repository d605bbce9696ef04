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

Profiles. ``typical`` (the default) is the model above. ``stroke`` keeps each patient's forearm
(armband rotation, electrode gains, muscle positions: the same draws as the typical patient
``k``) and replaces how the muscles are driven, so that the MyHand envelopes look like a stroke
patient's: a real patient's extensor channel read relax 62 and open 114 (0..1000), where typical
synthetic patients read relax ~100 and active 300-700. Each trait is drawn uniformly per patient
from its range (``STROKE_*`` below), from a stream of its own (typical patients are unchanged):

==========================  ============  ==========  ================================================
trait                       typical       stroke      why
==========================  ============  ==========  ================================================
strength                    1             0.15-0.3    paresis: weak contractions near the rest level;
                                                      on the ``myhand`` style relax reads 49-107
                                                      (median 71) and open on its best channel 1.1-2.2
                                                      times relax (median 1.5: the patient's 114/62
                                                      is 1.8), close 1.2-2.4 times (patients 0-11)
extensors when opening      0.7-1.0       0.4-0.7     extensors are the most affected (flexor synergy)
flexors when opening        0.1-0.4       0.3-0.7     co-contraction (of the close pattern)
extensors when closing      0.05-0.2      0.2-0.5     co-contraction (of the open pattern)
flexor tone at rest         0-0.04        0.05-0.15   spastic tone (of the close pattern)
flexor burst at open        none          1.0-2.5,    spasticity: a velocity-dependent stretch reflex
                                          tau 0.4-1 s of the flexors as the extensors pull (of the
                                                      close pattern, times that attempt's effort)
tremor                      none          3-6 Hz,     extensors against flexors, on the activation
                                          depth
                                          0.1-0.35
drive lost by the end       none          20-45 %     fatigue drift: the drive fades with the effort
                                                      spent (on top of a condition's fatigue)
cue-to-cue spread (log sd)  0.1-0.25      0.35-0.55   uneven contractions
failed attempts             none          10-25 %     of open/close cues get 10-40 % of the effort
onset delay, ramp           0.1-0.3,      0.2-0.7,    slow recruitment
                            0.1-0.5 s     0.3-1.0 s
slow fluctuation            8 %           15 %
electrode noise             1.5-3.5       x 1.0-1.4   low signal to noise (mostly from the weak drive)
==========================  ============  ==========  ================================================

A nearest-centroid classifier trained on the first cycle separates the intents of typical
``myhand`` patients at ~0.9 (balanced accuracy), of stroke patients at ~0.55 (chance 0.33).

Everything is deterministic: patient ``k`` depends only on ``(seed, k)`` (and the profile), a
recording only on the patient, the condition name and the recording seed.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metaemg.errors import ConfigError
from metalearn.myhand import LATENCY_S, armband_updates, held_update, logger_times, myhand_columns
from metalearn.recording import INTENTS, N_CHANNELS, Recording, recording_path, write_recording

STYLES = ("myo", "myhand")
PROFILES = ("typical", "stroke")
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


# The stroke profile (see the module docstring's table): ranges drawn uniformly per patient.
STROKE_STRENGTH = (0.15, 0.3)  # of a typical patient's strength
STROKE_EXTENSORS = (0.4, 0.7)  # extensor drive when opening
STROKE_OPEN_FLEXORS = (0.3, 0.7)  # flexor co-contraction when opening, of the close pattern
STROKE_CLOSE_EXTENSORS = (0.2, 0.5)  # extensor co-contraction when closing, of the open pattern
STROKE_TONE = (0.05, 0.15)  # spastic flexor tone at rest, of the close pattern
STROKE_SPASM = (1.0, 2.5)  # flexor stretch-reflex burst at an open onset, of the close pattern
STROKE_SPASM_TAU_S = (0.4, 1.0)  # its decay time constant
STROKE_TREMOR_HZ = (3.0, 6.0)
STROKE_TREMOR_DEPTH = (0.1, 0.35)  # modulation of the activation, extensors against flexors
STROKE_FATIGUE_LOSS = (0.2, 0.45)  # fraction of the drive lost by the end of a recording
STROKE_TRIAL_SD = (0.35, 0.55)  # log-normal cue-to-cue spread of a contraction's strength
STROKE_FAILED = (0.1, 0.25)  # fraction of open/close cues where the attempt barely comes
STROKE_FAILED_EFFORT = (0.1, 0.4)  # ... and how much of the effort it gets
STROKE_NOISE = (1.0, 1.4)  # electrode noise, of a typical patient's
STROKE_DELAY_S = (0.2, 0.7)  # cue -> onset
STROKE_RAMP_S = (0.3, 1.0)  # onset ramp
STROKE_WOBBLE = 0.15  # slow fluctuation of the activation (typical: 0.08)
_STROKE_KEY = 0x57_0E  # separates the stroke draws from the typical ones
_TREMOR_SIGN = np.array([1.0, 1.0, 0.0, -1.0, -1.0, -1.0, 1.0])  # extensors +, flexors -


@dataclass(frozen=True)
class Stroke:
    """The per-patient traits of the stroke profile (on top of the pattern, trial spread and
    noise, which the profile sets in :class:`Patient`)."""

    spasm: float  # flexor burst at an open onset, of the close pattern (times the cue's effort)
    spasm_tau_s: float
    tremor_hz: float
    tremor_depth: float
    fatigue_loss: float
    failed_cues: float

    def __post_init__(self) -> None:
        ok = (
            self.spasm >= 0
            and self.spasm_tau_s > 0
            and 0 < self.tremor_hz < RAW_RATE_HZ / 2
            and 0 <= self.tremor_depth < 1
            and 0 <= self.fatigue_loss < 1
            and 0 <= self.failed_cues <= 1
        )
        if not ok or not np.all(np.isfinite(dataclasses.astuple(self))):
            raise ConfigError(f"stroke traits out of range: {self}")


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
    stroke: Stroke | None = None  # the stroke profile's traits; None: typical

    def __post_init__(self) -> None:
        m = len(MUSCLES)
        checks = [
            (self.stroke is None or isinstance(self.stroke, Stroke), "stroke must be a Stroke or None"),
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
    def profile(self) -> str:
        return "typical" if self.stroke is None else "stroke"

    @property
    def pattern_array(self) -> np.ndarray:
        return np.array(self.pattern, dtype=np.float64)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum} (got {value!r})")
    return int(value)


def make_patient(seed: int, index: int, *, difficulty: float | None = None, profile: str = "typical") -> Patient:
    """Patient ``index`` of the population drawn with ``seed``; ``difficulty`` (0..1) overrides
    the drawn one (Beta(2, 2)). ``profile="stroke"``: the same forearm (armband, electrodes,
    muscles) with the stroke profile's activation (module docstring); its own draws come from a
    separate stream, so the typical patients do not change."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
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
    trial_sd = 0.1 + 0.15 * d
    stroke = None
    if profile == "stroke":
        pattern, trial_sd, noise_rms, stroke = _stroke_traits(seed, index, strength, base, noise_rms)
    return Patient(
        seed=seed,
        index=index,
        difficulty=d,
        rotation=float(rotation),
        gains=tuple(float(g) for g in gains),
        muscle_positions=tuple(float(p) for p in positions),
        muscle_widths=tuple(float(w) for w in widths),
        pattern=tuple(tuple(float(v) for v in row) for row in pattern),
        trial_sd=trial_sd,
        noise_rms=float(noise_rms),
        armband_rate_hz=float(armband_rate),
        mains_hz=mains,
        stroke=stroke,
    )


def _stroke_traits(
    seed: int, index: int, strength: float, base: np.ndarray, noise_rms: float
) -> tuple[np.ndarray, float, float, Stroke]:
    """The stroke profile's pattern, trial spread, noise and traits for a patient whose typical
    draws gave ``strength``, ``base`` (intent x muscle, before mixing) and ``noise_rms``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, _STROKE_KEY]))
    u = lambda bounds: float(rng.uniform(*bounds))  # noqa: E731
    relax, open_, close = base
    weak = strength * u(STROKE_STRENGTH)
    open_mix = u(STROKE_EXTENSORS) * open_ + u(STROKE_OPEN_FLEXORS) * close
    close_mix = close + u(STROKE_CLOSE_EXTENSORS) * open_
    relax_mix = relax + u(STROKE_TONE) * close
    pattern = weak * np.stack([relax_mix, open_mix, close_mix])
    trial_sd = u(STROKE_TRIAL_SD)
    noise = noise_rms * u(STROKE_NOISE)
    traits = Stroke(
        spasm=u(STROKE_SPASM),
        spasm_tau_s=u(STROKE_SPASM_TAU_S),
        tremor_hz=u(STROKE_TREMOR_HZ),
        tremor_depth=u(STROKE_TREMOR_DEPTH),
        fatigue_loss=u(STROKE_FATIGUE_LOSS),
        failed_cues=u(STROKE_FAILED),
    )
    return pattern, trial_sd, noise, traits


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _unit_power(sos: np.ndarray) -> np.ndarray:
    """Scale ``sos`` so white noise of unit variance comes out with unit variance."""
    from scipy import signal

    impulse = signal.sosfilt(sos, np.r_[1.0, np.zeros(4095)])
    sos = sos.copy()
    sos[0, :3] /= np.sqrt(np.sum(impulse**2))
    return sos


@functools.cache
def _filters() -> dict[str, np.ndarray]:
    """The generator's filters as second-order sections, designed at its first use (scipy.signal
    takes most of a second to import: not at every import of this module)."""
    from scipy import signal

    return {
        "fresh": _unit_power(signal.butter(2, 50.0, "highpass", fs=RAW_RATE_HZ, output="sos")),
        "fatigued": _unit_power(signal.butter(2, [20.0, 70.0], "bandpass", fs=RAW_RATE_HZ, output="sos")),
        "noise": _unit_power(signal.butter(1, 10.0, "highpass", fs=RAW_RATE_HZ, output="sos")),
        "slow": _unit_power(signal.butter(2, 1.5, "lowpass", fs=RAW_RATE_HZ, output="sos")),
        "envelope": signal.butter(2, 4.0, "lowpass", fs=RAW_RATE_HZ, output="sos"),
    }


def _sosfilt(kind: str, x: np.ndarray) -> np.ndarray:
    """``x`` through the generator's filter ``kind``, along its first axis."""
    from scipy import signal

    return signal.sosfilt(_filters()[kind], x, axis=0)


def _protocol(rng: np.random.Generator, n_cycles: int) -> tuple[np.ndarray, np.ndarray]:
    """Segment intents (relax, open, relax, close) * n_cycles + relax, and their boundaries
    (start of each segment, then the end)."""
    intents = np.array([0, 1, 0, 2] * n_cycles + [0])
    lengths = rng.uniform(*SEGMENT_S, len(intents))
    return intents, np.r_[0.0, np.cumsum(lengths)]


def _activation(rng, patient, cond, intents, bounds, t) -> np.ndarray:
    """Muscle activation (n, muscles) in raw counts: per-cue strength, delayed ramps, slow
    fluctuation."""
    if patient.stroke is not None:
        return _stroke_activation(rng, patient, cond, intents, bounds, t)
    pattern = patient.pattern_array * np.asarray(cond.muscle_gain)
    k = len(intents)
    levels = pattern[intents] * np.exp(
        rng.normal(0.0, patient.trial_sd, (k, 1)) + rng.normal(0.0, 0.1, (k, len(MUSCLES)))
    )
    onset = bounds[1:-1] + rng.uniform(*DELAY_S, k - 1)
    ramp = rng.uniform(*RAMP_S, k - 1)
    steps = _smoothstep((t[:, None] - onset) / ramp)  # (n, k-1)
    act = levels[0] + np.einsum("tk,km->tm", steps, np.diff(levels, axis=0))
    wobble = _sosfilt("slow", rng.standard_normal((len(t), len(MUSCLES))))
    return np.maximum(act * (1.0 + 0.08 * wobble), 0.0)


def _stroke_activation(rng, patient, cond, intents, bounds, t) -> np.ndarray:
    """The stroke profile's activation (n, muscles): uneven cues and failed attempts, slow
    onsets, a flexor stretch-reflex burst at each open onset, tremor with extensors against
    flexors, the drive fading with effort (fatigue)."""
    s = patient.stroke
    pattern = patient.pattern_array * np.asarray(cond.muscle_gain)
    k = len(intents)
    effort = np.exp(rng.normal(0.0, patient.trial_sd, (k, 1)) + rng.normal(0.0, 0.1, (k, len(MUSCLES))))
    failed = (rng.random(k) < s.failed_cues) & (intents > 0)
    effort[failed] *= rng.uniform(*STROKE_FAILED_EFFORT, (int(failed.sum()), 1))
    levels = pattern[intents] * effort
    onset = bounds[1:-1] + rng.uniform(*STROKE_DELAY_S, k - 1)
    ramp = rng.uniform(*STROKE_RAMP_S, k - 1)
    steps = _smoothstep((t[:, None] - onset) / ramp)  # (n, k-1)
    act = levels[0] + np.einsum("tk,km->tm", steps, np.diff(levels, axis=0))
    opens = np.flatnonzero(intents[1:] == 1)  # onsets that start an open segment
    since = t[:, None] - onset[opens]
    decay = np.where(since > 0, np.exp(-np.maximum(since, 0.0) / s.spasm_tau_s), 0.0)
    burst = decay * effort[opens + 1].mean(axis=1)  # a stronger attempt stretches harder
    act += s.spasm * np.einsum("tk,m->tm", burst, pattern[2])
    phase = 2 * np.pi * s.tremor_hz * t + rng.uniform(0.0, 2 * np.pi)
    act *= 1.0 + s.tremor_depth * np.sin(phase)[:, None] * _TREMOR_SIGN
    progress = np.cumsum(act.sum(axis=1))
    act *= (1.0 - s.fatigue_loss * progress / progress[-1])[:, None]
    wobble = _sosfilt("slow", rng.standard_normal((len(t), len(MUSCLES))))
    return np.maximum(act * (1.0 + STROKE_WOBBLE * wobble), 0.0)


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


def _shaped_noise(rng, drive: np.ndarray, mix: np.ndarray, own_sd: np.ndarray, band: str) -> np.ndarray:
    """Band-limited EMG per electrode: muscle noise modulated by ``drive`` (n, muscles) and mixed
    (``own_sd``: the std dev of the part each electrode sees on its own). Products use einsum,
    not BLAS, so the result does not depend on BLAS threads or kernels. ``band``: ``"fresh"`` or
    ``"fatigued"``."""
    shared = np.einsum("tm,cm->tc", drive * rng.standard_normal(drive.shape), mix)
    own = own_sd * rng.standard_normal(own_sd.shape)
    white = np.sqrt(_SHARED_FRACTION) * shared + np.sqrt(1.0 - _SHARED_FRACTION) * own
    return _sosfilt(band, white)


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
    x = np.sqrt(1.0 - w) * _shaped_noise(rng, drive, mix, own_sd, "fresh")
    x += np.sqrt(w) * _shaped_noise(rng, drive, mix, own_sd, "fatigued")
    noise_level = patient.noise_rms * np.interp(t, [t[0], t[-1]], cond.noise)
    electrode = np.exp(rng.normal(0.0, 0.2, N_CHANNELS))
    x += noise_level[:, None] * electrode * _sosfilt("noise", rng.standard_normal(x.shape))
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
    env = _sosfilt("envelope", np.abs(raw))
    env = rng.uniform(5.0, 40.0, N_CHANNELS) + _MYHAND_SCALE * env
    end = bounds[-1]
    # Logger rows at ~100 Hz with jitter; armband updates at 35-55 Hz with jitter and latency.
    times = logger_times(rng, end)
    upd = armband_updates(rng, end, patient.armband_rate_hz)
    values = np.stack([np.interp(upd, t, env[:, c]) for c in range(N_CHANNELS)], axis=1)
    latency = rng.uniform(*LATENCY_S)
    emg = np.clip(np.round(values[held_update(times, upd, latency)]), *_MYHAND_LIMITS)
    labels = _labels_at(times, intents, bounds)
    start = np.datetime64("2024-03-04T09:00:00", "us") + np.timedelta64(patient.index, "D")
    start += np.timedelta64(int(zlib.crc32(condition.encode()) % 28800), "s")
    extra = myhand_columns(times, labels, start)
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
    profile: str = "typical",
    progress: bool = False,
) -> list[dict]:
    """Write ``patients`` x ``conditions`` recordings under ``out`` (sessions ``synth_p00``,
    ...) and return the task collection ``[{"session": ..., "condition": ...}, ...]``.
    ``profile``: ``typical`` or ``stroke`` (see :func:`make_patient`)."""
    patients = _check_int("patients", patients, 1)
    names = condition_names(conditions)
    seed = _check_int("seed", seed, 0)
    if style not in STYLES:
        raise ConfigError(f"unknown style {style!r}; expected one of {', '.join(STYLES)}")
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
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
            patient = make_patient(seed, p, profile=profile)
        rec, extra = synth_recording(patient, condition, style=style, seed=seed)
        session = session_name(p)
        write_recording(recording_path(out, session, condition), rec, extra=extra)
        tasks.append({"session": session, "condition": condition})
    return tasks
