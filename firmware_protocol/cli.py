"""``metaemg-sim``: the orthosis simulator and small tools around the protocol.

metaemg-sim orthosis [--link PATH] [--log FILE.jsonl] [--control SOCK] [faults...]
metaemg-sim control SOCK CMD [key=value ...]     (or a JSON object instead of CMD ...)
metaemg-sim probe URL                             handshake and print the device's HELLO
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from firmware_protocol.device import DeviceConfig
from firmware_protocol.messages import PROTOCOL_VERSION, SCHEMA_HASH
from metaemg.cli import control_request, entry_point


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction 0..1")
    return value


def _hex_u32(text: str) -> int:
    value = int(text, 0)
    if not 0 <= value <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"{text} does not fit u32")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metaemg-sim", description="MyHand orthosis simulator and protocol tools")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("orthosis", help="simulate the orthosis firmware on a pseudo-terminal")
    sim.add_argument("--link", type=Path, help="make PATH a symlink to the pty (as udev would)")
    sim.add_argument("--log", type=Path, help="JSON-lines event log")
    sim.add_argument("--control", type=Path, help="UNIX datagram socket for runtime fault requests")
    dev = sim.add_argument_group("firmware parameters")
    dev.add_argument("--watchdog-ms", type=int, default=DeviceConfig.watchdog_ms)
    dev.add_argument("--max-ttl-ms", type=int, default=DeviceConfig.max_ttl_ms)
    dev.add_argument("--travel-s", type=float, default=DeviceConfig.travel_s, help="full actuator travel time")
    dev.add_argument("--neutral", type=int, default=DeviceConfig.neutral, help="safe/relax position, permille")
    dev.add_argument("--status-hz", type=float, default=DeviceConfig.status_hz)
    dev.add_argument("--heartbeat-hz", type=float, default=DeviceConfig.heartbeat_hz)
    dev.add_argument("--hw-watchdog-ms", type=int, default=500, help="a loop stalled this long resets the MCU")
    dev.add_argument("--schema-hash", type=_hex_u32, default=SCHEMA_HASH, help="pretend other definitions (tests)")
    dev.add_argument("--protocol-version", type=int, default=PROTOCOL_VERSION, help="pretend another version (tests)")
    inj = sim.add_argument_group("fault injection")
    inj.add_argument("--drop", type=_fraction, default=0.0, help="fraction of bytes dropped")
    inj.add_argument("--corrupt", type=_fraction, default=0.0, help="fraction of bytes corrupted")
    inj.add_argument("--direction", choices=("rx", "tx", "both"), default="both", help="where --drop/--corrupt apply")
    inj.add_argument("--ack-delay-ms", type=float, default=0.0)
    inj.add_argument("--no-ack", action="store_true", help="apply commands but never acknowledge them")
    inj.add_argument("--seed", type=int, help="random seed of the byte faults")
    inj.add_argument("--vanish-ms", type=int, default=1000, help="how long SIGUSR1 unplugs the device")

    ctl = sub.add_parser("control", help="send a runtime request to a simulator's --control socket")
    ctl.add_argument("socket", type=Path)
    ctl.add_argument("request", nargs="+", help="CMD [key=value ...] or one JSON object, e.g. vanish ms=500")

    probe = sub.add_parser("probe", help="open URL, handshake, print the device HELLO and one STATUS")
    probe.add_argument("url")
    probe.add_argument("--timeout", type=float, default=2.0)
    return parser


def _run_orthosis(args: argparse.Namespace) -> int:
    from firmware_protocol.simulator import Injection, SimOptions, Simulator

    options = SimOptions(
        device=DeviceConfig(
            watchdog_ms=args.watchdog_ms,
            max_ttl_ms=args.max_ttl_ms,
            travel_s=args.travel_s,
            neutral=args.neutral,
            status_hz=args.status_hz,
            heartbeat_hz=args.heartbeat_hz,
            schema_hash=args.schema_hash,
            protocol_version=args.protocol_version,
        ),
        injection=Injection(
            drop=args.drop,
            corrupt=args.corrupt,
            direction=args.direction,
            ack_delay_ms=args.ack_delay_ms,
            no_ack=args.no_ack,
        ),
        link=args.link,
        log=args.log,
        control=args.control,
        seed=args.seed,
        vanish_ms=args.vanish_ms,
        hw_watchdog_ms=args.hw_watchdog_ms,
    )
    return Simulator(options).run()


def _run_probe(args: argparse.Namespace) -> int:
    from firmware_protocol.codec import Decoder
    from firmware_protocol.host import handshake, wait_for
    from firmware_protocol.messages import State, Status, fault_names
    from firmware_protocol.transport import open_transport

    with open_transport(args.url) as link:
        decoder = Decoder()
        hello = handshake(link, decoder, timeout=args.timeout)
        print(
            f"device: protocol {hello.protocol_version}, schema 0x{hello.schema_hash:08x}, "
            f"firmware {hello.sw_major}.{hello.sw_minor}.{hello.sw_patch}, "
            f"watchdog {hello.watchdog_ms} ms, max TTL {hello.max_ttl_ms} ms"
        )
        status = wait_for(link, decoder, lambda m: isinstance(m, Status), args.timeout)
        assert isinstance(status, Status)  # wait_for returns the message that matched
        faults = ",".join(fault_names(status.fault_flags)) or "none"
        print(f"status: {State(status.state).name.lower()}, position {status.position}/1000, faults {faults}")
    return 0


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "orthosis":
        return _run_orthosis(args)
    if args.command == "control":
        from firmware_protocol.simulator import send_control

        send_control(args.socket, control_request(args.request))
        return 0
    return _run_probe(args)


if __name__ == "__main__":
    sys.exit(main())
