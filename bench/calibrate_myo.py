"""Accuracy before and after calibration on the three Myo evaluation subjects (the table in docs/calibration.md).

For each of Male13, Male14, Male15: ``metaemg-calibrate --from-recording`` on the first
``--clip-s`` seconds of session training0 (default 45 s: three relax-open-relax-close cycles, as
the live protocol), then ``metaemg-eval`` of the base model and of the adapted model on sessions
Test0 and Test1 (the armband put on again, later), as the daemon decides. Prints a Markdown
table: the clip's cross-validated accuracy (what the gate sees: each cycle decided by a model
adapted on the others) and accuracy on Test0+Test1, before and after.

    python -m bench.calibrate_myo --model metaemg/default_model/myo_meta.onnx [--clip-s 45] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path

import numpy as np

SUBJECTS = ("Male13", "Male14", "Male15")


def run(model: Path, myo_root: Path, clip_s: float) -> dict:
    from calibration.cli import main as calibrate
    from controller.config import PolicyConfig
    from metalearn.evaluate_cli import evaluate
    from metalearn.myo import build_recording, find_sessions
    from metalearn.recording import write_recording

    sessions = {(s.subject, s.name): s for s in find_sessions(myo_root)}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for subject in SUBJECTS:
            cal = build_recording(sessions[(subject, "training0")])
            clip = write_recording(d / f"{subject}_clip.csv", cal.slice(0, int(clip_s * cal.sample_rate)))
            tests = [
                write_recording(d / f"{subject}_{t}.csv", build_recording(sessions[(subject, t)]))
                for t in ("Test0", "Test1")
            ]
            out = d / f"{subject}.onnx"
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                rc = calibrate(
                    [
                        "--from-recording",
                        str(clip),
                        "--base-model",
                        str(model),
                        "--out",
                        str(out),
                        "--state-dir",
                        str(d / "state"),
                        "--no-png",
                        "--json",
                        "--force",
                    ]
                )
            res = json.loads(buf.getvalue().strip().splitlines()[-1])
            if rc != 0:
                raise SystemExit(f"{subject}: calibration failed: {res.get('error')}")
            rows[subject] = {
                "clip_before": res["accuracy_before"],
                "clip_after": res["accuracy_after"],
                "gate": res["gate"]["line"],
                "adapt_seconds": res["adapt_seconds"],
                "test_before": evaluate(model, tests, policy=PolicyConfig())["accuracy"],
                "test_after": evaluate(out, tests, policy=PolicyConfig())["accuracy"],
            }
    keys = ("clip_before", "clip_after", "test_before", "test_after")
    rows["mean"] = {k: float(np.mean([rows[s][k] for s in SUBJECTS])) for k in keys}
    return {"model": str(model), "clip_s": clip_s, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="base meta-model (ONNX)")
    p.add_argument(
        "--myo-root", type=Path, help="the Myo dataset (default $METAEMG_MYO_ROOT or ../shared/datasets/myoarmband)"
    )
    p.add_argument("--clip-s", type=float, default=45.0, help="seconds of training0 used as the calibration clip")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from metalearn.myo import default_myo_root

    res = run(args.model, args.myo_root or default_myo_root(), args.clip_s)
    print(f"calibration clip: the first {args.clip_s:g} s of training0; base model {args.model}")
    print(
        "| subject | clip, cross-validated: before | after | Test0+Test1 as the daemon decides: before | after | gate |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in res["rows"].items():
        gate = r.get("gate", "")
        print(
            f"| {name} | {r['clip_before']:.2f} | {r['clip_after']:.2f} | {r['test_before']:.2f} | "
            f"{r['test_after']:.2f} | {gate} |"
        )
    if args.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
