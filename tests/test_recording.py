from pathlib import Path

import numpy as np
import pytest
from conftest import myhand_like_csv

from metaemg.errors import DataError
from metalearn.recording import Recording, read_recording, recording_path, write_recording

HEADER = ",time_elapsed,emg0,emg1,emg2,emg3,emg4,emg5,emg6,emg7,gt"


def _rows(n=6, labels=(0, 0, 1, 1, 0, 0)):
    return [f"{i},{i * 0.005},{','.join(str(i + c) for c in range(8))},{labels[i]}" for i in range(n)]


def _write(tmp_path, lines, name="s1_c.csv"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


def test_recording_path_uses_last_two_characters_of_the_session():
    p = recording_path("/data", "2023_03_14_p4", "111_rotation_integral")
    assert p == Path("/data/2023_03_14_p4/p4_111_rotation_integral.csv")


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    rec = Recording(np.arange(100) / 200, rng.integers(-128, 128, (100, 8)), np.repeat([0, 1, 0, 2], 25))
    path = write_recording(tmp_path / "s" / "ab_x.csv", rec, extra={"current_task": np.array(["t"] * 100)})
    back = read_recording(path)
    np.testing.assert_array_equal(back.emg, rec.emg)
    np.testing.assert_array_equal(back.labels, rec.labels)
    np.testing.assert_allclose(back.time, rec.time)
    assert back.sample_rate == pytest.approx(200.0)
    assert back.label_counts() == {"relax": 50, "open": 25, "close": 25}
    assert not list(tmp_path.rglob("*.tmp"))


def test_myhand_shaped_file_is_read_with_its_real_rate(tmp_path):
    path = myhand_like_csv(tmp_path / "2023_03_14_p4" / "p4_111_rotation_integral.csv", seconds=30)
    rec = read_recording(path)
    assert rec.n_channels == 8
    assert rec.n_samples == 3000
    assert rec.sample_rate == pytest.approx(100.0, rel=0.03)
    assert rec.emg.min() >= 0 and rec.emg.max() <= 1000
    repeated = (np.diff(rec.emg, axis=0) == 0).all(axis=1).mean()
    assert repeated > 0.4  # the armband's repeated rows are kept as they are


def test_repeated_timestamps_do_not_break_the_rate(tmp_path):
    lines = [HEADER] + [f"{i},{(i // 2) * 0.01},{','.join('5' * 8)},0" for i in range(40)]
    rec = read_recording(_write(tmp_path, lines))
    assert rec.sample_rate == pytest.approx(100.0)


@pytest.mark.parametrize(
    "mutate, fragment, row",
    [
        (lambda h, r: (h.replace(",gt", ""), [x.rsplit(",", 1)[0] for x in r]), "missing column(s) gt", None),
        (
            lambda h, r: (h.replace(",emg7", ""), [x.rsplit(",", 2)[0] + "," + x.rsplit(",", 1)[1] for x in r]),
            "missing column(s) emg7",
            None,
        ),
        (
            lambda h, r: (h.replace(",gt", ",emg8,gt"), [x.rsplit(",", 1)[0] + ",1," + x.rsplit(",", 1)[1] for x in r]),
            "extra column(s) emg8",
            None,
        ),
        (lambda h, r: (h, [*r[:3], r[3].replace(",3,4,", ",nan,4,", 1), *r[4:]]), "NaN", 4),
        (lambda h, r: (h, [*r[:2], ",,,,,,,,,,", *r[3:]]), "empty or short row", 3),
        (lambda h, r: (h, [*r[:4], r[4].replace(",0.02,", ",0.001,"), *r[5:]]), "goes backwards", 5),
        (lambda h, r: (h, [*r[:1], r[1][:-1] + "4", *r[2:]]), "label 4 is outside {0,1,2,3}", 2),
        (lambda h, r: (h, [*r[:1], r[1].replace(",1,2,", ",x,2,", 1), *r[2:]]), "is not a number", 2),
    ],
    ids=["no-gt", "seven-channels", "nine-channels", "nan", "empty-row", "time-backwards", "label-4", "text"],
)
def test_bad_input_names_file_row_and_problem(tmp_path, mutate, fragment, row):
    header, rows = mutate(HEADER, _rows())
    path = _write(tmp_path, [header, *rows])
    with pytest.raises(DataError) as info:
        read_recording(path)
    msg = str(info.value)
    assert str(path) in msg and fragment in msg, msg
    assert "\n" not in msg
    if row is not None:
        assert f"row {row}:" in msg
        assert info.value.row == row


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="empty file"):
        read_recording(_write(tmp_path, [""]))
    with pytest.raises(DataError, match="recording file not found"):
        read_recording(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="too few data rows"):
        read_recording(_write(tmp_path, [HEADER]))


def test_failed_write_leaves_old_file_intact(tmp_path):
    rec = Recording(np.arange(4) / 100, np.zeros((4, 8)), np.zeros(4))
    path = write_recording(tmp_path / "a_b.csv", rec)
    before = path.read_bytes()
    with pytest.raises(DataError):
        write_recording(path, rec, extra={"current_task": np.array(["x"])})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a_b.csv"]
