"""Adapt the base meta-model to (part of) a clip with exactly the adaptation it was meta-trained for.

The base ONNX file is turned back into its torch model once (:func:`metalearn.export.load_torch_from_onnx`);
:meth:`Adapter.adapt` then fits, on a copy, a scaler of the base model's kind on the conditioned
samples of the part given, and runs the file's ``inner`` adaptation on its windows, on the CPU
(:func:`metalearn.maml.adapt_model`: the closed-form head of a ``feat`` model, then the inner
loop's gradient steps). The result is exported, with the new scaler baked in and the calibration
provenance in its metadata, by :func:`metalearn.export.export_model` (which checks onnxruntime
against torch before the file exists).

torch and onnx are imported only here, and only when called: :func:`require_torch` says
exactly what to install on a device PC without them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metaemg.errors import MissingDependencyError
from metaemg.feathead import OPERATING_POINTS
from metaemg.modelfile import ModelInfo
from metalearn.clip import ClipWindows
from metalearn.tasks import Scaler

# One CPU thread: the daemon's real-time loop keeps the other cores, and the small matrices of
# these models gain nothing from more threads (they only contend; see bench/calibrate_speed.py).
ADAPT_THREADS = 1
TORCH_HINT = (
    "calibration adapts the model with torch and onnx, which are not installed here; on the device PC run: "
    "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu && pip install onnx"
)


def require_torch():
    """``(torch, onnx)``, or MissingDependencyError with the pip command."""
    try:
        import onnx
        import torch
    except ImportError:
        raise MissingDependencyError(TORCH_HINT) from None
    return torch, onnx


@dataclass(eq=False)
class Adapted:
    model: Any  # the adapted torch model (without the scaler)
    base_info: ModelInfo | None  # the base model file's metadata (None: not from a file)
    scaler: Scaler  # fitted on the adaptation part
    adapt_seconds: float  # the inner loop alone

    def scaled(self, windows: np.ndarray) -> np.ndarray:
        """``(x - offset) / scale`` in float32, as the exported graph computes it."""
        offset = np.asarray(self.scaler.offset, dtype=np.float32)
        scale = np.asarray(self.scaler.scale, dtype=np.float32)
        return (np.asarray(windows, dtype=np.float32) - offset) / scale

    def set_own(self, moves: np.ndarray | None, own: OwnClasses | None) -> Adapted:
        """(Re)place the ``feat`` model's own non-intent classes: ``moves`` (conditioned, unscaled
        windows) clustered as ``own`` says; None or no windows: the population's classes only."""
        if not hasattr(self.model, "set_own_non_intent"):
            return self  # only a feat model learns them
        torch, _ = require_torch()
        x = None if moves is None or not len(moves) or own is None else torch.from_numpy(self.scaled(moves))
        self.model.set_own_non_intent(x, own.clusters if own else 0, own.log_prior if own else None)
        return self

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """Class probabilities of the adapted torch model, float32 (n, 3)."""
        torch, _ = require_torch()
        with torch.no_grad():
            logits = self.model(torch.from_numpy(self.scaled(windows)))
            return torch.softmax(logits, dim=-1).numpy()


class Adapter:
    """A base model's own adaptation (its scaler kind and ``inner`` settings), applicable to any
    part of a clip. ``info`` is the base model file's metadata (None for a model that is not
    exported, e.g. in a benchmark); :meth:`from_file` reads both from a model file."""

    def __init__(self, model, scaler_kind: str, inner: Mapping[str, Any], info: ModelInfo | None = None):
        self.model, self.scaler_kind, self.inner, self.info = model, scaler_kind, inner, info

    @classmethod
    def from_file(cls, base_path: str | Path) -> Adapter:
        require_torch()
        from metalearn.export import load_torch_from_onnx

        model, info = load_torch_from_onnx(base_path)
        return cls(model, info.scaler["kind"], info.inner, info)

    def adapt(
        self,
        windows: np.ndarray,
        labels: np.ndarray,
        samples: np.ndarray,
        moves: np.ndarray | None = None,
        own: OwnClasses | None = None,
    ) -> Adapted:
        """Adapt a copy of the base model to ``windows`` (conditioned, unscaled) and ``labels``;
        the scaler is fitted on the conditioned ``samples`` they were cut from. ``moves``: windows
        of the clip's movement segment, learned as the wearer's own non-intent classes as ``own``
        says (a ``feat`` model's; other kinds ignore them)."""
        torch, _ = require_torch()
        from metalearn.maml import adapt_model, torch_threads

        scaler = Scaler.fit(self.scaler_kind, samples)
        result = Adapted(self.model, self.info, scaler, 0.0)
        x = torch.from_numpy(result.scaled(windows))
        y = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
        with torch_threads(ADAPT_THREADS):
            t0 = time.perf_counter()
            result.model = adapt_model(self.model, x, y, self.inner)
            result.set_own(moves, own)  # a no-op for a model that is not a feat model
            result.adapt_seconds = time.perf_counter() - t0
        return result


@dataclass(frozen=True)
class OwnClasses:
    """How the wearer's own movements that are not intents join a ``feat`` model: up to
    ``clusters`` classes, each with the log prior ``-log_prior`` against the intents (None: not at
    all, the population's classes only)."""

    clusters: int = 4
    log_prior: float | None = OPERATING_POINTS["balanced"]

    @classmethod
    def at(cls, point: str, clusters: int = 4) -> OwnClasses:
        return cls(clusters, OPERATING_POINTS[point])


def adapt_to_clip(base_path: str | Path, clip: ClipWindows, own: OwnClasses | None = None) -> Adapted:
    """The base model adapted on every cycle of the clip, with its movement segment (what is installed)."""
    return Adapter.from_file(base_path).adapt(
        clip.windows, clip.labels, clip.conditioned[clip.intent_samples], clip.move_windows, own
    )


def export_adapted(adapted: Adapted, calibration: dict, out: str | Path, verify_windows: np.ndarray) -> Path:
    """Write the adapted model to ``out`` with the base model's metadata, the new scaler and
    ``calibration``; verified against torch on ``verify_windows`` (conditioned, unscaled)."""
    from metalearn.export import export_model

    assert adapted.base_info is not None, "export needs the base model file's metadata"
    metadata = adapted.base_info.to_dict()
    metadata["scaler"] = adapted.scaler.to_dict()
    metadata["calibration"] = calibration
    return export_model(adapted.model, metadata, out, verify_windows=verify_windows)
