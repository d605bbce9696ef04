"""The device side of the protocol as a pure state machine: what the firmware must do.

:class:`Device` has no I/O and no clock: every call takes ``now`` (seconds, monotonic) and returns
the messages to send. The simulator (:mod:`firmware_protocol.simulator`) drives it from a real
pseudo-terminal; tests drive it with a fake clock. Observable events go to ``emit(event, fields)``.

Transition table (host requests; "-" means no state change):

=========  ===============================  ==========================================
request    accepted in                      effect
=========  ===============================  ==========================================
HELLO      any (role HOST)                  match: session on, active -> SAFE;
                                            mismatch: session off, FAULT SCHEMA_MISMATCH
HEARTBEAT  any                              feeds the watchdog only
COMMAND    session, not FAULT, valid        state := intent, TTL restarts (ACK OK)
STOP       always (even without session)    active -> SAFE; FAULT stays FAULT (ACK OK)
CLEAR      session                          FAULT -> SAFE if no fault condition persists
=========  ===============================  ==========================================

Timers (only in an active state RELAX/OPEN/CLOSE): no valid host frame for ``watchdog_ms`` ->
SAFE (reason "watchdog"); ``ttl_ms`` after the accepted COMMAND -> SAFE (reason "ttl").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from firmware_protocol.errors import ProtocolError
from firmware_protocol.messages import (
    DEFAULT_MAX_TTL_MS,
    DEFAULT_WATCHDOG_MS,
    PROTOCOL_VERSION,
    SCHEMA_HASH,
    Ack,
    Clear,
    Command,
    Fault,
    FaultCode,
    Heartbeat,
    Hello,
    Intent,
    Message,
    Result,
    Role,
    State,
    Status,
    StatusFlag,
    Stop,
    enum_name,
    fault_bit,
    fault_names,
)

ACTIVE_STATES = frozenset({State.RELAX, State.OPEN, State.CLOSE})
INTENT_STATE = {Intent.RELAX: State.RELAX, Intent.OPEN: State.OPEN, Intent.CLOSE: State.CLOSE}
POSITION_OPEN = 0
POSITION_CLOSED = 1000

Emit = Callable[[str, dict], None]


@dataclass(frozen=True)
class DeviceConfig:
    """Firmware parameters (the device announces watchdog_ms and max_ttl_ms in HELLO)."""

    watchdog_ms: int = DEFAULT_WATCHDOG_MS
    max_ttl_ms: int = DEFAULT_MAX_TTL_MS
    travel_s: float = 1.0  # time for the full 0..1000 travel
    neutral: int = 500  # actuator position of RELAX, SAFE and FAULT (permille)
    status_hz: float = 25.0
    heartbeat_hz: float = 10.0
    protocol_version: int = PROTOCOL_VERSION
    schema_hash: int = SCHEMA_HASH
    sw_version: tuple[int, int, int] = (0, 1, 0)

    def __post_init__(self) -> None:
        checks = [
            (1 <= self.watchdog_ms <= 0xFFFF, "watchdog_ms must be 1..65535"),
            (1 <= self.max_ttl_ms <= 0xFFFF, "max_ttl_ms must be 1..65535"),
            (self.travel_s > 0 and math.isfinite(self.travel_s), "travel_s must be > 0"),
            (POSITION_OPEN <= self.neutral <= POSITION_CLOSED, "neutral must be 0..1000"),
            (self.status_hz > 0, "status_hz must be > 0"),
            (self.heartbeat_hz > 0, "heartbeat_hz must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ProtocolError(f"device config: {message}")


class Device:
    """The orthosis firmware's protocol logic and a first-order actuator model."""

    def __init__(self, config: DeviceConfig | None = None, emit: Emit | None = None) -> None:
        self.config = config or DeviceConfig()
        self._emit_cb = emit
        self.position = float(self.config.neutral)
        self._boot_fields(0.0)

    # -- lifecycle ------------------------------------------------------------------------------

    def _boot_fields(self, now: float) -> None:
        self.state = State.SAFE
        self.session = False
        self.fault_flags = 0
        self.held_faults: set[int] = set()
        self.last_command: Command | None = None
        self.command_deadline: float | None = None
        self.last_rx = now
        self.rx_errors = 0
        self.unexpected = 0
        self._boot_time = now
        self._moved_at = now
        self._moving = False
        self._tx_seq = 0
        self._next_status = now
        self._next_heartbeat = now

    def boot(self, now: float, *, fault: FaultCode | None = None, detail: int = 0) -> list[Message]:
        """Power on (or reset): SAFE, no session, faults forgotten; announce with HELLO.

        With ``fault`` (e.g. INTERNAL after a hardware-watchdog reset) the device boots latched.
        """
        self._boot_fields(now)
        self._emit("state", state="safe", prev=None, reason="boot")
        out: list[Message] = [self._hello()]
        if fault is not None:
            out += self.raise_fault(fault, now, detail=detail)
        return out

    # -- inputs ---------------------------------------------------------------------------------

    def receive(self, msg: Message, now: float) -> list[Message]:
        """Handle one valid frame from the host; return the replies."""
        self._advance(now)
        if msg.DIRECTION == "to_host" or (isinstance(msg, Hello) and msg.role != Role.HOST):
            self.unexpected += 1  # e.g. our own frames echoed back: do not feed the watchdog
            self._emit("unexpected", type=msg.NAME, seq=msg.seq)
            return []
        self.last_rx = now
        if isinstance(msg, Hello):
            return self._on_hello(msg, now)
        if isinstance(msg, Heartbeat):
            return []
        if isinstance(msg, Command):
            return self._on_command(msg, now)
        if isinstance(msg, Stop):
            return self._on_stop(msg, now)
        if isinstance(msg, Clear):
            return self._on_clear(msg, now)
        raise AssertionError(f"unhandled message {msg!r}")  # pragma: no cover

    def rx_error(self, kind: str) -> None:
        """Count an invalid frame (it does not feed the watchdog)."""
        self.rx_errors += 1
        self._emit("rx_error", kind=kind)

    def raise_fault(self, code: FaultCode | int, now: float, *, detail: int = 0, hold: bool = False) -> list[Message]:
        """Latch a fault: FAULT state, command dropped, FAULT frame. ``hold``: the condition
        persists (CLEAR is refused) until :meth:`release_faults`."""
        self._advance(now)
        code = FaultCode(code)
        self.fault_flags |= fault_bit(code)
        if hold:
            self.held_faults.add(int(code))
        self.command_deadline = None
        self._emit("fault", code=code.name.lower(), flags=fault_names(self.fault_flags), detail=detail)
        self._set_state(State.FAULT, "fault", now)
        return [self._out(Fault(code=int(code), fault_flags=self.fault_flags, detail=detail))]

    def release_faults(self) -> None:
        """The held fault conditions are gone; CLEAR may now succeed."""
        self.held_faults.clear()

    # -- timers ---------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Message]:
        """Run the timers (TTL, watchdog, actuator, telemetry); return periodic frames."""
        if self.state in ACTIVE_STATES:
            watchdog_at = self.last_rx + self.config.watchdog_ms / 1000
            ttl_at = self.command_deadline if self.command_deadline is not None else math.inf
            expired_at = min(watchdog_at, ttl_at)
            if now >= expired_at:
                reason = "ttl" if ttl_at <= watchdog_at else "watchdog"
                self.command_deadline = None
                at = max(self._moved_at, expired_at)  # the actuator turned back at expiry
                self._advance(at)
                self._set_state(State.SAFE, reason, at)
        self._advance(now)
        out: list[Message] = []
        if now >= self._next_heartbeat:
            out.append(self._out(Heartbeat(uptime_ms=self.uptime_ms(now))))
            self._next_heartbeat = _next_period(self._next_heartbeat, 1 / self.config.heartbeat_hz, now)
        if now >= self._next_status:
            out.append(self.status(now))
            self._next_status = _next_period(self._next_status, 1 / self.config.status_hz, now)
        return out

    def next_deadline(self) -> float:
        """The latest time :meth:`tick` must run again."""
        times = [self._next_status, self._next_heartbeat]
        if self.state in ACTIVE_STATES:
            times.append(self.last_rx + self.config.watchdog_ms / 1000)
            if self.command_deadline is not None:
                times.append(self.command_deadline)
        if self._moving:
            times.append(self._moved_at + abs(self.target() - self.position) / self._speed())
        return min(times)

    # -- observation ----------------------------------------------------------------------------

    def target(self) -> float:
        if self.state == State.OPEN:
            return POSITION_OPEN
        if self.state == State.CLOSE:
            return POSITION_CLOSED
        return float(self.config.neutral)

    def uptime_ms(self, now: float) -> int:
        return int((now - self._boot_time) * 1000) & 0xFFFFFFFF

    def ttl_left_ms(self, now: float) -> int:
        if self.command_deadline is None or self.state not in ACTIVE_STATES:
            return 0
        return min(0xFFFF, max(0, math.ceil((self.command_deadline - now) * 1000)))

    def status(self, now: float) -> Status:
        self._advance(now)
        flags = (StatusFlag.SESSION if self.session else 0) | (StatusFlag.MOVING if self._moving else 0)
        return self._out(
            Status(
                state=int(self.state),
                flags=int(flags),
                position=int(round(self.position)),
                fault_flags=self.fault_flags,
                uptime_ms=self.uptime_ms(now),
                last_command_seq=self.last_command.seq if self.last_command else 0,
                ttl_left_ms=self.ttl_left_ms(now),
                rx_errors=min(self.rx_errors, 0xFFFF),
            )
        )

    # -- handlers -------------------------------------------------------------------------------

    def _on_hello(self, msg: Hello, now: float) -> list[Message]:
        match = msg.protocol_version == self.config.protocol_version and msg.schema_hash == self.config.schema_hash
        self._emit(
            "hello",
            role="host",
            protocol_version=msg.protocol_version,
            schema_hash=f"0x{msg.schema_hash:08x}",
            match=match,
        )
        out: list[Message] = [self._hello()]
        self.last_command = None  # a new session starts a new sequence space
        if match:
            self.session = True
            if self.state in ACTIVE_STATES:
                self.command_deadline = None
                self._set_state(State.SAFE, "hello", now)
        else:
            self.session = False
            out += self.raise_fault(FaultCode.SCHEMA_MISMATCH, now, detail=msg.schema_hash)
        return out

    def _on_command(self, msg: Command, now: float) -> list[Message]:
        result = self._check_command(msg)
        if result is None:  # exact duplicate of the last accepted command: no effect
            self._emit("duplicate", seq=msg.seq)
            return [self._ack(msg, Result.OK)]
        if result != Result.OK:
            self._emit(
                "reject",
                type=msg.NAME,
                seq=msg.seq,
                result=result.name.lower(),
                intent=enum_name(Intent, msg.intent),
                ttl_ms=msg.ttl_ms,
            )
            return [self._ack(msg, result)]
        intent = Intent(msg.intent)
        self.last_command = msg
        self.command_deadline = now + msg.ttl_ms / 1000
        self._emit("command", intent=intent.name.lower(), seq=msg.seq, ttl_ms=msg.ttl_ms, rx_t=now)
        self._set_state(INTENT_STATE[intent], "command", now)
        return [self._ack(msg, Result.OK)]

    def _check_command(self, msg: Command) -> Result | None:
        if not self.session:
            return Result.REJECT_NO_SESSION
        if self.state == State.FAULT:
            return Result.REJECT_FAULT
        if msg.intent not in Intent._value2member_map_:
            return Result.REJECT_INTENT
        if not 1 <= msg.ttl_ms <= self.config.max_ttl_ms:
            return Result.REJECT_TTL
        last = self.last_command
        if last is not None:
            if msg.seq == last.seq:
                return None if msg == last else Result.REJECT_SEQ
            if not seq_newer(msg.seq, last.seq):
                return Result.REJECT_SEQ
        return Result.OK

    def _on_stop(self, msg: Stop, now: float) -> list[Message]:
        self._emit("stop", seq=msg.seq, reason=msg.reason)
        self.command_deadline = None
        if self.state in ACTIVE_STATES:
            self._set_state(State.SAFE, "stop", now)
        return [self._ack(msg, Result.OK)]

    def _on_clear(self, msg: Clear, now: float) -> list[Message]:
        if not self.session:
            result = Result.REJECT_NO_SESSION
        elif self.state == State.FAULT and self.held_faults:
            result = Result.REJECT_FAULT_ACTIVE
        else:
            result = Result.OK
        self._emit("clear", seq=msg.seq, result=result.name.lower())
        if result == Result.OK and self.state == State.FAULT:
            self.fault_flags = 0
            self._set_state(State.SAFE, "clear", now)
        return [self._ack(msg, result)]

    # -- internals ------------------------------------------------------------------------------

    def _emit(self, event: str, **fields: object) -> None:
        if self._emit_cb is not None:
            self._emit_cb(event, fields)

    def _set_state(self, state: State, reason: str, now: float) -> None:
        if state != self.state:
            prev, self.state = self.state, state
            self._emit("state", state=state.name.lower(), prev=prev.name.lower(), reason=reason)
        self._advance(now)

    def _speed(self) -> float:
        return (POSITION_CLOSED - POSITION_OPEN) / self.config.travel_s  # permille per second

    def _advance(self, now: float) -> None:
        """Move the actuator toward the target of the current state at finite speed."""
        dt = max(0.0, now - self._moved_at)
        self._moved_at = now
        target = self.target()
        step = self._speed() * dt
        if abs(target - self.position) <= step + 1e-9:
            self.position = target
        else:
            self.position += step if target > self.position else -step
        moving = self.position != target
        if moving != self._moving:
            self._moving = moving
            self._emit("actuator", moving=moving, position=round(self.position), target=round(target))

    def _out(self, msg: Message):
        seq, self._tx_seq = self._tx_seq, (self._tx_seq + 1) & 0xFFFF
        return type(msg)(**msg.fields(), seq=seq)

    def _ack(self, msg: Message, result: Result) -> Ack:
        return self._out(Ack(acked_seq=msg.seq, acked_type=msg.TYPE, result=int(result), state=int(self.state)))

    def _hello(self) -> Hello:
        major, minor, patch = self.config.sw_version
        return self._out(
            Hello(
                protocol_version=self.config.protocol_version,
                role=int(Role.DEVICE),
                schema_hash=self.config.schema_hash,
                sw_major=major,
                sw_minor=minor,
                sw_patch=patch,
                watchdog_ms=self.config.watchdog_ms,
                max_ttl_ms=self.config.max_ttl_ms,
            )
        )


def seq_newer(seq: int, last: int) -> bool:
    """Serial-number arithmetic on u16: ``seq`` is newer than ``last`` if 1..32767 ahead."""
    return 0 < ((seq - last) & 0xFFFF) < 0x8000


def _next_period(scheduled: float, period: float, now: float) -> float:
    nxt = scheduled + period
    return nxt if nxt > now else now + period
