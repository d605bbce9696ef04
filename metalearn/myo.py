"""Import the Myo armband dataset (Côté-Allard et al. 2019) into the recording layout.

Each source session holds ``classe_<i>.dat`` files (int16 little-endian, 8 channels interleaved,
200 Hz, about 5 s each): gesture ``i % 7`` of cycle ``i // 7``, four cycles. We map
neutral -> relax (0), hand open -> open (1), hand close -> close (2) and order each cycle as

    relax (first half of the cycle's neutral), open, relax (second half), close

with the last cycle's neutral cut in thirds so that the recording ends relaxed. Every imported
recording therefore has a valid relax-open-relax-close-relax split: support is the first cycle,
query the three others. The four other gestures (radial/ulnar deviation, wrist flexion and
extension) are real contractions that are none of the three intents; they are exported beside
as ``other_gestures/<session>.csv`` with a ``gesture`` column (the Myo code 1..4).

``fmt="myhand"`` writes every recording as the MyHand armband reports it instead
(:func:`metalearn.myhand.render_myhand`: ~100 Hz envelopes 0..1000 with repeated rows and the
columns ``current_time``, ``current_task``), deterministic from ``seed`` and the session's name;
its recordings are ``<xx>_myhand_rorcr.csv``, its collections ``myhand_*.json``, its other
gestures rendered the same way at the same paths, so it needs its own output directory.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metaemg.atomic import write_text
from metaemg.errors import ConfigError, DataError
from metaemg.intents import MOVE
from metalearn.recording import Recording, emg_columns, recording_path, write_recording
from metalearn.tasks import TaskRef, save_collection

# Where the dataset is: $METAEMG_MYO_ROOT, else ../shared/datasets/myoarmband from the working
# directory (the project root in the README's commands); never found through the source tree.
MYO_ROOT_ENV = "METAEMG_MYO_ROOT"
DEFAULT_MYO_ROOT = Path("..", "shared", "datasets", "myoarmband")
SAMPLE_RATE = 200.0
N_CHANNELS = 8
N_CYCLES = 4
GESTURES = (
    "neutral",
    "radial_deviation",
    "wrist_flexion",
    "ulnar_deviation",
    "wrist_extension",
    "hand_close",
    "hand_open",
)
NEUTRAL, CLOSE, OPEN = 0, 5, 6
OTHER = (1, 2, 3, 4)
CONDITION = "myo_rorcr"
FORMATS = ("myo", "myhand")
COLLECTION_KINDS = {
    "pretrain": "the 22 pre-training subjects (training)",
    "eval_training0": "evaluation subjects, session training0 (calibration)",
    "eval_test": "evaluation subjects, sessions Test0 and Test1 (scoring)",
}
COLLECTIONS = {f"myo_{kind}.json": text for kind, text in COLLECTION_KINDS.items()}


def condition_of(fmt: str) -> str:
    """The condition (file name part) of the import's recordings: ``myo_rorcr``, ``myhand_rorcr``."""
    return f"{_check_format(fmt)}_rorcr"


def collection_names(fmt: str) -> dict[str, str]:
    """The collections an import writes, by file name, with what each holds."""
    return {f"{_check_format(fmt)}_{kind}.json": text for kind, text in COLLECTION_KINDS.items()}


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return fmt


def default_myo_root() -> Path:
    """The Myo dataset's directory: ``$METAEMG_MYO_ROOT``, else ``../shared/datasets/myoarmband``
    relative to the working directory (absolute, for messages)."""
    env = os.environ.get(MYO_ROOT_ENV)
    return Path(env) if env else Path.cwd() / DEFAULT_MYO_ROOT


@dataclass(frozen=True)
class SourceSession:
    group: str  # "PreTrainingDataset" or "EvaluationDataset"
    subject: str
    name: str  # training0, Test0, Test1
    path: Path

    @property
    def session(self) -> str:
        return f"myo_{self.subject}_{self.name}"


def find_sessions(src: str | os.PathLike) -> list[SourceSession]:
    src = Path(src)
    groups = [g for g in ("PreTrainingDataset", "EvaluationDataset") if (src / g).is_dir()]
    if not groups:
        raise DataError("not a Myo armband dataset (no PreTrainingDataset/ or EvaluationDataset/)", path=src)
    found = []
    for group in groups:
        for subject in sorted((src / group).iterdir()):
            if not subject.is_dir():
                continue
            for sess in sorted(subject.iterdir()):
                if sess.is_dir() and any(sess.glob("classe_*.dat")):
                    found.append(SourceSession(group, subject.name, sess.name, sess))
    if not found:
        raise DataError("no session directories with classe_*.dat files", path=src)
    return found


def read_dat(path: Path) -> np.ndarray:
    """One ``classe_<i>.dat`` file as (n, 8) float64 in -128..127."""
    try:
        raw = np.fromfile(path, dtype="<i2")
    except FileNotFoundError:
        raise DataError("missing gesture file", path=path) from None
    if raw.size == 0 or raw.size % N_CHANNELS:
        raise DataError(f"{raw.size} int16 values is not a whole number of 8-channel samples", path=path)
    emg = raw.reshape(-1, N_CHANNELS).astype(np.float64)
    if emg.min() < -128 or emg.max() > 127:
        raise DataError(f"values {emg.min():g}..{emg.max():g} outside the Myo's -128..127", path=path)
    return emg


def _gesture(sess: SourceSession, cycle: int, gesture: int) -> np.ndarray:
    return read_dat(sess.path / f"classe_{cycle * len(GESTURES) + gesture}.dat")


MOVE_HOLD_S = 0.5  # how long a movement of the simulated movement segment is held
MOVE_SKIP_S = 1.0  # from the start of a gesture's recording: the movement under way


def movement_segment(emg: np.ndarray, codes: np.ndarray, seconds: float) -> np.ndarray:
    """(n, 8) ``seconds`` of wrist movements with the hand relaxed, as a patient makes them in a
    calibration's movement segment, cut from a session's other gestures (``emg`` with each
    sample's gesture ``codes``, in the recorded order; only the first cycle's four are used): the
    four movements in turn, :data:`MOVE_HOLD_S` of each, pass ``k`` from the ``k``-th such piece
    of its recording after the first :data:`MOVE_SKIP_S` (a patient moving freely goes through
    them again; later cycles stay unseen, for the benchmarks to score)."""
    starts = np.concatenate([[0], np.flatnonzero(np.diff(codes)) + 1, [len(codes)]])
    blocks = list(itertools.pairwise(starts))[: len(OTHER)]
    each, skip = int(round(MOVE_HOLD_S * SAMPLE_RATE)), int(round(MOVE_SKIP_S * SAMPLE_RATE))
    total = int(round(seconds * SAMPLE_RATE))
    pieces, n, i = [], 0, 0
    while n < total:
        a, b = blocks[i % len(blocks)]
        fits = max(1, (b - a - skip) // each)  # pieces the recording holds
        lo = a + min(skip, max(0, b - a - each)) + (i // len(blocks)) % fits * each
        piece = emg[lo : min(b, lo + each, lo + total - n)]
        pieces.append(piece)
        n, i = n + len(piece), i + 1
    return np.concatenate(pieces) if pieces else np.zeros((0, emg.shape[1]))


def other_gestures(sess: SourceSession) -> tuple[np.ndarray, np.ndarray]:
    """The session's four other gestures of every cycle: ``(emg, gesture code of each sample)``."""
    blocks = [(_gesture(sess, c, g), g) for c in range(N_CYCLES) for g in OTHER]
    return np.concatenate([b for b, _ in blocks]), np.concatenate([np.full(len(b), g) for b, g in blocks])


def build_recording(sess: SourceSession, move_s: float = 0.0) -> Recording:
    """The session's intents as the module docstring says; with ``move_s``, followed by that many
    seconds of :func:`movement_segment`, labelled :data:`~metaemg.intents.MOVE` (a rehearsal
    patient's movements that are no intent)."""
    parts: list[tuple[np.ndarray, int]] = []
    for cycle in range(N_CYCLES):
        neutral = _gesture(sess, cycle, NEUTRAL)
        pieces = np.array_split(neutral, 3 if cycle == N_CYCLES - 1 else 2)
        parts += [(pieces[0], 0), (_gesture(sess, cycle, OPEN), 1), (pieces[1], 0), (_gesture(sess, cycle, CLOSE), 2)]
        if cycle == N_CYCLES - 1:
            parts.append((pieces[2], 0))
    if move_s:
        parts.append((movement_segment(*other_gestures(sess), move_s), MOVE))
    emg = np.concatenate([p for p, _ in parts])
    labels = np.concatenate([np.full(len(p), lab, dtype=np.int64) for p, lab in parts])
    return Recording(np.arange(len(emg)) / SAMPLE_RATE, emg, labels)


def read_other_gestures(path: str | os.PathLike) -> tuple[Recording, np.ndarray]:
    """An ``other_gestures/<session>.csv`` file: the recording (unlabelled) and each sample's
    gesture code (1..4, :data:`GESTURES`)."""
    from metalearn.recording import read_recording

    rec = read_recording(path, labelled=False)
    with open(path, encoding="utf-8") as fh:
        column = next(csv.reader(fh)).index("gesture")
    codes = np.loadtxt(path, delimiter=",", skiprows=1, usecols=column, dtype=np.int64)
    return rec, np.atleast_1d(codes)


def session_seed(seed: int, session: str, part: int = 0) -> list[int]:
    """The seed of one session's MyHand rendering (``part`` 1: its other gestures): the same
    whatever other sessions are imported."""
    return [seed, zlib.crc32(session.encode()), part]


def _render(rec: Recording, seed: list[int]) -> tuple[Recording, np.ndarray]:
    from metalearn.myhand import render_myhand, source_index

    out = render_myhand(rec, seed=seed)
    return out, source_index(rec.time - rec.time[0], out.time)


def write_other_gestures(sess: SourceSession, out: Path, *, fmt: str = "myo", seed: int = 0) -> Path:
    emg, codes = other_gestures(sess)
    times = np.arange(len(emg)) / SAMPLE_RATE
    if _check_format(fmt) == "myhand":
        rec, rows = _render(Recording(times, emg, np.zeros(len(emg))), session_seed(seed, sess.session, 1))
        times, emg, codes = rec.time, rec.emg, codes[rows]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["time_elapsed", *emg_columns(), "gesture", "gesture_name"])
    for t, row, g in zip(times.tolist(), emg.astype(int), codes, strict=True):
        w.writerow([repr(t), *row.tolist(), int(g), GESTURES[g]])
    path = out / "other_gestures" / f"{sess.session}.csv"
    write_text(path, buf.getvalue())
    return path


def import_myoarmband(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    other_gestures: bool = True,
    progress: bool = False,
    fmt: str = "myo",
    seed: int = 0,
) -> dict[str, list[TaskRef]]:
    """Convert the dataset at ``src`` into recordings under ``out`` and write the task
    collections into ``out/task_collections/``. Returns the collections by file name.
    ``fmt="myhand"``: the recordings as the MyHand armband reports them (rendering seeded by
    ``seed``); ``out`` must not hold the other format's import."""
    from metalearn.myhand import myhand_columns

    out = Path(out)
    condition = condition_of(fmt)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0 (got {seed!r})")
    other = "myhand" if fmt == "myo" else "myo"
    mixed = sorted(out.glob(f"*/??_{condition_of(other)}.csv")) if out.is_dir() else []
    if mixed:
        # the other gestures share their paths: the two formats cannot live in one data root
        where = mixed[0].relative_to(out)
        raise DataError(f"holds the {other} import ({where}); import as {fmt} into another directory", path=out)
    sessions = find_sessions(src)
    # Read and check every source file before writing anything: a bad file stops the import
    # with nothing written. Each file written is atomic.
    recordings = [build_recording(sess) for sess in _progress(sessions, progress, "reading")]
    if other_gestures:
        for sess in sessions:
            for c in range(N_CYCLES):
                for g in OTHER:
                    _gesture(sess, c, g)
    for sess, rec in _progress(list(zip(sessions, recordings, strict=True)), progress, "writing"):
        extra = None
        if fmt == "myhand":
            rec, _ = _render(rec, session_seed(seed, sess.session))
            extra = myhand_columns(rec.time, rec.labels)
        write_recording(recording_path(out, sess.session, condition), rec, extra=extra)
        if other_gestures:
            write_other_gestures(sess, out, fmt=fmt, seed=seed)
    refs = {s: TaskRef(s.session, condition) for s in sessions}
    pretrain, training0, test = collection_names(fmt)
    collections = {
        pretrain: [r for s, r in refs.items() if s.group == "PreTrainingDataset"],
        training0: [r for s, r in refs.items() if s.group == "EvaluationDataset" and s.name == "training0"],
        test: [r for s, r in refs.items() if s.group == "EvaluationDataset" and s.name.startswith("Test")],
    }
    for name, coll in collections.items():
        if coll:
            save_collection(out / "task_collections" / name, coll)
    return {k: v for k, v in collections.items() if v}


def _progress(items: list, enabled: bool, desc: str) -> Iterator:
    if not enabled:
        return iter(items)
    from tqdm import tqdm

    return iter(tqdm(items, desc=desc, unit="session"))
