"""The intent classifiers: the research code's "dnn", "cnn", "tcn" and "tf", and "feat".

Every model maps a window ``(batch, window, channels)`` of float32 EMG to logits
``(batch, n_classes)``. They hold no BatchNorm and no dropout, so they work with ``torch.func``
(``functional_call``, ``vmap``, ``grad``) for MAML, and they export to ONNX with plain operators.
The four research models hold no buffers; "feat" (:class:`FeatLDA`) holds fixed statistics as
buffers, which adaptation sets (:meth:`FeatLDA.fit_head`), and only its head is a parameter.
``model.hparams`` (or :func:`model_hparams`) gives the plain dict that rebuilds the model with
:func:`build_model`, e.g. for ONNX metadata.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from metaemg.errors import ConfigError, ModelError
from metaemg.feathead import (
    FEAT_KINDS,
    FEAT_SCALES,
    LOG_EPS,
    POPULATION_CLASSES,
    REJECT_LOGIT,
    own_classes,
    own_log_prior,
)
from metaemg.modelfile import MODEL_KINDS

# Model-specific hyper-parameters and their defaults; anything else is refused.
_DEFAULTS: dict[str, dict[str, int]] = {
    "dnn": {"n_hidden": 2},
    "cnn": {"filters": 32, "kernel_size": 5, "n_layers": 2},
    "tcn": {"filters": 32, "kernel_size": 3, "n_blocks": 3},
    "tf": {"d_model": 32, "n_heads": 4, "n_layers": 2, "ff_mult": 2},
    "feat": {},
}


class _WindowClassifier(nn.Module):
    """Base: stores ``hparams`` and checks the input shape."""

    def __init__(self, hparams: dict[str, Any]):
        super().__init__()
        self.hparams = dict(hparams)
        self.window = hparams["window"]
        self.n_channels = hparams["n_channels"]

    def _check(self, x: Tensor) -> None:
        if torch.jit.is_tracing():  # ONNX export: shapes are fixed by the example input
            return
        if x.dim() != 3 or tuple(x.shape[1:]) != (self.window, self.n_channels):
            raise ModelError(
                f"{self.hparams['kind']} model expects input (batch, {self.window}, "
                f"{self.n_channels}), got {tuple(x.shape)}"
            )


class DNN(_WindowClassifier):
    """MLP over the flattened window."""

    def __init__(self, hparams: dict[str, Any]):
        super().__init__(hparams)
        units, layers, width = hparams["fc_units"], [], self.window * self.n_channels
        for _ in range(hparams["n_hidden"]):
            layers += [nn.Linear(width, units), nn.ReLU()]
            width = units
        layers.append(nn.Linear(width, hparams["n_classes"]))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return self.net(x.flatten(1))


class CNN(_WindowClassifier):
    """1-D convolutions over time (channels in), global average pool, MLP head."""

    def __init__(self, hparams: dict[str, Any]):
        super().__init__(hparams)
        k, f = hparams["kernel_size"], hparams["filters"]
        convs, width = [], self.n_channels
        for _ in range(hparams["n_layers"]):
            convs += [nn.Conv1d(width, f, k, padding=k // 2), nn.ReLU()]
            width = f
        self.convs = nn.Sequential(*convs)
        self.head = nn.Sequential(
            nn.Linear(f, hparams["fc_units"]), nn.ReLU(), nn.Linear(hparams["fc_units"], hparams["n_classes"])
        )

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return self.head(self.convs(x.transpose(1, 2)).mean(dim=2))


class _CausalConv(nn.Conv1d):
    """Conv1d whose output t sees inputs <= t (pads both sides, drops the right overhang)."""

    def __init__(self, c_in: int, c_out: int, k: int, dilation: int):
        super().__init__(c_in, c_out, k, dilation=dilation, padding=dilation * (k - 1))
        self.trim = dilation * (k - 1)

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        return y[:, :, : -self.trim] if self.trim else y


class _TemporalBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int, dilation: int):
        super().__init__()
        self.conv1 = _CausalConv(c_in, c_out, k, dilation=dilation)
        self.conv2 = _CausalConv(c_out, c_out, k, dilation=dilation)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.conv2(F.relu(self.conv1(x))))
        return F.relu(y + self.skip(x))


class TCN(_WindowClassifier):
    """Causal dilated residual blocks (dilation 1, 2, 4, ...); classifies the last time step."""

    def __init__(self, hparams: dict[str, Any]):
        super().__init__(hparams)
        f, k = hparams["filters"], hparams["kernel_size"]
        blocks = [_TemporalBlock(self.n_channels if i == 0 else f, f, k, 2**i) for i in range(hparams["n_blocks"])]
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Linear(f, hparams["fc_units"]), nn.ReLU(), nn.Linear(hparams["fc_units"], hparams["n_classes"])
        )

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return self.head(self.blocks(x.transpose(1, 2))[:, :, -1])


class _LayerNorm(nn.Module):
    """LayerNorm over the last dim with plain ops.

    ``F.layer_norm`` gives wrong second-order MAML gradients under ``vmap`` in torch 2.13
    when its weight is shared across the mapped tasks (see tests/test_maml.py).
    """

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))

    def forward(self, x: Tensor) -> Tensor:
        centred = x - x.mean(dim=-1, keepdim=True)
        var = (centred * centred).mean(dim=-1, keepdim=True)
        return centred / torch.sqrt(var + self.eps) * self.weight + self.bias


class _SelfAttention(nn.Module):
    """Multi-head self-attention written with plain ops (vmap, grad and ONNX friendly)."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        qkv = self.qkv(x).unflatten(-1, (3, self.n_heads, self.d_head)).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (batch, heads, time, d_head)
        attn = torch.softmax(q @ k.transpose(-2, -1) * (1.0 / math.sqrt(self.d_head)), dim=-1)
        return self.out((attn @ v).transpose(1, 2).flatten(2))


class _EncoderLayer(nn.Module):
    """Pre-norm Transformer encoder layer."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.norm1, self.norm2 = _LayerNorm(d_model), _LayerNorm(d_model)
        self.attn = _SelfAttention(d_model, n_heads)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Linear(d_ff, d_model))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ff(self.norm2(x))


class Transformer(_WindowClassifier):
    """Input projection, learned positional embedding, encoder layers, mean pool, MLP head."""

    def __init__(self, hparams: dict[str, Any]):
        super().__init__(hparams)
        d = hparams["d_model"]
        self.embed = nn.Linear(self.n_channels, d)
        self.pos = nn.Parameter(torch.randn(self.window, d) * 0.02)
        self.layers = nn.Sequential(
            *[_EncoderLayer(d, hparams["n_heads"], d * hparams["ff_mult"]) for _ in range(hparams["n_layers"])]
        )
        self.norm = _LayerNorm(d)
        self.head = nn.Sequential(
            nn.Linear(d, hparams["fc_units"]), nn.ReLU(), nn.Linear(hparams["fc_units"], hparams["n_classes"])
        )

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        h = self.layers(self.embed(x) + self.pos)
        return self.head(self.norm(h).mean(dim=1))


# FeatLDA's feature scales, kinds and constants are defined once, torch-free, in metaemg.feathead
# (the daemon's numpy twin of this model's decision).
def feature_count(window: int, n_channels: int) -> int:
    return len(FEAT_KINDS) * len(FEAT_SCALES) * n_channels


def standardisation(f: Tensor) -> tuple[Tensor, Tensor]:
    """``(offset, scale)`` of a wearer's features ``f`` (windows, features): how a clip, a training
    subject or a calibration witness standardises them (a flat feature keeps a scale of 1e-3)."""
    return f.mean(dim=0), f.std(dim=0, unbiased=False).clamp_min(1e-3)


class FeatLDA(_WindowClassifier):
    """Log-amplitude features, standardised, whitened, and a linear head fitted in closed form.

    Features, per channel, over the whole window and its newest 1/2 and 1/5: the log of the mean
    absolute value and the log of the mean absolute difference (waveform length), as the
    time-domain set of Hudgins et al. but on a log scale, where a channel's gain (electrode
    contact, skin) is an offset. Laid out ``(feature, scale, channel)``, so rolling the last axis
    rotates the armband.

    - ``feat_offset``, ``feat_scale`` (buffers): per-feature standardisation, fitted on the
      wearer's calibration clip by :meth:`fit_head` (each recording's own statistics);
    - ``whiten`` (buffer, features x features): the meta-learned part, learned across many wearers
      (:func:`metalearn.train` fits it in closed form: the inverse square root of the pooled
      within-intent covariance of standardised features, over every training task and armband
      rotation). LDA's shrinkage toward the identity in the whitened space is shrinkage toward
      what other wearers' muscles look like, instead of toward independent features;
    - ``head`` (parameters): a linear layer, set by :meth:`fit_head` to the shrinkage LDA of the
      clip's whitened features (class means, pooled covariance); optional gradient steps of the
      inner loop may follow. Zero until fitted: equal probabilities, which the daemon's threshold
      rejects, so an uncalibrated model never moves the hand;
    - ``class_means``, ``precision``, ``reject_distance`` (buffers, set by :meth:`fit_head`): the
      novelty rejection. A window whose best intent is open or close, but whose squared
      Mahalanobis distance from that intent's mean in the clip exceeds ``reject_distance``, is
      decided relax (probabilities 1, 0, 0): a movement unlike anything the patient did for
      open or close during calibration (a wrist movement) does not move the hand. 0: off;
    - ``other_means``, ``other_log_prior`` (buffers, set in training by :meth:`fit_non_intent`):
      other people's movements that are not intents (the Myo's four wrist gestures), as class
      means in the same standardised, whitened space. At calibration they join the LDA as extra
      classes with the clip's covariance and a prior of ``exp(other_log_prior)``; a window they
      win is decided relax. 0: off. :meth:`set_own_non_intent` adds the wearer's own (the
      calibration's movement segment, clustered) after them, each with its prior (the buffers
      then have ``N_OTHER`` + clusters rows: their size is the model file's).
    """

    # absent from model files written before the novelty rejection: left at their "off" defaults
    OPTIONAL_BUFFERS = ("class_means", "precision", "reject_distance", "other_means", "other_log_prior")
    SIZED_BY_FILE = ("other_means", "other_log_prior")  # the population's classes, and the wearer's own
    N_OTHER = POPULATION_CLASSES  # the population's non-intent classes (the Myo's wrist movements)

    # buffers, registered in __init__
    feat_offset: Tensor
    feat_scale: Tensor
    whiten: Tensor
    class_means: Tensor
    precision: Tensor
    reject_distance: Tensor
    other_means: Tensor
    other_log_prior: Tensor

    def __init__(self, hparams: dict[str, Any]):
        super().__init__(hparams)
        d = feature_count(self.window, self.n_channels)
        self.register_buffer("feat_offset", torch.zeros(d))
        self.register_buffer("feat_scale", torch.ones(d))
        self.register_buffer("whiten", torch.eye(d))
        self.register_buffer("class_means", torch.zeros(hparams["n_classes"], d))
        self.register_buffer("precision", torch.zeros(d, d))
        self.register_buffer("reject_distance", torch.zeros(()))
        self.register_buffer("other_means", torch.zeros(self.N_OTHER, d))
        self.register_buffer("other_log_prior", torch.zeros(()))
        self.head = nn.Linear(d, hparams["n_classes"])
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def features(self, x: Tensor) -> Tensor:
        """(batch, window, channels) -> (batch, features): log MAV and log WL at each scale."""
        diff = (x[:, 1:] - x[:, :-1]).abs()
        mav, wl = [], []
        for k in FEAT_SCALES:
            n = max(2, self.window // k)
            mav.append(x[:, -n:].abs().mean(dim=1))
            wl.append(diff[:, -(n - 1) :].mean(dim=1))
        return torch.log(torch.cat(mav + wl, dim=1) + LOG_EPS)

    def embed(self, x: Tensor) -> Tensor:
        """Standardised, whitened features."""
        return ((self.features(x) - self.feat_offset) / self.feat_scale) @ self.whiten.T

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        z = self.embed(x)
        logits = self.head(z)
        # novelty rejection (see the class doc): the best intent's distance from its clip mean
        best = logits.argmax(dim=1)
        resid = z - self.class_means[best]
        distance = ((resid @ self.precision) * resid).sum(dim=1)
        far = (best != 0) & (distance > self.reject_distance) & (self.reject_distance > 0)
        # other people's non-intent movements as extra LDA classes, scored with the intents'
        # (the clip's covariance; the head may have taken gradient steps since it was fitted)
        means = torch.cat([self.class_means, self.other_means])
        weight = means @ self.precision
        scores = z @ weight.T - 0.5 * (weight * means).sum(dim=1)
        n = self.class_means.shape[0]
        prior = self.other_log_prior + torch.zeros_like(self.other_means[:, 0])  # one per class
        other = torch.where(prior < 0, scores[:, n:] + prior, torch.full_like(scores[:, n:], -1e30))  # 0: off
        taken = other.max(dim=1).values > scores[:, :n].max(dim=1).values
        far = far | (taken & (best != 0))
        zero = torch.zeros_like(logits[:, :1])
        relax = torch.cat([zero, (zero + REJECT_LOGIT).expand(-1, logits.shape[1] - 1)], dim=1)
        return torch.where(far[:, None], relax, logits)

    @torch.no_grad()
    def fit_head(self, x: Tensor, y: Tensor, shrinkage: float, reject: float = 0.0) -> None:
        """Fit the standardisation and the head to labelled windows (in place); ``reject`` (> 0)
        turns on the novelty rejection at ``reject`` times the feature count (the mean squared
        distance of a window from its own intent's mean is about the feature count)."""
        n_classes = self.head.out_features
        offset, scale = standardisation(self.features(x))
        self.feat_offset.copy_(offset)
        self.feat_scale.copy_(scale)
        z = self.embed(x)
        means, cov, counts = class_statistics(z, y, n_classes, shrinkage)
        weight, bias = discriminants(means, cov, counts)
        self.head.weight.copy_(weight)
        self.head.bias.copy_(bias)
        self.class_means.copy_(means)
        self.precision.copy_(torch.linalg.inv(cov))
        self.reject_distance.fill_(float(reject) * z.shape[1])

    @torch.no_grad()
    def set_own_non_intent(self, x: Tensor | None, clusters: int, log_prior: float | None) -> None:
        """The wearer's own movements that are not intents, after :meth:`fit_head` (in the clip's
        standardisation): the windows ``x`` of the calibration's movement segment clustered
        (:func:`metaemg.feathead.own_classes`) into up to ``clusters`` non-intent classes after the
        population's, each with the prior ``exp(-log_prior)`` against the intents (0: as likely
        as an intent; larger: fewer windows taken from open and close). ``x`` None or empty, or
        ``log_prior`` None: the population's classes only (a wearer's earlier own classes go)."""
        pop_prior = (self.other_log_prior + torch.zeros_like(self.other_means[:, 0]))[: self.N_OTHER]
        pop_means = self.other_means[: self.N_OTHER].clone()
        if x is None or len(x) == 0 or log_prior is None:
            self.other_means = pop_means
            self.other_log_prior = pop_prior[0].clone()  # one prior, as the population's file has it
            return
        centres = torch.from_numpy(own_classes(self.embed(x).double().cpu().numpy(), clusters)).to(pop_means)
        own = torch.full((len(centres),), own_log_prior(log_prior)).to(pop_prior)
        self.other_means = torch.cat([pop_means, centres])
        self.other_log_prior = torch.cat([pop_prior, own])

    @torch.no_grad()
    def fit_whitening(
        self, tasks: Iterable[tuple[Tensor, Tensor]], *, rotate: bool = True, per_task: bool = True
    ) -> None:
        """The meta-learned part, in closed form: ``whiten`` = C^(-1/2), C the mean within-intent
        covariance of the features over ``tasks`` (each ``(windows, labels)``). ``per_task``:
        each task's features standardised with its own statistics and its own intent means, as
        :meth:`fit_head` sees a wearer; otherwise all tasks pooled as one data set (baseline B2).
        ``rotate``: averaged over every rotation of the armband (channels rolled)."""
        n_classes = self.head.out_features
        feats, labels = [], []
        for x, y in tasks:
            f = self.features(x).double()
            if per_task:
                offset, scale = standardisation(f)
                f = (f - offset) / scale
            feats.append(f)
            labels.append(y.long())
        groups = feats if per_task else [torch.cat(feats)]
        group_labels = labels if per_task else [torch.cat(labels)]
        d = feats[0].shape[1]
        cov, count = torch.zeros(d, d, dtype=torch.float64, device=feats[0].device), 0
        shifts = range(self.n_channels) if rotate else (0,)
        for f, y in zip(groups, group_labels, strict=True):
            onehot = F.one_hot(y, n_classes).to(f.dtype)
            resid = f - onehot @ ((onehot.T @ f) / onehot.sum(dim=0).clamp_min(1)[:, None])
            for k in shifts:
                r = torch.roll(resid.reshape(len(f), -1, self.n_channels), k, dims=2).reshape(len(f), d)
                cov += r.T @ r
                count += len(f)
        evals, evecs = torch.linalg.eigh(cov / count)
        self.whiten.copy_(((evecs / torch.sqrt(evals.clamp_min(0) + 1e-3)) @ evecs.T).float())

    @torch.no_grad()
    def fit_non_intent(self, tasks: Iterable[tuple[Tensor, Tensor, Tensor]], log_prior: float) -> None:
        """``other_means``: each non-intent movement's mean over ``tasks``, each ``(intent windows,
        other windows, their codes 1..N_OTHER)`` of one training subject, standardised with that
        subject's intent windows (as :meth:`fit_head` standardises a wearer) and whitened."""
        sums = torch.zeros_like(self.other_means, dtype=torch.float64)
        counts = torch.zeros(self.N_OTHER, dtype=torch.float64, device=self.other_means.device)
        for intents, others, codes in tasks:
            offset, scale = standardisation(self.features(intents))
            z = ((self.features(others) - offset) / scale) @ self.whiten.T
            for k in range(self.N_OTHER):
                mine = z[codes == k + 1]
                if len(mine):
                    sums[k] += mine.mean(dim=0).double()
                    counts[k] += 1
        if (counts == 0).any():
            raise ValueError(f"non-intent movements without windows: codes {(counts == 0).nonzero().flatten() + 1}")
        self.other_means.copy_((sums / counts[:, None]).float())
        self.other_log_prior.fill_(float(log_prior))

    @torch.no_grad()
    def population_means(self, tasks: Iterable[tuple[Tensor, Tensor]]) -> Tensor:
        """(n_classes, features): each intent's mean over ``tasks`` of each task's standardised
        features, the armband as the training subjects wore it (no rotation): what other people's
        intents look like, for :mod:`calibration.plausible`."""
        n_classes = self.head.out_features
        sums: Tensor | int = 0
        counts: Tensor | int = 0
        for x, y in tasks:
            f = self.features(x).double()
            offset, scale = standardisation(f)
            f = (f - offset) / scale
            onehot = F.one_hot(y.long(), n_classes).double()
            sums = sums + onehot.T @ f
            counts = counts + onehot.sum(dim=0)
        assert isinstance(sums, Tensor) and isinstance(counts, Tensor)  # tasks is never empty
        return (sums / counts.clamp_min(1)[:, None]).float()


def class_statistics(z: Tensor, y: Tensor, n_classes: int, shrinkage: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(class means (classes, d), pooled within-class covariance (d, d), windows per class)``,
    the covariance shrunk toward ``shrinkage * mean variance * I``."""
    onehot = F.one_hot(y.long(), n_classes).to(z.dtype)
    counts = onehot.sum(dim=0)
    means = (onehot.T @ z) / counts.clamp_min(1)[:, None]
    resid = z - onehot @ means
    d = z.shape[1]
    cov = resid.T @ resid / max(1, len(z) - n_classes)
    cov = (1 - shrinkage) * cov + shrinkage * torch.eye(d, dtype=z.dtype, device=z.device) * torch.trace(cov) / d
    return means, cov, counts


def lda(z: Tensor, y: Tensor, n_classes: int, shrinkage: float) -> tuple[Tensor, Tensor]:
    """Shrinkage linear discriminant analysis with equal priors: ``(weight (classes, d), bias)``
    of the linear discriminant functions (:func:`class_statistics`, :func:`discriminants`)."""
    return discriminants(*class_statistics(z, y, n_classes, shrinkage))


def discriminants(means: Tensor, cov: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """The linear discriminant functions of class ``means`` with a shared ``cov`` and equal
    priors; a class without windows (``counts`` 0) gets a bias of -1e4 (never chosen)."""
    weight = torch.linalg.solve(cov, means.T).T
    bias = -0.5 * (means * weight).sum(dim=1)
    return weight, torch.where(counts > 0, bias, torch.full_like(bias, -1e4))


_CLASSES = {"dnn": DNN, "cnn": CNN, "tcn": TCN, "tf": Transformer, "feat": FeatLDA}


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"model hyper-parameter {name} must be a positive integer, got {value!r}")
    return value


def build_model(
    kind: str, *, n_channels: int, window: int, n_classes: int = 3, fc_units: int = 64, **hp: int
) -> nn.Module:
    """Build one of :data:`MODEL_KINDS`; weights come from the current ``torch`` RNG state."""
    if kind not in _CLASSES:
        raise ConfigError(f"unknown model {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
    unknown = sorted(set(hp) - set(_DEFAULTS[kind]))
    if unknown:
        raise ConfigError(
            f"unknown hyper-parameter(s) {', '.join(unknown)} for model {kind!r}; "
            f"allowed: {', '.join(sorted(_DEFAULTS[kind]))}"
        )
    common = {"n_channels": n_channels, "window": window, "n_classes": n_classes}
    if kind != "feat":  # the only model without a hidden layer
        common["fc_units"] = fc_units
    hparams: dict[str, Any] = {"kind": kind}
    for name, value in {**common, **_DEFAULTS[kind], **hp}.items():
        hparams[name] = _positive_int(name, value)
    if kind == "tf" and hparams["d_model"] % hparams["n_heads"]:
        raise ConfigError(f"d_model ({hparams['d_model']}) must be divisible by n_heads ({hparams['n_heads']})")
    if kind == "cnn" and hparams["kernel_size"] % 2 == 0:
        raise ConfigError(f"cnn kernel_size must be odd to keep the window length, got {hparams['kernel_size']}")
    return _CLASSES[kind](hparams)


def model_hparams(model: nn.Module) -> dict[str, Any]:
    """The plain dict (``kind`` and sizes) that rebuilds ``model`` via ``build_model(**hparams)``."""
    hparams = getattr(model, "hparams", None)
    if not isinstance(hparams, dict):
        raise ModelError(f"{type(model).__name__} was not built by metalearn.models.build_model")
    return dict(hparams)
