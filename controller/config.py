"""The daemon's configuration: one explicit YAML file validated into frozen, typed objects.

Every key has a default (see ``configs/controller.yaml``, which documents each one); a file only
needs the keys it changes. An unknown key, a wrong type or a value out of range raises
:class:`~metaemg.errors.ConfigError` with one line naming the file and the dotted key, before
anything touches the hardware. The four command-line overrides (``--lsl-stream``,
``--serial-port``, ``--model``, ``--monitor``) replace the matching keys after loading.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from firmware_protocol.transport import FORMS, check_url
from metaemg.drift import AdaptConfig
from metaemg.lsl import StreamSelector
from metaemg.modelfile import default_model_path
from metaemg.typedconfig import Section, document, read_yaml, require, require_endpoint, require_range

LOG_LEVELS = ("debug", "info", "warning", "error")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
# Where the service's own files are (systemd: ConfigurationDirectory=, RuntimeDirectory=): tools
# run from a shell find the running daemon through these, as the daemon resolves them itself.
SERVICE_CONFIG = Path("/etc/myhand/controller.yaml")
SERVICE_RUNTIME_DIR = Path("/run/myhand")
CONFIG_ENV = "MYHAND_CONFIG"
STALE_MS_RANGE = (20, 250)
REARM_MS_RANGE = (100, 10000)


@dataclass(frozen=True)
class LslConfig(StreamSelector):
    """Which armband stream to read, and how to find it."""

    resolve_timeout_s: float = 2.0
    retry_s: float = 1.0
    max_buffer_s: int = 1
    clock_sync: bool = True

    def check(self, key: str) -> None:
        super().check(key)
        require(0 < self.retry_s <= 60, f"{key}.retry_s", "must be in (0, 60]", self.retry_s)
        require_range(self.max_buffer_s, f"{key}.max_buffer_s", 1, 60, "a whole number of seconds")


@dataclass(frozen=True)
class ModelConfig(Section):
    """The ONNX model file (``null``: the packaged model that fits the first stream, see
    :func:`metaemg.modelfile.shipped_model_for`; the default Myo model until one connects)."""

    KEY = "model"

    path: str | None = None
    watch: bool = True
    watch_interval_s: float = 1.0

    def check(self, key: str) -> None:
        require(self.path is None or self.path != "", f"{key}.path", "must be a file path or null", self.path)
        require(
            0.1 <= self.watch_interval_s <= 60, f"{key}.watch_interval_s", "must be in [0.1, 60]", self.watch_interval_s
        )

    def resolved_path(self) -> Path:
        return Path(self.path).expanduser() if self.path else default_model_path()


@dataclass(frozen=True)
class SessionConfig(Section):
    """Sessions per patient (:mod:`metaemg.patients`): with a state directory (the calibration's),
    the controller holds the hand until a session is opened for a patient and runs that patient's
    models only; ``model.path`` is then the base model a session starts from. ``null``: the
    service's state directory (``$STATE_DIRECTORY``, which systemd's ``StateDirectory=`` sets: the
    installed service keeps sessions), else none: the model file as configured (a rehearsal, a
    research rig, a test)."""

    KEY = "session"

    state_dir: str | None = None

    def resolved(self, env: typing.Mapping[str, str] | None = None) -> Path | None:
        env = os.environ if env is None else env
        if self.state_dir is not None:
            return Path(self.state_dir)
        state = env.get("STATE_DIRECTORY", "").split(":")[0]
        return Path(state) if state else None

    def check(self, key: str) -> None:
        require(
            self.state_dir is None or (self.state_dir != "" and Path(self.state_dir).is_absolute()),
            f"{key}.state_dir",
            "must be an absolute directory path or null",
            self.state_dir,
        )


@dataclass(frozen=True)
class SerialConfig(Section):
    """The orthosis link (docs/firmware_protocol.md, section 8)."""

    KEY = "serial"

    port: str = "/dev/myhand"
    baudrate: int = 115200
    ttl_ms: int = 300
    heartbeat_ms: int = 50
    ack_timeout_ms: int = 50
    retries: int = 3
    device_timeout_ms: int = 300
    handshake_timeout_ms: int = 1000
    reconnect_min_ms: int = 100
    reconnect_max_ms: int = 2000
    send_every_decision: bool = True
    refresh_ms: int = 100

    def check(self, key: str) -> None:
        require(check_url(self.port) is None, f"{key}.port", f"must be {FORMS}", self.port)
        require(self.baudrate > 0, f"{key}.baudrate", "must be > 0", self.baudrate)
        require_range(self.ttl_ms, f"{key}.ttl_ms", 1, 1000, "milliseconds")  # 1000: the device's longest TTL
        require_range(self.heartbeat_ms, f"{key}.heartbeat_ms", 10, 1000, "milliseconds")
        require_range(self.ack_timeout_ms, f"{key}.ack_timeout_ms", 5, 1000, "milliseconds")
        require_range(self.retries, f"{key}.retries", 0, 10, "a count")
        require(
            50 <= self.device_timeout_ms <= 10000,
            f"{key}.device_timeout_ms",
            "must be 50..10000",
            self.device_timeout_ms,
        )
        require(
            100 <= self.handshake_timeout_ms <= 10000,
            f"{key}.handshake_timeout_ms",
            "must be 100..10000",
            self.handshake_timeout_ms,
        )
        require(
            10 <= self.reconnect_min_ms <= 60000, f"{key}.reconnect_min_ms", "must be 10..60000", self.reconnect_min_ms
        )
        require(
            self.reconnect_min_ms <= self.reconnect_max_ms <= 60000,
            f"{key}.reconnect_max_ms",
            "must be reconnect_min_ms..60000",
            self.reconnect_max_ms,
        )
        require(10 <= self.refresh_ms <= self.ttl_ms / 2, f"{key}.refresh_ms", "must be 10..ttl_ms/2", self.refresh_ms)


@dataclass(frozen=True)
class PolicyConfig(Section):
    """Decision smoothing and the input safety rules (see controller.policy)."""

    KEY = "policy"

    threshold: float = 0.5
    vote: int = 3
    min_dwell_ms: float = 150.0
    refractory_ms: float = 300.0
    stale_ms: float = 100.0
    rearm_ms: float = 300.0
    saturation_fraction: float = 0.2

    def check(self, key: str) -> None:
        require(0 <= self.threshold < 1, f"{key}.threshold", "must be in [0, 1)", self.threshold)
        require_range(self.vote, f"{key}.vote", 1, 100, "a number of windows")
        for attr in ("min_dwell_ms", "refractory_ms"):
            value = getattr(self, attr)
            require_range(value, f"{key}.{attr}", 0, 10000, "milliseconds")
        # safety limits: the hand may go on moving for stale_ms after the armband stops, and
        # re-arming needs a stretch of good input, not a single good chunk
        require(
            STALE_MS_RANGE[0] <= self.stale_ms <= STALE_MS_RANGE[1],
            f"{key}.stale_ms",
            f"must be {STALE_MS_RANGE[0]}..{STALE_MS_RANGE[1]} (the hand keeps moving this long after the "
            "armband stops)",
            self.stale_ms,
        )
        require(
            REARM_MS_RANGE[0] <= self.rearm_ms <= REARM_MS_RANGE[1],
            f"{key}.rearm_ms",
            f"must be {REARM_MS_RANGE[0]}..{REARM_MS_RANGE[1]}",
            self.rearm_ms,
        )
        require(
            0 < self.saturation_fraction <= 1,
            f"{key}.saturation_fraction",
            "must be in (0, 1]",
            self.saturation_fraction,
        )


@dataclass(frozen=True)
class MonitorConfig(Section):
    """The ZeroMQ PUB stream of decisions, status, EMG and cues."""

    KEY = "monitor"

    endpoint: str | None = None
    allow_remote: bool = False
    emg_decimation: int = 10
    status_hz: float = 5.0
    hwm: int = 1000

    def check(self, key: str) -> None:
        # null: ipc://<runtime dir>/monitor.sock, private to the service's user
        if require_endpoint(self.endpoint, f"{key}.endpoint") == "tcp" and not self.allow_remote:
            assert self.endpoint is not None  # a tcp scheme was found in it
            host = self.endpoint.partition("://")[2].rsplit(":", 1)[0]
            require(
                host in LOOPBACK_HOSTS,
                f"{key}.endpoint",
                "binds a non-loopback address; set monitor.allow_remote: true to publish off this machine",
                self.endpoint,
            )
        require_range(self.emg_decimation, f"{key}.emg_decimation", 1, 10000, "a factor")
        require_range(self.status_hz, f"{key}.status_hz", 0.1, 100, "a rate (Hz)")
        require_range(self.hwm, f"{key}.hwm", 1, 1_000_000, "a number of messages")


@dataclass(frozen=True)
class ControlConfig(Section):
    """The local ZeroMQ REP control socket (mode 0600)."""

    KEY = "control"

    endpoint: str | None = None
    runtime_dir: str | None = None

    def check(self, key: str) -> None:
        require_endpoint(self.endpoint, f"{key}.endpoint", ("ipc",), " (the control socket is local only)")

    def resolved_runtime_dir(self, env: typing.Mapping[str, str] | None = None) -> Path:
        return self.runtime_dir_and_why(env)[0]

    def runtime_dir_and_why(self, env: typing.Mapping[str, str] | None = None) -> tuple[Path, str]:
        """The first of: $RUNTIME_DIRECTORY (systemd), ``runtime_dir``, the service's
        /run/myhand when it exists, $XDG_RUNTIME_DIR/myhand, /tmp/myhand-<uid>; and which rule
        gave it (for the messages of a tool that finds no daemon there)."""
        env = os.environ if env is None else env
        if env.get("RUNTIME_DIRECTORY"):
            return Path(env["RUNTIME_DIRECTORY"].split(":")[0]), "$RUNTIME_DIRECTORY"
        if self.runtime_dir:
            return Path(self.runtime_dir).expanduser(), "control.runtime_dir"
        if SERVICE_RUNTIME_DIR.is_dir():
            return SERVICE_RUNTIME_DIR, "the service's runtime directory"
        if env.get("XDG_RUNTIME_DIR"):
            return Path(env["XDG_RUNTIME_DIR"]) / "myhand", "$XDG_RUNTIME_DIR"
        return Path(f"/tmp/myhand-{os.getuid()}"), "no runtime directory set: the fallback"

    def resolved_endpoint(self, env: typing.Mapping[str, str] | None = None) -> str:
        if self.endpoint:
            return self.endpoint
        return f"ipc://{self.resolved_runtime_dir(env) / 'control.sock'}"


@dataclass(frozen=True)
class LoggingConfig(Section):
    KEY = "logging"
    level: str = "info"

    def check(self, key: str) -> None:
        require(self.level in LOG_LEVELS, f"{key}.level", f"must be one of {', '.join(LOG_LEVELS)}", self.level)


@dataclass(frozen=True)
class RealtimeConfig(Section):
    """How the daemon protects its hot path from the rest of the device PC (controller/realtime.py)."""

    KEY = "realtime"
    priority: int = 20  # SCHED_FIFO priority asked for at start (1..99; 0: do not ask)
    freeze_gc: bool = True  # after start-up, freeze the heap and collect garbage off the hot path

    def check(self, key: str) -> None:
        require(
            isinstance(self.priority, int) and 0 <= self.priority <= 99,
            f"{key}.priority",
            "must be 0..99",
            self.priority,
        )
        require(isinstance(self.freeze_gc, bool), f"{key}.freeze_gc", "must be true or false", self.freeze_gc)


@dataclass(frozen=True)
class Config:
    lsl: LslConfig = field(default_factory=LslConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    serial: SerialConfig = field(default_factory=SerialConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    realtime: RealtimeConfig = field(default_factory=RealtimeConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def monitor_endpoint(self, env: typing.Mapping[str, str] | None = None) -> str:
        """``monitor.endpoint``, or ``ipc://<runtime dir>/monitor.sock`` (the default: only the
        service's user can subscribe; a tcp:// endpoint is the explicit opt-in for wider access)."""
        if self.monitor.endpoint:
            return self.monitor.endpoint
        return f"ipc://{self.control.resolved_runtime_dir(env) / 'monitor.sock'}"

    def with_overrides(
        self,
        *,
        lsl_stream: str | None = None,
        serial_port: str | None = None,
        model: str | None = None,
        monitor: str | None = None,
    ) -> Config:
        """Apply the command-line overrides (each section checks itself again)."""
        cfg = self
        if lsl_stream is not None:
            cfg = dataclasses.replace(cfg, lsl=dataclasses.replace(cfg.lsl, name=lsl_stream))
        if serial_port is not None:
            cfg = dataclasses.replace(cfg, serial=dataclasses.replace(cfg.serial, port=serial_port))
        if model is not None:
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=model))
        if monitor is not None:
            cfg = dataclasses.replace(cfg, monitor=dataclasses.replace(cfg.monitor, endpoint=monitor))
        return cfg


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key of the configuration (for the docs and their test)."""
    keys = []
    for f in fields(cls):
        if dataclasses.is_dataclass(f.type if isinstance(f.type, type) else _section_type(cls, f.name)):
            keys += all_keys(_section_type(cls, f.name), f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _section_type(cls: type, name: str) -> type:
    return typing.get_type_hints(cls)[name]


# -- loading -------------------------------------------------------------------------------------


def from_dict(data: Any, where: str = "config") -> Config:
    """Validate a parsed YAML document into a :class:`Config`."""
    return document(Config, data, where)


def service_config_path(env: typing.Mapping[str, str] | None = None) -> Path | None:
    """The configuration the service runs with, for tools run from a shell: $MYHAND_CONFIG, else
    /etc/myhand/controller.yaml when it exists, else None (the built-in defaults)."""
    env = os.environ if env is None else env
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    return SERVICE_CONFIG if SERVICE_CONFIG.is_file() else None


def load(path: str | os.PathLike) -> Config:
    """Read and validate one YAML file; every problem is one ConfigError line naming it."""
    return from_dict(read_yaml(path), str(Path(path)))


def where_the_daemon_is(cfg: Config, config_path: str | None) -> str:
    """How a tool found the daemon's sockets (when not configured outright), for its message when
    nothing answers there."""
    path, why = cfg.control.runtime_dir_and_why()
    source = config_path or service_config_path() or "no config file"
    return (
        f"looked in {path} ({why}; config: {source}); if the daemon runs with another configuration or "
        f"runtime directory, give its --config FILE"
    )
