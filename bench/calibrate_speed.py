"""How long calibration's adaptation takes on this PC's CPU, per model kind.

For each model kind (dnn, cnn, tcn, tf, feat; default hyper-parameters, window 50 x 8 channels,
as the Myo default model), the adaptation runs on the windows of a 30 s clip at stride 10 (596
windows, all of them, as the installed model is adapted on every cycle) on one CPU thread as
``metaemg-calibrate`` does: the inner loop of the default meta-training config (adam, 5 steps,
lr 0.01) for the gradient-adapted kinds, the closed-form LDA head for feat. Prints the median
and maximum over ``--repeats`` runs. The target is <= 1 s.

With ``--model FILE.onnx --clip CLIP.csv`` it times the real thing instead: the model file's own
adaptation on the whole clip (the model installed) and the whole of what ``metaemg-calibrate``
adapts (one model per cycle for the cross-validated gate, then the installed one).

    python -m bench.calibrate_speed [--repeats 20] [--json]
    python -m bench.calibrate_speed --model metaemg/default_model/myo_meta.onnx --clip CLIP.csv
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

CLIP_S, RATE, WINDOW, STRIDE, CHANNELS = 30.0, 200.0, 50, 10, 8
INNER = {"steps": 5, "lr": 0.01, "optimizer": "adam", "first_order": False}


def time_kinds(repeats: int, threads: int = 1) -> dict:
    import torch

    from metalearn.maml import adapt_model
    from metalearn.models import MODEL_KINDS, build_model

    torch.set_num_threads(threads)
    n = int((CLIP_S * RATE - WINDOW) // STRIDE + 1)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((n, WINDOW, CHANNELS)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 3, n))
    out = {}
    for kind in MODEL_KINDS:
        torch.manual_seed(0)
        model = build_model(kind, n_channels=CHANNELS, window=WINDOW, n_classes=3, fc_units=64)
        inner = {**INNER, "steps": 0, "head": "lda", "shrinkage": 0.3} if kind == "feat" else INNER
        times = []
        for _ in range(repeats + 1):  # the first run warms up
            t0 = time.perf_counter()
            adapt_model(model, x, y, inner)
            times.append(time.perf_counter() - t0)
        out[kind] = {"windows": n, "median_s": float(np.median(times[1:])), "max_s": float(np.max(times[1:]))}
    return out


def time_file(model: Path, clip: Path, repeats: int) -> dict:
    from metaemg.modelfile import read_model_info
    from metalearn.adapt import Adapter
    from metalearn.clip import prepare_clip
    from metalearn.recording import read_recording

    info = read_model_info(model)
    windows = prepare_clip(read_recording(clip, channels=info.channels), info.signal)
    adapter = Adapter.from_file(model)
    final, total = [], []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        for _, train, _, samples in windows.folds():
            adapter.adapt(windows.windows[train], windows.labels[train], windows.conditioned[samples])
        final.append(adapter.adapt(windows.windows, windows.labels, windows.conditioned).adapt_seconds)
        total.append(time.perf_counter() - t0)
    return {
        info.kind: {
            "windows": len(windows.labels),
            "median_s": float(np.median(final[1:])),
            "max_s": float(np.max(final[1:])),
            "cycles": windows.n_cycles,
            "with_cross_validation_median_s": float(np.median(total[1:])),
        }
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for the per-kind timing")
    p.add_argument("--model", type=Path, help="time this model file's own inner loop (needs --clip)")
    p.add_argument("--clip", type=Path, help="a labelled calibration clip (research CSV format)")
    p.add_argument("--json", action="store_true", help="last line: one JSON document")
    args = p.parse_args(argv)
    if (args.model is None) != (args.clip is None):
        p.error("--model and --clip go together")
    res = time_file(args.model, args.clip, args.repeats) if args.model else time_kinds(args.repeats, args.threads)
    print(f"adaptation time (median / max of {args.repeats}; target <= 1 s)")
    for kind, r in res.items():
        print(f"  {kind:<4} {r['windows']:>4} windows: {r['median_s'] * 1000:7.1f} ms / {r['max_s'] * 1000:7.1f} ms")
        if "cycles" in r:
            print(
                f"       with the gate's cross-validation ({r['cycles']} cycles, {r['cycles'] + 1} adaptations): "
                f"{r['with_cross_validation_median_s'] * 1000:.1f} ms median"
            )
    if args.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
