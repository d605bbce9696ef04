"""``metaemg-calibrate``: session-start calibration, and the decision whether the session may start.

    metaemg-calibrate [--config FILE] [options]           live: armband over LSL, patient follows cues
    metaemg-calibrate --from-recording CLIP.csv [options]  the same from a labelled recording
    metaemg-calibrate --rollback                            make the previous model current again

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

Exit status: 0 the model was installed (or written to ``--out``); 3 the gate refused it (nothing
installed); 2 an error (bad clip, no stream, bad configuration: one line on stderr); 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from calibration import config as configuration
from calibration import plausible
from calibration.daemonlink import DaemonLink
from calibration.gate import EXIT_REFUSED, GateDecision, accuracy_interval, decide
from calibration.store import Store, check_patient, resolve_state_dir
from metaemg.atomic import PRIVATE
from metaemg.cli import entry_point
from metaemg.errors import ConfigError, MetaEMGError, ModelError
from metaemg.feathead import OPERATING_POINT_WORDS, OPERATING_POINTS
from metaemg.intents import MOVE
from metaemg.modelfile import OnnxModel, default_model_path, read_model_info
from metalearn.clip import ClipWindows, prepare_clip
from metalearn.metrics import change_delays, delay_summary, fmt_recall, steady_windows, summary
from metalearn.recording import Recording, read_recording

JSON_KEYS = ("accuracy_before", "accuracy_after", "adapt_seconds", "model")


def say(text: str = "") -> None:
    print(text, flush=True)


# ------------------------------------------------------------------------------------ the work
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
    base = OnnxModel(base_model)
    spec = base.info.signal
    clip = prepare_clip(rec, spec, config.clip)
    activity = _describe_clip(rec, clip, clip_path, base)

    scored = clip.scored  # every window, but for one cycle those spanning both halves of a run
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
    dec_cv, after = dec_points[chosen][0], figures[chosen]
    interval = accuracy_interval(after["accuracy"], int(scored.sum()), spec.window, spec.stride)
    say(
        f"held-out estimate ({clip.holdout()}): accuracy {after['accuracy']:.2f}, 95 % interval "
        f"{interval[0]:.2f}-{interval[1]:.2f} from {int(scored.sum()) * spec.stride / spec.sample_rate:.1f} s "
        "of held-out windows"
    )
    operating = _say_operating_points(clip, figures, before, chosen)
    adapted.set_own(clip.move_windows, points[chosen])
    say(f"adapted in {adapted.adapt_seconds:.3f} s ({_recipe(base.info.inner)}, on this PC's CPU)")
    dec_torch = adapted.predict(np.concatenate([clip.windows, clip.move_windows])).argmax(axis=1)
    witnesses = _witnesses(base, adapter, store, clip)
    implausible = plausible.reasons(witnesses, config.gate.swap_margin)
    decision = decide(before, after, config.gate, force=force, implausible=implausible, points=operating)
    calibration = _provenance(
        clip,
        clip_path,
        clip_digest,
        base,
        base_model,
        before,
        after,
        adapted.adapt_seconds,
        decision,
        config,
        when,
        source,
        patient,
    )

    model_id, model_path, current, installed = _export_and_install(
        adapted, calibration, clip, dec_torch, decision, before, after, store, when, base_model, clip_path, out
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
        "accuracy_before": before["accuracy"],
        "accuracy_after": after["accuracy"],
        "accuracy_after_interval": [round(v, 4) for v in interval],
        "holdout": clip.holdout(),
        "adapt_seconds": round(adapted.adapt_seconds, 6),
        "recall_before": before["recall"],
        "recall_after": after["recall"],
        "move_activation_before": before["move_activation"],
        "move_activation_after": after["move_activation"],
        "movement_seconds": round(len(clip.move_windows) * spec.stride / spec.sample_rate, 2),
        "operating_point": chosen,
        "operating_points": operating,
        "confusion_before": before["confusion"],
        "confusion_after": after["confusion"],
        "gate": {
            **decision.to_dict(),
            "line": decision.line(),
            "min_accuracy": config.gate.min_accuracy,
            "min_recall": config.gate.min_recall,
            "swap_margin": config.gate.swap_margin,
            "max_move_activation": config.gate.max_move_activation,
            "witnesses": [w.to_dict() for w in witnesses],
        },
        "base_model": str(base_model),
        "base_model_id": base.info.model_id,
        "clip": str(clip_path),
        "clip_sha256": clip_digest,
        "daemon": None if daemon is None else daemon.to_dict(),
    }
    stem = store.report_stem(when, clip_digest, patient)
    result["report"] = str(stem.with_suffix(".json"))
    result["png"] = None
    if config.png:
        png = stem.with_suffix(".png")
        note = _png(png, clip, dec_base, dec_cv, before, after, base.info.model_id, decision)
        if note:
            say(f"note: {note}")
        else:
            result["png"] = str(png)
    result["total_seconds"] = round(time.perf_counter() - t_total, 3)
    report = {
        **result,
        "time": when.isoformat(timespec="seconds"),
        "calibration": calibration,
        "held_out": {"before": before, "after": after},
        "delays": {"before": _delays(clip, dec_base), "after": _delays(clip, dec_cv)}
        if clip.n_cycles >= 2
        else {"note": "not estimated from one cycle: the windows just after each label change span two halves"},
        "activity": activity,
        "saturated_fraction": clip.saturated_fraction,
        "config": config.to_dict(),
    }
    from calibration.report import write_json

    write_json(Path(result["report"]), report)
    say(f"report: {result['report']}" + (f" and {result['png']}" if result["png"] else ""))
    change = f"held-out accuracy {before['accuracy']:.2f} -> {after['accuracy']:.2f}"
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
    return result


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
    adapted,
    calibration: dict,
    clip: ClipWindows,
    dec_torch: np.ndarray,
    decision: GateDecision,
    before: dict,
    after: dict,
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
    model_path = current = installed = None
    try:
        every = np.concatenate([clip.windows, clip.move_windows])
        export_adapted(adapted, calibration, candidate, every)
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
    clip: ClipWindows,
    clip_path: Path,
    digest: str,
    base: OnnxModel,
    base_model: Path,
    before: dict,
    after: dict,
    adapt_seconds: float,
    decision: GateDecision,
    config,
    when: datetime,
    source: str,
    patient: str | None,
) -> dict:
    """The ``calibration`` metadata of the adapted model."""
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
        "adapt_seconds": round(adapt_seconds, 6),
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


# ------------------------------------------------------------------------------ command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="metaemg-calibrate",
        description="Calibrate the intent model at the start of a session: record a short cue-guided clip "
        "(or read one), adapt the base meta-model, check it on held-out parts of the clip, install it "
        "and tell the running daemon.",
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--from-recording",
        metavar="CLIP.csv",
        type=Path,
        help="calibrate from a labelled recording (time_elapsed, emg0..7, gt) instead of live",
    )
    what.add_argument(
        "--rollback",
        action="store_true",
        help="make the previous model current again (run it twice to undo) and tell the daemon",
    )
    p.add_argument(
        "--rollback-to",
        metavar="MODEL_ID",
        help="with --rollback: only if the previous model is MODEL_ID (what the person confirming saw)",
    )
    p.add_argument(
        "--across-patients",
        metavar="NOW,BACK",
        help="with --rollback: the patient ids of the current and the previous model ('-' for none), "
        "to confirm a rollback to another patient's model",
    )
    what.add_argument("--print-config", action="store_true", help="print the effective configuration (YAML) and exit")
    p.add_argument(
        "--config", type=Path, metavar="FILE", help="YAML configuration file (docs/calibration.md lists every key)"
    )
    p.add_argument(
        "--base-model", type=Path, metavar="FILE", help="base meta-model (default: base_model, else the packaged one)"
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="state directory (default: $STATE_DIRECTORY, state_dir, $XDG_STATE_HOME/myhand or ~/.local/state/myhand)",
    )
    p.add_argument(
        "--out", type=Path, metavar="FILE", help="write the adapted model to this file instead of installing it"
    )
    p.add_argument(
        "--patient",
        metavar="ID",
        help="the patient's id (a pseudonym such as P012): names the clip, model and report files",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="install the adapted model even if the gate refuses it; with --rollback, roll back even to the "
        "uncalibrated base model",
    )
    p.add_argument("--json", action="store_true", help="print the result as one JSON document on the last line")
    p.add_argument(
        "--result-file",
        type=Path,
        metavar="FILE",
        help="also write the result document to FILE (atomically, mode 0600): a channel nothing else writes, "
        "for a program that runs this tool (metaemg-console)",
    )
    live = p.add_argument_group("live recording")
    live.add_argument("--lsl-stream", metavar="NAME", help="LSL stream name of the armband (lsl.name)")
    live.add_argument(
        "--lsl-source-id", metavar="ID", help="LSL source id of the armband, when several match (lsl.source_id)"
    )
    live.add_argument("--cycles", type=int, metavar="N", help="relax-open-relax-close cycles (protocol.cycles)")
    live.add_argument("--cue-s", type=float, metavar="S", help="seconds of each cue (protocol.relax_s/open_s/close_s)")
    live.add_argument(
        "--countdown-s", type=int, metavar="N", help="countdown before the first cue (protocol.countdown_s)"
    )
    live.add_argument("--reaction-s", type=float, metavar="S", help="label shift after each cue (protocol.reaction_s)")
    live.add_argument(
        "--move-s",
        type=float,
        metavar="S",
        help="seconds of free wrist movements at the end, 0: none (protocol.move_s)",
    )
    p.add_argument(
        "--operating-point",
        choices=tuple(OPERATING_POINTS),
        help="how the wearer's own wrist movements weigh against opening and closing (movement.operating_point)",
    )
    live.add_argument(
        "--cue-endpoint", metavar="ENDPOINT", help="ZeroMQ PUB endpoint for the cues, or 'none' (cues.endpoint)"
    )
    gate = p.add_argument_group("gate and daemon")
    gate.add_argument(
        "--min-accuracy", type=float, metavar="X", help="accuracy floor on the held-out windows (gate.min_accuracy)"
    )
    gate.add_argument("--min-recall", type=float, metavar="X", help="recall floor for every intent (gate.min_recall)")
    gate.add_argument("--control", metavar="ENDPOINT", help="the daemon's control socket, ipc://PATH (daemon.control)")
    gate.add_argument("--no-reload", action="store_true", help="do not tell the daemon (daemon.notify: false)")
    gate.add_argument("--no-png", action="store_true", help="write no PNG report (png: false)")
    return p


def load_config(args: argparse.Namespace):
    cfg = configuration.load(args.config)
    proto = {
        k: v
        for k, v in (
            ("cycles", args.cycles),
            ("countdown_s", args.countdown_s),
            ("reaction_s", args.reaction_s),
            ("move_s", args.move_s),
        )
        if v is not None
    }
    if args.cue_s is not None:
        proto.update(relax_s=args.cue_s, open_s=args.cue_s, close_s=args.cue_s)
    if proto:
        cfg = cfg.replace("protocol", **proto)
    gate = {k: v for k, v in (("min_accuracy", args.min_accuracy), ("min_recall", args.min_recall)) if v is not None}
    if gate:
        cfg = cfg.replace("gate", **gate)
    if args.operating_point is not None:
        cfg = cfg.replace("movement", operating_point=args.operating_point)
    if args.lsl_stream is not None:
        cfg = cfg.replace("lsl", name=args.lsl_stream)
    if args.lsl_source_id is not None:
        cfg = cfg.replace("lsl", source_id=args.lsl_source_id)
    if args.cue_endpoint is not None:
        cfg = cfg.replace("cues", endpoint=None if args.cue_endpoint.lower() == "none" else args.cue_endpoint)
    if args.control is not None:
        cfg = cfg.replace("daemon", control=args.control)
    if args.no_reload:
        cfg = cfg.replace("daemon", notify=False)
    if args.no_png:
        cfg = cfg.replace(png=False)
    return cfg


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code, result = _run(args)
    except MetaEMGError as exc:
        _emit(args, {"ok": False, "error": str(exc), **dict.fromkeys(JSON_KEYS)})
        raise
    if result is not None:
        _emit(args, result)
    return code


def _emit(args: argparse.Namespace, result: dict) -> None:
    """The result document: the last stdout line with ``--json``, the file of ``--result-file``."""
    if args.json:
        print(json.dumps(result), flush=True)
    if args.result_file is not None:
        from metaemg.atomic import PRIVATE, write_text

        write_text(args.result_file, json.dumps(result), perms=PRIVATE)


def _run(args: argparse.Namespace) -> tuple[int, dict | None]:
    config = load_config(args)
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0, None
    store = Store(resolve_state_dir(args.state_dir, config.state_dir).absolute(), keep=config.keep_models)
    if args.rollback:
        if args.out or args.base_model or args.patient:
            raise ConfigError("--rollback takes no --out, --base-model or --patient")
        return _rollback(store, config, force=args.force, expect=args.rollback_to, across=args.across_patients)
    if args.rollback_to or args.across_patients:
        raise ConfigError("--rollback-to and --across-patients go with --rollback")
    patient = check_patient(args.patient)
    bound = status = None
    if args.from_recording is None:
        with _link(config, live=False) as link:
            status = link.status()
        config, bound = _the_controllers_armband(config, status)
    base_model = args.base_model or (Path(config.base_model).expanduser() if config.base_model else None)
    if base_model is None:
        base_model = _packaged_base(args, config, bound)
    if not base_model.is_file():
        what = (
            "the packaged default model is not installed"
            if base_model == default_model_path()
            else "base model not found"
        )
        raise ModelError(f"{base_model}: {what}; give the meta-model with --base-model FILE")
    base_model = base_model.absolute()
    out = None if args.out is None else args.out.absolute()
    if out is not None and out.is_dir():
        raise ConfigError(f"--out {out}: is a directory; give the model file to write")
    from metalearn.adapt import require_torch

    require_torch()  # before the patient spends any time: say what to install
    when = datetime.now(UTC)
    store.ensure()
    if args.out is None and (args.from_recording is None or config.daemon.notify):
        if args.from_recording is not None:
            with _link(config, live=False) as link:
                status = link.status()
        _the_patients_session(config, status, patient)
    with store.lock(), _link(config, live=args.from_recording is None) as link:
        same = {"base_model": base_model, "config": config, "store": store, "when": when, "out": out}
        same.update(force=args.force, link=link, patient=patient)
        if args.from_recording is not None:
            base_info = OnnxModel(base_model).info
            rec = read_recording(args.from_recording, channels=base_info.channels)
            clip_path, digest = store.save_clip_bytes(args.from_recording.read_bytes(), when, patient=patient)
            result = calibrate(rec, clip_path, digest, source="recording", **same)
            if result["installed"] and config.daemon.notify and link.paused():
                say(
                    "note: the controller is paused, so the new model does not move the hand yet; "
                    f"run: {link.resume_command()}"
                )
        else:
            hold = link.hold() if config.daemon.pause_while_recording else None
            if hold is not None:
                say(hold.note)
            result = None
            try:
                rec, clip_path, digest = _record_live(config, base_model, store, link, when, patient, bound)
                result = calibrate(rec, clip_path, digest, source="live", **same)
            finally:
                note = None if hold is None else end_hold(link, hold, installed=bool(result and result["installed"]))
                if note:
                    print(note, file=sys.stdout if result else sys.stderr, flush=True)
    assert result is not None  # calibrate() returned, or its error left this function
    return (0 if result["ok"] else EXIT_REFUSED), result


def _the_patients_session(config, status: dict | None, patient: str | None) -> None:
    """With a controller that keeps a session per patient (``status.session``), the model is for
    the session's patient: a session for another patient is refused before the patient does
    anything; with none open, one is opened for ``patient``."""
    session = None if status is None else status.get("session")
    if not isinstance(session, dict):
        return  # no controller, or one without sessions
    now = session.get("patient")
    if patient is None:
        raise ConfigError(
            "the controller keeps a session per patient: give the patient's id (--patient ID)"
            + (f"; the open session is {now}'s" if now else "")
        )
    if now is not None and now != patient:
        raise ConfigError(
            f"the controller's session is patient {now}'s, not {patient}'s: nothing recorded. End it first (the "
            f"console, or myhand-controller ctl session end), or calibrate --patient {now}"
        )
    if now is None:
        with _link(config, live=False) as link:
            answer = link.open_session(patient)
        if not answer.get("ok"):
            raise ConfigError(f"the controller did not open a session for {patient}: {answer.get('error')}")
        say(f"session opened for patient {patient} (the controller holds the hand until this calibration ends)")


def _the_controllers_armband(config, status: dict | None) -> tuple[Any, tuple[str, str] | None]:
    """A live calibration records the armband the controller listens to: when a daemon answers
    (``status``) and is bound to an armband, its stream name and identity (the configuration's
    ``lsl.name`` gives way to it); otherwise ``lsl`` as configured, and an ambiguous match is refused."""
    if status is None:
        return config, None
    name, bound = DaemonLink.armband(status)
    if name and name != config.lsl.name:
        config = config.replace("lsl", name=name)
    if bound is not None:
        say(f"armband: the one the controller listens to (source id {bound[0]!r} on {bound[1]!r})")
    return config, bound


def _packaged_base(args: argparse.Namespace, config, bound: tuple[str, str] | None) -> Path:
    """No base model named: the packaged model that fits the clip, or the armband's stream when
    recording live (its rate and channels); says which."""
    from metaemg.modelfile import describe_shipped, shipped_model_for

    if args.from_recording is not None:
        rec = read_recording(args.from_recording)
        rate, channels, what = rec.sample_rate, rec.n_channels, "the clip"
    else:
        from calibration.live import find_stream

        _, desc = find_stream(config.lsl, bound)
        rate, channels, what = desc.rate, desc.channels, f"the stream {desc.describe()}"
    path = shipped_model_for(rate, channels)
    say(f"base model: {describe_shipped(path, read_model_info(path))}, which fits {what}")
    return path


def end_hold(link: DaemonLink, hold, *, installed: bool) -> str | None:
    """After a live calibration: resume a daemon we paused only if a new model was installed.
    Otherwise the session is not cleared to start, and the daemon stays paused."""
    if not hold.paused_by_us:
        return None
    if installed:
        return link.release(hold)
    return (
        "the controller stays paused: no new model was installed. To go on with the model it had, "
        f"run: {link.resume_command()}"
    )


@contextlib.contextmanager
def _link(config, *, live: bool):
    link = DaemonLink(
        cue_endpoint=config.cues.endpoint if live else None,
        control_endpoint=config.daemon.control or _default_control(config),
        timeout_s=config.daemon.timeout_s,
        forward_cues=live and config.cues.via_daemon,
    )
    try:
        yield link
    finally:
        link.close()


def _default_control(config) -> str:
    """The daemon's control socket as the daemon resolves it: its configuration file
    (``daemon.config``, else the service's), ``daemon.runtime_dir`` on top."""
    import dataclasses

    from controller import config as controller_config

    path = config.daemon.config or controller_config.service_config_path()
    cfg = controller_config.load(path) if path else controller_config.Config()
    if config.daemon.runtime_dir:
        cfg = dataclasses.replace(cfg, control=dataclasses.replace(cfg.control, runtime_dir=config.daemon.runtime_dir))
    return cfg.control.resolved_endpoint()


def _record_live(
    config,
    base_model: Path,
    store: Store,
    link: DaemonLink,
    when: datetime,
    patient: str | None,
    bound: tuple[str, str] | None,
):
    from calibration.live import LiveRecorder

    spec = OnnxModel(base_model).info.signal
    recorder = LiveRecorder(config.protocol, config.lsl, spec, link, bound=bound)
    try:
        desc = recorder.connect()
        say(f"armband: {desc.describe()}")
        if link.cue_endpoint:
            say(f"cues published on {link.cue_endpoint}")
        if sys.stdin.isatty():
            input("Press Enter when the patient is ready (Ctrl-C to cancel) ")
        rec = recorder.run()
    except BaseException:
        recorder.abort()
        partial = recorder.partial()
        if partial is not None:
            path, _ = store.save_clip(partial, when, suffix="_incomplete", patient=patient)
            print(f"the incomplete clip is saved as {path}", file=sys.stderr, flush=True)
        raise
    finally:
        recorder.close()
    clip_path, digest = store.save_clip(rec, when, patient=patient)
    say(f"clip saved: {clip_path}")
    return read_recording(clip_path, channels=spec.channels), clip_path, digest


def _rollback(
    store: Store, config, *, force: bool = False, expect: str | None = None, across: str | None = None
) -> tuple[int, dict]:
    pair = None
    if across is not None:
        now, sep, back = across.partition(",")
        if not sep:
            raise ConfigError(f"--across-patients {across!r}: give NOW,BACK (the two patient ids, '-' for none)")
        pair = (None if now == "-" else now, None if back == "-" else back)
    store.ensure()
    with store.lock():
        now_id, was_id = store.rollback(to_uncalibrated=force, expect=expect, across_patients=pair)
    say(f"rolled back: {store.current} is now model {now_id} (it was {was_id}); run --rollback again to undo")
    calibrated = bool((store.describe(store.current) or {}).get("calibrated"))
    if not calibrated:
        say(
            "WARNING: the current model is now the uncalibrated base model, which decides nothing: "
            "the hand does not move until the next calibration"
        )
    daemon = None
    if config.daemon.notify:
        with _link(config, live=False) as link:
            daemon = link.request_reload(store.current)
        say(daemon.note)
    return 0, {
        "ok": True,
        "action": "rollback",
        "model": str(store.current),
        "model_id": now_id,
        "replaced_model_id": was_id,
        "calibrated": calibrated,
        "daemon": None if daemon is None else daemon.to_dict(),
    }


if __name__ == "__main__":
    sys.exit(main())
