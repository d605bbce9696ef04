"""The myhand-controller daemon: an asyncio loop for everything but the hot path, which runs in
the armband's reader thread.

    LslSource (reader thread: the hot path) -> Pipeline (checks, filters, windows) -> OnnxModel
        -> Policy -> Link (COMMAND written from that thread)
    asyncio loop: ControlServer (ZeroMQ ROUTER), the control loop's timers, the orthosis port's
        reads, stream events, model swaps; Monitor (ZeroMQ PUB) from both

Hot path (:meth:`Controller._on_data`, in the reader thread, once per chunk): input checks,
signal chain, the newest window only, one inference, the policy, the COMMAND write, and only then
the monitor messages; nothing is logged there. No hop to the loop between a sample and its
command. The control loop (:meth:`Controller._control_loop`, every :func:`tick_s` and at the stale
deadline) runs the timers: stale input, link retries and heartbeats, state, command refresh,
status messages, the systemd watchdog and the model file watch.

One lock (:attr:`Controller._lock`, reentrant) keeps the two threads from interleaving: the hot
path holds it for a chunk; on the loop, every entry that reads or changes the controller's state
(a control-loop tick, a byte from the orthosis, a stream event, a control request, a model swap)
holds it for its synchronous part, never across an ``await``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import structlog
import zmq
import zmq.asyncio

from controller.adaptation import SAVE_S, Adaptation
from controller.config import Config
from controller.control import ControlServer
from controller.link import Link
from controller.monitor import Monitor
from controller.pipeline import NONFINITE, RATE, Pipeline, RateMonitor, check_stream, load_model
from controller.policy import INTENTS, Decision, Policy
from controller.realtime import GcGuard, Scheduling
from controller.realtime import request as request_scheduling
from controller.requests import ControlRequests
from controller.sdnotify import Notifier
from controller.source import BATCH_MAX_S, LslSource
from controller.states import (
    STOP_REASONS,
    Conditions,
    DaemonState,
    StateMachine,
    Transition,
)
from metaemg.errors import ConfigError, MetaEMGError, ModelError
from metaemg.lsl import StreamDesc
from metaemg.modelfile import OnnxModel, shipped_model_for
from metaemg.patients import (
    Session,
    describe,
    write_session,
)

log = structlog.get_logger("controller")

TICK_MIN_S, TICK_MAX_S = 0.005, 0.025


def tick_s(serial) -> float:
    """The control loop's period: half the link's shortest timer (its ACK timeout, its heartbeat
    period), within 5..25 ms: no timer fires more than half its own length late. 25 ms by
    default (50 ms timers); the stale-input deadline is timed exactly besides."""
    return min(TICK_MAX_S, max(TICK_MIN_S, min(serial.ack_timeout_ms, serial.heartbeat_ms) / 2000))


# each stops the daemon the safe way (STOP to the orthosis, then exit 0); SIGHUP (a closed
# terminal) used to kill it without STOP
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STOP_ACK_WAIT_S = 0.2


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _name(intent: int | None) -> str | None:
    return None if intent is None else INTENTS[intent]


class Controller(ControlRequests):
    """The daemon. ``await Controller(config).run()`` returns the exit code.

    Its parts can be injected, so that its hot path, reloads and control handling run in a test's
    own process against the real signal chain, model and codec: ``source`` builds the armband
    source (``LslSource``'s signature: config, loop, check=, on_data=, on_event=, batch_max_s=), ``link`` the
    orthosis link (``Link``'s: serial config, counters, on_change, on_busy, lock), ``clock`` is the
    monotonic clock of every state decision (seconds).
    """

    def __init__(
        self,
        config: Config,
        *,
        control_endpoint: str | None = None,
        notifier: Notifier | None = None,
        source: Callable[..., LslSource] = LslSource,
        link: Callable[..., Link] = Link,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._make_source, self._make_link, self._clock = source, link, clock
        self.control_endpoint = control_endpoint or config.control.resolved_endpoint()
        self.notifier = notifier or Notifier()
        self.counters: Counter = Counter()
        self._lock = threading.RLock()  # the hot path (reader thread) against the loop (module docstring)
        self._hot_failed = False
        self.policy = Policy(config.policy)
        self.sm = StateMachine(self._clock())
        self.model_path = config.model.resolved_path()
        # model.path null: the packaged model that fits the first stream (the default one until then)
        self._auto_model = config.model.path is None
        # sessions per patient (metaemg.patients): held until one is open; its patient's models only
        self._auto_model_configured = self._auto_model
        self.sessions = config.session.resolved()
        self.session: Session | None = None
        self._held: str | None = None  # why paused without an operator (HELD_*)
        self._chosen: tuple[Path, OnnxModel] | None = None  # picked by the reader thread, swapped in on connect
        self.model: OnnxModel | None = None
        self.adaptation: Adaptation | None = None  # the model's session adapter (controller.adaptation)
        self._flag_seen: str | None = None
        self._next_save = 0.0
        self.pipeline: Pipeline | None = None
        self.scheduling: Scheduling | None = None
        self.gc_guard = GcGuard(config.realtime.freeze_gc)
        self.paused = False
        self._stopping = False
        self._exit_code = 0
        self._fatal: MetaEMGError | None = None
        self._ready_sent = False
        self._stream: StreamDesc | None = None
        self._stream_connected = False
        self._stream_problem: str | None = "resolving"
        self._ever_connected = False
        self._link_started = False
        self._last_chunk_at: float | None = None
        self._last_command_at = -1e9
        self._refresh_s = config.serial.refresh_ms / 1000
        self._stale_s = config.policy.stale_ms / 1000
        self._send_every = config.serial.send_every_decision
        self._emg_index = 0
        self._model_stat: tuple[int, int, int] | None = None
        self._model_loaded_wall: float | None = None
        self._last_reload: dict | None = None
        self._reloading = False
        self._last_model_error: str | None = None
        self._rate = (0.0, 0)  # (t, samples) of the last status, for the measured rate
        self._measured_rate: float | None = None
        self._rate_monitor = RateMonitor(1.0)  # replaced by the stream's nominal rate when it connects
        self._tasks: list[asyncio.Task] = []
        self._stop_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_native_id()
        self._stop_event = asyncio.Event()
        cfg = self.config
        log.info(
            "starting",
            pid=os.getpid(),
            model=str(self.model_path),
            stream=cfg.lsl.predicate(),
            port=cfg.serial.port,
            monitor=cfg.monitor_endpoint(),
            control=self.control_endpoint,
        )
        self.scheduling = request_scheduling(cfg.realtime)  # before any thread: they inherit it
        if self.scheduling.realtime:
            log.info("scheduling", **self.scheduling.to_dict())
        else:
            log.warning("scheduling", **self.scheduling.to_dict())
        if self.sessions is not None:
            await asyncio.to_thread(self._reopen_session)
        # Everything that can be refused is checked before the port is opened.
        self.model = await asyncio.to_thread(load_model, self.model_path)
        self.adaptation = await asyncio.to_thread(Adaptation.load, self.model, self.model_path, cfg.adapt)
        self._model_loaded_wall = time.time()
        self._model_stat = _stat(self.model_path)
        self.pipeline = Pipeline(self.model.info.signal, cfg.policy.saturation_fraction)
        log.info("model_loaded", path=str(self.model_path), **self._model_fields())
        self._log_adaptation()
        self._zctx = zmq.Context()
        self._actx = zmq.asyncio.Context()
        self.monitor = self.control = None
        try:
            self.monitor = Monitor(cfg.monitor, self._zctx, cfg.monitor_endpoint())
            self.control = ControlServer(self.control_endpoint, self._actx, self._handle_control)
        except BaseException:
            self._close_sockets()
            raise
        loop.set_exception_handler(self._on_loop_exception)
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self.request_stop, signal.Signals(signum).name)
        self.link = self._make_link(
            cfg.serial, self.counters, self._on_link_change, on_busy=self._on_port_busy, lock=self._lock
        )
        self.source = self._make_source(
            cfg.lsl,
            loop,
            check=self._check_stream,
            on_data=self._on_data,
            on_event=self._on_stream_event,
            batch_max_s=min(BATCH_MAX_S, self._stale_s / 4),  # a sleep of the reader never looks stale
        )
        for coro, name in ((self.control.serve(), "control"), (self._control_loop(), "control_loop")):
            self._start_task(coro, name)
        # The orthosis port opens only once the first stream found fits the model (or none is
        # there): a stream that is refused at start never gets a HELLO sent to the device.
        self.source.start()
        self.gc_guard.after_startup()
        log.info("started", monitor=self.monitor.endpoint, control=self.control.endpoint, gc=self.gc_guard.status())
        await self._stop_event.wait()
        await self._shutdown()
        if self._fatal is not None:
            raise self._fatal
        return self._exit_code

    def _start_task(self, coro, name: str) -> None:
        assert self._loop is not None  # tasks are only started once run() is under way
        task = self._loop.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def request_stop(self, why: str = "request", exit_code: int = 0) -> None:
        if self._stop_event is None or self._stop_event.is_set():
            return
        log.info("stop_requested", why=why)
        self._exit_code = exit_code
        self._stop_event.set()

    async def _shutdown(self) -> None:
        with self._lock:
            now = self._clock()
            self._stopping = True  # the hot path takes no further chunk
            self._evaluate(now)  # -> stopping: STOP (host shutdown) goes out now
        self.notifier.stopping()
        deadline = now + STOP_ACK_WAIT_S
        while self.link.is_open and self.link.proto.outstanding and self._clock() < deadline:
            await asyncio.sleep(0.005)
        with self._lock:
            self.link.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.source.stop()
        self._save_adaptation(at_stop=True)
        self._close_sockets()
        assert self._loop is not None  # _shutdown() is only awaited by run()
        for signum in STOP_SIGNALS:
            self._loop.remove_signal_handler(signum)
        self.gc_guard.close()
        log.info("stopped", exit_code=self._exit_code, counters=dict(self.counters), gc=self.gc_guard.status())
        self.notifier.close()

    def _close_sockets(self) -> None:
        for sock in (self.monitor, self.control):
            if sock is not None:
                sock.close()
        self._actx.term()
        self._zctx.term()

    def _task_done(self, task: asyncio.Task) -> None:
        if task.cancelled() or self._stopping:
            return
        exc = task.exception()
        if exc is not None:
            log.error("internal_error", task=task.get_name(), error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            self.request_stop(f"internal error in {task.get_name()}", exit_code=1)

    def _on_loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc = context.get("exception")
        log.error(
            "internal_error",
            message=context.get("message"),
            error=None if exc is None else f"{type(exc).__name__}: {exc}",
            exc_info=exc,
        )
        self.request_stop("internal error", exit_code=1)

    # -- the hot path --------------------------------------------------------------------------------

    def _on_data(self, x: np.ndarray, stamps: np.ndarray, t_recv: int) -> int | None:
        """One chunk from the armband, in the reader thread (or wherever the source delivers it):
        the hot path, under the controller's lock. Returns the samples needed before the next
        window (the reader sleeps until nearly then). An exception stops the daemon (exit 1) as
        an internal error, as one on the loop does."""
        with self._lock:
            if self._stopping or self._hot_failed:
                return None
            try:
                self._decide(x, stamps, t_recv)
            except Exception as exc:
                self._hot_failed = True
                log.error("internal_error", task="hot path", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
                assert self._loop is not None  # the source is started by run()
                self._loop.call_soon_threadsafe(self.request_stop, "internal error in the hot path", 1)
                return None
            assert self.pipeline is not None  # set by run() before the source starts
            return self.pipeline.windower.samples_needed

    def _decide(self, x: np.ndarray, stamps: np.ndarray, t_recv: int) -> None:
        t_start = time.monotonic_ns()  # the stage timings are real elapsed time
        now = self._clock()
        c = self.counters
        c["chunks"] += 1
        c["samples"] += len(x)
        pipeline, policy = self.pipeline, self.policy
        assert pipeline is not None and self.model is not None  # set by run() before the source starts
        if self._last_chunk_at is not None and now - self._last_chunk_at >= self._stale_s:
            pipeline.reset()  # after a gap: no window straddles it
            self._rate_monitor.reset()  # nor a rate measurement
        self._last_chunk_at = now
        rate_problem = self._rate_monitor.push(stamps)
        bad = pipeline.check(x)
        if bad is None and rate_problem is not None:
            bad = RATE
        if bad is None:
            policy.input_good(now)
        elif bad == RATE:
            if self._rate_monitor.rate is not None:
                c["bad_input_rate"] += 1
            policy.input_bad(now, f"rate: {rate_problem}")
        else:
            c["bad_input_" + bad] += 1
            policy.input_bad(now, bad)
            if bad == NONFINITE:
                pipeline.reset()
                self._evaluate(now)
                self._publish_emg(x, stamps)
                return
        seen_before = pipeline.windower.samples_seen
        window, end, skipped = pipeline.push(x)
        t_signal = time.monotonic_ns()
        if window is None:
            self._evaluate(now)
            self._publish_emg(x, stamps)
            return
        c["windows"] += 1 + skipped
        if skipped:
            c["skipped_windows"] += skipped
        adapter = self.adaptation.adapter if self.adaptation is not None else None
        try:
            probs = adapter.decide(window[0], learn=False) if adapter is not None else self.model.predict(window)[0]
        except ModelError as exc:
            c["model_errors"] += 1
            self._last_model_error = str(exc)
            policy.input_bad(now, "model_error")
            self._evaluate(now)
            return
        t_model = time.monotonic_ns()
        decision = policy.update(now, probs)
        t_policy = time.monotonic_ns()
        self._evaluate(now)
        seq = None
        if (
            self.sm.state is DaemonState.RUNNING
            and decision.intent is not None
            and (self._send_every or decision.changed or now - self._last_command_at >= self._refresh_s)
        ):
            seq = self.link.send_command(decision.intent, now)
            if seq is not None:
                self._last_command_at = now
        t_link = time.monotonic_ns()
        c["decisions"] += 1
        if decision.rejected:
            c["rejected"] += 1
        lsl_ts = float(stamps[end - seen_before]) if 0 <= end - seen_before < len(stamps) else None
        self._publish_decision(
            decision, probs, seq, lsl_ts, skipped, (t_recv, t_start, t_signal, t_model, t_policy, t_link)
        )
        self._publish_emg(x, stamps)
        if adapter is not None:
            adapter.learn()  # after the command is on its way: off the window's latency

    def _publish_decision(
        self,
        d: Decision,
        probs: np.ndarray,
        seq: int | None,
        lsl_ts: float | None,
        skipped: int,
        t: tuple[int, int, int, int, int, int],
    ) -> None:
        t_recv, t_start, t_signal, t_model, t_policy, t_link = t
        assert self.monitor is not None and self.model is not None  # set by run() before the source starts
        self.monitor.publish(
            "decision",
            {
                "label": d.label_name,
                "probabilities": probs.tolist(),
                "confidence": d.confidence,
                "rejected": d.rejected,
                "vote": _name(d.vote),
                "intent": d.intent_name,
                "changed": d.changed,
                "held": d.held,
                "safe_reason": d.reason,
                "state": self.sm.state.value,
                "command_seq": seq,
                "lsl_ts": lsl_ts,
                "t_received": t_recv / 1e9,
                "t_command": t_link / 1e9,
                "latency_ms": (t_link - t_recv) / 1e6,
                "stages_us": {
                    "input": (t_start - t_recv) / 1e3,
                    "signal": (t_signal - t_start) / 1e3,
                    "model": (t_model - t_signal) / 1e3,
                    "policy": (t_policy - t_model) / 1e3,
                    "link": (t_link - t_policy) / 1e3,
                },
                "skipped": skipped,
                "model_id": self.model.info.model_id,
            },
            t_mono=t_link / 1e9,
        )

    def _publish_emg(self, x: np.ndarray, stamps: np.ndarray) -> None:
        dec = self.config.monitor.emg_decimation
        first = self._emg_index
        self._emg_index += len(x)
        offset = (-first) % dec
        if offset >= len(x):
            return
        rate = self._stream.rate / dec if self._stream is not None else None
        assert self.monitor is not None  # set by run() before the source starts
        self.monitor.publish(
            "emg",
            {
                "first_index": first + offset,
                "decimation": dec,
                "rate": rate,
                "lsl_ts": stamps[offset::dec].tolist(),
                "samples": x[offset::dec].tolist(),
            },
        )

    # -- state ---------------------------------------------------------------------------------------

    def _conditions(self) -> Conditions:
        proto = self.link.proto
        return Conditions(
            stopping=self._stopping,
            fault=proto.fault(),
            link_ready=proto.phase == "ready",
            link_problem=proto.problem,
            stream_connected=self._stream_connected,
            stream_problem=self._stream_problem,
            paused=self.paused,
            held=self._held if self.paused else None,
            armed=self.policy.armed,
            input_problem=self.policy.reason,
        )

    def _evaluate(self, now: float) -> None:
        transition = self.sm.update(self._conditions(), now)
        if transition is not None:
            self._on_transition(transition, now)

    def _on_transition(self, tr: Transition, now: float) -> None:
        self.counters["state_changes"] += 1
        if tr.state is not DaemonState.RUNNING:
            self.link.send_stop(STOP_REASONS[tr.state], now)  # the safe state, when the port is open
            if tr.state is DaemonState.STALE:
                self.counters["stale_events"] += 1
        log_fn = log.warning if tr.state in (DaemonState.FAULT, DaemonState.STALE) else log.info
        log_fn("state", state=tr.state.value, prev=tr.prev.value, reason=tr.reason)
        self.notifier.status(tr.state.value if tr.reason is None else f"{tr.state.value}: {tr.reason}")
        assert self.monitor is not None  # set by run() before the link and the source exist
        self.monitor.publish(
            "event", {"event": "state", "state": tr.state.value, "prev": tr.prev.value, "reason": tr.reason}
        )
        self._publish_status(now)

    def _on_port_busy(self, problem: str) -> None:
        """Another process holds the orthosis port before this daemon ever opened it: two
        controllers must never share an orthosis, so this one does not start."""
        log.error("link_busy", problem=problem)
        self._fatal = ConfigError(f"refusing to start: {problem}")
        self.request_stop("the orthosis port is in use", exit_code=2)

    def _on_link_change(self) -> None:
        if self._loop is not None and not self._stopping:
            self._evaluate(self._clock())

    # -- the control loop ----------------------------------------------------------------------------

    async def _control_loop(self) -> None:
        cfg = self.config
        status_period = 1 / cfg.monitor.status_hz
        next_status = next_watch = last_watchdog = 0.0
        wd = self.notifier.watchdog_s
        period = tick_s(cfg.serial)
        next_tick = self._clock()
        while True:
            with self._lock:
                now = self._clock()
                self.policy.tick(now)
                self.link.tick(now)
                self._evaluate(now)
                if (
                    self.sm.state is DaemonState.RUNNING
                    and self.policy.intent is not None
                    and now - self._last_command_at >= self._refresh_s
                ) and self.link.send_command(self.policy.intent, now) is not None:
                    self._last_command_at = now
                    self.counters["refreshes"] += 1
                if now >= next_status:
                    next_status = now + status_period
                    self.gc_guard.tick()  # between windows, not when an allocation happens to trip it
                    self._publish_status(now)
                if wd is not None and now - last_watchdog >= wd / 2:
                    last_watchdog = now
                    self.notifier.watchdog()
                if not self._ready_sent and self.link.proto.phase == "ready" and self._stream_connected:
                    self._ready_sent = True
                    self.notifier.ready(self.sm.state.value)
                    log.info("ready", state=self.sm.state.value)
                if cfg.model.watch and now >= next_watch:
                    next_watch = now + cfg.model.watch_interval_s
                    self._watch_model()
                self._check_recalibration()
                if now >= self._next_save:
                    self._next_save = now + SAVE_S
                    self._save_adaptation()
                next_tick += period
                if next_tick < now:
                    next_tick = now + period
                wake = next_tick
                stale_at = self.policy.stale_deadline()
                if stale_at is not None and stale_at < wake:
                    wake = stale_at
            await asyncio.sleep(max(0.0, wake - self._clock()))

    def _status(self, now: float) -> dict:
        samples = self.counters["samples"]
        t0, n0 = self._rate
        if now - t0 >= 0.5:
            self._measured_rate = (samples - n0) / (now - t0) if t0 else None
            self._rate = (now, samples)
        # all set by run() before the link, the source and the control loop exist
        assert self.pipeline is not None and self.monitor is not None and self.control is not None
        return {
            "state": self.sm.state.value,
            "reason": self.sm.reason,
            "since": self.sm.since,
            "ready": self._ready_sent,
            "paused": self.paused,
            "session": self._session_status(),
            "input": {
                "connected": self._stream_connected,
                "stream": None if self._stream is None else self._stream.to_dict(),
                "bound_to": None
                if self.source.bound is None
                else {"source_id": self.source.bound[0], "host": self.source.bound[1]},
                "problem": self._stream_problem,
                "last_sample_age_ms": None if self._last_chunk_at is None else (now - self._last_chunk_at) * 1000,
                "measured_rate": self._measured_rate,
                "timestamp_rate": self._rate_monitor.rate,
                "saturated_fraction": self.pipeline.saturated_fraction,
            },
            "link": self.link.status(),
            "model": {
                "path": str(self.model_path),
                **self._model_fields(),
                "about": describe(self.model.info) if self.model is not None else None,  # whose, when, how good
                "loaded_at": self._model_loaded_wall,
                "last_reload": self._last_reload,
                "last_error": self._last_model_error,
            },
            "adapt": None if self.adaptation is None else self.adaptation.status(self.config.adapt),
            "recalibration": self._recalibration(),
            "policy": {
                "armed": self.policy.armed,
                "intent": _name(self.policy.intent),
                "reason": self.policy.reason,
                "threshold": self.policy.config.threshold,
            },
            "monitor": {"endpoint": self.monitor.endpoint, "sent": self.monitor.sent, "dropped": self.monitor.dropped},
            "control": {"endpoint": self.control.endpoint},
            "pid": os.getpid(),
            "realtime": {
                **(self.scheduling.to_dict() if self.scheduling is not None else {}),
                "gc": self.gc_guard.status(),
                "threads": {"loop": self._loop_thread, "hot_path": self.source.thread_id},
            },
            "counters": dict(self.counters),
        }

    def _publish_status(self, now: float) -> None:
        assert self.monitor is not None  # set by run() before the link, the source and the control loop
        self.monitor.publish("status", self._status(now), t_mono=now)

    def _model_fields(self) -> dict:
        assert self.model is not None  # loaded by run() first
        info = self.model.info
        return {
            "model_id": info.model_id,
            "kind": info.kind,
            "sample_rate": info.sample_rate,
            "channels": info.channels,
            "window": info.window,
            "stride": info.stride,
            "input_range": None if info.signal.input_range is None else list(info.signal.input_range),
        }

    # -- the stream ----------------------------------------------------------------------------------

    def _check_stream(self, desc: StreamDesc) -> str | None:
        """Called by the reader thread before it opens an inlet."""
        if desc.channel_format == "string":
            return f"stream {desc.describe()} carries text, not samples"
        model = self.model  # one attribute read: a swap replaces the whole model
        assert model is not None  # loaded by run() before the source starts
        info = model.info
        problem = check_stream(info.sample_rate, info.channels, desc.rate, desc.channels)
        if problem is None:
            self._chosen = None
            return None
        if self._auto_model and not self._ever_connected:  # never switches once a stream was used
            try:
                path = shipped_model_for(desc.rate, desc.channels)
                self._chosen = (path, load_model(path, (desc.rate, desc.channels)))
                return None
            except ModelError as exc:
                return f"stream {desc.describe()}: {exc}"
        return f"stream {desc.describe()}: {problem} (model {self.model_path})"

    def _on_stream_event(self, kind: str, detail: object) -> None:
        with self._lock:
            self._stream_event(kind, detail)

    def _stream_event(self, kind: str, detail: object) -> None:
        assert self.pipeline is not None and self.monitor is not None  # set by run() before the source starts
        now = self._clock()
        if kind != "mismatch" and not self._link_started and not self._stopping:
            self._link_started = True
            self._start_task(self.link.run(), "link")
        if kind == "connected":
            assert isinstance(detail, StreamDesc)
            if self._chosen is not None:  # model.path null: the packaged model that fits this stream
                path, model = self._chosen
                self._chosen = None
                self.model, self.model_path = model, path
                self.adaptation = Adaptation.load(model, path, self.config.adapt)
                self.pipeline = Pipeline(model.info.signal, self.config.policy.saturation_fraction)
                self._model_stat = _stat(path)
                self._model_loaded_wall = time.time()
                log.info("model_chosen", path=str(path), stream=detail.describe(), **self._model_fields())
                self.monitor.publish("event", {"event": "model_chosen", "path": str(path), **self._model_fields()})
            self._stream, self._stream_connected, self._stream_problem = detail, True, None
            self._ever_connected = True
            self.counters["stream_connects"] += 1
            self.pipeline.reset()
            self._rate_monitor = RateMonitor(detail.rate)
            log.info("stream_connected", **detail.to_dict())
        else:
            problem = f"stream mismatch: {detail}" if kind == "mismatch" else str(detail)
            changed = problem != self._stream_problem
            self._stream, self._stream_connected, self._stream_problem = None, False, problem
            if kind == "lost":
                self.counters["stream_lost"] += 1
                self.policy.input_bad(now, "stream_lost")
                self.pipeline.reset()
                log.warning("stream_lost", problem=detail)
            elif kind == "mismatch":
                self.counters["stream_mismatches"] += 1
                if changed:
                    log.error("stream_mismatch", problem=problem)
                if not self._ever_connected:
                    self._fatal = ModelError(f"refusing to start: {detail}")
                    self.request_stop("stream mismatch", exit_code=2)
            elif kind in ("missing", "ambiguous", "foreign"):
                if changed:
                    if kind != "missing":
                        self.counters[f"stream_{kind}"] += 1
                    log.warning(f"stream_{kind}", problem=detail)
            else:
                log.error("source_error", problem=detail)
                self.request_stop("the LSL reader failed", exit_code=1)
        self.monitor.publish(
            "event",
            {
                "event": "stream_" + kind,
                "detail": self._stream_problem,
                "stream": None if self._stream is None else self._stream.to_dict(),
            },
        )
        self._evaluate(now)

    # -- the session adaptation ------------------------------------------------------------------------

    def _log_adaptation(self) -> None:
        a = self.adaptation
        assert a is not None  # set with every model
        if a.adapter is None:
            log.info("adaptation", active=False, why=a.why)
        else:
            log.info("adaptation", active=True, enabled=self.config.adapt.enabled, state=a.restored, file=str(a.path))

    def _recalibration(self) -> str | None:
        a = self.adaptation
        return None if a is None or a.adapter is None else a.adapter.flag

    def _check_recalibration(self) -> None:
        """The adapter's flag, once: the log and the monitor (the status carries it from now on)."""
        adapter = None if self.adaptation is None else self.adaptation.adapter
        if adapter is None or adapter.flag is None or adapter.flag == self._flag_seen:
            return
        self._flag_seen = adapter.flag
        assert self.monitor is not None  # set by run() before the control loop
        log.warning("recalibration_suggested", **adapter.status())
        self.monitor.publish("event", {"event": "recalibration_suggested", "detail": adapter.flag})

    def _save_adaptation(self, *, at_stop: bool = False) -> None:
        """The adapter's state beside the model when it changed: in a worker thread while running
        (under the lock only to take the snapshot), at once at stop."""
        a = self.adaptation
        if a is None or a.adapter is None or a.adapter.windows == a.saved_windows:
            return
        with self._lock:
            snapshot = a.adapter.to_dict()
        a.saved_windows = snapshot["windows"]

        def done(problem: str | None) -> None:
            if problem is not None:
                self.counters["adapt_save_failed"] += 1
                log.warning("adaptation_not_saved", problem=problem)

        if at_stop or self._loop is None:
            done(a.save(snapshot))
            return
        future = self._loop.run_in_executor(None, a.save, snapshot)
        future.add_done_callback(lambda f: done(f.result()) if not f.cancelled() else None)

    # -- model swap ----------------------------------------------------------------------------------

    def _watch_model(self) -> None:
        st = _stat(self.model_path)
        if st == self._model_stat:
            return
        self._model_stat = st
        if st is None:
            log.warning("model_file_missing", path=str(self.model_path))
            return
        if not self._reloading:
            assert self._loop is not None  # the control loop runs on it
            task = self._loop.create_task(self.reload(reason="file changed"), name="reload")
            task.add_done_callback(self._task_done)

    async def reload(self, path: str | None = None, *, reason: str = "request") -> dict:
        """Load, check and test a model file in a worker thread, then swap it in between two
        windows; on any failure keep the current model and say why."""
        if self._reloading:
            return {"ok": False, "error": "a reload is already in progress"}
        self._reloading = True
        target = Path(path).expanduser() if path else self.model_path
        stream = None if self._stream is None else (self._stream.rate, self._stream.channels)
        old = self.model
        assert old is not None and self.monitor is not None  # set by run() before any control request
        with self._lock:  # the running adapter's state, carried over when the same model is loaded again
            running = self.adaptation.adapter if self.adaptation is not None else None
            carry = None if running is None else running.to_dict()
        try:
            model = await asyncio.to_thread(load_model, target, stream)
            self._check_patient(model)
            adaptation = await asyncio.to_thread(Adaptation.load, model, target, self.config.adapt, carry)
        except MetaEMGError as exc:
            log.error("reload_failed", path=str(target), error=str(exc), reason=reason, kept=old.info.model_id)
            with self._lock:
                self.counters["reloads_failed"] += 1
                self._last_reload = {
                    "ok": False,
                    "path": str(target),
                    "error": str(exc),
                    "t_wall": time.time(),
                    "reason": reason,
                }
                self.monitor.publish("event", {"event": "reload", **self._last_reload, "model_id": old.info.model_id})
            return {"ok": False, "error": str(exc), "model_id": old.info.model_id}
        finally:
            self._reloading = False
        with self._lock:  # between two chunks of the hot path: the swap is atomic for it
            if model.info.signal != old.info.signal:
                self.pipeline = Pipeline(model.info.signal, self.config.policy.saturation_fraction)
            self.model, self.adaptation, self._flag_seen = model, adaptation, None
            if path:
                self.model_path = target
            session = self.session
            if session is not None:  # the session runs this model from now on (and after a restart)
                self._auto_model = False
                session = self.session = dataclasses.replace(
                    session, model_id=model.info.model_id if model.info.calibration is not None else None
                )
            self._model_stat = _stat(self.model_path)
            self._model_loaded_wall = time.time()
            self._last_model_error = None
            self.counters["reloads_ok"] += 1
            self._last_reload = {
                "ok": True,
                "path": str(target),
                "error": None,
                "t_wall": time.time(),
                "reason": reason,
            }
            log.info(
                "model_swapped", path=str(target), previous=old.info.model_id, reason=reason, **self._model_fields()
            )
            self._log_adaptation()
            self.monitor.publish(
                "event",
                {
                    "event": "reload",
                    **self._last_reload,
                    "model_id": model.info.model_id,
                    "previous_model_id": old.info.model_id,
                },
            )
        if session is not None and self.sessions is not None:
            await asyncio.to_thread(write_session, self.sessions, session)  # off the lock: it fsyncs
        return {
            "ok": True,
            "model_id": model.info.model_id,
            "previous_model_id": old.info.model_id,
            "path": str(target),
        }
