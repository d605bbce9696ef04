"""The systemd unit and the udev rule: systemd-analyze verify is silent, the security rating is
2.5 or better, and the unit says what the controller relies on."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rig.processes import BIN

REPO = Path(__file__).resolve().parents[1]

UNIT = REPO / "systemd" / "myhand-controller.service"
RULE = REPO / "systemd" / "99-myhand.rules"
PRODUCTION_BINARY = "/opt/myhand/venv/bin/myhand-controller"


@pytest.fixture(scope="module")
def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing in CI (apt-get install systemd)")
        pytest.skip("systemd-analyze is not installed")
    return tool


@pytest.fixture(scope="module")
def local_unit(tmp_path_factory) -> Path:
    """The unit with ExecStart pointing at this checkout's binary (verify wants it to exist)."""
    text = UNIT.read_text()
    assert f"ExecStart={PRODUCTION_BINARY} " in text
    out = tmp_path_factory.mktemp("unit") / UNIT.name
    out.write_text(text.replace(f"ExecStart={PRODUCTION_BINARY}", f"ExecStart={BIN / 'myhand-controller'}"))
    return out


def test_systemd_analyze_verify_prints_nothing(analyze, local_unit):
    proc = subprocess.run([analyze, "verify", str(local_unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout == "" and proc.stderr == ""


def test_security_rating_is_at_most_2_5(analyze, local_unit):
    proc = subprocess.run(
        [analyze, "security", "--offline=yes", str(local_unit)], capture_output=True, text=True, timeout=60
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    print(f"\nsystemd-analyze security: {match.group(1)}")
    assert float(match.group(1)) <= 2.5


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
