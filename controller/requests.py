"""The daemon's control requests (the control socket's commands, docs/controller.md "Control
socket") and its sessions per patient (:mod:`metaemg.patients`): a part of
:class:`controller.daemon.Controller`, kept apart from its hot path and its loop.

Each handler but ``reload``'s and ``session``'s runs under the controller's lock with the time of
the request; those two are coroutines that take the lock for their swap only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from controller.states import HELD_CHECK, HELD_NO_SESSION
from metaemg.errors import ConfigError, DataError, ModelError
from metaemg.modelfile import OnnxModel, default_model_path, shipped_model_for
from metaemg.patients import (
    Session,
    check_patient,
    describe,
    end_session,
    find_model,
    latest_model,
    new_session,
    read_session,
    write_session,
)

if TYPE_CHECKING:
    from controller.config import Config
    from controller.link import Link
    from controller.monitor import Monitor
    from controller.policy import Policy
    from controller.source import LslSource
    from controller.states import StateMachine
    from metaemg.lsl import StreamDesc

log = structlog.get_logger("controller")
HELD_NO_SESSION_NEXT = "open one for the patient (the console, or myhand-controller ctl session ID)"


class ControlRequests:
    """The control socket's commands and the session, as methods of the controller."""

    if TYPE_CHECKING:  # the controller's, which these methods share
        config: Config
        counters: Counter
        _lock: threading.RLock
        _clock: Callable[[], float]
        paused: bool
        policy: Policy
        sm: StateMachine
        link: Link
        source: LslSource
        monitor: Monitor | None
        model: OnnxModel | None
        model_path: Path
        sessions: Path | None
        session: Session | None
        _held: str | None
        _stream: StreamDesc | None
        _auto_model: bool
        _auto_model_configured: bool

        def _evaluate(self, now: float) -> None: ...
        def _status(self, now: float) -> dict: ...
        def _model_fields(self) -> dict: ...
        def request_stop(self, why: str = "request", exit_code: int = 0) -> None: ...
        async def reload(self, path: str | None = None, *, reason: str = "request") -> dict: ...

    async def _handle_control(self, req: dict) -> dict:
        """One request from the control socket (already parsed and checked against
        :data:`controller.control.COMMANDS`), by the table :meth:`_control_table`."""
        cmd = req["cmd"]
        handler, allowed = self._control_table()[cmd]
        extra = sorted(set(req) - {"cmd"} - set(allowed))
        if extra:
            return {"ok": False, "error": f"{cmd}: unexpected field(s) {', '.join(extra)}"}
        self.counters["control_requests"] += 1
        if cmd != "status":
            log.info("control", cmd=cmd, **{k: v for k, v in req.items() if k in allowed and k != "cue"})
        if cmd in ("reload", "session"):  # await the load in a worker thread; take the lock for the swap only
            return await handler(req)
        with self._lock:
            return handler(req, self._clock())

    def _control_table(self) -> dict:
        """command -> (handler, the fields it takes besides cmd); its keys are control.COMMANDS.
        Each handler but reload's and session's runs under the lock, with the time of the request;
        those two are coroutines of the request alone."""
        return {
            "status": (self._ctl_status, ()),
            "pause": (self._ctl_pause, ()),
            "resume": (self._ctl_resume, ()),
            "reload": (self._ctl_reload, ("path",)),
            "session": (self._ctl_session, ("patient", "end")),
            "clear": (self._ctl_clear, ()),
            "cue": (self._ctl_cue, ("cue",)),
            "rebind": (self._ctl_rebind, ()),
            "stop": (self._ctl_stop, ()),
        }

    def _ctl_status(self, req: dict, now: float) -> dict:
        return {"ok": True, "status": self._status(now)}

    def _ctl_pause(self, req: dict, now: float) -> dict:
        self.paused = True
        self._evaluate(now)
        return {"ok": True, "state": self.sm.state.value}

    def _ctl_resume(self, req: dict, now: float) -> dict:
        if self.sessions is not None:  # in a session, resuming keeps its model: the hand may move
            if self.session is None:
                return {"ok": False, "error": f"no patient session is open: {HELD_NO_SESSION_NEXT}"}
            if not self.session.kept:
                self.session = dataclasses.replace(self.session, kept=True)
                write_session(self.sessions, self.session)
            self._held = None
        if self.paused:
            self.paused = False
            self.policy.restart(now)
            self._evaluate(now)
        return {"ok": True, "state": self.sm.state.value}

    async def _ctl_session(self, req: dict) -> dict:
        """Open a session for ``patient`` (its newest calibrated model, else the base model; held
        until kept with ``resume`` or a calibration), or ``end`` it (held, the base model)."""
        if self.sessions is None:
            return {"ok": False, "error": "session: sessions are off (session.state_dir is null in the configuration)"}
        end, patient = req.get("end"), req.get("patient")
        if (end is True) == (patient is not None) or end not in (None, True):
            return {"ok": False, "error": "session: give patient=ID to open one, or end=true to end it"}
        if not isinstance(patient, str | None):
            return {"ok": False, "error": "session: patient must be a string"}
        try:
            check_patient(patient, "session: patient")
        except ConfigError as exc:
            return {"ok": False, "error": str(exc)}
        found = None if patient is None else await asyncio.to_thread(latest_model, self.sessions, patient)
        with self._lock:  # held from now on, whatever follows
            self.paused = True
            was = self.session
            self.session = None if patient is None else new_session(patient, None)
            self._held = HELD_NO_SESSION if end else HELD_CHECK
            self._evaluate(self._clock())
        if end:
            await asyncio.to_thread(end_session, self.sessions)
        target = found[0] if found is not None else self._base_path()
        answer = await self.reload(str(target), reason="session ended" if end else f"session {patient}")
        if not answer["ok"]:  # the model left loaded may be another patient's: no session then
            with self._lock:
                self.session, self._held = None, HELD_NO_SESSION
                self._evaluate(self._clock())
            await asyncio.to_thread(end_session, self.sessions)
            return {"ok": False, "error": f"session: {answer['error']}"}
        if self.session is not None:
            await asyncio.to_thread(write_session, self.sessions, self.session)
        with self._lock:
            log.info(
                "session_ended" if end else "session_opened",
                patient=patient if patient else (was.patient if was else None),
                **self._model_fields(),
            )
            assert self.monitor is not None
            self.monitor.publish("event", {"event": "session", "session": self._session_status()})
            return {"ok": True, "session": self._session_status()}

    def _base_path(self) -> Path:
        """The model a session starts from when its patient has none: the configured model, else
        the packaged one that fits the armband (the default until one connects)."""
        if not self._auto_model_configured:
            return self.config.model.resolved_path()
        if self._stream is not None:
            with contextlib.suppress(ModelError):
                return shipped_model_for(self._stream.rate, self._stream.channels)
        return default_model_path()

    def _reopen_session(self) -> None:
        """At start: the open session's model (a restart within a session), else held."""
        assert self.sessions is not None
        try:
            session = read_session(self.sessions)
        except DataError as exc:
            log.error("session_unreadable", error=str(exc))
            session = None
        self.paused, self._held = True, HELD_NO_SESSION
        if session is None:
            log.info("session_none", hold=HELD_NO_SESSION)
            return
        found = find_model(self.sessions, session.model_id) if session.model_id else None
        if session.model_id and found is None:  # its model is gone: the base model, and calibrate
            log.error("session_model_missing", patient=session.patient, model_id=session.model_id)
            session = dataclasses.replace(session, model_id=None, kept=False)
        self.session = session
        if found is not None:
            self.model_path, self._auto_model = found[0], False
        self.paused = not session.kept
        self._held = None if session.kept else HELD_CHECK
        log.info("session_reopened", patient=session.patient, model_id=session.model_id, kept=session.kept)

    def _check_patient(self, model: OnnxModel) -> None:
        """With sessions, a calibrated model runs only in its own patient's session."""
        if self.sessions is None or model.info.calibration is None:
            return
        patient = model.info.calibration.get("patient")
        if self.session is None:
            raise ModelError(f"model {model.info.model_id} is patient {patient}'s and no patient session is open")
        if patient != self.session.patient:
            raise ModelError(
                f"model {model.info.model_id} was calibrated for patient {patient}; this session is "
                f"{self.session.patient}'s: refused"
            )

    def _session_status(self) -> dict | None:
        if self.sessions is None:
            return None
        model = None if self.model is None else describe(self.model.info)
        if self.session is None:
            return {"patient": None, "opened": None, "kept": False, "model": model}
        return {
            "patient": self.session.patient,
            "opened": self.session.opened,
            "kept": self.session.kept,
            "model": model,
        }

    async def _ctl_reload(self, req: dict) -> dict:
        path = req.get("path")
        if path is not None and (not isinstance(path, str) or not path):
            return {"ok": False, "error": "reload: path must be a non-empty string"}
        if path is not None and not Path(path).expanduser().is_absolute():
            return {
                "ok": False,
                "error": f"reload: path must be absolute (the daemon's working directory is not "
                f"the caller's), got {path!r}",
            }
        return await self.reload(path, reason="control")

    def _ctl_clear(self, req: dict, now: float) -> dict:
        seq = self.link.send_clear(now)
        if seq is None:
            return {"ok": False, "error": f"the link is not ready ({self.link.proto.phase.value})"}
        return {"ok": True, "seq": seq}

    def _ctl_cue(self, req: dict, now: float) -> dict:
        cue = req.get("cue")
        if not isinstance(cue, dict):
            return {"ok": False, "error": "cue: 'cue' must be a JSON object"}
        assert self.monitor is not None  # set by run() before the control server
        self.monitor.publish("cue", {"cue": cue, "source": "control"})
        return {"ok": True}

    def _ctl_rebind(self, req: dict, now: float) -> dict:
        """The operator accepts another armband: forget the one this daemon follows."""
        was = self.source.rebind()
        log.warning("stream_rebind", was=None if was is None else list(was))
        return {"ok": True, "was": None if was is None else {"source_id": was[0], "host": was[1]}}

    def _ctl_stop(self, req: dict, now: float) -> dict:
        self.request_stop("control")
        return {"ok": True, "state": "stopping"}
