"""Accuracy on the Myo evaluation subjects: meta-model vs B1, B2 and an LDA on time-domain features.

For each evaluation subject (Male13, Male14, Male15): adapt on the first 2 s and the first 5 s of
each intent (relax, open, close) in session ``training0``; score on sessions ``Test0`` and ``Test1``
(different donnings, recorded later). Same data, same run, same inner loop for the three networks:

- meta-model: the meta-trained checkpoint, adapted with its own inner loop (optimiser, steps, lr);
- B1: an untrained model of the same kind, adapted the same way;
- B2: the same model pre-trained on all pre-training subjects pooled, then adapted the same way;
- LDA: linear discriminant on MAV, WL, ZC, SSC per channel (Hudgins' time-domain set), fitted
  on the same clip's windows (high-passed, not rectified).

    python -m bench.myo_accuracy --data data/myo --checkpoint RUN/models/best.pt [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from metaemg.signal import SignalChain, SignalSpec, make_windows
from metalearn.recording import read_recording
from metalearn.tasks import Scaler, TaskRef, load_collection

SUBJECTS = ("Male13", "Male14", "Male15")
BUDGETS = (2.0, 5.0)


def clip_mask(labels: np.ndarray, ends: np.ndarray, rate: float, seconds: float) -> np.ndarray:
    """Windows whose last sample lies in the first ``seconds`` of its intent's samples."""
    rank = np.zeros(len(labels), dtype=np.int64)
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        rank[idx] = np.arange(len(idx))
    return rank[ends] < seconds * rate


def td_features(w: np.ndarray, zc_thresh: float = 1.0) -> np.ndarray:
    """(n, window, ch) -> (n, 4*ch): mean absolute value, waveform length, zero and slope-sign changes."""
    mav = np.abs(w).mean(1)
    d = np.diff(w, axis=1)
    wl = np.abs(d).sum(1)
    zc = ((w[:, :-1] * w[:, 1:] < 0) & (np.abs(d) >= zc_thresh)).sum(1)
    ssc = ((d[:, :-1] * d[:, 1:] < 0) & ((np.abs(d[:, :-1]) >= zc_thresh) | (np.abs(d[:, 1:]) >= zc_thresh))).sum(1)
    return np.concatenate([mav, wl, zc, ssc], axis=1).astype(np.float64)


class LDA:
    """Shrinkage linear discriminant analysis (equal priors)."""

    def fit(self, x: np.ndarray, y: np.ndarray, shrink: float = 0.1) -> LDA:
        self.mu_x, self.sd_x = x.mean(0), x.std(0) + 1e-9
        x = (x - self.mu_x) / self.sd_x
        self.classes = np.unique(y)
        means = np.stack([x[y == c].mean(0) for c in self.classes])
        resid = x - means[np.searchsorted(self.classes, y)]
        cov = resid.T @ resid / max(1, len(x) - len(self.classes))
        cov = (1 - shrink) * cov + shrink * np.eye(len(cov)) * np.trace(cov) / len(cov)
        self.w = np.linalg.solve(cov, means.T)
        self.b = -0.5 * np.sum(means.T * self.w, axis=0)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes[np.argmax(((x - self.mu_x) / self.sd_x) @ self.w + self.b, axis=1)]


def _windows(rec, spec: SignalSpec):
    y = SignalChain(spec).process(rec.emg)
    w, ends = make_windows(y, spec.window, spec.stride)
    return y, w, ends, rec.labels[ends]


def run(data: Path, checkpoint: Path) -> dict:
    import torch

    from metalearn.checkpoint import build_from_checkpoint, load_checkpoint
    from metalearn.config import TrainConfig
    from metalearn.evaluate import pretrain_pooled, score, to_tensor
    from metalearn.maml import adapt, model_params
    from metalearn.models import build_model
    from metalearn.train import load_task_windows

    ckpt = load_checkpoint(checkpoint)
    spec = SignalSpec.from_dict(ckpt["signal"])
    inner = ckpt["inner"]
    cfg = TrainConfig.from_dict(ckpt["config"])
    lda_spec = SignalSpec.from_dict({**spec.to_dict(), "rectify": False, "envelope_hz": None, "scale": 1.0})
    device = torch.device("cpu")
    seed = int(ckpt.get("seed", 0))
    pre, _, _ = load_task_windows(load_collection(data / "task_collections" / "myo_pretrain.json"), data, cfg, spec)
    torch.manual_seed(seed)
    b1 = build_model(**ckpt["model"]).eval()
    torch.manual_seed(seed)
    b2 = pretrain_pooled(build_model(**ckpt["model"]), pre, steps=max(1, cfg.meta_steps) * cfg.inner_steps,
                         batch=cfg.batch_size * cfg.n_train_tasks, lr=cfg.outer_lr, seed=seed, device=device)
    nets = {"meta-model": build_from_checkpoint(ckpt), "B1": b1, "B2": b2}
    results: dict = {m: {} for m in [*nets, "LDA"]}
    for subject in SUBJECTS:
        path = lambda s: TaskRef(f"myo_{subject}_{s}", "myo_rorcr").path(data)  # noqa: E731
        cal = read_recording(path("training0"))
        tests = [read_recording(path(s)) for s in ("Test0", "Test1")]
        y_cal, w_cal, ends, lab = _windows(cal, spec)
        _, lw_cal, _, _ = _windows(cal, lda_spec)
        test_w = [_windows(t, spec) for t in tests]
        test_lda = [_windows(t, lda_spec) for t in tests]
        for budget in BUDGETS:
            key = f"{subject}@{budget:g}s"
            m = clip_mask(cal.labels, ends, cal.sample_rate, budget)
            rows = np.zeros(len(y_cal), dtype=bool)
            for e in ends[m]:
                rows[e - spec.window + 1: e + 1] = True
            scaler = Scaler.fit(ckpt["scaler"]["kind"], y_cal[rows])
            xs, ys = scaler.transform(w_cal[m]), lab[m]
            for name, net in nets.items():
                params = adapt(net, model_params(net), to_tensor(xs, device), to_tensor(ys, device, torch.long),
                               steps=inner["steps"], lr=inner["lr"], optimizer=inner["optimizer"], first_order=True)
                params = {k: v.detach() for k, v in params.items()}
                accs = [score(net, params, scaler.transform(w), yl, device)["accuracy"] for _, w, _, yl in test_w]
                results[name][key] = float(np.mean(accs))
            lda = LDA().fit(td_features(lw_cal[m]), ys)
            results["LDA"][key] = float(np.mean([(lda.predict(td_features(w)) == yl).mean() for _, w, _, yl in test_lda]))
    for name in results:
        for budget in BUDGETS:
            vals = [v for k, v in results[name].items() if k.endswith(f"@{budget:g}s")]
            results[name][f"mean@{budget:g}s"] = float(np.mean(vals))
    return {"checkpoint": str(checkpoint), "inner": inner, "results": results}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="imported Myo data root (metaemg-import myoarmband)")
    p.add_argument("--checkpoint", type=Path, required=True, help="meta-model checkpoint (RUN/models/best.pt)")
    p.add_argument("--json", action="store_true", help="last line: one JSON document")
    args = p.parse_args(argv)
    out = run(args.data, args.checkpoint)
    res = out["results"]
    cols = [f"{s}@{b:g}s" for b in BUDGETS for s in SUBJECTS] + [f"mean@{b:g}s" for b in BUDGETS]
    print(f"query accuracy on Test0+Test1 after adapting on the first N s of each intent of training0 "
          f"(inner loop: {out['inner']['optimizer']}, {out['inner']['steps']} steps, lr {out['inner']['lr']:g})")
    print(f"{'method':<11}" + "".join(f"{c:>14}" for c in cols))
    for name, vals in res.items():
        print(f"{name:<11}" + "".join(f"{vals[c]:>14.3f}" for c in cols))
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
