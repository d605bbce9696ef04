"""Meta-step speed of metalearn.maml against the research code's way, in the same run, on the
same synthetic tasks shaped like real ones (8 channels, 50-sample windows), at equal final accuracy.

    python -m bench.maml_speed [--json] [--models dnn,cnn] [--meta-steps 40] [--compile aot_eager] [--threads N]

The reference is the research code's meta-step as it ran: ``higher.innerloop_ctx`` with a
differentiable Adam inner loop of ``--epochs`` epochs of DataLoader mini-batches over each task's
support set, second order, tasks one by one. Ours is ``metalearn.maml.meta_step`` (what
``metaemg-train`` runs) with the same inner loop (``InnerLoop(batch_size=...)``: same epochs,
mini-batches, learning rate): all tasks in one vmap, second order; the same, first order; tasks
looped, second order (what vmap alone buys); and for each ``--compile`` backend, the vmapped
second-order meta-step through ``torch.compile`` (``test.compile`` in metaemg-train).

1. **Time**: median seconds per meta-step after one warm-up step, methods interleaved so load
   hits all alike. A compiled method's warm-up step is its compile: it is reported as
   ``compile_s``, with the number of meta-steps after which compiling beats the eager vmap.
2. **Accuracy**: each method meta-trains the same initial model on the same meta-batches for
   ``--meta-steps`` steps; then it adapts to 16 held-out tasks with its own inner loop and is
   scored on their query sets. A configuration of ours "holds accuracy" when its final accuracy
   is at least the reference's minus ``--tolerance``.
3. **Speedup** per model: reference seconds / seconds of the fastest configuration of ours that
   holds accuracy; ``speedup`` in the JSON is the smallest over the models.

With --json the last line printed is one JSON document.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable

import higher
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from metaemg.errors import MetaEMGError
from metalearn.maml import InnerLoop, OuterLoop, adapt, check_compile, meta_step, model_params
from metalearn.models import build_model

CHANNELS, WINDOW, N_CLASSES = 8, 50, 3
OUTER_LR, LR_CYCLE, LR_FACTOR = 1e-3, 1000, 0.5
# Our eager configurations: name -> (first_order, vmapped, compile backend); --compile adds
# "compiled_<backend>": (False, True, backend).
EAGER = {
    "vmap_second_order": (False, True, None),
    "vmap_first_order": (True, True, None),
    "loop_second_order": (False, False, None),
}
HELD_OUT_TASKS = 16

Task = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class TaskFamily:
    """Patients x conditions: open and close share a co-contraction pattern over 8 muscles
    (relax is weak), seen through a rotated armband with per-channel gains and a per-task
    pattern shift; each window has its own effort level, a slow modulation and noise."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        common = rng.uniform(0.3, 1.0, CHANNELS)
        self.patterns = np.stack([0.3 * common] + [common + 0.5 * rng.uniform(0, 1, CHANNELS) for _ in range(2)])

    def task(self, rng: np.random.Generator, n_support: int, n_query: int) -> Task:
        shift = int(rng.integers(CHANNELS))
        gains = rng.uniform(0.6, 1.4, CHANNELS)
        patterns = np.roll(self.patterns + rng.normal(0, 0.1, self.patterns.shape), shift, axis=1) * gains
        t = np.arange(WINDOW) / WINDOW

        def windows(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            y = rng.integers(N_CLASSES, size=n)
            effort = rng.uniform(0.5, 1.5, (n, 1, 1))
            phase = 2 * np.pi * rng.uniform(0.5, 3, (n, 1, 1)) * t[None, :, None] + rng.uniform(0, 6.3, (n, 1, 1))
            x = effort * patterns[y][:, None, :] * (1 + 0.3 * np.sin(phase)) + rng.normal(0, 0.5, (n, WINDOW, CHANNELS))
            return torch.tensor(x, dtype=torch.float32), torch.tensor(y)

        return (*windows(n_support), *windows(n_query))

    def tasks(self, n: int, seed: int, n_support: int, n_query: int) -> list[Task]:
        rng = np.random.default_rng(seed)
        return [self.task(rng, n_support, n_query) for _ in range(n)]


class Research:
    """The research code's meta-step as it ran (source/training_utils.py, ``_fine_tune_model``):
    per task, ``inner_epochs`` passes of a DifferentiableAdam (higher) over the task's whole
    support set in DataLoader mini-batches of ``batch`` windows, then the query loss summed over
    the query mini-batches and back-propagated, tasks one by one; AdamW on the initial weights."""

    def __init__(self, model: nn.Module, inner_epochs: int, lr: float, batch: int):
        self.model, self.epochs, self.lr, self.batch = model, inner_epochs, lr, batch
        self.reset(model.state_dict())

    def reset(self, state: dict) -> None:
        """Back to the initial weights ``state`` with a fresh outer optimiser."""
        self.model.load_state_dict(state)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=OUTER_LR)

    def _loaders(self, task: Task):
        from torch.utils.data import DataLoader, TensorDataset

        xs, ys, xq, yq = task
        return (
            DataLoader(TensorDataset(xs, ys), batch_size=self.batch),
            DataLoader(TensorDataset(xq, yq), batch_size=self.batch),
        )

    def step(self, tasks: list[Task]) -> float:
        self.opt.zero_grad()
        total = 0.0
        for task in tasks:
            support, query = self._loaders(task)
            inner_opt = torch.optim.Adam(self.model.parameters(), lr=self.lr)
            with higher.innerloop_ctx(self.model, inner_opt, copy_initial_weights=False, track_higher_grads=True) as (
                fmodel,
                diffopt,
            ):
                for _ in range(self.epochs):
                    for xb, yb in support:
                        diffopt.step(F.cross_entropy(fmodel(xb), yb))
                loss = sum(F.cross_entropy(fmodel(xb), yb) for xb, yb in query)
                assert isinstance(loss, torch.Tensor)  # the query set is never empty
                loss.backward()
                total += loss.item()
        self.opt.step()
        return total

    def accuracy(self, tasks: list[Task]) -> float:
        """Adapt as the research code evaluated (same epochs of mini-batch Adam), score the query."""
        accs = []
        for task in tasks:
            support, _ = self._loaders(task)
            inner_opt = torch.optim.Adam(self.model.parameters(), lr=self.lr)
            with higher.innerloop_ctx(self.model, inner_opt, track_higher_grads=False) as (fmodel, diffopt):
                for _ in range(self.epochs):
                    for xb, yb in support:
                        diffopt.step(F.cross_entropy(fmodel(xb), yb))
                with torch.no_grad():
                    accs.append(float((fmodel(task[2]).argmax(1) == task[3]).float().mean()))
        return float(np.mean(accs))


class Ours:
    """metalearn.maml.meta_step with the research code's inner loop (``inner.batch_size`` set)."""

    def __init__(self, model: nn.Module, inner: InnerLoop, vmapped: bool, compile: str | None):
        self.model, self.inner, self.vmapped, self.compile = model, inner, vmapped, compile
        self.reset(model.state_dict())

    def reset(self, state: dict) -> None:
        """Back to the initial weights ``state`` with a fresh outer optimiser (same model object:
        a compiled meta-step stays compiled)."""
        self.model.load_state_dict(state)
        self.outer = OuterLoop(self.model, lr=OUTER_LR, lr_cycle=LR_CYCLE, lr_factor=LR_FACTOR)

    def step(self, tasks: list[Task]) -> float:
        return meta_step(self.model, self.outer, tasks, self.inner, batched=self.vmapped, compile=self.compile)

    def accuracy(self, tasks: list[Task]) -> float:
        accs = []
        for xs, ys, xq, yq in tasks:
            params = adapt(
                self.model,
                model_params(self.model),
                xs,
                ys,
                steps=self.inner.steps,
                lr=self.inner.lr,
                optimizer=self.inner.optimizer,
                batch_size=self.inner.batch_size,
            )
            with torch.no_grad():
                logits = torch.func.functional_call(self.model, params, (xq,))
            accs.append(float((logits.argmax(1) == yq).float().mean()))
        return float(np.mean(accs))


def fresh_model(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(kind, n_channels=CHANNELS, window=WINDOW, n_classes=N_CLASSES)


def ours_configs(backends: list[str]) -> dict[str, tuple[bool, bool, str | None]]:
    return {**EAGER, **{f"compiled_{b}": (False, True, b) for b in backends}}


def learner(
    name: str, kind: str, epochs: int, lr: float, batch: int, ours: dict[str, tuple[bool, bool, str | None]]
) -> Research | Ours:
    if name == "reference":
        return Research(fresh_model(kind), epochs, lr, batch)
    first_order, vmapped, backend = ours[name]
    inner = InnerLoop(steps=epochs, lr=lr, optimizer="adam", first_order=first_order, batch_size=batch)
    return Ours(fresh_model(kind), inner, vmapped, backend)


def time_steps(
    steps: dict[str, Callable[[], object]], repeats: int
) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Median wall and process-CPU seconds per call, and each method's first (warm-up) call;
    methods interleaved so load hits all alike."""
    first: dict[str, float] = {}
    for name, step in steps.items():
        w = time.perf_counter()
        step()
        first[name] = time.perf_counter() - w
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            w, c = time.perf_counter(), time.process_time()
            step()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    return (
        {n: statistics.median(ts) for n, ts in wall.items()},
        {n: statistics.median(ts) for n, ts in cpu.items()},
        first,
    )


def _curve(m, initial: dict, family, held_out, n_tasks: int, n_support: int, n_query: int, steps: int, every: int):
    """``m`` trained from ``initial`` for ``steps`` meta-steps: its held-out accuracy every ``every`` steps."""
    curve: list[tuple[int, float]] = []
    m.reset(initial)
    for s in range(steps):
        m.step(family.tasks(n_tasks, seed=100 + s, n_support=n_support, n_query=n_query))
        if (s + 1) % every == 0 or s + 1 == steps:
            curve.append((s + 1, round(m.accuracy(held_out), 4)))
    return curve


def compare(
    kind: str,
    *,
    n_tasks: int,
    n_support: int,
    n_query: int,
    epochs: int,
    lr: float,
    batch: int,
    repeats: int,
    meta_steps: int,
    eval_every: int,
    tolerance: float,
    backends: list[str],
    log: Callable[[str], None],
) -> dict:
    """Time per meta-step and final held-out accuracy of the reference and each of our configurations."""
    family = TaskFamily(seed=0)
    batch_tasks = family.tasks(n_tasks, seed=1, n_support=n_support, n_query=n_query)
    ours = ours_configs(backends)
    names = ["reference", *ours]
    learners = {n: learner(n, kind, epochs, lr, batch, ours) for n in names}
    initial = {k: v.clone() for k, v in learners["reference"].model.state_dict().items()}  # all start here
    wall, cpu, first = time_steps({n: functools.partial(m.step, batch_tasks) for n, m in learners.items()}, repeats)
    compiled = [n for n in ours if ours[n][2]]
    compile_s = {n: first[n] - wall[n] for n in compiled}
    gain = {n: wall["vmap_second_order"] - wall[n] for n in compiled}
    break_even = {n: (math.ceil(compile_s[n] / gain[n]) if gain[n] > 0 else None) for n in compiled}
    log(
        f"{kind}: one meta-step ({n_tasks} tasks, {epochs} epochs of Adam on mini-batches of {batch} over "
        f"{n_support} support windows): reference (higher, tasks looped) {wall['reference']:.3f} s; "
        + ", ".join(f"{n} {wall[n]:.3f} s ({wall['reference'] / wall[n]:.2f}x)" for n in ours)
    )
    for n in compiled:
        log(
            f"  {n}: compiling took {compile_s[n]:.1f} s; it beats the eager vmap after "
            + (f"{break_even[n]} meta-steps" if break_even[n] else "no number of meta-steps")
        )

    held_out = family.tasks(HELD_OUT_TASKS, seed=2, n_support=n_support, n_query=n_query)
    trained = ("reference", "vmap_second_order", "vmap_first_order", *compiled)  # the loop is the vmap's maths (tested)
    learners["reference"].reset(initial)
    untrained = learners["reference"].accuracy(held_out)
    curves = {
        name: _curve(learners[name], initial, family, held_out, n_tasks, n_support, n_query, meta_steps, eval_every)
        for name in trained
    }
    final = {n: curves[n][-1][1] if curves[n] else untrained for n in trained}
    final["loop_second_order"] = final["vmap_second_order"]
    holds = [n for n in ours if final[n] >= final["reference"] - tolerance]
    chosen = min(holds, key=wall.__getitem__) if holds else None
    out = {
        "model": kind,
        "reference_s": wall["reference"],
        "reference_cpu_s": cpu["reference"],
        **{f"{n}_s": wall[n] for n in ours},
        **{f"{n}_cpu_s": cpu[n] for n in ours},
        **{f"speedup_{n}": wall["reference"] / wall[n] for n in ours},
        **{f"{n}_compile_s": compile_s[n] for n in compiled},
        **{f"{n}_break_even_meta_steps": break_even[n] for n in compiled},
        "untrained_accuracy": untrained,
        "final_accuracy": final,
        "curves": curves,
        "holds_accuracy": holds,
        "ours_config": chosen,
        "ours_s": None if chosen is None else wall[chosen],
        "speedup": None if chosen is None else wall["reference"] / wall[chosen],
    }
    _log_accuracy(log, out, trained, meta_steps, tolerance)
    return out


def _log_accuracy(log: Callable[[str], None], out: dict, trained: tuple, meta_steps: int, tolerance: float) -> None:
    final, chosen = out["final_accuracy"], out["ours_config"]
    log(
        f"  held-out accuracy after {meta_steps} meta-steps: reference {final['reference']:.3f}, "
        + ", ".join(f"{n} {final[n]:.3f}" for n in trained[1:])
        + f" (untrained {out['untrained_accuracy']:.3f})"
    )
    log(
        f"  {out['model']}: "
        + (
            f"{chosen} holds accuracy: {out['speedup']:.2f}x"
            if chosen
            else f"no configuration of ours holds accuracy within {tolerance}"
        )
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.maml_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON document as the last line")
    p.add_argument("--models", default="dnn,cnn", help="comma-separated model kinds (default dnn,cnn)")
    p.add_argument("--tasks", type=int, default=8, help="tasks per meta-batch (default 8)")
    p.add_argument("--support", type=int, default=300, help="support windows per task (default 300)")
    p.add_argument("--query", type=int, default=100, help="query windows per task (default 100)")
    p.add_argument("--epochs", type=int, default=3, help="inner epochs over the support (default 3)")
    p.add_argument("--inner-lr", type=float, default=1e-3, help="inner Adam learning rate (default 1e-3)")
    p.add_argument("--batch", type=int, default=32, help="inner mini-batch, windows (default 32)")
    p.add_argument("--repeats", type=int, default=3, help="timed meta-steps per method (median; default 3)")
    p.add_argument("--meta-steps", type=int, default=40, help="meta-steps before the accuracy check (default 40)")
    p.add_argument("--eval-every", type=int, default=10, help="meta-steps between accuracy checks (default 10)")
    p.add_argument(
        "--tolerance", type=float, default=0.01, help="ours holds accuracy if >= reference - this (default 0.01)"
    )
    p.add_argument(
        "--compile",
        default="aot_eager",
        help="comma-separated torch.compile backends to time as well (aot_eager, inductor; "
        "'' for none; default aot_eager). inductor compiles for minutes the first time",
    )
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    return p


def _summary(args: argparse.Namespace, backends: list[str], results: list[dict]) -> dict:
    """The JSON document: the set-up, each model's figures, and the slowest-gaining model's."""
    held = all(r["speedup"] is not None for r in results)
    worst = min(results, key=lambda r: r["speedup"] if r["speedup"] is not None else -1.0)
    result = {
        "setup": {
            "channels": CHANNELS,
            "window": WINDOW,
            "tasks_per_meta_batch": args.tasks,
            "support": args.support,
            "query": args.query,
            "inner_epochs": args.epochs,
            "inner_batch": args.batch,
            "inner_lr": args.inner_lr,
            "inner_optimizer": "adam",
            "outer_lr": OUTER_LR,
            "meta_steps": args.meta_steps,
            "tolerance": args.tolerance,
            "repeats": args.repeats,
            "compile_backends": backends,
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "models": {r["model"]: r for r in results},
        "equal_accuracy": held,
        "model": worst["model"],
        "speedup": worst["speedup"],
        "ours_config": worst["ours_config"],
        "reference_s": worst["reference_s"],
        "ours_s": worst["ours_s"],
        "reference_accuracy": worst["final_accuracy"]["reference"],
        "ours_accuracy": None if worst["ours_config"] is None else worst["final_accuracy"][worst["ours_config"]],
    }
    return result


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            p.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    if min(args.repeats, args.tasks, args.support, args.query, args.epochs, args.batch, args.eval_every) < 1:
        p.error("--repeats, --tasks, --support, --query, --epochs, --batch and --eval-every must be >= 1")
    if args.meta_steps < 0 or args.tolerance < 0:
        p.error("--meta-steps and --tolerance must be >= 0")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    backends = [b.strip() for b in args.compile.split(",") if b.strip()]
    try:
        for b in backends:
            check_compile(b)
        results = [
            compare(
                k,
                n_tasks=args.tasks,
                n_support=args.support,
                n_query=args.query,
                epochs=args.epochs,
                lr=args.inner_lr,
                batch=args.batch,
                repeats=args.repeats,
                meta_steps=args.meta_steps,
                eval_every=args.eval_every,
                tolerance=args.tolerance,
                backends=backends,
                log=print,
            )
            for k in models
        ]
    except MetaEMGError as exc:
        print(f"maml_speed: {exc}", file=sys.stderr)
        return 2
    result = _summary(args, backends, results)
    held, worst = result["equal_accuracy"], result["models"][result["model"]]
    if held:
        print(
            f"speedup at equal final accuracy (reference s / ours s per meta-step, slowest-gaining model "
            f"{worst['model']}, {worst['ours_config']}): {worst['speedup']:.2f}x"
        )
    else:
        print(f"speedup: none of our configurations held accuracy on {worst['model']}")
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
