"""``metaemg-demo``: the project's main job on embedded data, on one machine, no hardware.

For now it imports the real Myo armband recordings, generates synthetic patients in both data
styles, validates every task collection and prints a summary.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from metaemg.cli import entry_point
from metaemg.errors import DataError

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def default_myo_root() -> Path:
    env = os.environ.get("METAEMG_MYO_ROOT")
    return Path(env) if env else PROJECT_ROOT.parent / "shared" / "datasets" / "myoarmband"


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="metaemg-demo", description=__doc__.splitlines()[0].strip("`"))
    p.add_argument("--myo-root", type=Path, default=None,
                   help="Myo armband dataset (default: $METAEMG_MYO_ROOT or ../shared/datasets/myoarmband)")
    p.add_argument("--out", type=Path, default=PROJECT_ROOT / "data" / "demo", help="where to write the data")
    p.add_argument("--patients", type=int, default=6, help="synthetic patients per data style")
    p.add_argument("--conditions", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from metalearn.cli import print_validation, validate_collection
    from metalearn.myo import import_myoarmband
    from metalearn.synth import generate_dataset
    from metalearn.tasks import TaskRef, save_collection

    myo_root = args.myo_root or default_myo_root()
    if not myo_root.is_dir():
        raise DataError("Myo armband dataset not found (give --myo-root or set METAEMG_MYO_ROOT)", path=myo_root)
    out = args.out
    t0 = time.monotonic()
    print(f"[1/3] importing the Myo armband dataset from {myo_root} -> {out / 'myo'}")
    import_myoarmband(myo_root, out / "myo", progress=True)
    print(f"[2/3] generating {args.patients} synthetic patients x {args.conditions} conditions per data style")
    for style in ("myo", "myhand"):
        coll = generate_dataset(out / f"synth_{style}", patients=args.patients, conditions=args.conditions,
                                seed=args.seed, style=style, progress=True)
        save_collection(out / f"synth_{style}" / "task_collections" / "synth_all.json",
                        [TaskRef(t["session"], t["condition"]) for t in coll])
    print("[3/3] validating every task collection")
    ok = True
    summary = []
    for root in (out / "myo", out / "synth_myo", out / "synth_myhand"):
        for coll_path in sorted((root / "task_collections").glob("*.json")):
            report = validate_collection(coll_path, root)
            ok &= report["valid"]
            summary.append((coll_path, report))
    for coll_path, report in summary:
        print(f"\n== {coll_path.relative_to(out)}")
        print_validation(report)
    print("\nsummary")
    print(f"{'collection':<44} {'tasks':>5} {'hours':>6} {'rate Hz':>8} {'relax/open/close %':>20} {'support %':>9}")
    for coll_path, report in summary:
        good = [t for t in report["tasks"] if t["valid"]]
        secs = sum(t["duration_s"] for t in good)
        n = sum(t["samples"] for t in good) or 1
        shares = "/".join(f"{100 * sum(t['label_counts'][k] for t in good) / n:.0f}" for k in ("relax", "open", "close"))
        rates = sorted({round(t["sample_rate"]) for t in good})
        sup = 100 * sum(t["support_samples"] for t in good) / n
        print(f"{str(coll_path.relative_to(out)):<44} {len(good):>5} {secs / 3600:>6.2f} "
              f"{'/'.join(map(str, rates)):>8} {shares:>20} {sup:>9.0f}")
    print(f"\n{'all collections valid' if ok else 'INVALID tasks found'} ({time.monotonic() - t0:.1f} s); data in {out}")
    return 0 if ok else 1
