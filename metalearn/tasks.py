"""Tasks and task collections in the research code's formats.

A task collection is a JSON list of ``{"session": ..., "condition": ...}``. A task is one
(session, condition) recording, split into support (for adaptation) and query (for evaluation)
at the end of its first relax-open-relax-close-relax cycle.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metaemg.atomic import write_text
from metaemg.errors import ConfigError, DataError
from metaemg.intents import MOVE
from metaemg.signal import SignalChain, SignalSpec, make_windows, rate_matches
from metalearn.recording import Recording, read_recording, recording_path

# relax->open, open->relax, relax->close, close->relax, relax->open
CYCLE_CHANGES = (+1, -1, +2, -2, +1)
SCALERS = ("none", "standard", "minmax")


@dataclass(frozen=True, order=True)
class TaskRef:
    session: str
    condition: str

    def path(self, root: str | os.PathLike) -> Path:
        return recording_path(root, self.session, self.condition)

    def to_dict(self) -> dict[str, str]:
        return {"session": self.session, "condition": self.condition}

    def __str__(self) -> str:
        return f"{self.session}/{self.condition}"


def load_collection(path: str | os.PathLike) -> list[TaskRef]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError("task collection not found", path=path) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read: {exc}", path=path) from None
    if not isinstance(data, list):
        raise DataError(f"a task collection is a JSON list, got {type(data).__name__}", path=path)
    refs = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not {"session", "condition"} <= set(item):
            raise DataError(f"item {i} must be an object with 'session' and 'condition', got {item!r}", path=path)
        session, cond = item["session"], item["condition"]
        if not (isinstance(session, str) and isinstance(cond, str) and session and cond):
            raise DataError(f"item {i}: session and condition must be non-empty strings", path=path)
        refs.append(TaskRef(session, cond))
    return refs


def save_collection(path: str | os.PathLike, refs: list[TaskRef]) -> Path:
    """Write a collection atomically, in the research code's format (a JSON list)."""
    path = Path(path)
    write_text(path, json.dumps([r.to_dict() for r in refs], indent=2) + "\n")
    return path


def find_split(labels: np.ndarray, path: object | None = None) -> int:
    """Index of the first row of the query part: the row where the fifth label change lands.

    The first five changes must be +1, -1, +2, -2, +1 (relax->open, open->relax, relax->close,
    close->relax, relax->open); otherwise :class:`DataError` names the row and the labels seen.
    """
    labels = np.asarray(labels)
    rows = np.flatnonzero(np.diff(labels)) + 1  # first row of each new segment
    seen = [int(labels[0])] + [int(labels[r]) for r in rows[: len(CYCLE_CHANGES)]]
    for k, expected in enumerate(CYCLE_CHANGES):
        if k >= len(rows):
            raise DataError(
                f"no complete relax-open-relax-close-relax cycle: the labels change only {len(rows)} "
                f"time(s) ({_seq(seen)})",
                path=path,
            )
        change = int(labels[rows[k]] - labels[rows[k] - 1])
        if change != expected:
            raise DataError(
                f"label change {k + 1} is {int(labels[rows[k] - 1])}->{int(labels[rows[k]])}, expected "
                f"{_pair(expected, k)} (labels seen: {_seq(seen[: k + 2])})",
                path=path,
                row=int(rows[k]) + 1,
            )
    return int(rows[len(CYCLE_CHANGES) - 1])


def _seq(labels: list[int]) -> str:
    return " -> ".join(str(v) for v in labels)


def _pair(change: int, k: int) -> str:
    start = [0, 1, 0, 2, 0][k]
    return f"{start}->{start + change}"


@dataclass(frozen=True, eq=False)
class Task:
    ref: TaskRef
    recording: Recording
    split: int

    @property
    def support(self) -> Recording:
        return self.recording.slice(0, self.split)

    @property
    def query(self) -> Recording:
        return self.recording.slice(self.split)


def load_task(root: str | os.PathLike, ref: TaskRef, channels: int = 8) -> Task:
    path = ref.path(root)
    rec = read_recording(path, channels=channels)
    if (rec.labels == MOVE).any():
        row = int(np.argmax(rec.labels == MOVE)) + 1
        raise DataError(
            "label 3 (a movement segment) belongs in a calibration clip, not in a training task", path=path, row=row
        )
    return Task(ref, rec, find_split(rec.labels, path))


class Scaler:
    """Per-channel affine scaling ``(x - offset) / scale``, fitted on the support part only."""

    def __init__(self, kind: str, offset: np.ndarray, scale: np.ndarray):
        self.kind = kind
        self.offset = np.asarray(offset, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)

    @classmethod
    def fit(cls, kind: str | bool | None, x: np.ndarray) -> Scaler:
        kind = normalise_scaler_kind(kind)
        x = np.asarray(x, dtype=np.float64).reshape(-1, np.shape(x)[-1])
        c = x.shape[1]
        if kind == "none":
            return cls(kind, np.zeros(c), np.ones(c))
        if kind == "standard":
            offset, scale = x.mean(axis=0), x.std(axis=0)
        else:
            offset, scale = x.min(axis=0), x.max(axis=0) - x.min(axis=0)
        return cls(kind, offset, np.where(scale > 1e-12, scale, 1.0))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.offset) / self.scale

    def to_dict(self) -> dict:
        return {"kind": self.kind, "offset": self.offset.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Scaler:
        return cls(d["kind"], d["offset"], d["scale"])


def normalise_scaler_kind(kind: str | int | bool | None) -> str:
    """Accept the research configs' spellings: 0/null/false -> none, 1/true -> standard,
    2 -> minmax (the research code's ``scale: 2 # 2 for minmax, 1 for standardization``)."""
    if kind is None or kind is False:
        return "none"
    if kind is True:
        return "standard"
    if isinstance(kind, int):
        if kind not in (0, 1, 2):
            raise ConfigError(f"scale must be 0 (none), 1 (standard) or 2 (minmax), got {kind}")
        return SCALERS[kind]
    aliases = {
        "std": "standard",
        "standardise": "standard",
        "standardize": "standard",
        "zscore": "standard",
        "min-max": "minmax",
        "min_max": "minmax",
    }
    kind = aliases.get(str(kind).lower(), str(kind).lower())
    if kind not in SCALERS:
        raise ConfigError(f"scale must be one of {', '.join(SCALERS)} (got {kind!r})")
    return kind


@dataclass(frozen=True, eq=False)
class TaskWindows:
    """A task as windows: support and query arrays (n, window, channels), labels of each window's
    last sample, and the scaler fitted on the support part."""

    ref: TaskRef
    x_support: np.ndarray
    y_support: np.ndarray
    x_query: np.ndarray
    y_query: np.ndarray
    scaler: Scaler


def task_windows(task: Task, spec: SignalSpec, scale: str | bool | None = "none") -> TaskWindows:
    """Condition the whole recording causally (as the daemon would see it), window it, and split
    the windows by their last sample: before the split -> support, from it -> query."""
    if task.recording.n_channels != spec.channels:
        raise DataError(
            f"has {task.recording.n_channels} channels, the signal chain expects {spec.channels}",
            path=task.recording.path,
        )
    rate = task.recording.sample_rate
    if not rate_matches(rate, spec.sample_rate):
        raise DataError(
            f"sample rate {rate:.1f} Hz does not match the signal chain's {spec.sample_rate:g} Hz",
            path=task.recording.path,
        )
    y = SignalChain(spec).process(task.recording.emg)
    scaler = Scaler.fit(scale, y[: task.split])
    windows, ends = make_windows(scaler.transform(y), spec.window, spec.stride)
    labels = task.recording.labels[ends]
    sup = ends < task.split
    if not sup.any() or sup.all():
        raise DataError(
            f"too short for window {spec.window} / stride {spec.stride}: support has {int(sup.sum())} "
            f"windows, query {int((~sup).sum())}",
            path=task.recording.path,
        )
    return TaskWindows(task.ref, windows[sup], labels[sup], windows[~sup], labels[~sup], scaler)
