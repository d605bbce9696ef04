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

from calibration.gate import GateRules
from calibration.protocol import CueProtocol
from metaemg.feathead import OPERATING_POINTS
from metaemg.lsl import StreamSelector
from metaemg.typedconfig import Section, document, is_number, read_yaml, require, require_endpoint, require_range
from metalearn.clip import ClipRules


@dataclass(frozen=True)
class LslSection(StreamSelector):
    """Which armband stream to record (at least one of name, type, source_id)."""

    resolve_timeout_s: float = 5.0
    stall_timeout_s: float = 1.0  # no sample for this long during the protocol stops the calibration

    def check(self, key: str) -> None:
        super().check(key)
        require(
            is_number(self.stall_timeout_s) and 0.1 <= self.stall_timeout_s <= 10,
            f"{key}.stall_timeout_s",
            "must be in [0.1, 10]",
            self.stall_timeout_s,
        )


@dataclass(frozen=True)
class CueSection(Section):
    KEY = "cues"
    endpoint: str | None = None  # a ZeroMQ PUB of its own for the cues (opt-in); null: through the daemon only
    via_daemon: bool = True  # also hand each cue to a running daemon for its monitor stream

    def check(self, key: str) -> None:
        require_endpoint(self.endpoint, f"{key}.endpoint")


@dataclass(frozen=True)
class DaemonSection(Section):
    KEY = "daemon"
    control: str | None = None  # the daemon's control endpoint; null: as the daemon resolves it
    config: str | None = None  # the daemon's configuration file; null: $MYHAND_CONFIG or /etc/myhand/controller.yaml
    runtime_dir: str | None = None  # overrides control.runtime_dir of that configuration
    timeout_s: float = 1.0
    notify: bool = True  # tell a running daemon to load the new model
    pause_while_recording: bool = True  # pause a running daemon during a live recording, resume after

    def check(self, key: str) -> None:
        require_endpoint(self.control, f"{key}.control", ("ipc",))
        require(
            is_number(self.timeout_s) and 0.05 <= self.timeout_s <= 10,
            f"{key}.timeout_s",
            "must be in [0.05, 10]",
            self.timeout_s,
        )


@dataclass(frozen=True)
class MovementSection(Section):
    """The protocol's movement segment, learned as the wearer's own non-intent classes."""

    KEY = "movement"
    clusters: int = 4  # k-means clusters of the segment's windows (wrist movements are several movements)
    operating_point: str = "balanced"  # steady | balanced | responsive (metaemg.feathead.OPERATING_POINTS)

    def check(self, key: str) -> None:
        require(
            isinstance(self.clusters, int) and not isinstance(self.clusters, bool) and 1 <= self.clusters <= 16,
            f"{key}.clusters",
            "must be an integer in 1..16",
            self.clusters,
        )
        require(
            self.operating_point in OPERATING_POINTS,
            f"{key}.operating_point",
            f"must be one of {', '.join(OPERATING_POINTS)}",
            self.operating_point,
        )


@dataclass(frozen=True)
class CalibrationConfig(Section):
    state_dir: str | None = None
    base_model: str | None = None  # null: the packaged model that fits the clip or the stream
    keep_models: int = 10
    png: bool = True
    lsl: LslSection = field(default_factory=LslSection)
    protocol: CueProtocol = field(default_factory=CueProtocol)
    movement: MovementSection = field(default_factory=MovementSection)
    gate: GateRules = field(default_factory=GateRules)
    clip: ClipRules = field(default_factory=ClipRules)
    cues: CueSection = field(default_factory=CueSection)
    daemon: DaemonSection = field(default_factory=DaemonSection)

    def check(self, key: str) -> None:
        require_range(self.keep_models, "keep_models", 1, 1000, "a number of models")

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
