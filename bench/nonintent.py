"""Movements that are not intents (issue 27).

By default, the shipped calibration (:func:`run_shipped`): each arm of both protocols of
:mod:`bench.myo_accuracy` calibrated through the calibration's own code on a clip of the default
protocol's shape followed by a movement segment of 2-10 s of its wrist movements
(:func:`metalearn.myo.movement_segment`, labelled move), at each operating point; scored as the
daemon decides (its policy replayed, through its session adaptation, and without it) on the later
sessions (evaluation subjects: Test0 and Test1 with their wrist movements) or cycles 1-3
(pre-training subjects, 5 folds): false activation on the wrist movements, open and close recall,
onset delay, the patient's time, and the gate's cross-validated figure for the segment.

With ``--candidates``, the first candidates (requirement 1), on a head of the bench's own: a
"move freely, hand relaxed" segment cut from the calibration session's other gestures (first
cycle, ``S / 4`` seconds of each, steady windows only), clustered (k-means, ``k`` clusters) into
non-intent classes beside or instead of the population's four, with a log prior; a second stage
over a longer context (an open or close must be the most probable for 3, 5 or 8 windows in a row
before the hand leaves relax; movement already under way is not held), also only when a
non-intent class is close; scored as the daemon decides without the session adaptation.

With ``--features``, instead: which features separate open from the wrist movements (and close
from wrist flexion) once the patient's own examples are labelled: a two-class LDA per feature
group, trained on the first half of each class's windows of the scored sessions and scored on the
second half (balanced accuracy, mean and worst arm).

With ``--myhand``: the packaged MyHand model (envelopes) on the evaluation subjects rendered as
the MyHand armband reports them (:func:`run_myhand`).

    python -m bench.nonintent [--data data/myo] [--folds 5] [--candidates | --features | --myhand] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from bench import drift
from bench import myo_accuracy as myo
from metaemg.feathead import FeatHead, softmax
from metalearn.metrics import change_delays, delay_summary, summary

SEGMENTS_S = (2.0, 5.0, 10.0, 20.0)
# (name, movement segment s or None, clusters, prior against them, with the population's classes,
#  windows an open or close must hold before the hand leaves relax)
Candidate = tuple[str, float | None, int, float, bool, int]
CANDIDATES: list[Candidate] = [("shipped", None, 0, 0.0, True, 1)] + [
    (f"own {s:g} s, k {k}, prior {p:g}{' + population' if pop else ''}", s, k, p, pop, 1)
    for s in SEGMENTS_S
    for k, p, pop in ((4, 0.0, False), (4, 0.0, True), (8, 0.0, True), (4, 2.0, True))
]
CANDIDATES += [
    (
        f"{'shipped' if s is None else f'own {s:g} s, k 4, prior 2 + population'}, leave relax after {m}",
        s,
        4,
        2.0,
        True,
        m,
    )
    for s in (None, 2.0)
    for m in (3, 5, 8)
]
# the stricter confirmation only when a non-intent class is close: (name, segment, margin, hold)
NEAR = [
    (
        f"{'shipped' if s is None else 'own 2 s, k 4, prior 2 + population'}, leave relax after {m} when a "
        f"non-intent class is within {margin:g}",
        s,
        margin,
        m,
    )
    for s in (None, 2.0)
    for margin, m in ((5.0, 3), (10.0, 3), (10.0, 5))
]


SEGMENT_OF: dict[str, float | None] = {c[0]: c[1] for c in CANDIDATES} | {c[0]: c[1] for c in NEAR}


def movement_windows(decider: drift.Decider, data: Path, subject: str, seconds: float) -> np.ndarray:
    """Steady windows of ``seconds`` of wrist movements from the calibration session's first cycle."""
    from metalearn.myo import read_other_gestures

    rec, codes = read_other_gestures(data / "other_gestures" / f"myo_{subject}_training0.csv")
    starts = np.concatenate([[0], np.flatnonzero(np.diff(codes)) + 1, [len(codes)]])
    each = int(round(seconds / 4 * myo.RATE))
    pieces = []
    for g in range(4):  # cycle 0: the first four blocks
        a, b = starts[g], starts[g + 1]
        lo = a + (b - a - each) // 2 if b - a > each else a  # the middle of the held gesture
        w, _ = decider.windows(rec.emg[lo : min(b, lo + each)].astype(np.float64))
        pieces.append(w)
    return np.concatenate([p for p in pieces if len(p)])


def with_own(head: FeatHead, z: np.ndarray, k: int, prior: float, population: bool) -> FeatHead:
    from metaemg.feathead import own_classes, own_log_prior

    centres = own_classes(z, k)
    # the shipped population classes keep their strong prior against them (-18); the patient's own
    # movements join with their own (-prior; a hair below 0, which switches the rule on)
    own = np.full(len(centres), own_log_prior(prior))
    if population:
        pop = np.full(len(head.other_means), float(np.asarray(head.other_log_prior)))
        return dataclasses.replace(
            head, other_means=np.concatenate([head.other_means, centres]), other_log_prior=np.concatenate([pop, own])
        )
    return dataclasses.replace(head, other_means=centres, other_log_prior=own)


def confirm_leaving_relax(probs: np.ndarray, hold: int, near: np.ndarray | None = None) -> np.ndarray:
    """A second stage over a longer context: an open or close window counts only once that intent
    has been the most probable for ``hold`` windows in a row while the hand is at rest (before it,
    the window votes relax); a hand already moving is not held back. ``near`` (per window): hold
    only those windows (a non-intent class close to the intent)."""
    if hold <= 1:
        return probs
    out = probs.copy()
    best = probs.argmax(axis=1)
    run, moving = 0, False
    for i, b in enumerate(best):
        run = run + 1 if i and b == best[i - 1] else 1
        if b == 0:
            moving = False
        elif not moving and run < hold and (near is None or near[i]):
            out[i] = (1.0, 0.0, 0.0)
        else:
            moving = True
    return out


def nonintent_margin(head: FeatHead, z: np.ndarray) -> np.ndarray:
    """Per window: how far the best intent's score is above the best non-intent class's (with its
    prior; the head's own discriminant scores)."""
    both = np.concatenate([head.means, head.other_means])
    w = both @ head.precision
    scores = z @ w.T - 0.5 * np.einsum("kd,kd->k", w, both)
    n = len(head.means)
    return scores[:, :n].max(axis=1) - (scores[:, n:] + head.other_priors).max(axis=1)


def decide_all(
    head: FeatHead,
    decider: drift.Decider,
    rec,
    start: int = 0,
    hold: int = 1,
    margin: float | None = None,
    adapt: bool = False,
):
    """``adapt``: through the session adaptation, as the daemon decides by default (a fresh
    adapter for each recording); otherwise the calibrated head as it is."""
    w, ends = decider.windows(rec.emg.astype(np.float64))
    if adapt:
        daemon = drift.Decider(decider.spec, head, config=decider.config)
        probs = daemon.probabilities(w, daemon.adapter(True))[0]
    else:
        z = head.embed(w)
        near = None if margin is None else nonintent_margin(head, z) < margin
        probs = confirm_leaving_relax(softmax(head.logits(z)), hold, near)
    from controller.policy import replay

    decided = np.asarray(replay(probs, rec.time[ends], start=rec.time[0]), dtype=np.int64)
    keep = ends >= start
    return ends[keep], decided[keep]


def score(
    head: FeatHead,
    decider: drift.Decider,
    case: myo.Case,
    hold: int = 1,
    margin: float | None = None,
    adapt: bool = False,
) -> dict:
    labels, decided, changes = [], [], []
    for rec, start in case.tests:
        ends, dec = decide_all(head, decider, rec, start, hold, margin, adapt)
        labels.append(rec.labels[ends])
        decided.append(dec)
        changes += [c for c in change_delays(rec.time, rec.labels, ends, dec) if c["t"] >= rec.time[start]]
    s = summary(np.concatenate(labels), np.concatenate(decided))
    moved, n = 0, 0
    for o in case.others:
        _, dec = decide_all(head, decider, o, hold=hold, margin=margin, adapt=adapt)
        moved += int((dec != 0).sum())
        n += len(dec)
    return {
        "other_false_activation": moved / max(1, n),
        "open": s["recall"]["open"],
        "close": s["recall"]["close"],
        "false_activation": s["false_activation"],
        "delay_ms": delay_summary(changes)["median_ms"],
    }


class OwnHeads:
    """One subject's calibrated head with its own non-intent classes, made once per segment length,
    clusters, prior and population (the candidates share them)."""

    def __init__(self, feat: drift.Decider, data: Path, subject: str) -> None:
        assert feat.head is not None
        self.feat, self.data, self.subject, self.base = feat, data, subject, feat.head
        self._heads: dict[tuple, FeatHead] = {}

    def head(self, seconds: float | None, k: int, prior: float, population: bool) -> FeatHead:
        if seconds is None:
            return self.base
        key = (seconds, k, prior, population)
        if key not in self._heads:
            z = self.base.embed(movement_windows(self.feat, self.data, self.subject, seconds))
            self._heads[key] = with_own(self.base, z, k, prior, population)
        return self._heads[key]


def run(data: Path, folds: int, log=print) -> dict:
    rows: dict[str, dict[str, list[dict]]] = {}
    for protocol, case, feat, _ in drift.calibrated_cases(data, folds, 2.0, log=log):
        own = OwnHeads(feat, data, case.subject)
        for name, seconds, k, prior, population, hold in CANDIDATES:
            row = {"subject": case.subject, **score(own.head(seconds, k, prior, population), feat, case, hold)}
            rows.setdefault(protocol, {}).setdefault(name, []).append(row)
        for name, seconds, margin, hold in NEAR:
            row = {"subject": case.subject, **score(own.head(seconds, 4, 2.0, True), feat, case, hold, margin)}
            rows.setdefault(protocol, {}).setdefault(name, []).append(row)
    return rows


# ------------------------------------------------------------------------------ the shipped path
SHIPPED_SEGMENTS_S = (2.0, 4.0, 6.0, 10.0)
SHIPPED_BUDGET_S = 4.0  # of each intent: the default protocol's 2 cycles of 2 s


def with_segment(clip, data: Path, subject: str, seconds: float):
    """The calibration clip followed by ``seconds`` of the calibration session's wrist movements
    (:func:`metalearn.myo.movement_segment`, first cycle), labelled MOVE, as one recording."""
    from metaemg.intents import MOVE
    from metalearn.myo import movement_segment, read_other_gestures
    from metalearn.recording import Recording

    rec, codes = read_other_gestures(data / "other_gestures" / f"myo_{subject}_training0.csv")
    moves = movement_segment(rec.emg, codes, seconds)
    emg = np.concatenate([clip.emg, moves])
    labels = np.concatenate([clip.labels, np.full(len(moves), MOVE)])
    return Recording(np.arange(len(emg)) / myo.RATE, emg, labels)


def run_shipped(data: Path, folds: int, log=print) -> dict:
    """Each subject calibrated through the calibration's own code (the clip with its movement
    segment, :func:`metalearn.clip.prepare_clip`, the adapter with the wearer's own classes at
    each operating point, the gate's cross-validation), scored as the daemon decides: through its
    session adaptation (its default) and, under ``calibrated``, without."""
    from calibration.calibrate import cross_validated_decisions, held_out
    from metaemg.feathead import OPERATING_POINTS
    from metalearn.adapt import OwnClasses
    from metalearn.clip import prepare_clip

    rows: dict[str, dict[str, list[dict]]] = {}
    for protocol, train, test in myo.protocol_groups(data, folds):
        t0 = time.perf_counter()
        meta = myo.methods(False)[0]
        assert isinstance(meta, myo.Torch)  # the shipped recipe comes first
        meta.train(data, train)
        assert meta.adapter is not None
        points = {name: OwnClasses.at(name) for name in OPERATING_POINTS}
        for case in myo.cases(data, protocol, test, SHIPPED_BUDGET_S):
            decider = drift.Decider(meta.spec, None)
            for seconds in (0.0, *SHIPPED_SEGMENTS_S):
                rec = with_segment(case.clip, data, case.subject, seconds) if seconds else case.clip
                clip = prepare_clip(rec, meta.spec)
                adapted = meta.adapter.adapt(clip.windows, clip.labels, clip.conditioned[clip.intent_samples])
                cv = cross_validated_decisions(meta.adapter, adapted, clip, points if seconds else {"none": None})
                for name, (intents, moves) in cv.items():
                    adapted.set_own(clip.move_windows, points.get(name))
                    weights = {k: v.detach().cpu().numpy() for k, v in adapted.model.state_dict().items()}
                    head = FeatHead.from_weights(weights, adapted.scaler.offset, adapted.scaler.scale)
                    held = held_out(clip, intents, moves)
                    row = {
                        "subject": case.subject,
                        "patient_s": round(rec.duration, 1),
                        "cv_move_activation": held["move_activation"],
                        "cv_accuracy": held["accuracy"],
                        **score(head, decider, case, adapt=True),
                        "calibrated": score(head, decider, case),
                    }
                    key = "no movement segment" if not seconds else f"{seconds:g} s segment, {name}"
                    rows.setdefault(protocol, {}).setdefault(key, []).append(row)
        log(f"  {protocol}: {', '.join(test)} in {time.perf_counter() - t0:.0f} s")
    return rows


def print_shipped(doc: dict) -> None:
    for protocol, per in doc["shipped"].items():
        print(f"\n{protocol}: the shipped calibration, as the daemon decides")
        print(
            f"{'candidate':<32} {'patient s':>9} {'other FA':>9} {'worst':>6} {'open':>6} {'close':>6} {'delay':>6}"
            f"  {'gate: segment FA':>16} {'worst':>6}  {'not adapting: FA':>16} {'open':>6}"
        )
        for name, rs in per.items():
            fa = [r["other_false_activation"] for r in rs]
            cv = [r["cv_move_activation"] for r in rs if r["cv_move_activation"] is not None]
            delays = [r["delay_ms"] for r in rs if r["delay_ms"] is not None]
            gate = f"{np.mean(cv):>16.3f} {max(cv):>6.3f}" if cv else f"{'-':>16} {'-':>6}"
            off = [r["calibrated"] for r in rs]
            print(
                f"{name:<32} {np.mean([r['patient_s'] for r in rs]):>9.1f} {np.mean(fa):>9.3f} {max(fa):>6.3f} "
                f"{np.mean([r['open'] for r in rs]):>6.3f} {np.mean([r['close'] for r in rs]):>6.3f} "
                f"{np.median(delays):>6.0f}  {gate}  {np.mean([o['other_false_activation'] for o in off]):>16.3f} "
                f"{np.mean([o['open'] for o in off]):>6.3f}"
            )


# ------------------------------------------------------------------------------ --myhand
def run_myhand(data: Path, log=print) -> dict:
    """The packaged MyHand model (envelopes) calibrated on the evaluation subjects' protocol clip
    with a 6 s movement segment, all rendered as the MyHand armband reports them
    (:func:`metalearn.myhand.render_myhand`), at each operating point and without the segment;
    scored as the daemon decides on their rendered Test0 and Test1 and those sessions' wrist
    movements."""
    import tempfile

    from controller.config import Config
    from metaemg.feathead import OPERATING_POINTS
    from metaemg.intents import MOVE
    from metaemg.modelfile import shipped_model_for
    from metalearn.adapt import Adapter, OwnClasses, export_adapted
    from metalearn.clip import prepare_clip
    from metalearn.evaluate_cli import evaluate
    from metalearn.myhand import render_myhand
    from metalearn.myo import read_other_gestures
    from metalearn.recording import Recording, write_recording

    base = shipped_model_for(100.0, 8)  # the MyHand armband: 8 envelopes at about 100 Hz
    adapter = Adapter.from_file(base)
    assert adapter.info is not None  # from a file
    spec, daemon = adapter.info.signal, Config()
    points: dict[str, OwnClasses | None] = {"no movement segment": None}
    points |= {f"6 s segment, {name}": OwnClasses.at(name) for name in OPERATING_POINTS}
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for subject in myo.protocol_groups(data, 0)[0][2]:
            clip = with_segment(
                myo.calibration_clip(myo.recording(data, subject, "training0"), SHIPPED_BUDGET_S, (0, 1)),
                data,
                subject,
                6.0,
            )
            prepared = prepare_clip(render_myhand(clip, seed=0), spec)
            files = []
            for t in ("Test0", "Test1"):
                rec = render_myhand(myo.recording(data, subject, t), seed=1)
                files.append(write_recording(work / f"{subject}_{t}.csv", rec))
                wrist, _ = read_other_gestures(data / "other_gestures" / f"myo_{subject}_{t}.csv")
                moves = Recording(wrist.time, wrist.emg, np.full(len(wrist.time), MOVE))
                files.append(write_recording(work / f"{subject}_{t}_wrist.csv", render_myhand(moves, seed=2)))
            for name, own in points.items():
                adapted = adapter.adapt(
                    prepared.windows,
                    prepared.labels,
                    prepared.conditioned[prepared.intent_samples],
                    prepared.move_windows,
                    own,
                )
                model = export_adapted(
                    adapted, {"format": "metaemg-calibration/1"}, work / "m.onnx", prepared.windows[:16]
                )
                doc = evaluate(model, files, policy=daemon.policy, adapt=daemon.adapt)
                rows.setdefault(name, []).append(
                    {
                        "subject": subject,
                        "other_false_activation": doc["move_activation"],
                        "open": doc["recall"]["open"],
                        "close": doc["recall"]["close"],
                        "delay_ms": doc["delay"]["median_ms"],
                    }
                )
            log(f"  {subject}")
    return rows


def print_myhand(doc: dict) -> None:
    print("\nthe MyHand model (envelopes), evaluation subjects across sessions, as the daemon decides")
    print(f"{'candidate':<32} {'other FA':>9} {'worst':>6} {'open':>6} {'close':>6} {'delay':>6}   per subject")
    for name, rs in doc["myhand"].items():
        fa = [r["other_false_activation"] for r in rs]
        each = ", ".join(f"{r['subject']} {r['other_false_activation']:.3f}/{r['open']:.3f}" for r in rs)
        print(
            f"{name:<32} {np.mean(fa):>9.3f} {max(fa):>6.3f} {np.mean([r['open'] for r in rs]):>6.3f} "
            f"{np.mean([r['close'] for r in rs]):>6.3f} {np.median([r['delay_ms'] for r in rs]):>6.0f}   {each}"
        )


# ------------------------------------------------------------------------------ --features
def feature_groups(w: np.ndarray) -> dict[str, np.ndarray]:
    """The model's features of windows ``w`` by group, and Hudgins' crossings beside them."""
    from bench.myo_accuracy import td_features
    from metaemg.feathead import features

    f = features(w)
    mav, wl = f[:, :24], f[:, 24:]
    crossings = td_features(w * 128.0)[:, 16:]  # zero and slope-sign crossings in raw units (1 LSB)
    return {
        "log MAV, whole window (8)": f[:, :8],
        "log MAV, 3 scales (24)": mav,
        "log WL, 3 scales (24)": wl,
        "log WL - log MAV (24: spectral)": wl - mav,
        "adjacent-channel log MAV ratios (8)": f[:, :8] - np.roll(f[:, :8], -1, axis=1),
        "the model's 48": f,
        "ZC + SSC (16: zero and slope-sign crossings)": crossings,
        "the model's 48 + ZC + SSC (64)": np.concatenate([f, crossings], axis=1),
    }


def separability(a: np.ndarray, b: np.ndarray) -> float:
    """A two-class LDA fitted on each class's first half, its balanced accuracy on the second halves."""
    from bench.myo_accuracy import LDA

    ha, hb = len(a) // 2, len(b) // 2
    lda = LDA().fit(np.concatenate([a[:ha], b[:hb]]), np.r_[np.zeros(ha, int), np.ones(hb, int)], 0.1)
    return 0.5 * float((lda.predict(a[ha:]) == 0).mean() + (lda.predict(b[hb:]) == 1).mean())


def scored_gestures(decider: drift.Decider, data: Path, protocol: str, case: myo.Case) -> dict[int, np.ndarray]:
    """Windows of each wrist gesture (codes 1-4) in the scored sessions (cycles 1-3 for the rotation)."""
    from metalearn.myo import read_other_gestures

    out: dict[int, list] = {g: [] for g in (1, 2, 3, 4)}
    for session in ("Test0", "Test1") if protocol == "sessions" else ("training0",):
        rec, codes = read_other_gestures(data / "other_gestures" / f"myo_{case.subject}_{session}.csv")
        w, ends = decider.windows(rec.emg.astype(np.float64))
        later = ends >= (np.flatnonzero(np.diff(codes))[3] + 1 if protocol == "rotation" else 0)
        for g in out:
            out[g].append(w[(codes[ends] == g) & later])
    return {g: np.concatenate(v) for g, v in out.items()}


def run_features(data: Path, folds: int, log=print) -> dict:
    rows: dict[str, dict[str, list[float]]] = {}
    for protocol, case, feat, _ in drift.calibrated_cases(data, folds, 2.0, log=log):
        intents: dict[int, list] = {1: [], 2: []}
        for rec, start in case.tests:
            w, ends = feat.windows(rec.emg.astype(np.float64))
            for k in intents:
                intents[k].append(w[(ends >= start) & (rec.labels[ends] == k)])
        mine = {k: feature_groups(np.concatenate(v)) for k, v in intents.items()}
        wrist = {g: feature_groups(v) for g, v in scored_gestures(feat, data, protocol, case).items()}
        for name in mine[1]:
            r = rows.setdefault(
                name, {"open vs wrist extension": [], "close vs wrist flexion": [], "open vs hardest": []}
            )
            r["open vs wrist extension"].append(separability(mine[1][name], wrist[4][name]))
            r["close vs wrist flexion"].append(separability(mine[2][name], wrist[2][name]))
            r["open vs hardest"].append(min(separability(mine[1][name], wrist[g][name]) for g in wrist))
    return rows


def print_features(doc: dict) -> None:
    print("\nbalanced accuracy of a two-class LDA on each feature group (mean / worst of the arms):")
    first = next(iter(doc["features"].values()))
    print(f"{'feature group':<46} " + "  ".join(f"{k:>24}" for k in first))
    for name, r in doc["features"].items():
        print(f"{name:<46} " + "  ".join(f"{np.mean(v):>15.3f} / {np.min(v):.3f}" for v in r.values()))


def print_tables(doc: dict) -> None:
    for protocol, per in doc["protocols"].items():
        print(f"\n{protocol}: as the daemon decides")
        print(f"{'candidate':<98} {'patient s':>9} {'other FA':>9} {'worst':>6} {'open':>6} {'close':>6} {'delay':>6}")
        for name, rs in per.items():
            seconds = SEGMENT_OF[name]
            fa = [r["other_false_activation"] for r in rs]
            delays = [r["delay_ms"] for r in rs if r["delay_ms"] is not None]
            print(
                f"{name:<98} {6 + (seconds or 0):>9.0f} {np.mean(fa):>9.3f} {max(fa):>6.3f} "
                f"{np.mean([r['open'] for r in rs]):>6.3f} {np.mean([r['close'] for r in rs]):>6.3f} "
                f"{np.median(delays):>6.0f}"
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.nonintent", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/myo"), help="the imported Myo data (imported when missing)")
    p.add_argument("--folds", type=int, default=5, help="folds of the leave-subjects-out rotation (0: none)")
    p.add_argument("--features", action="store_true", help="which features separate the intents from wrist movements")
    p.add_argument(
        "--candidates", action="store_true", help="the first candidates, on a head of the bench's own (requirement 1)"
    )
    p.add_argument("--myhand", action="store_true", help="the MyHand model on the rendered evaluation subjects")
    p.add_argument("--json", action="store_true", help="last line: one JSON document")
    args = p.parse_args(argv)
    myo.ensure_imported(args.data)
    t0 = time.perf_counter()
    if args.features:
        return myo.report({"features": run_features(args.data, args.folds)}, t0, print_features, args.json)
    if args.myhand:
        return myo.report({"myhand": run_myhand(args.data)}, t0, print_myhand, args.json)
    if args.candidates:
        return myo.report({"protocols": run(args.data, args.folds)}, t0, print_tables, args.json)
    return myo.report({"shipped": run_shipped(args.data, args.folds)}, t0, print_shipped, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
