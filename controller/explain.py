"""The daemon's state in plain words, for a person: one definition for every viewer.

``metaemg-monitor`` (terminal and plot) and ``metaemg-console`` (browser) show the same words and
follow the same rule: the decision and the class probabilities mean something only while the
daemon is ``running`` and its status is fresh; otherwise they are shown greyed (or not at all),
never as if the hand followed them.

:func:`explain` turns the last ``status`` message of the monitor stream (docs/controller.md) and
its age into an :class:`Explanation`: a headline ("FAULT: device fault: overcurrent"), what it
means, what to do next, and the control that does it (``action``: a button in the console, a
``myhand-controller ctl`` command in a terminal, written by :func:`ctl_command`).
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from datetime import datetime

from controller.states import HELD_CHECK, HELD_NO_SESSION

STALE_AFTER_S = 2.0  # no status message for this long: the daemon is not heard (it publishes at 10 Hz)

# state -> (headline, what it means, what to do next, the control that does it or None, severity)
_WORDS: dict[str, tuple[str, str, str, str | None, str]] = {
    "running": (
        "RUNNING",
        "the hand follows the decisions",
        "pause before adjusting the armband or the hand",
        "pause",
        "ok",
    ),
    "paused": (
        "PAUSED",
        "the hand is held; decisions are not sent",
        "resume when the patient is ready",
        "resume",
        "warn",
    ),
    "stale": (
        "NO USABLE SIGNAL",
        "the hand is held until the armband's signal is good again",
        "check that the armband sits firmly and its electrodes touch the skin",
        None,
        "warn",
    ),
    "waiting_for_stream": (
        "WAITING FOR THE ARMBAND",
        "the hand is held; no armband stream that fits the model",
        "switch the armband on, or check that it is the one the model is for",
        None,
        "warn",
    ),
    "waiting_for_link": (
        "WAITING FOR THE ORTHOSIS",
        "no connection to the hand orthosis",
        "check the orthosis's cable and power",
        None,
        "warn",
    ),
    "fault": (
        "FAULT",
        "the hand is stopped",
        "check the hand, then clear the fault",
        "clear",
        "fault",
    ),
    "starting": ("STARTING", "the controller is starting", "wait a few seconds", None, "warn"),
    "stopping": ("STOPPING", "the controller is shutting down", "start the service again to go on", None, "warn"),
}
NOT_HEARD = (
    "NO CONTROLLER",
    "nothing heard from the controller",
    "check that the myhand-controller service runs (systemctl status myhand-controller)",
)


@dataclass(frozen=True)
class Explanation:
    state: str  # the daemon's state, or "unknown" when not heard
    headline: str  # "FAULT: device fault: overcurrent"
    meaning: str
    next_step: str
    action: (
        str | None
    )  # the control that does the next step: "pause", "resume", "clear", "calibrate", "session" or None
    severity: str  # "ok", "warn" or "fault"
    live: bool  # the decision and probabilities mean something now

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return f"{self.headline}. {self.meaning[0].upper()}{self.meaning[1:]}; {self.next_step}."


def model_words(session: dict) -> str:
    """A session's model for a person: whose, when, how good (never only a hash)."""
    model = session.get("model") or {}
    patient = session.get("patient")
    if not model.get("calibrated"):
        return f"{patient} has no calibrated model yet: the hand will not move until a calibration"
    accuracy = model.get("accuracy_after")
    quality = f", accuracy {accuracy:.0%} at calibration" if isinstance(accuracy, int | float) else ""
    point = f", {model['operating_point']}" if model.get("operating_point") else ""
    return f"{patient}'s model calibrated {when(model.get('time'))}{quality}{point}"


def when(iso: object, now: datetime | None = None) -> str:
    """An ISO time in local time, one format everywhere: "14:05", with the date where it is not
    today ("3 Dec 2026 14:05"); "-" when unknown."""
    if not isinstance(iso, str):
        return "-"
    try:
        t = datetime.fromisoformat(iso).astimezone()
    except ValueError:
        return "-"
    today = (now or datetime.now().astimezone()).date()
    return t.strftime("%H:%M") if t.date() == today else f"{t.day} {t.strftime('%b %Y %H:%M')}"


def state_headline(state: str) -> str:
    """The headline of daemon state ``state`` without its reason: "PAUSED", "NO USABLE SIGNAL"."""
    return _WORDS[state][0] if state in _WORDS else str(state).upper()


def ctl_command(action: str, *, config: str | None = None, control: str | None = None) -> str:
    """``action`` ("pause", "resume", "clear", "calibrate") as the command a person types in a terminal.

    ``ctl`` finds the daemon from a configuration file: ``config`` (the file the daemon was
    started with) makes it ``myhand-controller ctl --config FILE ACTION``; without it, ``control``
    (the daemon's control endpoint, as its status reports it) gives ``--control ENDPOINT``;
    without either, ``ctl`` looks where every tool does ($MYHAND_CONFIG, else
    /etc/myhand/controller.yaml).
    """
    if action == "calibrate":
        return "metaemg-calibrate --patient ID"
    if action == "session":
        action = "session ID"
    words = ["myhand-controller", "ctl"]
    if config:
        words += ["--config", config]
    elif control:
        words += ["--control", control]
    return shlex.join([*words, *action.split()])


def explain(status: dict | None, age_s: float | None) -> Explanation:
    """``status``: the last status message (None: none yet); ``age_s``: seconds since it arrived."""
    if status is None or age_s is None or age_s > STALE_AFTER_S:
        headline, meaning, step = NOT_HEARD
        if status is not None and age_s is not None:
            meaning = f"nothing heard from the controller for {age_s:.0f} s"
        return Explanation("unknown", headline, meaning, step, None, "fault", False)
    state = str(status.get("state") or "unknown")
    reason = status.get("reason")
    headline, meaning, step, action, severity = _WORDS.get(
        state, (state.upper(), "unknown state", "see the controller's log", None, "warn")
    )
    session = status.get("session") if isinstance(status.get("session"), dict) else None
    if state == "paused" and reason == HELD_NO_SESSION:
        return Explanation(
            state,
            "NO PATIENT SESSION",
            "the hand is held until a session is opened for a patient",
            "open a session: enter the patient's id",
            "session",
            "warn",
            False,
        )
    if state == "paused" and reason == HELD_CHECK and session is not None:
        return Explanation(
            state,
            f"SESSION {session.get('patient')}: KEEP THE MODEL OR CALIBRATE",
            f"the hand is held; {model_words(session)}",
            "keep the model if it still suits the patient, or calibrate again",
            "resume",
            "warn",
            False,
        )
    if state == "fault" and isinstance(reason, str) and reason.startswith("protocol mismatch"):
        step, action = "update the controller or the orthosis firmware so that their versions match", None
    if state == "waiting_for_stream" and isinstance(reason, str) and reason.startswith("no LSL stream matching"):
        reason = None  # no armband sends at all: the meaning says it; the stream's name is in the log
        meaning = "the hand is held; no armband is sending"
    if reason and state not in ("running", "paused"):
        headline = f"{headline}: {reason}"
    recalibrate = status.get("recalibration")
    if isinstance(recalibrate, str) and state in ("running", "paused"):
        # the session adaptation's flag (metaemg.drift): the hand still follows, but should not for long
        headline, meaning = f"{headline}: RECALIBRATION SUGGESTED", recalibrate
        step, action, severity = (
            "calibrate again when the patient can (the hand holds still meanwhile)",
            "calibrate",
            "warn",
        )
    patient = (session or {}).get("patient")
    if patient and state in ("running", "paused", "stale"):
        meaning = f"{meaning} (patient {patient})"  # whose session, on the main screen
    return Explanation(state, headline, meaning, step, action, severity, state == "running")


def event_text(msg: dict) -> str:
    """One ``event`` message of the monitor stream in plain words (the monitor's and the console's lists)."""
    kind = msg.get("event")
    if kind == "state":
        state, reason = str(msg.get("state")), msg.get("reason")
        if state == "paused" and reason in (HELD_NO_SESSION, HELD_CHECK, "operator"):
            reason = {HELD_NO_SESSION: "no patient session", HELD_CHECK: "a session opened", "operator": None}[reason]
        return f"now {state_headline(state)}" + (f" ({reason})" if reason and state != "running" else "")
    if kind == "reload":
        if not msg.get("ok"):
            return f"a new model was refused: {msg.get('error')}"
        return f"now running model {msg.get('model_id')}"
    if kind == "model_chosen":
        return f"the packaged model that fits the armband: {msg.get('model_id')}"
    if kind == "session":
        session = msg.get("session") or {}
        return f"session opened for {session['patient']}" if session.get("patient") else "session ended"
    if kind == "stream_connected":
        stream = msg.get("stream") or {}
        return f"armband connected ({stream.get('name') or 'no name'})"
    if kind == "stream_lost":
        return "armband lost: no more samples"
    if kind in ("stream_missing", "stream_ambiguous", "stream_foreign", "stream_mismatch"):
        return f"no usable armband: {msg.get('detail') or kind}"
    if kind == "recalibration_suggested":
        return f"recalibration suggested: {msg.get('detail') or msg.get('why') or ''}".rstrip(": ")
    return f"{str(kind).replace('_', ' ')}: {msg.get('detail') or ''}".strip().rstrip(":")
