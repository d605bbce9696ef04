"""The Myo armband dataset (real EMG) through the importer, the split rule and the chain."""

import shutil

import numpy as np
import pytest

from metaemg.errors import DataError
from metaemg.signal import SignalSpec
from metalearn.myo import CONDITION, import_myoarmband, read_dat
from metalearn.recording import read_recording
from metalearn.tasks import load_collection, load_task, task_windows


def test_collections_cover_the_dataset(myo_data):
    colls = {p.name: load_collection(p) for p in (myo_data / "task_collections").glob("*.json")}
    assert {k: len(v) for k, v in colls.items()} == {
        "myo_pretrain.json": 22,
        "myo_eval_training0.json": 3,
        "myo_eval_test.json": 6,
    }
    pre = {r.session for r in colls["myo_pretrain.json"]}
    assert not any("Male13" in s or "Male14" in s or "Male15" in s for s in pre)
    assert {r.session for r in colls["myo_eval_test.json"]} == {
        f"myo_Male{s}_Test{k}" for s in (13, 14, 15) for k in (0, 1)
    }


def test_every_imported_recording_is_a_valid_task(myo_data):
    for coll in (myo_data / "task_collections").glob("*.json"):
        for ref in load_collection(coll):
            task = load_task(myo_data, ref)
            rec = task.recording
            assert rec.sample_rate == pytest.approx(200.0)
            assert rec.emg.min() >= -128 and rec.emg.max() <= 127
            counts = rec.label_counts()
            assert min(counts.values()) > 0.3 * rec.n_samples / 3
            # support = the first cycle (+ the next relax): about a quarter of the recording
            assert 0.2 < task.split / rec.n_samples < 0.35


def test_segments_are_the_source_gestures(myo_src, myo_data):
    rec = read_recording(myo_data / "myo_Male14_Test1" / f"t1_{CONDITION}.csv")
    src = myo_src / "EvaluationDataset" / "Male14" / "Test1"
    neutral0, open0, close0 = (read_dat(src / f"classe_{i}.dat") for i in (0, 6, 5))
    half = len(np.array_split(neutral0, 2)[0])
    np.testing.assert_array_equal(rec.emg[:half], neutral0[:half])
    np.testing.assert_array_equal(rec.emg[half : half + len(open0)], open0)
    assert set(rec.labels[half : half + len(open0)]) == {1}
    start_close = len(neutral0) + len(open0)
    np.testing.assert_array_equal(rec.emg[start_close : start_close + len(close0)], close0)
    assert set(rec.labels[start_close : start_close + len(close0)]) == {2}
    assert rec.labels[0] == 0 and rec.labels[-1] == 0


def test_other_gestures_are_exported_beside(myo_data):
    path = myo_data / "other_gestures" / "myo_Male13_Test0.csv"
    lines = path.read_text().splitlines()
    assert lines[0] == "time_elapsed,emg0,emg1,emg2,emg3,emg4,emg5,emg6,emg7,gesture,gesture_name"
    codes = {line.split(",")[9] for line in lines[1:]}
    assert codes == {"1", "2", "3", "4"}


def test_real_windows_have_all_intents_on_both_sides(myo_data):
    task = load_task(myo_data, load_collection(myo_data / "task_collections" / "myo_eval_training0.json")[0])
    tw = task_windows(task, SignalSpec.myo(), scale="none")
    assert set(np.unique(tw.y_support)) == {0, 1, 2} == set(np.unique(tw.y_query))
    # the envelope separates the intents: close/open windows carry more energy than relax
    energy = {k: np.abs(tw.x_query[tw.y_query == k]).mean() for k in (0, 1, 2)}
    assert energy[1] > energy[0] and energy[2] > energy[0]


def test_a_bad_source_file_stops_the_import_before_anything_is_written(myo_src, tmp_path):
    src = tmp_path / "src"
    sess = src / "EvaluationDataset" / "Male13" / "Test0"
    shutil.copytree(myo_src / "EvaluationDataset" / "Male13" / "Test0", sess)
    bad = sess / "classe_12.dat"
    bad.write_bytes(bad.read_bytes()[:-3])
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"classe_12.dat: \d+ int16 values is not a whole number"):
        import_myoarmband(src, out)
    assert not out.exists()
