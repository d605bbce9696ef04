import json

import numpy as np
import pytest
from conftest import myhand_like_csv

from metaemg.errors import ConfigError, DataError
from metaemg.signal import SignalSpec
from metalearn.recording import Recording, write_recording
from metalearn.tasks import (
    Scaler,
    TaskRef,
    find_split,
    load_collection,
    load_task,
    save_collection,
    task_windows,
)


def _labels(*segments):
    return np.concatenate([np.full(n, v) for v, n in segments])


def test_split_lands_on_the_fifth_change():
    labels = _labels((0, 10), (1, 5), (0, 7), (2, 6), (0, 4), (1, 5), (0, 3))
    assert find_split(labels) == 10 + 5 + 7 + 6 + 4


def test_split_only_needs_the_start_of_the_second_open():
    labels = _labels((0, 3), (1, 3), (0, 3), (2, 3), (0, 3), (1, 1))
    assert find_split(labels) == 15


@pytest.mark.parametrize(
    "segments, row, seen",
    [
        (((0, 4), (2, 4), (0, 4), (1, 4), (0, 4), (1, 4)), 5, "0 -> 2"),  # close before open
        (((1, 4), (0, 4), (2, 4), (0, 4), (1, 4), (0, 4)), 5, "1 -> 0"),  # starts open
        (((0, 4), (1, 4), (2, 4), (0, 4), (1, 4), (0, 4)), 9, "0 -> 1 -> 2"),  # open straight to close
        (((0, 4), (1, 4), (0, 4), (2, 4), (0, 4), (2, 4)), 21, "0 -> 1 -> 0 -> 2 -> 0 -> 2"),  # 2nd cycle closes
    ],
)
def test_wrong_order_names_row_and_labels(segments, row, seen):
    with pytest.raises(DataError) as info:
        find_split(_labels(*segments), path="p.csv")
    msg = str(info.value)
    assert msg.startswith(f"p.csv, row {row}: ")
    assert f"labels seen: {seen})" in msg


def test_too_few_changes():
    with pytest.raises(DataError, match=r"change only 3 time\(s\) \(0 -> 1 -> 0 -> 2\)"):
        find_split(_labels((0, 4), (1, 4), (0, 4), (2, 4)), path="p.csv")
    with pytest.raises(DataError, match="change only 0 time"):
        find_split(np.zeros(10, dtype=int))


def test_collection_round_trip_in_the_research_format(tmp_path):
    refs = [TaskRef("2023_03_14_p4", "111_rotation_integral"), TaskRef("2023_03_15_p5", "112_x")]
    path = save_collection(tmp_path / "c.json", refs)
    assert json.loads(path.read_text()) == [
        {"session": "2023_03_14_p4", "condition": "111_rotation_integral"},
        {"session": "2023_03_15_p5", "condition": "112_x"},
    ]
    assert load_collection(path) == refs


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("{", "not valid JSON (line 1"),
        ('{"session": "a"}', "a JSON list, got dict"),
        ('[{"session": "a"}]', "item 0 must be an object with 'session' and 'condition'"),
        ('[{"session": "a", "condition": 3}]', "item 0: session and condition must be non-empty strings"),
    ],
)
def test_bad_collections(tmp_path, text, fragment):
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        load_collection(path)
    assert str(info.value).startswith(str(path)) and fragment in str(info.value)


def test_task_whose_file_is_missing(tmp_path):
    with pytest.raises(DataError, match=r"s_p4/p4_c1.csv: recording file not found"):
        load_task(tmp_path, TaskRef("s_p4", "c1"))


def test_myhand_like_task_splits_and_windows(tmp_path):
    myhand_like_csv(tmp_path / "2023_03_14_p4" / "p4_111_a.csv", seconds=35)
    task = load_task(tmp_path, TaskRef("2023_03_14_p4", "111_a"))
    assert task.split == 2500  # fifth change: start of the second "open" segment (5/7 of 3500)
    assert task.support.n_samples + task.query.n_samples == task.recording.n_samples
    tw = task_windows(task, SignalSpec.myhand(), scale="standard")
    assert tw.x_support.shape[1:] == (25, 8)
    assert len(tw.y_support) == len(tw.x_support) and len(tw.y_query) == len(tw.x_query)
    assert set(np.unique(tw.y_support)) == {0, 1, 2}


def test_scaler_is_fitted_on_the_support_part_only(tmp_path):
    n = 1000
    labels = _labels((0, 200), (1, 200), (0, 200), (2, 200), (0, 100), (1, 100))
    emg = np.full((n, 8), 100.0)
    emg[:800] += np.random.default_rng(0).normal(0, 10, (800, 8))
    emg[900:] = 900.0  # a huge query part must not move the scaler
    write_recording(tmp_path / "s_p1" / "p1_c.csv", Recording(np.arange(n) / 100, emg, labels))
    task = load_task(tmp_path, TaskRef("s_p1", "c"))
    assert task.split == 900
    tw = task_windows(task, SignalSpec.myhand(), scale="minmax")
    support_raw = emg[:900] / 1000
    np.testing.assert_allclose(tw.scaler.offset, support_raw.min(axis=0))
    np.testing.assert_allclose(tw.scaler.offset + tw.scaler.scale, support_raw.max(axis=0))
    assert tw.x_query.max() > 1.5  # query values are scaled, not clipped


def test_window_label_is_its_last_sample(tmp_path):
    n = 600
    labels = _labels((0, 100), (1, 100), (0, 100), (2, 100), (0, 100), (1, 100))
    write_recording(tmp_path / "s_p1" / "p1_c.csv", Recording(np.arange(n) / 100, np.zeros((n, 8)), labels))
    tw = task_windows(load_task(tmp_path, TaskRef("s_p1", "c")), SignalSpec.myhand(window=25, stride=5))
    ends = 24 + 5 * np.arange(len(tw.y_support) + len(tw.y_query))
    np.testing.assert_array_equal(np.concatenate([tw.y_support, tw.y_query]), labels[ends])
    assert (ends[: len(tw.y_support)] < 500).all() and (ends[len(tw.y_support) :] >= 500).all()


def test_scaler_kinds():
    x = np.array([[0.0, 10.0], [2.0, 30.0]])
    assert Scaler.fit(None, x).kind == "none"
    assert Scaler.fit(True, x).kind == "standard"
    assert [Scaler.fit(k, x).kind for k in (0, 1, 2)] == ["none", "standard", "minmax"]  # research config ints
    np.testing.assert_allclose(Scaler.fit("standard", x).transform(x), [[-1, -1], [1, 1]])
    np.testing.assert_allclose(Scaler.fit("minmax", x).transform(x), [[0, 0], [1, 1]])
    with pytest.raises(ConfigError, match="scale must be one of none, standard, minmax"):
        Scaler.fit("robust", x)


def test_rate_mismatch_is_refused(tmp_path):
    myhand_like_csv(tmp_path / "s_p2" / "p2_c.csv", seconds=20)
    with pytest.raises(DataError, match=r"p2_c.csv: sample rate 10\d.\d Hz does not match the signal chain's 200 Hz"):
        task_windows(load_task(tmp_path, TaskRef("s_p2", "c")), SignalSpec.myo())
