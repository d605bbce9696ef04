"""From per-window class probabilities to the target the orthosis is commanded to: a pure object.

No I/O and no clock: every call takes ``t`` (seconds, monotonic). The daemon calls
:meth:`Policy.input_good` / :meth:`Policy.input_bad` for every chunk of samples,
:meth:`Policy.update` for every window's probabilities and :meth:`Policy.tick` from its control
loop (at the latest at :meth:`Policy.stale_deadline`).

Rules, in order of precedence:

1. **Safety.** Bad input (NaN/Inf samples, a saturated armband, a model error, non-finite
   probabilities) or no samples for ``stale_ms`` disarms the policy at once: its output becomes
   *safe* (``intent is None``: the daemon sends STOP and no command). It re-arms only after the
   input has been good again, without interruption, for ``rearm_ms``; it then starts at relax with
   an empty vote.
2. **Rejection.** A window whose highest probability is below ``threshold`` votes relax (no
   motion) instead of its class.
3. **Majority vote** over the last ``vote`` windows: a class needs more than half of them;
   without a majority the output stays as it is.
4. **Dwell** (hysteresis): the output changes at most once per ``min_dwell_ms``.
5. **Refractory**: open and close never follow each other directly. A vote for the opposite
   motion first ends the current one (output relax), and a motion may start only
   ``refractory_ms`` after the opposite motion ended.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from controller.config import PolicyConfig
from metaemg.intents import CLOSE, INTENTS, OPEN, RELAX

OPPOSITE = {OPEN: CLOSE, CLOSE: OPEN}

# why the output is safe
STARTING = "starting"
STALE = "stale"
REARMING = "rearming"
_EPS = 1e-6  # timer slack: a tick scheduled exactly at the stale deadline must see it expired


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer for one window."""

    t: float
    label: int  # argmax class of this window (-1 if the probabilities were not finite)
    confidence: float  # its probability
    rejected: bool  # confidence below the threshold: voted relax
    vote: int | None  # majority class of the last N windows (None: no majority, or disarmed)
    intent: int | None  # the target to command; None: safe (STOP, no command)
    changed: bool  # intent differs from the previous decision's
    held: str | None  # why the output did not follow the vote: "dwell", "refractory"
    reason: str | None  # why the output is safe (None when armed)

    @property
    def safe(self) -> bool:
        return self.intent is None

    @property
    def intent_name(self) -> str | None:
        return None if self.intent is None else INTENTS[self.intent]

    @property
    def label_name(self) -> str | None:
        return INTENTS[self.label] if 0 <= self.label < len(INTENTS) else None


class Policy:
    """See the module docstring. Not thread-safe: call it from the control loop only."""

    def __init__(self, config: PolicyConfig | None = None) -> None:
        self.config = config or PolicyConfig()
        c = self.config
        self._threshold = c.threshold
        self._dwell = c.min_dwell_ms / 1000
        self._refractory = c.refractory_ms / 1000
        self._stale = c.stale_ms / 1000
        self._rearm = c.rearm_ms / 1000
        self._votes: deque[int] = deque(maxlen=c.vote)
        self._counts = [0, 0, 0]
        self.armed = False
        self.reason: str | None = STARTING
        self.intent: int | None = None
        self.changed_at = -math.inf
        self.last_data: float | None = None
        self.good_since: float | None = None
        self._motion_ended = {OPEN: -math.inf, CLOSE: -math.inf}
        self.disarm_count = 0

    # -- input health ----------------------------------------------------------------------------

    def input_good(self, t: float) -> None:
        """A chunk of good samples arrived at ``t``."""
        if self.last_data is not None and t - self.last_data >= self._stale and self.reason != STALE:
            self.good_since = None  # a gap the timer did not see (a stalled loop) still counts
            self._disarm(t, STALE)
        self.last_data = t
        if self.good_since is None:
            self.good_since = t
        if not self.armed:
            self._maybe_arm(t)

    def input_bad(self, t: float, reason: str) -> bool:
        """Bad input at ``t`` (``reason``: "nonfinite", "saturated", "model_error", ...): safe at
        once. Returns True if this disarmed the policy (it was armed)."""
        self.last_data = t
        self.good_since = None
        return self._disarm(t, reason)

    def tick(self, t: float) -> bool:
        """Timers: stale input disarms, good input for ``rearm_ms`` re-arms. Returns True if the
        armed state changed."""
        if self.last_data is not None and t - self.last_data >= self._stale - _EPS and self.reason != STALE:
            self.good_since = None
            was = self.armed
            self._disarm(t, STALE)
            return was
        if not self.armed:
            return self._maybe_arm(t)
        return False

    def stale_deadline(self) -> float | None:
        """When :meth:`tick` must run next to detect stale input in time (None: nothing to time)."""
        if self.last_data is None or self.reason == STALE:
            return None
        return self.last_data + self._stale

    def restart(self, t: float) -> None:
        """Start again from relax with an empty vote (after a pause); stays disarmed if disarmed."""
        self._clear_votes()
        if self.armed:
            self._set_intent(RELAX, t)

    # -- decisions -------------------------------------------------------------------------------

    def update(self, t: float, probs) -> Decision:
        """The decision for one window's class probabilities ``probs`` (relax, open, close)."""
        p0, p1, p2 = float(probs[0]), float(probs[1]), float(probs[2])
        if not (math.isfinite(p0) and math.isfinite(p1) and math.isfinite(p2)):
            self.input_bad(t, "nonfinite_output")
            return Decision(t, -1, math.nan, False, None, None, False, None, self.reason)
        label = 0 if (p0 >= p1 and p0 >= p2) else (1 if p1 >= p2 else 2)
        confidence = (p0, p1, p2)[label]
        rejected = confidence < self._threshold
        if not self.armed:
            self._maybe_arm(t)
        if not self.armed:
            return Decision(t, label, confidence, rejected, None, None, False, None, self.reason)
        vote = self._vote(RELAX if rejected else label)
        want = self.intent if vote is None else vote
        held = None
        new = self.intent
        if want != self.intent:
            if t - self.changed_at < self._dwell:
                held = "dwell"
            elif want in OPPOSITE and self.intent == OPPOSITE[want]:
                new, held = RELAX, "refractory"  # end the current motion first
            elif want in OPPOSITE and t - self._motion_ended[OPPOSITE[want]] < self._refractory:
                held = "refractory"
            else:
                new = want
        changed = new != self.intent
        if changed:
            self._set_intent(new, t)
        return Decision(t, label, confidence, rejected, vote, self.intent, changed, held, None)

    # -- internals -------------------------------------------------------------------------------

    def _vote(self, cls: int) -> int | None:
        votes = self._votes
        if len(votes) == votes.maxlen:
            self._counts[votes[0]] -= 1
        votes.append(cls)
        self._counts[cls] += 1
        assert votes.maxlen is not None  # created with maxlen=config.vote
        need = votes.maxlen // 2 + 1
        for k in (RELAX, OPEN, CLOSE):
            if self._counts[k] >= need:
                return k
        return None

    def _clear_votes(self) -> None:
        self._votes.clear()
        self._counts = [0, 0, 0]

    def _set_intent(self, new: int | None, t: float) -> None:
        if self.intent in OPPOSITE and new != self.intent:
            self._motion_ended[self.intent] = t
        self.intent = new
        self.changed_at = t

    def _maybe_arm(self, t: float) -> bool:
        if self.armed or self.good_since is None:
            return False
        if self.last_data is not None and t - self.last_data >= self._stale:
            return False
        if t - self.good_since < self._rearm:
            if self.reason != STARTING:
                self.reason = REARMING
            return False
        self.armed = True
        self.reason = None
        self._clear_votes()
        self._set_intent(RELAX, t)
        return True

    def _disarm(self, t: float, reason: str) -> bool:
        was = self.armed
        self.armed = False
        self.reason = reason
        self._clear_votes()
        if self.intent is not None:
            self._set_intent(None, t)
        if was:
            self.disarm_count += 1
        return was


def replay(
    probabilities,
    times,
    config: PolicyConfig | None = None,
    *,
    start: float | None = None,
    measured_from: float | None = None,
) -> list[int]:
    """The intent a fresh policy commands for each window, offline: ``probabilities`` (n, 3) of
    consecutive windows of one good, uninterrupted stream, ``times`` (n,) the time of each
    window's last sample (seconds), ``start`` the time of the stream's first sample (the daemon
    sees good input from then on; default: the first window's time). ``measured_from``: input
    before this time counts as bad ("rate unknown"), as in the daemon, which commands nothing
    until it has measured the stream's rate over a full second of samples. A window without a
    command (the policy still arming) counts as relax: the orthosis holds still. What
    ``metaemg-eval --as-daemon`` and the benchmarks score."""
    policy = Policy(config)

    def arrived(t: float) -> None:
        if measured_from is not None and t < measured_from:
            policy.input_bad(t, "rate: rate unknown")
        else:
            policy.input_good(t)

    if start is not None and len(times):  # samples arrive all along, as live: one chunk every 10 ms
        t = float(start)
        while t < float(times[0]):
            arrived(t)
            t += 0.01
    out = []
    for t, p in zip(times, probabilities, strict=True):
        t = float(t)
        arrived(t)
        decision = policy.update(t, p)
        out.append(RELAX if decision.intent is None else decision.intent)
    return out
