"""The daemon's states: one explicit, pure state machine.

The state is derived, on every control-loop tick and after every event, from a snapshot of the
conditions (:class:`Conditions`) by :func:`derive`, in this order of precedence:

=====================  ===================================================  ===================
state                  when                                                 safe reaction
=====================  ===================================================  ===================
``stopping``           SIGTERM/SIGINT or the ``stop`` control command       STOP (host shutdown)
``fault``              device FAULT latched, schema/version mismatch, no    STOP (host error);
                       ACKs from the device                                 CLEAR only on request
``waiting_for_link``   port missing/unplugged, handshake pending, device    none possible; the
                       silent                                               device's watchdog and
                                                                            TTL make it safe
``waiting_for_stream`` no armband stream, or one that does not match the    STOP (signal lost)
                       model
``paused``             the ``pause`` control command, or no patient         STOP (operator)
                       session yet / its model not yet kept (the reason)
``stale``              no samples for ``stale_ms``, NaN/Inf/saturated       STOP (signal lost)
                       input, a model error, or re-arming
``running``            everything good: commands follow the policy
``starting``           before the first evaluation
=====================  ===================================================  ===================

Every state but ``running`` commands the safe state: the daemon sends STOP on entering it (when
the link can carry it) and no COMMAND while in it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from firmware_protocol import StopReason


class DaemonState(enum.StrEnum):
    STARTING = "starting"
    WAITING_FOR_STREAM = "waiting_for_stream"
    WAITING_FOR_LINK = "waiting_for_link"
    RUNNING = "running"
    PAUSED = "paused"
    STALE = "stale"
    FAULT = "fault"
    STOPPING = "stopping"


STOP_REASONS = {
    DaemonState.STARTING: StopReason.UNSPECIFIED,
    DaemonState.WAITING_FOR_STREAM: StopReason.SIGNAL_LOST,
    DaemonState.WAITING_FOR_LINK: StopReason.HOST_ERROR,
    DaemonState.PAUSED: StopReason.OPERATOR,
    DaemonState.STALE: StopReason.SIGNAL_LOST,
    DaemonState.FAULT: StopReason.HOST_ERROR,
    DaemonState.STOPPING: StopReason.HOST_SHUTDOWN,
}


# why the hand is held without an operator's pause, with sessions per patient (the state's reason)
HELD_NO_SESSION = "no patient session"
HELD_CHECK = "session opened: keep the model or calibrate"


@dataclass(frozen=True, slots=True)
class Conditions:
    """What the state depends on (a snapshot)."""

    stopping: bool = False
    fault: str | None = None  # device fault, protocol mismatch, missing acks (text)
    link_ready: bool = False
    link_problem: str | None = None
    stream_connected: bool = False
    stream_problem: str | None = None
    paused: bool = False
    held: str | None = None  # why the hand is held without an operator's pause (the patient session)
    armed: bool = False
    input_problem: str | None = None  # the policy's reason when disarmed


def derive(c: Conditions) -> tuple[DaemonState, str | None]:
    """The state and its reason for conditions ``c`` (see the table in the module docstring)."""
    if c.stopping:
        return DaemonState.STOPPING, "shutdown"
    if c.fault:
        return DaemonState.FAULT, c.fault
    if not c.link_ready:
        return DaemonState.WAITING_FOR_LINK, c.link_problem or "connecting"
    if not c.stream_connected:
        return DaemonState.WAITING_FOR_STREAM, c.stream_problem or "resolving"
    if c.paused:
        return DaemonState.PAUSED, c.held or "operator"
    if not c.armed:
        return DaemonState.STALE, c.input_problem or "stale"
    return DaemonState.RUNNING, None


@dataclass(frozen=True, slots=True)
class Transition:
    prev: DaemonState
    state: DaemonState
    reason: str | None
    t: float


class StateMachine:
    """Holds the current state; :meth:`update` reports each change once."""

    def __init__(self, t: float = 0.0) -> None:
        self.state = DaemonState.STARTING
        self.reason: str | None = None
        self.since = t
        self.changes = 0

    def update(self, conditions: Conditions, t: float) -> Transition | None:
        state, reason = derive(conditions)
        if state == self.state:
            self.reason = reason  # the reason may be refined without a transition
            return None
        transition = Transition(self.state, state, reason, t)
        self.state, self.reason, self.since = state, reason, t
        self.changes += 1
        return transition

    @property
    def running(self) -> bool:
        return self.state == DaemonState.RUNNING
