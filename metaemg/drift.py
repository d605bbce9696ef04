"""Following the wearer's signals through a session, bounded, and knowing when to recalibrate.

A calibration fits each intent's mean (in the ``feat`` model's standardised, whitened feature
space) to a clip of a few seconds. Over a session the signals drift: electrodes lose or gain
contact, the muscles tire, the armband turns. :class:`SessionAdapter` decides each window with
the calibrated head (:class:`~metaemg.feathead.FeatHead`) and moves the intent means toward what
the wearer now does, without labels (decision-directed, as Sensinger et al. 2009 adapt an LDA):

- it learns only from windows it is sure of: the decided intent's probability at least
  ``confidence``, not a window the novelty rejection or a non-intent class turned into relax, nor
  one whose intent scores less than ``apart`` above one of the wearer's own wrist movements (the
  calibration's movement segment; without the class's prior: learning from those taught them to
  open the hand, doubling how often they did, docs/evidence.md), and within ``learn_within`` of
  that intent's current mean; each such window moves the mean by
  ``rate`` of its distance (an exponential average over about ``1 / rate`` windows);
- every mean stays in a trust region around the calibration: at most ``bound`` of its
  (Mahalanobis) distance to the nearest other intent. With ``bound`` < 0.5 a window at the
  calibrated relax mean is always decided relax and open and close keep their sides, however long
  a stream tries to teach otherwise; open and close may also come at most ``toward_relax`` of
  their distance nearer to relax (the costly error is moving a hand at rest);
- the novelty rejection and the population's non-intent classes stay where the calibration put
  them: adaptation sharpens the choice between relax, open and close, and never widens what
  counts as an intent (measured: with the rejection moving too, wrist movements opened or closed
  the hand twice as often);
- the state (each mean's shift) is tied to the model's id: a new calibration or a rollback
  starts from the calibration again; it is saved beside the model and restored after a restart
  of the same model.

Recalibration is suggested (:attr:`SessionAdapter.flag`, a sentence) when

- the armband looks turned: each open or close window it is sure of has its per-channel
  amplitude pattern (without its mean: a gain is no turn) compared with the calibrated pattern of
  that intent turned by 0, +-1/4, +-1/2, +-3/4 electrode; the errors, averaged over windows
  (``turn_rate``), give the estimate, which counts when it fits at least ``1 / turn_margin``
  better than no turn; half an electrode or more held for ``turn_hold_s`` raises the flag. An
  electrode losing contact looks much the same, and the flag's words say both. With
  ``follow_turn`` the adaptation then also starts from the calibration as the turned armband shows
  it (off by default: ``bench.drift`` measured it helping a real slip and hurting when a lost
  contact passed for a turn);
- or the windows it is sure of lie far from their intents' calibrated means: their squared
  Mahalanobis distance per feature (about 1 on the calibration clip, 1.0-3.6 over the sessions of
  ``bench.drift`` without drift) averaged over ``drift_windows`` stays above ``drift_limit``
  for ``drift_hold_s``.

The flag stays up until the next calibration (or a rollback): the clinician sees it once.

Pure and torch-free: the daemon's hot path and ``metaemg-eval --as-daemon`` run this same code.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from metaemg.feathead import FEAT_KINDS, FEAT_SCALES, POPULATION_CLASSES, REJECT_LOGIT, FeatHead, features
from metaemg.intents import INTENTS
from metaemg.typedconfig import Section, is_number, require, require_range

STATE_FORMAT = "metaemg-adapt/1"
TURNS = (-0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75)  # armband rotations compared, in electrodes


@dataclass(frozen=True)
class AdaptConfig(Section):
    """The session adaptation and the recalibration flag (``adapt`` in the controller's config)."""

    KEY = "adapt"
    enabled: bool = True
    envelopes: bool = False  # also a model on envelopes (the MyHand armband's): bench.myhand_accuracy measured no gain
    rate: float = 0.02  # each window it is sure of moves its intent's mean by this share of the way
    confidence: float = 0.9  # ... sure of: the decided intent's probability at least this
    learn_within: float = 2.0  # ... and its squared distance per feature from that intent's mean at most this
    apart: float = 20.0  # ... and its intent scoring at least this above the wearer's own wrist movements
    bound: float = 0.4  # a mean moves at most this share of its distance to the nearest other intent
    toward_relax: float = 0.1  # open and close come at most this share of their distance nearer to relax
    turn_rate: float = 0.03  # the armband-turn estimate: average over about 1 / this open and close windows
    turn_margin: float = 0.8  # a turn counts when it fits at least 1 / this better than none ...
    turn_hold_s: float = 2.0  # ... and recalibration is suggested when half an electrode or more held this long
    follow_turn: bool = False  # then also see the calibration through the turned armband (bench.drift: off)
    drift_windows: int = 100  # the drift statistic: mean over the last this many windows it is sure of
    drift_limit: float = 4.0  # recalibration suggested above this (1: as on the calibration clip) ...
    drift_hold_s: float = 3.0  # ... held this long

    def check(self, key: str) -> None:
        for name, lo, hi in (
            ("rate", 0.0, 0.5),
            ("confidence", 0.5, 1.0),
            ("learn_within", 0.5, 100.0),
            ("apart", 0.0, 1000.0),
            ("bound", 0.0, 0.49),
            ("turn_rate", 0.001, 1.0),
            ("turn_margin", 0.1, 1.0),
            ("turn_hold_s", 0.0, 600.0),
            ("drift_limit", 1.0, 100.0),
            ("drift_hold_s", 0.0, 600.0),
        ):
            value = getattr(self, name)
            require_range(value, f"{key}.{name}", lo, hi)
        require(
            is_number(self.toward_relax) and 0 <= self.toward_relax <= self.bound,
            f"{key}.toward_relax",
            "must be in [0, bound]",
            self.toward_relax,
        )
        require(
            isinstance(self.drift_windows, int) and 10 <= self.drift_windows <= 10000,
            f"{key}.drift_windows",
            "must be an integer in [10, 10000]",
            self.drift_windows,
        )


def turned(pattern: np.ndarray, turn: float) -> np.ndarray:
    """A per-channel log-amplitude ``pattern`` with the armband turned by ``turn`` electrodes
    (each channel between two electrodes, interpolated in linear amplitude)."""
    amplitude = np.exp(pattern)
    k = math.floor(turn)
    f = turn - k
    return np.log((1 - f) * np.roll(amplitude, -k) + f * np.roll(amplitude, -(k + 1)))


class SessionAdapter:
    """The calibrated head of one model, adapted through a session (see the module docstring).

    :meth:`decide` takes one conditioned window (window, channels) and returns the probabilities
    the daemon acts on; :meth:`reset` goes back to the calibration. ``stride_s``: seconds between
    two windows (the flags' hold times count windows)."""

    def __init__(self, head: FeatHead, config: AdaptConfig, model_id: str, stride_s: float) -> None:
        self.head, self.config, self.model_id = head, config, model_id
        self.stride_s = stride_s
        m, p = head.means, head.precision
        n = len(m)
        diff = m[:, None, :] - m[None, :, :]
        dist = np.sqrt(np.maximum(0.0, np.einsum("ijd,de,ije->ij", diff, p, diff)))
        np.fill_diagonal(dist, np.inf)
        self.radius = config.bound * dist.min(axis=1)  # the trust region of each mean (Mahalanobis)
        # open and close toward relax: the unit direction (in the precision's metric) and its limit
        self._toward = {}
        for k in range(1, n):
            u = (m[0] - m[k]) / dist[k, 0]
            self._toward[k] = (u, p @ u, config.toward_relax * dist[k, 0])
        # the fixed part: features -> z in one affine map
        self._a = (head.whiten / head.scale[None, :]).T
        self._c = -(head.offset / head.scale) @ head.whiten.T
        self._scaled = bool(np.any(head.input_offset != 0) or np.any(head.input_scale != 1))
        self._pm0 = m @ p  # the calibrated means' P mu and mu P mu: the drift statistic
        self._mpm0 = np.einsum("kd,kd->k", self._pm0, m)
        # the armband-turn estimate: each intent's calibrated log-amplitude pattern (whole window,
        # per channel), turned by each of TURNS, without its mean (a gain change is no turn)
        self._blocks = len(FEAT_KINDS) * len(FEAT_SCALES)
        self._channels = len(head.offset) // self._blocks
        self._raw = (m @ np.linalg.inv(head.whiten).T) * head.scale + head.offset  # the means as features
        self._patterns = {}  # intent -> (patterns (turns, channels), their squared norms)
        for k in range(1, n):
            t = np.stack([turned(self._raw[k, : self._channels], turn) for turn in TURNS])
            t -= t.mean(axis=1, keepdims=True)
            self._patterns[k] = (t, np.einsum("tc,tc->t", t, t))
        self.reset()

    def turned_means(self, turn: float) -> np.ndarray:
        """The calibrated intent means as an armband turned by ``turn`` electrodes would show them."""
        h = self.head
        blocks = self._raw.reshape(len(self._raw), self._blocks, self._channels)
        raw = np.stack([[turned(b, turn) for b in k] for k in blocks]).reshape(self._raw.shape)
        return ((raw - h.offset) / h.scale) @ h.whiten.T

    def _set_base(self, turn: float) -> None:
        """The means the adaptation starts from and the rejection uses: the calibration's, seen
        through an armband turned by ``turn`` (0: as calibrated)."""
        h, p = self.head, self.head.precision
        self.following = turn
        base = h.means if turn == 0 else self.turned_means(turn)
        self._base_shift = base - h.means
        self._pm = base @ p
        self._mpm = np.einsum("kd,kd->k", self._pm, base)
        self._other_priors = h.other_priors
        if self._other_priors is not None:
            both = np.concatenate([base, h.other_means])
            w = both @ p
            self._ow, self._ob = w, -0.5 * np.einsum("kd,kd->k", w, both)

    # -- state -----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Back to the calibration: no shift, no drift history, no flag."""
        self.shift = np.zeros_like(self.head.means)
        self.updates = np.zeros(len(self.head.means), dtype=np.int64)
        self.windows = 0
        self._recent: deque[float] = deque()
        self._sum = 0.0
        self._far_s = 0.0
        self._turn_error = np.zeros(len(TURNS))
        self._turn_seen = 0
        self._candidate: float | None = None
        self._held_s = 0.0
        self.flag: str | None = None
        self._pending: tuple | None = None  # (z, intent, features, P z) of a window not yet learned from
        self._set_base(0.0)
        self._prepare()

    def _prepare(self) -> None:
        """The head's discriminants for the current means (after a reset, a restore, a turn)."""
        h = self.head
        total = self._base_shift + self.shift
        tp = total @ h.precision
        self.means = h.means + total
        self.weight = h.weight + tp
        self.bias = h.bias - np.einsum("kd,kd->k", tp, h.means + 0.5 * total)
        self._pmk = self._pm0 + tp  # P mu of the current means (P is symmetric)
        self._mpmk = np.einsum("kd,kd->k", self._pmk, self.means)

    def _prepare_row(self, k: int) -> None:
        """:meth:`_prepare` for intent ``k`` alone (after its update: the hot path)."""
        h = self.head
        total = self._base_shift[k] + self.shift[k]
        tp = h.precision @ total
        self.means[k] = h.means[k] + total
        self.weight[k] = h.weight[k] + tp
        self.bias[k] = h.bias[k] - tp @ (h.means[k] + 0.5 * total)
        self._pmk[k] = self._pm0[k] + tp
        self._mpmk[k] = self._pmk[k] @ self.means[k]

    def _lengths(self, shift: np.ndarray) -> np.ndarray:
        """Each row of ``shift`` (classes, d) as a Mahalanobis length (the bounds' metric)."""
        return np.sqrt(np.maximum(0.0, np.einsum("kd,de,ke->k", shift, self.head.precision, shift)))

    def moved(self) -> dict[str, float]:
        """How far each intent's mean has moved, as a share of its bound (0: as calibrated, 1: at it)."""
        norms = self._lengths(self.shift)
        share = np.divide(norms, self.radius, out=np.zeros_like(norms), where=self.radius > 0)
        return {name: round(float(v), 4) for name, v in zip(INTENTS, share, strict=True)}

    @property
    def drift(self) -> float | None:
        """The drift statistic: the mean per-feature squared distance of the recent windows it is
        sure of from their intents' calibrated means (about 1 on the calibration clip)."""
        return self._sum / len(self._recent) if self._recent else None

    @property
    def turn(self) -> float | None:
        """The armband's estimated turn since the calibration, in electrodes (the best fit; None:
        no open or close window seen yet)."""
        return TURNS[int(self._turn_error.argmin())] if self._turn_seen else None

    def to_dict(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "model_id": self.model_id,
            "shift": self.shift.tolist(),
            "updates": self.updates.tolist(),
            "windows": self.windows,
            "following": self.following,
        }

    def restore(self, doc: object) -> str | None:
        """Take the state of :meth:`to_dict` back; None when taken, else why not (another
        model's state, another format, a shift outside the bounds: the calibration stays)."""
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
            return "not an adaptation state"
        if doc.get("model_id") != self.model_id:
            return f"the state is for model {doc.get('model_id')!r}, not {self.model_id}"
        try:
            shift = np.asarray(doc["shift"], dtype=np.float64)
            updates = np.asarray(doc["updates"], dtype=np.int64)
            windows = int(doc["windows"])
            following = float(doc.get("following", 0.0))
        except (KeyError, TypeError, ValueError):
            return "a malformed adaptation state"
        if following not in TURNS:
            return "a malformed adaptation state"
        if shift.shape != self.head.means.shape or updates.shape != (len(shift),) or not np.isfinite(shift).all():
            return "a malformed adaptation state"
        norms = self._lengths(shift)
        if np.any(norms > self.radius * (1 + 1e-6) + 1e-12):
            return "a state outside the adaptation's bounds"
        self.reset()
        self.shift, self.updates, self.windows = shift, updates, windows
        self._set_base(following)
        self._prepare()
        return None

    # -- the decision ----------------------------------------------------------------------------
    def _features(self, window: np.ndarray) -> np.ndarray:
        """:func:`~metaemg.feathead.features` of one window (window, channels)."""
        x = np.asarray(window, dtype=np.float64)
        if self._scaled:
            x = (x - self.head.input_offset) / self.head.input_scale
        return features(x)

    def decide(self, window: np.ndarray, *, learn: bool = True) -> np.ndarray:
        """Probabilities (3,) for one conditioned window (window, channels); learns from it when
        sure, at once or (``learn=False``) at the next :meth:`learn` (the daemon learns after the
        command is written, off its latency)."""
        h = self.head
        f = self._features(window)
        z = f @ self._a + self._c
        logits = self.weight @ z + self.bias
        best = int(logits.argmax())
        zp = None
        rejected = unsure = False
        if best != 0:  # the rejection at the calibrated means (module docstring)
            if h.reject_distance > 0:
                zp = h.precision @ z
                rejected = float(z @ zp - 2 * self._pm[best] @ z + self._mpm[best]) > h.reject_distance
            if not rejected and self._other_priors is not None:
                scores = self._ow @ z + self._ob
                n = len(self.means)
                intent = scores[:n].max()
                rejected = bool((scores[n:] + self._other_priors).max() > intent)
                own = scores[n + POPULATION_CLASSES :]  # near one of the wearer's own wrist movements
                unsure = bool(own.size and own.max() > intent - self.config.apart)
        if rejected:
            logits = np.full_like(logits, REJECT_LOGIT)
            logits[0] = 0.0
        e = np.exp(logits - logits.max())
        p = e / e.sum()
        self.windows += 1
        if not rejected and not unsure and p[best] >= self.config.confidence:
            self._pending = (z, best, f, zp)
            if learn:
                self.learn()
        return p

    def learn(self) -> None:
        """What the last :meth:`decide` was sure of, taken in (nothing when it was not)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.observe(*pending)

    def observe(self, z: np.ndarray, k: int, f: np.ndarray | None = None, zp: np.ndarray | None = None) -> None:
        """A window it is sure is intent ``k`` (embedded ``z``, its features ``f``, ``P z`` when
        known): the flags' statistics, then (if enabled) the update of that intent's mean."""
        h, cfg = self.head, self.config
        if zp is None:
            zp = h.precision @ z
        zpz = float(z @ zp)
        d = len(z)
        self._recent.append((zpz - 2 * float(self._pm0[k] @ z) + self._mpm0[k]) / d)  # from the calibrated mean
        self._sum += self._recent[-1]
        if len(self._recent) > cfg.drift_windows:
            self._sum -= self._recent.popleft()
        far = len(self._recent) >= cfg.drift_windows // 2 and self._sum / len(self._recent) > cfg.drift_limit
        self._far_s = self._far_s + self.stride_s if far else 0.0
        if k != 0 and f is not None:
            self._estimate_turn(k, f)
        if cfg.enabled and zpz - 2 * float(self._pmk[k] @ z) + self._mpmk[k] <= cfg.learn_within * d:
            self.shift[k] = self._bounded(k, self.shift[k] + cfg.rate * (z - self.means[k]))
            self.updates[k] += 1
            self._prepare_row(k)
        self._update_flag()

    def _estimate_turn(self, k: int, f: np.ndarray) -> None:
        """One open or close window's evidence on the armband's turn; a turn of half an electrode
        or more (or back to none) that holds ``turn_hold_s`` is followed (``follow_turn``)."""
        cfg = self.config
        x = f[: self._channels]
        patterns, norms = self._patterns[k]
        # |pattern - (x - mean x)|^2, the patterns' rows being free of their mean
        error = norms - 2 * (patterns @ x) + (x @ x - x.sum() ** 2 / len(x))
        self._turn_error = (
            error if not self._turn_seen else self._turn_error + cfg.turn_rate * (error - self._turn_error)
        )
        self._turn_seen += 1
        best = int(self._turn_error.argmin())
        turn = TURNS[best]
        if turn != 0 and not self._turn_error[best] < cfg.turn_margin * self._turn_error[TURNS.index(0.0)]:
            turn = 0.0  # no better than the armband as it was
        target = turn if abs(turn) >= 0.5 else 0.0
        if target == self._candidate:
            self._held_s += self.stride_s
        else:
            self._candidate, self._held_s = target, self.stride_s
        if self._held_s >= cfg.turn_hold_s and target != self.following:
            if target != 0 and self.flag is None:
                side = "one way" if target > 0 else "the other way"
                self.flag = (
                    f"the armband's signals look as if it had turned by about {abs(target):g} of an electrode ({side}) "
                    "since the calibration, or an electrode lost contact: check the armband's position and contact, "
                    "then calibrate again"
                )
            if cfg.follow_turn:
                self._set_base(target)
                self.shift[:] = 0.0  # the shift was chasing the turn
                self._prepare()

    def _bounded(self, k: int, s: np.ndarray) -> np.ndarray:
        norm = math.sqrt(max(0.0, float(s @ self.head.precision @ s)))
        if norm > self.radius[k]:
            s = s * (self.radius[k] / norm)
        if k in self._toward:
            u, pu, limit = self._toward[k]
            toward = float(s @ pu)  # the component toward relax, in the precision's metric
            if toward > limit:
                s = s - (toward - limit) * u
        return s

    def _update_flag(self) -> None:
        cfg = self.config
        if self.flag is None and self._far_s >= cfg.drift_hold_s and self.drift is not None:
            self.flag = (
                f"the armband's signals have moved far from the calibration (drift {self.drift:.1f}; about 1 at "
                f"calibration, limit {cfg.drift_limit:g}): check the armband's position and contact, then calibrate "
                "again"
            )

    def status(self) -> dict:
        """For the monitor and the status: how far each mean moved (share of its bound), the
        statistics behind the flag, the flag."""
        return {
            "enabled": self.config.enabled,
            "moved": self.moved(),
            "updates": dict(zip(INTENTS, self.updates.tolist(), strict=True)),
            "windows": self.windows,
            "drift": None if self.drift is None else round(self.drift, 3),
            "drift_limit": self.config.drift_limit,
            "turn": self.turn,
            "following_turn": self.following,
            "recalibration": self.flag,
        }
