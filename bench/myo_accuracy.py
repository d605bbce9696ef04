"""Accuracy on arms the model has never seen: the meta-model against its baselines, on 25 Myo arms.

Two protocols, each with a calibration clip of S seconds of each intent (``--budgets``, 2 and 5):

- **evaluation subjects, across sessions** (Male13, Male14, Male15): the models are (meta-)trained
  on the 22 pre-training subjects; each subject's clip is cut from session ``training0`` in two
  relax-open-relax-close cycles (S/2 s of open and of close per cycle, S/4 s of each relax, and a
  final relax); scored on the later, separately donned sessions ``Test0`` and ``Test1``.
- **leave-subjects-out rotation** over the 22 pre-training subjects (``--folds``, 5): for each
  fold, the models are (meta-)trained without its subjects; each of them is calibrated on a clip
  of cycle 0 of their session (S s of open and close, S/2 s of each relax) and scored on cycles 1-3.

Scored on every window of the continuous recordings (those that straddle a label change
included), through the signal chain of each method, as the daemon would: accuracy, steady
accuracy, per-intent recall, and, as the daemon decides (its default policy replayed:
:func:`controller.policy.replay`), wrong direction, false activation on relax, onset delay;
false activation on the four other Myo gestures of the scored sessions (wrist flexion and
extension, radial and ulnar deviation: none is an intent), raw and as the daemon decides.

Methods (same clip, same windows):

- ``meta-model``: the shipped recipe (``metalearn/conf/myo_default.yaml``, model ``feat``):
  log-amplitude features of high-passed raw EMG, a whitening learned across the training
  subjects in closed form, a closed-form LDA head fitted on the clip;
- ``B1``: the same model with nothing learned from other subjects (identity whitening: LDA on the
  same standardised features), adapted the same way;
- ``B2``: the same model with the whitening fitted on all training subjects pooled (no per-subject
  standardisation), adapted the same way;
- ``+5 steps``: the meta-model, then 5 Adam steps of gradient fine-tuning on the clip;
- ``LDA TD``: Hudgins' time-domain features (MAV, WL, ZC, SSC) of high-passed raw EMG and a
  shrinkage LDA (0.1), the classic anchor;
- ``MAML cnn``: the previous default recipe (the ``myo`` signal chain: rectified 5 Hz envelopes;
  a 1-D CNN meta-trained with second-order MAML, 300 meta-steps, rotation augmentation, adapted
  with 5 Adam steps); ``--no-previous`` leaves it out (it takes most of the run time).

    python -m bench.myo_accuracy [--data data/myo] [--folds 5] [--budgets 2,5] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from metaemg.signal import SignalChain, SignalSpec, make_windows
from metalearn.metrics import INTENTS, change_delays, delay_summary, steady_windows, summary
from metalearn.recording import Recording, read_recording

if TYPE_CHECKING:
    from metalearn.adapt import Adapter

EVAL_SUBJECTS = ("Male13", "Male14", "Male15")
BUDGETS = (2.0, 5.0)
CONDITION = "myo_rorcr"
RATE = 200.0
OTHER_BLOCKS = 16  # other_gestures/*.csv: 4 cycles x 4 gestures, cycle-major


# ------------------------------------------------------------------------------ data
def recording(data: Path, subject: str, session: str) -> Recording:
    name = f"myo_{subject}_{session}"
    return read_recording(data / name / f"{name[-2:]}_{CONDITION}.csv")


def other_gestures(data: Path, subject: str, session: str, cycles: range | None = None) -> Recording:
    """The four other gestures of a session (every window should decide relax); ``cycles``: only those."""
    from metalearn.myo import read_other_gestures

    path = data / "other_gestures" / f"myo_{subject}_{session}.csv"
    rec, codes = read_other_gestures(path)
    if cycles is None:
        return rec
    starts = np.concatenate([[0], np.flatnonzero(np.diff(codes)) + 1, [len(codes)]])
    if len(starts) - 1 != OTHER_BLOCKS:
        raise ValueError(f"{path}: {len(starts) - 1} gesture blocks, expected {OTHER_BLOCKS}")
    lo, hi = starts[4 * cycles.start], starts[4 * cycles.stop]
    return Recording(rec.time[lo:hi] - rec.time[lo], rec.emg[lo:hi], rec.labels[lo:hi], rec.path)


def protocol_groups(data: Path, folds: int) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """``(protocol, training subjects, scored subjects)``: the evaluation subjects across sessions
    (trained on the 22 pre-training subjects), then each fold of the rotation over those 22."""
    pre = sorted({p.name.split("_")[1] for p in data.glob("myo_*_training0")} - set(EVAL_SUBJECTS))
    groups: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [("sessions", tuple(pre), EVAL_SUBJECTS)]
    groups += [
        ("rotation", tuple(s for s in pre if s not in pre[k::folds]), tuple(pre[k::folds])) for k in range(folds)
    ]
    return groups


def ensure_imported(data: Path) -> None:
    """The Myo dataset imported into ``data`` (metaemg-import myoarmband), when it is not there yet."""
    if not (data / "other_gestures").is_dir():
        from metalearn.myo import default_myo_root, import_myoarmband

        print(f"importing the Myo dataset into {data} ...")
        import_myoarmband(default_myo_root(), data)


def runs(labels: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of equal labels."""
    edges = np.concatenate([[0], np.flatnonzero(np.diff(labels)) + 1, [len(labels)]])
    return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))


def calibration_clip(rec: Recording, seconds: float, cycles: tuple[int, ...]) -> Recording:
    """``seconds`` of each intent over ``cycles`` of an imported Myo recording (4 runs a cycle:
    relax, open, relax, close): from each cycle the first seconds/n of its open and close and
    seconds/2n of each relax, then seconds/2n of the relax after the last cycle (each at most
    what the run holds: one cycle of 5 s asks for more than some Myo gesture files hold); re-timed
    as one continuous clip."""
    n = len(cycles)
    active, rest = int(round(seconds / n * RATE)), int(round(seconds / n / 2 * RATE))
    r = runs(rec.labels)
    pieces = []
    for c in cycles:
        for k, length in zip(range(4 * c, 4 * c + 4), (rest, active, rest, active), strict=True):
            start, stop = r[k]
            pieces.append(slice(start, min(stop, start + length)))  # a Myo gesture file holds 3.7-5.2 s
    start, stop = r[4 * cycles[-1] + 4]
    pieces.append(slice(start, min(stop, start + rest)))
    emg = np.concatenate([rec.emg[p] for p in pieces])
    labels = np.concatenate([rec.labels[p] for p in pieces])
    return Recording(np.arange(len(emg)) / RATE, emg, labels)


def cycle_start(rec: Recording, cycle: int) -> int:
    return runs(rec.labels)[4 * cycle][0]


@dataclass
class Case:
    """One subject and budget: the clip, the recordings to score (and from which sample on), the
    other-gesture recordings."""

    subject: str
    clip: Recording
    tests: list[tuple[Recording, int]]
    others: list[Recording]


def cases(data: Path, protocol: str, subjects: tuple[str, ...], budget: float) -> list[Case]:
    out = []
    for s in subjects:
        if protocol == "sessions":
            clip = calibration_clip(recording(data, s, "training0"), budget, (0, 1))
            tests = [(recording(data, s, t), 0) for t in ("Test0", "Test1")]
            others = [other_gestures(data, s, t) for t in ("Test0", "Test1")]
        else:
            rec = recording(data, s, "training0")
            clip = calibration_clip(rec, budget, (0,))
            tests = [(rec, cycle_start(rec, 1))]
            others = [other_gestures(data, s, "training0", range(1, 4))]
        out.append(Case(s, clip, tests, others))
    return out


# ------------------------------------------------------------------------------ LDA on TD features
def td_features(w: np.ndarray, zc_thresh: float = 1.0) -> np.ndarray:
    """(n, window, ch) -> (n, 4*ch): mean absolute value, waveform length, zero and slope-sign changes."""
    mav = np.abs(w).mean(1)
    d = np.diff(w, axis=1)
    wl = np.abs(d).sum(1)
    zc = ((w[:, :-1] * w[:, 1:] < 0) & (np.abs(d) >= zc_thresh)).sum(1)
    ssc = ((d[:, :-1] * d[:, 1:] < 0) & ((np.abs(d[:, :-1]) >= zc_thresh) | (np.abs(d[:, 1:]) >= zc_thresh))).sum(1)
    return np.concatenate([mav, wl, zc, ssc], axis=1).astype(np.float64)


class LDA:
    """Shrinkage linear discriminant analysis (equal priors) on standardised features."""

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

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        s = ((x - self.mu_x) / self.sd_x) @ self.w + self.b
        s = np.exp(s - s.max(axis=1, keepdims=True))
        p = s / s.sum(axis=1, keepdims=True)
        out = np.zeros((len(x), len(INTENTS)))
        out[:, self.classes] = p
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.probabilities(x).argmax(axis=1)


# ------------------------------------------------------------------------------ methods
class Method:
    """A recipe: trained on some subjects (``train``), adapted to a clip (``adapt``), deciding
    windows of the conditioned signal (the predictor ``adapt`` returns)."""

    name: str
    spec: SignalSpec

    def train(self, data: Path, subjects: tuple[str, ...]) -> None:
        pass

    def adapt(self, windows: np.ndarray, labels: np.ndarray, samples: np.ndarray):
        raise NotImplementedError


class LdaTD(Method):
    name = "LDA TD"

    def __init__(self, spec: SignalSpec):
        self.spec = spec

    def adapt(self, windows, labels, samples):
        lda = LDA().fit(td_features(windows * self.spec.scale), labels, 0.1)  # raw units: ZC threshold 1 LSB
        return lambda w: lda.probabilities(td_features(w * self.spec.scale))


class Torch(Method):
    """A metalearn model adapted with :class:`metalearn.adapt.Adapter`, as calibration does."""

    def __init__(self, name: str, cfg, fit):
        from metalearn.config import TrainConfig

        self.name, self.cfg, self.fit = name, TrainConfig.from_dict(cfg), fit
        self.spec = self.cfg.signal_spec(RATE)
        self.adapter: Adapter | None = None

    def train(self, data, subjects):
        import torch

        from metalearn.adapt import Adapter
        from metalearn.models import build_model
        from metalearn.tasks import TaskRef
        from metalearn.train import load_task_windows

        refs = [TaskRef(f"myo_{s}_training0", CONDITION) for s in subjects]
        tasks, _, _ = load_task_windows(refs, data, self.cfg, self.spec)
        torch.manual_seed(0)
        model = build_model(
            self.cfg.model,
            n_channels=self.spec.channels,
            window=self.spec.window,
            n_classes=len(INTENTS),
            fc_units=self.cfg.fc_units,
            **self.cfg.model_hparams,
        )
        self.fit(model, tasks, self.cfg)
        if self.cfg.non_intent and self.fit is not fit_nothing:  # a population prior: not for B1
            from metalearn.train import fit_non_intent

            fit_non_intent(model, tasks, data, self.spec, self.cfg.non_intent_log_prior)
        inner = {
            "optimizer": self.cfg.inner_optimizer,
            "steps": self.cfg.inner_steps,
            "lr": float(self.cfg.inner_lr),
            "first_order": True,
            "batch_size": self.cfg.inner_batch_size,
        }
        if self.cfg.model == "feat":
            inner.update(head="lda", shrinkage=float(self.cfg.lda_shrinkage))
            if self.cfg.lda_reject:
                inner["reject"] = float(self.cfg.lda_reject)
        self.adapter = Adapter(model.eval(), self.cfg.scale, inner)

    def adapt(self, windows, labels, samples):
        assert self.adapter is not None  # train() comes first
        adapted = self.adapter.adapt(windows, labels, samples)
        return adapted.predict


def fit_meta(model, tasks, cfg) -> None:
    from metalearn.train import fit_whitening

    fit_whitening(model, tasks, rotate=cfg.augment_rotation)


def fit_pooled(model, tasks, cfg) -> None:
    from metalearn.train import fit_whitening

    fit_whitening(model, tasks, rotate=cfg.augment_rotation, per_task=False)


def fit_nothing(model, tasks, cfg) -> None:
    pass


def fit_maml(model, tasks, cfg) -> None:
    """Second-order MAML as metaemg-train runs it (meta-batches from the Sampler, AdamW, StepLR)."""
    from metalearn.maml import InnerLoop, OuterLoop, meta_step
    from metalearn.train import Sampler, _tensors

    inner = InnerLoop.from_config(cfg)
    outer = OuterLoop(model, lr=float(cfg.outer_lr), lr_cycle=cfg.lr_cycle, lr_factor=float(cfg.lr_factor))
    sampler = Sampler(
        tasks, cfg.batch_size, cfg.rorcr_size, np.random.default_rng(cfg.seed), rotate=cfg.augment_rotation
    )
    for _ in range(cfg.meta_steps):
        meta_step(model, outer, [_tensors(t, "cpu") for t in sampler.meta_batch(cfg.n_train_tasks)], inner)


def shipped_config() -> dict:
    """The ``test`` section of ``metalearn/conf/myo_default.yaml``, read as metaemg-train reads it."""
    from omegaconf import OmegaConf

    path = Path(__file__).resolve().parents[1] / "metalearn" / "conf" / "myo_default.yaml"
    doc = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert isinstance(doc, dict)  # the file is a mapping
    return doc["test"]


PREVIOUS = {
    "model": "cnn",
    "fc_units": 64,
    "time_seq_len": 50,
    "stride": 10,
    "signal": "myo",
    "scale": "standard",
    "meta_steps": 300,
    "n_train_tasks": 4,
    "batch_size": 64,
    "inner_optimizer": "adam",
    "inner_steps": 5,
    "inner_lr": 0.01,
    "augment_rotation": True,
    "outer_lr": 1e-3,
    "lr_cycle": 100,
    "lr_factor": 0.5,
    "seed": 0,
}


def methods(previous: bool) -> list[Method]:
    base = {
        k: v
        for k, v in shipped_config().items()
        if k not in ("train_collection_json", "test_collection_json", "data_root")
    }
    cfg = {"train_collection_json": "-", **base}
    out: list[Method] = [
        Torch("meta-model", cfg, fit_meta),
        Torch("B1", cfg, fit_nothing),
        Torch("B2", cfg, fit_pooled),
        Torch("+5 steps", {**cfg, "inner_steps": 5}, fit_meta),
    ]
    out.append(LdaTD(out[0].spec))
    if previous:
        out.append(Torch("MAML cnn", {"train_collection_json": "-", **PREVIOUS}, fit_maml))
    return out


# ------------------------------------------------------------------------------ scoring
def score(method: Method, case: Case) -> dict:
    from controller.policy import replay

    spec = method.spec
    y = SignalChain(spec).process(case.clip.emg)
    w, ends = make_windows(y, spec.window, spec.stride)
    predict = method.adapt(w.astype(np.float32), case.clip.labels[ends], y)
    labels, raw, daemon, steady, changes = [], [], [], [], []
    for rec, start in case.tests:
        w, ends = make_windows(SignalChain(spec).process(rec.emg), spec.window, spec.stride)
        probs = predict(w.astype(np.float32))
        decided = np.asarray(replay(probs, rec.time[ends], start=rec.time[0]))
        keep = ends >= start
        labels.append(rec.labels[ends][keep])
        raw.append(probs.argmax(1)[keep])
        daemon.append(decided[keep])
        steady.append(steady_windows(rec.labels, ends, spec.window)[keep])
        changes += [c for c in change_delays(rec.time, rec.labels, ends, decided) if c["t"] >= rec.time[start]]
    all_labels, all_steady = np.concatenate(labels), np.concatenate(steady)
    out: dict[str, Any] = {
        "raw": summary(all_labels, np.concatenate(raw), all_steady),
        "daemon": summary(all_labels, np.concatenate(daemon), all_steady),
        "delay": delay_summary(changes),
    }
    fa_raw, fa_daemon, n = 0, 0, 0
    for rec in case.others:
        w, ends = make_windows(SignalChain(spec).process(rec.emg), spec.window, spec.stride)
        probs = predict(w.astype(np.float32))
        fa_raw += int((probs.argmax(1) != 0).sum())
        fa_daemon += int((np.asarray(replay(probs, rec.time[ends], start=rec.time[0])) != 0).sum())
        n += len(ends)
    out["other_raw"], out["other_daemon"] = fa_raw / n, fa_daemon / n
    return out


def run(data: Path, folds: int, budgets: tuple[float, ...], previous: bool, log=print) -> dict:
    groups = protocol_groups(data, folds)
    results: dict = {}
    for protocol, train_subjects, test_subjects in groups:
        for method in methods(previous):
            t0 = time.perf_counter()
            method.train(data, train_subjects)
            trained = time.perf_counter() - t0
            for budget in budgets:
                for case in cases(data, protocol, test_subjects, budget):
                    row = {"subject": case.subject, **score(method, case)}
                    results.setdefault(protocol, {}).setdefault(method.name, {}).setdefault(f"{budget:g}", []).append(
                        row
                    )
            log(
                f"  {protocol}: {method.name} trained on {len(train_subjects)} subjects in {trained:.1f} s, "
                f"scored {', '.join(test_subjects)}"
            )
    return {
        "protocols": {
            p: {m: {b: aggregate(rows) for b, rows in per_b.items()} for m, per_b in per_m.items()}
            for p, per_m in results.items()
        },
        "subjects": results,
        "folds": folds,
        "budgets": list(budgets),
    }


def aggregate(rows: list[dict]) -> dict:
    acc = np.array([r["raw"]["accuracy"] for r in rows])

    def mean(key, kind="raw"):
        return float(np.mean([r[kind][key] for r in rows]))

    delays = [r["delay"]["median_ms"] for r in rows if r["delay"]["median_ms"] is not None]
    recall = {k: float(np.mean([r["daemon"]["recall"][k] for r in rows])) for k in INTENTS}
    return {
        "subjects": len(rows),
        "accuracy": float(acc.mean()),
        "worst": float(acc.min()),
        "worst_subject": rows[int(acc.argmin())]["subject"],
        "steady_accuracy": mean("steady_accuracy"),
        "daemon_accuracy": mean("accuracy", "daemon"),
        "daemon_steady_accuracy": mean("steady_accuracy", "daemon"),
        "wrong_direction": mean("wrong_direction", "daemon"),
        "false_activation": mean("false_activation", "daemon"),
        "recall": recall,
        "min_recall": min(recall.values()),
        "delay_median_ms": float(np.median(delays)) if delays else None,
        "other_false_activation_raw": float(np.mean([r["other_raw"] for r in rows])),
        "other_false_activation": float(np.mean([r["other_daemon"] for r in rows])),
    }


def print_tables(doc: dict) -> None:
    titles = {
        "sessions": "the 3 evaluation subjects: clip from training0 (two cycles), scored on Test0 + Test1",
        "rotation": f"leave-subjects-out rotation over the 22 pre-training subjects ({doc['folds']} folds): "
        "clip from cycle 0, scored on cycles 1-3",
    }
    for protocol, per_m in doc["protocols"].items():
        print(f"\n{titles[protocol]}")
        print(
            f"{'method':<11} {'S':>3} {'accuracy':>8} {'worst':>6} {'steady':>6} | as the daemon decides: "
            f"{'acc.':>5} {'wrong':>6} {'false':>6} {'min':>5} {'delay':>5} | {'other gestures':>14}"
        )
        print(
            f"{'':<11} {'':>3} {'':>8} {'':>6} {'':>6} | {'':>21} {'':>5} {'dir.':>6} {'activ.':>6} "
            f"{'recall':>5} {'ms':>5} | {'raw':>6} {'daemon':>7}"
        )
        for name, per_b in per_m.items():
            for b, a in per_b.items():
                delay = "-" if a["delay_median_ms"] is None else f"{a['delay_median_ms']:.0f}"
                print(
                    f"{name:<11} {b:>3} {a['accuracy']:>8.3f} {a['worst']:>6.3f} {a['steady_accuracy']:>6.3f} | "
                    f"{'':>21} {a['daemon_accuracy']:>5.3f} {a['wrong_direction']:>6.3f} {a['false_activation']:>6.3f} "
                    f"{a['min_recall']:>5.2f} {delay:>5} | {a['other_false_activation_raw']:>6.2f} "
                    f"{a['other_false_activation']:>7.2f}"
                )
    sessions = doc["subjects"].get("sessions")
    if sessions:
        print("\nper evaluation subject (accuracy, every window of Test0 + Test1):")
        for name, per_b in sessions.items():
            print(
                f"  {name:<11} "
                + "  ".join(
                    f"{r['subject']} {b}s {r['raw']['accuracy']:.3f}" for b, rows in per_b.items() for r in rows
                )
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.myo_accuracy", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data",
        type=Path,
        default=Path("data/myo"),
        help="the imported Myo data (metaemg-import myoarmband SRC DATA); imported there when missing",
    )
    p.add_argument("--folds", type=int, default=5, help="folds of the leave-subjects-out rotation (0: none)")
    p.add_argument("--budgets", default="2,5", help="seconds of each intent in the calibration clip, comma-separated")
    p.add_argument("--no-previous", action="store_true", help="leave out the previous recipe (MAML cnn), the slow part")
    p.add_argument("--json", action="store_true", help="last line: one JSON document")
    args = p.parse_args(argv)
    ensure_imported(args.data)
    budgets = tuple(float(b) for b in args.budgets.split(",") if b.strip())
    t0 = time.perf_counter()
    return report(run(args.data, args.folds, budgets, not args.no_previous), t0, print_tables, args.json)


def report(doc: dict, t0: float, print_tables, as_json: bool) -> int:
    """A Myo bench's end: its tables, the seconds it took since ``t0``, the JSON document last."""
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    print_tables(doc)
    print(f"\n{doc['seconds']:.0f} s")
    if as_json:
        print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
