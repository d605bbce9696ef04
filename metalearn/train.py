"""``metaemg-train``: meta-train a model with MAML, compare it with the baselines, save the run.

A Hydra app: the config is the research code's ``test:`` section (see ``metalearn/conf/config.yaml``);
command-line overrides (``test.meta_steps=5``) and sweeps (``-m test.model=dnn,cnn``) work, and the
run directory (``hydra.run.dir``) receives the resolved config, checkpoints, results and plots
(:mod:`metalearn.runplots`), and ``train.log``: every line the run prints, each phase's progress
with an ETA among them (:mod:`metalearn.runlog`). A sweep's jobs keep its summary table current.
Under ``torchrun --nproc_per_node=N`` the meta-batch is sharded across processes and the
meta-gradients are all-reduced (gloo on CPU, nccl on GPU); rank 0 writes the outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from metaemg.atomic import write_text
from metaemg.errors import ConfigError, MetaEMGError
from metalearn.config import TrainConfig
from metalearn.recording import INTENTS
from metalearn.runlog import LOG, Progress, run_log
from metalearn.tasks import Scaler, TaskRef, TaskWindows, load_collection, load_task, task_windows

if TYPE_CHECKING:
    from metaemg.signal import SignalSpec


def _resolve(path: str | None, base: Path) -> Path | None:
    if path in (None, ""):
        return None
    p = Path(os.path.expanduser(str(path)))
    return p if p.is_absolute() else base / p


def load_task_windows(
    refs: list[TaskRef], root: Path, cfg: TrainConfig, spec: SignalSpec | None = None, what: str | None = None
) -> tuple[list[TaskWindows], SignalSpec, str]:
    """Load and window every task; returns (tasks, signal spec, data hash). ``what`` (e.g. "the
    test collection"): progress lines ``loading WHAT: i/n tasks ...`` on the run log."""
    out, spec, digest, _ = _task_windows(refs, root, cfg, spec, what)
    return out, spec, digest


def _task_windows(
    refs: list[TaskRef], root: Path, cfg: TrainConfig, spec: SignalSpec | None = None, what: str | None = None
) -> tuple[list[TaskWindows], SignalSpec, str, float]:
    """:func:`load_task_windows`, and the first task's sample rate (what ``signal: auto`` went by):
    the window is checked against it before any other task is read."""
    digest = hashlib.sha256()
    out = []
    rate = 0.0
    progress = Progress(f"loading {what}", len(refs), "tasks") if what else None
    for i, ref in enumerate(refs):
        task = load_task(root, ref)
        digest.update(ref.path(root).read_bytes())
        if i == 0:
            rate = float(task.recording.sample_rate)
            if spec is None:
                spec = cfg.signal_spec(rate)
            _check_window(cfg, spec, rate)
        assert spec is not None  # set at the first task
        tw = task_windows(task, spec, cfg.scale)
        out.append(
            TaskWindows(
                tw.ref,
                tw.x_support.astype(np.float32),
                tw.y_support,
                tw.x_query.astype(np.float32),
                tw.y_query,
                tw.scaler,
            )
        )
        if progress:
            progress.advance(str(ref))
    assert spec is not None  # a collection has at least one task (load_collection)
    return out, spec, digest.hexdigest(), rate


def _check_window(cfg: TrainConfig, spec, data_rate: float) -> None:
    origin = cfg.window_origin(data_rate)
    secs = spec.window_seconds
    if not 0.02 <= secs <= 5.0:
        raise ConfigError(
            f"test.time_seq_len {spec.window} ({origin['window']}) at {spec.sample_rate:g} Hz is a {secs:.3g} s "
            "window; use 20 ms .. 5 s"
        )
    if spec.stride > spec.window:
        raise ConfigError(
            f"test.stride {spec.stride} ({origin['stride']}) is longer than the window ({spec.window}, "
            f"{origin['window']}): samples would be skipped"
        )


def unscaled(x: np.ndarray, scaler: Scaler) -> np.ndarray:
    return x * scaler.scale + scaler.offset


class Sampler:
    """Fixed-size support/query samples per task, so a meta-batch runs in one vmap."""

    def __init__(
        self, tasks: list[TaskWindows], batch: int, rorcr_size: float, rng: np.random.Generator, rotate: bool = False
    ):
        self.tasks, self.batch, self.rorcr_size, self.rng, self.rotate = tasks, batch, rorcr_size, rng, rotate

    def _pick(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = self.rng.choice(len(x), self.batch, replace=len(x) < self.batch)
        return x[idx], y[idx]

    def task(self, tw: TaskWindows):
        from metalearn.evaluate import support_part

        xs, ys = self._pick(*support_part(tw, self.rorcr_size))
        xq, yq = self._pick(tw.x_query, tw.y_query)
        if self.rotate:  # the armband put on rotated: the same task seen by shifted electrodes
            k = int(self.rng.integers(0, xs.shape[-1]))
            xs, xq = np.roll(xs, k, axis=-1), np.roll(xq, k, axis=-1)
        return xs, ys, xq, yq

    def meta_batch(self, n: int):
        chosen = self.rng.choice(len(self.tasks), n, replace=False)
        return [self.task(self.tasks[i]) for i in chosen]


def _tensor(a: np.ndarray, device, long: bool = False):
    import torch

    from metalearn.evaluate import to_tensor

    return to_tensor(a, device, torch.long if long else torch.float32)


def fit_whitening(model, tasks: list[TaskWindows], *, rotate: bool, device=None, per_task: bool = True) -> None:
    """Fit a feat model's whitening on every window (support and query) of ``tasks``."""
    model.fit_whitening(
        [
            (
                _tensor(np.concatenate([t.x_support, t.x_query]), device),
                _tensor(np.concatenate([t.y_support, t.y_query]), device, long=True),
            )
            for t in tasks
        ],
        rotate=rotate,
        per_task=per_task,
    )


def fit_non_intent(model, tasks: list[TaskWindows], root: Path, spec, log_prior: float, device=None) -> int:
    """Fit a feat model's non-intent classes on the training tasks' other movements
    (``ROOT/other_gestures/<session>.csv``, written by ``metaemg-import``); returns how many tasks
    had them (ConfigError when none did)."""
    from metaemg.signal import SignalChain, make_windows
    from metalearn.myo import read_other_gestures

    parts = []
    for t in tasks:
        path = Path(root) / "other_gestures" / f"{t.ref.session}.csv"
        if not path.is_file():
            continue
        rec, codes = read_other_gestures(path)
        windows, ends = make_windows(SignalChain(spec).process(rec.emg), spec.window, spec.stride)
        intents = np.concatenate([t.x_support, t.x_query])
        parts.append((_tensor(intents, device), _tensor(windows, device), _tensor(codes[ends], device, long=True)))
    if not parts:
        raise ConfigError(f"test.non_intent: no training task has other movements in {Path(root) / 'other_gestures'}")
    model.fit_non_intent(parts, log_prior)
    return len(parts)


POPULATION_MAX_ROTATION = 1  # electrodes of turn from how the training subjects wore the armband


def population(model, tasks: list[TaskWindows], device=None) -> dict:
    """A feat model's ``population`` metadata: its intents' mean standardised features over the
    training tasks, for the calibration's plausibility check (see ModelInfo.population)."""
    means = model.population_means(
        [
            (
                _tensor(np.concatenate([t.x_support, t.x_query]), device),
                _tensor(np.concatenate([t.y_support, t.y_query]), device, long=True),
            )
            for t in tasks
        ]
    )
    return {
        "means": [[round(float(v), 6) for v in row] for row in means.cpu()],
        "max_rotation": POPULATION_MAX_ROTATION,
    }


def closed_form_scores(model, tasks: list[TaskWindows], inner: dict, rorcr_size: float, device) -> tuple[float, float]:
    """Mean query (loss, accuracy) over ``tasks`` after adapting a copy of ``model`` to each task's support."""
    from metalearn.evaluate import adapt_and_score

    scores = [adapt_and_score(model, t, inner=inner, rorcr_size=rorcr_size, device=device) for t in tasks]
    return float(np.mean([s["loss"] for s in scores])), float(np.mean([s["accuracy"] for s in scores]))


def _tensors(task: tuple, device):
    """(x_support, y_support, x_query, y_query) arrays as float32 / long tensors on ``device``."""
    import torch

    from metalearn.evaluate import to_tensor

    return tuple(to_tensor(a, device, torch.long if k % 2 else torch.float32) for k, a in enumerate(task))


def pick_device(wanted: str | None, gpus: int, world: int, local_rank: int, local_world: int) -> tuple[str, str | None]:
    """(torch device, a note or None) for ``test.device`` = ``wanted`` on a machine with ``gpus``
    GPUs, in a run of ``world`` processes of which ``local_world`` on this machine (torchrun's
    WORLD_SIZE, LOCAL_WORLD_SIZE; this one is ``local_rank``). Each local process takes the GPU of
    its local rank; with fewer GPUs than local processes an empty ``test.device`` runs every
    process on the CPU, and ``cuda`` is refused (ConfigError, one line)."""
    if wanted in (None, ""):
        if gpus and local_world > gpus:
            return "cpu", f"note: {local_world} processes on this machine but {gpus} GPU(s): every process on the CPU"
        return (f"cuda:{local_rank}" if gpus else "cpu"), None
    if str(wanted).startswith("cuda") and not gpus:
        raise ConfigError(f"test.device is {wanted} but CUDA is not available; use cpu or leave it empty")
    if wanted == "cuda" and world > 1:
        if local_world > gpus:
            raise ConfigError(
                f"test.device is cuda but torchrun started {local_world} processes on this machine, which has "
                f"{gpus} GPU(s): one process per GPU (--nproc_per_node={gpus}), or test.device=cpu"
            )
        return f"cuda:{local_rank}", None
    return str(wanted), None


def _device_and_processes(cfg: TrainConfig):
    """(device, world size, rank): :func:`pick_device` for this machine; under torchrun, the
    process group is joined here (gloo on CPU, nccl on CUDA)."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    name, note = pick_device(
        cfg.device, gpus, world, int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    )
    if note is not None and rank == 0:
        LOG.warning(note)
    device = torch.device(name)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, world, rank


def data_roots(cfg: TrainConfig, base_dir: Path) -> tuple[Path, Path]:
    """The training and test collections' data roots (``test.train_data_root`` /
    ``test.test_data_root``, each ``test.data_root`` when null), relative ones from ``base_dir``."""
    roots = tuple(_resolve(r, base_dir) for r in cfg.data_roots())
    assert roots[0] is not None and roots[1] is not None  # TrainConfig refuses empty roots
    return roots[0], roots[1]


def collection_path(path: str | None, root: Path, base_dir: Path, config_dir: Path | None = None) -> Path | None:
    """A task collection's path: an absolute one as given; a relative one from the first of the
    config file's directory (when a config file was given), ``base_dir`` (where the command runs)
    and the collection's data root ``root`` that holds it, else from ``base_dir`` (its error
    then names that path)."""
    if path in (None, ""):
        return None
    p = Path(os.path.expanduser(str(path)))
    if p.is_absolute():
        return p
    bases = [b for b in (config_dir, base_dir, root) if b is not None]
    return next((b / p for b in bases if (b / p).is_file()), base_dir / p)


def _load_tasks(
    cfg: TrainConfig,
    base_dir: Path,
    roots: tuple[Path, Path],
    rng: np.random.Generator,
    config_dir: Path | None = None,
):
    """The training, validation and test tasks as windows: (train, val, tests, spec, data hash,
    test data hash, the training data's sample rate, the collections' paths). Validation tasks are
    drawn from the training collection with ``rng``, or are the test tasks when ``test.n_val_tasks`` is 0."""
    train_path = collection_path(cfg.train_collection_json, roots[0], base_dir, config_dir)
    test_path = collection_path(cfg.test_collection_json, roots[1], base_dir, config_dir)
    assert train_path is not None  # train_collection_json: non-empty
    refs = load_collection(train_path)
    need = cfg.n_train_tasks + cfg.n_val_tasks
    if len(refs) < need:
        raise ConfigError(f"{train_path} has {len(refs)} tasks; test.n_train_tasks + test.n_val_tasks = {need}")
    test_refs = load_collection(test_path) if test_path else []
    if cfg.n_val_tasks == 0 and not test_refs:
        raise ConfigError(
            "test.n_val_tasks is 0, which validates on the test collection, but test_collection_json is empty"
        )

    all_tasks, spec, data_hash, rate = _task_windows(refs, roots[0], cfg, what="the training collection")
    tests, _, test_hash = (
        load_task_windows(test_refs, roots[1], cfg, spec, "the test collection") if test_refs else ([], spec, "")
    )
    order = rng.permutation(len(all_tasks))
    val = [all_tasks[i] for i in order[: cfg.n_val_tasks]] or tests
    train_tasks = [all_tasks[i] for i in order[cfg.n_val_tasks :]]
    return train_tasks, val, tests, spec, data_hash, test_hash, rate, (train_path, test_path)


def _inner_doc(inner, cfg: TrainConfig, closed_form: bool) -> dict[str, Any]:
    """The inner loop as model files and checkpoints record it (how calibration adapts)."""
    doc = {
        "optimizer": inner.optimizer,
        "steps": inner.steps,
        "lr": inner.lr,
        "first_order": inner.first_order,
        "batch_size": inner.batch_size,
    }
    if closed_form:
        doc.update(head="lda", shrinkage=float(cfg.lda_shrinkage))
        if cfg.lda_reject:
            doc["reject"] = float(cfg.lda_reject)
    return doc


def _compare_on_tests(cfg: TrainConfig, hp: dict, model, train_tasks: list, tests: list, inner_doc: dict, device, seed):
    """B1 (no pre-training), B2 (pooled pre-training on the same tasks) and the meta-model, each
    adapted on every test task: (logs at test.inner_steps, convergence logs or None)."""
    import torch

    from metalearn.evaluate import compare, pretrain_pooled
    from metalearn.models import build_model

    torch.manual_seed(seed)
    b1 = build_model(cfg.model, **hp).to(device).eval()
    torch.manual_seed(seed)
    b2 = build_model(cfg.model, **hp).to(device)
    if cfg.model == "feat":
        LOG.info(f"baselines: B2's whitening fitted on the {len(train_tasks)} training tasks pooled")
        fit_whitening(b2, train_tasks, rotate=cfg.augment_rotation, device=device, per_task=False)
    else:
        steps = max(1, cfg.meta_steps) * cfg.inner_steps
        pre = Progress("baselines: B2 pre-training on the training tasks pooled", steps, "updates")
        b2 = pretrain_pooled(
            b2,
            train_tasks,
            steps=steps,
            batch=cfg.batch_size * cfg.n_train_tasks,
            lr=float(cfg.outer_lr),
            seed=seed,
            device=device,
            on_step=pre.advance,
        )
    models = {"B1": b1, "B2": b2.eval(), "meta-model": model.eval()}
    kw: dict[str, Any] = {"inner": inner_doc, "rorcr_size": cfg.rorcr_size, "device": device}
    logs = compare(models, tests, steps_list=[cfg.inner_steps], on_task=_compare_progress("baselines", tests), **kw)
    conv = None
    if cfg.converge_baselines:
        steps_list = list(cfg.converge_steps)
        on_task = _compare_progress("convergence baselines", tests, steps_list)
        conv = compare(models, tests, steps_list=steps_list, on_task=on_task, **kw)
    return logs, conv


def _compare_progress(phase: str, tests: list, steps_list: list[int] | None = None):
    """``compare``'s ``on_task``: a progress line per adaptation of B1, B2 and the meta-model,
    the ETA weighted by each adaptation's inner steps (plus one for its scoring)."""
    counts = steps_list or []
    n = len(tests) * 3 * max(len(counts), 1)
    what = f"{len(tests)} test tasks" + (f" at {', '.join(map(str, counts))} inner steps" if counts else "")
    progress = Progress(
        f"{phase}: B1, B2 and the meta-model adapted to {what}",
        n,
        "adaptations",
        total_weight=len(tests) * 3 * sum(s + 1 for s in counts) if counts else None,
    )

    def on_task(method: str, steps: int, i: int) -> None:
        where = f" at {steps} inner step{'' if steps == 1 else 's'}" if counts else ""
        progress.advance(f"{method}{where}, task {i + 1}/{len(tests)}", weight=steps + 1 if counts else 1)

    return on_task


def _write_run_files(run_dir: Path, history: list, resolved: dict, summary: dict) -> None:
    """The run's JSON records: the loss history, the resolved configuration and the summary."""
    res_dir = run_dir / "results"
    write_text(res_dir / "meta_training_log.json", json.dumps(history, indent=1))
    write_text(run_dir / "resolved_config.json", json.dumps(resolved, indent=2))
    write_text(res_dir / "summary.json", json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))


@dataclass(eq=False)
class _Run:
    """One training run's parts, as :func:`_prepare` sets them up."""

    device: Any
    world: int
    lead: bool  # rank 0: writes the outputs
    seed: int
    rng: np.random.Generator
    roots: tuple
    train_tasks: list
    val: list
    tests: list
    spec: SignalSpec
    data_hash: str
    test_hash: str | None
    hp: dict
    model: Any
    inner: Any
    outer: Any
    closed_form: bool  # a feat model: its meta-learned part has a closed form (FeatLDA.fit_whitening)
    start: int  # the first meta-epoch (after a resume)
    common: dict = field(default_factory=dict)  # what every checkpoint carries
    config_dict: dict = field(default_factory=dict)


@dataclass
class _Progress:
    """What the meta-epochs left: the history, the best model and the checkpoints kept."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best: tuple[float, Path | dict[str, Any] | None] = (float("inf"), None)
    best_epoch: int | None = None
    kept: list[Path] = field(default_factory=list)  # this run's meta-epoch checkpoints on disk, oldest first
    seconds: float = 0.0


def train(cfg: TrainConfig, run_dir: Path, base_dir: Path, config_dir: Path | None = None) -> dict:
    """Meta-train into ``run_dir``; relative paths from ``base_dir``, a relative collection first
    from ``config_dir`` (the config file's directory) then its data root (see :func:`collection_path`)."""
    run = _prepare(cfg, base_dir, config_dir)
    writer = _tensorboard(run_dir) if (cfg.tensorboard and run.lead) else None
    wb = _wandb(cfg, run_dir) if (cfg.wandb and run.lead) else None
    epochs = range(1) if run.closed_form else range(run.start, cfg.meta_steps)
    progress = _meta_train(cfg, run, epochs, run_dir / "models", writer, wb)
    if not run.lead:
        return {}
    summary = _finish(cfg, run, epochs, progress, run_dir, writer)
    _track_results(writer, wb, summary, cfg.inner_steps)
    return summary


def _prepare(cfg: TrainConfig, base_dir: Path, config_dir: Path | None) -> _Run:
    """The processes, the seed, the tasks, the model and its optimiser (resumed when asked)."""
    import torch

    from metalearn.checkpoint import latest_checkpoint, load_checkpoint, stable_hash
    from metalearn.maml import InnerLoop, OuterLoop
    from metalearn.models import build_model, model_hparams

    device, world, rank = _device_and_processes(cfg)
    seed = random.randint(0, 10_000) if cfg.seed == "r" else cfg.seed
    assert isinstance(seed, int)  # TrainConfig accepts only an integer or "r"
    assert cfg.compile is None or isinstance(cfg.compile, str)  # TrainConfig maps True/False to a backend/None
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    roots = data_roots(cfg, base_dir)  # resolved once: tasks, and a feat model's other movements
    train_tasks, val, tests, spec, data_hash, test_hash, rate, paths = _load_tasks(
        cfg, base_dir, roots, rng, config_dir
    )
    LOG.info(cfg.describe_signal(spec, rate))
    LOG.info(_describe_data(cfg, roots, paths, len(train_tasks), len(val), len(tests)))
    hp = {"n_channels": spec.channels, "window": spec.window, "n_classes": len(INTENTS), "fc_units": cfg.fc_units}
    hp |= cfg.model_hparams
    model = build_model(cfg.model, **hp).to(device)
    outer = OuterLoop(model, lr=float(cfg.outer_lr), lr_cycle=cfg.lr_cycle, lr_factor=float(cfg.lr_factor))
    start = 0
    if cfg.resume:
        given = _resolve(cfg.resume, base_dir)
        assert given is not None  # cfg.resume is not empty
        resume = latest_checkpoint(given)  # a run directory: its newest meta-epoch's checkpoint
        ckpt = load_checkpoint(resume)
        model.load_state_dict(ckpt["state_dict"])
        if ckpt.get("outer"):
            outer.load_state_dict(ckpt["outer"])
        start = int(ckpt.get("meta_epoch", -1)) + 1
        rng = np.random.default_rng([seed, start])
        LOG.info(f"resuming from {resume}: meta-epoch {start} onwards")
    run = _Run(
        device,
        world,
        rank == 0,
        seed,
        rng,
        roots,
        train_tasks,
        val,
        tests,
        spec,
        data_hash,
        test_hash,
        hp,
        model,
        InnerLoop.from_config(cfg),
        outer,
        cfg.model == "feat",
        start,
    )
    pooled = Scaler.fit(
        cfg.scale, np.concatenate([unscaled(t.x_support, t.scaler).reshape(-1, spec.channels) for t in train_tasks])
    )
    # as resolved: the window and stride used, the data roots taken (null keys: the preset's, data_root)
    run.config_dict = {
        **cfg.to_dict(),
        "time_seq_len": spec.window,
        "stride": spec.stride,
        "train_data_root": cfg.data_roots()[0],
        "test_data_root": cfg.data_roots()[1],
    }
    run.common = {
        "model": model_hparams(model),
        "signal": spec.to_dict(),
        "scaler": pooled.to_dict(),
        "inner": _inner_doc(run.inner, cfg, run.closed_form),
        "class_names": list(INTENTS),
        "config": run.config_dict,
        "config_hash": stable_hash(run.config_dict),
        "data_hash": data_hash,
        "verify_windows": unscaled(train_tasks[0].x_query[:32], train_tasks[0].scaler).astype(np.float32),
        "seed": seed,
    }
    return run


def _meta_train(cfg: TrainConfig, run: _Run, epochs: range, models_dir: Path, writer, wb) -> _Progress:
    """The meta-epochs: each scored on the training and the validation tasks, tracked, and (the
    lead process, with ``save``) checkpointed, the best kept."""
    from metalearn.maml import meta_eval, meta_step_stats, model_params, shard_tasks

    sampler = Sampler(run.train_tasks, cfg.batch_size, cfg.rorcr_size, run.rng, rotate=cfg.augment_rotation)
    val_sampler = Sampler(run.val, cfg.batch_size * 4, cfg.rorcr_size, np.random.default_rng([run.seed, 1]))
    # fixed and converted once: checkpoints are comparable across meta-epochs
    val_batch = [_tensors(val_sampler.task(t), run.device) for t in run.val]
    model, device, inner_doc = run.model, run.device, run.common["inner"]
    done = _Progress()
    t0 = time.monotonic()
    if cfg.compile and not run.closed_form:
        LOG.info(f"compiling the meta-step with torch.compile ({cfg.compile}): the first meta-epoch takes longer")
    if run.closed_form:
        LOG.info(
            f"model feat: the whitening is fitted in closed form over the {len(run.train_tasks)} training tasks "
            "(one meta-epoch; test.meta_steps does not apply)"
        )
    progress = Progress("meta-training", len(epochs), "meta-epochs")
    for epoch in epochs:
        if run.closed_form:
            fit_whitening(model, run.train_tasks, rotate=cfg.augment_rotation, device=device)
            run.common["population"] = population(model, run.train_tasks, device=device)
            if cfg.non_intent:
                n = fit_non_intent(model, run.train_tasks, run.roots[0], run.spec, cfg.non_intent_log_prior, device)
                LOG.info(f"non-intent movements of {n} training tasks: decided relax at calibration")
            train_loss, train_acc = closed_form_scores(model, run.train_tasks, inner_doc, cfg.rorcr_size, device)
            val_loss, val_acc = closed_form_scores(model, run.val, inner_doc, cfg.rorcr_size, device)
        else:
            batch = [_tensors(t, device) for t in sampler.meta_batch(cfg.n_train_tasks)]
            assert cfg.compile is None or isinstance(cfg.compile, str)  # TrainConfig maps True/False to a backend/None
            train_loss, train_acc = meta_step_stats(
                model, run.outer, shard_tasks(batch) if run.world > 1 else batch, run.inner, compile=cfg.compile
            )
            val_loss, val_acc = (float(v) for v in meta_eval(model, model_params(model), val_batch, run.inner))
        scores = {"train_loss": train_loss, "val_loss": val_loss, "train_accuracy": train_acc, "val_accuracy": val_acc}
        done.history.append({"meta_epoch": epoch, **scores, "outer_lr": run.outer.lr})
        progress.advance(
            f"meta-epoch {epoch}: train loss {train_loss:.3f} accuracy {train_acc:.3f}, "
            f"validation loss {val_loss:.3f} accuracy {val_acc:.3f}"
        )
        _track_epoch(writer, wb, scores, run.outer.lr, epoch)
        _keep_best(cfg, run, done, epoch, val_loss, models_dir)
    done.seconds = time.monotonic() - t0
    return done


def _track_epoch(writer, wb, scores: dict, lr: float, epoch: int) -> None:
    if writer:
        for key, value in scores.items():
            part, what = key.split("_")
            writer.add_scalar(f"{what}/{part}", value, epoch)
        writer.add_scalar("lr/outer", lr, epoch)
    if wb:
        wb.log({**scores, "meta_epoch": epoch})


def _keep_best(cfg: TrainConfig, run: _Run, done: _Progress, epoch: int, val_loss: float, models_dir: Path) -> None:
    """The lead process with ``save``: this meta-epoch's checkpoint (the newest kept) and the best
    one; otherwise the best weights in memory."""
    from metalearn.checkpoint import BEST, epoch_checkpoint_name, prune_checkpoints, save_checkpoint

    model = run.model
    if run.lead and cfg.save:
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        ckpt = {
            **run.common,
            "state_dict": state,
            "meta_epoch": epoch,
            "val_loss": val_loss,
            "outer": run.outer.state_dict(),
        }
        path = save_checkpoint(models_dir / epoch_checkpoint_name(epoch, val_loss), ckpt)
        if val_loss < done.best[0]:
            done.best, done.best_epoch = (val_loss, save_checkpoint(models_dir / BEST, ckpt)), epoch
        done.kept = prune_checkpoints([*done.kept, path], cfg.keep_checkpoints)
    elif val_loss < done.best[0]:
        done.best, done.best_epoch = (val_loss, {k: v.detach().clone() for k, v in model.state_dict().items()}), epoch


def _finish(cfg: TrainConfig, run: _Run, epochs: range, done: _Progress, run_dir: Path, writer) -> dict:
    """The best model back in place, compared on the test tasks, and the run's files written."""
    from metalearn.checkpoint import BEST, load_checkpoint
    from metalearn.evaluate import write_reports

    model, best = run.model, done.best
    if cfg.save and best[1] is not None:
        model.load_state_dict(load_checkpoint(run_dir / "models" / BEST)["state_dict"])
    elif isinstance(best[1], dict):
        model.load_state_dict(best[1])
    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "seed": run.seed,
        "meta_epochs": len(epochs) + run.start * (not run.closed_form),
        "train_seconds": done.seconds,
        "best_val_loss": best[0],
        "best_checkpoint": str(best[1]) if isinstance(best[1], Path) else None,
        "best_meta_epoch": done.best_epoch,
        "kept_checkpoints": [str(p) for p in done.kept],
        "keep_checkpoints": cfg.keep_checkpoints,
        "history": done.history,
        "device": str(run.device),
        "world_size": run.world,
        "compile": cfg.compile,
    }
    logs = conv = None
    if run.tests:
        inner_doc = run.common["inner"]
        logs, conv = _compare_on_tests(cfg, run.hp, model, run.train_tasks, run.tests, inner_doc, run.device, run.seed)
        summary["test_data_hash"] = run.test_hash
    res_dir = run_dir / "results"
    if cfg.save:
        saving = Progress("saving the run", 3 if run.tests else 2, "steps")
        if logs is not None:
            summary.update(write_reports(res_dir, logs, inner_steps=cfg.inner_steps, convergence=conv))
            saving.advance("results/: results_table.csv, per_task_logs.json, res_barplot.png, convergence.*")
        resolved = {"test": run.config_dict, "signal_spec": run.spec.to_dict(), "seed": run.seed}
        _write_run_files(run_dir, done.history, resolved, summary)
        saving.advance("results/meta_training_log.json, resolved_config.json, results/summary.json")
        from metalearn.runplots import write_curves

        write_curves(res_dir / "curves.png", done.history, done.best_epoch)
        saving.advance("results/curves.png")
    elif logs is not None:
        from metalearn.evaluate import results_table

        summary["table"] = {r[0]: r[-1] for r in results_table(logs, cfg.inner_steps)[1]}
    return summary


def _track_results(writer, wb, summary: dict, inner_steps: int) -> None:
    """The comparison's mean accuracies to TensorBoard (``test_accuracy/METHOD`` at
    ``inner_steps``, ``convergence/METHOD`` at each step count) and wandb; then both closed."""
    table, conv = summary.get("table", {}), summary.get("convergence", {})
    if writer:
        for method, acc in table.items():
            writer.add_scalar(f"test_accuracy/{method}", acc, inner_steps)
        for method, accs in conv.items():
            for steps, acc in accs.items():
                writer.add_scalar(f"convergence/{method}", acc, int(steps))
        writer.close()
    if wb:
        wb.log({f"test_accuracy/{m}": a for m, a in table.items()})
        wb.finish()


def _describe_data(
    cfg: TrainConfig, roots: tuple[Path, Path], paths: tuple, n_train: int, n_val: int, n_test: int
) -> str:
    """The line a run prints: which tasks come from which collection file and data root."""
    val = f"{n_val} validation" if cfg.n_val_tasks else "validation on the test tasks"
    line = f"data: {n_train} training tasks, {val}, from {paths[0]} in {roots[0]}"
    if n_test:
        line += f"; {n_test} test tasks from {paths[1]} in {roots[1]}"
    return line


def _tensorboard(run_dir: Path):
    """A SummaryWriter on ``RUN_DIR/tensorboard``; without the tensorboard package, None and a
    one-line note (stderr and the run log)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        LOG.warning(
            "note: test.tensorboard is true but tensorboard is not installed (pip install 'metaemg[tensorboard]'); "
            "no TensorBoard logs, the curves are in results/curves.png"
        )
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def _wandb(cfg: TrainConfig, run_dir: Path):
    try:
        import wandb
    except ImportError:
        LOG.warning("note: test.wandb is true but wandb is not installed; logging locally only")
        return None
    return wandb.init(name=cfg.run_name or None, dir=str(run_dir), config=cfg.to_dict())


def _print_summary(summary: dict) -> None:
    if not summary:
        return
    LOG.info(f"run directory: {summary['run_dir']}")
    how = f"x{summary['world_size']}" + (f", compiled: {summary['compile']}" if summary["compile"] else "")
    LOG.info(
        f"meta-training: {summary['meta_epochs']} meta-epochs in {summary['train_seconds']:.1f} s on "
        f"{summary['device']} ({how}), best validation loss {summary['best_val_loss']:.4f}"
    )
    if summary.get("best_checkpoint"):
        keep = summary["keep_checkpoints"]
        last = "every meta-epoch's" if keep is None else f"the last {keep} meta-epochs'"
        newest = f", newest {Path(summary['kept_checkpoints'][-1]).name}" if summary["kept_checkpoints"] else ""
        LOG.info(
            f"checkpoints: best.pt = meta-epoch {summary['best_meta_epoch']} (what metaemg-export RUN_DIR takes); "
            f"{last} (test.keep_checkpoints){newest} (test.resume=RUN_DIR continues from it)"
        )
    if "table" in summary:
        LOG.info(
            "mean query accuracy after adaptation: " + ", ".join(f"{k} {v:.3f}" for k, v in summary["table"].items())
        )
    if "convergence" in summary:
        for method, accs in summary["convergence"].items():
            LOG.info(f"  {method:<11} " + "  ".join(f"{s} steps {a:.3f}" for s, a in accs.items()))


TASK_COLLECTION_KEY = "task_collection_json"  # the research README's one collection key
SPLIT_KEYS = ("train_collection_json", "test_collection_json")


def _task_collection(test) -> str | None:
    """The research README's ``test.task_collection_json``: the training and the test collection
    where ``train_collection_json`` / ``test_collection_json`` are absent (missing or null); the
    key is then dropped. Returns the one-line note to print, None without the key."""
    from omegaconf import OmegaConf, open_dict

    if TASK_COLLECTION_KEY not in test:
        return None
    value = test[TASK_COLLECTION_KEY]
    with open_dict(test):
        absent = [k for k in SPLIT_KEYS if OmegaConf.is_missing(test, k) or test.get(k) in (None, "")]
        for key in absent:
            test[key] = value
        del test[TASK_COLLECTION_KEY]
    if not absent:
        return f"note: test.{TASK_COLLECTION_KEY} ignored: test.{SPLIT_KEYS[0]} and test.{SPLIT_KEYS[1]} are set"
    return (
        f"note: test.{TASK_COLLECTION_KEY} ({value}) is the "
        + " and the ".join({"train_collection_json": "training"}.get(k, "test") for k in absent)
        + f" collection (no test.{' / test.'.join(absent)})"
    )


def run_composed(cfg, run_dir: Path, cwd: Path, config_dir: Path | None = None, sweep_dir: Path | None = None) -> dict:
    """What ``metaemg-train`` does with a composed Hydra config: check its ``test`` section (a
    :class:`ConfigError` naming the key), then :func:`train` into ``run_dir`` and say how it went.
    Everything said goes to the terminal and ``run_dir/train.log`` (:mod:`metalearn.runlog`), an
    error too. ``config_dir``: the directory of the config file given with ``--config-path``
    (relative collections are looked for there first); ``sweep_dir``: the sweep this run is a job
    of, whose summary is then rewritten (:func:`metalearn.runplots.summarize_sweep`)."""
    lead = int(os.environ.get("RANK", "0")) == 0
    with run_log(run_dir, lead=lead) as log_path:
        LOG.info(f"run directory: {run_dir} (this log: {log_path})")
        try:
            summary = _run_composed(cfg, run_dir, cwd, config_dir)
            _print_summary(summary)
            if sweep_dir is not None and lead:
                from metalearn.runplots import summarize_sweep

                paths = summarize_sweep(sweep_dir)
                LOG.info(f"sweep summary, the jobs so far: {', '.join(str(p) for p in paths)}")
        except MetaEMGError as exc:
            LOG.error(f"error: {exc}")
            raise
        except BaseException as exc:  # the file keeps the traceback; the terminal gets Python's own
            LOG.error(f"stopped: {type(exc).__name__}: {exc}", exc_info=not isinstance(exc, KeyboardInterrupt))
            raise
    return summary


def _run_composed(cfg, run_dir: Path, cwd: Path, config_dir: Path | None) -> dict:
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        test = cfg.get("test")
        note = _task_collection(test) if isinstance(test, DictConfig) else None
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        assert isinstance(container, dict)  # a composed Hydra config is a DictConfig
        section = container.get("test")
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        msg = str(exc).splitlines()[0]
        raise ConfigError(f"{key}: {msg}" if key else msg) from None
    if note:
        LOG.info(note)
    return train(TrainConfig.from_dict(section), run_dir, cwd, config_dir)


CONFIG_PATH_FLAGS = ("--config-path", "-cp")
CONFIG_NAME_FLAGS = ("--config-name", "-cn")
DEFAULTS_NAME = "_metaemg_defaults"  # the package's config.yaml, under a given config file
GIVEN_NAME = "_given_config"


def _flag_values(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """(``{"path": ..., "name": ...}`` of ``--config-path`` / ``--config-name`` (or ``-cp`` /
    ``-cn``, ``--flag=value`` too), the other arguments)."""
    found: dict[str, str] = {}
    rest: list[str] = []
    it = iter(argv)
    for arg in it:
        flag, eq, value = arg.partition("=")
        kind = "path" if flag in CONFIG_PATH_FLAGS else "name" if flag in CONFIG_NAME_FLAGS else None
        if kind is None or (eq and not flag.startswith("-")):
            rest.append(arg)
            continue
        found[kind] = value if eq else next(it, "")
    return found, rest


def config_file(directory: Path, name: str) -> Path:
    """``NAME.yaml`` or ``NAME.yml`` in ``directory`` (or NAME itself when it ends so)."""
    names = [name] if name.endswith((".yaml", ".yml")) else [f"{name}.yaml", f"{name}.yml"]
    for n in names:
        if (directory / n).is_file():
            return directory / n
    raise ConfigError(f"no config file {' or '.join(names)} in {directory}")


def layered_argv(argv: list[str], tmp: Path, cwd: Path) -> tuple[list[str], Path | None]:
    """Hydra's arguments for a config file given with ``--config-path DIR [--config-name NAME]``
    (NAME.yaml or NAME.yml): the file is composed over the package's defaults (so every key, e.g.
    ``test.data_root``, is overridable without ``+``), via a primary config written to ``tmp``.
    Returns (arguments, the file); without ``--config-path`` the arguments as given and None."""
    import yaml
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    found, rest = _flag_values(argv)
    if "path" not in found:
        return argv, None
    directory = (cwd / os.path.expanduser(found["path"])).resolve()
    given = config_file(directory, found.get("name") or "config")
    text = given.read_text()
    try:
        doc = OmegaConf.load(given)
    except (OmegaConfBaseException, yaml.YAMLError) as exc:
        raise ConfigError(f"{given}: not a config file ({str(exc).splitlines()[0]})") from None
    if isinstance(doc, DictConfig) and "defaults" in doc:  # its own defaults list: Hydra's primary, as it is
        write_text(tmp / "config.yaml", text)
        return [
            *rest,
            "--config-path",
            str(tmp),
            "--config-name",
            "config",
            f"hydra.searchpath=[file://{directory}]",
        ], given
    write_text(tmp / f"{DEFAULTS_NAME}.yaml", (Path(__file__).parent / "conf" / "config.yaml").read_text())
    write_text(tmp / f"{GIVEN_NAME}.yaml", text)
    write_text(tmp / "config.yaml", f"defaults:\n  - {DEFAULTS_NAME}\n  - {GIVEN_NAME}\n  - _self_\n")
    return [*rest, "--config-path", str(tmp), "--config-name", "config"], given


_CONFIG_FILE: list[Path] = []  # the config file given, for the Hydra task function


def _hydra_entry():
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    @hydra.main(version_base="1.3", config_path="conf", config_name="config")
    def _main(cfg) -> None:
        hc = HydraConfig.get()
        cwd = Path(hydra.utils.get_original_cwd())
        sweep_dir = cwd / hc.sweep.dir if hc.mode == RunMode.MULTIRUN else None
        try:
            config_dir = _CONFIG_FILE[0].parent if _CONFIG_FILE else None
            run_composed(cfg, Path(hc.runtime.output_dir), cwd, config_dir, sweep_dir)
        except MetaEMGError:  # said (one line, on stderr and in the run's log)
            sys.exit(2)

    return _main


SUMMARIZE_FLAG = "--summarize"


def summarize_main(args: list[str]) -> int:
    """``metaemg-train --summarize SWEEP_DIR``: (re)write a sweep's summary from its job directories."""
    from metalearn.runplots import summarize_sweep

    if len(args) != 1:
        print(
            f"error: {SUMMARIZE_FLAG} takes one sweep directory (hydra.sweep.dir), got {len(args)} arguments",
            file=sys.stderr,
        )
        return 2
    try:
        paths = summarize_sweep(Path(args[0]))
    except MetaEMGError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(str(p) for p in paths))
    return 0


def main() -> None:
    import tempfile

    if sys.argv[1:2] == [SUMMARIZE_FLAG]:
        sys.exit(summarize_main(sys.argv[2:]))
    with tempfile.TemporaryDirectory(prefix="metaemg-train-") as tmp:
        try:
            argv, given = layered_argv(sys.argv[1:], Path(tmp), Path.cwd())
        except MetaEMGError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        if given is not None:
            _CONFIG_FILE[:] = [given]
        sys.argv[1:] = argv
        _hydra_entry()()


if __name__ == "__main__":
    main()
