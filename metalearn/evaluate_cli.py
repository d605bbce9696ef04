"""``metaemg-eval``: run a model file offline over labelled recordings, exactly as the daemon would.

    metaemg-eval --model MODEL.onnx REC.csv [REC.csv ...] [--non-intent OTHER.csv ...]
                 [--adapt CLIP.csv] [--as-daemon [--config FILE]] [--json]

Each recording (research CSV format: time_elapsed, emg0..7, gt) is one stream through a fresh
:class:`~metaemg.signal.SignalChain` of the model's signal spec, windowed with the model's window
and stride (:func:`~metaemg.signal.make_windows`, what the daemon's windower yields live), and
scored by :class:`~metaemg.modelfile.OnnxModel` (the daemon's onnxruntime wrapper). A window's
label is the label of its last sample.

Decisions: by default the most probable intent of each window (the model alone). With
``--as-daemon`` the decisions the controller would command: a calibrated ``feat`` model's windows
through its session adaptation (:mod:`metaemg.drift`, the daemon's own code, fresh from the
calibration for each recording; ``adapt``), then its policy (rejection below
``policy.threshold``, majority vote, dwell, refractory), with the defaults or ``--config FILE``'s
``adapt`` and ``policy`` sections, replayed over the windows as one good stream whose rate the
daemon measures over its first second (no command before); a rejected window votes relax and a
window without a command (the policy arming at the start) counts as relax.

Reported per recording and over all of them (see :mod:`metalearn.metrics`):
accuracy (every window), steady_accuracy (windows whose samples all carry one label),
wrong_direction, false_activation, recall of each intent, the confusion matrix, and for each label
change the delay from its first sample to the first window that decides the new intent.
``--non-intent`` recordings hold movements that are none of the intents (the Myo import's
``other_gestures/*.csv``; no ``gt`` column needed): every window should decide relax, and their
``false_activation`` (share deciding open or close) is reported apart. ``--json``: the last line
is one JSON document. torch-free, but for ``--adapt CLIP.csv``: the model (a meta-model) is first
calibrated in memory on the clip as ``metaemg-calibrate`` adapts the model it installs (every
window of the clip; the gate is not applied), then scored. A model that is not calibrated (no
``calibration`` in its metadata) gets a note: a meta-model as shipped decides nothing useful.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metaemg.cli import entry_point
from metaemg.errors import DataError, MetaEMGError
from metaemg.modelfile import OnnxModel
from metaemg.signal import SignalChain, make_windows, rate_matches
from metalearn.metrics import (
    INTENTS,
    change_delays,
    delay_summary,
    fmt_recall,
    steady_windows,
    summary,
)
from metalearn.recording import Recording, read_recording


def window_probabilities(model: OnnxModel, rec: Recording, adapt=None) -> tuple[np.ndarray, np.ndarray]:
    """``(ends, probabilities)``: each window's last sample and the model's (n, 3) probabilities;
    with ``adapt`` (a controller ``AdaptConfig``) those the daemon acts on: a calibrated ``feat``
    model's windows one by one through a session adapter fresh from the calibration
    (:func:`controller.adaptation.new_adapter`, the daemon's own)."""
    info = model.info
    where = rec.path
    if rec.n_channels != info.channels:
        raise DataError(f"has {rec.n_channels} EMG channels, the model expects {info.channels}", path=where)
    rate = rec.sample_rate
    if not rate_matches(rate, info.sample_rate):
        raise DataError(f"sample rate {rate:.1f} Hz does not match the model's {info.sample_rate:g} Hz", path=where)
    windows, ends = make_windows(SignalChain(info.signal).process(rec.emg), info.window, info.stride)
    if len(ends) == 0:
        raise DataError(f"too short: {rec.n_samples} samples give no {info.window}-sample window", path=where)
    if adapt is not None:
        from controller.adaptation import new_adapter

        adapter, _ = new_adapter(model, adapt)
        if adapter is not None:
            return ends, np.stack([adapter.decide(w) for w in windows])
    return ends, model.predict(windows)


def decide(probabilities: np.ndarray, rec: Recording, ends: np.ndarray, policy=None) -> np.ndarray:
    """Each window's decision: the most probable intent, or with ``policy`` (a controller
    ``PolicyConfig``) the intent the daemon would command."""
    if policy is None:
        return probabilities.argmax(axis=1)
    from controller.pipeline import RATE_WINDOW_S
    from controller.policy import replay

    t0 = float(rec.time[0])
    decided = replay(probabilities, rec.time[ends], policy, start=t0, measured_from=t0 + RATE_WINDOW_S)
    return np.asarray(decided, dtype=np.int64)


def decide_recording(model: OnnxModel, rec: Recording, policy=None, adapt=None) -> tuple[np.ndarray, np.ndarray]:
    """``(ends, decisions)``: each window's last sample and its decision (see :func:`decide`)."""
    ends, probs = window_probabilities(model, rec, adapt)
    return ends, decide(probs, rec, ends, policy)


def evaluate_recording(
    model: OnnxModel, rec: Recording, policy=None, adapt=None
) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(figures, window labels, decisions, steady mask, window ends)`` for one recording."""
    ends, decisions = decide_recording(model, rec, policy, adapt)
    labels = rec.labels[ends]
    steady = steady_windows(rec.labels, ends, model.info.window)
    delays = change_delays(rec.time, rec.labels, ends, decisions)
    figures = {
        "path": None if rec.path is None else str(rec.path),
        **summary(labels, decisions, steady),
        "delay": delay_summary(delays),
        "changes": delays,
    }
    return figures, labels, decisions, steady, ends


def evaluate(
    model_path: str | Path,
    paths: Sequence[str | Path],
    *,
    non_intent: Sequence[str | Path] = (),
    policy=None,
    adapt=None,
    traces: list | None = None,
) -> dict:
    """The ``--json`` document for ``model_path`` over the recordings in ``paths`` (and the
    ``non_intent`` ones); ``policy`` a controller ``PolicyConfig`` for the daemon's decisions.
    ``traces``: a list that gets, per recording, ``(time of each window's end, labels,
    decisions)`` (for ``--plot``)."""
    model = OnnxModel(model_path)
    channels = model.info.channels
    recordings = [read_recording(p, channels=channels) for p in paths]  # all checked before any work
    others = [read_recording(p, channels=channels, labelled=False) for p in non_intent]
    scored = [evaluate_recording(model, rec, policy, adapt) for rec in recordings]
    if traces is not None:
        for rec, (_, labels, decisions, _, ends) in zip(recordings, scored, strict=True):
            traces.append((rec.time[ends] - rec.time[0], labels, decisions))
    results = [s[0] for s in scored]
    overall = summary(*(np.concatenate([s[k] for s in scored]) for k in (1, 2, 3)))
    all_changes = [c for r in results for c in r["changes"]]
    doc = {
        "model": str(model_path),
        "model_id": model.info.model_id,
        "calibration": _calibration(model),
        "decisions": "daemon" if policy is not None else "argmax",
        "policy": None if policy is None else _policy_dict(policy),
        "adapt": None if adapt is None else dataclasses.asdict(adapt),
        **overall,
        "delay": delay_summary(all_changes),
        "recordings": results,
        "non_intent": None,
    }
    if others:
        rows: list[dict[str, Any]] = []
        for rec in others:
            ends, decisions = decide_recording(model, rec, policy, adapt)
            rows.append(
                {
                    "path": str(rec.path),
                    "windows": len(ends),
                    "false_activation": float((decisions != 0).mean()),
                    "decided": {name: int((decisions == i).sum()) for i, name in enumerate(INTENTS)},
                }
            )
        n = sum(r["windows"] for r in rows)
        doc["non_intent"] = {
            "windows": n,
            "false_activation": sum(r["false_activation"] * r["windows"] for r in rows) / n,
            "recordings": rows,
        }
    return doc


def _policy_dict(policy) -> dict:
    import dataclasses

    return dataclasses.asdict(policy)


def _calibration(model: OnnxModel) -> dict | None:
    cal = model.info.calibration
    if cal is None:
        return None
    keys = ("time", "base_model_id", "clip_sha256", "accuracy_before", "accuracy_after")
    return {k: cal.get(k) for k in keys}


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _f(v: float | None, width: int = 6) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}.3f}"


def display_names(paths: list[str]) -> list[str]:
    """Recordings named by their path below the folder they all share (two subjects'
    ``t0_myo_rorcr.csv`` stay apart); a single recording by its path as given."""
    if len(paths) < 2:
        return list(paths)
    try:
        common = os.path.commonpath([os.path.abspath(p) for p in paths])
    except ValueError:  # different drives
        return list(paths)
    return [os.path.relpath(os.path.abspath(p), common) for p in paths]


def print_table(doc: dict) -> None:
    how = (
        "as the daemon decides (policy replayed)" if doc["decisions"] == "daemon" else "most probable intent per window"
    )
    print(f"model {doc['model']} ({doc['model_id']}); decisions: {how}")
    recs = doc["recordings"]
    names = display_names([r["path"] for r in recs])
    width = max(12, *(len(n) for n in names))
    print(
        f"{'recording':<{width}} {'windows':>7} {'accuracy':>8} {'steady':>6} {'wrong':>6} {'false':>6}  "
        f"{'recall relax/open/close':<24} {'delay median/max ms':>19} {'missed':>6}"
    )
    print(f"{'':<{width}} {'':>7} {'':>8} {'':>6} {'dir.':>6} {'activ.':>6}")
    for name, r in [*zip(names, recs, strict=True), ("all", doc)]:
        rec = " / ".join("-" if r["recall"][k] is None else f"{r['recall'][k]:.2f}" for k in INTENTS)
        d = r["delay"]
        print(
            f"{name:<{width}} {r['windows']:>7} {_f(r['accuracy'], 8)} {_f(r['steady_accuracy'])} "
            f"{_f(r['wrong_direction'])} {_f(r['false_activation'])}  {rec:<24} "
            f"{_ms(d['median_ms']) + ' / ' + _ms(d['max_ms']):>19} {d['missed']:>3}/{d['changes']:<2}"
        )
    print("confusion over all recordings (rows: label, columns: decision; " + ", ".join(INTENTS) + "):")
    for name, row in zip(INTENTS, doc["confusion"], strict=True):
        print(f"  {name:<6} " + " ".join(f"{v:>7}" for v in row))
    print(f"recall: {fmt_recall(doc['recall'])}")
    if doc["move_activation"] is not None:
        print(f"windows labelled as a movement that is no intent (move): {doc['move_activation']:.3f} open or close")
    other = doc["non_intent"]
    if other:
        names = display_names([r["path"] for r in other["recordings"]])
        print("movements that are no intent (every window should decide relax):")
        for name, r in zip(names, other["recordings"], strict=True):
            print(
                f"  {name}: {r['windows']} windows, false activation {r['false_activation']:.3f} "
                f"(open {r['decided']['open']}, close {r['decided']['close']})"
            )
        print(f"  all: false activation {other['false_activation']:.3f} of {other['windows']} windows")
    if doc["calibration"] is None and doc["accuracy"] is not None and doc["accuracy"] < 0.5:
        print(
            "note: this model has not been calibrated; a meta-model is meant to be adapted to the wearer first "
            "(metaemg-calibrate), and scores near chance before that"
        )


def plot(doc: dict, traces: list, path: Path) -> Path:
    """Each recording's decisions over its labels (one row each, time in seconds), and the
    confusion matrix over all of them, in one PNG (written atomically)."""
    from metalearn.runplots import pyplot, save_png

    try:
        plt = pyplot()
    except ImportError:
        raise MetaEMGError("--plot needs matplotlib: pip install matplotlib") from None

    n = len(traces)
    fig, axes = plt.subplots(n + 1, 1, figsize=(11, 1.6 * n + 3.2), gridspec_kw={"height_ratios": [1] * n + [2.2]})
    names = display_names([r["path"] for r in doc["recordings"]])
    for ax, (t, labels, decisions), name, r in zip(axes[:n], traces, names, doc["recordings"], strict=True):
        ax.step(t, labels, where="post", color="0.3", lw=1.5, label="label")
        ax.plot(t, decisions, ".", ms=2.5, color="tab:blue", label="decision")
        ax.set_yticks(range(len(INTENTS)), INTENTS, fontsize=8)
        ax.set_title(f"{name}: accuracy {r['accuracy']:.3f}", fontsize=9, loc="left")
        ax.set_xlim(t[0], t[-1])
    axes[0].legend(loc="upper right", fontsize=8, ncol=2, bbox_to_anchor=(1.0, 1.45))
    axes[n - 1].set_xlabel("time (s)")
    ax = axes[n]
    cm = np.asarray(doc["confusion"], dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    for i in range(len(INTENTS)):
        for j in range(len(INTENTS)):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(INTENTS)), INTENTS)
    ax.set_yticks(range(len(INTENTS)), INTENTS)
    ax.set_xlabel("decided")
    ax.set_ylabel("labelled")
    ax.set_title(f"all recordings: accuracy {doc['accuracy']:.3f} ({doc['decisions']})", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path, dpi=100)


def adapt_in_memory(base: Path, clip_path: Path, out: Path) -> Path:
    """``base`` adapted on the labelled clip at ``clip_path`` (checked and windowed as
    metaemg-calibrate does), exported to ``out`` (verified against torch)."""
    from metalearn.adapt import OwnClasses, adapt_to_clip, export_adapted, require_torch
    from metalearn.clip import prepare_clip

    require_torch()
    model = OnnxModel(base)
    clip = prepare_clip(read_recording(clip_path, channels=model.info.channels), model.info.signal)
    adapted = adapt_to_clip(base, clip, OwnClasses())
    provenance = {"format": "metaemg-calibration/1", "source": "metaemg-eval --adapt", "clip_file": str(clip_path)}
    return export_adapted(adapted, provenance, out, clip.windows[:32])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="metaemg-eval",
        description="Score a model file on labelled recordings through exactly the daemon's signal chain and "
        "windowing: accuracy (every window and steady windows), wrong-direction and false-activation "
        "rates, per-intent recall, confusion matrix, delay to the first correct decision.",
    )
    p.add_argument("--model", required=True, type=Path, help="the ONNX model file (e.g. models/current.onnx)")
    p.add_argument(
        "recordings",
        nargs="+",
        type=Path,
        metavar="REC.csv",
        help="recordings in the research format (time_elapsed, emg0..7, gt)",
    )
    p.add_argument(
        "--non-intent",
        nargs="+",
        type=Path,
        default=[],
        metavar="OTHER.csv",
        help="recordings of movements that are none of the intents (time_elapsed, emg0..7; e.g. "
        "DATA/other_gestures/*.csv): every window should decide relax",
    )
    p.add_argument(
        "--as-daemon",
        action="store_true",
        help="score the decisions the controller would command (its policy replayed) instead of "
        "each window's most probable intent",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="with --as-daemon: the controller configuration whose policy section to use "
        "(default: the policy defaults)",
    )
    p.add_argument(
        "--adapt",
        type=Path,
        metavar="CLIP.csv",
        help="first calibrate the model in memory on this labelled clip, as metaemg-calibrate adapts the "
        "model it installs (needs torch)",
    )
    p.add_argument(
        "--plot",
        type=Path,
        metavar="FILE.png",
        help="draw each recording's decisions over its labels, and the confusion matrix (needs matplotlib)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document on the last line")
    return p


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.config is not None and not args.as_daemon:
        p.error("--config applies to --as-daemon")
    policy = adapt = None
    if args.as_daemon:
        from controller.config import Config, load

        daemon = load(args.config) if args.config is not None else Config()
        policy, adapt = daemon.policy, daemon.adapt
    traces: list | None = [] if args.plot is not None else None
    doc = _scored(args, policy, adapt, traces)
    print_table(doc)
    if args.plot is not None:
        assert traces is not None  # made with --plot
        print(f"plot: {plot(doc, traces, args.plot)}")
    if args.json:
        print(json.dumps(doc), flush=True)
    return 0


def _scored(args: argparse.Namespace, policy, adapt, traces: list | None) -> dict:
    """The document for the model as given, or (``--adapt``) calibrated in memory first."""
    if args.adapt is None:
        doc = evaluate(
            args.model, args.recordings, non_intent=args.non_intent, policy=policy, adapt=adapt, traces=traces
        )
        if doc["calibration"] is None:
            print(
                f"note: {args.model} is not calibrated (a meta-model as shipped: its head is fitted to nobody, "
                "so it decides near chance or rejects); calibrate it first: --adapt CLIP.csv here, or "
                "metaemg-calibrate --out FILE"
            )
        return doc
    import tempfile

    with tempfile.TemporaryDirectory(prefix="metaemg-eval-") as tmp:
        adapted = adapt_in_memory(args.model, args.adapt, Path(tmp) / "adapted.onnx")
        doc = evaluate(adapted, args.recordings, non_intent=args.non_intent, policy=policy, adapt=adapt, traces=traces)
    doc["model"] = f"{args.model} adapted on {args.adapt}"
    print(f"adapted {args.model} on {args.adapt} in memory (every window of the clip; the gate is not applied)")
    return doc


if __name__ == "__main__":
    sys.exit(main())
