"""Adapt-and-score, the research code's baselines (B1, B2) and the run reports.

B1 fine-tunes an untrained model, B2 pre-trains on all training tasks pooled and then fine-tunes,
the meta-model fine-tunes; each with the same inner loop on each test task's support, scored on
its query.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from metaemg.atomic import write_bytes, write_text
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
    model: nn.Module, tasks: list[TaskWindows], *, steps: int, batch: int, lr: float, seed: int, device: torch.device
) -> nn.Module:
    """B2's pre-training: plain supervised training on all training tasks' windows pooled."""
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
    return model.eval()


def compare(
    models: dict[str, nn.Module],
    tests: list[TaskWindows],
    *,
    steps_list: list[int],
    inner: dict,
    rorcr_size: float,
    device: torch.device,
) -> dict:
    """Per method, per inner-step count, per task: accuracy and loss after adaptation (``inner``
    with its ``steps`` replaced by each count)."""
    logs: dict = {}
    for name, model in models.items():
        logs[name] = {}
        for steps in steps_list:
            logs[name][str(steps)] = {
                str(tw.ref): adapt_and_score(
                    model, tw, inner={**inner, "steps": steps}, rorcr_size=rorcr_size, device=device
                )
                for tw in tests
            }
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
    header, rows = results_table(logs, inner_steps)
    write_text(res_dir / "results_table.csv", _csv(header, rows))
    write_text(res_dir / "per_task_logs.json", json.dumps({"inner_steps": inner_steps, "logs": logs}, indent=1))
    _barplot(res_dir / "res_barplot.png", header[1:-1], rows, inner_steps)
    out = {"table": {r[0]: r[-1] for r in rows}}
    if convergence:
        steps = sorted(int(s) for s in next(iter(convergence.values())))
        conv_rows = [
            [m, *[round(float(np.mean([v["accuracy"] for v in convergence[m][str(s)].values()])), 4) for s in steps]]
            for m in convergence
        ]
        write_text(res_dir / "convergence.csv", _csv(["method", *[f"{s}_steps" for s in steps]], conv_rows))
        write_text(res_dir / "convergence_logs.json", json.dumps(convergence, indent=1))
        _convplot(res_dir / "convergence.png", steps, conv_rows)
        out["convergence"] = {r[0]: dict(zip(steps, r[1:], strict=True)) for r in conv_rows}
    return out


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    write_bytes(path, buf.getvalue())


def _barplot(path: Path, tasks: list[str], rows: list[list], steps: int) -> None:
    plt = _figure()
    labels = [*tasks, "mean"]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels) + 2), 4))
    width = 0.8 / len(rows)
    xs = np.arange(len(labels))
    for i, row in enumerate(rows):
        ax.bar(xs + (i - (len(rows) - 1) / 2) * width, row[1:], width, label=row[0])
    ax.set_xticks(xs, [lab.split("/")[0] for lab in labels], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("query accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"accuracy after {steps} inner steps on each test task's support")
    ax.legend()
    _save(fig, path)
    plt.close(fig)


def _convplot(path: Path, steps: list[int], rows: list[list]) -> None:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        ax.plot(steps, row[1:], marker="o", label=row[0])
    ax.set_xscale("log")
    ax.set_xlabel("inner steps")
    ax.set_ylabel("mean query accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("convergence over inner steps")
    ax.legend()
    _save(fig, path)
    plt.close(fig)
