"""The control socket: ZeroMQ on ``ipc://<runtime dir>/control.sock``, mode 0600.

One JSON object per request, ``{"cmd": NAME, ...}``; one JSON object per answer,
``{"ok": true|false, ...}`` (``"error"`` says why not). Commands (see docs/controller.md):
:data:`COMMANDS`. :class:`ControlClient` is the one client (``myhand-controller ctl`` through
:func:`request`, ``metaemg-calibrate``): a REQ socket. The server is a ROUTER socket that handles
each request in its own task, so a slow one (a reload loading a large model file) never delays
``pause`` or ``stop``. A request is at most :data:`MAX_REQUEST` bytes and :data:`MAX_DEPTH`
levels of nesting; anything else is answered with an error, never a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import zmq
import zmq.asyncio

from controller.monitor import bind
from metaemg.errors import ConfigError, MetaEMGError
from metaemg.trust import check_socket_dir, private_dir

COMMANDS = ("status", "pause", "resume", "reload", "session", "clear", "cue", "rebind", "stop")
MAX_REQUEST = 64 * 1024
MAX_DEPTH = 8  # a request's JSON nesting (a cue is an object in the request: 2 levels)

Handler = Callable[[dict], Awaitable[dict]]


class ControlError(MetaEMGError):
    """The control socket cannot be reached or answered badly."""


def ipc_path(endpoint: str) -> Path:
    return Path(endpoint[len("ipc://") :])


def parse_request(raw: bytes) -> dict:
    """A request's JSON object, checked (ValueError says what is wrong)."""
    if len(raw) > MAX_REQUEST:
        raise ValueError(f"a request is at most {MAX_REQUEST} bytes, got {len(raw)}")
    try:
        request = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise ValueError(f"a request is nested at most {MAX_DEPTH} levels deep") from None
    if _too_deep(request):
        raise ValueError(f"a request is nested at most {MAX_DEPTH} levels deep")
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        raise ValueError('a request is a JSON object with a "cmd" string')
    if request["cmd"] not in COMMANDS:
        raise ValueError(f"unknown cmd {request['cmd']!r} (known: {', '.join(COMMANDS)})")
    return request


def _too_deep(value: object) -> bool:
    """Whether JSON ``value`` nests more than MAX_DEPTH levels (iterative: no recursion limit)."""
    level = [value]
    for _ in range(MAX_DEPTH + 1):
        level = [c for v in level if isinstance(v, dict | list) for c in (v.values() if isinstance(v, dict) else v)]
        if not level:
            return False
    return True


class ControlServer:
    def __init__(self, endpoint: str, context: zmq.asyncio.Context, handler: Handler) -> None:
        self.path = ipc_path(endpoint)
        self._handler = handler
        private_dir(self.path.parent, "control socket directory")
        if self.path.exists() or self.path.is_symlink():
            if _answers(endpoint):
                raise ConfigError(f"control endpoint {endpoint}: another myhand-controller answers there")
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # left over by a process that was killed
        self._socket = context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST)
        old = os.umask(0o077)  # the socket file is 0600 from its creation, not only after chmod
        try:
            self.endpoint = bind(self._socket, endpoint, "control")
        except ConfigError:
            self._socket.close(linger=0)
            raise
        finally:
            os.umask(old)
        self.requests = 0
        self._pending: set[asyncio.Task] = set()

    async def serve(self) -> None:
        try:
            while True:
                frames = await self._socket.recv_multipart()
                if len(frames) != 3 or frames[1] != b"":
                    continue  # not a REQ client's envelope: nobody to answer
                self.requests += 1
                task = asyncio.get_running_loop().create_task(self._answer(frames[0], frames[2]))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
        finally:
            for task in list(self._pending):
                task.cancel()

    async def _answer(self, identity: bytes, raw: bytes) -> None:
        try:
            answer = await self._handler(parse_request(raw))
        except (ValueError, UnicodeDecodeError, MetaEMGError) as exc:
            answer = {"ok": False, "error": str(exc)}
        except asyncio.CancelledError:
            answer = {"ok": False, "error": "shutting down"}
        except Exception as exc:  # a bug: answer, then let the loop's exception handler stop the daemon
            answer = {"ok": False, "error": f"internal error: {type(exc).__name__}"}
            asyncio.get_running_loop().call_exception_handler({"message": "control request failed", "exception": exc})
        with contextlib.suppress(zmq.ZMQError):
            await self._socket.send_multipart([identity, b"", json.dumps(answer, default=str).encode()])

    def close(self) -> None:
        for task in list(self._pending):
            task.cancel()
        self._socket.close(linger=0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _answers(endpoint: str, timeout_s: float = 0.3) -> bool:
    try:
        request(endpoint, {"cmd": "status"}, timeout_s=timeout_s)
    except ControlError:
        return False
    return True


class ControlClient:
    """The one client of the control socket: a REQ socket, one JSON object out, one back.

    A REQ socket that got no answer cannot send again, so it is replaced after a timeout or an
    error. One client per thread (ZeroMQ sockets are not thread-safe); ``context`` defaults to the
    process's shared one. Raises :class:`ControlError` when there is no answer or a bad one.
    """

    def __init__(self, endpoint: str, *, timeout_s: float = 3.0, context: zmq.Context | None = None) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._context = context or zmq.Context.instance()
        self._sock: zmq.Socket | None = None

    def request(self, req: dict) -> dict:
        endpoint = self.endpoint
        if self._sock is None:
            self._sock = self._context.socket(zmq.REQ)
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.connect(endpoint)
        sock = self._sock
        try:
            sock.send(json.dumps(req).encode())
            if not sock.poll(int(self.timeout_s * 1000)):
                raise ControlError(f"{endpoint}: no answer within {self.timeout_s:g} s")
            answer = json.loads(sock.recv().decode("utf-8"))
        except zmq.ZMQError as exc:
            self.close()
            raise ControlError(f"{endpoint}: {exc}") from None
        except ValueError as exc:  # not JSON, or not UTF-8
            raise ControlError(f"{endpoint}: the answer is not JSON: {exc}") from None
        except ControlError:
            self.close()
            raise
        if not isinstance(answer, dict):
            raise ControlError(f"{endpoint}: the answer is not a JSON object")
        return answer

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request(endpoint: str, req: dict, *, timeout_s: float = 3.0) -> dict:
    """Send one request to a running daemon and return its answer (ControlError if none,
    ConfigError if its socket lies in a directory other users control)."""
    if not check_socket_dir(endpoint):
        raise ControlError(f"{endpoint}: no control socket (is myhand-controller running?)")
    with ControlClient(endpoint, timeout_s=timeout_s) as client:
        return client.request(req)
