"""Command-line tools for data: ``metaemg-import``, ``metaemg-synth``, ``metaemg-tasks``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from metaemg.cli import entry_point
from metaemg.errors import MetaEMGError
from metalearn.recording import INTENTS


@entry_point
def import_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="metaemg-import",
        description="Convert a public EMG dataset into MetaEMG recordings and task collections.",
    )
    sub = p.add_subparsers(dest="dataset", required=True)
    myo = sub.add_parser("myoarmband", help="the Myo armband dataset (Côté-Allard et al. 2019)")
    myo.add_argument("src", type=Path, help="dataset directory (holds PreTrainingDataset/, EvaluationDataset/)")
    myo.add_argument("out", type=Path, help="output data root")
    myo.add_argument(
        "--no-other-gestures",
        action="store_true",
        help="do not export the four non-intent gestures to OUT/other_gestures/",
    )
    myo.add_argument(
        "--as",
        dest="fmt",
        choices=("myo", "myhand"),
        default="myo",
        help="myo: the raw 200 Hz EMG as recorded (default); myhand: rendered as the MyHand armband reports it "
        "(~100 Hz envelopes 0..1000, repeated rows; recordings <xx>_myhand_rorcr.csv, collections myhand_*.json), "
        "into its own OUT",
    )
    myo.add_argument("--seed", type=int, default=0, help="seed of the MyHand rendering's timing (--as myhand)")
    myo.add_argument("--quiet", action="store_true", help="no progress bar")
    myo.add_argument("--json", action="store_true", help="end with one JSON document: each collection and its tasks")
    args = p.parse_args(argv)
    from metalearn.myo import collection_names, import_myoarmband

    colls = import_myoarmband(
        args.src,
        args.out,
        other_gestures=not args.no_other_gestures,
        progress=not args.quiet,
        fmt=args.fmt,
        seed=args.seed,
    )
    total = sum(len(c) for c in colls.values())
    what = "" if args.fmt == "myo" else f" as the MyHand armband reports them (seed {args.seed})"
    print(f"imported {total} recordings{what} into {args.out}")
    descriptions = collection_names(args.fmt)
    for name, refs in colls.items():
        print(f"  {args.out / 'task_collections' / name}: {len(refs)} tasks, {descriptions[name]}")
    if args.json:
        doc = {"out": str(args.out), "recordings": total, "collections": {n: len(r) for n, r in colls.items()}}
        print(json.dumps(doc))
    return 0


@entry_point
def synth_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="metaemg-synth",
        description="Write synthetic patients (deterministic from the seed) in the recording layout.",
    )
    p.add_argument("out", type=Path, help="output data root")
    p.add_argument("--patients", type=int, default=20)
    p.add_argument("--conditions", type=int, default=6, help="recordings (conditions) per patient")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--style",
        choices=("myo", "myhand"),
        default="myo",
        help="myo: 200 Hz raw -128..127; myhand: ~100 Hz envelopes 0..1000 with repeated rows",
    )
    p.add_argument(
        "--profile",
        choices=("typical", "stroke"),
        default="typical",
        help="typical (default); stroke: weak, uneven contractions near the rest level, co-contraction, "
        "spasticity, tremor, fatigue drift, low signal to noise (the same forearms)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="end with one JSON document: what was written")
    args = p.parse_args(argv)
    from metalearn.synth import generate_dataset
    from metalearn.tasks import TaskRef, save_collection

    coll = generate_dataset(
        args.out,
        patients=args.patients,
        conditions=args.conditions,
        seed=args.seed,
        style=args.style,
        profile=args.profile,
        progress=not args.quiet,
    )
    path = save_collection(
        args.out / "task_collections" / "synth_all.json", [TaskRef(t["session"], t["condition"]) for t in coll]
    )
    print(
        f"wrote {len(coll)} recordings ({args.patients} patients x {args.conditions} conditions, "
        f"style {args.style}, profile {args.profile}) into {args.out}; collection {path}"
    )
    if args.json:
        print(json.dumps({"out": str(args.out), "recordings": len(coll), "collection": str(path)}))
    return 0


@entry_point
def tasks_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="metaemg-tasks", description="Work with task collections.")
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="check every task of a collection and print its figures")
    v.add_argument("collection", type=Path, help="task collection JSON")
    v.add_argument("--root", type=Path, required=True, help="data root holding the session directories")
    v.add_argument("--channels", type=int, default=8)
    v.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    b = sub.add_parser("build", help="make collections (and train/test splits) from a data root, headless")
    b.add_argument("--root", type=Path, required=True, help="data root holding the session directories")
    b.add_argument("--out", type=Path, required=True, help="output directory: all.json (+ train.json, test.json)")
    b.add_argument(
        "--include", action="append", metavar="GLOB", help="keep only session/condition matching GLOB (repeatable)"
    )
    b.add_argument(
        "--exclude", action="append", metavar="GLOB", help="drop session/condition matching GLOB (repeatable)"
    )
    b.add_argument(
        "--split",
        choices=("cross-patient", "by-session"),
        help="cross-patient: hold out one patient; by-session: hold out each patient's later sessions",
    )
    b.add_argument("--holdout", metavar="PATIENT", help="cross-patient: the patient to hold out (default: the last)")
    b.add_argument(
        "--holdout-sessions",
        type=int,
        default=1,
        metavar="N",
        help="by-session: how many of each patient's latest sessions to hold out (default 1)",
    )
    b.add_argument(
        "--patient-key",
        metavar="REGEX",
        default=None,
        help="regex on the session name; its first non-empty group is the patient "
        "(default: myo_<Subject>_..., else the last two characters)",
    )
    b.add_argument("--channels", type=int, default=8)
    b.add_argument("--json", action="store_true", help="print the report as JSON")
    g = sub.add_parser("gui", help="walk recordings in a window and approve them into a collection")
    g.add_argument("--root", type=Path, required=True, help="data root holding the session directories")
    g.add_argument("--out", type=Path, help="save here without asking (default: a dialog in data/task_collections/)")
    g.add_argument(
        "--open",
        type=Path,
        dest="open_collection",
        metavar="FILE.json",
        help="start from an existing collection to edit it",
    )
    g.add_argument("--channels", type=int, default=8)
    args = p.parse_args(argv)
    if args.cmd == "build":
        from metalearn.builder import DEFAULT_PATIENT_KEY, build, print_report

        report = build(
            args.root,
            args.out,
            include=args.include,
            exclude=args.exclude,
            split=args.split,
            holdout=args.holdout,
            holdout_sessions=args.holdout_sessions,
            patient_key=args.patient_key or DEFAULT_PATIENT_KEY,
            channels=args.channels,
        )
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print_report(report)
        return 0
    if args.cmd == "gui":
        from metalearn.gui import run_gui

        return run_gui(args.root, out=args.out, open_collection=args.open_collection, channels=args.channels)
    report = validate_collection(args.collection, args.root, channels=args.channels)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_validation(report)
    return 0 if report["valid"] else 1


def validate_collection(collection: Path, root: Path, channels: int = 8) -> dict:
    """Check every task; collect per-task figures or the one-line error. Never raises for a bad
    task (only for an unreadable collection)."""
    from metalearn.tasks import load_collection, load_task

    refs = load_collection(collection)
    tasks = []
    for ref in refs:
        entry: dict = {"session": ref.session, "condition": ref.condition, "path": str(ref.path(root))}
        try:
            task = load_task(root, ref, channels=channels)
        except MetaEMGError as exc:
            entry.update(valid=False, error=str(exc))
        else:
            rec = task.recording
            entry.update(
                valid=True,
                samples=rec.n_samples,
                sample_rate=round(rec.sample_rate, 3),
                duration_s=round(rec.duration, 3),
                channels=rec.n_channels,
                label_counts=rec.label_counts(),
                split_index=task.split,
                support_samples=task.split,
                query_samples=rec.n_samples - task.split,
            )
        tasks.append(entry)
    n_bad = sum(not t["valid"] for t in tasks)
    return {
        "collection": str(collection),
        "root": str(root),
        "tasks": tasks,
        "n_tasks": len(tasks),
        "n_invalid": n_bad,
        "valid": bool(tasks) and n_bad == 0,
    }


def print_validation(report: dict, file=sys.stdout) -> None:
    head = (
        f"{'task':<44} {'samples':>8} {'rate Hz':>8} {'ch':>3} "
        + " ".join(f"{n:>6}" for n in INTENTS)
        + f" {'split':>7}"
    )
    print(head, file=file)
    for t in report["tasks"]:
        name = f"{t['session']}/{t['condition']}"
        if t["valid"]:
            counts = " ".join(f"{t['label_counts'][n]:>6}" for n in INTENTS)
            print(
                f"{name:<44} {t['samples']:>8} {t['sample_rate']:>8.1f} {t['channels']:>3} {counts} "
                f"{t['split_index']:>7}",
                file=file,
            )
        else:
            print(f"{name:<44} INVALID: {t['error']}", file=file)
    status = "all valid" if report["valid"] else f"{report['n_invalid']} invalid"
    if not report["tasks"]:
        status = "empty collection"
    print(f"{report['n_tasks']} tasks, {status}", file=file)
