"""The safety gate: may the adapted model drive the patient's hand?

Both models are scored on held-out windows of the clip, which the adaptation that decided them
never saw (:meth:`metalearn.clip.ClipWindows.folds`: each cycle, or the halves of one cycle's
runs); :func:`accuracy_interval` says how sure that estimate is.
The adapted model is refused when any rule fails:

1. its accuracy is below ``min_accuracy``;
2. it is worse than the base model (lower accuracy);
3. it recognises some intent in fewer than ``min_recall`` of that intent's windows;
4. a witness from outside the clip sees its open and close swapped by more than ``swap_margin``
   (:mod:`.plausible`: the patient's previous model, other people's intents);
5. the clip has a movement segment and the adapted model would open or close the hand in more
   than ``max_move_activation`` of its windows (each half scored with the wearer's own classes
   learned from the other half).

``--force`` installs a refused model anyway (the report and the model's metadata say so). It
never overrides the clip checks of :mod:`.clip`: a flat or incomplete clip gives no model at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from metaemg.typedconfig import Section, require_range

EXIT_REFUSED = 3  # metaemg-calibrate's exit status when the gate refuses the adapted model


@dataclass(frozen=True)
class GateRules(Section):
    KEY = "gate"
    min_accuracy: float = 0.7
    min_recall: float = 0.5
    swap_margin: float = 0.25
    max_move_activation: float = 0.25

    def check(self, key: str) -> None:
        for attr in ("min_accuracy", "min_recall", "swap_margin", "max_move_activation"):
            value = getattr(self, attr)
            require_range(value, f"{key}.{attr}", 0, 1, "a fraction")

    def describe(self) -> str:
        return (
            f"accuracy >= {self.min_accuracy:.2f}, not worse than the base model, "
            f"every intent recognised in >= {self.min_recall:.0%} of its windows, "
            f"open and close not swapped by more than {self.swap_margin:.0%}, "
            f"the movement segment moving the hand in at most {self.max_move_activation:.0%} of its windows"
        )


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    forced: bool
    reasons: tuple[str, ...]  # why it failed (empty when passed)

    @property
    def install(self) -> bool:
        return self.passed or self.forced

    def line(self) -> str:
        """One line for the clinician."""
        if self.passed:
            return "passed"
        why = "; ".join(self.reasons)
        if self.forced:
            return f"FAILED ({why}), installed anyway because of --force"
        return f"refused: {why}"

    def to_dict(self) -> dict:
        return {"passed": self.passed, "forced": self.forced, "install": self.install, "reasons": list(self.reasons)}


def decide(
    before: dict,
    after: dict,
    rules: GateRules,
    *,
    force: bool = False,
    implausible: list[str] | tuple[str, ...] = (),
    points: dict | None = None,
) -> GateDecision:
    """``before``/``after``: :func:`.metrics.summary` of the base and the adapted model on the
    same held-out windows; ``implausible``: :func:`.plausible.reasons` for the clip; ``points``:
    the clip's figures at each operating point (to name a better one in a refusal)."""
    reasons = list(implausible)
    acc_b, acc_a = before["accuracy"], after["accuracy"]
    if acc_a < rules.min_accuracy:
        reasons.append(f"accuracy {acc_a:.2f} on the held-out windows is below the floor {rules.min_accuracy:.2f}")
    if acc_a < acc_b:
        reasons.append(f"the adapted model ({acc_a:.2f}) is worse than the base model ({acc_b:.2f})")
    for name, recall in after["recall"].items():
        if recall is not None and recall < rules.min_recall:
            reasons.append(f"'{name}' recognised in only {recall:.0%} of its windows (floor {rules.min_recall:.0%})")
    moved = after.get("move_activation")
    if moved is not None and moved > rules.max_move_activation:
        steady = (points or {}).get("steady", {}).get("move_activation")
        hint = (
            f"; the operating point 'steady' gives {steady:.0%}"
            if steady is not None and steady <= rules.max_move_activation
            else ""
        )
        reasons.append(
            f"the movement segment would open or close the hand in {moved:.0%} of its windows "
            f"(limit {rules.max_move_activation:.0%}){hint}"
        )
    return GateDecision(passed=not reasons, forced=bool(force) and bool(reasons), reasons=tuple(reasons))


def accuracy_interval(accuracy: float, windows: int, window: int, stride: int, z: float = 1.96) -> tuple[float, float]:
    """An approximate 95 % (Wilson) interval for an accuracy measured on ``windows`` held-out
    windows of ``window`` samples every ``stride``: overlapping windows are not independent, so
    they count as ``windows * stride / window`` independent trials (at least 1)."""
    n = max(1.0, windows * min(1.0, stride / window))
    p = min(1.0, max(0.0, accuracy))
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
