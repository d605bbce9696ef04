"""The ``feat`` model's decision, torch-free: numpy on the model file's own weights.

The shipped models are ``feat`` models (``metalearn.models.FeatLDA``): log-amplitude features of
each window, standardised with the wearer's calibration statistics, whitened with what was
learned across many wearers, then a linear head with its novelty rejection and the population's
non-intent classes. The ONNX graph computes exactly this; :class:`FeatHead` computes it from the
same initializers in numpy, so that the session adaptation (:mod:`metaemg.drift`) can move the
calibrated statistics without torch and without rewriting the graph. ``tests/test_drift.py``
checks it against onnxruntime on real windows.

The constants here are the one definition: ``metalearn.models`` imports them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

# The windows over which the features are computed: the whole window, its newer half and its
# newest fifth (250, 125 and 50 ms at 200 Hz): the short ones see a new contraction within a few
# tens of ms, the long one averages the noise of a steady one.
FEAT_SCALES = (1, 2, 5)
FEAT_KINDS = ("log_mav", "log_wl")
LOG_EPS = 1e-4  # in conditioned units (the myo chain: raw / 128; one Myo LSB is 0.0078)
# a rejected window's open and close logits against relax's 0: probabilities (1, 1e-13, 1e-13)
REJECT_LOGIT = -30.0
# the population's non-intent classes (the Myo's wrist flexion, extension, radial and ulnar
# deviation) come first among a model's; a calibration's own classes of the wearer follow
POPULATION_CLASSES = 4
# a wearer's own non-intent class "as likely as an intent" has this log prior against it (a class
# whose log prior is 0 is off)
OWN_PRIOR_MIN = 1e-6


def own_log_prior(log_prior: float) -> float:
    """The stored log prior of a wearer's own non-intent class at ``log_prior`` against the
    intents (an operating point's): negative, at least :data:`OWN_PRIOR_MIN` below 0 so that the
    class is on."""
    return -max(float(log_prior), OWN_PRIOR_MIN)


# The clinician's operating points for a wearer's own non-intent classes: their log prior against
# the intents. Larger: the hand answers more of the patient's opens, and more wrist movements move
# it (docs/evidence.md, "Operating points", measured on both protocols).
OPERATING_POINTS = {"steady": 0.0, "balanced": 6.0, "responsive": 10.0}
OPERATING_POINT_WORDS = {
    "steady": "fewest unintended movements",
    "balanced": "the default: the knee of the measured curve",
    "responsive": "misses the fewest opens",
}
WEIGHTS = (
    "feat_offset",
    "feat_scale",
    "whiten",
    "class_means",
    "precision",
    "reject_distance",
    "other_means",
    "other_log_prior",
    "head.weight",
    "head.bias",
)


@functools.cache
def _averaging(window: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows averaging the newest samples of each of :data:`FEAT_SCALES`: (scales, window) for the
    amplitudes, (scales, window - 1) for the differences."""
    mav, wl = np.zeros((len(FEAT_SCALES), window)), np.zeros((len(FEAT_SCALES), window - 1))
    for i, k in enumerate(FEAT_SCALES):
        n = max(2, window // k)
        mav[i, -n:] = 1.0 / n
        wl[i, -(n - 1) :] = 1.0 / (n - 1)
    return mav, wl


def features(x: np.ndarray) -> np.ndarray:
    """(..., window, channels) -> (..., features): log MAV and log WL over each of
    :data:`FEAT_SCALES`, laid out (kind, scale, channel) as ``FeatLDA.features``; one window (the
    daemon's) or a batch alike, by two small products."""
    mav, wl = _averaging(x.shape[-2])
    lead = x.shape[:-2]
    amplitudes = (mav @ np.abs(x)).reshape(*lead, -1), (wl @ np.abs(x[..., 1:, :] - x[..., :-1, :])).reshape(*lead, -1)
    return np.log(np.concatenate(amplitudes, axis=-1) + LOG_EPS)


@dataclass
class FeatHead:
    """A calibrated ``feat`` model's statistics (float64) and its decision on windows."""

    offset: np.ndarray  # (d,) feature standardisation, fitted on the calibration clip
    scale: np.ndarray  # (d,)
    whiten: np.ndarray  # (d, d) learned across wearers
    means: np.ndarray  # (classes, d) intent means of the clip, whitened
    precision: np.ndarray  # (d, d) inverse pooled within-intent covariance of the clip
    reject_distance: float  # squared Mahalanobis distance beyond which open/close become relax (0: off)
    other_means: np.ndarray  # (others, d) the population's non-intent movements, then the wearer's own
    other_log_prior: float | np.ndarray  # one, or one per non-intent class; a class whose prior is 0 is off
    weight: np.ndarray  # (classes, d) the head
    bias: np.ndarray  # (classes,)
    input_offset: np.ndarray  # (channels,) the model's input scaler
    input_scale: np.ndarray

    @classmethod
    def from_weights(cls, w: Mapping[str, np.ndarray], input_offset=None, input_scale=None) -> FeatHead:
        missing = [k for k in WEIGHTS if k not in w]
        if missing:
            raise KeyError(f"not a feat model: no {', '.join(missing)}")

        def f64(name: str) -> np.ndarray:
            return np.asarray(w[name], dtype=np.float64)

        channels = f64("feat_offset").shape[0] // (len(FEAT_KINDS) * len(FEAT_SCALES))
        return cls(
            offset=f64("feat_offset"),
            scale=f64("feat_scale"),
            whiten=f64("whiten"),
            means=f64("class_means"),
            precision=f64("precision"),
            reject_distance=float(w["reject_distance"]),
            other_means=f64("other_means"),
            other_log_prior=float(w["other_log_prior"])
            if np.ndim(w["other_log_prior"]) == 0
            else f64("other_log_prior"),
            weight=f64("head.weight"),
            bias=f64("head.bias"),
            input_offset=np.zeros(channels) if input_offset is None else np.asarray(input_offset, np.float64),
            input_scale=np.ones(channels) if input_scale is None else np.asarray(input_scale, np.float64),
        )

    @property
    def calibrated(self) -> bool:
        return bool(np.any(self.weight != 0))

    @property
    def other_priors(self) -> np.ndarray | None:
        """The log prior of each non-intent class, -inf for a class that is off (its prior is 0),
        or None when all are off."""
        prior = np.broadcast_to(np.asarray(self.other_log_prior, dtype=np.float64), (len(self.other_means),))
        return np.where(prior < 0, prior, -np.inf) if np.any(prior < 0) else None

    def embed(self, windows: np.ndarray) -> np.ndarray:
        """Conditioned windows (n, window, channels) -> standardised, whitened features (n, d)."""
        x = (np.asarray(windows, dtype=np.float64) - self.input_offset) / self.input_scale
        return ((features(x) - self.offset) / self.scale) @ self.whiten.T

    def logits(self, z: np.ndarray, means: np.ndarray | None = None) -> np.ndarray:
        """The head's logits for embedded windows ``z``, after the novelty rejection and the
        non-intent classes (a window either decides is relax). ``means``: the intent means to
        use instead of the clip's (the session adaptation): the head moves with them (its
        discriminants gain ``P (m - m0)`` in weight and the matching bias)."""
        weight, bias, mu = self.weight, self.bias, self.means
        if means is not None:
            shift = means - self.means
            weight = weight + shift @ self.precision
            bias = bias - np.einsum("kd,de,ke->k", shift, self.precision, self.means + 0.5 * shift)
            mu = means
        logits = z @ weight.T + bias
        best = logits.argmax(axis=1)
        resid = z - mu[best]
        distance = np.einsum("nd,de,ne->n", resid, self.precision, resid)
        far = (best != 0) & (self.reject_distance > 0) & (distance > self.reject_distance)
        prior = self.other_priors
        if prior is not None:
            both = np.concatenate([mu, self.other_means])
            w = both @ self.precision
            scores = z @ w.T - 0.5 * np.einsum("kd,kd->k", w, both)
            n = len(mu)
            far |= ((scores[:, n:] + prior).max(axis=1) > scores[:, :n].max(axis=1)) & (best != 0)
        out = logits.copy()
        out[far] = [0.0] + [REJECT_LOGIT] * (logits.shape[1] - 1)
        return out


def own_classes(z: np.ndarray, clusters: int) -> np.ndarray:
    """The wearer's own non-intent classes: ``clusters`` k-means centres (seeded: the same clip
    gives the same model) of the embedded windows ``z`` of the calibration's movement segment,
    fewer when it has under 5 windows a cluster (at least 1). Wrist movements are several
    movements (flexion, extension, deviations), hence clusters, not one class."""
    from scipy.cluster.vq import kmeans2

    z = np.asarray(z, dtype=np.float64)
    k = max(1, min(int(clusters), len(z) // 5))
    if len(z) == 0:
        raise ValueError("no windows of the movement segment")
    if k == 1:
        return z.mean(axis=0, keepdims=True)
    centres, _ = kmeans2(z, k, seed=0, minit="++")
    return centres


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def feat_head(model) -> FeatHead | None:
    """The :class:`FeatHead` of a loaded :class:`~metaemg.modelfile.OnnxModel` (from the weights
    its id was checked against), or None when it is not a ``feat`` model."""
    if model.info.kind != "feat":
        return None
    w = model.weights
    return FeatHead.from_weights(w, w.get("metaemg.scaler.offset"), w.get("metaemg.scaler.scale"))
