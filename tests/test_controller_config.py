"""controller.config and the command line: one YAML file, typed, every problem one line."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from controller import config as configuration
from controller.config import Config, all_keys, from_dict, load
from metaemg.errors import ConfigError
from metaemg.modelfile import default_model_path
from rig.processes import BIN

REPO = Path(__file__).resolve().parents[1]

SHIPPED = REPO / "configs" / "controller.yaml"


def test_the_shipped_file_documents_every_key_with_its_default():
    assert load(SHIPPED) == Config()
    text = SHIPPED.read_text()
    data = yaml.safe_load(text)
    flat = {f"{section}.{key}" for section, keys in data.items() for key in keys}
    assert flat == set(all_keys())
    for key in all_keys():  # every key line has a comment
        line = next(li for li in text.splitlines() if re.match(rf"\s+{key.split('.')[1]}:", li))
        assert "#" in line, line


def test_docs_mention_every_key():
    docs = (REPO / "docs" / "controller.md").read_text()
    missing = [key for key in all_keys() if f"`{key}`" not in docs]
    assert missing == []


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            {"polcy": {}},
            "unknown key 'polcy' (known sections: lsl, model, session, serial, policy, monitor, control, logging, "
            "realtime, adapt)",
        ),
        ({"policy": {"votes": 3}}, "unknown key 'policy.votes'"),
        ({"policy": {"vote": 0}}, "policy.vote: must be a number of windows in [1, 100], got 0"),
        ({"policy": {"vote": 2.5}}, "policy.vote: must be an integer, got 2.5"),
        ({"policy": {"threshold": "high"}}, "policy.threshold: must be a number, got 'high'"),
        ({"serial": {"ttl_ms": 5000}}, "serial.ttl_ms: must be milliseconds in [1, 1000]"),
        # issue 14: 5000 held the hand open 5 s after the armband stopped; 0 re-armed on one good chunk
        ({"policy": {"stale_ms": 5000}}, "policy.stale_ms: must be 20..250 (the hand keeps moving this long"),
        ({"policy": {"rearm_ms": 0}}, "policy.rearm_ms: must be 100..10000, got 0"),
        ({"serial": {"refresh_ms": 200}}, "serial.refresh_ms: must be 10..ttl_ms/2"),
        ({"serial": {"send_every_decision": "yes"}}, "serial.send_every_decision: must be true or false"),
        ({"serial": {"port": None}}, "serial.port: must not be null"),
        ({"serial": {"port": "tcp://host:1"}}, "serial.port: must be a device path, serial://PATH, pty://, loop://"),
        ({"monitor": {"endpoint": "tcp://0.0.0.0:5556"}}, "monitor.endpoint: binds a non-loopback address"),
        ({"monitor": {"endpoint": "udp://x"}}, "monitor.endpoint: must be tcp://HOST:PORT or ipc://PATH"),
        ({"control": {"endpoint": "tcp://127.0.0.1:5557"}}, "control.endpoint: must be ipc://PATH"),
        ({"lsl": {"name": None}}, "lsl: give at least one of name, type, source_id"),
        ({"lsl": {"name": "a'b"}}, "lsl.name: must be a non-empty string without quotes"),
        ({"logging": {"level": "loud"}}, "logging.level: must be one of debug, info, warning, error"),
        ({"policy": []}, "policy: must be a mapping"),
        ([1, 2], "the top level must be a mapping"),
    ],
)
def test_bad_documents_are_one_line_errors_naming_the_key(doc, message):
    with pytest.raises(ConfigError) as info:
        from_dict(doc, "x.yaml")
    assert str(info.value).startswith("x.yaml: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_remote_monitor_needs_allow_remote():
    cfg = from_dict({"monitor": {"endpoint": "tcp://0.0.0.0:5556", "allow_remote": True}})
    assert cfg.monitor.endpoint == "tcp://0.0.0.0:5556"


def test_overrides_and_defaults(tmp_path):
    cfg = Config().with_overrides(
        lsl_stream="Arm", serial_port="/dev/ttyACM3", model="m.onnx", monitor="ipc:///tmp/x.sock"
    )
    assert (cfg.lsl.name, cfg.serial.port, cfg.model.path, cfg.monitor.endpoint) == (
        "Arm",
        "/dev/ttyACM3",
        "m.onnx",
        "ipc:///tmp/x.sock",
    )
    assert cfg.lsl.predicate() == "name='Arm'"
    assert Config().model.resolved_path() == default_model_path()
    assert default_model_path().parts[-3:] == ("metaemg", "default_model", "myo_meta.onnx")
    with pytest.raises(ConfigError, match=re.escape("monitor.endpoint")):
        Config().with_overrides(monitor="tcp://10.0.0.1:5556")


def test_runtime_dir_resolution():
    c = configuration.ControlConfig()
    assert c.resolved_runtime_dir({"RUNTIME_DIRECTORY": "/run/myhand"}) == Path("/run/myhand")
    assert c.resolved_runtime_dir({"XDG_RUNTIME_DIR": "/run/user/7"}) == Path("/run/user/7/myhand")
    assert str(c.resolved_runtime_dir({})).startswith("/tmp/myhand-")
    assert c.resolved_endpoint({"RUNTIME_DIRECTORY": "/run/myhand"}) == "ipc:///run/myhand/control.sock"
    c = configuration.ControlConfig(runtime_dir="/var/run/x")
    assert c.resolved_endpoint({}) == "ipc:///var/run/x/control.sock"


def test_yaml_errors_and_missing_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy:\n  vote: [1,\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML at line \d"):
        load(bad)
    with pytest.raises(ConfigError, match=re.escape("nope.yaml: config file not found")):
        load(tmp_path / "nope.yaml")


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "myhand-controller"), *args], capture_output=True, text=True, timeout=timeout)


def test_cli_refuses_a_bad_config_before_anything_starts(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("serial:\n  port: /dev/does-not-matter\npolicy:\n  stale_ms: 5\n")
    proc = run_cli("--config", str(cfg))
    assert proc.returncode == 2
    assert proc.stderr == (
        f"error: {cfg}: policy.stale_ms: must be 20..250 (the hand keeps moving this long after "
        "the armband stops), got 5.0\n"
    )
    assert proc.stdout == ""  # nothing started: no log line at all
    proc = run_cli("--config", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 2 and proc.stderr == f"error: {tmp_path / 'missing.yaml'}: config file not found\n"
    proc = run_cli("--monitor", "tcp://192.168.1.5:5556")
    assert proc.returncode == 2 and "monitor.endpoint: binds a non-loopback address" in proc.stderr


def test_cli_refuses_a_missing_or_broken_model(tmp_path):
    garbage = tmp_path / "g.onnx"
    garbage.write_bytes(b"\x00garbage")
    for model, message in ((tmp_path / "none.onnx", "model file not found"), (garbage, "not a valid ONNX model")):
        proc = run_cli(
            "--model",
            str(model),
            "--serial-port",
            str(tmp_path / "port"),
            "--monitor",
            f"ipc://{tmp_path}/m.sock",
            "--control",
            f"ipc://{tmp_path}/c.sock",
        )
        assert proc.returncode == 2
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {model}: {message}")
        assert not (tmp_path / "port").exists()


def test_check_config_prints_the_effective_configuration(tmp_path):
    proc = run_cli("--config", str(SHIPPED), "--lsl-stream", "Arm", "--print-config", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["lsl"]["name"] == "Arm" and doc["policy"]["stale_ms"] == 100.0
    assert doc["model"]["resolved_path"] == str(default_model_path())
    from metaemg.modelfile import read_model_info

    assert doc["model"]["model_id"] == read_model_info(default_model_path()).model_id


def test_check_config_fails_on_a_missing_model_file(tmp_path):
    """issue 14: --print-config (then --check-config) passed with a model file the daemon then could not load."""
    proc = run_cli("--model", str(tmp_path / "gone.onnx"), "--check-config")  # the old spelling, kept a release
    assert proc.returncode == 2 and proc.stdout == ""
    note, error = proc.stderr.splitlines()
    assert note == "note: --check-config is now --print-config --json (the old spelling goes in the next release)"
    assert error.startswith(f"error: {tmp_path / 'gone.onnx'}") and "not found" in error


def test_duplicate_keys_are_refused_and_exponents_are_numbers(tmp_path):
    """issue 14: a key given twice was accepted (the second won) and 1e-1 was refused as text."""
    dup = tmp_path / "dup.yaml"
    dup.write_text("policy:\n  vote: 3\n  threshold: 0.5\n  vote: 1\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: key 'vote' is given twice \(lines 2 and 4\)"):
        configuration.load(dup)
    exp = tmp_path / "exp.yaml"
    exp.write_text("policy:\n  threshold: 6e-1\n  stale_ms: 1.2E2\n")
    cfg = configuration.load(exp)
    assert cfg.policy.threshold == 0.6 and cfg.policy.stale_ms == 120.0


def test_ctl_without_a_daemon_is_a_one_line_error(tmp_path):
    proc = run_cli("ctl", "--control", f"ipc://{tmp_path}/none.sock", "status")
    assert proc.returncode == 2
    assert proc.stderr == f"error: ipc://{tmp_path}/none.sock: no control socket (is myhand-controller running?)\n"


def test_the_daemon_never_imports_torch():
    code = (
        "import sys, controller.daemon, controller.__main__, rig.replay;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'hydra')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_both_device_tools_use_one_config_mechanism():
    """Every section of the controller's and the calibration tool's configs is a typedconfig
    Section: checked whenever it is built, a command-line override included, with one message form."""
    import dataclasses

    from calibration.config import CalibrationConfig
    from metaemg.lsl import StreamSelector
    from metaemg.typedconfig import Section

    assert issubclass(CalibrationConfig, Section)  # it has top-level keys of its own (keep_models)
    for config in (Config(), CalibrationConfig()):
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            assert not dataclasses.is_dataclass(value) or isinstance(value, Section), f.name
    assert issubclass(type(Config().lsl), StreamSelector) and issubclass(type(CalibrationConfig().lsl), StreamSelector)
    cfg = Config()
    with pytest.raises(ConfigError, match=re.escape("logging.level: must be one of")):
        dataclasses.replace(cfg, logging=dataclasses.replace(cfg.logging, level="loud"))
    for config in (cfg, CalibrationConfig()):
        with pytest.raises(ConfigError, match=re.escape("lsl.name: must be a non-empty string")):
            dataclasses.replace(config.lsl, name="it's")


def test_ctl_subcommands_make_the_control_requests_and_the_older_forms_still_do(tmp_path):
    import os

    from controller.__main__ import _ctl_parser, _ctl_request

    def req(*words: str) -> dict:
        return _ctl_request(_ctl_parser().parse_args(list(words)))

    assert req("status") == {"cmd": "status"} and req("--timeout", "1", "pause") == {"cmd": "pause"}
    assert req("reload") == {"cmd": "reload"}
    here = os.path.abspath("m.onnx")  # the caller's directory, made absolute for the daemon
    assert req("reload", "m.onnx") == req("reload", "path=m.onnx") == {"cmd": "reload", "path": here}
    assert req("session", "P012") == req("session", "patient=P012") == {"cmd": "session", "patient": "P012"}
    assert req("session", "end") == {"cmd": "session", "end": True}
    cue = {"cmd": "cue", "cue": {"label": "open"}}
    assert req("cue", '{"label": "open"}') == req("cue", 'cue={"label": "open"}') == cue
    # one JSON request, as before
    proc = run_cli("ctl", "--control", f"ipc://{tmp_path}/none.sock", '{"cmd": "status"}')
    assert proc.returncode == 2
    assert proc.stderr == f"error: ipc://{tmp_path}/none.sock: no control socket (is myhand-controller running?)\n"
