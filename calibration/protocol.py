"""The cue protocol a patient follows during calibration, and the labels the cues give.

Default: a 3-2-1 countdown, then ``cycles`` x (relax, open, relax, close), then a final relax,
2 s each, then ``move_s`` = 6 s of "move your wrist freely, keep your hand relaxed": 24 s in all
(docs/evidence.md: with 2 s of each intent in two cycles the default model does as well on later
sessions as with 5 s; 6 s of the patient's own wrist movements, learned as their own non-intent
classes, cut the hand's movements on wrist movements from 0.27 to 0.05 across sessions, and are
long enough for the gate to cross-validate them). A sample recorded at time ``t`` is labelled
with the cue that was on screen at ``t - reaction_s``: the patient needs a moment to react to a
new cue. The movement segment's samples carry the label :data:`metaemg.intents.MOVE`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from metaemg.intents import LABELS
from metaemg.typedconfig import Section, is_number, require

INSTRUCTIONS = {
    "relax": "let your hand rest",
    "open": "open your hand and hold it open",
    "close": "close your hand and hold it closed",
    "move": "move your wrist freely, keep your hand relaxed",
}


@dataclass(frozen=True)
class Cue:
    """One step of the protocol; ``start``/``end`` in seconds from the first cue."""

    index: int  # 0-based position in the protocol
    name: str  # relax | open | close | move
    cycle: int  # 1..cycles (the final relax and the movement segment belong to the last cycle)
    start: float
    end: float

    @property
    def label(self) -> int:
        return LABELS.index(self.name)

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class CueProtocol(Section):
    """Durations in seconds; checked at construction (ConfigError names the key)."""

    KEY = "protocol"
    relax_s: float = 2.0
    open_s: float = 2.0
    close_s: float = 2.0
    cycles: int = 2
    countdown_s: int = 3
    reaction_s: float = 0.3
    move_s: float = 6.0  # the movement segment at the end (0: none)

    def check(self, key: str) -> None:
        for attr in ("relax_s", "open_s", "close_s"):
            value = getattr(self, attr)
            require(
                _num(value) and 0.5 <= value <= 30, f"{key}.{attr}", "must be a number of seconds in [0.5, 30]", value
            )
        require(
            _int(self.cycles) and 1 <= self.cycles <= 10,
            f"{key}.cycles",
            "must be an integer in 1..10 (2 or more: the gate scores each cycle with a model adapted on the others)",
            self.cycles,
        )
        require(
            _int(self.countdown_s) and 0 <= self.countdown_s <= 10,
            f"{key}.countdown_s",
            "must be an integer in 0..10",
            self.countdown_s,
        )
        require(
            _num(self.move_s) and (self.move_s == 0 or 1 <= self.move_s <= 60),
            f"{key}.move_s",
            "must be 0 (no movement segment) or a number of seconds in [1, 60]",
            self.move_s,
        )
        shortest = min(self.relax_s, self.open_s, self.close_s)
        require(
            _num(self.reaction_s) and 0 <= self.reaction_s < shortest / 2,
            f"{key}.reaction_s",
            f"must be >= 0 and under half the shortest cue ({shortest / 2:g} s)",
            self.reaction_s,
        )

    def cues(self) -> tuple[Cue, ...]:
        names = [n for _ in range(self.cycles) for n in ("relax", "open", "relax", "close")] + ["relax"]
        names += ["move"] if self.move_s else []
        out, t = [], 0.0
        for i, name in enumerate(names):
            duration = getattr(self, f"{name}_s")
            out.append(Cue(i, name, min(i // 4 + 1, self.cycles), t, t + duration))
            t += duration
        return tuple(out)

    @property
    def duration_s(self) -> float:
        """Seconds from the first cue to the end of the last one (countdown excluded)."""
        return self.cues()[-1].end

    def describe(self) -> str:
        move = f", then {self.move_s:g} s of free wrist movements, hand relaxed" if self.move_s else ""
        return (
            f"{self.cycles} cycles of relax {self.relax_s:g} s, open {self.open_s:g} s, relax, "
            f"close {self.close_s:g} s, then relax{move}: {self.duration_s:g} s after a {self.countdown_s} s countdown"
        )


def labels_from_cues(t: np.ndarray, cue_times: np.ndarray, cue_labels: np.ndarray, reaction_s: float) -> np.ndarray:
    """Label of each sample time ``t``: the cue shown at ``t - reaction_s`` (cue ``k`` shown from
    ``cue_times[k]``). Before the first cue counts as relax (the countdown)."""
    t = np.asarray(t, dtype=np.float64)
    cue_times = np.asarray(cue_times, dtype=np.float64)
    labels = np.asarray(cue_labels, dtype=np.int64)
    if cue_times.ndim != 1 or cue_times.shape != labels.shape or np.any(np.diff(cue_times) < 0):
        raise ValueError("cue_times must be increasing and match cue_labels")
    k = np.searchsorted(cue_times, t - reaction_s, side="right") - 1
    return np.where(k >= 0, labels[np.clip(k, 0, None)], 0)


_num = is_number


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
