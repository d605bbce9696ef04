"""From raw armband chunks to the newest model input window, and loading models safely.

:class:`Pipeline` owns the input checks (NaN/Inf, saturation), the causal signal chain and the
windower of one model's :class:`~metaemg.signal.SignalSpec`. :meth:`Pipeline.push` returns only
the newest window a chunk completes and counts the others as skipped: a loop that fell behind
jumps to the present instead of emitting a burst of stale decisions.

:func:`load_model` is what a hot swap runs (in a worker thread): open the file, check its
metadata against the stream, run the self-test inference. Any failure is a ModelError and the
caller keeps its old model.
"""

from __future__ import annotations

import os
from collections import deque

import numpy as np

from metaemg.errors import ModelError
from metaemg.modelfile import OnnxModel
from metaemg.signal import SignalChain, SignalSpec, Windower, rate_matches

NONFINITE = "nonfinite"
SATURATED = "saturated"
RATE = "rate"
RATE_WINDOW_S = 1.0  # the sample rate is measured over the newest second of samples
MEASURED_RATE_TOLERANCE = 0.1  # measured against nominal (timestamps jitter; the nominal rule is 5 %)


class SaturationMonitor:
    """Fraction of the last ``n`` samples that touched the armband's input range."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._ring = np.zeros(n, dtype=bool)
        self._pos = 0
        self._count = 0

    def reset(self) -> None:
        self._ring[:] = False
        self._pos = self._count = 0

    def push(self, flags: np.ndarray) -> float:
        m = len(flags)
        if m == 1:  # the live path: one sample per chunk
            new, old = bool(flags[0]), bool(self._ring[self._pos])
            self._ring[self._pos] = new
            self._count += new - old
            self._pos = (self._pos + 1) % self.n
        elif m >= self.n:
            self._ring[:] = flags[-self.n :]
            self._pos = 0
            self._count = int(self._ring.sum())
        elif m:
            idx = (self._pos + np.arange(m)) % self.n
            self._count += int(flags.sum()) - int(self._ring[idx].sum())
            self._ring[idx] = flags
            self._pos = (self._pos + m) % self.n
        return self._count / self.n


class RateMonitor:
    """The stream's real sample rate, from the samples' own LSL timestamps over the newest
    :data:`RATE_WINDOW_S` (not from when they arrive, so a stall of this process does not look
    like a slow stream). :meth:`push` says whether the input is usable: not before a full window
    has been seen ("rate unknown" at first: no command goes out on a stream whose rate was never
    measured), and not while the rate is more than :data:`MEASURED_RATE_TOLERANCE` off the nominal one (a
    stream that announced 200 Hz and delivered 50 or 800 drove the hand)."""

    def __init__(self, nominal: float) -> None:
        self.nominal = nominal
        self._marks: deque[tuple[float, int]] = deque()  # (timestamp of a chunk's last sample, samples so far)
        self._count = 0
        self.rate: float | None = None

    def reset(self) -> None:
        self._marks.clear()
        self._count = 0
        self.rate = None

    def push(self, stamps: np.ndarray) -> str | None:
        """None when the rate is known and fits; else why not (a short text)."""
        if len(stamps) == 0:
            return None
        marks = self._marks
        if not marks:
            marks.append((float(stamps[0]), 1))  # the first sample opens the first interval
            self._count = 1
            if len(stamps) == 1:
                return "rate unknown"
            stamps = stamps[1:]
        self._count += len(stamps)
        last = float(stamps[-1])
        marks.append((last, self._count))
        while len(marks) > 2 and last - marks[1][0] >= RATE_WINDOW_S:
            marks.popleft()
        t0, n0 = marks[0]
        if last - t0 < RATE_WINDOW_S:
            self.rate = None
            return "rate unknown"
        self.rate = (self._count - n0) / (last - t0)
        if abs(self.rate - self.nominal) > MEASURED_RATE_TOLERANCE * self.nominal:
            return f"measured {self.rate:.0f} Hz, the stream says {self.nominal:g} Hz"
        return None


class Pipeline:
    """Input checks, signal chain and windows for one signal spec."""

    def __init__(self, spec: SignalSpec, saturation_fraction: float = 0.2) -> None:
        self.spec = spec
        self.chain = SignalChain(spec)
        self.windower = Windower(spec.window, spec.stride, spec.channels)
        self._saturation = SaturationMonitor(spec.window) if spec.input_range is not None else None
        self._max_saturated = saturation_fraction
        self.saturated_fraction = 0.0

    def reset(self) -> None:
        """Forget filter state and partial windows (after a gap or bad input)."""
        self.chain.reset()
        self.windower.reset()
        if self._saturation is not None:
            self._saturation.reset()
        self.saturated_fraction = 0.0

    def check(self, x: np.ndarray) -> str | None:
        """``"nonfinite"`` or ``"saturated"`` if this chunk makes the input bad, else None.

        Non-finite samples never reach the filters (they would poison their state)."""
        if not np.isfinite(x).all():
            return NONFINITE
        if self._saturation is not None:
            self.saturated_fraction = self._saturation.push(self.chain.saturated(x))
            if self.saturated_fraction > self._max_saturated:
                return SATURATED
        return None

    def push(self, x: np.ndarray) -> tuple[np.ndarray | None, int, int]:
        """Filter a chunk; return ``(newest window (1, window, channels) or None, stream index of
        its last sample, windows skipped)``."""
        windows, ends = self.windower.push(self.chain.process(x))
        k = len(ends)
        if k == 0:
            return None, -1, 0
        return windows[k - 1 :], int(ends[k - 1]), k - 1


def check_stream(info_rate: float, info_channels: int, rate: float, channels: int) -> str | None:
    """Why a stream of ``channels`` at ``rate`` Hz does not fit a model, or None."""
    if channels != info_channels:
        return f"the model expects {info_channels} channels, the stream has {channels}"
    if not rate_matches(rate, info_rate):
        return f"the model expects {info_rate:g} Hz, the stream's nominal rate is {rate:g} Hz"
    return None


def load_model(path: str | os.PathLike, stream: tuple[float, int] | None = None) -> OnnxModel:
    """Open ``path``, check it against ``stream`` = (rate, channels) if given, run the self-test
    inference. Raises ModelError (one line) on any problem."""
    model = OnnxModel(path)
    if stream is not None:
        problem = check_stream(model.info.sample_rate, model.info.channels, *stream)
        if problem is not None:
            raise ModelError(f"{path}: does not match the stream: {problem}")
    model.self_test()
    return model
