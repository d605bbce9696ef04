"""The calibration report: a JSON document (everything, for the record) and a PNG (the clip and its
cycles, the cue labels, the base model's and the cross-validated adapted models' decisions over
the clip, and their confusion matrices)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from metaemg.atomic import PRIVATE, write_bytes, write_text
from metaemg.intents import LABELS
from metalearn.clip import ClipWindows
from metalearn.metrics import INTENTS

COLORS = {0: "#d9d9d9", 1: "#4daf4a", 2: "#e66101", 3: "#9e7cc1"}  # relax, open, close, move


def write_json(path: Path, report: dict) -> Path:
    write_text(path, json.dumps(report, indent=2, allow_nan=False) + "\n", perms=PRIVATE)
    return path


def write_png(
    path: Path, clip: ClipWindows, decisions: dict[str, np.ndarray], held_out: dict[str, dict], title: str
) -> str | None:
    """Draw the report figure; returns None, or a note when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no PNG report: matplotlib is not installed (pip install matplotlib)"
    rec = clip.recording
    t = rec.time - rec.time[0]
    t_win = t[clip.ends]
    cycle_t = clip.cycle_times()
    fig = plt.figure(figsize=(11, 7.5))
    grid = fig.add_gridspec(3, 2, height_ratios=[2.2, 1.0, 2.0], hspace=0.45, wspace=0.3)

    ax = fig.add_subplot(grid[0, :])
    ax.plot(t, clip.conditioned, lw=0.6)
    _shade(ax, t, rec.labels)
    for k, start in enumerate(cycle_t):
        if k:
            ax.axvline(start, color="k", ls="--", lw=1)
        ax.text(start, 0.97, f" cycle {k + 1}", transform=ax.get_xaxis_transform(), va="top", fontsize=8)
    ax.set_xlim(t[0], t[-1])
    ax.set_ylabel("conditioned EMG")
    ax.set_title(title, fontsize=10)

    ax = fig.add_subplot(grid[1, :])
    rows = [("cue label", clip.labels), *decisions.items()]
    for i, (_name, values) in enumerate(rows):
        y = len(rows) - 1 - i
        for k in range(len(INTENTS)):
            m = values == k
            ax.scatter(t_win[m], np.full(m.sum(), y), c=COLORS[k], marker="|", s=120, lw=2)
    ax.set_yticks(range(len(rows)), [r[0] for r in reversed(rows)], fontsize=8)
    for start in cycle_t[1:]:
        ax.axvline(start, color="k", ls="--", lw=1)
    ax.set_xlim(t[0], t[-1])
    ax.set_xlabel("time (s)")
    handles = [plt.Line2D([], [], color=COLORS[k], lw=6) for k in range(len(LABELS))]
    ax.legend(handles, LABELS, ncol=4, fontsize=8, loc="upper right", bbox_to_anchor=(1.0, 1.45))

    for j, (name, summary) in enumerate(held_out.items()):
        ax = fig.add_subplot(grid[2, j])
        cm = np.asarray(summary["confusion"], dtype=float)
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        for r in range(len(INTENTS)):
            for c in range(len(INTENTS)):
                ax.text(
                    c,
                    r,
                    f"{int(cm[r, c])}",
                    ha="center",
                    va="center",
                    color="white" if norm[r, c] > 0.5 else "black",
                    fontsize=9,
                )
        ax.set_xticks(range(3), INTENTS, fontsize=8)
        ax.set_yticks(range(3), INTENTS, fontsize=8)
        ax.set_xlabel("decided")
        ax.set_ylabel("cue")
        ax.set_title(f"{name}: held-out accuracy {summary['accuracy']:.2f}", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    write_bytes(path, buf.getvalue(), perms=PRIVATE)
    return None


def _shade(ax, t: np.ndarray, labels: np.ndarray) -> None:
    starts = np.concatenate([[0], np.flatnonzero(np.diff(labels)) + 1])
    stops = np.concatenate([starts[1:], [len(labels)]])
    for a, b in zip(starts, stops, strict=True):
        if labels[a]:
            ax.axvspan(t[a], t[b - 1], color=COLORS[int(labels[a])], alpha=0.2, lw=0)
