"""metaemg-train as a user runs it: a real Hydra app in a subprocess, tiny configs, real data."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import myhand_like_csv

from metalearn.checkpoint import latest_checkpoint, load_checkpoint
from metalearn.export import resolve_checkpoint
from metalearn.tasks import TaskRef, load_collection, save_collection

BIN = Path(sys.executable).parent
TINY = [
    "test.meta_steps=3",
    "test.batch_size=8",
    "test.time_seq_len=20",
    "test.stride=10",
    "test.fc_units=16",
    "test.inner_steps=2",
    "test.converge_steps=[1,3]",
    "test.n_train_tasks=2",
    "test.n_val_tasks=1",
]


@pytest.fixture(scope="module")
def colls(myo_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("colls")
    pre = load_collection(myo_data / "task_collections" / "myo_pretrain.json")
    test = load_collection(myo_data / "task_collections" / "myo_eval_test.json")
    return {
        "train": save_collection(d / "train.json", pre[:4]),
        "test": save_collection(d / "test.json", test[:2]),
        "two": save_collection(d / "two.json", pre[:2]),
        "root": myo_data,
    }


def tiny(colls, *extra: str) -> list[str]:
    """The overrides of a TINY run on the fixture's collections, then ``extra``."""
    return [
        f"test.train_collection_json={colls['train']}",
        f"test.test_collection_json={colls['test']}",
        f"test.data_root={colls['root']}",
        *TINY,
        *extra,
    ]


def train(colls, run_dir, *extra, check_rc=0, cwd=None):
    """``metaemg-train`` as a subprocess: a TINY run into ``run_dir``."""
    args = [str(BIN / "metaemg-train"), *tiny(colls, *extra), f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=cwd)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stdout + proc.stderr
    return proc


def _val_losses(run: Path) -> list[float]:
    return [e["val_loss"] for e in json.loads((run / "results" / "meta_training_log.json").read_text())]


# (phase, steps, unit) of a TINY run with a test collection: each says its first step with an
# ETA and its last with its time, in this order
PHASES = [
    ("loading the training collection", 4, "tasks"),
    ("loading the test collection", 2, "tasks"),
    ("meta-training", 3, "meta-epochs"),
    ("baselines: B2 pre-training on the training tasks pooled", 6, "updates"),
    ("baselines: B1, B2 and the meta-model adapted to 2 test tasks", 6, "adaptations"),
    ("convergence baselines: B1, B2 and the meta-model adapted to 2 test tasks at 1, 3 inner steps", 12, "adaptations"),
    ("saving the run", 3, "steps"),
]
LOG_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO   |WARNING|ERROR  ) ")  # levelname padded to 7


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _assert_the_run_explained_itself(run: Path, out: str) -> None:
    """Progress of every phase on stdout, the same lines in train.log, the accuracies recorded,
    the curves drawn, and the TensorBoard scalars written."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    lines = out.splitlines()
    assert lines[0] == f"run directory: {run} (this log: {run / 'train.log'})"
    order = []
    for phase, n, unit in PHASES:
        first = [i for i, line in enumerate(lines) if line.startswith(f"{phase}: 1/{n} {unit} (")]
        last = [i for i, line in enumerate(lines) if line.startswith(f"{phase}: {n}/{n} {unit} (100%), done in ")]
        assert len(first) == 1 and len(last) == 1, (phase, out)
        assert re.search(r"\), \d+\.\d s elapsed, ETA \d+\.\d s", lines[first[0]]), lines[first[0]]
        order += [first[0], last[0]]
    assert order == sorted(order)
    log = (run / "train.log").read_text().splitlines()
    assert all(LOG_STAMP.match(line) for line in log), log
    assert [LOG_STAMP.sub("", line) for line in log] == lines  # the same lines, stamped
    history = json.loads((run / "results" / "meta_training_log.json").read_text())
    first_epoch = next(line for line in lines if line.startswith("meta-training: 1/3"))
    numbers = re.search(
        r"train loss ([\d.]+) accuracy ([\d.]+), validation loss ([\d.]+) accuracy ([\d.]+)$", first_epoch
    )
    assert numbers, first_epoch
    keys = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
    assert [float(v) for v in numbers.groups()] == pytest.approx([history[0][k] for k in keys], abs=5e-4)
    assert all(0 < e["train_accuracy"] <= 1 and 0 < e["val_accuracy"] <= 1 for e in history)
    width, height = _png_size(run / "results" / "curves.png")  # two panels side by side
    assert width > 2 * height > 600
    tb = EventAccumulator(str(run / "tensorboard"))
    tb.Reload()
    methods = ["B1", "B2", "meta-model"]
    per_epoch = ["loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr/outer"]
    results = [f"{kind}/{m}" for kind in ("test_accuracy", "convergence") for m in methods]
    assert sorted(tb.Tags()["scalars"]) == sorted(per_epoch + results)
    for tag in per_epoch:
        assert [e.step for e in tb.Scalars(tag)] == [0, 1, 2], tag
    assert [e.value for e in tb.Scalars("accuracy/val")] == pytest.approx([e["val_accuracy"] for e in history])
    table = json.loads((run / "results" / "summary.json").read_text())["table"]
    for m in methods:
        assert [(e.step, e.value) for e in tb.Scalars(f"test_accuracy/{m}")] == [(2, pytest.approx(table[m]))]
        assert [e.step for e in tb.Scalars(f"convergence/{m}")] == [1, 3]


def test_a_run_writes_checkpoints_reports_and_resumes(colls, tmp_path, capsys):
    """Checkpoints: best.pt and the last test.keep_checkpoints meta-epochs' (2 here, then the
    default 3); export takes best.pt, a resume from the run directory its newest checkpoint. In
    this process, as the command composes and runs it (its own path: the research config file's
    test, the sweep, torchrun)."""
    from metalearn.train import run_composed

    run = tmp_path / "run"
    run_composed(_compose(tiny(colls, "test.keep_checkpoints=2")), run, tmp_path)
    out = capsys.readouterr().out
    assert "mean query accuracy after adaptation: B1" in out
    _assert_the_run_explained_itself(run, out)
    assert (
        "signal: preset myo (test.signal auto: the data's 200 Hz); window 20 samples (100 ms, set by "
        "test.time_seq_len), stride 10 samples (50 ms, set by test.stride)"
    ) in out
    assert f"data: 3 training tasks, 1 validation, from {colls['train']} in {colls['root']}; " in out
    assert f"2 test tasks from {colls['test']} in {colls['root']}" in out
    ckpts = sorted((run / "models").glob("epoch_*_loss_*.pt"))
    assert [p.name[:10] for p in ckpts] == ["epoch_0001", "epoch_0002"]  # epoch_0000 deleted
    assert sorted(p.name for p in (run / "models").iterdir()) == ["best.pt", *(p.name for p in ckpts)]
    losses = _val_losses(run)
    assert len(losses) == 3
    assert [float(p.stem.split("_loss_")[1]) for p in ckpts] == pytest.approx(losses[1:], abs=1e-4)
    assert resolve_checkpoint(run) == run / "models" / "best.pt"  # what metaemg-export RUN_DIR exports
    best = load_checkpoint(run / "models" / "best.pt")
    assert best["val_loss"] == pytest.approx(min(losses), abs=1e-6)
    assert best["meta_epoch"] == losses.index(min(losses))
    assert f"checkpoints: best.pt = meta-epoch {best['meta_epoch']} (what metaemg-export RUN_DIR takes)" in out
    assert "the last 2 meta-epochs' (test.keep_checkpoints), newest epoch_0002_loss_" in out
    summary = json.loads((run / "results" / "summary.json").read_text())
    assert summary["best_meta_epoch"] == best["meta_epoch"] and summary["kept_checkpoints"] == [str(p) for p in ckpts]
    assert best["model"]["kind"] == "dnn" and best["signal"]["window"] == 20
    assert best["config"]["time_seq_len"] == 20 and best["config"]["keep_checkpoints"] == 2
    assert best["inner"] == {"optimizer": "adam", "steps": 2, "lr": 0.01, "first_order": False, "batch_size": None}
    table = (run / "results" / "results_table.csv").read_text().splitlines()
    assert table[0].startswith("method,myo_") and table[0].endswith(",mean")
    assert [row.split(",")[0] for row in table[1:]] == ["B1", "B2", "meta-model"]
    assert all(0 <= float(v) <= 1 for row in table[1:] for v in row.split(",")[1:])
    conv = (run / "results" / "convergence.csv").read_text().splitlines()
    assert conv[0] == "method,1_steps,3_steps"
    logs = json.loads((run / "results" / "per_task_logs.json").read_text())
    assert set(logs["logs"]) == {"B1", "B2", "meta-model"}
    for png in ("res_barplot.png", "convergence.png"):
        assert min(_png_size(run / "results" / png)) > 300
    # resume from the run directory: its newest checkpoint, so meta-epoch 3 onwards; 4 written, 3 kept
    assert latest_checkpoint(run) == ckpts[-1]
    run2 = tmp_path / "run2"
    run_composed(
        _compose(tiny(colls, f"test.resume={run}", "test.meta_steps=7", "test.converge_baselines=false")),
        run2,
        tmp_path,
    )
    out = capsys.readouterr().out
    assert f"resuming from {ckpts[-1]}: meta-epoch 3 onwards" in out
    kept = sorted(p.name[:10] for p in (run2 / "models").glob("epoch_*"))
    assert kept == ["epoch_0004", "epoch_0005", "epoch_0006"]
    history = json.loads((run2 / "results" / "meta_training_log.json").read_text())
    assert [e["meta_epoch"] for e in history] == [3, 4, 5, 6]
    losses = [e["val_loss"] for e in history]
    best = load_checkpoint(resolve_checkpoint(run2))
    assert best["meta_epoch"] == 3 + losses.index(min(losses)) and best["val_loss"] == pytest.approx(min(losses))


def test_research_config_file_runs_unchanged(colls, tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "config.yaml").write_text(f"""test:
    inner_lr: 1e-4 #1e-4 #0.004
    outer_lr: 5e-4 #5e-5
    meta_steps: 2
    inner_steps: 3
    n_val_tasks: 0
    n_train_tasks: 1
    train_collection_json: '{colls["two"]}'
    test_collection_json: '{colls["test"]}'
    save: True
    wandb: True
    fc_units: 32
    batch_size: 32
    time_seq_len: 40
    stride: 20
    run_name: 'testing baseline model save'
    scale: 2 # 2 for minmax, 1 for standardization
    model: 'dnn'
    seed: 45
    device:
    rorcr_size: 1
    lr_cycle: 15
    lr_factor: 0.9
    converge_baselines: False
    data_root: '{colls["root"]}'

hydra:
    run:
        dir: data/expt_outputs/${{now:%Y-%m-%d}}/${{now:%H-%M-%S}}
""")
    proc = subprocess.run(
        [str(BIN / "metaemg-train"), "--config-path", str(conf), "--config-name", "config"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    runs = list((tmp_path / "data" / "expt_outputs").glob("*/*"))
    assert len(runs) == 1
    note = "note: test.wandb is true but wandb is not installed; logging locally only"
    assert proc.stderr.count(note) == 1 and (runs[0] / "train.log").read_text().count(f"WARNING {note}\n") == 1
    assert json.loads((runs[0] / "resolved_config.json").read_text())["test"]["scale"] == "minmax"
    assert "time_seq_len: 40" in (runs[0] / ".hydra" / "config.yaml").read_text()  # Hydra's own record
    assert (runs[0] / "results" / "results_table.csv").is_file()


# The research README's experiment config (its keys and layout; the one collection key
# task_collection_json, a relative path), saved as config.yml as the README does.
# The research README's config.yml ("Running..."), as written, without the explanations it puts in
# brackets after each value (../shared/docs/origin/metaemg-research-README.md); only the collection's
# absolute path is pointed at a fixture, relative to the config file
RESEARCH_README_CONFIG = """test:
    inner_lr: 1e-4
    outer_lr: 1e-4
    meta_steps: 3
    inner_steps: 15
    n_val_tasks: 3
    n_train_tasks: 3
    task_collection_json: 'tasks.json'
    save: True

hydra:
    run:
        dir: data/expt_outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}
"""


def test_the_research_readme_config_runs_unchanged(colls, tmp_path, capsys):
    """config.yml (not .yaml) found, composed over the defaults so test.data_root=... needs no +,
    task_collection_json taken as both collections (a note says so), and its relative path found
    next to the config file, not in the directory the command runs in. In this process (the
    command's own path is test_research_config_file_runs_unchanged)."""
    from hydra import compose, initialize_config_dir

    from metaemg.errors import ConfigError
    from metalearn.train import config_file, layered_argv, run_composed

    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "config.yml").write_text(RESEARCH_README_CONFIG)
    pre = load_collection(colls["root"] / "task_collections" / "myo_pretrain.json")
    save_collection(conf / "tasks.json", pre[:6])  # 3 held out for validation, 3 to train on
    quick = ["test.time_seq_len=20", "test.fc_units=16", "test.converge_baselines=false", "test.tensorboard=false"]
    given = ["--config-path", "conf", "--config-name", "config", f"test.data_root={colls['root']}", *quick]
    argv, path = layered_argv(given, tmp_path / "primary", tmp_path)
    assert path == conf / "config.yml"
    assert argv[-4:] == ["--config-path", str(tmp_path / "primary"), "--config-name", "config"]
    with initialize_config_dir(version_base="1.3", config_dir=str(tmp_path / "primary")):
        cfg = compose("config", overrides=argv[:-4])
    summary = run_composed(cfg, tmp_path / "run", tmp_path / "elsewhere", conf)
    out = capsys.readouterr().out
    assert (
        "note: test.task_collection_json (tasks.json) is the training and the test collection "
        "(no test.train_collection_json / test.test_collection_json)\n"
    ) in out
    assert f"from {conf / 'tasks.json'} in {colls['root']}; 6 test tasks from {conf / 'tasks.json'}" in out
    assert summary["meta_epochs"] == 3
    # the name as given, .yaml before .yml; none: one line naming both
    (conf / "config.yaml").write_text("test: {}")
    assert config_file(conf, "config") == conf / "config.yaml"
    assert config_file(conf, "config.yml") == conf / "config.yml"
    with pytest.raises(ConfigError, match=r"^no config file other.yaml or other.yml in /"):
        config_file(conf, "other")


def test_torchrun_two_processes_share_the_meta_batch(colls, tmp_path):
    """The real launcher: two gloo ranks share each meta-batch, rank 0 writes the outputs, and the
    weights after a meta-step equal those of one process to 1e-6. (Over more steps float32
    rounding, amplified by AdamW on near-zero gradients, lets them drift apart slowly.) On the
    CPU also where there is a GPU: two processes would need two. (A compiled meta-step changes no
    value: test_maml.py; compiling it in both ranks here took 8 s of CPU.)"""
    overrides = [
        f"test.train_collection_json={colls['train']}",
        f"test.data_root={colls['root']}",
        *TINY,
        "test.meta_steps=1",
        "test.converge_baselines=false",
        "test.device=cpu",
    ]
    # the one-process reference runs in this process (the same composition as the command)
    from metalearn.train import run_composed

    run_composed(_compose(overrides), tmp_path / "run1", tmp_path)
    weights = {1: load_checkpoint(next((tmp_path / "run1" / "models").glob("epoch_0000_loss_*.pt")))["state_dict"]}
    run = tmp_path / "run2"
    proc = subprocess.run(
        [
            str(BIN / "torchrun"),
            "--standalone",
            "--nproc_per_node=2",
            str(BIN / "metaemg-train"),
            *overrides,
            f"hydra.run.dir={run}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "GLOO_SOCKET_IFNAME": "lo"},
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("meta-training: 1 meta-epochs") == 1, proc.stdout
    assert "on cpu (x2)" in proc.stdout, proc.stdout
    (ckpt,) = (run / "models").glob("epoch_0000_loss_*.pt")
    weights[2] = load_checkpoint(ckpt)["state_dict"]
    for k, w in weights[1].items():
        torch.testing.assert_close(weights[2][k], w, atol=1e-6, rtol=0, msg=lambda m, k=k: f"{k}: {m}")


def test_sweep_runs_each_model_and_writes_a_summary(colls, tmp_path, capsys, monkeypatch):
    """Each job rewrites the sweep's summary (CSV, Markdown, PNG: every job's overrides and
    results); metaemg-train --summarize DIR rebuilds it."""
    from metalearn.train import main

    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [
            str(BIN / "metaemg-train"),
            "-m",
            f"test.train_collection_json={colls['train']}",
            f"test.test_collection_json={colls['test']}",
            f"test.data_root={colls['root']}",
            *TINY,
            "test.meta_steps=1",
            "test.converge_baselines=false",
            "test.model=dnn,cnn",
            "test.inner_batch_size=32",
            f"hydra.sweep.dir={sweep}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("sweep summary, the jobs so far: ") == 2
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").read_text().splitlines()))
    assert [(r["job"], r["test.model"], r["test.inner_batch_size"], r["status"]) for r in rows] == [
        ("0", "dnn", "32", "done"),
        ("1", "cnn", "32", "done"),
    ]
    for r in rows:
        summary = json.loads((sweep / r["job"] / "results" / "summary.json").read_text())
        assert float(r["best_val_loss"]) == pytest.approx(summary["best_val_loss"], abs=1e-6)
        for m in ("B1", "B2", "meta-model"):
            assert float(r[m]) == pytest.approx(summary["table"][m], abs=1e-4)
            assert 0 <= float(r[f"{m}_std"]) < 0.5
    md = (sweep / "sweep_summary.md").read_text().splitlines()
    table = [line for line in md if line.startswith("| ")]
    assert table[0] == "| job | test.model | meta-epochs | best val loss | train s | B1 | B2 | meta-model | status |"
    assert [row.split(" | ")[:2] for row in table[1:]] == [["| 0", "`dnn`"], ["| 1", "`cnn`"]]
    assert "`test.inner_batch_size=32`" in next(line for line in md if line.startswith("The same in every job: "))
    width, height = _png_size(sweep / "sweep_summary.png")
    assert width > 2 * height > 500  # accuracy and validation-loss panels
    # rebuilt from the job directories by the command
    expected = (sweep / "sweep_summary.csv").read_text()
    for name in ("sweep_summary.csv", "sweep_summary.md", "sweep_summary.png"):
        (sweep / name).unlink()
    monkeypatch.setattr(sys, "argv", ["metaemg-train", "--summarize", str(sweep)])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 0 and (sweep / "sweep_summary.csv").read_text() == expected
    assert capsys.readouterr().out.splitlines() == [
        str(sweep / "sweep_summary.csv"),
        str(sweep / "sweep_summary.md"),
        str(sweep / "sweep_summary.png"),
    ]
    monkeypatch.setattr(sys, "argv", ["metaemg-train", "--summarize", str(tmp_path)])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 2
    assert (
        capsys.readouterr().err
        == f"error: {tmp_path}: no sweep jobs in it (subdirectories with .hydra/overrides.yaml)\n"
    )
    ckpts = [load_checkpoint(sweep / str(i) / "models" / "best.pt") for i in (0, 1)]
    assert sorted(c["model"]["kind"] for c in ckpts) == ["cnn", "dnn"]
    assert [c["inner"]["batch_size"] for c in ckpts] == [32, 32]  # the research code's mini-batch inner loop
    for ckpt in ckpts:
        assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
        assert ckpt["verify_windows"].shape[1:] == (20, 8)


def test_feat_is_fitted_in_closed_form_exported_and_adapted_the_same_way(colls, tmp_path, capsys):
    """test.model=feat: one closed-form "meta-epoch" (the whitening, and the training subjects'
    other movements as non-intent classes), its inner settings carry the LDA head and the novelty
    rejection into the checkpoint and the model file, and B1/B2/meta-model are adapted that way.
    In this process (the command's own path is the other tests')."""
    from metalearn.export import export_onnx
    from metalearn.train import run_composed

    run = tmp_path / "run"
    feat = tiny(
        colls,
        "test.model=feat",
        "test.inner_steps=0",
        "test.lda_shrinkage=0.4",
        "test.lda_reject=3",
        "test.non_intent=true",
        "test.scale=none",
        "test.augment_rotation=true",
        "test.signal={preset: myo, rectify: false, envelope_hz: null}",
    )
    run_composed(_compose(feat), run, tmp_path)
    out = capsys.readouterr().out
    assert "model feat: the whitening is fitted in closed form over the 3 training tasks" in out
    assert "meta-training: 1 meta-epochs" in out
    assert "non-intent movements of 3 training tasks: decided relax at calibration" in out
    assert [p.name[:10] for p in (run / "models").glob("epoch_*.pt")] == ["epoch_0000"]
    best = load_checkpoint(run / "models" / "best.pt")
    assert best["inner"] == {
        "optimizer": "adam",
        "steps": 0,
        "lr": 0.01,
        "first_order": False,
        "batch_size": None,
        "head": "lda",
        "shrinkage": 0.4,
        "reject": 3.0,
    }
    assert best["signal"]["rectify"] is False and best["signal"]["envelope_hz"] is None
    whiten = best["state_dict"]["whiten"]
    assert not torch.allclose(whiten, torch.eye(len(whiten)))  # learned, not the identity
    assert not best["state_dict"]["head.weight"].any()  # no head until a wearer's clip fits one
    assert best["state_dict"]["other_means"].abs().sum(dim=1).min() > 0  # four wrist movements
    assert float(best["state_dict"]["other_log_prior"]) == -18.0
    rows = {
        r.split(",")[0]: [float(v) for v in r.split(",")[1:]]
        for r in (run / "results" / "results_table.csv").read_text().splitlines()[1:]
    }
    assert set(rows) == {"B1", "B2", "meta-model"} and all(acc[-1] > 0.8 for acc in rows.values())
    from metaemg.modelfile import read_model_info

    info = read_model_info(export_onnx(run, tmp_path / "feat.onnx"))
    assert info.kind == "feat" and info.inner["head"] == "lda" and info.inner["shrinkage"] == 0.4
    assert info.inner["reject"] == 3.0


def _compose(overrides: list[str], name: str = "config"):
    """The command's Hydra composition, in this process."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(version_base="1.3", config_module="metalearn.conf"):
        return compose(name, overrides=overrides)


def _train_config(overrides: list[str], name: str = "config"):
    from omegaconf import OmegaConf

    from metalearn.config import TrainConfig

    container = OmegaConf.to_container(_compose(overrides, name), resolve=True)
    assert isinstance(container, dict)
    return TrainConfig.from_dict(container["test"])


@pytest.mark.parametrize(
    "overrides, name, rate, expected",
    [
        # the trap: the config file's defaults are not "given", so the preset's 250 ms / 50 ms hold
        (["test.signal=myhand"], "config", 100.0, (25, 5, "the myhand preset's", "the myhand preset's")),
        ([], "config", 100.0, (25, 5, "the myhand preset's", "the myhand preset's")),  # auto: 100 Hz data
        ([], "config", 200.0, (50, 10, "the myo preset's", "the myo preset's")),  # auto: 200 Hz data
        (
            ["test.signal={preset: myhand, input_range: [0, 500]}"],
            "config",
            100.0,
            (25, 5, "the myhand preset's", "the myhand preset's"),
        ),
        (
            ["test.signal=myhand", "test.time_seq_len=40"],
            "config",
            100.0,
            (40, 5, "set by test.time_seq_len", "the myhand preset's"),
        ),
        (
            ["test.signal=myhand", "test.stride=2"],
            "config",
            100.0,
            (25, 2, "the myhand preset's", "set by test.stride"),
        ),
        (
            ["test.signal=myo", "test.time_seq_len=20"],
            "config",
            200.0,
            (20, 10, "set by test.time_seq_len", "the myo preset's"),
        ),
        # a config file that sets them keeps them (the shipped recipe: 50 / 10 at 200 Hz)
        (
            [],
            "myo_default",
            200.0,
            (50, 10, "set by test.time_seq_len", "set by test.stride"),
        ),
        (
            ["test.signal.preset=myhand", "test.time_seq_len=null"],
            "myo_default",
            100.0,
            (25, 10, "the myhand preset's", "set by test.stride"),
        ),
    ],
)
def test_a_signal_preset_sets_its_window_and_stride_unless_given(overrides, name, rate, expected):
    cfg = _train_config(["test.train_collection_json=x", *overrides], name)
    spec = cfg.signal_spec(rate)
    origin = cfg.window_origin(rate)
    assert (spec.window, spec.stride, origin["window"], origin["stride"]) == expected


def test_a_research_config_without_window_keys_gets_the_presets():
    from metalearn.config import TrainConfig

    cfg = TrainConfig.from_dict({"train_collection_json": "x", "signal": "myhand"})
    assert (cfg.time_seq_len, cfg.stride) == (None, None)
    assert (cfg.signal_spec(100.0).window, cfg.signal_spec(100.0).stride) == (25, 5)
    cfg = TrainConfig.from_dict({"train_collection_json": "x", "time_seq_len": 50, "stride": 10})  # as before
    assert (cfg.signal_spec(200.0).window, cfg.signal_spec(200.0).stride) == (50, 10)


def test_a_myhand_run_uses_the_presets_window_and_says_so(tmp_path, capsys):
    """MyHand-like data at 100 Hz, nothing set: the run windows at the myhand preset's 25 / 5
    samples (250 / 50 ms), prints that and where it came from, and records it."""
    from metalearn.train import run_composed

    root = tmp_path / "myhand"
    refs = [TaskRef(f"2023_03_14_p{i}", "rorcr") for i in range(1, 4)]
    for i, ref in enumerate(refs):
        myhand_like_csv(ref.path(root), seconds=20, seed=i)
    coll = save_collection(tmp_path / "myhand.json", refs)
    overrides = [
        f"test.train_collection_json={coll}",
        f"test.data_root={root}",
        *(o for o in TINY if not o.startswith(("test.time_seq_len", "test.stride"))),
        "test.meta_steps=1",
        "test.tensorboard=false",
    ]
    run = tmp_path / "run"
    run_composed(_compose(overrides), run, tmp_path)
    out = capsys.readouterr().out
    assert "window 25 samples (250 ms, the myhand preset's), stride 5 samples (50 ms, the myhand preset's)" in out, out
    rate = re.search(r"signal: preset myhand \(test.signal auto: the data's ([\d.]+) Hz\)", out)
    assert rate and float(rate.group(1)) == pytest.approx(100, rel=0.05)  # the armband's ~100 Hz, jittered
    best = load_checkpoint(run / "models" / "best.pt")
    assert (best["signal"]["window"], best["signal"]["stride"], best["signal"]["sample_rate"]) == (25, 5, 100.0)
    assert (best["config"]["time_seq_len"], best["config"]["stride"]) == (25, 5)  # the checkpoint's: as resolved
    resolved = json.loads((run / "resolved_config.json").read_text())
    assert (resolved["test"]["time_seq_len"], resolved["test"]["stride"]) == (25, 5)
    assert best["verify_windows"].shape[1:] == (25, 8)


def test_train_and_test_collections_have_their_own_data_roots(colls, tmp_path, capsys, monkeypatch):
    """test.train_data_root / test.test_data_root, each test.data_root when null (here a directory
    that does not exist, so only the two roots can serve). Without the tensorboard package
    (hidden here) test.tensorboard says so once, on stderr and in the run's log."""
    from metaemg.errors import MetaEMGError
    from metalearn.train import run_composed

    test_root = tmp_path / "test_root"
    test_refs = load_collection(colls["test"])
    for ref in test_refs:
        (test_root / ref.session).mkdir(parents=True)
        ref.path(test_root).symlink_to(ref.path(colls["root"]))
    base = [
        f"test.train_collection_json={colls['train']}",
        f"test.test_collection_json={colls['test']}",
        "test.data_root=/nonexistent",
        *TINY,
        "test.meta_steps=1",
        "test.save=false",
        "test.tensorboard=true",
        "test.converge_baselines=false",
    ]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    summary = run_composed(
        _compose([*base, f"test.train_data_root={colls['root']}", f"test.test_data_root={test_root}"]),
        tmp_path / "run",
        tmp_path,
    )
    out, err = capsys.readouterr()
    assert f"from {colls['train']} in {colls['root']}; 2 test tasks from {colls['test']} in {test_root}" in out
    note = "note: test.tensorboard is true but tensorboard is not installed (pip install 'metaemg[tensorboard]')"
    assert err.count(note) == 1 and err.count("\n") == 1, err
    assert (tmp_path / "run" / "train.log").read_text().count(f"WARNING {note}") == 1
    assert set(summary["table"]) == {"B1", "B2", "meta-model"}
    assert all(0 <= acc <= 1 for acc in summary["table"].values())
    # each collection is read from its own root: the other one does not have its sessions
    train_ref = load_collection(colls["train"])[0]
    for roots, missing in [
        ([f"test.train_data_root={colls['root']}"], test_refs[0].path("/nonexistent")),
        ([f"test.test_data_root={test_root}"], train_ref.path("/nonexistent")),
        ([f"test.train_data_root={test_root}", f"test.test_data_root={colls['root']}"], train_ref.path(test_root)),
    ]:
        with pytest.raises(MetaEMGError) as err:
            run_composed(_compose([*base, *roots]), tmp_path / "bad", tmp_path)
        assert str(err.value) == f"{missing}: recording file not found"


def test_latest_checkpoint_is_the_newest_meta_epoch(tmp_path):
    from metaemg.errors import ModelError

    models = tmp_path / "run" / "models"
    models.mkdir(parents=True)
    with pytest.raises(ModelError, match="no meta-epoch checkpoint"):
        latest_checkpoint(tmp_path / "run")
    for name in ("best.pt", "epoch_0009_loss_0.5000.pt", "epoch_0010_loss_0.9000.pt", "epoch_0002_loss_0.1000.pt"):
        (models / name).write_bytes(b"")
    assert latest_checkpoint(tmp_path / "run") == models / "epoch_0010_loss_0.9000.pt"
    assert latest_checkpoint(models) == models / "epoch_0010_loss_0.9000.pt"
    assert latest_checkpoint(models / "best.pt") == models / "best.pt"  # a file: as given


BAD_INPUT = [
    ("test.n_train_tasks=4", "has 4 tasks; test.n_train_tasks + test.n_val_tasks = 5"),
    ("test.model=lstm", "test.model must be one of dnn, cnn, tcn, tf, feat"),
    ("test.lda_shrinkage=2", "test.lda_shrinkage must be a number in [0, 1], got 2"),
    ("test.inner_batch_size=0", "test.inner_batch_size must be null or an integer >= 1"),
    ("test.compile=jit", "test.compile must be false, true or one of aot_eager, inductor, got 'jit'"),
    ("+test.bogus=1", "unknown key(s) test.bogus"),
    ("test.time_seq_len=2000", "is a 10 s window"),
    ("test.data_root=/nonexistent", "recording file not found"),
    ("test.data_root=", "test.data_root must name a directory, got an empty value"),
    ("test.test_data_root=", "test.test_data_root must name a directory or be null (test.data_root), got an empty"),
    ("test.keep_checkpoints=0", "test.keep_checkpoints must be an integer >= 1 or null (keep every meta-epoch's)"),
    (
        "test.time_seq_len=4",
        "test.stride 10 (set by test.stride) is longer than the window (4, set by test.time_seq_len)",
    ),
    ("test.non_intent=true", "test.non_intent needs test.model=feat (a closed-form head), got 'dnn'"),
    ("test.non_intent_log_prior=0", "test.non_intent_log_prior must be a number in [-100, 0), got 0"),
    ("test.lda_reject=0.5", "test.lda_reject must be 0 (off) or a number in [1, 100], got 0.5"),
]


@pytest.mark.parametrize("override, fragment", BAD_INPUT)
def test_bad_input_fails_before_training(colls, tmp_path, override, fragment):
    """The same Hydra composition and checks as the command, in this process (a subprocess per
    case cost 2.5 s of imports; the command's exit status and one-line message are the next test)."""
    from metaemg.errors import MetaEMGError
    from metalearn.train import run_composed

    overrides = [
        f"test.train_collection_json={colls['train']}",
        f"test.test_collection_json={colls['test']}",
        f"test.data_root={colls['root']}",
        *TINY,
        override,
    ]
    with pytest.raises(MetaEMGError) as err:
        run_composed(_compose(overrides), tmp_path / "run", tmp_path)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run" / "models").exists()


@pytest.mark.parametrize("override, fragment", [BAD_INPUT[0], BAD_INPUT[5]])
def test_the_command_says_bad_input_in_one_line_and_exits_2(colls, tmp_path, override, fragment):
    proc = train(colls, tmp_path / "run", override, check_rc=2)
    assert proc.stderr.startswith("error: ") and fragment in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "run" / "models").exists()
    assert (tmp_path / "run" / "train.log").read_text().splitlines()[-1].endswith(f" ERROR   {proc.stderr.strip()}")


def test_the_bar_plot_is_scaled_to_the_data_with_error_bars_and_its_legend_outside():
    """0.89 and 0.97 look different (the axis starts near the data and says so), the mean bars
    carry +-1 std across tasks, and the legend sits right of the axes, clear of every bar."""
    import numpy as np
    from matplotlib.container import ErrorbarContainer

    from metalearn.runplots import barplot_figure, curves_figure, pyplot

    per_task = {"B1": [0.88, 0.90], "B2": [0.95, 0.97], "meta-model": [0.96, 0.99]}
    fig = barplot_figure(["Male13_Test0/myo_rorcr", "Male13_Test1/myo_rorcr"], per_task, 5)
    ax = fig.axes[0]
    bottom, top = ax.get_ylim()
    assert 0.8 < bottom < 0.87 and 0.99 < top <= 1.05
    assert (0.97 - 0.89) / (top - bottom) > 0.3  # a third of the axis apart
    assert ax.get_ylabel() == f"query accuracy (axis from {bottom:.2f}, not 0)"
    assert ax.get_xlabel() == "test task; mean: error bar ±1 std across the 2 tasks"
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 3
    for c, accs in zip(bars, per_task.values(), strict=True):
        (segment,) = c.lines[2][0].get_segments()
        mean, std = np.mean(accs), np.std(accs, ddof=1)
        assert segment[:, 1] == pytest.approx([mean - std, mean + std])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == list(per_task)
    assert legend.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1
    pyplot().close(fig)
    history = [
        {"meta_epoch": e, "train_loss": 1 - e / 10, "val_loss": 1.1 - e / 20, "train_accuracy": 0.5 + e / 20}
        for e in range(4)
    ]
    history[-1]["val_accuracy"] = 0.7  # an older log without accuracies in every entry: that curve left out
    fig = curves_figure(history, best_epoch=3)
    loss, acc = fig.axes
    assert [line.get_label() for line in loss.lines] == ["meta-train", "validation", "best.pt (meta-epoch 3)"]
    assert [line.get_label() for line in acc.lines] == ["meta-train", "best.pt (meta-epoch 3)"]
    assert list(loss.lines[1].get_ydata()) == pytest.approx([1.1, 1.05, 1.0, 0.95])
    pyplot().close(fig)


def test_progress_says_the_first_and_last_step_and_one_line_every_two_seconds_between(monkeypatch, capsys, tmp_path):
    """On a clock (no sleeping): lines at the first step, whenever 2 s have passed since the last
    line, and at the last; the ETA from the work done (weights), on stdout and in the log."""
    from metalearn import runlog

    now = [100.0]
    monkeypatch.setattr(runlog.time, "monotonic", lambda: now[0])
    with runlog.run_log(tmp_path) as path:
        progress = runlog.Progress("phase", 5, "items", total_weight=10)
        for dt, weight in [(1.0, 1), (0.5, 1), (0.6, 1), (1.0, 3), (3.0, 4)]:
            now[0] += dt
            progress.advance(f"weight {weight}", weight=weight)
    assert capsys.readouterr().out.splitlines() == [
        "phase: 1/5 items (20%), 1.0 s elapsed, ETA 9.0 s | weight 1",  # 9 units left at 1 s each
        "phase: 4/5 items (80%), 3.1 s elapsed, ETA 2.1 s | weight 3",  # 2.1 s after the first; 4 of 10 left
        "phase: 5/5 items (100%), done in 6.1 s | weight 4",
    ]
    assert len(path.read_text().splitlines()) == 3


def test_a_sweep_summary_lists_unfinished_jobs_and_names_a_bad_file(tmp_path):
    from metaemg.errors import DataError
    from metalearn.runplots import sweep_rows

    for job, model in (("0", "dnn"), ("1", "cnn"), ("10", "tcn")):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- test.model={model}\n- +test.seed=3\n")
    (tmp_path / "not_a_job").mkdir()
    keys, methods, rows = sweep_rows(tmp_path)
    assert keys == ["test.model", "test.seed"] and methods == []
    assert [(r["job"], r["test.model"], r["status"]) for r in rows] == [
        (job, model, "no results (running, failed, or test.save false)")
        for job, model in (("0", "dnn"), ("1", "cnn"), ("10", "tcn"))  # in job order, not by name
    ]
    (tmp_path / "1" / "results").mkdir()
    (tmp_path / "1" / "results" / "summary.json").write_text('{"meta_epochs": 3,')
    with pytest.raises(DataError) as err:
        sweep_rows(tmp_path)
    bad = tmp_path / "1" / "results" / "summary.json"
    assert str(err.value) == f"{bad}: not JSON (Expecting property name enclosed in double quotes, line 1)"


def test_each_process_takes_its_gpu_and_too_few_gpus_fall_back_or_are_refused():
    """test.device on machines this one is not (the GPU counts are given; the CUDA run itself is
    in docs/training.md, "Training on a GPU")."""
    from metaemg.errors import ConfigError
    from metalearn.train import pick_device

    assert pick_device(None, 0, 1, 0, 1) == ("cpu", None)
    assert pick_device(None, 1, 1, 0, 1) == ("cuda:0", None)
    assert pick_device("", 2, 2, 1, 2) == ("cuda:1", None)  # torchrun, one process per GPU
    device, note = pick_device(None, 1, 2, 1, 2)  # two processes, one GPU
    assert device == "cpu" and note == "note: 2 processes on this machine but 1 GPU(s): every process on the CPU"
    assert pick_device("cuda", 2, 2, 1, 2) == ("cuda:1", None)
    assert pick_device("cuda", 1, 1, 0, 1) == ("cuda", None)
    assert pick_device("cuda:1", 2, 1, 0, 1) == ("cuda:1", None)
    assert pick_device("cpu", 4, 2, 1, 2) == ("cpu", None)
    with pytest.raises(ConfigError, match=r"^test.device is cuda but torchrun started 2 processes on this machine, "):
        pick_device("cuda", 1, 2, 0, 2)
    with pytest.raises(ConfigError, match=r"^test.device is cuda:0 but CUDA is not available; use cpu"):
        pick_device("cuda:0", 0, 1, 0, 1)
