"""The calibration itself, for a clip already stored: is the adapted model good enough to drive
the patient's hand? (The command line is :mod:`calibration.cli`.)

1. The clip: recorded live (:mod:`calibration.live`) or read from a file, and stored under
   ``<state>/clips/`` before anything else happens.
2. The clip is checked and cut into its cycles and its movement segment (:mod:`metalearn.clip`).
3. Cross-validation: for each cycle, the base meta-model is adapted on the other cycles
   (:mod:`metalearn.adapt`) and scores the one left out, at each operating point; the base model
   scores every window. The gate (:mod:`calibration.gate`) compares the two on the same windows
   and installs the model adapted on every cycle, or refuses it, saying why.
4. The installed model is exported with the calibration provenance in its metadata and checked
   against torch with onnxruntime.
5. A report (JSON, PNG) is written; a running daemon is told to load the new model.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from calibration import plausible
from calibration.daemonlink import DaemonLink
from calibration.gate import GateDecision, accuracy_interval, decide
from calibration.store import Store
from metaemg.atomic import PRIVATE
from metaemg.errors import ModelError
from metaemg.feathead import OPERATING_POINT_WORDS, OPERATING_POINTS
from metaemg.intents import MOVE
from metaemg.modelfile import OnnxModel
from metalearn.clip import ClipWindows, prepare_clip
from metalearn.metrics import change_delays, delay_summary, fmt_recall, steady_windows, summary
from metalearn.recording import Recording

JSON_KEYS = ("accuracy_before", "accuracy_after", "adapt_seconds", "model")


def say(text: str = "") -> None:
    print(text, flush=True)


# ------------------------------------------------------------------------------------ the work
@dataclass(eq=False)
class Estimate:
    """What the clip says, held out, about the base model and the adapted one at each operating
    point, before anything is installed (step 3 of the module docstring)."""

    clip: ClipWindows
    base: OnnxModel
    adapter: Any
    adapted: Any  # adapted on every window, with the chosen operating point's own classes
    activity: dict
    dec_base: np.ndarray
    before: dict
    dec_cv: np.ndarray
    after: dict
    interval: tuple[float, float]
    chosen: str
    operating: dict  # the clip's figures at each operating point (empty without a movement segment)


def calibrate(
    rec: Recording,
    clip_path: Path,
    clip_digest: str,
    *,
    base_model: Path,
    config,
    store: Store,
    when: datetime,
    out: Path | None = None,
    force: bool = False,
    link: DaemonLink | None = None,
    source: str = "recording",
    patient: str | None = None,
) -> dict:
    """Steps 2-5 of the module docstring for a clip already stored; returns the result document."""
    t_total = time.perf_counter()
    est = _estimate(rec, clip_path, base_model, config)
    witnesses = _witnesses(est.base, est.adapter, store, est.clip)
    implausible = plausible.reasons(witnesses, config.gate.swap_margin)
    decision = decide(est.before, est.after, config.gate, force=force, implausible=implausible, points=est.operating)
    calibration = _provenance(est, clip_path, clip_digest, base_model, decision, config, when, source, patient)
    model_id, model_path, current, installed = _export_and_install(
        est, calibration, decision, store, when, base_model, clip_path, out
    )
    daemon = None
    if installed is not None and link is not None and config.daemon.notify:
        daemon = link.request_reload(installed.current)
        say(daemon.note)
    elif installed is not None:
        say("daemon not told (daemon.notify is false): it loads the new model when its file watcher sees the change")
    result = {
        "ok": decision.install,
        "installed": installed is not None,
        "patient": patient,
        "session": when.isoformat(timespec="seconds"),
        "model": None if model_path is None else str(model_path),
        "model_id": model_id if decision.install else None,
        "current": None if current is None else str(current),
        **_figures(est),
        "gate": {
            **decision.to_dict(),
            "line": decision.line(),
            **_rules(config),
            "witnesses": [w.to_dict() for w in witnesses],
        },
        "base_model": str(base_model),
        "base_model_id": est.base.info.model_id,
        "clip": str(clip_path),
        "clip_sha256": clip_digest,
        "daemon": None if daemon is None else daemon.to_dict(),
    }
    _write_reports(result, est, calibration, decision, config, store.report_stem(when, clip_digest, patient))
    result["total_seconds"] = round(time.perf_counter() - t_total, 3)
    _say_result(est, decision, installed, model_path)
    return result


def _estimate(rec: Recording, clip_path: Path, base_model: Path, config) -> Estimate:
    """The clip checked and windowed, the base model's decisions, and each operating point's
    cross-validated figures (said as they come)."""
    base = OnnxModel(base_model)
    spec = base.info.signal
    clip = prepare_clip(rec, spec, config.clip)
    activity = _describe_clip(rec, clip, clip_path, base)
    dec_base = base.predict(clip.windows).argmax(axis=1)
    before = held_out(clip, dec_base, _decide(base.predict, clip.move_windows))
    say(f"base model {base.info.model_id}: held-out accuracy {before['accuracy']:.2f} ({fmt_recall(before['recall'])})")

    from metalearn.adapt import Adapter, OwnClasses

    adapter = Adapter.from_file(base_model)
    chosen = config.movement.operating_point
    names = OPERATING_POINT_WORDS if len(clip.move_windows) else (chosen,)
    points = {name: OwnClasses.at(name, config.movement.clusters) for name in names}
    adapted = adapter.adapt(clip.windows, clip.labels, clip.conditioned[clip.intent_samples])
    dec_points = cross_validated_decisions(adapter, adapted, clip, points)
    figures = {name: held_out(clip, *dec_points[name]) for name in points}
    after = figures[chosen]
    scored = int(clip.scored.sum())  # every window, but for one cycle those spanning both halves of a run
    interval = accuracy_interval(after["accuracy"], scored, spec.window, spec.stride)
    say(
        f"held-out estimate ({clip.holdout()}): accuracy {after['accuracy']:.2f}, 95 % interval "
        f"{interval[0]:.2f}-{interval[1]:.2f} from {scored * spec.stride / spec.sample_rate:.1f} s of held-out windows"
    )
    operating = _say_operating_points(clip, figures, before, chosen)
    adapted.set_own(clip.move_windows, points[chosen])
    say(f"adapted in {adapted.adapt_seconds:.3f} s ({_recipe(base.info.inner)}, on this PC's CPU)")
    return Estimate(
        clip,
        base,
        adapter,
        adapted,
        activity,
        dec_base,
        before,
        dec_points[chosen][0],
        after,
        interval,
        chosen,
        operating,
    )


def _figures(est: Estimate) -> dict:
    """The result document's figures: before and after, held out."""
    before, after, spec = est.before, est.after, est.clip.spec
    return {
        "accuracy_before": before["accuracy"],
        "accuracy_after": after["accuracy"],
        "accuracy_after_interval": [round(v, 4) for v in est.interval],
        "holdout": est.clip.holdout(),
        "adapt_seconds": round(est.adapted.adapt_seconds, 6),
        "recall_before": before["recall"],
        "recall_after": after["recall"],
        "move_activation_before": before["move_activation"],
        "move_activation_after": after["move_activation"],
        "movement_seconds": round(len(est.clip.move_windows) * spec.stride / spec.sample_rate, 2),
        "operating_point": est.chosen,
        "operating_points": est.operating,
        "confusion_before": before["confusion"],
        "confusion_after": after["confusion"],
    }


def _rules(config) -> dict:
    gate = config.gate
    return {
        "min_accuracy": gate.min_accuracy,
        "min_recall": gate.min_recall,
        "swap_margin": gate.swap_margin,
        "max_move_activation": gate.max_move_activation,
    }


def _write_reports(result: dict, est: Estimate, calibration: dict, decision: GateDecision, config, stem: Path) -> None:
    """The JSON report (and the PNG with ``png``) beside the result; their paths go in ``result``."""
    clip = est.clip
    result["report"] = str(stem.with_suffix(".json"))
    result["png"] = None
    if config.png:
        png = stem.with_suffix(".png")
        note = _png(png, clip, est.dec_base, est.dec_cv, est.before, est.after, est.base.info.model_id, decision)
        if note:
            say(f"note: {note}")
        else:
            result["png"] = str(png)
    report = {
        **result,
        "time": calibration["time"],
        "calibration": calibration,
        "held_out": {"before": est.before, "after": est.after},
        "delays": {"before": _delays(clip, est.dec_base), "after": _delays(clip, est.dec_cv)}
        if clip.n_cycles >= 2
        else {"note": "not estimated from one cycle: the windows just after each label change span two halves"},
        "activity": est.activity,
        "saturated_fraction": clip.saturated_fraction,
        "config": config.to_dict(),
    }
    from calibration.report import write_json

    write_json(Path(result["report"]), report)
    say(f"report: {result['report']}" + (f" and {result['png']}" if result["png"] else ""))


def _say_result(est: Estimate, decision: GateDecision, installed, model_path: Path | None) -> None:
    change = f"held-out accuracy {est.before['accuracy']:.2f} -> {est.after['accuracy']:.2f}"
    if installed is not None:
        forced = " although the gate refused it" if decision.forced else ""
        say(f"RESULT: the adapted model is installed ({change}){forced}.")
    elif model_path is not None:
        say(f"RESULT: the adapted model is written to {model_path} ({change}); nothing was installed.")
    else:
        say(
            f"RESULT: REFUSED ({change}); the current model stays. Check the armband's position and contact, "
            "then calibrate again."
        )


def _describe_clip(rec: Recording, clip: ClipWindows, clip_path: Path, base: OnnxModel) -> dict:
    """Say what the clip is and what may be wrong with it; returns its muscle activity per intent."""
    say(f"clip: {clip_path} ({rec.duration:.1f} s, {rec.n_samples} samples at {rec.sample_rate:.0f} Hz)")
    starts = ", ".join(f"{t:.1f}" for t in clip.cycle_times())
    if clip.n_cycles >= 2:
        say(
            f"{clip.n_cycles} cycles (from {starts} s): each is scored by a model adapted on the others "
            f"(cross-validation); the model installed is adapted on all {len(clip.labels)} windows"
        )
    else:
        say(
            "1 cycle: the first half of each of its runs is scored by a model adapted on the second halves, "
            f"and the other way round (cross-validation); the model installed is adapted on all "
            f"{len(clip.labels)} windows"
        )
    activity = clip.activity()
    if min(activity["open"], activity["close"]) < 1.2:
        say(
            f"note: little muscle activity during open/close compared with relax ({activity}); "
            "the patient may not have followed the cues"
        )
    if base.info.calibration is not None:
        say("note: the base model is itself a calibrated model; calibrating from the meta-model is usual")
    return activity


def _decide(predict, windows: np.ndarray) -> np.ndarray:
    return predict(windows).argmax(axis=1) if len(windows) else np.zeros(0, dtype=np.int64)


def held_out(clip: ClipWindows, decisions: np.ndarray, moves: np.ndarray) -> dict:
    """:func:`~metalearn.metrics.summary` of the scored intent windows' ``decisions`` and of the
    movement segment's ``moves`` (its ``move_activation``)."""
    scored = clip.scored
    steady = steady_windows(clip.recording.labels, clip.ends, clip.spec.window)
    labels = np.concatenate([clip.labels[scored], np.full(len(moves), MOVE)])
    steady_all = np.concatenate([steady[scored], np.ones(len(moves), dtype=bool)])
    return summary(labels, np.concatenate([decisions[scored], moves]), steady_all)


def cross_validated_decisions(adapter, adapted, clip: ClipWindows, points: dict) -> dict:
    """For each operating point (an :class:`~metalearn.adapt.OwnClasses`), the gate's estimate of
    how the installed model does on data it has not seen: ``(intents, moves)``. ``intents``: each
    fold's windows decided by the base model adapted on the other folds, with the wearer's own
    classes from the whole movement segment (-1 for a window no fold scores,
    :attr:`ClipWindows.scored`); ``moves``: each block of the movement segment decided by
    ``adapted`` (every intent window) with its own classes learned from the windows that share no
    sample with it (:meth:`ClipWindows.move_folds`)."""
    out = {name: np.full_like(clip.labels, -1) for name in points}
    for _, train, held, samples in clip.folds():
        fold = adapter.adapt(clip.windows[train], clip.labels[train], clip.conditioned[samples])
        for name, own in points.items():
            out[name][held] = fold.set_own(clip.move_windows, own).predict(clip.windows[held]).argmax(axis=1)
    moves = {name: np.zeros(len(clip.move_windows), dtype=np.int64) for name in points}
    for learn, held in clip.move_folds():
        for name, own in points.items():
            moves[name][held] = (
                adapted.set_own(clip.move_windows[learn], own).predict(clip.move_windows[held]).argmax(1)
            )
    return {name: (out[name], moves[name]) for name in points}


def _say_operating_points(clip: ClipWindows, figures: dict, before: dict, chosen: str) -> dict:
    """Say what the movement segment shows at each operating point; returns them for the result."""
    if not len(clip.move_windows):
        say("no movement segment in the clip: wrist movements are not learned (protocol.move_s)")
        return {}
    spec = clip.spec
    say(
        f"movement segment: {len(clip.move_windows) * spec.stride / spec.sample_rate:.1f} s; the base model would "
        f"open or close the hand in {before['move_activation']:.0%} of its windows. Operating points "
        "(cross-validated; each part of the segment scored with what was learned from the rest):"
    )
    out = {}
    for name, f in figures.items():
        out[name] = {
            "words": OPERATING_POINT_WORDS[name],
            "log_prior": OPERATING_POINTS[name],
            "move_activation": f["move_activation"],
            "accuracy": f["accuracy"],
            "recall": f["recall"],
        }
        mark = "*" if name == chosen else " "
        say(
            f" {mark} {name:<10} ({OPERATING_POINT_WORDS[name]}): moves the hand in {f['move_activation']:.0%} of "
            f"the segment, accuracy {f['accuracy']:.2f} ({fmt_recall(f['recall'])})"
        )
    return out


def _recipe(inner: Mapping[str, Any]) -> str:
    """The base model's inner loop in words."""
    if inner.get("head"):
        recipe = f"closed-form {inner['head']} head, shrinkage {inner.get('shrinkage', 0):g}"
        if inner.get("reject"):
            recipe += f", novelty rejection at {inner['reject']:g}x the feature count"
        if inner["steps"]:
            recipe += f", then {inner['optimizer']} x {inner['steps']} at lr {inner['lr']:g}"
        return recipe
    return f"{inner['optimizer']}, {inner['steps']} steps, lr {inner['lr']:g}"


def _export_and_install(
    est: Estimate,
    calibration: dict,
    decision: GateDecision,
    store: Store,
    when: datetime,
    base_model: Path,
    clip_path: Path,
    out: Path | None,
):
    """Export the adapted model to a candidate file, check that onnxruntime decides the clip as
    torch did, then install it (or write it to ``out``) if the gate allows; the candidate never
    outlives this call. Returns (model_id, model_path, current, installed)."""
    from metalearn.adapt import export_adapted

    out_dir = out.parent if out is not None else store.models
    candidate = out_dir / f".candidate-{os.getpid()}-{calibration['clip_sha256'][:8]}.onnx"
    before, after = est.before, est.after
    model_path = current = installed = None
    try:
        every = np.concatenate([est.clip.windows, est.clip.move_windows])
        dec_torch = est.adapted.predict(every).argmax(axis=1)
        export_adapted(est.adapted, calibration, candidate, every)
        new = OnnxModel(candidate)
        dec_new = new.predict(every).argmax(axis=1)
        if not np.array_equal(dec_new, dec_torch):
            raise ModelError(
                f"{candidate}: onnxruntime and torch decide differently on "
                f"{int((dec_new != dec_torch).sum())} window(s) of the clip; nothing installed"
            )
        model_id = new.info.model_id
        say(f"adapted model {model_id}: held-out accuracy {after['accuracy']:.2f} ({fmt_recall(after['recall'])})")
        say(f"gate: {decision.line()}")
        if decision.install:
            if out is not None:
                os.chmod(candidate, PRIVATE)  # fitted to a patient's clip: patient data
                os.replace(candidate, out)
                model_path = out
                say(f"wrote {out} (not installed: --out)")
            else:
                installed = store.install(
                    candidate,
                    when,
                    base_model,
                    {
                        "accuracy_before": before["accuracy"],
                        "accuracy_after": after["accuracy"],
                        "clip": clip_path.name,
                        "forced": decision.forced,
                    },
                    patient=calibration["patient"],
                )
                model_path, current = installed.versioned, installed.current
                say(
                    f"installed: {current} ({installed.versioned.name}); the previous model "
                    f"{installed.previous_model_id} is kept for --rollback"
                )
        else:
            say("nothing installed: the current model stays (use --force to install this one anyway)")
    finally:
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()

    return model_id, model_path, current, installed


def _witnesses(base: OnnxModel, adapter, store: Store, clip: ClipWindows) -> list:
    """:mod:`.calibration.plausible`'s witnesses for this clip: the previous calibrated model of
    this state directory (same armband format), and the base model's population when it has one."""
    out = []
    info = base.info
    if store.current.is_file():
        try:
            previous = OnnxModel(store.current)
        except ModelError:
            previous = None  # rollback and install say more about an unusable current model
        if previous is not None and previous.info.calibration is not None and previous.info.signal == info.signal:
            out.append(plausible.previous_model(previous, clip.windows, clip.labels))
    if info.population is not None and hasattr(adapter.model, "whiten"):
        out.append(plausible.population(adapter.model, dict(info.population), clip.windows, clip.labels))
    for w in out:
        say(
            f"plausibility: {w.name} decides {w.as_labelled:.0%} of the clip's open and close windows as labelled, "
            f"{w.swapped:.0%} swapped"
        )
    return out


def _provenance(
    est: Estimate,
    clip_path: Path,
    digest: str,
    base_model: Path,
    decision: GateDecision,
    config,
    when: datetime,
    source: str,
    patient: str | None,
) -> dict:
    """The ``calibration`` metadata of the adapted model."""
    clip, base, before, after = est.clip, est.base, est.before, est.after
    rec = clip.recording
    return {
        "format": "metaemg-calibration/1",
        "time": when.isoformat(timespec="seconds"),
        "patient": patient,
        "source": source,
        "base_model_id": base.info.model_id,
        "base_model_file": base_model.name,
        "clip_sha256": digest,
        "clip_file": clip_path.name,
        "clip_seconds": round(rec.duration, 3),
        "holdout": clip.holdout(),
        "cycle_starts_s": [round(t, 3) for t in clip.cycle_times()],
        "windows_adapt": len(clip.labels),
        "windows_holdout": int(clip.scored.sum()),
        "inner": dict(base.info.inner),
        "adapt_seconds": round(est.adapted.adapt_seconds, 6),
        "accuracy_before": before["accuracy"],
        "accuracy_after": after["accuracy"],
        "recall_before": before["recall"],
        "recall_after": after["recall"],
        "move_activation_after": after["move_activation"],
        "operating_point": config.movement.operating_point if len(clip.move_windows) else None,
        "own_non_intent_classes": len(clip.move_windows) > 0,
        "reaction_s": config.protocol.reaction_s if source == "live" else None,
        "gate": {**decision.to_dict(), "min_accuracy": config.gate.min_accuracy, "min_recall": config.gate.min_recall},
    }


def _delays(clip: ClipWindows, decisions: np.ndarray) -> dict:
    rec = clip.recording
    held = change_delays(rec.time, rec.labels, clip.ends, decisions)
    return {**delay_summary(held), "changes_held_out": held}


def _png(path: Path, clip: ClipWindows, dec_base, dec_cv, before, after, base_id: str, decision: GateDecision):
    from calibration.report import write_png

    title = (
        f"calibration: base {base_id} {before['accuracy']:.2f} -> adapted {after['accuracy']:.2f} "
        f"(cross-validated over the cycles); gate {decision.line()}"
    )
    return write_png(
        path,
        clip,
        {"base model": dec_base, "adapted (cross-validated)": dec_cv},
        {"base model": before, "adapted (cross-validated)": after},
        title[:160],
    )
