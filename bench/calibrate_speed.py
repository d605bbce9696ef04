"""How long calibration's adaptation takes on this PC's CPU, per model kind.

For each model kind (dnn, cnn, tcn, tf; default hyper-parameters, window 50 x 8 channels, as the
Myo default model), the inner loop of the default meta-training config (adam, 5 steps, lr 0.01)
runs on the windows of a 30 s clip at stride 10 (596 windows, all of them: an upper bound, as
calibration adapts on all but the held-out last cycle), on one CPU thread as ``metaemg-calibrate``
does. Prints the median and maximum over ``--repeats`` runs. The target is <= 1 s.

With ``--model FILE.onnx --clip CLIP.csv`` it times the real thing instead: the model file's own
inner loop on the clip's adaptation windows (:func:`metalearn.calibration.adapt.adapt_to_clip`).

    python -m bench.calibrate_speed [--repeats 20] [--json]
    python -m bench.calibrate_speed --model metalearn/default_model/myo_meta.onnx --clip CLIP.csv
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

    from metalearn.maml import adapt, model_params
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
        times = []
        for _ in range(repeats + 1):  # the first run warms up
            t0 = time.perf_counter()
            adapt(model, model_params(model), x, y, **INNER)
            times.append(time.perf_counter() - t0)
        out[kind] = {"windows": n, "median_s": float(np.median(times[1:])), "max_s": float(np.max(times[1:]))}
    return out


def time_file(model: Path, clip: Path, repeats: int) -> dict:
    from metaemg.modelfile import read_model_info
    from metalearn.calibration.adapt import adapt_to_clip
    from metalearn.calibration.clip import prepare_clip
    from metalearn.recording import read_recording

    info = read_model_info(model)
    windows = prepare_clip(read_recording(clip, channels=info.channels), info.signal)
    times = [adapt_to_clip(model, windows).adapt_seconds for _ in range(repeats + 1)][1:]
    return {info.kind: {"windows": int((~windows.held_out).sum()), "median_s": float(np.median(times)),
                        "max_s": float(np.max(times))}}


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
    if args.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
