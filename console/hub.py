"""What the console knows from the daemon's monitor stream, and the view the page draws.

:class:`Hub` is pure: fed with ``feed(topic, message, now)`` (``now``: the console's monotonic
clock when the message arrived), it answers :meth:`Hub.view` for a page at time ``now``. The rules
for what a decision means are :mod:`controller.explain`'s, the same as ``metaemg-monitor``'s.
"""

from __future__ import annotations

import time

from controller.explain import explain
from controller.monitor import percentiles
from controller.view import MonitorView

DECISION_FRESH_S = 1.0  # a decision older than this is shown as stale, whatever the state
CUE_SHOWN_S = 3.0  # a cue is shown this long after its last message (the calibration sends one a second)
LATENCIES = 400  # decisions kept for the latency percentiles


class Hub(MonitorView):
    """The console's reader of the monitor stream (:class:`controller.view.MonitorView`) and the
    view the page draws."""

    def __init__(self, emg_keep: int = 4000, started_wall: float | None = None) -> None:
        super().__init__(history=LATENCIES, emg_samples=emg_keep)
        self.started_wall = time.time() if started_wall is None else started_wall
        self.problem: str | None = None  # why the console does not listen to the monitor stream (yet)

    def feed(self, topic: str, msg: dict, now: float) -> None:
        self.update(topic, msg, now)

    def latency(self) -> dict | None:
        """The daemon's latency by the monitor's one rule (:func:`controller.monitor.percentiles`)."""
        got = percentiles(self.latencies)
        return None if got is None else {"p50_ms": got["p50"], "p99_ms": got["p99"], "windows": len(self.latencies)}

    def view(self, now: float) -> dict:
        """Everything the page draws but the EMG (see :meth:`emg_since`)."""
        age = None if self.status_at is None else now - self.status_at
        why = explain(self.status, age)
        s = self.status or {}
        link, inp, model = s.get("link") or {}, s.get("input") or {}, s.get("model") or {}
        decision = None
        if self.decision is not None and self.decision_at is not None:
            d_age = now - self.decision_at
            decision = {
                "intent": self.decision.get("intent"),
                "label": self.decision.get("label"),
                "probabilities": self.decision.get("probabilities"),
                "rejected": self.decision.get("rejected"),
                "age_s": round(d_age, 2),
                "live": why.live and d_age <= DECISION_FRESH_S,
            }
        cue = None
        if self.cue is not None and self.cue_at is not None and now - self.cue_at <= CUE_SHOWN_S:
            cue = {**self.cue, "age_s": round(now - self.cue_at, 2)}
        return {
            "explain": why.to_dict(),
            "state": why.state,
            "status_age_s": None if age is None else round(age, 2),
            "paused": s.get("paused"),
            "session": s.get("session"),  # null: the controller keeps no sessions
            "orthosis": {
                "connected": bool(link.get("ready")),
                "device_state": link.get("device_state"),
                "position": link.get("position"),  # permille of travel: 0 open .. 1000 closed
                "fault": link.get("fault"),
                "port": link.get("url"),
            },
            "stream": {
                "connected": inp.get("connected"),
                "name": (inp.get("stream") or {}).get("name"),
                "measured_rate": inp.get("measured_rate"),
                "saturated_fraction": inp.get("saturated_fraction"),
                "problem": inp.get("problem"),
            },
            "model": {
                "model_id": model.get("model_id"),
                "path": model.get("path"),
                "kind": model.get("kind"),
                "input_range": model.get("input_range"),
                "about": model.get("about"),
            },
            "decision": decision,
            "threshold": (s.get("policy") or {}).get("threshold"),
            "latency": self.latency(),
            "emg_rate": self.emg_rate,
            "cue": cue,
            "commands": dict(self.commands),
            "events": list(self.events)[-6:],
            "monitor_problem": self.problem,
        }
