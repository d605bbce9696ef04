"""The host side of the serial protocol (docs/firmware_protocol.md, section 8) as a pure state
machine: no I/O, no clock. :class:`HostLink` is fed the messages received and the time, and
returns the messages to write; :mod:`controller.link` does the I/O.

Phases:

=============  ==================================================================================
``closed``     no port open
``handshake``  port open, our HELLO sent (resent every 250 ms), waiting for the device's HELLO
``ready``      the device answered with our protocol version and schema hash: commands may flow
``mismatch``   the device speaks another version/schema: fail closed (no COMMAND); HELLO is tried
               again every 5 s
``silent``     ready, but no frame from the device for ``device_timeout_ms`` (stalled loop or a
               dead link): no COMMAND until it is heard again
=============  ==================================================================================

Every COMMAND, STOP and CLEAR is tracked until its ACK; without an ACK within ``ack_timeout_ms``
the *same frame* is resent, at most ``retries`` times. A newer COMMAND supersedes an older one
(resending an older seq would be refused anyway). If frames stay unacknowledged for
``ack_timeout_ms * (retries + 1)``, :attr:`HostLink.acks_lost` is set (a fault for the daemon)
until an ACK arrives again; meanwhile a STOP probe goes out every second.

A device reboot (an unsolicited HELLO, a STATUS without the SESSION flag, an uptime that went
backwards, or an ACK saying REJECT_NO_SESSION) starts the handshake again.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from dataclasses import dataclass

from controller.config import SerialConfig
from firmware_protocol import (
    Ack,
    Clear,
    Command,
    Fault,
    HandshakeError,
    Heartbeat,
    Hello,
    Message,
    Result,
    Role,
    State,
    Status,
    StatusFlag,
    Stop,
    StopReason,
    check_hello,
    check_reply,
    host_hello,
    make_command,
)
from firmware_protocol.messages import enum_name, fault_names

HANDSHAKE_RESEND_S = 0.25
MISMATCH_RETRY_S = 5.0
ACK_PROBE_S = 1.0


class Phase(enum.StrEnum):
    CLOSED = "closed"
    HANDSHAKE = "handshake"
    READY = "ready"
    MISMATCH = "mismatch"
    SILENT = "silent"


@dataclass(slots=True)
class _Pending:
    msg: Message
    first_sent: float
    last_sent: float
    tries: int = 0


class HostLink:
    """See the module docstring. ``counters`` (shared with the daemon) counts what happens."""

    def __init__(self, config: SerialConfig | None = None, counters: Counter | None = None) -> None:
        self.config = config or SerialConfig()
        self.counters: Counter = counters if counters is not None else Counter()
        self._ack_timeout = self.config.ack_timeout_ms / 1000
        self._ack_deadline = self._ack_timeout * (self.config.retries + 1)
        self._device_timeout = self.config.device_timeout_ms / 1000
        self._handshake_timeout = self.config.handshake_timeout_ms / 1000
        self._seq = 0
        self._reset_session()
        self.phase = Phase.CLOSED
        self.problem: str | None = "not connected"

    def _reset_session(self) -> None:
        self.device: Hello | None = None
        self.device_state: int | None = None
        self.fault_flags = 0
        self.position: int | None = None
        self.last_reject: str | None = None
        self._uptime: int | None = None
        self._outstanding: dict[int, _Pending] = {}
        self._waiting_since: float | None = None
        self.acks_lost = False
        self._last_probe = -math.inf
        self._last_tx = -math.inf
        self._last_rx = -math.inf
        self._hello_at = -math.inf
        self._handshake_at = -math.inf
        self._handshake_late = False
        self._mismatch_at = -math.inf

    # -- derived -----------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Commands may be sent (handshake done, device heard recently, not in FAULT)."""
        return self.phase == Phase.READY and not self.device_fault

    @property
    def device_fault(self) -> bool:
        return self.device_state == State.FAULT

    @property
    def ttl_ms(self) -> int:
        limit = self.device.max_ttl_ms if self.device is not None and self.device.max_ttl_ms else self.config.ttl_ms
        return min(self.config.ttl_ms, limit)

    @property
    def heartbeat_s(self) -> float:
        period: float = self.config.heartbeat_ms
        if self.device is not None and self.device.watchdog_ms:
            period = min(period, self.device.watchdog_ms / 4)
        return period / 1000

    def fault(self) -> str | None:
        """Why the link is a fault for the daemon, or None."""
        if self.phase == Phase.MISMATCH:
            return f"protocol mismatch: {self.problem}"
        if self.phase == Phase.CLOSED:
            return None
        if self.device_fault:
            names = ",".join(fault_names(self.fault_flags)) or "unknown"
            return f"device fault: {names}"
        if self.acks_lost:
            return f"no ACK from the device for {self._ack_deadline * 1000:.0f} ms"
        return None

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    def device_state_name(self) -> str | None:
        return None if self.device_state is None else enum_name(State, self.device_state)

    # -- port events -------------------------------------------------------------------------------

    def opened(self, now: float) -> list[Message]:
        """The port was (re)opened: start the handshake."""
        self._reset_session()
        return self._start_handshake(now)

    def closed(self, problem: str) -> None:
        """The port is gone (unplugged, closed)."""
        self._reset_session()
        self.phase = Phase.CLOSED
        self.problem = problem

    # -- receiving ---------------------------------------------------------------------------------

    def receive(self, msg: Message, now: float) -> list[Message]:
        """Handle one valid frame from the port; return the frames to write."""
        if msg.DIRECTION == "to_device" or (isinstance(msg, Hello) and msg.role == Role.HOST):
            self.counters["link_echoes"] += 1  # our own frame looped back: not the device
            return []
        if self.phase == Phase.CLOSED:
            return []
        self._last_rx = now
        if self.phase in (Phase.HANDSHAKE, Phase.MISMATCH):
            try:
                hello = check_reply(msg)
            except HandshakeError as exc:
                return self._mismatch(str(exc), now)
            if hello is not None:
                self.device = hello
                self.phase = Phase.READY
                self.problem = None
                self._uptime = None
                self.counters["handshakes"] += 1
                return []
        elif isinstance(msg, Hello):  # unsolicited: the device (re)booted
            self.counters["device_reboots"] += 1
            try:
                check_hello(msg)
            except HandshakeError as exc:
                return self._mismatch(str(exc), now)
            return self._start_handshake(now)
        if self.phase == Phase.SILENT:
            self.phase = Phase.READY
            self.problem = None
        if isinstance(msg, Status):
            return self._on_status(msg, now)
        if isinstance(msg, Ack):
            return self._on_ack(msg, now)
        if isinstance(msg, Fault):
            self.device_state = State.FAULT
            self.fault_flags = msg.fault_flags
            self.counters["device_faults"] += 1
        return []

    def _on_status(self, msg: Status, now: float) -> list[Message]:
        self.device_state = msg.state
        self.fault_flags = msg.fault_flags
        self.position = msg.position
        previous, self._uptime = self._uptime, msg.uptime_ms
        if self.phase == Phase.READY:
            went_back = previous is not None and ((msg.uptime_ms - previous) & 0xFFFFFFFF) >= 0x80000000
            if not msg.flags & StatusFlag.SESSION or went_back:
                self.counters["device_reboots"] += 1
                return self._start_handshake(now)
        return []

    def _on_ack(self, msg: Ack, now: float) -> list[Message]:
        pending = self._outstanding.get(msg.acked_seq)
        if pending is not None and msg.acked_type == pending.msg.TYPE:
            del self._outstanding[msg.acked_seq]
        else:
            self.counters["acks_unmatched"] += 1  # a late ACK of a superseded or retried frame
        self._waiting_since = now if self._outstanding else None
        self.acks_lost = False
        self.device_state = msg.state
        if msg.result == Result.OK:
            self.counters["acks_ok"] += 1
            return []
        self.counters["acks_rejected"] += 1
        self.last_reject = enum_name(Result, msg.result)
        if msg.result == Result.REJECT_NO_SESSION and self.phase == Phase.READY:
            self.counters["device_reboots"] += 1
            return self._start_handshake(now)
        return []

    # -- sending -----------------------------------------------------------------------------------

    def command(self, intent: int, now: float) -> Command | None:
        """A COMMAND for ``intent`` to write now (a new seq), or None if commands may not flow."""
        if not self.ready:
            return None
        for seq in [s for s, p in self._outstanding.items() if isinstance(p.msg, Command)]:
            del self._outstanding[seq]  # superseded: the newer target replaces it
        msg = make_command(intent, self.ttl_ms, self._next_seq(), max_ttl_ms=self.ttl_ms)
        self._track(msg, now)
        self.counters["commands_sent"] += 1
        return msg

    def stop(self, reason: StopReason | int, now: float) -> Stop | None:
        """A STOP to write now (accepted by the device in any state), or None without a port."""
        if self.phase == Phase.CLOSED:
            return None
        for seq in [s for s, p in self._outstanding.items() if isinstance(p.msg, Stop)]:
            del self._outstanding[seq]
        msg = Stop(reason=int(reason), seq=self._next_seq())
        self._track(msg, now)
        self.counters["stops_sent"] += 1
        return msg

    def clear(self, now: float) -> Clear | None:
        """A CLEAR (leave a latched device fault), or None before the handshake."""
        if self.phase not in (Phase.READY, Phase.SILENT):
            return None
        msg = Clear(seq=self._next_seq())
        self._track(msg, now)
        self.counters["clears_sent"] += 1
        return msg

    def tick(self, now: float) -> list[Message]:
        """Timers: HELLO resends, device liveness, ACK retries, heartbeats."""
        out: list[Message] = []
        phase = self.phase
        if phase == Phase.CLOSED:
            return out
        if phase == Phase.HANDSHAKE:
            if now - self._hello_at >= HANDSHAKE_RESEND_S:
                out.append(self._hello(now))
            if not self._handshake_late and now - self._handshake_at >= self._handshake_timeout:
                self._handshake_late = True
                self.problem = f"the device does not answer HELLO ({self._handshake_timeout * 1000:.0f} ms)"
                self.counters["handshake_timeouts"] += 1
        elif phase == Phase.MISMATCH:
            if now - self._mismatch_at >= MISMATCH_RETRY_S:
                out += self._start_handshake(now)
        elif phase == Phase.READY and now - self._last_rx >= self._device_timeout:
            self.phase = Phase.SILENT
            self.problem = f"the device is silent (no frame for {self._device_timeout * 1000:.0f} ms)"
            self.counters["device_silent"] += 1
        for seq, pending in list(self._outstanding.items()):
            if now - pending.last_sent >= self._ack_timeout:
                if pending.tries < self.config.retries:
                    pending.tries += 1
                    pending.last_sent = now
                    self.counters["ack_retries"] += 1
                    out.append(pending.msg)
                else:
                    del self._outstanding[seq]
                    self.counters["ack_timeouts"] += 1
        if self._waiting_since is not None and now - self._waiting_since >= self._ack_deadline:
            if not self.acks_lost:
                self.acks_lost = True
                self.counters["acks_lost"] += 1
            if now - self._last_probe >= ACK_PROBE_S:
                self._last_probe = now
                probe = self.stop(StopReason.HOST_ERROR, now)
                if probe is not None:
                    out.append(probe)
        if self.phase in (Phase.READY, Phase.SILENT) and not out and now - self._last_tx >= self.heartbeat_s:
            out.append(Heartbeat(uptime_ms=int(now * 1000) & 0xFFFFFFFF, seq=self._next_seq()))
            self.counters["heartbeats_sent"] += 1
        if out:
            self._last_tx = now
        return out

    def sent(self, now: float) -> None:
        """Frames were written at ``now`` (feeds the heartbeat timer)."""
        self._last_tx = now

    # -- internals ---------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        seq, self._seq = self._seq, (self._seq + 1) & 0xFFFF
        return seq

    def _track(self, msg: Message, now: float) -> None:
        self._outstanding[msg.seq] = _Pending(msg, now, now)
        if self._waiting_since is None:
            self._waiting_since = now
        self._last_tx = now

    def _hello(self, now: float) -> Hello:
        self._hello_at = now
        self._last_tx = now
        self.counters["hellos_sent"] += 1
        return host_hello(seq=self._next_seq())

    def _start_handshake(self, now: float) -> list[Message]:
        self._reset_session()
        self.phase = Phase.HANDSHAKE
        self.problem = "handshake"
        self._handshake_at = now
        self._last_rx = now
        return [self._hello(now)]

    def _mismatch(self, problem: str, now: float) -> list[Message]:
        if self.phase == Phase.MISMATCH:
            return []  # the FAULT that follows a mismatching HELLO: keep the first, precise reason
        self._reset_session()
        self.phase = Phase.MISMATCH
        self.problem = problem
        self._mismatch_at = now
        self.counters["handshake_mismatches"] += 1
        return []
