"""Everything calibration says to the outside: cues for a GUI, and "reload" to the daemon.

:class:`DaemonLink` is the one place that knows the wire formats, so they can change in one place:

- ``publish_cue``: with ``via_daemon`` (the default), each cue goes to the running daemon, which
  republishes it on its own monitor stream (private to its user: a GUI, the console and the
  simulated patient follow it there). A PUB socket of this process's own is opt-in
  (``cues.endpoint``: ``ipc://PATH`` in a private directory, or ``tcp://``, which any local user
  may read or take first), two frames per message as on the daemon's monitor stream: the topic
  ``cue`` and a JSON object
  ``{"schema": "metaemg.monitor/1", "topic": "cue", "t_mono", "t_wall", "source":
  "metaemg-calibrate", "cue", "index", "n_cues", "cycle", "cycles", "remaining_s",
  "total_remaining_s"}``. ``cue`` is ``countdown``, ``relax``, ``open``, ``close``, ``done`` or
  ``aborted``. Sends never block. With ``forward_cues`` and a running daemon, each cue is also
  sent as ``{"cmd": "cue", "cue": <that object>}`` on the control socket, which republishes it on
  the daemon's own monitor stream (topic ``cue``), by a background thread with a bounded queue:
  the cue loop never waits for the daemon, and forwarding stops at the first missing answer.
- ``hold`` / ``release``: ``{"cmd": "pause"}`` before a live recording, so that the orthosis holds
  still while the patient follows the cues, and ``{"cmd": "resume"}`` afterwards, only if this
  calibration paused it (a daemon paused by someone else stays paused).
- ``request_reload``: ``{"cmd": "reload", "path": ...}`` on the daemon's control socket (ZeroMQ
  REQ, ``ipc://<runtime dir>/control.sock``), waiting at most ``timeout_s``; it never hangs, and
  a daemon that is not running is a normal outcome, not an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
from dataclasses import dataclass

from metaemg.errors import ConfigError

CUE_TOPIC = "cue"  # one of controller.monitor.TOPICS, with its SCHEMA
BUSY_RETRIES = 3  # the daemon's own file watcher may be reloading the same file already


@dataclass(frozen=True)
class ReloadResult:
    """``status``: reloaded | not_running | no_answer | busy | refused."""

    status: str
    note: str
    answer: dict | None = None

    def __str__(self) -> str:
        return self.note

    def to_dict(self) -> dict:
        return {"status": self.status, "note": self.note, "answer": self.answer}


@dataclass(frozen=True)
class Hold:
    paused_by_us: bool  # release() resumes the daemon only then
    note: str


class _CueForwarder(threading.Thread):
    """Sends cues to the daemon's control socket from its own thread and REQ socket."""

    def __init__(self, context, endpoint: str, timeout_s: float):
        super().__init__(name="cue-forwarder", daemon=True)
        self._context, self._endpoint, self._timeout_s = context, endpoint, timeout_s
        self.queue: queue.Queue[dict] = queue.Queue(maxsize=64)
        self.halt = threading.Event()
        self.sent = 0
        self.failed: str | None = None

    def offer(self, message: dict) -> None:
        if self.failed is None:
            with contextlib.suppress(queue.Full):
                self.queue.put_nowait(message)

    def run(self) -> None:
        from controller.control import ControlClient, ControlError

        with ControlClient(self._endpoint, timeout_s=self._timeout_s, context=self._context) as client:
            while not self.halt.is_set():
                try:
                    message = self.queue.get(timeout=0.05)
                except queue.Empty:
                    continue
                try:
                    answer = client.request({"cmd": "cue", "cue": message})
                except ControlError as exc:
                    self.failed = "no answer" if "no answer" in str(exc) else str(exc)
                    return
                if answer.get("ok") is not True:
                    self.failed = str(answer.get("error"))
                    return
                self.sent += 1


class DaemonLink:
    def __init__(
        self,
        *,
        control_endpoint: str,
        cue_endpoint: str | None = None,
        timeout_s: float = 1.0,
        forward_cues: bool = False,
    ):
        import zmq

        self._zmq = zmq
        self._context = zmq.Context()
        self.control_endpoint = control_endpoint
        self._socket_exists()  # a control socket in a directory other users control: refused now
        self.timeout_s = timeout_s
        self.forward_cues = forward_cues
        self._forwarder: _CueForwarder | None = None
        self.cue_endpoint = None
        self._pub = None
        self.sent = self.dropped = 0
        if cue_endpoint:
            self._pub = self._context.socket(zmq.PUB)
            self._pub.setsockopt(zmq.LINGER, 0)
            self._pub.setsockopt(zmq.SNDHWM, 1000)
            try:
                self._pub.bind(cue_endpoint)
            except zmq.ZMQError as exc:
                self.close()
                raise ConfigError(
                    f"cue endpoint {cue_endpoint}: cannot bind: {exc} (is another calibration running? "
                    "set cues.endpoint or --cue-endpoint, or 'none' to publish no cues)"
                ) from None
            self.cue_endpoint = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)

    def __enter__(self) -> DaemonLink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._forwarder is not None:
            self._forwarder.halt.set()
            self._forwarder.join(self.timeout_s + 1.0)
            self._forwarder = None
        if self._pub is not None:
            self._pub.close(linger=0)
            self._pub = None
        self._context.term()

    # -- cues ------------------------------------------------------------------------------------
    def publish_cue(self, name: str, index: int, remaining_s: float, **fields: object) -> None:
        """Publish one cue message (at each cue and each countdown second); never blocks."""
        if self._pub is None and not self.forward_cues:
            return
        from controller.monitor import SCHEMA

        message = {
            "schema": SCHEMA,
            "topic": CUE_TOPIC,
            "t_mono": time.monotonic(),
            "t_wall": time.time(),
            "source": "metaemg-calibrate",
            "cue": name,
            "index": index,
            "remaining_s": round(float(remaining_s), 3),
            **fields,
        }
        if self.forward_cues:
            if self._forwarder is None and self._socket_exists():
                self._forwarder = _CueForwarder(self._context, self.control_endpoint, self.timeout_s)
                self._forwarder.start()
            if self._forwarder is not None:
                self._forwarder.offer(message)
        if self._pub is None:
            return
        try:
            self._pub.send_multipart([CUE_TOPIC.encode(), json.dumps(message).encode()], flags=self._zmq.NOBLOCK)
            self.sent += 1
        except self._zmq.Again:
            self.dropped += 1

    @property
    def forwarded(self) -> int:
        """Cues the daemon acknowledged (0 when not forwarding)."""
        return 0 if self._forwarder is None else self._forwarder.sent

    # -- hot swap --------------------------------------------------------------------------------
    def request_reload(self, path: str | os.PathLike) -> ReloadResult:
        """Ask the running daemon to load ``path`` now; see :class:`ReloadResult`."""
        endpoint = self.control_endpoint
        if not self._socket_exists():
            return ReloadResult("not_running", "daemon not running: it will load the new model at its next start")
        request = {"cmd": "reload", "path": os.path.abspath(path)}
        for _ in range(BUSY_RETRIES):
            answer = self._request(request)
            if answer is None:
                return ReloadResult(
                    "no_answer",
                    f"daemon did not answer on {endpoint} within {self.timeout_s:g} s: if it is "
                    "running, its file watcher loads the new model; otherwise it loads it at its next start",
                )
            if answer.get("ok") is True:
                now, was = answer.get("model_id"), answer.get("previous_model_id")
                return ReloadResult("reloaded", f"daemon reloaded: now running model {now} (was {was})", answer)
            if "in progress" not in str(answer.get("error", "")):
                break
            time.sleep(0.3)  # its file watcher is loading the same file; ask again for the outcome
        else:
            return ReloadResult(
                "busy",
                "daemon is busy reloading (its file watcher saw the new file); check that it runs the new "
                "model with: myhand-controller ctl status",
                answer,
            )
        return ReloadResult(
            "refused",
            f"WARNING: the daemon did not take the new model and keeps running model "
            f"{answer.get('model_id')}: {answer.get('error')}",
            answer,
        )

    # -- hold still while the patient follows the cues --------------------------------------------
    def hold(self) -> Hold:
        """Pause a running daemon (the orthosis holds still) unless it is paused already."""
        if not self._socket_exists():
            return Hold(False, f"daemon not running (no control socket at {self.control_endpoint}; nothing to pause)")
        status = self._request({"cmd": "status"})
        if status is None:
            return Hold(
                False,
                f"WARNING: the daemon did not answer on {self.control_endpoint}; it could not be "
                "paused: make sure the orthosis is not driven during the recording",
            )
        if (status.get("status") or {}).get("paused"):
            return Hold(False, "daemon already paused: it stays paused")
        answer = self._request({"cmd": "pause"})
        if answer is not None and answer.get("ok") is True:
            return Hold(True, "daemon paused while the patient follows the cues (the orthosis holds still)")
        why = "no answer" if answer is None else answer.get("error")
        return Hold(
            False,
            f"WARNING: the daemon could not be paused ({why}): make sure the orthosis is not "
            "driven during the recording",
        )

    def release(self, hold: Hold) -> str | None:
        """Resume the daemon if :meth:`hold` paused it; returns a note (None if nothing to do)."""
        if not hold.paused_by_us:
            return None
        answer = self._request({"cmd": "resume"})
        if answer is not None and answer.get("ok") is True:
            return "daemon resumed"
        why = "no answer" if answer is None else answer.get("error")
        return f"WARNING: the daemon could not be resumed ({why}): resume it with: {self.resume_command()}"

    def resume_command(self) -> str:
        """The shell command that resumes this daemon, from any working directory and user
        environment (the control endpoint given outright)."""
        return f"myhand-controller ctl --control {self.control_endpoint} resume"

    def paused(self) -> bool | None:
        """Whether the running daemon is paused (None: not running or no answer)."""
        if not self._socket_exists():
            return None
        status = self._request({"cmd": "status"})
        if status is None:
            return None
        return bool((status.get("status") or {}).get("paused"))

    def status(self) -> dict | None:
        """The running daemon's status, or None when no daemon answers."""
        if not self._socket_exists():
            return None
        answer = self._request({"cmd": "status"})
        return None if answer is None else (answer.get("status") or {})

    @staticmethod
    def armband(status: dict) -> tuple[str | None, tuple[str, str] | None]:
        """The armband a daemon with ``status`` reads: ``(stream name, (source id, host))``
        (either None when it has not read one yet)."""
        inp = status.get("input") or {}
        name = (inp.get("stream") or {}).get("name")
        bound = inp.get("bound_to") or {}
        sid, host = bound.get("source_id"), bound.get("host")
        identity = (sid, host) if isinstance(sid, str) and isinstance(host, str) else None
        return (name if isinstance(name, str) else None), identity

    def open_session(self, patient: str) -> dict:
        """Ask the daemon to open a session for ``patient`` (its answer; ok false when none)."""
        return self._request({"cmd": "session", "patient": patient}) or {"ok": False, "error": "no answer"}

    def _socket_exists(self) -> bool:
        from metaemg.trust import check_socket_dir

        return check_socket_dir(self.control_endpoint)

    def _request(self, request: dict) -> dict | None:
        """The daemon's answer, or None when it gives none (not running, busy, a bad answer)."""
        from controller.control import ControlClient, ControlError

        try:
            with ControlClient(self.control_endpoint, timeout_s=self.timeout_s, context=self._context) as client:
                return client.request(request)
        except ControlError:
            return None
