"""The controller's systemd unit says what the controller relies on, and the udev rule makes
/dev/myhand (systemd-analyze verify and security on both installed units: tests/test_install.py)."""

from __future__ import annotations

import configparser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

UNIT = REPO / "systemd" / "myhand-controller.service"
RULE = REPO / "systemd" / "99-myhand.rules"
PRODUCTION_BINARY = "/opt/myhand/venv/bin/myhand-controller"


def _unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, dict_type=_MultiDict)
    parser.optionxform = str
    parser.read(UNIT)
    return parser


class _MultiDict(dict):
    """Keep repeated keys (DeviceAllow=, SystemCallFilter=) as newline-joined values."""

    def __setitem__(self, key, value):
        if key in self and isinstance(value, list):
            value = self[key] + value
        super().__setitem__(key, value)


def test_the_unit_declares_what_the_controller_relies_on():
    unit = _unit()
    service, head = unit["Service"], unit["Unit"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["ExecStart"].startswith(PRODUCTION_BINARY + " --config /etc/myhand/controller.yaml")
    assert service["User"] == "myhand" and "dialout" in service["SupplementaryGroups"]
    assert "char-ttyACM rw" in service["DeviceAllow"] and service["DevicePolicy"] == "closed"
    assert service["ProtectSystem"] == "strict"
    assert (service["StateDirectory"], service["RuntimeDirectory"], service["ConfigurationDirectory"]) == (
        "myhand",
        "myhand",
        "myhand",
    )
    assert service["RuntimeDirectoryMode"] == "0700"
    assert service["Restart"] == "on-failure" and "WatchdogSec" in service
    assert "StartLimitIntervalSec" in head and "StartLimitBurst" in head
    assert not any(key.startswith("StartLimit") for key in service)
    # SIGTERM gets 1 s of work at most; systemd waits longer before SIGKILL
    assert float(service["TimeoutStopSec"]) >= 2


def test_the_udev_rule_makes_dev_myhand_for_the_dialout_group():
    rules = [line for line in RULE.read_text().splitlines() if line and not line.startswith("#")]
    assert len(rules) == 1
    assert 'SUBSYSTEM=="tty"' in rules[0] and 'SYMLINK+="myhand"' in rules[0]
    assert 'GROUP="dialout"' in rules[0] and 'MODE="0660"' in rules[0]
