"""The monitor stream: a ZeroMQ PUB socket, two frames per message (topic, JSON).

Every JSON message carries ``schema`` (:data:`SCHEMA`), ``topic``, ``t_mono``
(``time.monotonic()`` of the daemon, seconds; on Linux the same clock as LSL's ``local_clock``
and the simulator log's ``t``) and ``t_wall`` (Unix time, seconds). The topics and their fields
are documented in docs/controller.md. Sends never block: a PUB socket drops messages for a slow
subscriber once its high-water mark is reached.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket as stdsocket
import time
from pathlib import Path

import zmq

from controller.config import MonitorConfig
from metaemg.errors import ConfigError
from metaemg.trust import check_socket_dir, private_dir

SCHEMA = "metaemg.monitor/1"
TOPICS = ("decision", "status", "emg", "cue", "event")


def percentiles(values) -> dict[str, float] | None:
    """The monitor's one rule for latency percentiles (the terminal monitor's and the console's):
    the sorted value at the nearest rank ``round(p * (n - 1))``, rounding halves up; None for none."""
    xs = sorted(values)
    if not xs:
        return None

    def at(p: float) -> float:
        return xs[min(len(xs) - 1, int(p * (len(xs) - 1) + 0.5))]

    return {"p50": at(0.5), "p95": at(0.95), "p99": at(0.99), "max": xs[-1]}


def _clean(value):
    """JSON-safe copy: NaN/Inf become null (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def encode(topic: str, payload: dict, t_mono: float | None = None) -> list[bytes]:
    message = {
        "schema": SCHEMA,
        "topic": topic,
        "t_mono": time.monotonic() if t_mono is None else t_mono,
        "t_wall": time.time(),
        **payload,
    }
    try:
        text = json.dumps(message, separators=(",", ":"), allow_nan=False)
    except ValueError:
        text = json.dumps(_clean(message), separators=(",", ":"))
    return [topic.encode(), text.encode()]


def bind(socket: zmq.Socket, endpoint: str, what: str) -> str:
    """Bind ``endpoint``; one-line ConfigError if not. An ``ipc://`` socket goes in a trusted
    directory (:mod:`metaemg.trust`, created 0700) and never replaces one another process is
    still bound to (ZeroMQ would silently take the path over); a leftover file of a process that
    died is removed."""
    if endpoint.startswith("ipc://"):
        path = Path(endpoint[len("ipc://") :])
        private_dir(path.parent, f"{what} socket directory")
        if path.exists() or path.is_symlink():
            probe = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:  # refused or not a socket: nobody is there
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            else:
                raise ConfigError(
                    f"{what} endpoint {endpoint}: another process is bound there (another myhand-controller?)"
                )
            finally:
                probe.close()
    try:
        socket.bind(endpoint)
    except zmq.ZMQError as exc:
        raise ConfigError(f"{what} endpoint {endpoint}: cannot bind: {exc}") from None
    if endpoint.startswith("ipc://"):
        os.chmod(endpoint[len("ipc://") :], 0o600)  # the service's user only (the directory is 0700 too)
    return socket.getsockopt_string(zmq.LAST_ENDPOINT)


class Monitor:
    def __init__(self, config: MonitorConfig, context: zmq.Context, endpoint: str | None = None) -> None:
        """``endpoint``: where to publish (``Config.monitor_endpoint()``; default ``config.endpoint``)."""
        self.config = config
        endpoint = endpoint or config.endpoint
        if not endpoint:
            raise ConfigError("monitor: no endpoint (Config.monitor_endpoint() resolves the default)")
        self._socket = context.socket(zmq.PUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SNDHWM, config.hwm)
        old_umask = os.umask(0o077)  # an ipc socket file is 0600 from its creation
        try:
            self.endpoint = bind(self._socket, endpoint, "monitor")
        except ConfigError:
            self._socket.close(linger=0)  # an open socket would make the context's term() wait
            raise
        finally:
            os.umask(old_umask)
        self.sent = 0
        self.dropped = 0

    def publish(self, topic: str, payload: dict, t_mono: float | None = None) -> None:
        try:
            self._socket.send_multipart(encode(topic, payload, t_mono), flags=zmq.NOBLOCK)
            self.sent += 1
        except zmq.Again:
            self.dropped += 1

    def close(self) -> None:
        self._socket.close(linger=0)
        if self.endpoint.startswith("ipc://"):
            try:
                os.unlink(self.endpoint[len("ipc://") :])
            except OSError:
                pass


def subscribe(context: zmq.Context, endpoint: str, topics: tuple[str, ...] = ("",)) -> zmq.Socket | None:
    """A SUB socket on the monitor stream at ``endpoint`` (every client's way in), or None while an
    ``ipc://`` socket is not there yet: connected earlier, ZeroMQ would follow whatever socket
    appeared at the path later. ConfigError when its directory is not trusted
    (:func:`metaemg.trust.check_socket_dir`, the control socket's rule)."""
    if not check_socket_dir(endpoint, "monitor socket directory"):
        return None
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    for topic in topics:
        sock.setsockopt_string(zmq.SUBSCRIBE, topic)
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close()
        raise ConfigError(f"cannot connect to monitor endpoint {endpoint!r}: {exc}") from None
    return sock
