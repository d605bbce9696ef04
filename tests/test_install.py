"""The device PC's one install (issue 28): scripts/install-device.sh (``make install-device``) into
a temporary DESTDIR, run as a real subprocess (the virtual environment left out: no download in
the suite), its files and modes; both units it installs pass systemd-analyze; the console's URL
for the service's group."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from rig.processes import BIN

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "install-device.sh"
UNITS = ("myhand-controller.service", "myhand-console.service")


def install(dest: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "DESTDIR": str(dest), "MYHAND_VENV": "0", **env}
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=environ, timeout=120)


def mode(path: Path) -> str:
    return oct(stat.S_IMODE(os.lstat(path).st_mode))


def test_one_command_installs_every_file_with_its_mode_and_keeps_an_edited_config(tmp_path):
    dest = tmp_path / "root"
    proc = install(dest)
    assert proc.returncode == 0, proc.stderr
    expected = {
        "etc/myhand": "0o750",
        "etc/myhand/controller.yaml": "0o640",
        "etc/myhand/calibration.yaml": "0o640",
        "var/lib/myhand": "0o750",
        "etc/udev/rules.d/99-myhand.rules": "0o644",
        "etc/systemd/system/myhand-controller.service": "0o644",
        "etc/systemd/system/myhand-console.service": "0o644",
        "opt/myhand/docs/clinician.md": "0o644",
        "usr/share/applications/myhand-console.desktop": "0o644",
    }
    assert {p: mode(dest / p) for p in expected} == expected
    assert (dest / "etc/myhand/controller.yaml").read_bytes() == (REPO / "configs/controller.yaml").read_bytes()
    for unit in UNITS:
        assert (dest / "etc/systemd/system" / unit).read_bytes() == (REPO / "systemd" / unit).read_bytes()
    assert os.readlink(dest / "usr/local/bin/myhand-console") == "/opt/myhand/venv/bin/metaemg-console"
    calibration = (dest / "etc/myhand/calibration.yaml").read_text()
    assert "state_dir: /var/lib/myhand" in calibration and "control: ipc:///run/myhand/control.sock" in calibration
    from calibration.config import load

    assert load(dest / "etc/myhand/calibration.yaml").state_dir == "/var/lib/myhand"  # a valid configuration
    # what a person must decide is said at the end, and what only root does is named, not done
    assert "the orthosis's USB ids" in proc.stdout and "usermod -aG myhand" in proc.stdout
    assert "systemctl enable --now --no-block myhand-controller myhand-console" in proc.stdout
    assert "staged under" in proc.stdout and "create group and user myhand" in proc.stdout

    # again, with the clinic's edit: kept, the shipped file beside it
    edited = dest / "etc/myhand/controller.yaml"
    edited.write_text(edited.read_text().replace("name: MyHand-EMG", "name: Clinic-Armband"))
    proc = install(dest)
    assert proc.returncode == 0, proc.stderr
    assert "Clinic-Armband" in edited.read_text() and f"kept your {edited}" in proc.stdout
    assert (dest / "etc/myhand/controller.yaml.new").read_bytes() == (REPO / "configs/controller.yaml").read_bytes()


def test_installing_into_the_root_needs_root_and_says_so(tmp_path):
    environ = {**os.environ, "DESTDIR": "/", "MYHAND_VENV": "0"}
    cmd = ["bash", str(SCRIPT)]
    with tempfile.TemporaryDirectory() as readable:
        if os.getuid() == 0:  # as a user who is not root (this machine's suite may run as root),
            # from a copy that user can read wherever the checkout is (a mktemp -d clone is 0700)
            os.chmod(readable, 0o755)
            copy = Path(shutil.copy(SCRIPT, readable))
            copy.chmod(0o644)
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", str(copy)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=environ, timeout=60, cwd="/")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: installing into / needs root: sudo make install-device (or DESTDIR=DIR to stage it elsewhere)"
    ]


@pytest.fixture(scope="module")
def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing (apt-get install systemd)")
    return tool


@pytest.mark.parametrize("unit", UNITS)
def test_both_installed_units_pass_systemd_analyze(tmp_path, analyze, unit):
    """verify prints nothing and security rates at most 2.5, with ExecStart at this checkout's
    binaries (verify wants them to exist; the installed path is /opt/myhand/venv/bin)."""
    dest = tmp_path / "root"
    assert install(dest).returncode == 0
    text = (dest / "etc/systemd/system" / unit).read_text()
    assert "ExecStart=/opt/myhand/venv/bin/" in text and "RestartPreventExitStatus=2" in text
    local = tmp_path / unit
    local.write_text(text.replace("/opt/myhand/venv/bin/", f"{BIN}/"))
    verify = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stdout == "" and verify.stderr == ""
    security = subprocess.run(
        [analyze, "security", "--offline=yes", str(local)], capture_output=True, text=True, timeout=60
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", security.stdout)
    assert match, security.stdout + security.stderr
    print(f"\n{unit}: systemd-analyze security {match.group(1)}")
    assert float(match.group(1)) <= 2.5


def test_the_console_unit_runs_beside_the_controller_on_loopback_as_its_user():
    text = (REPO / "systemd" / "myhand-console.service").read_text()
    assert "After=myhand-controller.service" in text and "--host 127.0.0.1" in text
    assert "User=myhand" in text and "--url-file /run/myhand-console/url" in text
    assert "RuntimeDirectoryMode=0750" in text  # the URL file (0640) for the group, nobody else
    assert "--control ipc:///run/myhand/control.sock --monitor ipc:///run/myhand/monitor.sock" in text


def test_myhand_console_url_prints_the_running_consoles_url(tmp_path):
    url_dir = tmp_path / "run"
    url_dir.mkdir(mode=0o750)
    url_file = url_dir / "url"
    cmd = [str(BIN / "metaemg-console"), "url", "--url-file", str(url_file)]
    missing = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and missing.stderr.strip() == (
        f"error: {url_file}: no console URL: is the console running? (systemctl status myhand-console)"
    )
    url_file.write_text("http://127.0.0.1:8765/#token=abc\n")
    shown = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and shown.stdout == "http://127.0.0.1:8765/#token=abc\n"
