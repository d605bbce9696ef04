"""``metaemg-monitor``: watch the daemon's monitor stream live in the terminal.

Subscribes to the ZeroMQ PUB stream (docs/controller.md, "Monitor stream") and redraws, a few
times a second, the current intent, the class probabilities as bars, the input and link state,
the model id, the counters and latency percentiles. ``--once --json`` prints one status message
and exits (scripts, health checks); ``--plot`` opens a live matplotlib window with the EMG and
the decisions. The view (:class:`MonitorView`) and the text (:func:`render`) are pure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import deque
from pathlib import Path

from controller.monitor import SCHEMA
from metaemg.cli import entry_point
from metaemg.errors import ConfigError, MetaEMGError
from metaemg.intents import INTENTS

DEFAULT_ENDPOINT = "ipc://<runtime dir>/monitor.sock"  # as the daemon resolves it (Config.monitor_endpoint)
CLASSES = INTENTS
STALE_S = 2.0  # no message for this long: shown as NO DATA


class MonitorTimeout(MetaEMGError):
    """Nothing arrived on the monitor stream in time."""


class MonitorView:
    """What the monitor knows: the last status and decision, latency and decision history, and
    the last EMG samples. Fed with ``update(topic, message, now)``; ``now`` is local monotonic."""

    def __init__(self, history: int = 400, emg_samples: int = 1000) -> None:
        self.status: dict | None = None
        self.decision: dict | None = None
        self.latencies: deque[float] = deque(maxlen=history)
        self.decisions: deque[tuple[float, list, str | None]] = deque(maxlen=history)  # (t_mono, probs, intent)
        self.emg: deque[list] = deque(maxlen=emg_samples)
        self.emg_rate: float | None = None
        self.events: deque[str] = deque(maxlen=3)
        self.received = 0
        self.foreign = 0
        self.first_at: float | None = None
        self.last_at: float | None = None

    def update(self, topic: str, msg: dict, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if not isinstance(msg, dict) or msg.get("schema") != SCHEMA:
            self.foreign += 1
            return
        self.received += 1
        self.first_at = now if self.first_at is None else self.first_at
        self.last_at = now
        if topic == "status":
            self.status = msg
        elif topic == "decision":
            self.decision = msg
            if isinstance(msg.get("latency_ms"), (int, float)):
                self.latencies.append(float(msg["latency_ms"]))
            self.decisions.append((msg.get("t_mono") or now, msg.get("probabilities") or [], msg.get("intent")))
        elif topic == "emg":
            self.emg.extend(msg.get("samples") or [])
            self.emg_rate = msg.get("rate") or self.emg_rate
        elif topic == "event":
            self.events.append(_event_text(msg))

    def latency_percentiles(self) -> dict[str, float] | None:
        if not self.latencies:
            return None
        xs = sorted(self.latencies)

        def pct(p: float) -> float:
            return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

        return {"p50": pct(50), "p95": pct(95), "p99": pct(99), "max": xs[-1]}

    def decision_rate(self) -> float | None:
        if len(self.decisions) < 2:
            return None
        span = self.decisions[-1][0] - self.decisions[0][0]
        return (len(self.decisions) - 1) / span if span > 0 else None


def _event_text(msg: dict) -> str:
    kind = msg.get("event")
    if kind == "state":
        return f"state {msg.get('prev')} -> {msg.get('state')} ({msg.get('reason')})"
    if kind == "reload":
        return f"reload {'ok' if msg.get('ok') else 'FAILED'}: {msg.get('model_id') or msg.get('error')}"
    return f"{kind}: {msg.get('detail', '')}"


def _c(text: str, code: str, color: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if color else text


def _bar(p: float | None, width: int) -> str:
    if p is None:
        return "?" * width
    n = max(0, min(width, int(round(p * width))))
    return "#" * n + "." * (width - n)


def _get(d: dict | None, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict):
            return default
        d = d.get(k)
    return default if d is None else d


def render(
    view: MonitorView, endpoint: str = "", now: float | None = None, color: bool = False, width: int = 78
) -> str:
    """The monitor screen as text (no cursor codes; colour codes only with ``color``)."""
    now = time.monotonic() if now is None else now
    lines = [f"metaemg-monitor  {endpoint}".rstrip()]
    if view.last_at is None:
        lines.append(_c("waiting for the daemon (no message yet)", "33", color))
        return "\n".join(lines) + "\n"
    age = now - view.last_at
    if age > STALE_S:
        lines.append(_c(f"NO DATA: nothing received for {age:.1f} s (daemon stopped?)", "1;31", color))
    st, d = view.status, view.decision
    state = _get(st, "state", default=_get(d, "state", default="?"))
    reason = _get(st, "reason", default="")
    flags = ("  PAUSED" if _get(st, "paused") else "") + (
        "  (not ready yet)" if st is not None and not st.get("ready") else ""
    )
    state_color = {"running": "32", "fault": "1;31", "safe": "33"}.get(str(state), "36")
    lines.append(f"state   {_c(str(state).upper(), state_color, color)}{'  ' + reason if reason else ''}{flags}")
    intent = _get(d, "intent")
    if d is None:
        shown = "- (no decision yet)"
    else:
        shown = "SAFE (no command)" if intent is None else str(intent).upper()
    extra = ""
    if d is not None:
        if d.get("rejected"):
            extra += "  rejected (below threshold)"
        if d.get("held"):
            extra += f"  held: {d['held']}"
        if d.get("safe_reason"):
            extra += f"  safe: {d['safe_reason']}"
    lines.append(f"intent  {_c(shown, '1;32' if intent else '1;33', color)}{extra}")
    probs = _get(d, "probabilities", default=[])
    bar_w = max(10, width - 22)
    for i, name in enumerate(CLASSES if d is not None else ()):
        p = probs[i] if i < len(probs) and isinstance(probs[i], (int, float)) else None
        mark = "<" if _get(d, "label") == name else ""
        ptxt = "  ? " if p is None else f"{p:4.2f}"
        lines.append(f"  {name:<6} {ptxt} |{_bar(p, bar_w)}|{mark}")
    inp = _get(st, "input", default={})
    stream = _get(inp, "stream", default={})
    if st is None:
        lines.append("input   (no status yet)")
    else:
        conn = _c("connected", "32", color) if inp.get("connected") else _c("NOT CONNECTED", "1;31", color)
        desc = (
            f"{stream.get('name', '?')} {stream.get('channels', '?')} ch @ {stream.get('rate', '?')} Hz"
            if stream
            else "no stream"
        )
        rate = inp.get("measured_rate")
        age_ms = inp.get("last_sample_age_ms")
        lines.append(
            f"input   {conn}  {desc}"
            + (f"  measured {rate:.0f}/s" if isinstance(rate, (int, float)) else "")
            + (f"  last sample {age_ms:.0f} ms ago" if isinstance(age_ms, (int, float)) else "")
            + (f"  problem: {inp['problem']}" if inp.get("problem") else "")
        )
        link = _get(st, "link", default={})
        ok = link.get("ready")
        lines.append(
            f"link    {_c(str(link.get('phase', '?')), '32' if ok else '1;31', color)}"
            f"  {link.get('url', '')}  device {link.get('device_state', '?')}"
            f"  position {link.get('position', '?')}"
            + (f"  fw {link['firmware']}" if link.get("firmware") else "")
            + (f"  FAULT {link.get('fault_flags')}" if link.get("fault") else "")
            + (f"  problem: {link['problem']}" if link.get("problem") else "")
        )
    model_id = _get(st, "model", "model_id", default=_get(d, "model_id", default="?"))
    kind = _get(st, "model", "kind", default="")
    lines.append(
        f"model   {model_id}{'  (' + kind + ')' if kind else ''}"
        + (f"  error: {_get(st, 'model', 'last_error')}" if _get(st, "model", "last_error") else "")
    )
    lat = view.latency_percentiles()
    rate = view.decision_rate()
    lines.append(
        "latency "
        + (
            "-"
            if lat is None
            else f"p50 {lat['p50']:.1f} ms  p95 {lat['p95']:.1f} ms  p99 {lat['p99']:.1f} ms  "
            f"max {lat['max']:.1f} ms (last {len(view.latencies)})"
        )
        + (f"  {rate:.1f} decisions/s" if rate else "")
    )
    stages = _get(d, "stages_us", default={})
    if stages:
        lines.append(
            "stages  " + "  ".join(f"{k} {v:.0f} us" for k, v in stages.items() if isinstance(v, (int, float)))
        )
    counters = _get(st, "counters", default={})
    if counters:
        items = [f"{k} {v}" for k, v in counters.items()]
        row = "counts "
        for item in items:
            if len(row) + len(item) + 2 > width:
                lines.append(row.rstrip())
                row = "       "
            row += " " + item + " "
        lines.append(row.rstrip())
    for e in view.events:
        lines.append(f"event   {e}")
    if view.foreign:
        lines.append(_c(f"ignored {view.foreign} message(s) without schema {SCHEMA}", "33", color))
    return "\n".join(lines) + "\n"


class LivePlot:
    """A matplotlib figure: the last EMG samples (top) and the decisions' probabilities (bottom)."""

    def __init__(self, channels: int = 8) -> None:
        import matplotlib.pyplot as plt

        self.plt = plt
        self.fig, (self.ax_emg, self.ax_dec) = plt.subplots(2, 1, figsize=(9, 6), num="metaemg-monitor")
        self.emg_lines = [self.ax_emg.plot([], [], lw=0.7, label=f"emg{i}")[0] for i in range(channels)]
        self.ax_emg.set_ylabel("EMG (as received)")
        self.ax_emg.set_xlabel("samples (decimated)")
        self.prob_lines = [self.ax_dec.plot([], [], label=c)[0] for c in CLASSES]
        self.ax_dec.set_ylim(-0.05, 1.05)
        self.ax_dec.set_ylabel("probability")
        self.ax_dec.set_xlabel("seconds ago")
        self.ax_dec.legend(loc="upper left", fontsize="small")
        self.title = self.fig.suptitle("waiting for the daemon")
        self.fig.tight_layout()
        self.frames = 0

    @property
    def open(self) -> bool:
        return self.plt.fignum_exists(self.fig.number)

    def update(self, view: MonitorView) -> None:
        if view.emg:
            n = len(view.emg)
            for ch, line in enumerate(self.emg_lines):
                line.set_data(range(n), [s[ch] if ch < len(s) else float("nan") for s in view.emg])
            self.ax_emg.relim()
            self.ax_emg.autoscale_view()
        if view.decisions:
            t_end = view.decisions[-1][0]
            ts = [t - t_end for t, _, _ in view.decisions]
            for k, line in enumerate(self.prob_lines):
                line.set_data(
                    ts, [p[k] if k < len(p) and p[k] is not None else float("nan") for _, p, _ in view.decisions]
                )
            self.ax_dec.set_xlim(min(ts[0], -1.0), 0)
        d = view.decision or {}
        self.title.set_text(
            f"intent {str(d.get('intent') or 'safe').upper()}  "
            f"model {_get(view.status, 'model', 'model_id', default=d.get('model_id', '?'))}"
        )
        self.fig.canvas.draw_idle()
        self.fig.canvas.flush_events()
        self.frames += 1

    def close(self) -> None:
        self.plt.close(self.fig)


def _subscribe(endpoint: str, topics: tuple[str, ...]):
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    for t in topics:
        sock.setsockopt_string(zmq.SUBSCRIBE, t)
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close()
        ctx.term()
        raise ConfigError(f"cannot connect to monitor endpoint {endpoint!r}: {exc}") from None
    return ctx, sock


def _receive(sock, timeout_ms: int) -> tuple[str, dict] | None:
    if not sock.poll(timeout_ms):
        return None
    frames = sock.recv_multipart()
    if len(frames) != 2:
        return frames[0].decode(errors="replace"), {}
    try:
        return frames[0].decode(errors="replace"), json.loads(frames[1])
    except ValueError:
        return frames[0].decode(errors="replace"), {}


def wait_status(endpoint: str, timeout: float) -> dict:
    """The first status message on the stream; :class:`MonitorTimeout` after ``timeout`` s."""
    ctx, sock = _subscribe(endpoint, ("status",))
    try:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            got = _receive(sock, max(1, int(left * 1000)))
            if got and got[0] == "status" and got[1].get("schema") == SCHEMA:
                return got[1]
        raise MonitorTimeout(
            f"no status message from {endpoint} within {timeout:g} s (is the daemon running, "
            "with monitor.endpoint set to this address?)"
        )
    finally:
        sock.close(linger=0)
        ctx.term()


def run_live(
    endpoint: str,
    *,
    duration: float | None = None,
    refresh_hz: float = 4.0,
    plot: bool = False,
    ansi: bool = True,
    color: bool = True,
    out=None,
    save_plot: str | None = None,
) -> MonitorView:
    """Redraw until ``duration`` s have passed, the plot window is closed, or Ctrl-C."""
    out = out or sys.stdout
    view = MonitorView()
    live_plot = LivePlot() if plot else None
    if live_plot is not None:
        import matplotlib

        if matplotlib.get_backend().lower() != "agg":
            live_plot.plt.show(block=False)
    ctx, sock = _subscribe(endpoint, ("",))
    start = time.monotonic()
    next_draw = start
    try:
        while duration is None or time.monotonic() - start < duration:
            got = _receive(sock, 20)
            while got is not None:
                view.update(*got)
                got = _receive(sock, 0)
            now = time.monotonic()
            if now >= next_draw:
                next_draw = now + 1.0 / refresh_hz
                text = render(view, endpoint, now, color=color)
                out.write(("\x1b[H\x1b[2J" + text) if ansi else text + "\n")
                out.flush()
                if live_plot is not None:
                    if not live_plot.open:
                        break
                    live_plot.update(view)
    finally:
        sock.close(linger=0)
        ctx.term()
        if live_plot is not None:
            if save_plot and live_plot.open:
                live_plot.update(view)
                live_plot.fig.savefig(save_plot, dpi=80)
            live_plot.close()
    return view


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="metaemg-monitor", description="Watch the MyHand daemon's monitor stream live.")
    p.add_argument(
        "--endpoint",
        help="the daemon's monitor endpoint (default: as the daemon resolves it from its "
        "configuration, ipc://<runtime dir>/monitor.sock unless monitor.endpoint is set)",
    )
    p.add_argument(
        "--config",
        help="the daemon's configuration file (default: $MYHAND_CONFIG, else "
        "/etc/myhand/controller.yaml when it exists)",
    )
    p.add_argument("--once", action="store_true", help="wait for one status message, print it, exit")
    p.add_argument("--json", action="store_true", help="with --once: print the status message as one JSON line")
    p.add_argument("--timeout", type=float, default=5.0, help="with --once: give up after S seconds (exit 2)")
    p.add_argument("--plot", action="store_true", help="also open a live matplotlib window (EMG, decisions)")
    p.add_argument("--save-plot", metavar="PNG", help="with --plot: write the last frame to PNG on exit")
    p.add_argument("--duration", type=float, help="stop after S seconds (default: until Ctrl-C)")
    p.add_argument("--refresh", type=float, default=4.0, help="redraws per second (default 4)")
    p.add_argument(
        "--plain",
        action="store_true",
        help="no cursor or colour codes: print each frame below the last (default when not a terminal)",
    )
    args = p.parse_args(argv)
    if args.refresh <= 0 or (args.duration is not None and args.duration < 0) or args.timeout <= 0:
        raise ConfigError("--refresh and --timeout must be positive, --duration not negative")
    if args.endpoint is None:
        from controller import config as configuration

        path = args.config or configuration.service_config_path()
        cfg = configuration.load(path) if path else configuration.Config()
        args.endpoint = cfg.monitor_endpoint()
        if args.endpoint.startswith("ipc://") and not Path(args.endpoint[len("ipc://") :]).exists():
            raise ConfigError(
                f"no monitor socket at {args.endpoint} (is myhand-controller running?); "
                f"{configuration.where_the_daemon_is(cfg, args.config)}"
            )
    if args.once:
        msg = wait_status(args.endpoint, args.timeout)
        if args.json:
            print(json.dumps(msg))
        else:
            view = MonitorView()
            view.update("status", msg)
            print(render(view, args.endpoint), end="")
        return 0
    ansi = not args.plain and sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
    try:
        run_live(
            args.endpoint,
            duration=args.duration,
            refresh_hz=args.refresh,
            plot=args.plot,
            ansi=ansi,
            color=ansi,
            save_plot=args.save_plot,
        )
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
