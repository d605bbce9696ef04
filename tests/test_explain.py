"""controller.explain: the daemon's state in words, one definition for the monitor (terminal and
plot), the demo and the console. Pure: a status message and its age in, an Explanation out."""

from __future__ import annotations

import pytest

from controller.explain import STALE_AFTER_S, Explanation, ctl_command, explain, state_headline
from controller.states import DaemonState


def status(state: str, reason: str | None = None, **extra) -> dict:
    return {"state": state, "reason": reason, "ready": True, "paused": state == "paused", **extra}


@pytest.mark.parametrize(
    ("state", "reason", "headline", "action", "severity"),
    [
        ("running", None, "RUNNING", "pause", "ok"),
        ("paused", "operator", "PAUSED", "resume", "warn"),
        ("stale", "rearming", "NO USABLE SIGNAL: rearming", None, "warn"),
        ("waiting_for_stream", "resolving", "WAITING FOR THE ARMBAND: resolving", None, "warn"),
        ("waiting_for_link", "connecting", "WAITING FOR THE ORTHOSIS: connecting", None, "warn"),
        ("fault", "device fault: overcurrent", "FAULT: device fault: overcurrent", "clear", "fault"),
        ("starting", None, "STARTING", None, "warn"),
        ("stopping", "shutdown", "STOPPING: shutdown", None, "warn"),
    ],
)
def test_each_state_in_words(state, reason, headline, action, severity):
    e = explain(status(state, reason), 0.1)
    assert (e.state, e.headline, e.action, e.severity) == (state, headline, action, severity)
    assert e.live is (state == "running")  # only running makes a decision mean something
    assert e.meaning and e.next_step
    assert e.line().startswith(f"{headline}. {e.meaning[0].upper()}")
    assert e.to_dict()["headline"] == headline


def test_every_daemon_state_has_words():
    for state in DaemonState:
        assert explain(status(state.value), 0.0).meaning != "unknown state", state
    assert explain(status("levitating"), 0.0).headline == "LEVITATING"
    assert explain(status("levitating"), 0.0).next_step == "see the controller's log"


def test_paused_and_running_do_not_repeat_their_reason():
    assert explain(status("paused", "operator"), 0.0).headline == "PAUSED"
    assert explain(status("running", "decoding"), 0.0).headline == "RUNNING"


def test_fault_says_how_to_leave_it():
    e = explain(status("fault", "device fault: overcurrent"), 0.5)
    assert e.meaning == "the hand is stopped"
    assert e.next_step == "check the hand, then clear the fault" and e.action == "clear"
    assert not e.live


def test_a_protocol_mismatch_is_not_cleared_but_updated():
    e = explain(status("fault", "protocol mismatch: device speaks version 2, host 1"), 0.5)
    assert e.headline == "FAULT: protocol mismatch: device speaks version 2, host 1"
    assert e.action is None and "firmware" in e.next_step and "versions match" in e.next_step
    assert e.severity == "fault" and not e.live


def test_a_stale_status_means_the_controller_is_not_heard():
    fresh = explain(status("running"), STALE_AFTER_S)
    assert fresh.live and fresh.headline == "RUNNING"
    e = explain(status("running"), STALE_AFTER_S + 2.2)
    assert e == Explanation(
        state="unknown",
        headline="NO CONTROLLER",
        meaning="nothing heard from the controller for 4 s",
        next_step="check that the myhand-controller service runs (systemctl status myhand-controller)",
        action=None,
        severity="fault",
        live=False,
    )


def test_nothing_heard_yet():
    for e in (explain(None, None), explain(None, 0.1), explain(status("running"), None)):
        assert e.state == "unknown" and e.headline == "NO CONTROLLER" and not e.live
        assert e.meaning == "nothing heard from the controller"


def test_state_headline_without_a_reason():
    assert state_headline("paused") == "PAUSED"
    assert state_headline("waiting_for_link") == "WAITING FOR THE ORTHOSIS"
    assert state_headline("fault") == "FAULT"
    assert state_headline("odd") == "ODD"


def test_ctl_command_names_the_daemon_the_way_it_was_found():
    assert ctl_command("resume") == "myhand-controller ctl resume"
    assert (
        ctl_command("clear", config="/etc/myhand/controller.yaml")
        == "myhand-controller ctl --config /etc/myhand/controller.yaml clear"
    )
    assert (
        ctl_command("pause", control="ipc:///run/myhand/control.sock")
        == "myhand-controller ctl --control ipc:///run/myhand/control.sock pause"
    )
    # the configuration wins (ctl reads the control endpoint from it); odd paths are quoted
    assert ctl_command("resume", config="/tmp/my conf.yaml", control="ipc:///x") == (
        "myhand-controller ctl --config '/tmp/my conf.yaml' resume"
    )


def test_a_session_is_said_in_words_with_whose_model_when_and_how_good():
    from datetime import UTC, datetime

    from controller.explain import model_words, when

    held = explain({"state": "paused", "reason": "no patient session", "session": {"patient": None}}, 0.1)
    assert (held.headline, held.action) == ("NO PATIENT SESSION", "session")
    model = {
        "calibrated": True,
        "time": "2026-12-07T09:30:00+00:00",
        "accuracy_after": 0.974,
        "operating_point": "balanced",
        "patient": "P012",
        "model_id": "abc",
    }
    session = {"patient": "P012", "kept": False, "model": model}
    check = explain(
        {"state": "paused", "reason": "session opened: keep the model or calibrate", "session": session}, 0.1
    )
    assert check.headline == "SESSION P012: KEEP THE MODEL OR CALIBRATE" and check.action == "resume"
    local = datetime(2026, 12, 7, 9, 30, tzinfo=UTC).astimezone()
    assert (
        check.meaning
        == f"the hand is held; P012's model calibrated {when(model['time'])}, accuracy 97% at calibration, balanced"
    )
    assert when(model["time"], now=local) == local.strftime("%H:%M")  # today: the time alone
    assert when(model["time"], now=local.replace(year=2027)) == f"{local.day} {local.strftime('%b %Y %H:%M')}"
    assert when(None) == "-" and when("yesterday") == "-"
    none = {"patient": "P013", "model": {"calibrated": False}}
    assert model_words(none) == "P013 has no calibrated model yet: the hand will not move until a calibration"
    running = explain({"state": "running", "session": {"patient": "P012", "kept": True, "model": model}}, 0.1)
    assert running.meaning == "the hand follows the decisions (patient P012)"


def test_events_are_plain_words():
    from controller.explain import event_text

    assert event_text({"event": "state", "prev": "stale", "state": "running", "reason": None}) == "now RUNNING"
    assert event_text({"event": "state", "state": "stale", "reason": "rearming"}) == "now NO USABLE SIGNAL (rearming)"
    assert (
        event_text({"event": "stream_connected", "stream": {"name": "MyHand-EMG"}}) == "armband connected (MyHand-EMG)"
    )
    assert event_text({"event": "session", "session": {"patient": "P012"}}) == "session opened for P012"
    assert event_text({"event": "reload", "ok": False, "error": "bad file"}) == "a new model was refused: bad file"
