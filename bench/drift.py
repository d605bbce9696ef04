"""Drift within and across sessions: how the decisions hold up after one calibration, with and
without the daemon's session adaptation (:mod:`metaemg.drift`), against a Hudgins LDA.

Both protocols of :mod:`bench.myo_accuracy`, with a calibration clip of ``--budget`` seconds of
each intent (2 by default):

- **evaluation subjects, across sessions** (Male13, Male14, Male15): the meta-model trained on the
  22 pre-training subjects, calibrated on session ``training0``, scored on ``Test0`` and
  ``Test1`` (separately donned, recorded at other times);
- **leave-subjects-out rotation** over the 22 pre-training subjects (``--folds``): calibrated on
  cycle 0 of their session, scored on cycles 1-3 (the same session).

Each scored recording is taken as recorded and with drift simulated on its raw EMG (the Myo's
-128..127, rounded and clipped as the armband would send it), the same drift on the other
gestures of that session (wrist movements: none is an intent):

- ``rotation 1/4``, ``rotation 1/2``: the armband turned by a quarter or half of an electrode
  from the start: each channel becomes ``(1 - f) x_c + f x_(c+1)``, the electrode between two.
  The Myo's 8 electrodes sit about 3 cm apart around a forearm of about 25 cm, so half an
  electrode is about 1.5 cm of rotation, which an armband does over a session of use;
- ``fatigue``: over the recording, the contraction amplitude falls to 70 % and the spectrum
  compresses toward low frequencies (the signal mixed with its 45 Hz low-pass, up to 32 %:
  the median frequency of the contractions falls by 20 %, 72 -> 58 Hz on Male13's Test1), as
  reported for repeated submaximal contractions (median frequency -10 to -30 %);
- ``contact``: the electrode that carries the most activity in the clip loses contact over the
  recording: its gain falls to 30 % and white noise rises to 4 LSB rms (a drying or lifting
  electrode);
- ``gain``: every channel's gain drifts by ``exp(b t / T)`` with b ~ N(0, 0.25) per channel
  (seeded): about +-25 % by the end, as skin impedance changes with sweat and temperature.

Methods, on the same clip: ``calibrated`` (the meta-model as calibrated, no adaptation: the
daemon with ``adapt.enabled: false``), ``adapted`` (the daemon's default: the same decisions run
through :class:`metaemg.drift.SessionAdapter`, one fresh from the calibration per scored
recording, going on into that session's other gestures), ``LDA TD`` (Hudgins' features and an
LDA, fitted on the clip; no adaptation). Everything is scored as the daemon decides (its
default policy replayed, :func:`controller.policy.replay`).

Printed per protocol, condition and method: accuracy (mean over subjects, worst subject), the
largest drop below the subject's own calibration session (``training0`` itself for the
evaluation subjects; cycles 1-3 as recorded for the rotation), wrong direction, false
activation on relax, on the other gestures, onset delay (median of the subjects' medians). Then
the adaptation's largest loss against no adaptation on any subject and condition, subjects below
the LDA, and the recalibration flag: false flags on recordings without simulated drift (per 30
minutes), and for a half-electrode slip in the middle of each recording, the seconds of activity
(windows labelled open or close) until the flag.

    python -m bench.drift [--data data/myo] [--folds 5] [--budget 2] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench import myo_accuracy as myo
from metaemg.drift import AdaptConfig, SessionAdapter
from metaemg.feathead import FeatHead
from metaemg.signal import SignalChain, SignalSpec, make_windows
from metalearn.metrics import change_delays, delay_summary, steady_windows, summary
from metalearn.recording import Recording

RATE = myo.RATE
LP_HZ, FATIGUE_MIX, FATIGUE_AMPLITUDE = 45.0, 0.32, 0.7
CONTACT_GAIN, CONTACT_NOISE = 0.3, 4.0
GAIN_SD = 0.25
METHODS = ("calibrated", "adapted", "LDA TD")
TARGETS = {"mean": 0.96, "worst": 0.93, "drop": 0.03, "loss": 0.005, "delay_ms": 120.0, "slip_s": 10.0, "flags": 1.0}


# ------------------------------------------------------------------------------ drift
def _ramp(n: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, n)[:, None]


def rotate(emg: np.ndarray, fraction: float) -> np.ndarray:
    return (1 - fraction) * emg + fraction * np.roll(emg, -1, axis=1)


def fatigue(emg: np.ndarray) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    r = _ramp(len(emg))
    centred = emg - emg.mean(axis=0)
    low = sosfilt(butter(2, LP_HZ, fs=RATE, output="sos"), centred, axis=0)
    low *= np.sqrt((centred.var(axis=0) + 1e-9) / (low.var(axis=0) + 1e-9))  # the same power, lower frequencies
    mixed = (1 - FATIGUE_MIX * r) * emg + FATIGUE_MIX * r * low
    return mixed * (1 - (1 - FATIGUE_AMPLITUDE) * r)


def contact(emg: np.ndarray, channel: int, rng: np.random.Generator) -> np.ndarray:
    r = _ramp(len(emg))[:, 0]
    out = emg.astype(np.float64).copy()
    out[:, channel] = out[:, channel] * (1 - (1 - CONTACT_GAIN) * r) + rng.normal(0, CONTACT_NOISE, len(out)) * r
    return out


def gains(emg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return emg * np.exp(_ramp(len(emg)) * rng.normal(0, GAIN_SD, emg.shape[1]))


def _as_sent(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), -128, 127)


CONDITIONS: dict[str, Callable[[np.ndarray, np.random.Generator, int], np.ndarray]] = {
    "as recorded": lambda x, rng, ch: x,
    "rotation 1/4": lambda x, rng, ch: _as_sent(rotate(x, 0.25)),
    "rotation 1/2": lambda x, rng, ch: _as_sent(rotate(x, 0.5)),
    "fatigue": lambda x, rng, ch: _as_sent(fatigue(x)),
    "contact": lambda x, rng, ch: _as_sent(contact(x, ch, rng)),
    "gain": lambda x, rng, ch: _as_sent(gains(x, rng)),
}


def slip_in_the_middle(emg: np.ndarray) -> tuple[np.ndarray, int]:
    """A half-electrode slip from the middle of the recording on; the sample it happens at."""
    at = len(emg) // 2
    out = emg.astype(np.float64).copy()
    out[at:] = _as_sent(rotate(out[at:], 0.5))
    return out, at


# ------------------------------------------------------------------------------ deciding
class Decider:
    """One calibrated subject: the head (for the meta-model) or the LDA, deciding whole recordings."""

    def __init__(self, spec: SignalSpec, head: FeatHead | None, lda=None, config: AdaptConfig | None = None):
        self.spec, self.head, self.lda = spec, head, lda
        self.config = config or AdaptConfig()

    def adapter(self, enabled: bool) -> SessionAdapter:
        assert self.head is not None
        cfg = dataclasses.replace(self.config, enabled=enabled)
        return SessionAdapter(self.head, cfg, "bench", self.spec.stride / self.spec.sample_rate)

    def windows(self, emg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return make_windows(SignalChain(self.spec).process(emg), self.spec.window, self.spec.stride)

    def probabilities(self, windows: np.ndarray, adapter: SessionAdapter | None) -> tuple[np.ndarray, list]:
        """(n, 3) probabilities and, with an adapter, the window indices where a flag was first up."""
        if adapter is None:
            return self.lda(windows.astype(np.float32)), []
        out, flagged = np.empty((len(windows), 3)), list[int]()
        for i, w in enumerate(windows):
            out[i] = adapter.decide(w)
            if adapter.flag is not None and not flagged:
                flagged.append(i)
        return out, flagged


def _decide(probs: np.ndarray, rec: Recording, ends: np.ndarray) -> np.ndarray:
    from controller.policy import replay

    return np.asarray(replay(probs, rec.time[ends], start=rec.time[0]), dtype=np.int64)


def score(
    decider: Decider, method: str, tests: list[tuple[Recording, int]], others: list[Recording], condition: str, ch: int
) -> dict:
    """One subject, method and condition: the figures as the daemon decides."""
    drift = CONDITIONS[condition]
    labels, decided, steady, changes = [], [], [], []
    other_fa, other_n, flags, seconds = 0, 0, 0, 0.0
    for j, (rec, start) in enumerate(tests):
        adapter = None if method == "LDA TD" else decider.adapter(method == "adapted")
        emg = drift(rec.emg.astype(np.float64), np.random.default_rng(1000 + j), ch)
        windows, ends = decider.windows(emg)
        probs, flagged = decider.probabilities(windows, adapter)
        dec = _decide(probs, rec, ends)
        keep = ends >= start
        labels.append(rec.labels[ends][keep])
        decided.append(dec[keep])
        steady.append(steady_windows(rec.labels, ends, decider.spec.window)[keep])
        changes += [c for c in change_delays(rec.time, rec.labels, ends, dec) if c["t"] >= rec.time[start]]
        flags += bool(flagged)
        seconds += float(rec.time[-1] - rec.time[start])
        if j < len(others):  # the same session's other gestures, the adapter going on
            o = others[j]
            ow, oe = decider.windows(drift(o.emg.astype(np.float64), np.random.default_rng(2000 + j), ch))
            op, _ = decider.probabilities(ow, adapter)
            od = _decide(op, o, oe)
            other_fa += int((od != 0).sum())
            other_n += len(od)
    s = summary(np.concatenate(labels), np.concatenate(decided), np.concatenate(steady))
    return {
        "accuracy": s["accuracy"],
        "wrong_direction": s["wrong_direction"],
        "false_activation": s["false_activation"],
        "recall": s["recall"],
        "other_false_activation": other_fa / max(1, other_n),
        "delay": delay_summary(changes),
        "flagged": flags,
        "minutes": seconds / 60,
    }


def slip_flag(decider: Decider, tests: list[tuple[Recording, int]]) -> list[float | None]:
    """For each scored recording with a half-electrode slip in its middle: the seconds of
    activity (windows labelled open or close) from the slip to the recalibration flag (None:
    not flagged before the end; the flag must not be up before the slip either)."""
    out: list[float | None] = []
    stride_s = decider.spec.stride / decider.spec.sample_rate
    for rec, _ in tests:
        emg, at = slip_in_the_middle(rec.emg)
        windows, ends = decider.windows(emg)
        _, flagged = decider.probabilities(windows, decider.adapter(True))
        if not flagged or ends[flagged[0]] < at:
            out.append(None if not flagged else -1.0)
            continue
        active = (rec.labels[ends] != 0) & (ends >= at)
        out.append(float(active[: flagged[0] + 1].sum() * stride_s))
    return out


# ------------------------------------------------------------------------------ the run
def calibrate_case(
    meta: myo.Torch, lda_method: myo.LdaTD, case: myo.Case, config: AdaptConfig | None = None
) -> tuple[Decider, Decider]:
    spec = meta.spec
    y = SignalChain(spec).process(case.clip.emg)
    w, ends = make_windows(y, spec.window, spec.stride)
    assert meta.adapter is not None  # trained first
    adapted = meta.adapter.adapt(w.astype(np.float32), case.clip.labels[ends], y)
    weights = {k: v.detach().cpu().numpy() for k, v in adapted.model.state_dict().items()}
    head = FeatHead.from_weights(weights, adapted.scaler.offset, adapted.scaler.scale)
    lda = lda_method.adapt(w.astype(np.float32), case.clip.labels[ends], y)
    return Decider(spec, head, config=config), Decider(spec, None, lda)


def reference(data: Path, protocol: str, case: myo.Case) -> list[tuple[Recording, int]]:
    """The subject's own calibration session, scored as the others are."""
    if protocol == "sessions":
        return [(myo.recording(data, case.subject, "training0"), 0)]
    return case.tests


def calibrated_cases(data: Path, folds: int, budget: float, config: AdaptConfig | None = None, log=print):
    """``(protocol, case, meta-model decider, LDA decider)`` for every subject of both protocols:
    the meta-model trained on each group's training subjects, both calibrated on each clip."""
    for protocol, train, test in myo.protocol_groups(data, folds):
        t0 = time.perf_counter()
        meta = myo.methods(False)[0]
        assert isinstance(meta, myo.Torch)  # the shipped recipe comes first
        meta.train(data, train)
        lda = myo.LdaTD(meta.spec)
        for case in myo.cases(data, protocol, test, budget):
            yield (protocol, case, *calibrate_case(meta, lda, case, config))
        log(f"  {protocol}: {', '.join(test)} in {time.perf_counter() - t0:.0f} s")


def run(data: Path, folds: int, budget: float, config: AdaptConfig | None = None, log=print) -> dict:
    rows: dict[str, list[dict]] = {}
    slips: dict[str, list] = {}
    for protocol, case, feat, td in calibrated_cases(data, folds, budget, config, log):
        ch = int(np.argmax(np.abs(case.clip.emg).mean(axis=0)))
        row: dict[str, Any] = {"subject": case.subject, "results": {}}
        for method in METHODS:
            decider = td if method == "LDA TD" else feat
            ref = score(decider, method, reference(data, protocol, case), [], "as recorded", ch)
            row["results"][method] = {"reference": ref["accuracy"]}
            for condition in CONDITIONS:
                row["results"][method][condition] = score(decider, method, case.tests, case.others, condition, ch)
        rows.setdefault(protocol, []).append(row)
        slips.setdefault(protocol, []).extend(slip_flag(feat, case.tests))
    return {"budget": budget, "folds": folds, "subjects": rows, "slips": slips, "summary": summarise(rows, slips)}


def summarise(rows: dict[str, list[dict]], slips: dict[str, list]) -> dict:
    out: dict[str, Any] = {}
    for protocol, subjects in rows.items():
        table: dict[str, dict] = {}
        for condition in CONDITIONS:
            for method in METHODS:
                rs = [s["results"][method][condition] for s in subjects]
                acc = np.array([r["accuracy"] for r in rs])
                drops = [s["results"][method]["reference"] - r["accuracy"] for s, r in zip(subjects, rs, strict=True)]
                delays = [r["delay"]["median_ms"] for r in rs if r["delay"]["median_ms"] is not None]
                table.setdefault(condition, {})[method] = {
                    "mean": float(acc.mean()),
                    "worst": float(acc.min()),
                    "worst_subject": subjects[int(acc.argmin())]["subject"],
                    "drop": float(max(drops)),
                    "wrong_direction": float(np.mean([r["wrong_direction"] for r in rs])),
                    "false_activation": float(np.mean([r["false_activation"] for r in rs])),
                    "other_false_activation": float(np.mean([r["other_false_activation"] for r in rs])),
                    "delay_ms": float(np.median(delays)) if delays else None,
                    "flagged": int(sum(r["flagged"] for r in rs)),
                    "minutes": float(sum(r["minutes"] for r in rs)),
                }
        losses = [
            (s["results"]["calibrated"][c]["accuracy"] - s["results"]["adapted"][c]["accuracy"], s["subject"], c)
            for s in subjects
            for c in CONDITIONS
        ]
        below = [
            (s["subject"], c)
            for s in subjects
            for c in CONDITIONS
            if s["results"]["adapted"][c]["accuracy"] < s["results"]["LDA TD"][c]["accuracy"]
        ]
        worst_loss = max(losses)
        flag_times = [t for t in slips[protocol] if t is not None and t >= 0]
        out[protocol] = {
            "table": table,
            "largest_loss": {"points": 100 * worst_loss[0], "subject": worst_loss[1], "condition": worst_loss[2]},
            "below_lda": below,
            "slip": {
                "recordings": len(slips[protocol]),
                "flagged": len(flag_times),
                "early": sum(1 for t in slips[protocol] if t is not None and t < 0),
                "median_s": float(np.median(flag_times)) if flag_times else None,
                "max_s": float(np.max(flag_times)) if flag_times else None,
            },
        }
    return out


def print_tables(doc: dict) -> None:
    titles = {
        "sessions": "the 3 evaluation subjects: calibrated on training0, scored on Test0 + Test1",
        "rotation": f"the 22 pre-training subjects ({doc['folds']}-fold rotation): calibrated on cycle 0, scored on "
        "cycles 1-3",
    }
    for protocol, s in doc["summary"].items():
        print(f"\n{titles[protocol]} (a {doc['budget']:g} s-per-intent clip; as the daemon decides)")
        print(
            f"{'condition':<13} {'method':<11} {'mean':>6} {'worst':>6} {'drop':>6} {'wrong':>6} {'false':>6} "
            f"{'other':>6} {'delay':>6} {'flags':>9}"
        )
        for condition, per_m in s["table"].items():
            for method, a in per_m.items():
                delay = "-" if a["delay_ms"] is None else f"{a['delay_ms']:.0f}"
                flags = f"{a['flagged']}/{a['minutes']:.0f}m" if method == "adapted" else ""
                print(
                    f"{condition:<13} {method:<11} {a['mean']:>6.3f} {a['worst']:>6.3f} {100 * a['drop']:>5.1f}p "
                    f"{a['wrong_direction']:>6.3f} {a['false_activation']:>6.3f} {a['other_false_activation']:>6.3f} "
                    f"{delay:>6} {flags:>9}"
                )
        loss = s["largest_loss"]
        print(
            f"adaptation's largest loss against none: {loss['points']:+.1f} points ({loss['subject']}, "
            f"{loss['condition']}); "
            f"adapted below the LDA: {len(s['below_lda'])} of {len(doc['subjects'][protocol]) * len(CONDITIONS)}"
            + (f" ({', '.join(f'{a} {b}' for a, b in s['below_lda'][:6])})" if s["below_lda"] else "")
        )
        sl = s["slip"]
        med = "-" if sl["median_s"] is None else f"{sl['median_s']:.1f}"
        mx = "-" if sl["max_s"] is None else f"{sl['max_s']:.1f}"
        print(
            f"half-electrode slip in the middle: flagged {sl['flagged']} of {sl['recordings']} (before the slip: "
            f"{sl['early']}), after {med} s of activity (median), {mx} s at most"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.drift", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/myo"), help="the imported Myo data (imported when missing)")
    p.add_argument("--folds", type=int, default=5, help="folds of the leave-subjects-out rotation (0: none)")
    p.add_argument("--budget", type=float, default=2.0, help="seconds of each intent in the calibration clip")
    p.add_argument(
        "--adapt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an adapt setting other than the default (metaemg.drift.AdaptConfig), e.g. follow_turn=false",
    )
    p.add_argument("--json", action="store_true", help="last line: one JSON document")
    args = p.parse_args(argv)
    import yaml

    from metaemg.typedconfig import document

    overrides = {k: yaml.safe_load(v) for k, _, v in (a.partition("=") for a in args.adapt)}
    config = document(AdaptConfig, overrides, "--adapt")
    myo.ensure_imported(args.data)
    t0 = time.perf_counter()
    doc = run(args.data, args.folds, args.budget, config)
    doc["adapt"] = dataclasses.asdict(config)
    return myo.report(doc, t0, print_tables, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
