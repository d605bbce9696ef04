"""Byte pipes to the orthosis, opened by URL.

=====================================  =========================================================
URL                                    transport
=====================================  =========================================================
``/dev/ttyACM0``, ``/dev/myhand``,     :class:`SerialTransport`: a serial device (USB CDC ACM, a
``/dev/pts/5``, ``serial:///dev/x``    udev symlink, or a pty slave), opened with pyserial
``pty://``                             :class:`PtyTransport`: a new pseudo-terminal; this object
                                       is the master end, ``slave_path`` is for the other party
``loop://`` / ``loop://NAME``          :class:`LoopTransport`: an in-process pair (socketpair);
                                       ``loop://`` returns one end with the other in ``.peer``;
                                       two opens of the same ``loop://NAME`` get the two ends
=====================================  =========================================================

Every transport is non-blocking underneath and has a ``fileno()`` for select/poll or
``asyncio.loop.add_reader``. :meth:`Transport.read` and :meth:`Transport.write` take timeouts.
When the link goes away (unplugged, pty master closed, peer end closed) they raise
:class:`~firmware_protocol.errors.LinkLost`; close the transport and open the same URL again,
which raises :class:`~firmware_protocol.errors.LinkUnavailable` until the device is back.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import socket
import threading
import time
import tty
from abc import ABC, abstractmethod
from collections.abc import Callable

from firmware_protocol.errors import (
    LinkBusy,
    LinkLost,
    LinkTimeout,
    LinkUnavailable,
    TransportClosedError,
    TransportUrlError,
)

DEFAULT_BAUDRATE = 115200
READ_SIZE = 4096
_POLL_IN = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR
_POLL_OUT = select.POLLOUT | select.POLLHUP | select.POLLERR


class Transport(ABC):
    """A bidirectional byte pipe. The base class owns timeouts and the closed check; backends
    implement :meth:`_read_ready` (read once after poll reported readiness), :meth:`_write_some`
    and :meth:`_close`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._closed = False

    # -- public contract ------------------------------------------------------------------------

    @abstractmethod
    def fileno(self) -> int:
        """The file descriptor to wait on for reading."""

    @property
    def closed(self) -> bool:
        return self._closed

    def read(self, timeout: float | None = 0.0, max_bytes: int = READ_SIZE) -> bytes:
        """Return the bytes available now, waiting up to ``timeout`` s (None: forever) for some.

        Returns ``b""`` if nothing arrived in time. Raises LinkLost if the link went away.
        """
        self._check_open()
        if not self._wait(_POLL_IN, timeout):
            return b""
        return self._read_ready(max_bytes)

    def write(self, data: bytes, timeout: float | None = 1.0) -> None:
        """Write all of ``data``, waiting up to ``timeout`` s (None: forever) for buffer space.

        Raises LinkTimeout if the peer does not drain the buffer in time (part of ``data`` may
        have been written; the next frame's leading delimiter resynchronises the receiver), and
        LinkLost if the link went away.
        """
        self._check_open()
        view = memoryview(bytes(data))
        deadline = None if timeout is None else time.monotonic() + timeout
        while view:
            n = self._write_some(view)
            view = view[n:]
            if not view:
                break
            if n == 0:
                left = None if deadline is None else deadline - time.monotonic()
                if (left is not None and left <= 0) or not self._wait(_POLL_OUT, left):
                    raise LinkTimeout(f"{self.url}: write of {len(data)} bytes timed out")

    def close(self) -> None:
        """Release the link. Idempotent; never raises."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(OSError):
                self._close()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.url} {state}>"

    # -- backend hooks --------------------------------------------------------------------------

    def _read_ready(self, max_bytes: int) -> bytes:
        """Read after poll reported readiness: data, or raise LinkLost (EOF, EIO, reset).
        By default ``os.read`` on :meth:`fileno` (a device or pty file descriptor)."""
        return _fd_read(self.fileno(), max_bytes, self.url)

    def _write_some(self, data: memoryview) -> int:
        """Write without blocking; return the count written (0 if the buffer is full).
        By default ``os.write`` on :meth:`fileno`."""
        return _fd_write(self.fileno(), data, self.url)

    @abstractmethod
    def _close(self) -> None:
        """Release the OS resources."""

    # -- helpers --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosedError(f"{self.url}: transport is closed")

    def _wait(self, events: int, timeout: float | None) -> bool:
        poller = select.poll()
        poller.register(self.fileno(), events)
        ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        while True:
            try:
                return bool(poller.poll(ms))
            except InterruptedError:  # pragma: no cover - PEP 475 retries already
                continue


def _fd_read(fd: int, max_bytes: int, url: str) -> bytes:
    """os.read after readiness: no data means EOF, EIO means the other side is gone."""
    try:
        data = os.read(fd, max_bytes)
    except BlockingIOError:
        return b""
    except OSError as exc:
        raise LinkLost(f"{url}: read failed: {exc.strerror or exc}") from exc
    if not data:
        raise LinkLost(f"{url}: end of file (device unplugged or peer closed)")
    return data


def _fd_write(fd: int, data: memoryview, url: str) -> int:
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
    except OSError as exc:
        raise LinkLost(f"{url}: write failed: {exc.strerror or exc}") from exc


class SerialTransport(Transport):
    """A serial device or pty slave, configured by pyserial (raw 8N1, exclusive lock, input
    flushed on open); reads and writes go straight to its non-blocking fd."""

    def __init__(self, path: str, baudrate: int = DEFAULT_BAUDRATE, *, url: str | None = None):
        super().__init__(url or path)
        self.path = path
        try:
            import serial
        except ImportError as exc:  # pragma: no cover - depends on the installation
            from metaemg.errors import MissingDependencyError

            raise MissingDependencyError("serial devices need pyserial: pip install 'metaemg[device]'") from exc
        if not os.path.exists(path):
            raise LinkUnavailable(f"{path}: no such device")
        try:
            self._serial = serial.Serial(path, baudrate, timeout=0, write_timeout=0)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise LinkUnavailable(f"{path}: cannot open: {exc}") from exc
        self._fd = self._serial.fileno()
        try:  # exclusive: the lock pyserial's exclusive=True takes, with its own error
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._serial.close()
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise LinkBusy(f"{path}: in use by another process (another controller on this orthosis?)") from None
            raise LinkUnavailable(f"{path}: cannot lock: {exc.strerror or exc}") from exc
        self._serial.reset_input_buffer()  # drop whatever queued while nobody listened

    def fileno(self) -> int:
        return self._fd

    def _close(self) -> None:
        self._serial.close()


class PtyTransport(Transport):
    """A fresh pseudo-terminal; this object is the master (device) end.

    The slave is put in raw mode (no echo, no CR/LF translation) and kept open here, so the
    other party can open and close ``slave_path`` freely. :meth:`close` closes both ends: a
    party holding the slave then reads EOF or EIO, exactly like an unplugged USB device.
    """

    def __init__(self, url: str = "pty://") -> None:
        super().__init__(url)
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.slave_path = os.ttyname(self._slave)

    def fileno(self) -> int:
        return self._master

    def _close(self) -> None:
        try:
            os.close(self._master)
        finally:
            os.close(self._slave)


class LoopTransport(Transport):
    """One end of an in-process pair (a UNIX socketpair). Closing one end makes the other
    raise LinkLost, like an unplugged cable."""

    def __init__(self, sock: socket.socket, url: str = "loop://") -> None:
        super().__init__(url)
        sock.setblocking(False)
        self._sock = sock
        self.peer: LoopTransport | None = None
        self.handed_out = True  # False: a named pair's second end, until a second opener takes it

    @classmethod
    def pair(cls, url: str = "loop://") -> tuple[LoopTransport, LoopTransport]:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        end_a, end_b = cls(a, url), cls(b, url)
        end_a.peer, end_b.peer = end_b, end_a
        return end_a, end_b

    def fileno(self) -> int:
        return self._sock.fileno()

    def _read_ready(self, max_bytes: int) -> bytes:
        try:
            data = self._sock.recv(max_bytes)
        except BlockingIOError:
            return b""
        except OSError as exc:
            raise LinkLost(f"{self.url}: read failed: {exc}") from exc
        if not data:
            raise LinkLost(f"{self.url}: peer closed")
        return data

    def _write_some(self, data: memoryview) -> int:
        try:
            return self._sock.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise LinkLost(f"{self.url}: write failed: {exc}") from exc

    def _close(self) -> None:
        self._sock.close()
        if self.peer is not None and not self.peer.handed_out:
            # a named pair's end nobody opened: nobody will now; closed here, not left (a cycle with
            # this end) to the garbage collector, which would warn about it in some later test
            self.peer.close()
        with _named_lock:
            for name, end in list(_named_loops.items()):
                if end is self:
                    del _named_loops[name]


_named_loops: dict[str, LoopTransport] = {}
_named_lock = threading.Lock()


def _open_loop(url: str) -> LoopTransport:
    name = url[len("loop://") :]
    if not name:
        return LoopTransport.pair(url)[0]
    with _named_lock:
        waiting = _named_loops.pop(name, None)
        if waiting is not None and waiting.peer is not None:
            waiting.peer.handed_out = True
            return waiting.peer
        end_a, end_b = LoopTransport.pair(url)
        end_b.handed_out = False
        _named_loops[name] = end_a
        return end_a


def _open_pty(url: str, baudrate: int) -> Transport:
    if url != "pty://":
        raise TransportUrlError(f"{url}: pty:// takes no path")
    return PtyTransport(url)


# The one table of transport URL schemes (as pyserial's serial_for_url): the opener, the
# configuration check (:func:`check_url`) and every message read it.
SCHEMES: dict[str, Callable[[str, int], Transport]] = {
    "serial": lambda url, baudrate: SerialTransport(url[len("serial://") :], baudrate, url=url),
    "pty": _open_pty,
    "loop": lambda url, baudrate: _open_loop(url),
}
FORMS = "a device path, " + ", ".join(f"{s}://PATH" if s == "serial" else f"{s}://" for s in SCHEMES)


def check_url(url: str) -> str | None:
    """Why ``url`` names no transport (None: it does), without opening anything."""
    if not url:
        return "empty transport URL"
    scheme, sep, _ = url.partition("://")
    if sep and scheme not in SCHEMES:
        return f"{url}: unknown transport scheme (use {FORMS})"
    return None


def open_transport(url: str, *, baudrate: int = DEFAULT_BAUDRATE) -> Transport:
    """Open the transport named by ``url`` (see the module docstring for the forms)."""
    url = os.fspath(url)
    problem = check_url(url)
    if problem is not None:
        raise TransportUrlError(problem)
    scheme, sep, _ = url.partition("://")
    return SCHEMES[scheme](url, baudrate) if sep else SerialTransport(url, baudrate)


__all__ = [
    "DEFAULT_BAUDRATE",
    "LoopTransport",
    "PtyTransport",
    "SerialTransport",
    "Transport",
    "open_transport",
]
