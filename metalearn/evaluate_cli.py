"""``metaemg-eval``: run a model file offline over labelled recordings, exactly as the daemon would.

    metaemg-eval --model MODEL.onnx REC.csv [REC.csv ...] [--json]

Each recording (research CSV format: time_elapsed, emg0..7, gt) is one stream through a fresh
:class:`~metaemg.signal.SignalChain` of the model's signal spec, windowed with the model's window
and stride (:func:`~metaemg.signal.make_windows`, what the daemon's windower yields live), and
decided by :class:`~metaemg.modelfile.OnnxModel` (the daemon's onnxruntime wrapper; the decision
is the most probable intent). A window's label is the label of its last sample.

Reported per recording and over all of them: accuracy, recall of each intent, the confusion
matrix (rows: label, columns: decision), and for each label change the delay from its first
sample to the first window that decides the new intent (ms, from time_elapsed; a miss if no
window does before the next change). The daemon's smoothing and safety policy come after the
model and are not applied here. ``--json``: the last line is one JSON document with ``accuracy``
(over all windows of all recordings) and ``recordings`` (each file's figures). torch-free.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from metaemg.cli import entry_point
from metaemg.errors import DataError
from metaemg.modelfile import OnnxModel
from metaemg.signal import SignalChain, make_windows
from metalearn.calibration.metrics import INTENTS, change_delays, delay_summary, fmt_recall, summary
from metalearn.recording import Recording, read_recording

RATE_TOLERANCE = 0.05


def decide_recording(model: OnnxModel, rec: Recording) -> tuple[np.ndarray, np.ndarray]:
    """``(ends, decisions)``: each window's last sample and the model's decision for it."""
    info = model.info
    where = rec.path
    if rec.n_channels != info.channels:
        raise DataError(f"has {rec.n_channels} EMG channels, the model expects {info.channels}", path=where)
    rate = rec.sample_rate
    if abs(rate - info.sample_rate) > RATE_TOLERANCE * info.sample_rate:
        raise DataError(f"sample rate {rate:.1f} Hz does not match the model's {info.sample_rate:g} Hz", path=where)
    windows, ends = make_windows(SignalChain(info.signal).process(rec.emg), info.window, info.stride)
    if len(ends) == 0:
        raise DataError(f"too short: {rec.n_samples} samples give no {info.window}-sample window", path=where)
    return ends, model.predict(windows).argmax(axis=1)


def evaluate_recording(model: OnnxModel, rec: Recording) -> tuple[dict, np.ndarray, np.ndarray]:
    """``(figures, window labels, decisions)`` for one recording."""
    ends, decisions = decide_recording(model, rec)
    labels = rec.labels[ends]
    delays = change_delays(rec.time, rec.labels, ends, decisions)
    figures = {"path": None if rec.path is None else str(rec.path), **summary(labels, decisions),
               "delay": delay_summary(delays), "changes": delays}
    return figures, labels, decisions


def evaluate(model_path: str | Path, paths: list[str | Path]) -> dict:
    """The ``--json`` document for ``model_path`` over the recordings in ``paths``."""
    model = OnnxModel(model_path)
    recordings = [read_recording(p, channels=model.info.channels) for p in paths]  # all checked before any work
    scored = [evaluate_recording(model, rec) for rec in recordings]
    results = [s[0] for s in scored]
    overall = summary(np.concatenate([s[1] for s in scored]), np.concatenate([s[2] for s in scored]))
    all_changes = [c for r in results for c in r["changes"]]
    return {"model": str(model_path), "model_id": model.info.model_id, "calibration": _calibration(model),
            **overall, "delay": delay_summary(all_changes), "recordings": results}


def _calibration(model: OnnxModel) -> dict | None:
    cal = model.info.calibration
    if cal is None:
        return None
    keys = ("time", "base_model_id", "clip_sha256", "accuracy_before", "accuracy_after")
    return {k: cal.get(k) for k in keys}


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def print_table(doc: dict) -> None:
    print(f"model {doc['model']} ({doc['model_id']})")
    width = max(12, *(len(Path(r["path"]).name) for r in doc["recordings"]))
    print(f"{'recording':<{width}} {'windows':>7} {'accuracy':>8}  {'recall relax/open/close':<24} "
          f"{'delay median/max ms':>19} {'missed':>6}")
    for r in [*doc["recordings"], {**doc, "path": "all"}]:
        rec = " / ".join("-" if r["recall"][k] is None else f"{r['recall'][k]:.2f}" for k in INTENTS)
        d = r["delay"]
        print(f"{Path(r['path']).name:<{width}} {r['windows']:>7} {r['accuracy']:>8.3f}  {rec:<24} "
              f"{_ms(d['median_ms']) + ' / ' + _ms(d['max_ms']):>19} {d['missed']:>3}/{d['changes']:<2}")
    print("confusion over all recordings (rows: label, columns: decision; " + ", ".join(INTENTS) + "):")
    for name, row in zip(INTENTS, doc["confusion"], strict=True):
        print(f"  {name:<6} " + " ".join(f"{v:>7}" for v in row))
    print(f"recall: {fmt_recall(doc['recall'])}")


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="metaemg-eval",
        description="Score a model file on labelled recordings through exactly the daemon's signal chain and "
                    "windowing: accuracy, per-intent recall, confusion matrix, delay to the first correct decision.")
    p.add_argument("--model", required=True, type=Path, help="the ONNX model file (e.g. models/current.onnx)")
    p.add_argument("recordings", nargs="+", type=Path, metavar="REC.csv",
                   help="recordings in the research format (time_elapsed, emg0..7, gt)")
    p.add_argument("--json", action="store_true", help="print one JSON document on the last line")
    args = p.parse_args(argv)
    doc = evaluate(args.model, args.recordings)
    print_table(doc)
    if args.json:
        print(json.dumps(doc), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
