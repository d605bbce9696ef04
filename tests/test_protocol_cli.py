"""The metaemg-sim command line: probe, control, error messages."""

from __future__ import annotations

import pytest
from protocol_helpers import SimProcess

from firmware_protocol.cli import main
from metaemg.cli import control_request


def test_probe_and_control_against_a_running_simulator(tmp_path, capsys):
    with SimProcess(tmp_path) as sim:
        assert main(["probe", str(sim.link)]) == 0
        out = capsys.readouterr().out
        assert "protocol 1" in out and "watchdog 200 ms" in out and "status: safe" in out
        assert main(["control", str(sim.control_path), "fault", "code=stall", "detail=7"]) == 0
        event = sim.wait_event("fault")
        assert event["code"] == "stall" and event["detail"] == 7
        assert main(["control", str(sim.control_path), '{"cmd": "quit"}']) == 0
        assert sim.proc.wait(5) == 0
        assert sim.events()[-1]["event"] == "exit"


def test_control_to_a_missing_socket_is_a_one_line_error(tmp_path, capsys):
    assert main(["control", str(tmp_path / "nothing.ctl"), "reboot"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_probe_of_a_missing_device_is_a_one_line_error(tmp_path, capsys):
    assert main(["probe", str(tmp_path / "myhand")]) == 2
    assert "no such device" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["vanish", "ms=500", "reboot=true"], {"cmd": "vanish", "ms": 500, "reboot": True}),
        (["fault", "code=overcurrent"], {"cmd": "fault", "code": "overcurrent"}),
        (['{"cmd": "set", "drop": 0.1}'], {"cmd": "set", "drop": 0.1}),
    ],
)
def test_control_request_parsing(words, expected):
    assert control_request(words) == expected


@pytest.mark.parametrize("words", [["vanish", "ms"], ["{not json"]])
def test_bad_control_words_are_one_line_errors(tmp_path, capsys, words):
    assert main(["control", str(tmp_path / "x.ctl"), *words]) == 2
    assert capsys.readouterr().err.startswith("error: control request")
