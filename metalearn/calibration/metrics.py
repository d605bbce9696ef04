"""How well decisions match labels: accuracy, per-intent recall, confusion matrix, and the delay
from each label change to the first correct decision. Pure numpy, shared by calibration and
``metaemg-eval``."""

from __future__ import annotations

import numpy as np

INTENTS = ("relax", "open", "close")


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int = len(INTENTS)) -> np.ndarray:
    """``(n, n)`` counts: row = true intent, column = decided intent."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)


def summary(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """``{"windows", "accuracy", "recall": {intent: fraction or None}, "confusion": [[...]]}``;
    recall is None for an intent with no window (accuracy is None without windows)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    cm = confusion(y_true, y_pred)
    n = int(cm.sum())
    support = cm.sum(axis=1)
    recall = {name: (float(cm[i, i] / support[i]) if support[i] else None) for i, name in enumerate(INTENTS)}
    return {"windows": n, "accuracy": float(np.trace(cm) / n) if n else None, "recall": recall,
            "confusion": cm.tolist()}


def change_delays(time: np.ndarray, labels: np.ndarray, ends: np.ndarray, decisions: np.ndarray) -> list[dict]:
    """For each label change in a recording: the delay from its first sample to the first
    decision (a window's last sample, at ``ends``) that names the new intent, before the next
    change. ``delay_ms`` is None when no decision got it right in time (a miss).

    ``time``/``labels`` are per sample; ``ends``/``decisions`` per window.
    """
    time = np.asarray(time, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
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
    return {"changes": len(delays), "missed": len(delays) - len(caught),
            "median_ms": float(np.median(caught)) if caught else None,
            "max_ms": float(np.max(caught)) if caught else None}


def fmt_recall(recall: dict) -> str:
    return ", ".join(f"{k} {'-' if v is None else f'{v:.2f}'}" for k, v in recall.items())
