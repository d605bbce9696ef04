"""The data command-line tools as a user runs them: real subprocesses, exit codes, output."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import myhand_like_csv

from metalearn.tasks import TaskRef, save_collection

BIN = Path(sys.executable).parent


def run(*args, check_rc=None):
    proc = subprocess.run([str(BIN / args[0]), *map(str, args[1:])], capture_output=True, text=True, timeout=120)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stdout + proc.stderr
    return proc


def test_validate_prints_per_task_figures_and_json(myo_data):
    coll = myo_data / "task_collections" / "myo_eval_training0.json"
    table = run("metaemg-tasks", "validate", coll, "--root", myo_data, check_rc=0).stdout
    assert "myo_Male13_training0/myo_rorcr" in table and "3 tasks, all valid" in table
    doc = json.loads(run("metaemg-tasks", "validate", coll, "--root", myo_data, "--json", check_rc=0).stdout)
    assert doc["valid"] is True and doc["n_tasks"] == 3
    t = doc["tasks"][0]
    assert t["channels"] == 8 and t["sample_rate"] == pytest.approx(200.0)
    assert set(t["label_counts"]) == {"relax", "open", "close"}
    assert 0 < t["split_index"] == t["support_samples"] < t["samples"]


def test_validate_reports_each_bad_task_and_exits_1(tmp_path):
    myhand_like_csv(tmp_path / "2023_03_14_p4" / "p4_111_ok.csv", seconds=20)
    bad = myhand_like_csv(tmp_path / "2023_03_14_p4" / "p4_112_bad.csv", seconds=20)
    bad.write_text(bad.read_text().replace(",rorcr\n", ",rorcr\n", 1).replace("\n5,", "\n5,nan", 1))
    coll = save_collection(
        tmp_path / "c.json",
        [
            TaskRef("2023_03_14_p4", "111_ok"),
            TaskRef("2023_03_14_p4", "112_bad"),
            TaskRef("2023_03_14_p4", "113_missing"),
        ],
    )
    proc = run("metaemg-tasks", "validate", coll, "--root", tmp_path, "--json", check_rc=1)
    doc = json.loads(proc.stdout)
    assert [t["valid"] for t in doc["tasks"]] == [True, False, False]
    assert "p4_113_missing.csv: recording file not found" in doc["tasks"][2]["error"]
    assert doc["tasks"][0]["sample_rate"] == pytest.approx(100, rel=0.03)
    table = run("metaemg-tasks", "validate", coll, "--root", tmp_path, check_rc=1).stdout
    assert "2 invalid" in table


def test_unreadable_collection_is_one_line_no_traceback(tmp_path):
    (tmp_path / "c.json").write_text("[{")
    proc = run("metaemg-tasks", "validate", tmp_path / "c.json", "--root", tmp_path, check_rc=2)
    assert proc.stderr.count("\n") == 1 and "c.json: not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_import_command(myo_src, tmp_path):
    proc = run("metaemg-import", "myoarmband", myo_src, tmp_path / "out", "--quiet", check_rc=0)
    assert "imported 31 recordings" in proc.stdout
    assert (tmp_path / "out" / "task_collections" / "myo_pretrain.json").is_file()


def test_import_of_a_wrong_directory(tmp_path):
    proc = run("metaemg-import", "myoarmband", tmp_path, tmp_path / "out", check_rc=2)
    assert "not a Myo armband dataset" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
