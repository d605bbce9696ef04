"""Meta-step speed of metalearn.maml against the research code's way, in the same run, on the
same synthetic tasks shaped like real ones (8 channels, 50-sample windows).

    python -m bench.maml_speed [--json] [--models dnn,cnn] [--research-only] [--target 0.95] [--threads N]

Two comparisons:

1. Research pipeline vs metaemg-train (the headline): the research code's meta-step as it ran
   (higher, a DifferentiableAdam inner loop of mini-batch epochs over each task's whole support,
   tasks looped) against metaemg-train's (fixed-size sampled windows, full-batch inner steps, all
   tasks in one vmap): seconds per meta-step, and training seconds until the held-out
   post-adaptation accuracy reaches ``--target`` ("equal final accuracy"). ``speedup`` in the JSON
   is that time-to-target ratio, on the model where it is smallest.
2. Same algorithm, same data per step (higher vs torch.func: vmapped and looped second order,
   vmapped first order), with post-adaptation accuracy after ``--meta-steps``: under
   ``same_algorithm`` in the JSON.

With --json the last line printed is one JSON document.
"""

from __future__ import annotations

import argparse
import json
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
from metalearn.maml import InnerLoop, OuterLoop, adapt, meta_step, model_params
from metalearn.models import build_model

CHANNELS, WINDOW, N_CLASSES = 8, 50, 3
OUTER_LR, LR_CYCLE, LR_FACTOR = 1e-3, 1000, 0.5
# Our configurations: name -> (first_order, batched). The loop runs the same maths as the vmap.
OURS = {"vmap_second_order": (False, True), "loop_second_order": (False, False), "vmap_first_order": (True, True)}
ACCURACY_TOLERANCE = 0.02  # "equal final accuracy": ours >= reference - this

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


class Reference:
    """The research code's meta-step: higher.innerloop_ctx with a DifferentiableAdam inner loop."""

    def __init__(self, model: nn.Module, inner: InnerLoop):
        self.model, self.inner = model, inner
        self.opt = torch.optim.AdamW(model.parameters(), lr=OUTER_LR)
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=LR_CYCLE, gamma=LR_FACTOR)

    def step(self, tasks: list[Task]) -> float:
        self.opt.zero_grad()
        total = 0.0
        for xs, ys, xq, yq in tasks:
            inner_opt = torch.optim.Adam(self.model.parameters(), lr=self.inner.lr)
            with higher.innerloop_ctx(self.model, inner_opt, copy_initial_weights=False, track_higher_grads=True) as (
                fmodel,
                diffopt,
            ):
                for _ in range(self.inner.steps):
                    diffopt.step(F.cross_entropy(fmodel(xs), ys))
                loss = F.cross_entropy(fmodel(xq), yq) / len(tasks)
                loss.backward()
                total += loss.item()
        self.opt.step()
        self.sched.step()
        return total


class Ours:
    def __init__(self, model: nn.Module, inner: InnerLoop, batched: bool):
        self.model, self.inner, self.batched = model, inner, batched
        self.outer = OuterLoop(model, lr=OUTER_LR, lr_cycle=LR_CYCLE, lr_factor=LR_FACTOR)

    def step(self, tasks: list[Task]) -> float:
        return meta_step(self.model, self.outer, tasks, self.inner, batched=self.batched)


class ResearchPipeline:
    """The research code's meta-step as it ran (source/training_utils.py, ``_fine_tune_model``):
    per task, ``inner_epochs`` passes of a DifferentiableAdam (higher) over the task's whole
    support set in DataLoader mini-batches of ``batch`` windows, then the query loss summed over
    the query mini-batches and back-propagated, tasks one by one; AdamW on the initial weights."""

    def __init__(self, model: nn.Module, inner_epochs: int, lr: float, batch: int = 32):
        self.model, self.epochs, self.lr, self.batch = model, inner_epochs, lr, batch
        self.opt = torch.optim.AdamW(model.parameters(), lr=OUTER_LR)

    def _loaders(self, task: Task):
        from torch.utils.data import DataLoader, TensorDataset

        xs, ys, xq, yq = task
        return (DataLoader(TensorDataset(xs, ys), batch_size=self.batch),
                DataLoader(TensorDataset(xq, yq), batch_size=self.batch))

    def step(self, tasks: list[Task]) -> float:
        self.opt.zero_grad()
        total = 0.0
        for task in tasks:
            support, query = self._loaders(task)
            inner_opt = torch.optim.Adam(self.model.parameters(), lr=self.lr)
            with higher.innerloop_ctx(self.model, inner_opt, copy_initial_weights=False,
                                      track_higher_grads=True) as (fmodel, diffopt):
                for _ in range(self.epochs):
                    for xb, yb in support:
                        diffopt.step(F.cross_entropy(fmodel(xb), yb))
                loss = sum(F.cross_entropy(fmodel(xb), yb) for xb, yb in query)
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


class OursTrainer:
    """metaemg-train's meta-step: ``batch`` support and query windows sampled per task (fixed
    shapes), all tasks in one vmap, second order through ``inner.steps`` full-batch Adam steps."""

    def __init__(self, model: nn.Module, inner: InnerLoop, batch: int, seed: int = 0):
        self.model, self.inner, self.batch = model, inner, batch
        self.outer = OuterLoop(model, lr=OUTER_LR, lr_cycle=LR_CYCLE, lr_factor=LR_FACTOR)
        self.gen = torch.Generator().manual_seed(seed)

    def _pick(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(x), (self.batch,), generator=self.gen)
        return x[idx], y[idx]

    def step(self, tasks: list[Task]) -> float:
        batch = [(*self._pick(t[0], t[1]), *self._pick(t[2], t[3])) for t in tasks]
        return meta_step(self.model, self.outer, batch, self.inner, batched=True)

    def accuracy(self, tasks: list[Task]) -> float:
        return post_adaptation_accuracy(self.model, tasks, self.inner)


def research_comparison(kind: str, *, n_tasks: int, n_support: int, n_query: int, epochs: int, steps: int,
                        inner_lr: float, research_lr: float, batch: int, repeats: int, meta_steps: int,
                        target: float, eval_every: int, log: Callable[[str], None]) -> dict:
    """The headline figure: the research pipeline against metaemg-train's, each with its own inner
    loop: time per meta-step, and training time until the held-out post-adaptation accuracy
    reaches ``target`` (equal final accuracy)."""
    family = TaskFamily(seed=0)
    tasks = family.tasks(n_tasks, seed=1, n_support=n_support, n_query=n_query)
    inner = InnerLoop(steps=steps, lr=inner_lr, optimizer="adam")
    make = {"research": lambda: ResearchPipeline(fresh_model(kind), epochs, research_lr),
            "ours": lambda: OursTrainer(fresh_model(kind), inner, batch)}
    t, cpu = time_steps({n: (lambda n=n: (lambda m=make[n](): m.step(tasks))) for n in make}, repeats)
    held_out = family.tasks(16, seed=2, n_support=n_support, n_query=n_query)
    acc, to_target, curves = {}, {}, {}
    for name in make:  # train until the target accuracy: time spent in meta-steps only
        m, spent, curve = make[name](), 0.0, []
        for s in range(meta_steps):
            meta_batch = family.tasks(n_tasks, seed=100 + s, n_support=n_support, n_query=n_query)
            t0 = time.perf_counter()
            m.step(meta_batch)
            spent += time.perf_counter() - t0
            if (s + 1) % eval_every == 0 or s + 1 == meta_steps:
                curve.append((s + 1, round(spent, 3), round(m.accuracy(held_out), 4)))
                if curve[-1][2] >= target and name not in to_target:
                    to_target[name] = (s + 1, spent)
                    break
        acc[name], curves[name] = curve[-1][2], curve
    reached = len(to_target) == 2
    speedup_to_target = to_target["research"][1] / to_target["ours"][1] if reached else float("nan")
    out = {"model": kind, "research_s": t["research"], "ours_s": t["ours"], "step_ratio": t["research"] / t["ours"],
           "target_accuracy": target, "reached_target": reached,
           "research_to_target": to_target.get("research"), "ours_to_target": to_target.get("ours"),
           "speedup": speedup_to_target, "research_accuracy": acc["research"], "ours_accuracy": acc["ours"],
           "equal_accuracy": reached, "curves": curves,
           "research_setup": {"inner_epochs": epochs, "minibatch": 32, "inner_lr": research_lr,
                              "support": n_support, "query": n_query},
           "ours_setup": {"inner_steps": steps, "windows_per_task": batch, "inner_lr": inner_lr, "vmap": True}}
    log(f"{kind}: one meta-step: research pipeline {t['research']:.3f} s ({epochs} epochs of mini-batch Adam "
        f"over {n_support} support windows), metaemg-train {t['ours']:.3f} s ({steps} steps on {batch} sampled "
        f"windows, vmapped): {out['step_ratio']:.1f}x")
    for name in make:
        hit = to_target.get(name)
        log(f"  {name}: " + (f"held-out accuracy {acc[name]:.3f} >= {target} after {hit[0]} meta-steps, "
                             f"{hit[1]:.1f} s of training" if hit else
                             f"did not reach {target} in {meta_steps} meta-steps (last {acc[name]:.3f})"))
    if reached:
        log(f"  time to {target} held-out accuracy: {speedup_to_target:.1f}x faster")
    return out


def fresh_model(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(kind, n_channels=CHANNELS, window=WINDOW, n_classes=N_CLASSES)


def learner(name: str, kind: str, steps: int, inner_lr: float) -> Reference | Ours:
    if name == "reference":
        return Reference(fresh_model(kind), InnerLoop(steps=steps, lr=inner_lr, optimizer="adam"))
    first_order, batched = OURS[name]
    inner = InnerLoop(steps=steps, lr=inner_lr, optimizer="adam", first_order=first_order)
    return Ours(fresh_model(kind), inner, batched)


def time_steps(
    makers: dict[str, Callable[[], Callable[[], object]]], repeats: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and process-CPU seconds per call; methods interleaved so load hits all alike."""
    steps = {name: make() for name, make in makers.items()}
    for step in steps.values():
        step()  # warm-up
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            w, c = time.perf_counter(), time.process_time()
            step()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    return ({n: statistics.median(ts) for n, ts in wall.items()}, {n: statistics.median(ts) for n, ts in cpu.items()})


def post_adaptation_accuracy(model: nn.Module, tasks: list[Task], inner: InnerLoop) -> float:
    accs = []
    for xs, ys, xq, yq in tasks:
        params = adapt(model, model_params(model), xs, ys, steps=inner.steps, lr=inner.lr, optimizer=inner.optimizer)
        with torch.no_grad():
            accs.append(float((torch.func.functional_call(model, params, (xq,)).argmax(1) == yq).float().mean()))
    return float(np.mean(accs))


def run(
    models: list[str], *, n_tasks: int, n_support: int, n_query: int, steps: int, inner_lr: float, repeats: int,
    meta_steps: int, accuracy_model: str, log: Callable[[str], None] = print,
) -> dict:
    family = TaskFamily(seed=0)
    batch = family.tasks(n_tasks, seed=1, n_support=n_support, n_query=n_query)
    inner = InnerLoop(steps=steps, lr=inner_lr, optimizer="adam")
    result: dict = {
        "setup": {"channels": CHANNELS, "window": WINDOW, "tasks_per_meta_batch": n_tasks, "support": n_support,
                  "query": n_query, "inner_steps": steps, "inner_lr": inner_lr, "inner_optimizer": "adam",
                  "outer_lr": OUTER_LR, "repeats": repeats, "torch_threads": torch.get_num_threads(),
                  "torch": torch.__version__},
        "models": {},
    }
    names = ["reference", *OURS]
    for kind in models:
        makers = {n: lambda n=n, k=kind: (lambda m=learner(n, k, steps, inner_lr): m.step(batch)) for n in names}
        t, cpu = time_steps(makers, repeats)
        result["models"][kind] = {
            "reference_s": t["reference"], "reference_cpu_s": cpu["reference"],
            **{f"{n}_s": t[n] for n in OURS}, **{f"{n}_cpu_s": cpu[n] for n in OURS},
            **{f"speedup_{n}": t["reference"] / t[n] for n in OURS},
            **{f"speedup_cpu_{n}": cpu["reference"] / cpu[n] for n in OURS},
        }
        log(f"{kind}: reference (higher, 2nd order, tasks looped) {t['reference']:.3f} s/meta-step; ours: "
            + ", ".join(f"{n} {t[n]:.3f} s ({t['reference'] / t[n]:.2f}x)" for n in OURS))

    # Equal final accuracy: same init, meta-batches and outer optimiser for every method; then
    # the same adaptation (the reference's inner loop) on held-out tasks.
    held_out = family.tasks(16, seed=2, n_support=n_support, n_query=n_query)
    accuracy = {"model": accuracy_model, "meta_steps": meta_steps, "held_out_tasks": len(held_out),
                "untrained": post_adaptation_accuracy(fresh_model(accuracy_model), held_out, inner)}
    for name in ("reference", "vmap_second_order", "vmap_first_order"):
        m = learner(name, accuracy_model, steps, inner_lr)
        for s in range(meta_steps):
            m.step(family.tasks(n_tasks, seed=100 + s, n_support=n_support, n_query=n_query))
        accuracy[name] = post_adaptation_accuracy(m.model, held_out, inner)
    accuracy["loop_second_order"] = accuracy["vmap_second_order"]  # same maths (tests: equal gradients)
    result["accuracy"] = accuracy
    log(f"post-adaptation query accuracy after {meta_steps} meta-steps ({accuracy_model}, {len(held_out)} held-out "
        f"tasks): reference {accuracy['reference']:.3f}, "
        + ", ".join(f"{n} {accuracy[n]:.3f}" for n in ("vmap_second_order", "vmap_first_order"))
        + f", untrained {accuracy['untrained']:.3f}")

    holds = [n for n in OURS if accuracy[n] >= accuracy["reference"] - ACCURACY_TOLERANCE]
    pool = holds or list(OURS)
    speed = {n: min(result["models"][k][f"speedup_{n}"] for k in models) for n in pool}
    chosen = max(pool, key=speed.__getitem__)
    worst = min(models, key=lambda k: result["models"][k][f"speedup_{chosen}"])
    result.update(
        ours_config=chosen, equal_accuracy=bool(holds), model=worst, speedup=speed[chosen],
        reference_s=result["models"][worst]["reference_s"], ours_s=result["models"][worst][f"{chosen}_s"],
        reference_accuracy=accuracy["reference"], ours_accuracy=accuracy[chosen],
    )
    for n in OURS:
        gains = ", ".join(f"{k} {result['models'][k][f'speedup_{n}']:.2f}x" for k in models)
        verdict = "holds" if n in holds else "does NOT hold"
        log(f"  {n}: {gains}; {verdict} accuracy ({accuracy[n]:.3f} vs reference {accuracy['reference']:.3f})")
    log(f"same algorithm, same data per step: {chosen} {speed[chosen]:.2f}x (slowest-gaining model: {worst})"
        if holds else f"no configuration of ours held accuracy; fastest {chosen} {speed[chosen]:.2f}x")
    result["same_algorithm"] = {k: result.pop(k) for k in ("ours_config", "equal_accuracy", "model", "speedup",
                                                           "reference_s", "ours_s", "reference_accuracy",
                                                           "ours_accuracy")}
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.maml_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON document as the last line")
    p.add_argument("--models", default="dnn,cnn", help="comma-separated model kinds to time (default dnn,cnn)")
    p.add_argument("--tasks", type=int, default=8, help="tasks per meta-batch (default 8)")
    p.add_argument("--support", type=int, default=300, help="support windows per task (default 300)")
    p.add_argument("--query", type=int, default=100, help="query windows per task (default 100)")
    p.add_argument("--steps", type=int, default=5, help="ours: inner Adam steps (default 5)")
    p.add_argument("--inner-lr", type=float, default=1e-2, help="ours: inner Adam lr (default 1e-2)")
    p.add_argument("--repeats", type=int, default=3, help="timed meta-steps per method (median; default 3)")
    p.add_argument("--meta-steps", type=int, default=30, help="meta-steps before the accuracy check (default 30)")
    p.add_argument("--accuracy-model", default="dnn")
    p.add_argument("--research-epochs", type=int, default=3, help="research pipeline: inner epochs (default 3)")
    p.add_argument("--research-lr", type=float, default=1e-3, help="research pipeline: inner Adam lr (default 1e-3)")
    p.add_argument("--batch", type=int, default=64, help="ours: windows sampled per task (default 64)")
    p.add_argument("--research-only", action="store_true", help="skip the same-algorithm comparison")
    p.add_argument("--target", type=float, default=0.95, help="held-out accuracy both must reach (default 0.95)")
    p.add_argument("--target-meta-steps", type=int, default=100, help="meta-step budget to reach it (default 100)")
    p.add_argument("--eval-every", type=int, default=5, help="meta-steps between accuracy checks (default 5)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    args = p.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            p.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    if min(args.repeats, args.tasks, args.support, args.query) < 1 or min(args.steps, args.meta_steps) < 0:
        p.error("--repeats, --tasks, --support and --query must be >= 1; --steps and --meta-steps >= 0")
    try:
        research = [research_comparison(k, n_tasks=args.tasks, n_support=args.support, n_query=args.query,
                                        epochs=args.research_epochs, steps=args.steps, inner_lr=args.inner_lr,
                                        research_lr=args.research_lr, batch=args.batch, repeats=args.repeats,
                                        meta_steps=args.target_meta_steps, target=args.target,
                                        eval_every=args.eval_every, log=print)
                    for k in [m.strip() for m in args.models.split(",") if m.strip()]]
        result = {} if args.research_only else run(
            [m.strip() for m in args.models.split(",") if m.strip()], n_tasks=args.tasks, n_support=args.support,
            n_query=args.query, steps=args.steps, inner_lr=args.inner_lr, repeats=args.repeats,
            meta_steps=args.meta_steps, accuracy_model=args.accuracy_model,
        )
    except MetaEMGError as exc:
        print(f"maml_speed: {exc}", file=sys.stderr)
        return 2
    worst = min(research, key=lambda r: r["speedup"] if r["reached_target"] else -1.0)
    result.update(research_pipeline=research, speedup=worst["speedup"], model=worst["model"],
                  reference_s=worst["research_s"], ours_s=worst["ours_s"],
                  reference_accuracy=worst["research_accuracy"], ours_accuracy=worst["ours_accuracy"],
                  equal_accuracy=all(r["equal_accuracy"] for r in research))
    print(f"speedup (research pipeline / metaemg-train, training time to {args.target} held-out accuracy, "
          f"slowest-gaining model {worst['model']}): {worst['speedup']:.1f}x"
          + ("" if result["equal_accuracy"] else " (target NOT reached by both)"))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
