"""Build task collections headlessly: ``metaemg-tasks build``.

Finds every recording under a data root (``<root>/<session>/<last two chars>_<condition>.csv``),
checks each one (readable, a relax-open-relax-close-relax split), filters by glob on
``session/condition`` and writes ``all.json`` and, with a split, ``train.json``/``test.json`` in
the research code's format. Invalid recordings are reported, never written.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path

from metaemg.errors import ConfigError, DataError, MetaEMGError
from metalearn.tasks import TaskRef, find_split, save_collection

# Myo import: myo_<Subject>_<session> -> Subject; otherwise the research layout's last two
# characters of the session name (..._p4 -> p4).
DEFAULT_PATIENT_KEY = r"^myo_([^_]+)_|(..)$"
SPLITS = ("cross-patient", "by-session")


@dataclass(frozen=True)
class Check:
    """One recording's check: valid with its split row, or the one-line error."""

    ref: TaskRef
    valid: bool
    split: int | None = None
    error: str | None = None
    n_samples: int | None = None


def discover(root: str | os.PathLike) -> dict[str, list[TaskRef]]:
    """Sessions (sorted by :func:`session_sort_key`) and their recordings (sorted by condition).
    A session is a directory holding at least one ``<last two chars>_<condition>.csv``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError("data root is not a directory", path=root)
    sessions: dict[str, list[TaskRef]] = {}
    for d in sorted(root.iterdir(), key=lambda p: session_sort_key(p.name)):
        if not d.is_dir() or len(d.name) < 2:
            continue
        prefix = d.name[-2:] + "_"
        conds = sorted(
            f.name[len(prefix) : -4]
            for f in d.iterdir()
            if f.is_file() and f.name.startswith(prefix) and f.name.endswith(".csv") and len(f.name) > len(prefix) + 4
        )
        if conds:
            sessions[d.name] = [TaskRef(d.name, c) for c in conds]
    return sessions


def session_sort_key(name: str) -> tuple:
    """Natural order, case-insensitive (digits compare as numbers), with names containing
    ``train`` first: the Myo import's ``training0`` comes before ``Test0``, ``Test1``."""
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name.lower()) if p)
    return (0 if "train" in name.lower() else 1, parts)


def patient_of(session: str, pattern: str = DEFAULT_PATIENT_KEY) -> str:
    """The patient a session belongs to: the first non-empty group of ``pattern`` searched in the
    session name (or the whole match when the pattern has no group)."""
    try:
        m = re.search(pattern, session)
    except re.error as exc:
        raise ConfigError(f"--patient-key {pattern!r} is not a valid regular expression: {exc}") from None
    if m is None:
        raise DataError(f"session {session!r} does not match --patient-key {pattern!r}")
    groups = [g for g in m.groups() if g]
    return groups[0] if groups else m.group(0)


def check(root: str | os.PathLike, ref: TaskRef, channels: int = 8):
    """Read and check one recording. Returns ``(Check, Recording or None)``; never raises for a
    bad file."""
    from metalearn.recording import read_recording

    path = ref.path(root)
    try:
        rec = read_recording(path, channels=channels)
    except MetaEMGError as exc:
        return Check(ref, False, error=str(exc)), None
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # anything a broken file can throw
        return Check(ref, False, error=f"{path}: cannot read: {exc}"), None
    try:
        split = find_split(rec.labels, path)
    except MetaEMGError as exc:
        return Check(ref, False, error=str(exc), n_samples=rec.n_samples), rec
    return Check(ref, True, split=split, n_samples=rec.n_samples), rec


def select(refs: list[TaskRef], include: list[str] | None = None, exclude: list[str] | None = None) -> list[TaskRef]:
    """Keep refs whose ``session/condition`` matches any include glob (all when none) and no
    exclude glob."""
    out = []
    for r in refs:
        name = str(r)
        if include and not any(fnmatch.fnmatchcase(name, g) for g in include):
            continue
        if exclude and any(fnmatch.fnmatchcase(name, g) for g in exclude):
            continue
        out.append(r)
    return out


def split_cross_patient(
    refs: list[TaskRef], holdout: str | None = None, patient_key: str = DEFAULT_PATIENT_KEY
) -> tuple[list[TaskRef], list[TaskRef], str]:
    """Hold out one patient (default: the last in natural order). Returns train, test, patient."""
    patients = sorted({patient_of(r.session, patient_key) for r in refs}, key=session_sort_key)
    if len(patients) < 2:
        raise DataError(f"cross-patient needs at least two patients, found {patients or 'none'}")
    if holdout is None:
        holdout = patients[-1]
    elif holdout not in patients:
        raise DataError(f"--holdout {holdout!r} is not one of the patients: {', '.join(patients)}")
    test = [r for r in refs if patient_of(r.session, patient_key) == holdout]
    train = [r for r in refs if patient_of(r.session, patient_key) != holdout]
    return train, test, holdout


def split_by_session(
    refs: list[TaskRef], last: int = 1, patient_key: str = DEFAULT_PATIENT_KEY
) -> tuple[list[TaskRef], list[TaskRef]]:
    """For each patient, the ``last`` latest sessions (in :func:`session_sort_key` order) go to
    test and the earlier ones to train; a patient with ``last`` sessions or fewer stays in train."""
    if last < 1:
        raise ConfigError(f"--holdout-sessions must be at least 1, got {last}")
    by_patient: dict[str, set[str]] = {}
    for r in refs:
        by_patient.setdefault(patient_of(r.session, patient_key), set()).add(r.session)
    held: set[str] = set()
    for sessions in by_patient.values():
        ordered = sorted(sessions, key=session_sort_key)
        if len(ordered) > last:
            held.update(ordered[-last:])
    return [r for r in refs if r.session not in held], [r for r in refs if r.session in held]


def build(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    split: str | None = None,
    holdout: str | None = None,
    holdout_sessions: int = 1,
    patient_key: str = DEFAULT_PATIENT_KEY,
    channels: int = 8,
) -> dict:
    """Check, filter, split and write the collections. Returns a report (dict)."""
    if split is not None and split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    sessions = discover(root)
    refs = select([r for rs in sessions.values() for r in rs], include, exclude)
    if not refs:
        raise DataError(f"no recordings under {root} match the include/exclude globs")
    checks = [check(root, r, channels)[0] for r in refs]
    valid = [c.ref for c in checks if c.valid]
    invalid = [{"task": str(c.ref), "error": c.error} for c in checks if not c.valid]
    if not valid:
        raise DataError(f"none of the {len(refs)} selected recordings is valid (first: {invalid[0]['error']})")
    out = Path(out)
    written = {"all": str(save_collection(out / "all.json", valid))}
    report: dict = {
        "root": str(root),
        "out": str(out),
        "selected": len(refs),
        "valid": len(valid),
        "invalid": invalid,
        "split": split,
        "files": written,
    }
    if split == "cross-patient":
        train, test, patient = split_cross_patient(valid, holdout, patient_key)
        report["holdout"] = patient
    elif split == "by-session":
        train, test = split_by_session(valid, holdout_sessions, patient_key)
        if not test:
            raise DataError(f"by-session: no patient has more than {holdout_sessions} session(s), nothing to hold out")
        report["holdout_sessions"] = sorted({r.session for r in test}, key=session_sort_key)
    if split is not None:
        written["train"] = str(save_collection(out / "train.json", train))
        written["test"] = str(save_collection(out / "test.json", test))
        report["train"], report["test"] = len(train), len(test)
    return report


def print_report(report: dict, file=None) -> None:
    import sys

    file = file or sys.stdout
    for bad in report["invalid"]:
        print(f"skipped {bad['task']}: {bad['error']}", file=file)
    print(
        f"{report['valid']} of {report['selected']} selected recordings valid, {len(report['invalid'])} skipped",
        file=file,
    )
    if report["split"] == "cross-patient":
        print(f"cross-patient: held out patient {report['holdout']}", file=file)
    elif report["split"] == "by-session":
        print(f"by-session: held out {', '.join(report['holdout_sessions'])}", file=file)
    for name, path in report["files"].items():
        n = report.get(name, report["valid"])
        print(f"  {name}: {path} ({n} tasks)", file=file)
