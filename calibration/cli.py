"""``metaemg-calibrate``: session-start calibration, and the decision whether the session may start.

    metaemg-calibrate [--config FILE] [options]           live: armband over LSL, patient follows cues
    metaemg-calibrate --from-recording CLIP.csv [options]  the same from a labelled recording
    metaemg-calibrate --rollback                            make the previous model current again

The work is :func:`calibration.calibrate.calibrate`; this module records or reads the clip, talks to
the running controller and the state directory, and prints the result.

Exit status: 0 the model was installed (or written to ``--out``); 3 the gate refused it (nothing
installed); 2 an error (bad clip, no stream, bad configuration: one line on stderr); 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from calibration import config as configuration
from calibration.calibrate import JSON_KEYS, calibrate, say
from calibration.daemonlink import DaemonLink
from calibration.gate import EXIT_REFUSED
from calibration.store import Store, check_patient, resolve_state_dir
from metaemg.cli import entry_point
from metaemg.errors import ConfigError, MetaEMGError, ModelError
from metaemg.feathead import OPERATING_POINTS
from metaemg.modelfile import OnnxModel, default_model_path, read_model_info
from metalearn.recording import read_recording


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
    what.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration (YAML; with --json, JSON) and exit",
    )
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
    _live_options(p.add_argument_group("live recording"))
    _gate_options(p.add_argument_group("gate and daemon"))
    return p


def _live_options(live) -> None:
    """How a live clip is recorded (the ``lsl``, ``protocol`` and ``cues`` sections)."""
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
    live.add_argument(
        "--operating-point",
        choices=tuple(OPERATING_POINTS),
        help="how the wearer's own wrist movements weigh against opening and closing (movement.operating_point)",
    )
    live.add_argument(
        "--cue-endpoint", metavar="ENDPOINT", help="ZeroMQ PUB endpoint for the cues, or 'none' (cues.endpoint)"
    )


def _gate_options(gate) -> None:
    """The gate's floors and the running daemon (the ``gate`` and ``daemon`` sections)."""
    gate.add_argument(
        "--min-accuracy", type=float, metavar="X", help="accuracy floor on the held-out windows (gate.min_accuracy)"
    )
    gate.add_argument("--min-recall", type=float, metavar="X", help="recall floor for every intent (gate.min_recall)")
    gate.add_argument("--control", metavar="ENDPOINT", help="the daemon's control socket, ipc://PATH (daemon.control)")
    gate.add_argument("--no-reload", action="store_true", help="do not tell the daemon (daemon.notify: false)")
    gate.add_argument("--no-png", action="store_true", help="write no PNG report (png: false)")


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
        print(json.dumps(config.to_dict(), indent=2) if args.json else config.to_yaml(), end="\n" if args.json else "")
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
        if installed and link.paused():  # held before (its session waits for a model to be kept)
            return f"the controller holds the hand until the new model is kept: run {link.resume_command()}"
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
