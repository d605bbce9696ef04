"""Shared fixtures. Real data lives outside the repo: ../shared/datasets/myoarmband relative to
the project root, or METAEMG_MYO_ROOT. Tests that need it fail (never skip) when it is missing.
The suite exports METAEMG_MYO_ROOT so that every command it starts finds the same dataset,
whatever its working directory."""

from __future__ import annotations

import fcntl
import gc
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def myo_root() -> Path:
    return Path(os.environ.get("METAEMG_MYO_ROOT", REPO.parent / "shared" / "datasets" / "myoarmband"))


os.environ["METAEMG_MYO_ROOT"] = str(myo_root())


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker more than this process may use cores. Much of the suite is real
    processes waiting on real time (the daemon arming on a measured rate, a calibration's cues);
    on 2 cores a third worker fills that time (docs/evidence.md, "The test suite")."""
    return len(os.sched_getaffinity(0)) + 1


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: one torch thread is as fast, and far faster when other jobs share the cores."""
    from metalearn.maml import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def myo_src() -> Path:
    root = myo_root()
    if not (root / "EvaluationDataset").is_dir():
        pytest.fail(f"the Myo armband dataset is missing at {root} (set METAEMG_MYO_ROOT)")
    return root


@pytest.fixture(scope="session")
def once(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, Callable[[Path], Path]], Path]:
    """``once(name, build)``: the path ``build(directory)`` returned, built once per test run in a
    directory of its own. The xdist workers share the run's directory: the first one builds while
    the others wait on its lock, so that no worker reads the 22 subjects again."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # pytest-N/, the workers' basetemps are pytest-N/gwK

    def built(name: str, build: Callable[[Path], Path]) -> Path:
        out, done = root / name, root / f"{name}.done"
        with open(root / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if not done.exists():
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                done.write_text(str(build(out)))
        return Path(done.read_text())

    return built


@pytest.fixture(scope="session")
def myo_data(myo_src: Path, once) -> Path:
    """The real Myo dataset imported once per test run."""
    from metalearn.myo import import_myoarmband

    def build(out: Path) -> Path:
        import_myoarmband(myo_src, out)
        return out

    return once("myo", build)


def myhand_like_csv(
    path: Path, *, seconds: float = 40.0, rate: float = 100.0, seed: int = 0, labels: np.ndarray | None = None
) -> Path:
    """Write a file shaped like a real MyHand armband recording: pandas index column,
    time_elapsed with jitter, current_time, emg0..7 envelopes 0..1000 held over repeated rows,
    gt, current_task; protocol relax-open-relax-close-relax-open-relax."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.cumsum(rng.uniform(0.8, 1.2, n) / rate)
    t -= t[0]
    if labels is None:
        seg = np.array([0, 1, 0, 2, 0, 1, 0])
        labels = seg[np.minimum((np.arange(n) * len(seg)) // n, len(seg) - 1)]
    held = np.repeat(rng.integers(0, 1000, (n // 2 + 1, 8)), 2, axis=0)[:n]
    lines = [",time_elapsed,current_time,emg0,emg1,emg2,emg3,emg4,emg5,emg6,emg7,gt,current_task"]
    for i in range(n):
        emg = ",".join(str(v) for v in held[i])
        lines.append(f"{i},{float(t[i])!r},2023-03-14 10:00:{i / rate:06.3f},{emg},{labels[i]},rorcr")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# Modules whose tests all read one expensive module fixture (the controller's 25 s end-to-end
# scenario) run first: -n's work stealing takes tests from the end of a worker's queue, and a
# worker that stole one of them ran the whole scenario again.
FIRST = ("tests/test_controller_e2e.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in FIRST)  # stable: the rest keep their order


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collection built (torch, every test module: most of a worker's heap) is frozen, as the
    daemon freezes its own after start-up: the collector's full passes no longer scan it (a third
    less time in the collector: docs/evidence.md, "The test suite")."""
    gc.freeze()
