"""The signal chain: one torch-free definition used by training, evaluation and the daemon.

Per channel, in this order:

1. clip the raw input to ``input_range`` (what the armband can report; marks saturation),
2. causal high-pass (Butterworth, ``filter_order``) at ``highpass_hz``,
3. causal band-stop at ``mains_hz`` (50 or 60 Hz), only where the rate allows (below Nyquist),
4. optional full-wave rectification,
5. optional causal low-pass envelope (2nd-order Butterworth) at ``envelope_hz``,
6. normalisation ``(y - offset) / scale``,

then a windowing ring buffer: windows of ``window`` consecutive samples every ``stride`` samples.

All filters are second-order sections whose state is carried across calls, so feeding a signal in
arbitrary chunks gives the same output as one call. The state starts at the steady state for the
first sample seen, so a recording's DC level does not ring through the high-pass.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from metaemg.errors import ConfigError

RATE_TOLERANCE = 0.05  # see rate_matches()

_ENVELOPE_ORDER = 2


@dataclass(frozen=True)
class SignalSpec:
    """Serialisable configuration of the signal chain (travels inside the model file)."""

    sample_rate: float
    channels: int = 8
    input_range: tuple[float, float] | None = None
    highpass_hz: float | None = None
    mains_hz: float | None = None
    notch_q: float = 30.0
    rectify: bool = False
    envelope_hz: float | None = None
    filter_order: int = 4
    offset: float = 0.0
    scale: float = 1.0
    window: int = 50
    stride: int = 10

    def __post_init__(self) -> None:
        if self.input_range is not None:
            lo, hi = (float(v) for v in self.input_range)
            object.__setattr__(self, "input_range", (lo, hi))
        nyq = self.sample_rate / 2 if _num(self.sample_rate) else 0.0
        checks = [
            (_num(self.sample_rate) and self.sample_rate > 0, "sample_rate must be > 0"),
            (isinstance(self.channels, int) and self.channels >= 1, "channels must be an integer >= 1"),
            (
                self.input_range is None or self.input_range[0] < self.input_range[1],
                "input_range must be [low, high] with low < high",
            ),
            (
                self.highpass_hz is None or (_num(self.highpass_hz) and 0 < self.highpass_hz < nyq),
                f"highpass_hz must be in (0, {nyq:g}) (Nyquist) or null",
            ),
            (self.mains_hz is None or self.mains_hz in (50, 60), "mains_hz must be 50, 60 or null"),
            (_num(self.notch_q) and self.notch_q > 0, "notch_q must be > 0"),
            (
                self.envelope_hz is None or (_num(self.envelope_hz) and 0 < self.envelope_hz < nyq),
                f"envelope_hz must be in (0, {nyq:g}) (Nyquist) or null",
            ),
            (isinstance(self.filter_order, int) and 1 <= self.filter_order <= 8, "filter_order must be 1..8"),
            (_num(self.scale) and self.scale != 0 and math.isfinite(self.scale), "scale must be finite and non-zero"),
            (_num(self.offset) and math.isfinite(self.offset), "offset must be finite"),
            (isinstance(self.window, int) and self.window >= 1, "window must be an integer >= 1"),
            (isinstance(self.stride, int) and self.stride >= 1, "stride must be an integer >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"signal spec: {message}")

    # -- presets ---------------------------------------------------------------------------
    @classmethod
    def myo(cls, **overrides) -> SignalSpec:
        """Raw bipolar EMG at 200 Hz, int8 range (Thalmic Myo): high-pass 20 Hz, mains notch,
        rectified 5 Hz envelope, scaled to about 0..1. Window 250 ms, stride 50 ms."""
        base = {
            "sample_rate": 200.0,
            "input_range": (-128.0, 127.0),
            "highpass_hz": 20.0,
            "mains_hz": 60,
            "rectify": True,
            "envelope_hz": 5.0,
            "scale": 128.0,
            "window": 50,
            "stride": 10,
        }
        return cls(**{**base, **overrides})

    @classmethod
    def myhand(cls, **overrides) -> SignalSpec:
        """MyHand armband envelopes at about 100 Hz, values 0..1000: already rectified and
        smoothed, so only clipped and scaled to 0..1. Window 250 ms, stride 50 ms."""
        base = {"sample_rate": 100.0, "input_range": (0.0, 1000.0), "scale": 1000.0, "window": 25, "stride": 5}
        return cls(**{**base, **overrides})

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        if d["input_range"] is not None:
            d["input_range"] = list(d["input_range"])
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> SignalSpec:
        if not isinstance(data, dict):
            raise ConfigError(f"signal spec must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"signal spec: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        if "sample_rate" not in data:
            raise ConfigError("signal spec: sample_rate is required")
        d = dict(data)
        if d.get("input_range") is not None:
            rng = d["input_range"]
            if not (isinstance(rng, (list, tuple)) and len(rng) == 2 and all(_num(v) for v in rng)):
                raise ConfigError(f"signal spec: input_range must be [low, high], got {rng!r}")
            d["input_range"] = tuple(rng)
        for key in ("sample_rate", "highpass_hz", "envelope_hz", "notch_q", "offset", "scale"):
            if d.get(key) is not None and not _num(d[key]):
                raise ConfigError(f"signal spec: {key} must be a number, got {d[key]!r}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> SignalSpec:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"signal spec is not valid JSON: {exc}") from None

    # -- derived -----------------------------------------------------------------------------
    @property
    def window_seconds(self) -> float:
        return self.window / self.sample_rate

    @property
    def stride_seconds(self) -> float:
        return self.stride / self.sample_rate

    @property
    def notch_active(self) -> bool:
        return self.mains_hz is not None and self.mains_hz < self.sample_rate / 2


def rate_matches(rate: float, expected: float) -> bool:
    """The rate rule, the one definition: a recording, clip or stream at ``rate`` Hz fits a signal
    chain or model made for ``expected`` Hz when they differ by at most :data:`RATE_TOLERANCE`
    (filters and windows are designed for the expected rate). NaN never matches."""
    return bool(abs(rate - expected) <= RATE_TOLERANCE * expected)


def _num(v: object) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def butter_sos(order: int, cutoff: float, fs: float, btype: str) -> np.ndarray:
    """A digital Butterworth low- or high-pass as second-order sections ``(sections, 6)``: the
    analog prototype's poles, moved to ``cutoff`` (pre-warped), through the bilinear transform;
    conjugate pole pairs in sections ordered by their distance from the unit circle (the nearest
    last), a real pole (odd orders) in a first-order section, the gain in the first section. The
    same filter as ``scipy.signal.butter(..., output="sos")`` (tested), without importing scipy
    (half a second at every start of the daemon)."""
    if btype not in ("lowpass", "highpass"):
        raise ValueError(f"btype must be lowpass or highpass, got {btype!r}")
    fs2 = 2.0 * fs
    warped = fs2 * np.tan(np.pi * cutoff / fs)
    proto = -np.exp(1j * np.pi * np.arange(-order + 1, order, 2) / (2 * order))  # analog, cutoff 1 rad/s
    if btype == "lowpass":
        analog, gain, zero = warped * proto, warped**order, -1.0
    else:
        analog, gain, zero = warped / proto, float(np.real(1.0 / np.prod(-proto))), 1.0
    poles = (fs2 + analog) / (fs2 - analog)
    gain = gain * float(np.real((fs2**order if btype == "highpass" else 1.0) / np.prod(fs2 - analog)))
    pairs = sorted((p for p in poles if p.imag > 1e-12), key=lambda p: -(1 - abs(p)))
    real = [float(p.real) for p in poles if abs(p.imag) <= 1e-12]
    sections = [[1.0, -zero, 0.0, 1.0, -r, 0.0] for r in real]
    sections += [[1.0, -2 * zero, 1.0, 1.0, -2 * p.real, abs(p) ** 2] for p in pairs]
    sos = np.array(sections, dtype=np.float64)
    sos[0, :3] *= gain
    return sos


def notch_sos(f0: float, q: float, fs: float) -> np.ndarray:
    """A second-order IIR notch at ``f0`` with quality ``q`` as one section (the filter of
    ``scipy.signal.iirnotch``: -3 dB bandwidth ``f0 / q``)."""
    w0 = 2 * np.pi * f0 / fs
    beta = np.tan(w0 / q / 2)  # the -3 dB gain 1/sqrt(2): sqrt(1 - g^2) / g = 1
    g = 1.0 / (1.0 + beta)
    return np.array([[g, -2 * g * np.cos(w0), g, 1.0, -2 * g * np.cos(w0), 2 * g - 1]], dtype=np.float64)


def sos_zi(sos: np.ndarray) -> np.ndarray:
    """``(sections, 2)``: each section's state for a unit step in steady state (transposed direct
    form II, the layout of ``scipy.signal.sosfilt_zi``), each scaled by the DC gain before it."""
    zi = np.empty((len(sos), 2))
    scale = 1.0
    for k, (b0, b1, b2, _, a1, a2) in enumerate(sos):
        zi[k] = scale * np.linalg.solve([[1 + a1, -1.0], [a2, 1.0]], [b1 - a1 * b0, b2 - a2 * b0])
        scale *= (b0 + b1 + b2) / (1 + a1 + a2)
    return zi


def design(spec: SignalSpec) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Second-order sections before rectification (high-pass, notch) and after (envelope)."""
    fs = spec.sample_rate
    pre = []
    if spec.highpass_hz is not None:
        pre.append(butter_sos(spec.filter_order, spec.highpass_hz, fs, "highpass"))
    if spec.notch_active:
        assert spec.mains_hz is not None  # notch_active says so
        pre.append(notch_sos(spec.mains_hz, spec.notch_q, fs))
    post = None
    if spec.envelope_hz is not None:
        post = butter_sos(_ENVELOPE_ORDER, spec.envelope_hz, fs, "lowpass")
    return (np.vstack(pre) if pre else None), post


BLOCK = 64  # samples filtered by one set of precomputed matrices; a longer chunk is cut into blocks


class _SosStage:
    """A causal SOS cascade over all channels with its state carried across calls.

    The state is every section's transposed-direct-form-II state (``scipy.signal.sosfilt``'s,
    ``(2 x sections, channels)``). A chunk of ``m`` samples is filtered with the cascade's
    state-space matrices for ``m`` samples, made once: ``y = O x + T u``, ``x' = A^m x + R u``,
    four small matrix products (a chunk longer than :data:`BLOCK`, a recording, block by block).
    The same numbers as ``scipy.signal.sosfilt`` to rounding (tested), without importing scipy,
    and chunking does not change the result.
    """

    def __init__(self, sos: np.ndarray):
        self.sos = np.ascontiguousarray(sos, dtype=np.float64)
        self._zi_unit = sos_zi(self.sos)  # (sections, 2)
        self._x: np.ndarray | None = None  # the state, (2 x sections, channels)
        self._a, self._b, self._c, self._d = self._state_space()
        self._blocks: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}

    def _step(self, x: np.ndarray, u: float) -> tuple[np.ndarray, float]:
        x = x.copy()
        for k, (b0, b1, b2, _, a1, a2) in enumerate(self.sos):
            y = b0 * u + x[2 * k]
            x[2 * k] = b1 * u - a1 * y + x[2 * k + 1]
            x[2 * k + 1] = b2 * u - a2 * y
            u = y
        return x, u

    def _state_space(self):
        n = 2 * len(self.sos)
        eye = np.eye(n)
        steps = [self._step(eye[i], 0.0) for i in range(n)]
        a = np.array([x for x, _ in steps]).T
        c = np.array([y for _, y in steps])
        b, d = self._step(np.zeros(n), 1.0)
        return a, b, c, d

    def _block(self, m: int):
        if m not in self._blocks:
            a, b, c, d = self._a, self._b, self._c, self._d
            powers = [np.eye(len(a))]
            for _ in range(m):
                powers.append(a @ powers[-1])
            obs = np.array([c @ powers[k] for k in range(m)])  # (m, n)
            h = np.array([d] + [c @ powers[k] @ b for k in range(m - 1)])  # impulse response
            toeplitz = np.zeros((m, m))
            for k in range(m):
                toeplitz[k, : k + 1] = h[k::-1]
            ctrl = np.array([powers[m - 1 - j] @ b for j in range(m)]).T  # (n, m)
            self._blocks[m] = (obs, toeplitz, powers[m], ctrl)
        return self._blocks[m]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self._x is None:  # the steady state of the first sample: no start-up transient
            self._x = self._zi_unit.reshape(-1, 1) * x[0][None, :]
        if len(x) > BLOCK:  # a recording, or a backlog after a stall: block by block
            return np.vstack([self(x[i : i + BLOCK]) for i in range(0, len(x), BLOCK)])
        obs, toeplitz, power, ctrl = self._blocks.get(len(x)) or self._block(len(x))
        y = obs @ self._x + toeplitz @ x
        self._x = power @ self._x + ctrl @ x
        return y

    def reset(self) -> None:
        self._x = None


class SignalChain:
    """Stateful filter chain: ``process(chunk)`` maps (n, channels) raw samples to (n, channels)
    conditioned samples. Chunking does not change the result."""

    def __init__(self, spec: SignalSpec):
        self.spec = spec
        pre, post = design(spec)
        self._pre = _SosStage(pre) if pre is not None else None
        self._post = _SosStage(post) if post is not None else None
        self._lo, self._hi = spec.input_range if spec.input_range is not None else (-np.inf, np.inf)

    def reset(self) -> None:
        for stage in (self._pre, self._post):
            if stage is not None:
                stage.reset()

    def process(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.spec.channels:
            raise ConfigError(f"signal chain expects (n, {self.spec.channels}) samples, got shape {x.shape}")
        if x.shape[0] == 0:
            return x.copy()
        y = np.clip(x, self._lo, self._hi)
        if self._pre is not None:
            y = self._pre(y)
        if self.spec.rectify:
            y = np.abs(y)
        if self._post is not None:
            y = self._post(y)
        if self.spec.offset != 0.0:
            y = y - self.spec.offset
        if self.spec.scale != 1.0:
            y = y / self.spec.scale
        return y

    def saturated(self, x: np.ndarray) -> np.ndarray:
        """Per-sample flag: any channel at or beyond ``input_range`` (the armband saturated)."""
        x = np.asarray(x, dtype=np.float64)
        # numpy's stubs type .any(axis=...) as possibly a scalar; on a 2-D array it is a 1-D array
        return ((x <= self._lo) | (x >= self._hi)).any(axis=1)  # type: ignore[return-value]


class Windower:
    """Windows of ``window`` samples every ``stride`` samples, from chunks of any size.

    The k-th window (from 0) ends at sample ``window - 1 + k * stride`` of the stream; its label,
    offline, is the label of that last sample. The last ``window`` samples live in a mirrored ring
    (each sample stored at slot ``i % window`` and ``window`` slots later), so the history part of
    any window is one contiguous slice: the live path (one sample per call) copies two slices and
    never reallocates.
    """

    def __init__(self, window: int, stride: int, channels: int):
        if window < 1 or stride < 1:
            raise ConfigError(f"window ({window}) and stride ({stride}) must be >= 1")
        self.window, self.stride, self.channels = window, stride, channels
        self._ring = np.zeros((2 * window, channels), dtype=np.float64)
        self.reset()

    def reset(self) -> None:
        self._n = 0  # samples seen
        self._next_end = self.window - 1  # stream index of the next window's last sample

    @property
    def samples_seen(self) -> int:
        return self._n

    @property
    def samples_needed(self) -> int:
        """Samples still to come before the next window is complete (at least 1)."""
        return self._next_end + 1 - self._n

    def push(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add samples; return ``(windows, ends)``: the windows completed by this chunk, shape
        (k, window, channels), and the stream index of each window's last sample."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.channels:
            raise ConfigError(f"windower expects (n, {self.channels}) samples, got shape {x.shape}")
        w, ring, first, n = self.window, self._ring, self._n, len(x)
        self._n = first + n
        ends = np.arange(self._next_end, self._n, self.stride, dtype=np.int64)
        windows = np.empty((len(ends), w, self.channels), dtype=np.float64)
        if len(ends):
            self._next_end = int(ends[-1]) + self.stride
            fresh = ends - first + 1  # samples of each window that come from this chunk
            straddle = int(np.searchsorted(fresh, w))  # these also need samples from before it
            top = (first - 1) % w + 1 + w  # ring[top - w : top] = the w samples before this chunk
            for i, f in enumerate(fresh[:straddle].tolist()):
                windows[i, : w - f] = ring[top - w + f : top]
                windows[i, w - f :] = x[:f]
            if straddle < len(ends):  # whole windows inside the chunk (a recording at once)
                windows[straddle:] = sliding_window_view(x, w, axis=0)[fresh[straddle:] - w].transpose(0, 2, 1)
        m = min(n, w)  # only the last w samples are ever needed again
        if m == 1:
            slot = (first + n - 1) % w
            ring[slot] = ring[slot + w] = x[-1]
        elif m:
            slots = (first + np.arange(n - m, n)) % w
            ring[slots] = ring[slots + w] = x[n - m :]
        return windows, ends


def make_windows(x: np.ndarray, window: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """All windows of a whole signal, exactly as the :class:`Windower` yields them live."""
    x = np.asarray(x, dtype=np.float64)
    return Windower(window, stride, x.shape[1]).push(x)


def condition(x: np.ndarray, spec: SignalSpec) -> np.ndarray:
    """Run a whole recording through a fresh chain (what the daemon computes sample by sample)."""
    return SignalChain(spec).process(x)
