"""The control socket: ZeroMQ REP on ``ipc://<runtime dir>/control.sock``, mode 0600.

One JSON object per request, ``{"cmd": NAME, ...}``; one JSON object per answer,
``{"ok": true|false, ...}`` (``"error"`` says why not). Commands (see docs/controller.md):
``status``, ``pause``, ``resume``, ``reload`` [``path``], ``clear``, ``cue`` ``cue``, ``stop``.
:func:`request` is the client (used by ``myhand-controller ctl``).
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

from metaemg.errors import ConfigError, MetaEMGError

from controller.monitor import bind

COMMANDS = ("status", "pause", "resume", "reload", "clear", "cue", "stop")
MAX_REQUEST = 64 * 1024

Handler = Callable[[dict], Awaitable[dict]]


class ControlError(MetaEMGError):
    """The control socket cannot be reached or answered badly."""


def ipc_path(endpoint: str) -> Path:
    return Path(endpoint[len("ipc://"):])


class ControlServer:
    def __init__(self, endpoint: str, context: zmq.asyncio.Context, handler: Handler) -> None:
        self.path = ipc_path(endpoint)
        self._handler = handler
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if _answers(endpoint):
                raise ConfigError(f"control endpoint {endpoint}: another myhand-controller answers there")
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # left over by a process that was killed
        self._socket = context.socket(zmq.REP)
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
        os.chmod(self.path, 0o600)
        self.requests = 0

    async def serve(self) -> None:
        while True:
            raw = await self._socket.recv()
            self.requests += 1
            try:
                request = json.loads(raw.decode("utf-8"))
                if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
                    raise ValueError('a request is a JSON object with a "cmd" string')
                if request["cmd"] not in COMMANDS:
                    raise ValueError(f"unknown cmd {request['cmd']!r} (known: {', '.join(COMMANDS)})")
                answer = await self._handler(request)
            except (ValueError, UnicodeDecodeError, MetaEMGError) as exc:
                answer = {"ok": False, "error": str(exc)}
            except asyncio.CancelledError:
                await self._socket.send(json.dumps({"ok": False, "error": "shutting down"}).encode())
                raise
            await self._socket.send(json.dumps(answer, default=str).encode())

    def close(self) -> None:
        self._socket.close(linger=0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _answers(endpoint: str, timeout_s: float = 0.3) -> bool:
    try:
        request(endpoint, {"cmd": "status"}, timeout_s=timeout_s)
    except ControlError:
        return False
    return True


def request(endpoint: str, req: dict, *, timeout_s: float = 3.0) -> dict:
    """Send one request to a running daemon and return its answer (ControlError if none)."""
    if endpoint.startswith("ipc://") and not ipc_path(endpoint).exists():
        raise ControlError(f"{endpoint}: no control socket (is myhand-controller running?)")
    context = zmq.Context.instance()
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(json.dumps(req).encode())
        if not sock.poll(int(timeout_s * 1000)):
            raise ControlError(f"{endpoint}: no answer within {timeout_s:g} s")
        answer = json.loads(sock.recv().decode("utf-8"))
    except zmq.ZMQError as exc:
        raise ControlError(f"{endpoint}: {exc}") from None
    except ValueError as exc:
        raise ControlError(f"{endpoint}: the answer is not JSON: {exc}") from None
    finally:
        sock.close(linger=0)
    if not isinstance(answer, dict):
        raise ControlError(f"{endpoint}: the answer is not a JSON object")
    return answer
