"""The orthosis simulator process: :class:`~firmware_protocol.device.Device` on a real
pseudo-terminal, with fault injection, a JSON-lines event log and a runtime control socket.

Runtime control (``--control PATH``, a UNIX datagram socket; one JSON object per datagram, or use
``metaemg-sim control PATH CMD key=value ...``):

=================================================  ===============================================
``{"cmd": "vanish", "ms": 1000, "reboot": false}``  unplug: close the pty, remove the link; after
                                                    ``ms`` a new pty appears and the link is
                                                    re-created (``reboot``: the device powers up
                                                    anew)
``{"cmd": "appear"}``                               end a vanish now
``{"cmd": "reboot"}``                               MCU reset: buffers lost, SAFE, no session, HELLO
``{"cmd": "fault", "code": "overcurrent",``         raise (latch) a fault; ``hold``: the condition
``"hold": false, "detail": 0}``                     persists, CLEAR is refused until ``release``
``{"cmd": "release"}``                              held fault conditions are gone
``{"cmd": "hang", "ms": 300}``                      the main loop stalls (no reads, no heartbeat);
                                                    at ``--hw-watchdog-ms`` the hardware watchdog
                                                    resets the device, latched INTERNAL fault
``{"cmd": "set", "drop": 0.1, "corrupt": 0.0,``     change byte/ack fault injection
``"direction": "both", "ack_delay_ms": 0,``
``"no_ack": false}``
``{"cmd": "quit"}``                                 exit as on SIGTERM
=================================================  ===============================================

Signals: SIGINT/SIGTERM exit cleanly (status 0), SIGUSR1 vanishes for ``--vanish-ms``, SIGUSR2
reboots.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import math
import os
import random
import select
import signal
import socket
import stat
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import IO, Any

from firmware_protocol.codec import Decoder, encode
from firmware_protocol.device import Device, DeviceConfig
from firmware_protocol.errors import FrameError, LinkError, LinkTimeout, ProtocolError
from firmware_protocol.messages import Ack, FaultCode, Message
from firmware_protocol.transport import PtyTransport

# What signal.signal() accepts and returns.
_SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

DIRECTIONS = ("rx", "tx", "both")
STAT_KEYS = (
    "rx_bytes",
    "rx_frames",
    "rx_dropped",
    "rx_corrupted",
    "tx_bytes",
    "tx_dropped",
    "tx_corrupted",
    "tx_overflow",
    "tx_lost_unplugged",
    "acks_delayed",
    "acks_suppressed",
)
MAX_POLL_S = 0.1


class SimulatorError(ProtocolError):
    """The simulator cannot start or was given a bad control request."""


@dataclass(frozen=True)
class Injection:
    """Link faults: fractions of bytes dropped/corrupted, acks delayed or suppressed."""

    drop: float = 0.0
    corrupt: float = 0.0
    direction: str = "both"
    ack_delay_ms: float = 0.0
    no_ack: bool = False

    def __post_init__(self) -> None:
        for name in ("drop", "corrupt"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
                raise SimulatorError(f"{name} must be a fraction 0..1, got {value!r}")
        if self.direction not in DIRECTIONS:
            raise SimulatorError(f"direction must be one of {', '.join(DIRECTIONS)}")
        if not (isinstance(self.ack_delay_ms, int | float) and 0 <= self.ack_delay_ms < math.inf):
            raise SimulatorError(f"ack_delay_ms must be >= 0, got {self.ack_delay_ms!r}")
        if not isinstance(self.no_ack, bool):
            raise SimulatorError(f"no_ack must be true or false, got {self.no_ack!r}")

    def applies(self, direction: str) -> bool:
        return (self.drop > 0 or self.corrupt > 0) and self.direction in (direction, "both")


@dataclass(frozen=True)
class SimOptions:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    injection: Injection = field(default_factory=Injection)
    link: Path | None = None
    log: Path | None = None
    control: Path | None = None
    seed: int | None = None
    vanish_ms: int = 1000
    hw_watchdog_ms: int = 500


class EventLog:
    """One JSON object per line, flushed at once: ``{"t": monotonic, "event": name, ...}``."""

    def __init__(self, path: Path | None) -> None:
        self._fh: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def __call__(self, event: str, fields: dict | None = None) -> None:
        if self._fh is None:
            return
        record = {"t": time.monotonic(), "event": event, **(fields or {})}
        self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class Simulator:
    """Runs until SIGINT/SIGTERM (or a ``quit`` control request); see the module docstring."""

    def __init__(self, options: SimOptions, stdout: IO[str] | None = None) -> None:
        self.options = options
        self._check_paths()
        self.injection = options.injection
        self._stdout = stdout if stdout is not None else sys.stdout
        self._rng = random.Random(options.seed)
        self._log = EventLog(options.log)
        self.device = Device(options.device, emit=self._log)
        self._version = options.device.protocol_version  # another one only to test mismatches
        self.decoder = Decoder(on_error=self._on_frame_error, version=self._version)
        self.stats: Counter[str] = Counter(dict.fromkeys(STAT_KEYS, 0))
        self._pty: PtyTransport | None = None
        self._poller = select.poll()
        self._control: socket.socket | None = None
        self._wake_r = self._wake_w = -1
        self._signals: list[int] = []
        self._old_handlers: dict[int, _SignalHandler] = {}
        self._stopping = False
        self._delayed: list[tuple[float, int, bytes]] = []
        self._appear_at: float | None = None
        self._reboot_on_appear = False
        self._hang_until: float | None = None
        self._hang_reboot = False

    # -- run ------------------------------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        try:
            self._open_control()
            now = time.monotonic()
            self._log("start", {"pid": os.getpid(), "link": _str(self.options.link), "config": self._config()})
            self._appear()
            self._send(self.device.boot(now))
            while not self._stopping:
                self._step()
            return 0
        finally:
            self._shutdown()

    def stop(self) -> None:
        """Ask the loop to finish (from a signal handler or a control request)."""
        self._stopping = True

    def _step(self) -> None:
        now = time.monotonic()
        if self._hang_until is not None:
            wake = self._hang_until
        else:
            wake = min(self.device.next_deadline(), now + MAX_POLL_S)
            if self._delayed:
                wake = min(wake, self._delayed[0][0])
        if self._appear_at is not None:
            wake = min(wake, self._appear_at)
        timeout_ms = max(0, math.ceil((wake - now) * 1000))
        for fd, _ in self._poller.poll(timeout_ms):
            if self._pty is not None and fd == self._pty.fileno():
                if self._hang_until is None:
                    self._on_pty_readable()
            elif self._control is not None and fd == self._control.fileno():
                self._on_control()
            elif fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 512)
        self._handle_signals()
        now = time.monotonic()
        if self._appear_at is not None and now >= self._appear_at:
            self._appear()
        if self._hang_until is not None:
            if now < self._hang_until:
                return
            self._end_hang(now)
        while self._delayed and self._delayed[0][0] <= now:
            self._write(heapq.heappop(self._delayed)[2])
        self._send(self.device.tick(now))

    # -- link -----------------------------------------------------------------------------------

    def _appear(self) -> None:
        self._appear_at = None
        self._pty = PtyTransport()
        self._poller.register(self._pty.fileno(), 0)
        self._watch_pty()
        path = self._pty.slave_path
        if self.options.link is not None:
            _atomic_symlink(path, self.options.link)
        print(path, file=self._stdout, flush=True)
        self._log("appear", {"path": path, "link": _str(self.options.link)})
        if self._reboot_on_appear:
            self._reboot_on_appear = False
            self._reboot("power")

    def _watch_pty(self) -> None:
        """Poll the pty for input unless the loop is stalled (then input waits, unread)."""
        if self._pty is not None:
            self._poller.modify(self._pty.fileno(), 0 if self._hang_until is not None else select.POLLIN)

    def _vanish(self, ms: float, reboot: bool = False) -> None:
        if self._pty is None:
            return
        path = self._pty.slave_path
        self._poller.unregister(self._pty.fileno())
        self._pty.close()
        self._pty = None
        self._remove_link(path)
        self._delayed.clear()
        self.decoder.reset()
        self._appear_at = time.monotonic() + ms / 1000
        self._reboot_on_appear = reboot
        self._log("vanish", {"path": path, "ms": ms, "reboot": reboot})

    def _remove_link(self, target: str) -> None:
        link = self.options.link
        if link is not None and link.is_symlink() and os.readlink(link) == target:
            link.unlink()

    def _on_pty_readable(self) -> None:
        assert self._pty is not None  # only called by the poll loop for the open pty
        try:
            data = self._pty.read(timeout=0)
        except LinkError as exc:  # pragma: no cover - we hold the slave open
            self._log("link_error", {"error": str(exc)})
            return
        if not data:
            return
        t_rx = time.monotonic()  # the frames in these bytes arrived now (the log's "t" is later)
        self.stats["rx_bytes"] += len(data)
        if self.injection.applies("rx"):
            data = self._mangle(data, "rx")
        for msg in self.decoder.feed(data):
            self.stats["rx_frames"] += 1
            self._send(self.device.receive(msg, t_rx))

    def _on_frame_error(self, exc: FrameError) -> None:
        self.device.rx_error(exc.kind)

    def _send(self, messages: list[Message]) -> None:
        for msg in messages:
            wire = encode(msg, self._version)
            if isinstance(msg, Ack):
                if self.injection.no_ack:
                    self.stats["acks_suppressed"] += 1
                    continue
                if self.injection.ack_delay_ms > 0:
                    due = time.monotonic() + self.injection.ack_delay_ms / 1000
                    heapq.heappush(self._delayed, (due, self.stats["acks_delayed"], wire))
                    self.stats["acks_delayed"] += 1
                    continue
            self._write(wire)

    def _write(self, data: bytes) -> None:
        if self._pty is None:
            self.stats["tx_lost_unplugged"] += 1
            return
        if self.injection.applies("tx"):
            data = self._mangle(data, "tx")
        try:
            self._pty.write(data, timeout=0)
            self.stats["tx_bytes"] += len(data)
        except LinkTimeout:
            self.stats["tx_overflow"] += 1  # nobody reads the slave: drop, as a UART would
        except LinkError as exc:  # pragma: no cover - we hold the slave open
            self._log("link_error", {"error": str(exc)})

    def _mangle(self, data: bytes, direction: str) -> bytes:
        out = bytearray()
        drop, corrupt, rng = self.injection.drop, self.injection.corrupt, self._rng
        for byte in data:
            if drop and rng.random() < drop:
                self.stats[f"{direction}_dropped"] += 1
                continue
            if corrupt and rng.random() < corrupt:
                byte ^= rng.randrange(1, 256)
                self.stats[f"{direction}_corrupted"] += 1
            out.append(byte)
        return bytes(out)

    # -- device-level faults ----------------------------------------------------------------------

    def _reboot(self, reason: str, fault: FaultCode | None = None) -> None:
        if self._pty is not None:  # the MCU's receive buffer is lost
            with contextlib.suppress(LinkError):
                while self._pty.read(timeout=0):
                    pass
        self.decoder.reset()
        self._delayed.clear()
        if self._hang_until is not None:  # a reset ends a stall
            self._hang_until, self._hang_reboot = None, False
            self._watch_pty()
        self._log("reboot", {"reason": reason})
        self._send(self.device.boot(time.monotonic(), fault=fault))

    def _hang(self, ms: float) -> None:
        now = time.monotonic()
        hw = self.options.hw_watchdog_ms
        self._hang_reboot = ms >= hw
        self._hang_until = now + min(ms, hw) / 1000
        self._watch_pty()
        self._log("hang", {"ms": ms, "hw_watchdog_reset": self._hang_reboot})

    def _end_hang(self, now: float) -> None:
        self._hang_until = None
        self._watch_pty()
        if self._hang_reboot:
            self._hang_reboot = False
            self._reboot("hw_watchdog", fault=FaultCode.INTERNAL)
        else:
            self._log("hang_end", {})

    # -- control ----------------------------------------------------------------------------------

    def _open_control(self) -> None:
        path = self.options.control
        if path is None:
            return
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()
        self._control = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._control.bind(str(path))
        except OSError as exc:
            self._control.close()
            self._control = None
            raise SimulatorError(f"{path}: cannot create the control socket: {exc.strerror or exc}") from exc
        self._control.setblocking(False)
        self._poller.register(self._control.fileno(), select.POLLIN)

    def _on_control(self) -> None:
        assert self._control is not None  # only called by the poll loop for the open socket
        while True:
            try:
                raw = self._control.recv(4096)
            except BlockingIOError:
                return
            try:
                request = json.loads(raw.decode("utf-8"))
                self.control(request)
            except (ValueError, SimulatorError, TypeError, KeyError) as exc:
                self._log("control_error", {"error": str(exc), "request": raw.decode("utf-8", "replace")})

    def control(self, request: dict) -> None:
        """Apply one control request (see the module docstring)."""
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            raise SimulatorError('control request must be a JSON object with a "cmd" string')
        cmd = request["cmd"]
        args = {k: v for k, v in request.items() if k != "cmd"}
        now = time.monotonic()
        self._log("control", {"cmd": cmd, **args})
        if cmd == "vanish":
            _only(args, {"ms", "reboot"})
            ms = _number(args.get("ms", self.options.vanish_ms), "ms")
            self._vanish(ms, bool(args.get("reboot", False)))
        elif cmd == "appear":
            _only(args, set())
            if self._pty is None:
                self._appear()
        elif cmd == "reboot":
            _only(args, set())
            self._reboot("request")
        elif cmd == "fault":
            _only(args, {"code", "hold", "detail"})
            code = _fault_code(args.get("code", "internal"))
            detail = int(_number(args.get("detail", 0), "detail"))
            if not 0 <= detail <= 0xFFFFFFFF:
                raise SimulatorError("detail must fit u32")
            self._send(self.device.raise_fault(code, now, detail=detail, hold=bool(args.get("hold", False))))
        elif cmd == "release":
            _only(args, set())
            self.device.release_faults()
        elif cmd == "hang":
            _only(args, {"ms"})
            self._hang(_number(args.get("ms", 300), "ms"))
        elif cmd == "set":
            _only(args, {"drop", "corrupt", "direction", "ack_delay_ms", "no_ack"})
            self.injection = replace(self.injection, **args)
            self._log("inject", asdict(self.injection))
        elif cmd == "quit":
            _only(args, set())
            self.stop()
        else:
            raise SimulatorError(f"unknown control cmd {cmd!r}")

    # -- signals ----------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poller.register(self._wake_r, select.POLLIN)
        self._old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
            self._old_handlers[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            self._log("signal", {"signal": signal.Signals(signum).name})
            if signum in (signal.SIGINT, signal.SIGTERM):
                self.stop()
            elif signum == signal.SIGUSR1:
                self._vanish(self.options.vanish_ms)
            elif signum == signal.SIGUSR2:
                self._reboot("signal")

    # -- start and end ----------------------------------------------------------------------------

    def _check_paths(self) -> None:
        link = self.options.link
        if link is not None and link.exists() and not link.is_symlink():
            raise SimulatorError(f"{link}: exists and is not a symlink; refusing to replace it")
        control = self.options.control
        if control is not None and control.exists() and not stat.S_ISSOCK(control.lstat().st_mode):
            raise SimulatorError(f"{control}: exists and is not a socket; refusing to replace it")

    def _config(self) -> dict:
        cfg = asdict(self.options.device)
        cfg["schema_hash"] = f"0x{cfg['schema_hash']:08x}"
        cfg.update(asdict(self.injection), seed=self.options.seed, hw_watchdog_ms=self.options.hw_watchdog_ms)
        return cfg

    def _shutdown(self) -> None:
        stats: dict[str, object] = dict(self.stats)
        stats["decode_errors"] = {k: v for k, v in self.decoder.errors.items() if v}
        stats["state"] = self.device.state.name.lower()
        with contextlib.suppress(Exception):
            self._log("exit", stats)
        if self._pty is not None:
            path = self._pty.slave_path
            self._pty.close()
            self._pty = None
            self._remove_link(path)
        if self._control is not None:
            self._control.close()
            assert self.options.control is not None  # the socket is only opened at that path
            with contextlib.suppress(OSError):
                self.options.control.unlink()
        if self._wake_w >= 0:
            signal.set_wakeup_fd(self._old_wakeup)
            for signum, handler in self._old_handlers.items():
                signal.signal(signum, handler)
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1
        self._log.close()


def _atomic_symlink(target: str, link: Path) -> None:
    """Point ``link`` at ``target`` in one step (temporary symlink + rename), as udev would."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(target, tmp)
        os.replace(tmp, link)
    except OSError as exc:
        raise SimulatorError(f"{link}: cannot create the symlink: {exc.strerror or exc}") from exc


def _only(args: dict, allowed: set[str]) -> None:
    extra = sorted(set(args) - allowed)
    if extra:
        raise SimulatorError(f"unexpected control field(s): {', '.join(extra)}")


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise SimulatorError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def _fault_code(value: Any) -> FaultCode:
    # ``value`` is a decoded JSON value; FaultCode() raises ValueError for anything not a code.
    try:
        if isinstance(value, str):
            return FaultCode[value.upper()]
        return FaultCode(value)
    except (KeyError, ValueError):
        names = ", ".join(c.name.lower() for c in FaultCode)
        raise SimulatorError(f"unknown fault code {value!r} (one of {names})") from None


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def send_control(path: str | os.PathLike, request: dict) -> None:
    """Send one control request to a running simulator's ``--control`` socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(json.dumps(request).encode("utf-8"), os.fspath(path))
        except OSError as exc:
            raise SimulatorError(f"{os.fspath(path)}: cannot reach the simulator: {exc}") from exc
