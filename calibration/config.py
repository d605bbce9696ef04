"""The calibration configuration: one explicit YAML file (``--config``), validated into frozen
objects. Every key has a default, so a file holds only what it changes; an unknown key or a bad
value is one ConfigError naming the file and the dotted key. ``metaemg-calibrate --print-config``
prints the effective configuration in this format.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calibration.daemonlink import DEFAULT_CUE_ENDPOINT
from calibration.gate import GateRules
from calibration.protocol import CueProtocol
from metaemg.errors import ConfigError
from metaemg.typedconfig import document, read_yaml
from metalearn.clip import ClipRules

DEFAULT_STREAM_NAME = "MyHand-EMG"  # = controller.config.DEFAULT_STREAM_NAME


@dataclass(frozen=True)
class LslSection:
    """Which armband stream to record (at least one of name, type, source_id)."""

    name: str | None = DEFAULT_STREAM_NAME
    type: str | None = None
    source_id: str | None = None
    resolve_timeout_s: float = 5.0
    stall_timeout_s: float = 1.0  # no sample for this long during the protocol stops the calibration

    def __post_init__(self) -> None:
        if not any((self.name, self.type, self.source_id)):
            raise ConfigError("lsl: give at least one of name, type, source_id")
        for key in ("name", "type", "source_id"):
            value = getattr(self, key)
            if value is not None and (value == "" or "'" in value or value.strip() != value):
                raise ConfigError(
                    f"lsl.{key} must be a non-empty string without quotes or surrounding spaces, got {value!r}"
                )
        if not 0 < self.resolve_timeout_s <= 60:
            raise ConfigError(f"lsl.resolve_timeout_s must be in (0, 60], got {self.resolve_timeout_s!r}")
        if not 0.1 <= self.stall_timeout_s <= 10:
            raise ConfigError(f"lsl.stall_timeout_s must be in [0.1, 10], got {self.stall_timeout_s!r}")

    def predicate(self) -> str:
        return " and ".join(f"{k}='{getattr(self, k)}'" for k in ("name", "type", "source_id") if getattr(self, k))


@dataclass(frozen=True)
class CueSection:
    endpoint: str | None = DEFAULT_CUE_ENDPOINT  # ZeroMQ PUB for the cues; null: publish none
    via_daemon: bool = True  # also hand each cue to a running daemon for its monitor stream

    def __post_init__(self) -> None:
        if self.endpoint is not None:
            scheme, sep, rest = self.endpoint.partition("://")
            if not (sep and scheme in ("tcp", "ipc") and rest):
                raise ConfigError(f"cues.endpoint must be tcp://HOST:PORT, ipc://PATH or null, got {self.endpoint!r}")


@dataclass(frozen=True)
class DaemonSection:
    control: str | None = None  # the daemon's control endpoint; null: as the daemon resolves it
    config: str | None = None  # the daemon's configuration file; null: $MYHAND_CONFIG or /etc/myhand/controller.yaml
    runtime_dir: str | None = None  # overrides control.runtime_dir of that configuration
    timeout_s: float = 1.0
    notify: bool = True  # tell a running daemon to load the new model
    pause_while_recording: bool = True  # pause a running daemon during a live recording, resume after

    def __post_init__(self) -> None:
        if self.control is not None and not (self.control.startswith("ipc://") and len(self.control) > 6):
            raise ConfigError(f"daemon.control must be ipc://PATH or null, got {self.control!r}")
        if not 0.05 <= self.timeout_s <= 10:
            raise ConfigError(f"daemon.timeout_s must be in [0.05, 10], got {self.timeout_s!r}")


@dataclass(frozen=True)
class CalibrationConfig:
    state_dir: str | None = None
    base_model: str | None = None  # null: the packaged default model
    keep_models: int = 10
    png: bool = True
    lsl: LslSection = field(default_factory=LslSection)
    protocol: CueProtocol = field(default_factory=CueProtocol)
    gate: GateRules = field(default_factory=GateRules)
    clip: ClipRules = field(default_factory=ClipRules)
    cues: CueSection = field(default_factory=CueSection)
    daemon: DaemonSection = field(default_factory=DaemonSection)

    def __post_init__(self) -> None:
        if not 1 <= self.keep_models <= 1000:
            raise ConfigError(f"keep_models must be 1..1000, got {self.keep_models!r}")

    def replace(self, section: str | None = None, **changes: Any) -> CalibrationConfig:
        """A copy with top-level keys or one section's keys changed (validated again)."""
        if section is None:
            return dataclasses.replace(self, **changes)
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **changes)})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def from_dict(data: Any, where: str = "config") -> CalibrationConfig:
    return document(CalibrationConfig, data, where)


def load(path: str | os.PathLike | None) -> CalibrationConfig:
    """The configuration in ``path``, or the defaults for None."""
    if path is None:
        return CalibrationConfig()
    return from_dict(read_yaml(path), str(Path(path)))
