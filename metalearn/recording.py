"""Recordings in the research code's CSV format.

A session is a directory ``<root>/<session>/``; each recording in it is
``<last two characters of the session name>_<condition>.csv``. The columns used are
``time_elapsed`` (seconds), ``emg0`` .. ``emg7`` and ``gt`` (0 relax, 1 open, 2 close, 3 a
movement that is no intent: the calibration's movement segment, :data:`metaemg.intents.MOVE`); any
other column (an unnamed index, ``current_time``, ``current_task``) is ignored on reading.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from metaemg.atomic import write_text
from metaemg.errors import DataError
from metaemg.intents import INTENTS, LABELS

N_CHANNELS = 8
TIME_COLUMN = "time_elapsed"
LABEL_COLUMN = "gt"


def emg_columns(n: int = N_CHANNELS) -> list[str]:
    return [f"emg{i}" for i in range(n)]


def recording_path(root: str | os.PathLike, session: str, condition: str) -> Path:
    """``<root>/<session>/<last two characters of session>_<condition>.csv``."""
    if not session or not condition:
        raise DataError(f"session and condition must be non-empty (got {session!r}, {condition!r})")
    return Path(root) / session / f"{session[-2:]}_{condition}.csv"


def estimate_sample_rate(time: np.ndarray, path: object | None = None) -> float:
    """Sample rate from the median of the positive intervals of ``time`` (robust to repeated
    timestamps and to the odd dropped sample)."""
    dt = np.diff(np.asarray(time, dtype=np.float64))
    dt = dt[dt > 0]
    if dt.size == 0:
        raise DataError("cannot estimate the sample rate: time_elapsed never increases", path=path)
    return float(1.0 / np.median(dt))


@dataclass(frozen=True, eq=False)
class Recording:
    """One labelled EMG recording: ``time`` (n,), ``emg`` (n, channels), ``labels`` (n,)."""

    time: np.ndarray
    emg: np.ndarray
    labels: np.ndarray
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        time = np.ascontiguousarray(self.time, dtype=np.float64)
        emg = np.ascontiguousarray(self.emg, dtype=np.float64)
        labels = np.ascontiguousarray(self.labels, dtype=np.int64)
        if emg.ndim != 2 or time.ndim != 1 or labels.ndim != 1:
            raise DataError("time and labels must be 1-D and emg 2-D", path=self.path)
        if not (len(time) == len(emg) == len(labels)):
            raise DataError(
                f"length mismatch: time {len(time)}, emg {len(emg)}, labels {len(labels)}",
                path=self.path,
            )
        if len(time) < 2:
            raise DataError(f"too few samples ({len(time)})", path=self.path)
        _check_values(time, emg, labels, self.path)
        object.__setattr__(self, "time", time)
        object.__setattr__(self, "emg", emg)
        object.__setattr__(self, "labels", labels)

    @property
    def n_samples(self) -> int:
        return len(self.time)

    @property
    def n_channels(self) -> int:
        return self.emg.shape[1]

    @property
    def sample_rate(self) -> float:
        return estimate_sample_rate(self.time, self.path)

    @property
    def duration(self) -> float:
        return float(self.time[-1] - self.time[0])

    def label_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(INTENTS))
        return {name: int(counts[i]) for i, name in enumerate(INTENTS)}

    def slice(self, start: int, stop: int | None = None) -> Recording:
        return Recording(self.time[start:stop], self.emg[start:stop], self.labels[start:stop], self.path)


def _check_values(time: np.ndarray, emg: np.ndarray, labels: np.ndarray, path: object) -> None:
    """Row-precise checks shared by the reader and the constructor. Rows are 1-based data rows
    (the header is row 0), as a spreadsheet shows them after the header."""
    bad = ~np.isfinite(time) | ~np.isfinite(emg).all(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError("NaN or infinite value in time_elapsed or emg", path=path, row=row + 1)
    back = np.diff(time) < 0
    if back.any():
        row = int(np.argmax(back)) + 1
        raise DataError(
            f"time_elapsed goes backwards ({time[row - 1]:.6g} -> {time[row]:.6g})",
            path=path,
            row=row + 1,
        )
    off = (labels < 0) | (labels >= len(LABELS))
    if off.any():
        row = int(np.argmax(off))
        raise DataError(f"label {labels[row]} is outside {{0,1,2,3}}", path=path, row=row + 1)


def read_recording(path: str | os.PathLike, channels: int = N_CHANNELS, *, labelled: bool = True) -> Recording:
    """Read a recording CSV; any problem raises :class:`DataError` naming file and row.

    ``labelled=False`` reads a recording of movements that are none of the intents (e.g. the Myo
    import's ``other_gestures/*.csv``): no ``gt`` column is needed (one is ignored) and every
    sample is labelled relax, the decision the orthosis should take."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError("recording file not found", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read: {exc}", path=path) from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        raise DataError("empty file (no header)", path=path)
    header = [h.strip() for h in header]
    wanted = [TIME_COLUMN, *emg_columns(channels), *([LABEL_COLUMN] if labelled else [])]
    missing = [c for c in wanted if c not in header]
    if missing:
        extra_emg = sorted(h for h in header if h.startswith("emg") and h not in wanted)
        hint = (
            f" (found {len([h for h in header if h.startswith('emg')])} emg columns)"
            if extra_emg or any(m.startswith("emg") for m in missing)
            else ""
        )
        raise DataError(f"missing column(s) {', '.join(missing)}{hint}", path=path)
    extra_emg = [h for h in header if h.startswith("emg") and h[3:].isdigit() and h not in wanted]
    if extra_emg:
        raise DataError(f"expected {channels} EMG channels, found extra column(s) {', '.join(extra_emg)}", path=path)
    idx = [header.index(c) for c in wanted]
    width = max(idx) + 1
    values: list[list[float]] = []
    for rownum, row in enumerate(reader, start=1):
        if len(row) < width or not any(cell.strip() for cell in row):
            raise DataError("empty or short row", path=path, row=rownum)
        try:
            values.append([float(row[i]) for i in idx])
        except ValueError:
            bad = next(wanted[k] for k, i in enumerate(idx) if not _is_float(row[i]))
            raise DataError(f"{bad} is not a number ({row[idx[wanted.index(bad)]]!r})", path=path, row=rownum) from None
    if len(values) < 2:
        raise DataError(f"too few data rows ({len(values)})", path=path)
    arr = np.asarray(values, dtype=np.float64)
    if not labelled:
        return Recording(arr[:, 0], arr[:, 1:], np.zeros(len(arr), dtype=np.int64), path)
    labels_f = arr[:, -1]
    finite = np.isfinite(labels_f)
    if not finite.all():
        raise DataError("gt is NaN or empty", path=path, row=int(np.argmax(~finite)) + 1)
    frac = labels_f != np.round(labels_f)
    if frac.any():
        bad_row = int(np.argmax(frac))
        raise DataError(f"label {labels_f[bad_row]:g} is not an integer", path=path, row=bad_row + 1)
    return Recording(arr[:, 0], arr[:, 1:-1], labels_f.astype(np.int64), path)


def _is_float(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def write_recording(
    path: str | os.PathLike,
    rec: Recording,
    *,
    extra: dict[str, np.ndarray] | None = None,
    index_column: bool = True,
    emg_format: str = "%.10g",
    perms: int | None = None,
) -> Path:
    """Write ``rec`` atomically in the research code's CSV layout (pandas-style unnamed index
    column first, then ``time_elapsed``, ``emg0..``, ``gt``, then any ``extra`` columns)."""
    path = Path(path)
    extra = extra or {}
    for name, col in extra.items():
        if len(col) != rec.n_samples:
            raise DataError(f"extra column {name!r} has {len(col)} values, expected {rec.n_samples}", path=path)
    header = ([""] if index_column else []) + [TIME_COLUMN, *emg_columns(rec.n_channels), LABEL_COLUMN, *extra]
    body = io.StringIO()
    table = np.column_stack([rec.emg, rec.labels])
    np.savetxt(body, table, fmt=[emg_format] * rec.n_channels + ["%d"], delimiter=",")
    columns = [[repr(t) for t in rec.time.tolist()], body.getvalue().splitlines()]
    if index_column:
        columns.insert(0, [str(i) for i in range(rec.n_samples)])
    for col in extra.values():
        col = np.asarray(col)
        columns.append(np.char.mod("%.10g", col).tolist() if col.dtype.kind == "f" else [str(v) for v in col])
    lines = [",".join(header)] + [",".join(parts) for parts in zip(*columns, strict=True)]
    write_text(path, "\n".join(lines) + "\n", perms=perms)
    return path
