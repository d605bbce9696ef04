"""Adapt-and-score, the research code's baselines (B1, B2) and the run reports.

B1 fine-tunes an untrained model, B2 pre-trains on all training tasks pooled and then fine-tunes,
the meta-model fine-tunes; each with the same inner loop on each test task's support, scored on
its query.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from metaemg.atomic import write_text
from metalearn.maml import adapt_model, model_params
from metalearn.tasks import TaskWindows

METHODS = ("B1", "B2", "meta-model")


def support_part(tw: TaskWindows, rorcr_size: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The first ``rorcr_size`` fraction of the support windows (research ``rorcr_size``)."""
    n = max(1, int(round(len(tw.x_support) * rorcr_size)))
    return tw.x_support[:n], tw.y_support[:n]


def to_tensor(x: np.ndarray, device: torch.device, dtype=torch.float32) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype, device=device)


@torch.no_grad()
def score(model: nn.Module, params: dict, x: np.ndarray, y: np.ndarray, device: torch.device) -> dict:
    from torch.func import functional_call

    logits = torch.cat(
        [functional_call(model, params, (to_tensor(x[i : i + 4096], device),)) for i in range(0, len(x), 4096)]
    )
    target = to_tensor(y, device, torch.long)
    return {
        "accuracy": float((logits.argmax(1) == target).float().mean()),
        "loss": float(F.cross_entropy(logits, target)),
    }


def adapt_and_score(model: nn.Module, tw: TaskWindows, *, inner: dict, rorcr_size: float, device: torch.device) -> dict:
    """Adapt a copy of ``model`` to the task's support as ``inner`` says (:func:`metalearn.maml.adapt_model`),
    score it on the query."""
    xs, ys = support_part(tw, rorcr_size)
    fitted = adapt_model(model, to_tensor(xs, device), to_tensor(ys, device, torch.long), inner)
    return score(fitted, model_params(fitted), tw.x_query, tw.y_query, device)


def pretrain_pooled(
    model: nn.Module,
    tasks: list[TaskWindows],
    *,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    device: torch.device,
    on_step: Callable[[], None] | None = None,
) -> nn.Module:
    """B2's pre-training: plain supervised training on all training tasks' windows pooled
    (``on_step`` called after each update)."""
    x = np.concatenate([np.concatenate([t.x_support, t.x_query]) for t in tasks])
    y = np.concatenate([np.concatenate([t.y_support, t.y_query]) for t in tasks])
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = rng.integers(0, len(x), batch)
        loss = F.cross_entropy(model(to_tensor(x[idx], device)), to_tensor(y[idx], device, torch.long))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if on_step:
            on_step()
    return model.eval()


def compare(
    models: dict[str, nn.Module],
    tests: list[TaskWindows],
    *,
    steps_list: list[int],
    inner: dict,
    rorcr_size: float,
    device: torch.device,
    on_task: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Per method, per inner-step count, per task: accuracy and loss after adaptation (``inner``
    with its ``steps`` replaced by each count). ``on_task(method, steps, task index)`` is called
    after each adaptation."""
    logs: dict = {}
    for name, model in models.items():
        logs[name] = {}
        for steps in steps_list:
            done = logs[name][str(steps)] = {}
            for i, tw in enumerate(tests):
                done[str(tw.ref)] = adapt_and_score(
                    model, tw, inner={**inner, "steps": steps}, rorcr_size=rorcr_size, device=device
                )
                if on_task:
                    on_task(name, steps, i)
    return logs


def results_table(logs: dict, steps: int) -> tuple[list[str], list[list]]:
    """Rows B1, B2, meta-model; columns the tasks and the mean (accuracy)."""
    tasks = list(next(iter(logs.values()))[str(steps)])
    rows = []
    for method in logs:
        accs = [logs[method][str(steps)][t]["accuracy"] for t in tasks]
        rows.append([method, *[round(a, 4) for a in accs], round(float(np.mean(accs)), 4)])
    return ["method", *tasks, "mean"], rows


def _csv(header: list, rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def write_reports(res_dir: Path, logs: dict, *, inner_steps: int, convergence: dict | None) -> dict:
    """results_table.csv, per_task_logs.json, res_barplot.png, and the convergence CSV + PNG."""
    from metalearn.runplots import barplot_figure, convergence_figure, save_png

    header, rows = results_table(logs, inner_steps)
    write_text(res_dir / "results_table.csv", _csv(header, rows))
    write_text(res_dir / "per_task_logs.json", json.dumps({"inner_steps": inner_steps, "logs": logs}, indent=1))
    per_task = {m: [v["accuracy"] for v in logs[m][str(inner_steps)].values()] for m in logs}
    save_png(barplot_figure(header[1:-1], per_task, inner_steps), res_dir / "res_barplot.png")
    out = {"table": {r[0]: r[-1] for r in rows}}
    if convergence:
        steps = sorted(int(s) for s in next(iter(convergence.values())))
        accs = {m: [[v["accuracy"] for v in convergence[m][str(s)].values()] for s in steps] for m in convergence}
        conv_rows = [[m, *[round(float(np.mean(a)), 4) for a in accs[m]]] for m in convergence]
        write_text(res_dir / "convergence.csv", _csv(["method", *[f"{s}_steps" for s in steps]], conv_rows))
        write_text(res_dir / "convergence_logs.json", json.dumps(convergence, indent=1))
        save_png(convergence_figure(steps, accs), res_dir / "convergence.png")
        out["convergence"] = {r[0]: dict(zip(steps, r[1:], strict=True)) for r in conv_rows}
    return out
