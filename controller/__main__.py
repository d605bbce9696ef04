"""``myhand-controller``: the real-time daemon, and ``myhand-controller ctl`` to talk to it.

    myhand-controller [--config FILE] [--lsl-stream NAME] [--serial-port PATH] [--model FILE]
                      [--monitor ENDPOINT] [--control ENDPOINT] [--log-level LEVEL] [--print-config [--json]]
    myhand-controller ctl [--config FILE | --control ENDPOINT] COMMAND [ARG]   (COMMAND: ctl --help)

Without ``--config`` the defaults apply (configs/controller.yaml documents them); the flags
override the matching keys. Errors in the configuration, the model file or the stream's metadata
are one line on stderr and exit status 2, before the serial port is opened.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from controller import config as configuration
from metaemg.cli import control_request, entry_point


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="myhand-controller", description="MyHand orthosis controller: armband (LSL) -> intent -> orthosis"
    )
    p.add_argument("--config", help="YAML configuration file (default: built-in defaults)")
    p.add_argument("--lsl-stream", metavar="NAME", help="LSL stream name (lsl.name)")
    p.add_argument("--serial-port", metavar="PATH", help="orthosis port or transport URL (serial.port)")
    p.add_argument("--model", metavar="FILE", help="ONNX model file (model.path)")
    p.add_argument("--monitor", metavar="ENDPOINT", help="ZeroMQ PUB endpoint (monitor.endpoint)")
    p.add_argument("--control", metavar="ENDPOINT", help="ZeroMQ control endpoint, ipc://PATH (control.endpoint)")
    p.add_argument("--log-level", choices=configuration.LOG_LEVELS, help="logging.level")
    p.add_argument(
        "--print-config",
        action="store_true",
        help="validate the configuration and load the model file, print them (YAML) and exit",
    )
    p.add_argument("--json", action="store_true", help="with --print-config: as JSON")
    p.add_argument("--check-config", action="store_true", help=argparse.SUPPRESS)  # --print-config --json, renamed
    return p


# the commands of the control socket (controller.control.COMMANDS), each with its help and arguments
CTL_COMMANDS = {
    "status": "the daemon's status (JSON)",
    "pause": "hold the hand (STOP, operator)",
    "resume": "go on (in a session: keep its model; the hand may move)",
    "reload": "load the model file again, or PATH from now on",
    "session": "open a session for patient ID (their newest model, held), or end the open one: session end",
    "clear": "clear a latched device fault (when its cause is gone)",
    "cue": "publish a cue object (JSON) on the monitor stream",
    "rebind": "accept another armband (the next one that matches and is alone)",
    "stop": "shut the daemon down (systemd restarts it unless stopped with systemctl)",
}


def _ctl_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="myhand-controller ctl", description="send one request to a running myhand-controller"
    )
    p.add_argument(
        "--config",
        help="the daemon's configuration file, for where its control socket is (control.endpoint, runtime_dir; "
        "default: $MYHAND_CONFIG, else /etc/myhand/controller.yaml when it exists)",
    )
    p.add_argument("--control", metavar="ENDPOINT", help="the daemon's control socket (default: from the config)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for name, what in CTL_COMMANDS.items():
        c = sub.add_parser(name, help=what, description=what)
        if name == "reload":
            c.add_argument("path", nargs="?", metavar="PATH", help="the model file (path=PATH: the older spelling)")
        elif name == "session":
            c.add_argument("who", metavar="ID|end", help="the patient's id, or end")
        elif name == "cue":
            c.add_argument("cue", metavar="JSON", help="the cue object (cue=JSON: the older spelling)")
    return p


def _ctl_request(args: argparse.Namespace) -> dict:
    """The request the subcommand's arguments make (the older ``key=value`` forms accepted)."""
    if args.cmd == "reload":
        path = (args.path or "").removeprefix("path=")
        # the caller's directory, not the daemon's
        return {"cmd": "reload", **({"path": os.path.abspath(os.path.expanduser(path))} if path else {})}
    if args.cmd == "session":
        who = args.who.removeprefix("patient=")
        return {"cmd": "session", **({"end": True} if who in ("end", "end=true") else {"patient": who})}
    if args.cmd == "cue":
        return control_request(["cue", args.cue if args.cue.startswith("cue=") else f"cue={args.cue}"])
    return {"cmd": args.cmd}


def load_config(args: argparse.Namespace, *, service_default: bool = False) -> configuration.Config:
    """The configuration: ``--config``, else (``service_default``, for ctl) the service's
    (:func:`controller.config.service_config_path`), else the built-in defaults; then the flags."""
    path = args.config or (configuration.service_config_path() if service_default else None)
    cfg = configuration.load(path) if path else configuration.Config()
    cfg = cfg.with_overrides(
        lsl_stream=getattr(args, "lsl_stream", None),
        serial_port=getattr(args, "serial_port", None),
        model=getattr(args, "model", None),
        monitor=getattr(args, "monitor", None),
    )
    control = getattr(args, "control", None)
    if control is not None:
        import dataclasses

        cfg = dataclasses.replace(cfg, control=dataclasses.replace(cfg.control, endpoint=control))
    level = getattr(args, "log_level", None)
    if level is not None:
        import dataclasses

        cfg = dataclasses.replace(cfg, logging=dataclasses.replace(cfg.logging, level=level))
    return cfg


def _ctl(argv: list[str]) -> int:
    from controller.control import ControlError, request

    if len(argv) >= 1 and argv[-1].lstrip().startswith("{"):  # the older form: one JSON request
        *options, raw = argv
        args = _ctl_parser().parse_args([*options, "status"])
        req = control_request([raw])
    else:
        args = _ctl_parser().parse_args(argv)
        req = _ctl_request(args)
    cfg = load_config(args, service_default=True)
    try:
        answer = request(cfg.control.resolved_endpoint(), req, timeout_s=args.timeout)
    except ControlError as exc:
        if cfg.control.endpoint:
            raise
        raise ControlError(f"{exc}; {configuration.where_the_daemon_is(cfg, args.config)}") from None
    print(json.dumps(answer, indent=2, sort_keys=True))
    return 0 if answer.get("ok") else 1


@entry_point
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "ctl":
        return _ctl(argv[1:])
    args = _parser().parse_args(argv)
    cfg = load_config(args)
    if args.check_config:
        print(
            "note: --check-config is now --print-config --json (the old spelling goes in the next release)",
            file=sys.stderr,
        )
        args.print_config = args.json = True
    if args.print_config:
        from controller.pipeline import load_model

        doc = cfg.to_dict()
        doc["model"]["resolved_path"] = str(cfg.model.resolved_path())
        # the model file as the daemon loads it at start: a missing or broken one fails here too
        doc["model"]["model_id"] = load_model(cfg.model.resolved_path()).info.model_id
        doc["control"]["resolved_endpoint"] = cfg.control.resolved_endpoint()
        if args.json:
            print(json.dumps(doc, indent=2))
        else:
            import yaml

            print(yaml.safe_dump(doc, sort_keys=False), end="")
        return 0
    from controller import logs
    from controller.daemon import Controller

    logs.configure(cfg.logging.level)
    return asyncio.run(Controller(cfg).run())


if __name__ == "__main__":
    sys.exit(main())
