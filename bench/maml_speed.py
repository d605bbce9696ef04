"""Meta-step speed of metalearn.maml against the research code's way (higher, differentiable
Adam inner loop, second order, tasks one by one), in the same run, on the same synthetic tasks,
plus post-adaptation query accuracy after the same number of meta-steps of each.

    python -m bench.maml_speed [--json] [--models dnn,cnn] [--repeats 3] [--meta-steps 30] [--threads N]

Ours is timed as vmapped second order, looped second order and vmapped first order. With
--json the last line printed is one JSON document: ``speedup`` is reference time / our time
for the fastest configuration of ours whose accuracy is within 0.02 of the reference's, on the
model where it gains least; ``models`` and ``accuracy`` hold every figure.
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
    log(f"speedup at equal accuracy: {chosen} {speed[chosen]:.2f}x (slowest-gaining model: {worst})"
        if holds else f"no configuration of ours held accuracy; fastest {chosen} {speed[chosen]:.2f}x")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.maml_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON document as the last line")
    p.add_argument("--models", default="dnn,cnn", help="comma-separated model kinds to time (default dnn,cnn)")
    p.add_argument("--tasks", type=int, default=8, help="tasks per meta-batch (default 8)")
    p.add_argument("--support", type=int, default=300, help="support windows per task (default 300)")
    p.add_argument("--query", type=int, default=100, help="query windows per task (default 100)")
    p.add_argument("--steps", type=int, default=10, help="inner Adam steps (default 10)")
    p.add_argument("--inner-lr", type=float, default=1e-3, help="inner Adam lr (default 1e-3)")
    p.add_argument("--repeats", type=int, default=3, help="timed meta-steps per method (median; default 3)")
    p.add_argument("--meta-steps", type=int, default=30, help="meta-steps before the accuracy check (default 30)")
    p.add_argument("--accuracy-model", default="dnn")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    args = p.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            p.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    if min(args.repeats, args.tasks, args.support, args.query) < 1 or min(args.steps, args.meta_steps) < 0:
        p.error("--repeats, --tasks, --support and --query must be >= 1; --steps and --meta-steps >= 0")
    try:
        result = run(
            [m.strip() for m in args.models.split(",") if m.strip()], n_tasks=args.tasks, n_support=args.support,
            n_query=args.query, steps=args.steps, inner_lr=args.inner_lr, repeats=args.repeats,
            meta_steps=args.meta_steps, accuracy_model=args.accuracy_model,
        )
    except MetaEMGError as exc:
        print(f"maml_speed: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
