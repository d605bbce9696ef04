"""What a run directory and a sweep directory show a reader without opening JSON.

A run (``metaemg-train``): ``results/curves.png`` (loss and accuracy over meta-epochs, meta-train
and validation), ``results/res_barplot.png`` (accuracy per test task and the mean with its spread
across tasks) and ``results/convergence.png``. A sweep (``metaemg-train -m``): ``sweep_summary.csv``,
``sweep_summary.md`` and ``sweep_summary.png`` in the sweep directory, one row per job (its
overrides and results), rebuilt from the job directories by :func:`summarize_sweep` (each job
calls it when it ends; ``metaemg-train --summarize DIR`` rebuilds it).

matplotlib is imported only when a plot is drawn, with the Agg backend (no display); every file
is written atomically. Accuracy axes are scaled to the data (0.89 and 0.97 must look different),
so a bar's height is read against the axis, not from zero: the axis label says where it starts.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from metaemg.atomic import write_bytes, write_text
from metaemg.errors import ConfigError, DataError

SPREAD = "±1 std across tasks"  # what every error bar here is (sample std, ddof 1; 0 with one task)
SWEEP_FILES = ("sweep_summary.csv", "sweep_summary.md", "sweep_summary.png")


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path, dpi: int = 110) -> Path:
    """``fig`` as a PNG at ``path`` (atomic; the legend outside the axes included), then closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    write_bytes(path, buf.getvalue())
    return path


def spread(values) -> float:
    """The error bars' spread: sample standard deviation (0 for fewer than two values)."""
    v = np.asarray(values, dtype=float)
    return float(v.std(ddof=1)) if v.size > 1 else 0.0


def data_limits(lo: float, hi: float, *, floor: float = 0.0, ceil: float = 1.0) -> tuple[float, float]:
    """Axis limits around [lo, hi] with a margin, within [floor, ceil] plus the margin at the top."""
    span = max(hi - lo, 0.02)
    return max(floor, lo - 0.25 * span), min(ceil, hi) + 0.2 * span


def _legend_outside(ax, **kw) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8, **kw)


def _accuracy_label(bottom: float) -> str:
    return "query accuracy" + (f" (axis from {bottom:.2f}, not 0)" if bottom > 0 else "")


# ---------------------------------------------------------------- one run


def barplot_figure(tasks: list[str], per_task: dict[str, list[float]], steps: int):
    """Grouped bars: each method's accuracy on each test task, and its mean over the tasks with
    an error bar (:data:`SPREAD`); y scaled to the data; the legend right of the axes."""
    plt = pyplot()
    labels = [*tasks, "mean"]
    methods = list(per_task)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 4))
    width = 0.8 / len(methods)
    xs = np.arange(len(labels))
    lows, highs = [], []
    for i, method in enumerate(methods):
        accs = list(per_task[method])
        mean, err = float(np.mean(accs)), spread(accs)
        at = xs + (i - (len(methods) - 1) / 2) * width
        ax.bar(at, [*accs, mean], width, label=method)
        ax.errorbar(at[-1], mean, yerr=err, color="black", capsize=3, lw=1)
        ax.annotate(
            f"{mean:.3f}", (at[-1], mean + err), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7
        )
        lows.append(min(min(accs), mean - err))
        highs.append(max(max(accs), mean + err))
    bottom, top = data_limits(min(lows), max(highs))
    ax.set_ylim(bottom, top)
    ax.set_xticks(xs, [lab.split("/")[0] for lab in labels], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(_accuracy_label(bottom))
    ax.set_xlabel(f"test task; mean: error bar {SPREAD.replace('tasks', f'the {len(tasks)} tasks')}")
    ax.set_title(f"accuracy after {steps} inner steps on each test task's support")
    _legend_outside(ax, title="method")
    return fig


def convergence_figure(steps: list[int], per_task: dict[str, list[list[float]]]):
    """Mean accuracy over the inner-step counts per method (``per_task[method][i]``: the tasks'
    accuracies at ``steps[i]``), error bars :data:`SPREAD`, y scaled to the data."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    lows, highs = [], []
    for method, by_steps in per_task.items():
        means = [float(np.mean(a)) for a in by_steps]
        errs = [spread(a) for a in by_steps]
        ax.errorbar(steps, means, yerr=errs, marker="o", capsize=3, label=method)
        lows.append(min(m - e for m, e in zip(means, errs, strict=True)))
        highs.append(max(m + e for m, e in zip(means, errs, strict=True)))
    bottom, top = data_limits(min(lows), max(highs))
    ax.set_ylim(bottom, top)
    ax.set_xscale("log")
    ax.set_xticks(steps, [str(s) for s in steps])
    ax.minorticks_off()
    ax.set_xlabel("inner steps")
    ax.set_ylabel("mean " + _accuracy_label(bottom))
    ax.set_title(f"convergence over inner steps (error bars {SPREAD})", fontsize=10)
    _legend_outside(ax, title="method")
    return fig


def curves_figure(history: list[dict], best_epoch: int | None = None):
    """Loss and accuracy over meta-epochs: meta-train (the meta-batch's query after adaptation,
    before the update) and validation; the best meta-epoch (``models/best.pt``) marked."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    epochs = [e["meta_epoch"] for e in history]
    marker = "o" if len(epochs) <= 20 else None
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, what, label in ((axes[0], "loss", "query loss (cross-entropy)"), (axes[1], "accuracy", "query accuracy")):
        for part, name in (("train", "meta-train"), ("val", "validation")):
            values = [e.get(f"{part}_{what}") for e in history]
            if any(v is None for v in values):  # a log written before accuracies were recorded
                continue
            ax.plot(epochs, values, marker=marker, ms=3, label=name)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="0.5", ls=":", lw=1, label=f"best.pt (meta-epoch {best_epoch})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("meta-epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{label.split(' (')[0]} after adaptation", fontsize=10)
    _legend_outside(axes[1])
    fig.tight_layout()
    return fig


def write_curves(path: Path, history: list[dict], best_epoch: int | None = None) -> Path:
    return save_png(curves_figure(history, best_epoch), path)


# ---------------------------------------------------------------- a sweep


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from None


def _overrides(job: Path) -> dict[str, str]:
    path = job / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    try:
        items = yaml.safe_load(path.read_text()) or []
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a list of KEY=VALUE overrides, got {type(items).__name__}")
    out = {}
    for item in items:
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = value
    return out


def _job_dirs(sweep_dir: Path) -> list[Path]:
    def order(p: Path):
        return (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name)

    jobs = [
        p
        for p in sweep_dir.iterdir()
        if p.is_dir() and ((p / ".hydra" / "overrides.yaml").is_file() or (p / "results" / "summary.json").is_file())
    ]
    return sorted(jobs, key=order)


def sweep_rows(sweep_dir: Path) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """(override keys, methods, one row per job: ``job``, its overrides, ``status``, and its
    results: meta-epochs, best validation loss, training seconds, each method's mean accuracy and
    its spread across the test tasks as ``METHOD`` / ``METHOD_std``)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ConfigError(f"{sweep_dir}: not a directory")
    jobs = _job_dirs(sweep_dir)
    if not jobs:
        raise ConfigError(f"{sweep_dir}: no sweep jobs in it (subdirectories with .hydra/overrides.yaml)")
    keys: list[str] = []
    methods: list[str] = []
    rows = []
    for job in jobs:
        overrides = _overrides(job)
        keys += [k for k in overrides if k not in keys]
        row: dict[str, Any] = {"job": job.name, **overrides}
        summary_path = job / "results" / "summary.json"
        if not summary_path.is_file():
            rows.append({**row, "status": "no results (running, failed, or test.save false)"})
            continue
        summary = _read_json(summary_path)
        row.update(
            status="done",
            meta_epochs=summary.get("meta_epochs"),
            best_val_loss=summary.get("best_val_loss"),
            train_seconds=summary.get("train_seconds"),
        )
        logs_path = job / "results" / "per_task_logs.json"
        if logs_path.is_file():
            logs = _read_json(logs_path)
            for method, by_steps in logs["logs"].items():
                accs = [v["accuracy"] for v in by_steps[str(logs["inner_steps"])].values()]
                row[method], row[f"{method}_std"] = float(np.mean(accs)), spread(accs)
                methods += [method] if method not in methods else []
        rows.append(row)
    return keys, methods, rows


def _columns(keys: list[str], methods: list[str]) -> list[str]:
    return [
        "job",
        *keys,
        "status",
        "meta_epochs",
        "best_val_loss",
        "train_seconds",
        *[c for m in methods for c in (m, f"{m}_std")],
    ]


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _markdown(sweep_dir: Path, keys: list[str], methods: list[str], rows: list[dict]) -> str:
    varying = [k for k in keys if len({r.get(k) for r in rows}) > 1]
    common = [k for k in keys if k not in varying]
    lines = [f"# Sweep {sweep_dir}", "", f"{len(rows)} jobs, {sum(r['status'] == 'done' for r in rows)} with results."]
    if common:
        lines.append("The same in every job: " + ", ".join(f"`{k}={rows[0].get(k, '')}`" for k in common) + ".")
    if methods:
        lines.append(f"Accuracy: mean query accuracy over the test tasks after adaptation, {SPREAD}.")
    header = ["job", *varying, "meta-epochs", "best val loss", "train s", *methods, "status"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        accs = [f"{r[m]:.3f} ± {r[f'{m}_std']:.3f}" if isinstance(r.get(m), float) else "" for m in methods]
        cells = [
            r["job"],
            *[f"`{r.get(k, '')}`" for k in varying],
            _fmt(r.get("meta_epochs")),
            _fmt(r.get("best_val_loss")),
            _fmt(r.get("train_seconds"), 1),
            *accs,
            r["status"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _job_label(row: dict, varying: list[str]) -> str:
    return "\n".join([row["job"], *(f"{k.removeprefix('test.')}={row.get(k, '')}" for k in varying)])


def sweep_figure(keys: list[str], methods: list[str], rows: list[dict]):
    """Per job (labelled by the overrides that vary): each method's mean accuracy with its spread
    (scaled to the data), and the best validation loss."""
    plt = pyplot()
    done = [r for r in rows if r["status"] == "done"]
    varying = [k for k in keys if len({r.get(k) for r in rows}) > 1]
    labels = [_job_label(r, varying) for r in done]
    xs = np.arange(len(done))
    panels = 2 if methods else 1
    fig, axes = plt.subplots(1, panels, figsize=(max(6.0, 1.1 * len(done) + 2) * panels, 4), squeeze=False)
    if methods:
        ax = axes[0][0]
        width = 0.8 / len(methods)
        lows, highs = [], []
        for i, m in enumerate(methods):
            means = [r.get(m, float("nan")) for r in done]
            errs = [r.get(f"{m}_std", 0.0) for r in done]
            ax.bar(xs + (i - (len(methods) - 1) / 2) * width, means, width, yerr=errs, capsize=3, label=m)
            lows += [a - e for a, e in zip(means, errs, strict=True) if not math.isnan(a)]
            highs += [a + e for a, e in zip(means, errs, strict=True) if not math.isnan(a)]
        if lows:
            bottom, top = data_limits(min(lows), max(highs))
            ax.set_ylim(bottom, top)
            ax.set_ylabel("mean " + _accuracy_label(bottom))
        ax.set_xticks(xs, labels, fontsize=8)
        ax.set_title(f"accuracy after adaptation per job (error bars {SPREAD})", fontsize=10)
        _legend_outside(ax, title="method")
    ax = axes[0][-1]
    ax.bar(xs, [r.get("best_val_loss") or float("nan") for r in done], 0.6, color="0.55")
    ax.set_xticks(xs, labels, fontsize=8)
    ax.set_ylabel("best validation loss")
    ax.set_title("best validation loss per job", fontsize=10)
    fig.tight_layout()
    return fig


def summarize_sweep(sweep_dir: Path) -> list[Path]:
    """Write (or rewrite) the sweep's ``sweep_summary.csv`` / ``.md`` / ``.png`` from its job
    directories as they are now; returns their paths."""
    sweep_dir = Path(sweep_dir)
    keys, methods, rows = sweep_rows(sweep_dir)
    columns = _columns(keys, methods)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([[_fmt(r.get(c), 6) for c in columns] for r in rows])
    csv_path, md_path, png_path = (sweep_dir / name for name in SWEEP_FILES)
    write_text(csv_path, buf.getvalue())
    write_text(md_path, _markdown(sweep_dir, keys, methods, rows))
    save_png(sweep_figure(keys, methods, rows), png_path)
    return [csv_path, md_path, png_path]
