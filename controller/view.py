"""What a client knows from the daemon's monitor stream: the one view every reader uses.

:class:`MonitorView` is pure: fed with ``update(topic, message, now)`` (``now``: the reader's
monotonic clock when the message arrived), it keeps the last status and decision with their
arrival times, the latencies (percentiles by :func:`controller.monitor.percentiles`), the recent
decisions, the EMG (each sample numbered as it arrived), the events in words
(:func:`controller.explain.event_text`), every state change, the commands sent by intent, and the
last cue. A message of another schema is counted and left out. ``metaemg-monitor`` draws it in a
terminal (:mod:`controller.monitor_cli`) and ``metaemg-console`` serves it to the page
(:mod:`console.hub`).
"""

from __future__ import annotations

import time
from collections import Counter, deque

from controller.explain import Explanation, event_text, explain
from controller.monitor import SCHEMA, percentiles
from metaemg.intents import INTENTS


class MonitorView:
    def __init__(
        self,
        history: int = 400,
        emg_samples: int = 1000,
        *,
        started_at: float | None = None,
        threshold: float | None = None,
        events: int = 12,
    ) -> None:
        self.started_at = started_at  # when the reader started (monotonic): "waiting" until STALE_AFTER_S
        self.default_threshold = threshold  # policy.threshold of the configuration, when the reader read one
        self.status: dict | None = None
        self.status_at: float | None = None
        self.decision: dict | None = None
        self.decision_at: float | None = None
        self.latencies: deque[float] = deque(maxlen=history)
        self.decisions: deque[tuple[float, list, str | None]] = deque(maxlen=history)  # (t_mono, probs, intent)
        self.emg: deque[list] = deque(maxlen=emg_samples)
        self.emg_next = 0  # the number of the next EMG sample to arrive
        self.emg_rate: float | None = None
        self.events: deque[dict] = deque(maxlen=events)  # {"t_wall", "text"}
        self.timeline: list[dict] = []  # every state change seen: {"t_wall", "state", "reason"}
        self.commands: Counter = Counter()  # commands sent to the orthosis, by intent
        self.cue: dict | None = None
        self.cue_at: float | None = None
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
            if self.status is None or self.status.get("state") != msg.get("state"):
                self._state_seen(msg.get("t_wall"), msg.get("state"), msg.get("reason"))
            self.status, self.status_at = msg, now
        elif topic == "decision":
            self._decision(msg, now)
        elif topic == "emg":
            samples = msg.get("samples") or []
            self.emg.extend(samples)
            self.emg_next += len(samples)
            self.emg_rate = msg.get("rate") or self.emg_rate
        elif topic == "cue" and isinstance(msg.get("cue"), dict):
            self.cue, self.cue_at = msg["cue"], now
        elif topic == "event":
            self.events.append({"t_wall": msg.get("t_wall"), "text": event_text(msg)})
            if msg.get("event") == "state":
                self._state_seen(msg.get("t_wall"), msg.get("state"), msg.get("reason"))

    def _decision(self, msg: dict, now: float) -> None:
        self.decision, self.decision_at = msg, now
        if isinstance(msg.get("latency_ms"), int | float):
            self.latencies.append(float(msg["latency_ms"]))
        self.decisions.append((msg.get("t_mono") or now, msg.get("probabilities") or [], msg.get("intent")))
        if msg.get("command_seq") is not None and msg.get("intent") in INTENTS:
            self.commands[msg["intent"]] += 1

    def _state_seen(self, t_wall, state, reason) -> None:
        if self.timeline and self.timeline[-1]["state"] == state:
            return
        self.timeline.append({"t_wall": t_wall, "state": state, "reason": reason})

    def explanation(self, now: float) -> Explanation:
        """The daemon's state in words, from the last status and its age (controller.explain)."""
        return explain(self.status, None if self.status_at is None else now - self.status_at)

    @property
    def threshold(self) -> float | None:
        """The policy threshold: as the daemon's status reports it, else the configuration's."""
        value = ((self.status or {}).get("policy") or {}).get("threshold")
        return float(value) if isinstance(value, int | float) else self.default_threshold

    def latency_percentiles(self) -> dict[str, float] | None:
        return percentiles(self.latencies)

    def decision_rate(self) -> float | None:
        if len(self.decisions) < 2:
            return None
        span = self.decisions[-1][0] - self.decisions[0][0]
        return (len(self.decisions) - 1) / span if span > 0 else None

    def emg_since(self, index: int) -> tuple[int, list]:
        """``(first number, samples)`` of the EMG after sample number ``index`` that is still kept."""
        first = max(index, self.emg_next - len(self.emg))
        n = self.emg_next - first
        return first, list(self.emg)[len(self.emg) - n :] if n > 0 else []
