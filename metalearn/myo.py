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
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metaemg.atomic import write_text
from metaemg.errors import DataError
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
COLLECTIONS = {
    "myo_pretrain.json": "the 22 pre-training subjects (training)",
    "myo_eval_training0.json": "evaluation subjects, session training0 (calibration)",
    "myo_eval_test.json": "evaluation subjects, sessions Test0 and Test1 (scoring)",
}


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


def build_recording(sess: SourceSession) -> Recording:
    parts: list[tuple[np.ndarray, int]] = []
    for cycle in range(N_CYCLES):
        neutral = _gesture(sess, cycle, NEUTRAL)
        pieces = np.array_split(neutral, 3 if cycle == N_CYCLES - 1 else 2)
        parts += [(pieces[0], 0), (_gesture(sess, cycle, OPEN), 1), (pieces[1], 0), (_gesture(sess, cycle, CLOSE), 2)]
        if cycle == N_CYCLES - 1:
            parts.append((pieces[2], 0))
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


def write_other_gestures(sess: SourceSession, out: Path) -> Path:
    blocks = [(_gesture(sess, c, g), g) for c in range(N_CYCLES) for g in OTHER]
    emg = np.concatenate([b for b, _ in blocks])
    codes = np.concatenate([np.full(len(b), g) for b, g in blocks])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["time_elapsed", *emg_columns(), "gesture", "gesture_name"])
    for i, (row, g) in enumerate(zip(emg.astype(int), codes, strict=True)):
        w.writerow([repr(i / SAMPLE_RATE), *row.tolist(), int(g), GESTURES[g]])
    path = out / "other_gestures" / f"{sess.session}.csv"
    write_text(path, buf.getvalue())
    return path


def import_myoarmband(
    src: str | os.PathLike, out: str | os.PathLike, *, other_gestures: bool = True, progress: bool = False
) -> dict[str, list[TaskRef]]:
    """Convert the dataset at ``src`` into recordings under ``out`` and write the task
    collections into ``out/task_collections/``. Returns the collections by file name."""
    out = Path(out)
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
        write_recording(recording_path(out, sess.session, CONDITION), rec)
        if other_gestures:
            write_other_gestures(sess, out)
    refs = {s: TaskRef(s.session, CONDITION) for s in sessions}
    collections = {
        "myo_pretrain.json": [r for s, r in refs.items() if s.group == "PreTrainingDataset"],
        "myo_eval_training0.json": [
            r for s, r in refs.items() if s.group == "EvaluationDataset" and s.name == "training0"
        ],
        "myo_eval_test.json": [
            r for s, r in refs.items() if s.group == "EvaluationDataset" and s.name.startswith("Test")
        ],
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
