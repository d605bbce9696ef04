"""Are the clip's labels plausible? Evidence from outside the clip that open and close were swapped.

The gate's cross-validation judges a model by the clip's own labels: a clip whose open and close
were swapped (the patient followed the cues the other way round, a wrong protocol file) looks
consistent with itself and passed. Two witnesses that do not depend on those labels:

- **the patient's previous model** (the calibrated model the daemon runs now, for the same
  armband format): how it decides the clip's open and close windows, as labelled and with open
  and close swapped;
- **other people** (the base model's ``population`` metadata, ``feat`` models): each window's
  nearest intent among the population's intent means (standardised features, whitened), the
  armband turned by at most ``max_rotation`` electrodes from how the training subjects wore it.
  An armband put on half a turn away from that swaps the extensors and the flexors: it looks
  exactly like swapped labels, so the message says both (docs/evidence.md, "The default model").

Each witness gives the share of the clip's open and close windows it decides as labelled and as
swapped; the gate refuses when the swapped share exceeds the labelled one by more than
``gate.swap_margin``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from metalearn.metrics import CLOSE, OPEN


@dataclass(frozen=True)
class Witness:
    name: str  # "the previous model 3fb4e0aa1de9" / "other people (the base model's population)"
    as_labelled: float  # share of the open and close windows decided as labelled
    swapped: float  # ... decided as the other motion

    def to_dict(self) -> dict:
        return {"name": self.name, "as_labelled": round(self.as_labelled, 4), "swapped": round(self.swapped, 4)}


def _shares(decisions: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    motion = (labels == OPEN) | (labels == CLOSE)
    if not motion.any():
        return 0.0, 0.0
    d, y = decisions[motion], labels[motion]
    return float((d == y).mean()), float((d == OPEN + CLOSE - y).mean())


def previous_model(model, windows: np.ndarray, labels: np.ndarray) -> Witness:
    """``model``: an OnnxModel (its own scaler baked in) deciding the clip's windows."""
    decisions = model.predict(windows).argmax(axis=1)
    return Witness(f"the previous model {model.info.model_id}", *_shares(decisions, labels))


def population(base, population: dict, windows: np.ndarray, labels: np.ndarray) -> Witness:
    """``base``: the base torch model (a FeatLDA: features, whitening); ``population``: its
    metadata (``means``, ``max_rotation``). The best share over the allowed turns of the armband,
    for the labels as given and as swapped (each its own best turn)."""
    import torch

    with torch.no_grad():
        from metalearn.models import standardisation

        f = base.features(torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))).double()
        offset, scale = standardisation(f)
        z = (f - offset) / scale
        whiten = base.whiten.double()
        means = torch.tensor(np.asarray(population["means"], dtype=np.float64)) @ whiten.T
        channels = base.n_channels
        best = (0.0, 0.0)
        turn = int(population["max_rotation"])
        for r in range(-turn, turn + 1):
            zr = torch.roll(z.reshape(len(z), -1, channels), r, dims=2).reshape(len(z), -1) @ whiten.T
            decisions = torch.cdist(zr, means).argmin(dim=1).numpy()
            labelled, swapped = _shares(decisions, labels)
            best = (max(best[0], labelled), max(best[1], swapped))
    return Witness("other people (the base model's population)", *best)


def reasons(witnesses: list[Witness], margin: float) -> list[str]:
    """The gate's reasons to refuse: a witness that sees open and close swapped."""
    out = []
    for w in witnesses:
        if w.swapped - w.as_labelled > margin:
            out.append(
                f"open and close look swapped: {w.name} decides {w.swapped:.0%} of the open and close windows "
                f"the other way round, {w.as_labelled:.0%} as labelled (were the cues followed the other way "
                "round, or is the armband on turned by half a circle?)"
            )
    return out
