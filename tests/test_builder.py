"""metaemg-tasks build: discovery, checks, globs, splits, and the command itself."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import myhand_like_csv

from metaemg.errors import DataError
from metalearn.builder import (
    build,
    discover,
    patient_of,
    session_sort_key,
    split_by_session,
    split_cross_patient,
)
from metalearn.tasks import TaskRef, load_collection, load_task

REPO = Path(__file__).resolve().parents[1]


def make_root(tmp: Path) -> Path:
    """Research layout: three patients (p1, p2, p4), p1 and p2 with two dated sessions; one
    recording without a complete cycle and one unreadable file."""
    root = tmp / "data"
    for i, session in enumerate(["2023_03_14_p1", "2023_04_02_p1", "2023_03_15_p2", "2023_05_01_p2", "2023_03_20_p4"]):
        for cond in ("rorcr", "rorcr_weight"):
            myhand_like_csv(root / session / f"{session[-2:]}_{cond}.csv", seconds=8, seed=i)
    n = 800
    bad = np.where(np.arange(n) < n // 2, 0, 1)  # relax then open only: no cycle
    myhand_like_csv(root / "2023_03_20_p4" / "p4_open_only.csv", seconds=8, labels=bad)
    (root / "2023_04_02_p1" / "p1_broken.csv").write_text("not,a,recording\n1,2\n")
    (root / "task_collections").mkdir()
    (root / "task_collections" / "x.json").write_text("[]")
    return root


def test_discover_and_sort_order(tmp_path):
    root = make_root(tmp_path)
    sessions = discover(root)
    assert list(sessions) == ["2023_03_14_p1", "2023_03_15_p2", "2023_03_20_p4", "2023_04_02_p1", "2023_05_01_p2"]
    assert [r.condition for r in sessions["2023_04_02_p1"]] == ["broken", "rorcr", "rorcr_weight"]
    assert sorted(["myo_Male13_Test1", "myo_Male13_training0", "myo_Male13_Test0"], key=session_sort_key) == [
        "myo_Male13_training0",
        "myo_Male13_Test0",
        "myo_Male13_Test1",
    ]
    assert sorted(["s10", "s9", "S2"], key=session_sort_key) == ["S2", "s9", "s10"]


def test_patient_key_default_and_custom():
    assert patient_of("2023_03_14_p4") == "p4"
    assert patient_of("myo_Male13_Test0") == "Male13"
    assert patient_of("myo_Female0_training0") == "Female0"
    assert patient_of("sub-07_ses-2", r"sub-(\d+)") == "07"
    with pytest.raises(DataError, match="does not match"):
        patient_of("abc", r"sub-(\d+)")


def test_splits_on_refs():
    refs = [TaskRef(s, "c") for s in ("a_p1", "b_p1", "c_p1", "a_p2", "b_p2", "a_p3")]
    train, test, who = split_cross_patient(refs, "p2")
    assert who == "p2" and {r.session for r in test} == {"a_p2", "b_p2"} and len(train) == 4
    assert split_cross_patient(refs)[2] == "p3"
    with pytest.raises(DataError, match="not one of the patients"):
        split_cross_patient(refs, "p9")
    train, test = split_by_session(refs, last=1)
    assert {r.session for r in test} == {"c_p1", "b_p2"}  # p3 has one session: stays in train
    train, test = split_by_session(refs, last=2)
    assert {r.session for r in test} == {"b_p1", "c_p1"}


def test_build_writes_valid_collections_and_reports_invalid(tmp_path):
    root = make_root(tmp_path)
    report = build(root, tmp_path / "out", split="cross-patient", holdout="p2")
    assert {b["task"] for b in report["invalid"]} == {"2023_03_20_p4/open_only", "2023_04_02_p1/broken"}
    assert "no complete relax-open-relax-close-relax cycle" in next(
        b["error"] for b in report["invalid"] if "open_only" in b["task"]
    )
    all_refs = load_collection(tmp_path / "out" / "all.json")
    test = load_collection(tmp_path / "out" / "test.json")
    train = load_collection(tmp_path / "out" / "train.json")
    assert len(all_refs) == 10 and len(test) == 4 and len(train) == 6
    assert all(r.session.endswith("_p2") for r in test)
    assert sorted(train + test) == sorted(all_refs)
    for ref in all_refs:  # every written task loads (trainable)
        load_task(root, ref)


def test_build_by_session_with_globs(tmp_path):
    root = make_root(tmp_path)
    report = build(root, tmp_path / "out", split="by-session", exclude=["*/*weight"])
    assert report["holdout_sessions"] == ["2023_04_02_p1", "2023_05_01_p2"]
    test = load_collection(tmp_path / "out" / "test.json")
    assert [str(r) for r in test] == ["2023_04_02_p1/rorcr", "2023_05_01_p2/rorcr"]
    report = build(root, tmp_path / "only", include=["*_p4/*"])
    assert report["valid"] == 2 and not (tmp_path / "only" / "train.json").exists()
    with pytest.raises(DataError, match="match the include/exclude"):
        build(root, tmp_path / "none", include=["nothing*"])


def test_build_command(tmp_path):
    root = make_root(tmp_path)
    from metalearn.cli import tasks_main

    out = tmp_path / "out"
    rc = tasks_main(
        [
            "build",
            "--root",
            str(root),
            "--out",
            str(out),
            "--split",
            "cross-patient",
            "--patient-key",
            r"_(p\d)$",
            "--holdout",
            "p4",
            "--json",
        ]
    )
    assert rc == 0
    assert [str(r) for r in load_collection(out / "test.json")] == ["2023_03_20_p4/rorcr", "2023_03_20_p4/rorcr_weight"]
    proc = subprocess.run(
        [str(REPO / ".venv/bin/metaemg-tasks"), "build", "--root", str(tmp_path / "missing"), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    # the written collection validates with the existing command
    proc = subprocess.run(
        [str(REPO / ".venv/bin/metaemg-tasks"), "validate", str(out / "all.json"), "--root", str(root), "--json"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n_tasks"] == 10
