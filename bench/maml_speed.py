"""Meta-step speed of metalearn.maml against the research code's way (higher, differentiable
Adam inner loop, second order, tasks one by one), in the same run, on the same synthetic tasks,
plus post-adaptation query accuracy after the same number of meta-steps of each.

    python -m bench.maml_speed [--json] [--models dnn,cnn] [--repeats 3] [--meta-steps 30]

With --json the last line printed is one JSON document (``speedup`` = reference time / our
time for our chosen configuration, first-order vmapped, on the slowest-gaining model).
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

from metalearn.maml import InnerLoop, OuterLoop, adapt, meta_step, model_params
from metalearn.models import build_model

CHANNELS, WINDOW, N_CLASSES = 8, 50, 3
OUTER_LR, LR_CYCLE, LR_FACTOR = 1e-3, 1000, 0.5
OURS = {"vmap_first_order": True, "vmap_second_order": False}  # name -> first_order
CHOSEN = "vmap_first_order"

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
    def __init__(self, model: nn.Module, inner: InnerLoop):
        self.model, self.inner = model, inner
        self.outer = OuterLoop(model, lr=OUTER_LR, lr_cycle=LR_CYCLE, lr_factor=LR_FACTOR)

    def step(self, tasks: list[Task]) -> float:
        return meta_step(self.model, self.outer, tasks, self.inner)


def fresh_model(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(kind, n_channels=CHANNELS, window=WINDOW, n_classes=N_CLASSES)


def time_steps(makers: dict[str, Callable[[], Callable[[], object]]], repeats: int) -> dict[str, float]:
    """Median seconds per call, the methods interleaved so that load on the machine hits all alike."""
    steps = {name: make() for name, make in makers.items()}
    for step in steps.values():
        step()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


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
    ref_inner = InnerLoop(steps=steps, lr=inner_lr, optimizer="adam", first_order=False)
    result: dict = {
        "setup": {"channels": CHANNELS, "window": WINDOW, "tasks_per_meta_batch": n_tasks, "support": n_support,
                  "query": n_query, "inner_steps": steps, "inner_lr": inner_lr, "inner_optimizer": "adam",
                  "repeats": repeats, "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "ours_config": CHOSEN,
        "models": {},
    }
    for kind in models:
        makers = {"reference": lambda k=kind: (lambda r=Reference(fresh_model(k), ref_inner): r.step(batch))}
        for name, first_order in OURS.items():
            inner = InnerLoop(steps=steps, lr=inner_lr, optimizer="adam", first_order=first_order)
            makers[name] = lambda k=kind, i=inner: (lambda o=Ours(fresh_model(k), i): o.step(batch))
        t = time_steps(makers, repeats)
        entry = {"reference_s": t["reference"], **{f"{n}_s": t[n] for n in OURS},
                 **{f"speedup_{n}": t["reference"] / t[n] for n in OURS}}
        result["models"][kind] = entry
        log(f"{kind}: reference (higher, 2nd order, loop) {t['reference']:.3f} s/meta-step; "
            + "; ".join(f"ours {n} {t[n]:.3f} s ({entry[f'speedup_{n}']:.2f}x)" for n in OURS))
    worst = min(result["models"], key=lambda k: result["models"][k][f"speedup_{CHOSEN}"])
    result.update(model=worst, reference_s=result["models"][worst]["reference_s"],
                  ours_s=result["models"][worst][f"{CHOSEN}_s"],
                  speedup=result["models"][worst][f"speedup_{CHOSEN}"])

    # Equal final accuracy: the same meta-batches, init and outer optimiser for both methods.
    held_out = family.tasks(8, seed=2, n_support=n_support, n_query=n_query)
    ours_inner = InnerLoop(steps=steps, lr=inner_lr, optimizer="adam", first_order=OURS[CHOSEN])
    untrained = post_adaptation_accuracy(fresh_model(accuracy_model), held_out, ref_inner)
    accuracy = {"model": accuracy_model, "meta_steps": meta_steps, "untrained": untrained}
    for name, learner in (("reference", Reference(fresh_model(accuracy_model), ref_inner)),
                          ("ours", Ours(fresh_model(accuracy_model), ours_inner))):
        start = time.perf_counter()
        for s in range(meta_steps):
            learner.step(family.tasks(n_tasks, seed=100 + s, n_support=n_support, n_query=n_query))
        accuracy[f"{name}_train_s"] = time.perf_counter() - start
        accuracy[name] = post_adaptation_accuracy(learner.model, held_out, ref_inner)
    result["accuracy"] = accuracy
    log(f"accuracy after {meta_steps} meta-steps ({accuracy_model}, held-out tasks, {steps} Adam steps on support): "
        f"reference {accuracy['reference']:.3f}, ours ({CHOSEN}) {accuracy['ours']:.3f}, untrained {untrained:.3f}; "
        f"training took {accuracy['reference_train_s']:.1f} s vs {accuracy['ours_train_s']:.1f} s")
    log(f"speedup ({CHOSEN}, {worst}, the smaller of the models): {result['speedup']:.2f}x")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.maml_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON document as the last line")
    p.add_argument("--models", default="dnn,cnn", help="comma-separated model kinds to time (default dnn,cnn)")
    p.add_argument("--tasks", type=int, default=8, help="tasks per meta-batch (default 8)")
    p.add_argument("--support", type=int, default=300, help="support windows per task (default 300)")
    p.add_argument("--query", type=int, default=100, help="query windows per task (default 100)")
    p.add_argument("--steps", type=int, default=10, help="inner Adam steps (default 10)")
    p.add_argument("--inner-lr", type=float, default=0.01)
    p.add_argument("--repeats", type=int, default=3, help="timed meta-steps per method (median; default 3)")
    p.add_argument("--meta-steps", type=int, default=30, help="meta-steps before the accuracy check (default 30)")
    p.add_argument("--accuracy-model", default="dnn")
    args = p.parse_args(argv)
    result = run(
        [m.strip() for m in args.models.split(",") if m.strip()], n_tasks=args.tasks, n_support=args.support,
        n_query=args.query, steps=args.steps, inner_lr=args.inner_lr, repeats=args.repeats,
        meta_steps=args.meta_steps, accuracy_model=args.accuracy_model,
    )
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
