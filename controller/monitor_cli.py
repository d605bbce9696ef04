"""``metaemg-monitor``: watch the daemon's monitor stream live in the terminal.

Subscribes to the ZeroMQ PUB stream (docs/controller.md, "Monitor stream") and redraws, a few
times a second, the daemon's state in words (:func:`controller.explain.explain`: headline, what it
means, what to do next and the ``myhand-controller ctl`` command that does it), the current intent
and the class probabilities as bars, the input, link and orthosis state, the model id, the
counters and latency percentiles. The intent and the bars are shown as live only while the
explanation says so (``running``, status fresh); otherwise they are greyed and labelled ("last
decision 0.1 s ago, not sent: PAUSED"), or left out when older than
:data:`~controller.explain.STALE_AFTER_S`. ``--once --json`` prints one status message and exits
(scripts, health checks); ``--plot`` opens a live matplotlib window with the state, the EMG, the
decisions against the policy threshold and the orthosis position. The view (:class:`MonitorView`)
(:mod:`controller.view`, every reader's) and the text (:func:`render`) are pure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.explain import STALE_AFTER_S, Explanation, ctl_command, state_headline
from controller.monitor import SCHEMA
from controller.view import MonitorView
from metaemg.cli import entry_point, renamed
from metaemg.errors import ConfigError, MetaEMGError
from metaemg.intents import INTENTS

DEFAULT_ENDPOINT = "ipc://<runtime dir>/monitor.sock"  # as the daemon resolves it (Config.monitor_endpoint)
CLASSES = INTENTS
POSITION_OPEN, POSITION_CLOSED = 0, 1000  # status link.position (firmware_protocol.device): 0 open .. 1000 closed
SEVERITY_COLOR = {"ok": "1;32", "warn": "1;33", "fault": "1;31"}  # ANSI, by Explanation.severity
GREY = "90"


class MonitorTimeout(MetaEMGError):
    """Nothing arrived on the monitor stream in time."""


def _c(text: str, code: str, color: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if color else text


def _bar(p: float | None, width: int, fill: str = "#", threshold: float | None = None) -> str:
    """``p`` as ``width`` cells: ``fill`` up to p, ``.`` after; ``:`` marks ``threshold`` where unfilled."""
    if p is None:
        return "?" * width
    n = max(0, min(width, int(round(p * width))))
    cells = [fill] * n + ["."] * (width - n)
    if threshold is not None:
        k = max(0, min(width - 1, int(round(threshold * width)) - 1))
        if k >= n:
            cells[k] = ":"
    return "".join(cells)


def position_bar(position: float | None, width: int = 10) -> str:
    """Where the orthosis is, open at the left, closed at the right: ``[--X-------]``
    (status ``link.position``: 0 open .. 1000 closed); ``[??????????]`` when unknown."""
    if not isinstance(position, (int, float)):
        return "[" + "?" * width + "]"
    clipped = min(max(float(position), POSITION_OPEN), POSITION_CLOSED)
    i = int(round((clipped - POSITION_OPEN) / (POSITION_CLOSED - POSITION_OPEN) * (width - 1)))
    return "[" + "-" * i + "X" + "-" * (width - 1 - i) + "]"


def _get(d: dict | None, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict):
            return default
        d = d.get(k)
    return default if d is None else d


@dataclass(frozen=True)
class CtlHint:
    """How the monitor writes a ``myhand-controller ctl`` command so that it reaches the daemon it
    watches: with the monitor's ``--config`` when it was given one (``ctl`` reads the control
    endpoint from it); with the daemon's control endpoint, from its status, when the monitor was
    pointed at an ``--endpoint`` instead; bare when both find the daemon the same way
    ($MYHAND_CONFIG, else /etc/myhand/controller.yaml)."""

    config: str | None = None
    by_endpoint: bool = False

    def command(self, action: str, status: dict | None) -> str:
        control = _get(status, "control", "endpoint") if self.by_endpoint else None
        return ctl_command(action, config=self.config, control=control if isinstance(control, str) else None)


@dataclass(frozen=True)
class DecisionView:
    """How the last decision is shown now: ``live`` (the hand follows it: shown normally), else
    greyed with ``label`` saying why; ``bars``: its probabilities are recent enough to show."""

    live: bool
    label: str | None
    bars: bool


def decision_view(view: MonitorView, now: float, expl: Explanation) -> DecisionView | None:
    """The last decision's presentation (None: no decision yet). Live only while ``expl.live``
    (running, status fresh), the decision itself was taken ``running`` and is fresh."""
    d = view.decision
    if d is None or view.decision_at is None:
        return None
    age = now - view.decision_at
    fresh = age <= STALE_AFTER_S
    taken_in = str(d.get("state") or "unknown")
    if taken_in != "running":
        return DecisionView(False, f"last decision {age:.1f} s ago, not sent: {state_headline(taken_in)}", fresh)
    if not expl.live:
        now_state = expl.headline.split(":")[0]
        return DecisionView(False, f"last decision {age:.1f} s ago, sent then; now {now_state}", fresh)
    if not fresh:
        return DecisionView(False, f"last decision {age:.1f} s ago, none since", False)
    return DecisionView(True, None, True)


def _explanation_lines(expl: Explanation, status: dict | None, ctl: CtlHint, color: bool) -> list[str]:
    flags = ""
    if status is not None and expl.state != "unknown":
        if status.get("paused") and expl.state != "paused":
            flags += "  (also paused by the operator)"
        if not status.get("ready"):
            flags += "  (not ready yet)"
    lines = [
        f"state   {_c(expl.headline, SEVERITY_COLOR.get(expl.severity, '1'), color)}{flags}",
        f"        {expl.meaning}",
        f"next    {expl.next_step}",
    ]
    if expl.action is not None:
        lines.append(f"        {_c(ctl.command(expl.action, status), '1', color)}")
    return lines


def render(
    view: MonitorView,
    endpoint: str = "",
    now: float | None = None,
    color: bool = False,
    width: int = 78,
    ctl: CtlHint | None = None,
) -> str:
    """The monitor screen as text (no cursor codes; colour codes only with ``color``)."""
    now = time.monotonic() if now is None else now
    ctl = ctl or CtlHint()
    lines = [f"metaemg-monitor  {endpoint}".rstrip()]
    if view.last_at is None:
        if view.started_at is None or now - view.started_at > STALE_AFTER_S:
            lines += _explanation_lines(view.explanation(now), None, ctl, color)
        lines.append(_c("waiting for the daemon (no message yet)", "33", color))
        if view.foreign:  # messages arrive, but of another version: say so, not only "waiting"
            lines.append(_c(f"ignored {view.foreign} message(s) without schema {SCHEMA}", "33", color))
        return "\n".join(lines) + "\n"
    expl = view.explanation(now)
    st, d = view.status, view.decision
    lines += _explanation_lines(expl, st, ctl, color)
    lines += _decision_lines(view, now, expl, color, width)
    status_age = None if st is None or view.status_at is None else now - view.status_at
    stale = status_age is not None and status_age > STALE_AFTER_S
    if stale:
        lines.append(_c(f"the lines below are from the last status, {status_age:.1f} s old", GREY, color))
    rest = _status_lines(st, color and not stale)
    model_id = _get(st, "model", "model_id", default=_get(d, "model_id", default="?"))
    kind = _get(st, "model", "kind", default="")
    rest.append(
        f"model   {model_id}{'  (' + kind + ')' if kind else ''}"
        + (f"  error: {_get(st, 'model', 'last_error')}" if _get(st, "model", "last_error") else "")
    )
    lat = view.latency_percentiles()
    rate = view.decision_rate()
    rest.append(
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
        rest.append("stages  " + "  ".join(f"{k} {v:.0f} us" for k, v in stages.items() if isinstance(v, (int, float))))
    counters = _get(st, "counters", default={})
    if counters:
        items = [f"{k} {v}" for k, v in counters.items()]
        row = "counts "
        for item in items:
            if len(row) + len(item) + 2 > width:
                rest.append(row.rstrip())
                row = "       "
            row += " " + item + " "
        rest.append(row.rstrip())
    for e in list(view.events)[-3:]:  # the last three
        rest.append(f"event   {e['text']}")
    lines += [_c(line, GREY, color) for line in rest] if stale else rest
    if view.foreign:
        lines.append(_c(f"ignored {view.foreign} message(s) without schema {SCHEMA}", "33", color))
    return "\n".join(lines) + "\n"


def _decision_lines(view: MonitorView, now: float, expl: Explanation, color: bool, width: int) -> list[str]:
    """The intent line and the probability bars: normal while live, greyed and labelled otherwise."""
    d = view.decision
    dv = decision_view(view, now, expl)
    if d is None or dv is None:
        return ["intent  - (no decision yet)"]
    intent = d.get("intent")
    threshold = view.threshold
    extra = ""
    if d.get("rejected"):
        extra += f"  rejected (below threshold{'' if threshold is None else f' {threshold:.2f}'})"
    if d.get("held"):
        extra += f"  held: {d['held']}"
    if d.get("safe_reason"):
        extra += f"  safe: {d['safe_reason']}"
    if dv.live:
        shown = "SAFE (no command)" if intent is None else str(intent).upper()
        lines = [f"intent  {_c(shown, '1;32' if intent else '1;33', color)}{extra}"]
    else:
        lines = [_c(f"intent  {dv.label}  (policy: {intent or 'safe'}){extra}", GREY, color)]
    if not dv.bars:
        return lines
    probs = _get(d, "probabilities", default=[])
    bar_w = max(10, width - 22)
    for i, name in enumerate(CLASSES):
        p = probs[i] if i < len(probs) and isinstance(probs[i], (int, float)) else None
        mark = "<" if d.get("label") == name else ""
        ptxt = "  ? " if p is None else f"{p:4.2f}"
        bar = f"  {name:<6} {ptxt} |{_bar(p, bar_w, '#' if dv.live else '-', threshold)}|{mark}"
        lines.append(bar if dv.live else _c(bar, GREY, color))
    return lines


def _status_lines(st: dict | None, color: bool) -> list[str]:
    """input, link and hand: from the last status message."""
    if st is None:
        return ["input   (no status yet)"]
    inp = _get(st, "input", default={})
    stream = _get(inp, "stream", default={})
    conn = _c("connected", "32", color) if inp.get("connected") else _c("NOT CONNECTED", "1;31", color)
    desc = (
        f"{stream.get('name', '?')} {stream.get('channels', '?')} ch @ {stream.get('rate', '?')} Hz"
        if stream
        else "no stream"
    )
    rate = inp.get("measured_rate")
    age_ms = inp.get("last_sample_age_ms")
    link = _get(st, "link", default={})
    ok = link.get("ready")
    position = link.get("position")
    return [
        f"input   {conn}  {desc}"
        + (f"  measured {rate:.0f}/s" if isinstance(rate, (int, float)) else "")
        + (f"  last sample {age_ms:.0f} ms ago" if isinstance(age_ms, (int, float)) else "")
        + (f"  problem: {inp['problem']}" if inp.get("problem") else ""),
        f"link    {_c(str(link.get('phase', '?')), '32' if ok else '1;31', color)}"
        f"  {link.get('url', '')}"
        + (f"  fw {link['firmware']}" if link.get("firmware") else "")
        + (f"  FAULT {link.get('fault_flags')}" if link.get("fault") else "")
        + (f"  problem: {link['problem']}" if link.get("problem") else ""),
        f"hand    device {link.get('device_state', '?')}  position "
        f"{position if isinstance(position, (int, float)) else '?'}  open {position_bar(position)} closed",
    ]


SEVERITY_MPL = {"ok": "tab:green", "warn": "tab:orange", "fault": "tab:red"}


class LivePlot:
    """A matplotlib figure: the daemon's state in words (title, coloured by severity), the last EMG
    samples, the decisions' probabilities against the policy threshold (greyed and labelled when
    the hand does not follow them), and the orthosis position between open and closed."""

    def __init__(self, channels: int = 8) -> None:
        import matplotlib.pyplot as plt

        self.plt = plt
        self.fig = plt.figure(figsize=(9, 7.5), num="metaemg-monitor")
        grid = self.fig.add_gridspec(3, 1, height_ratios=[3, 3, 0.8])
        self.ax_emg = self.fig.add_subplot(grid[0])
        self.ax_dec = self.fig.add_subplot(grid[1])
        self.ax_pos = self.fig.add_subplot(grid[2])
        self.emg_lines = [self.ax_emg.plot([], [], lw=0.7, label=f"emg{i}")[0] for i in range(channels)]
        self.ax_emg.set_ylabel("EMG (as received)")
        self.ax_emg.set_xlabel("samples (decimated)")
        self.prob_lines = [self.ax_dec.plot([], [], label=c)[0] for c in CLASSES]
        self.threshold_line = self.ax_dec.axhline(0.5, ls="--", lw=1, color="0.3", label="threshold")
        self.threshold_line.set_visible(False)
        self.ax_dec.set_ylim(-0.05, 1.05)
        self.ax_dec.set_ylabel("probability")
        self.ax_dec.set_xlabel("seconds ago")
        self.dec_title = self.ax_dec.set_title("", loc="left", fontsize="small")
        self.dec_note = self.ax_dec.text(
            0.5, 0.5, "", transform=self.ax_dec.transAxes, ha="center", va="center", color="0.35", fontsize="large"
        )
        self.ax_pos.set_xlim(POSITION_OPEN, POSITION_CLOSED)
        self.ax_pos.set_ylim(0, 1)
        self.ax_pos.set_yticks([])
        self.ax_pos.set_xticks([POSITION_OPEN, (POSITION_OPEN + POSITION_CLOSED) / 2, POSITION_CLOSED])
        self.ax_pos.set_xticklabels([f"open ({POSITION_OPEN})", "", f"closed ({POSITION_CLOSED})"])
        self.position_line = self.ax_pos.axvline(POSITION_OPEN, lw=6, color="tab:blue")
        self.position_line.set_visible(False)
        self.pos_title = self.ax_pos.set_title("orthosis position", loc="left", fontsize="small")
        self.title = self.fig.suptitle("waiting for the daemon", fontweight="bold")
        self.subtitle = self.fig.text(0.5, 0.935, "", ha="center", va="top", fontsize="small", wrap=True)
        self.fig.tight_layout(rect=(0, 0, 1, 0.91))
        self.frames = 0

    @property
    def open(self) -> bool:
        return self.plt.fignum_exists(self.fig.number)

    def update(self, view: MonitorView, now: float | None = None, ctl: CtlHint | None = None) -> None:
        now = time.monotonic() if now is None else now
        expl = view.explanation(now)
        self.title.set_text(expl.headline)
        self.title.set_color(SEVERITY_MPL.get(expl.severity, "black"))
        step = expl.next_step
        if expl.action is not None:
            step += f" ({(ctl or CtlHint()).command(expl.action, view.status)})"
        self.subtitle.set_text(f"{expl.meaning}; next: {step}")
        if view.emg:
            n = len(view.emg)
            for ch, line in enumerate(self.emg_lines):
                line.set_data(range(n), [s[ch] if ch < len(s) else float("nan") for s in view.emg])
            self.ax_emg.relim()
            self.ax_emg.autoscale_view()
        self._update_decisions(view, now, expl)
        link = _get(view.status, "link", default={})
        position = link.get("position")
        if isinstance(position, (int, float)):
            self.position_line.set_xdata([position, position])
            self.position_line.set_visible(True)
            self.pos_title.set_text(f"orthosis: device {link.get('device_state', '?')}, position {position:g}")
        else:
            self.position_line.set_visible(False)
            self.pos_title.set_text("orthosis: position unknown")
        self.fig.canvas.draw_idle()
        self.fig.canvas.flush_events()
        self.frames += 1

    def _update_decisions(self, view: MonitorView, now: float, expl: Explanation) -> None:
        if view.decisions:
            t_end = view.decisions[-1][0]
            ts = [t - t_end for t, _, _ in view.decisions]
            for k, line in enumerate(self.prob_lines):
                line.set_data(
                    ts, [p[k] if k < len(p) and p[k] is not None else float("nan") for _, p, _ in view.decisions]
                )
            self.ax_dec.set_xlim(min(ts[0], -1.0), 0)
        threshold = view.threshold
        if threshold is not None:
            self.threshold_line.set_ydata([threshold, threshold])
            self.threshold_line.set_visible(True)
        label = "threshold" if threshold is None else f"threshold {threshold:.2f}"
        if self.ax_dec.get_legend() is None or self.threshold_line.get_label() != label:
            self.threshold_line.set_label(label)
            self.ax_dec.legend(loc="upper left", fontsize="small")
        dv = decision_view(view, now, expl)
        live = dv is not None and dv.live
        for line in self.prob_lines:
            line.set_alpha(1.0 if live else 0.25)
        d = view.decision or {}
        if dv is None:
            self.dec_title.set_text("no decision yet")
        elif dv.live:
            self.dec_title.set_text(
                f"intent {str(d.get('intent') or 'safe').upper()}  "
                f"model {_get(view.status, 'model', 'model_id', default=d.get('model_id', '?'))}"
            )
        else:
            self.dec_title.set_text(f"no intent sent  (policy: {d.get('intent') or 'safe'})")
        self.dec_note.set_text("" if live else (dv.label if dv is not None else "no decision yet"))

    def close(self) -> None:
        self.plt.close(self.fig)


class _Subscription:
    """The monitor stream for this tool: :func:`controller.monitor.subscribe`, tried again (every
    :data:`RETRY_S`) while the daemon's socket is not there yet."""

    RETRY_S = 0.25

    def __init__(self, endpoint: str, topics: tuple[str, ...]) -> None:
        import zmq

        self.endpoint, self.topics = endpoint, topics
        self.ctx = zmq.Context()
        self.sock: Any = None  # a zmq SUB socket once connected
        self._tried = -math.inf
        self.connect()

    def connect(self):
        from controller.monitor import subscribe

        if self.sock is None and time.monotonic() - self._tried >= self.RETRY_S:
            self._tried = time.monotonic()
            try:
                self.sock = subscribe(self.ctx, self.endpoint, self.topics)
            except ConfigError:
                self.close()
                raise
        return self.sock

    def receive(self, timeout_ms: int) -> tuple[str, dict] | None:
        sock = self.connect()
        if sock is None:
            time.sleep(min(timeout_ms / 1000, self.RETRY_S))  # nothing to wait on yet: the daemon's socket
            return None
        return _receive(sock, timeout_ms)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None
        if not self.ctx.closed:
            self.ctx.term()


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
    sub = _Subscription(endpoint, ("status",))
    try:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            got = sub.receive(max(1, int(left * 1000)))
            if got and got[0] == "status" and got[1].get("schema") == SCHEMA:
                return got[1]
        raise MonitorTimeout(
            f"no status message from {endpoint} within {timeout:g} s (is the daemon running, "
            "with monitor.endpoint set to this address?)"
        )
    finally:
        sub.close()


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
    ctl: CtlHint | None = None,
    threshold: float | None = None,
) -> MonitorView:
    """Redraw until ``duration`` s have passed, the plot window is closed, or Ctrl-C."""
    out = out or sys.stdout
    view = MonitorView(started_at=time.monotonic(), threshold=threshold)
    live_plot = LivePlot() if plot else None
    if live_plot is not None:
        import matplotlib

        if matplotlib.get_backend().lower() != "agg":
            live_plot.plt.show(block=False)
    sub = _Subscription(endpoint, ("",))
    start = time.monotonic()
    next_draw = start
    try:
        while duration is None or time.monotonic() - start < duration:
            got = sub.receive(20)
            while got is not None:
                view.update(*got)
                got = sub.receive(0)
            now = time.monotonic()
            if now >= next_draw:
                next_draw = now + 1.0 / refresh_hz
                text = render(view, endpoint, now, color=color, ctl=ctl)
                out.write(("\x1b[H\x1b[2J" + text) if ansi else text + "\n")
                out.flush()
                if live_plot is not None:
                    if not live_plot.open:
                        break
                    live_plot.update(view, now, ctl)
    finally:
        sub.close()
        if live_plot is not None:
            if save_plot and live_plot.open:
                live_plot.update(view, ctl=ctl)
                live_plot.fig.savefig(save_plot, dpi=80)
            live_plot.close()
    return view


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="metaemg-monitor", description="Watch the MyHand daemon's monitor stream live.")
    p.add_argument(
        "--monitor",
        metavar="ENDPOINT",
        help="the daemon's monitor endpoint (default: as the daemon resolves it from its "
        "configuration, ipc://<runtime dir>/monitor.sock unless monitor.endpoint is set)",
    )
    renamed(p, "--endpoint", "--monitor")
    p.add_argument(
        "--config",
        help="the daemon's configuration file (default: $MYHAND_CONFIG, else "
        "/etc/myhand/controller.yaml when it exists)",
    )
    p.add_argument("--once", action="store_true", help="wait for one status message, print it, exit")
    p.add_argument("--json", action="store_true", help="with --once: print the status message as one JSON line")
    p.add_argument("--timeout", type=float, default=5.0, help="with --once: give up after S seconds (exit 2)")
    p.add_argument(
        "--plot",
        action="store_true",
        help="also open a live matplotlib window (state, EMG, decisions against the threshold, orthosis position)",
    )
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
    # a ctl command shown on screen must reach the daemon watched here (see CtlHint)
    ctl = CtlHint(
        config=os.path.abspath(args.config) if args.config else None,
        by_endpoint=args.monitor is not None and args.config is None,
    )
    threshold = None
    if args.monitor is None or args.config is not None:
        from controller import config as configuration

        path = args.config or configuration.service_config_path()
        cfg = configuration.load(path) if path else configuration.Config()
        threshold = cfg.policy.threshold  # until the daemon's status says (policy.threshold)
    if args.monitor is None:
        args.monitor = cfg.monitor_endpoint()
        if args.monitor.startswith("ipc://") and not Path(args.monitor[len("ipc://") :]).exists():
            raise ConfigError(
                f"no monitor socket at {args.monitor} (is myhand-controller running?); "
                f"{configuration.where_the_daemon_is(cfg, args.config)}"
            )
    if args.once:
        msg = wait_status(args.monitor, args.timeout)
        if args.json:
            print(json.dumps(msg))
        else:
            view = MonitorView(threshold=threshold)
            view.update("status", msg)
            print(render(view, args.monitor, ctl=ctl), end="")
        return 0
    ansi = not args.plain and sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
    try:
        run_live(
            args.monitor,
            duration=args.duration,
            refresh_hz=args.refresh,
            plot=args.plot,
            ansi=ansi,
            color=ansi,
            save_plot=args.save_plot,
            ctl=ctl,
            threshold=threshold,
        )
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
