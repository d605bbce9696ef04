"""The orthosis link on the asyncio loop: opens the port by URL, reads with ``add_reader``, writes
without blocking, and reopens the same URL with backoff when the device goes away.

Commands are written from the daemon's hot-path thread, everything else from the loop: every
entry from the loop (a byte from the device, the port opening) holds the daemon's ``lock``, as the
hot path does; a write that fails in the hot-path thread leaves closing the port to the loop.

The protocol decisions are made by the pure :class:`~controller.hostlink.HostLink`; this module
only moves bytes. A write never blocks the loop: a full output buffer drops the rest of the frame
(counted as ``write_overflows``; the next frame's leading delimiter resynchronises the device).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import Counter
from collections.abc import Callable

import structlog

from controller.config import SerialConfig
from controller.hostlink import HostLink, Phase
from firmware_protocol import (
    Decoder,
    LinkBusy,
    LinkError,
    LinkTimeout,
    Message,
    ProtocolError,
    encode,
    open_transport,
)
from firmware_protocol.transport import Transport

log = structlog.get_logger("controller.link")


def _close_opened(opening: asyncio.Future) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


class Link:
    """One orthosis port. :meth:`run` keeps it connected until :meth:`close`."""

    def __init__(
        self,
        config: SerialConfig,
        counters: Counter,
        on_change: Callable[[], None],
        on_busy: Callable[[str], None] | None = None,
        *,
        lock: threading.RLock | None = None,
        opener: Callable[..., Transport] = open_transport,
    ) -> None:
        self.config = config
        self._open = opener  # (url, baudrate=...) -> Transport; tests give an in-process pair
        self._on_busy = on_busy  # told when another process holds the port before this link ever opened it
        self.url = config.port
        self.counters = counters
        self.proto = HostLink(config, counters)
        self.decoder = Decoder()
        self._on_change = on_change
        self._transport: Transport | None = None
        self._lock = lock if lock is not None else threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._lost: asyncio.Event | None = None
        self._closing = False
        self._phase = self.proto.phase

    # -- lifecycle -----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Open, serve and reopen the port until :meth:`close` (never raises for link trouble)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        backoff = self.config.reconnect_min_ms / 1000
        reported = None
        while not self._closing:
            try:
                transport = await self._open_in_thread()
            except LinkBusy as exc:
                if self._on_busy is not None and not self.counters["link_opens"]:
                    self._on_busy(str(exc))
                    return
                with self._lock:
                    self.proto.closed(str(exc))
                    self._notify()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.config.reconnect_max_ms / 1000)
                continue
            except ProtocolError as exc:
                if reported != str(exc):
                    reported = str(exc)
                    log.warning("link_unavailable", url=self.url, error=str(exc), retry_s=backoff)
                with self._lock:
                    self.proto.closed(str(exc))
                    self._notify()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.config.reconnect_max_ms / 1000)
                continue
            if self._closing:
                transport.close()
                break
            reported = None
            backoff = self.config.reconnect_min_ms / 1000
            self._lost = asyncio.Event()
            with self._lock:
                self._transport = transport
                self.decoder.reset()
                self.counters["link_opens"] += 1
                log.info("link_open", url=self.url)
                self._loop.add_reader(transport.fileno(), self._on_readable)
                self._write(self.proto.opened(time.monotonic()))
                self._notify()
            await self._lost.wait()
            if not self._closing:
                await asyncio.sleep(backoff)

    async def _open_in_thread(self) -> Transport:
        """Open the port in a worker thread. Cancelled while it opens (the daemon stopping), the
        port it still opens is closed when it is open, not left to the garbage collector."""
        assert self._loop is not None  # set by run()
        opening = self._loop.run_in_executor(
            None, functools.partial(self._open, self.url, baudrate=self.config.baudrate)
        )
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_opened)
            raise

    def close(self) -> None:
        """Close the port now (after the daemon sent its STOP)."""
        self._closing = True
        self._drop("closed by the controller", lost=False)

    # -- I/O -----------------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._transport is not None

    def _on_readable(self) -> None:
        with self._lock:
            self._read()

    def _read(self) -> None:
        transport = self._transport
        if transport is None:
            return
        try:
            data = transport.read(timeout=0)
        except LinkError as exc:
            self._drop(str(exc))
            return
        if not data:
            return
        now = time.monotonic()
        for msg in self.decoder.feed(data):
            self._write(self.proto.receive(msg, now))
        self._notify()

    def _write(self, messages: list[Message] | Message | None) -> bool:
        if messages is None:
            return False
        if not isinstance(messages, list):
            messages = [messages]
        transport = self._transport
        if transport is None or not messages:
            return False
        try:
            for msg in messages:
                transport.write(encode(msg), timeout=0)
        except LinkTimeout:
            self.counters["write_overflows"] += 1
        except LinkError as exc:
            self._drop(str(exc))
            return False
        return True

    def _drop(self, problem: str, *, lost: bool = True) -> None:
        loop = self._loop
        if loop is not None and self._loop_thread != threading.get_ident():
            # a write failed in the hot-path thread: the loop closes the port (its reader and
            # its event are the loop's); commands written meanwhile fail the same way
            loop.call_soon_threadsafe(self._locked_drop, problem, self._transport)
            return
        transport, self._transport = self._transport, None
        if transport is not None:
            if self._loop is not None:
                self._loop.remove_reader(transport.fileno())
            transport.close()
            if lost:
                self.counters["link_lost"] += 1
                log.warning("link_lost", url=self.url, error=problem)
        self.proto.closed(problem)
        if self._lost is not None:
            self._lost.set()
        self._notify()

    def _locked_drop(self, problem: str, transport: Transport | None) -> None:
        with self._lock:
            if transport is not None and self._transport is transport:
                self._drop(problem)

    def _notify(self) -> None:
        phase = self.proto.phase
        if phase != self._phase:
            self._phase = phase
            if phase == Phase.READY and self.proto.device is not None:
                d = self.proto.device
                log.info(
                    "link_ready",
                    url=self.url,
                    firmware=f"{d.sw_major}.{d.sw_minor}.{d.sw_patch}",
                    watchdog_ms=d.watchdog_ms,
                    max_ttl_ms=d.max_ttl_ms,
                )
            elif phase in (Phase.MISMATCH, Phase.SILENT):
                log.error("link_" + phase.value, url=self.url, problem=self.proto.problem)
        self._on_change()

    # -- what the daemon sends -----------------------------------------------------------------------

    def tick(self, now: float) -> None:
        phase = self.proto.phase
        self._write(self.proto.tick(now))
        if self.proto.phase != phase:
            self._notify()

    def send_command(self, intent: int, now: float) -> int | None:
        """Write a COMMAND; return its seq, or None if commands may not flow now."""
        msg = self.proto.command(intent, now)
        if msg is None:
            return None
        return msg.seq if self._write(msg) else None

    def send_stop(self, reason: int, now: float) -> int | None:
        msg = self.proto.stop(reason, now)
        if msg is None:
            return None
        return msg.seq if self._write(msg) else None

    def send_clear(self, now: float) -> int | None:
        msg = self.proto.clear(now)
        if msg is None:
            return None
        return msg.seq if self._write(msg) else None

    def status(self) -> dict:
        p = self.proto
        d = p.device
        return {
            "url": self.url,
            "open": self.is_open,
            "phase": p.phase.value,
            "ready": p.ready,
            "problem": p.problem,
            "fault": p.fault(),
            "device_state": p.device_state_name(),
            "position": p.position,
            "fault_flags": p.fault_flags,
            "firmware": None if d is None else f"{d.sw_major}.{d.sw_minor}.{d.sw_patch}",
            "ttl_ms": p.ttl_ms,
            "acks_lost": p.acks_lost,
            "outstanding": p.outstanding,
            "last_reject": p.last_reject,
            "decode_errors": {k: v for k, v in self.decoder.errors.items() if v},
        }
