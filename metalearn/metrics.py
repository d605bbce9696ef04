"""How well decisions match labels, in the terms a patient feels. Pure numpy, shared by
calibration, ``metaemg-eval`` and the benchmarks.

- ``accuracy``: share of windows whose decision names the label of the window's last sample
  (every window, those that straddle a label change included);
- ``steady_accuracy``: the same over the windows whose samples all carry one label;
- ``wrong_direction``: share of the open and close windows that decide the opposite motion
  (open during close, close during open): the hand moves the wrong way;
- ``false_activation``: share of the relax windows that decide open or close: the hand moves
  while the patient rests (for recordings of movements that are no intent, every window is a
  relax window);
- ``recall`` of each intent and the confusion matrix;
- ``move_activation``: share of the windows labelled as a movement that is no intent (the
  calibration's movement segment, :data:`~metaemg.intents.MOVE`) that decide open or close; those
  windows count nowhere else;
- the delay from each label change to the first correct decision (:func:`change_delays`).
"""

from __future__ import annotations

import numpy as np

from metaemg.intents import INTENTS, MOVE, expected

RELAX, OPEN, CLOSE = range(len(INTENTS))


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int = len(INTENTS)) -> np.ndarray:
    """``(n, n)`` counts: row = true intent, column = decided intent."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)


def _share(hits: int, total: int) -> float | None:
    return float(hits / total) if total else None


def summary(y_true: np.ndarray, y_pred: np.ndarray, steady: np.ndarray | None = None) -> dict:
    """``{"windows", "accuracy", "steady_accuracy", "wrong_direction", "false_activation", "recall":
    {intent: fraction or None}, "confusion": [[...]], "move_activation"}`` (see the module docstring). A share is None
    where it has no window to count (``steady_accuracy`` also when ``steady`` is not given)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    moves = y_true == MOVE
    move_activation = _share(int((y_pred[moves] != RELAX).sum()), int(moves.sum()))
    if moves.any():
        y_true, y_pred = y_true[~moves], y_pred[~moves]
        steady = None if steady is None else np.asarray(steady, dtype=bool)[~moves]
    cm = confusion(y_true, y_pred)
    n = int(cm.sum())
    support = cm.sum(axis=1)
    recall = {name: _share(int(cm[i, i]), int(support[i])) for i, name in enumerate(INTENTS)}
    steady_acc = None
    if steady is not None:
        steady = np.asarray(steady, dtype=bool)
        steady_acc = _share(int((y_true[steady] == y_pred[steady]).sum()), int(steady.sum()))
    return {
        "windows": n,
        "accuracy": _share(int(np.trace(cm)), n),
        "steady_accuracy": steady_acc,
        "wrong_direction": _share(int(cm[OPEN, CLOSE] + cm[CLOSE, OPEN]), int(support[OPEN] + support[CLOSE])),
        "false_activation": _share(int(cm[RELAX, OPEN] + cm[RELAX, CLOSE]), int(support[RELAX])),
        "recall": recall,
        "confusion": cm.tolist(),
        "move_activation": move_activation,
    }


def steady_windows(labels: np.ndarray, ends: np.ndarray, window: int) -> np.ndarray:
    """Per window (its last sample at ``ends``): True when all its ``window`` samples carry one label."""
    labels = np.asarray(labels, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    # index of the most recent label change at or before each sample
    change = np.zeros(len(labels), dtype=np.int64)
    change[1:] = np.where(np.diff(labels) != 0, np.arange(1, len(labels)), 0)
    last_change = np.maximum.accumulate(change)
    return last_change[ends] <= ends - window + 1


def change_delays(time: np.ndarray, labels: np.ndarray, ends: np.ndarray, decisions: np.ndarray) -> list[dict]:
    """For each label change in a recording: the delay from its first sample to the first
    decision (a window's last sample, at ``ends``) that names the new intent, before the next
    change. ``delay_ms`` is None when no decision got it right in time (a miss).

    ``time``/``labels`` are per sample; ``ends``/``decisions`` per window.
    """
    time = np.asarray(time, dtype=np.float64)
    labels = expected(labels)  # a movement segment is a change to relax, or none
    ends = np.asarray(ends, dtype=np.int64)
    decisions = np.asarray(decisions, dtype=np.int64)
    changes = np.flatnonzero(np.diff(labels)) + 1
    bounds = [*changes.tolist(), len(labels)]
    out = []
    for c, stop in zip(changes.tolist(), bounds[1:], strict=True):
        new = int(labels[c])
        in_segment = (ends >= c) & (ends < stop)
        hits = np.flatnonzero(in_segment & (decisions == new))
        delay = None if hits.size == 0 else round(float(time[ends[hits[0]]] - time[c]) * 1000.0, 3)
        out.append({"t": round(float(time[c]), 6), "to": INTENTS[new], "delay_ms": delay})
    return out


def delay_summary(delays: list[dict]) -> dict:
    """Median and maximum delay (ms) over the changes caught, and how many were missed."""
    caught = [d["delay_ms"] for d in delays if d["delay_ms"] is not None]
    return {
        "changes": len(delays),
        "missed": len(delays) - len(caught),
        "median_ms": float(np.median(caught)) if caught else None,
        "max_ms": float(np.max(caught)) if caught else None,
    }


def fmt_recall(recall: dict) -> str:
    return ", ".join(f"{k} {'-' if v is None else f'{v:.2f}'}" for k, v in recall.items())
