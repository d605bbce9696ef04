"""The daemon's session adaptation: one :class:`~metaemg.drift.SessionAdapter` per loaded model,
its state in a file beside the model.

A calibrated ``feat`` model on raw EMG (the Myo model; a model on the MyHand armband's envelopes
only with ``adapt.envelopes``) is decided by its adapter, which follows the
wearer through the session within its bounds and raises the recalibration flag; any other model
(another kind, or an uncalibrated base model, which decides nothing) is decided by onnxruntime as
before, and the status says why there is no adaptation. ``adapt.enabled: false`` keeps the
adapter (its decisions are then the calibration's own, and the flag still works) without moving
any mean.

The state (``<model file>.adapt.json``, 0600, written atomically) carries the model's id: the
same model after a restart takes it back; another model (a new calibration, a rollback) starts
from its calibration and overwrites it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from metaemg.drift import AdaptConfig, SessionAdapter
from metaemg.errors import MetaEMGError
from metaemg.feathead import feat_head
from metaemg.modelfile import OnnxModel

STATE_SUFFIX = ".adapt.json"
SAVE_S = 30.0  # the state is written this often while it changes, and at stop


def state_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + STATE_SUFFIX)


def new_adapter(model: OnnxModel, config: AdaptConfig) -> tuple[SessionAdapter | None, str | None]:
    """``(adapter from the calibration, None)`` for a calibrated ``feat`` model, else ``(None, why
    not)``: the daemon's rule, and ``metaemg-eval --as-daemon``'s."""
    head = feat_head(model)
    if head is None:
        return None, f"a {model.info.kind} model: decided by onnxruntime, no session adaptation"
    if model.info.signal.highpass_hz is None and not config.envelopes:
        return None, (
            "a model on the armband's envelopes (the MyHand format): the session adaptation measured no gain there "
            "and more relax false activation (bench.myhand_accuracy), so it is off; adapt.envelopes: true turns it on"
        )
    if not head.calibrated:
        return None, "the uncalibrated base model decides nothing: nothing to adapt"
    info = model.info
    return SessionAdapter(head, config, info.model_id, info.stride / info.sample_rate), None


@dataclass
class Adaptation:
    """A model's adapter (None: decided by onnxruntime, ``why`` says why) and where its state lives."""

    adapter: SessionAdapter | None
    why: str | None
    path: Path
    restored: str | None = None  # how the state was found at load (a sentence for the log)
    saved_windows: int = -1  # adapter.windows at the last save

    @classmethod
    def load(cls, model: OnnxModel, model_path: Path, config: AdaptConfig, carry: dict | None = None):
        """For a model just loaded (a worker thread): its adapter, the running adapter's state
        ``carry`` (:meth:`SessionAdapter.to_dict`) when that is the same model (a reload of the
        same file), else the state file's when it is this model's."""
        path = state_path(model_path)
        adapter, why = new_adapter(model, config)
        if adapter is None:
            return cls(None, why, path)
        if carry is not None and carry.get("model_id") == adapter.model_id and adapter.restore(carry) is None:
            return cls(adapter, None, path, "carried over from the running model")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(adapter, None, path, "none saved: from the calibration")
        except (OSError, ValueError) as exc:
            return cls(adapter, None, path, f"{path}: unreadable ({exc}): from the calibration")
        why = adapter.restore(doc)
        return cls(adapter, None, path, "restored" if why is None else f"{path}: {why}: from the calibration")

    def save(self, snapshot: dict) -> str | None:
        """Write a :meth:`SessionAdapter.to_dict` snapshot; None, or why it could not be written."""
        from metaemg.atomic import PRIVATE, write_text

        try:
            write_text(self.path, json.dumps(snapshot), perms=PRIVATE)
        except (OSError, MetaEMGError) as exc:
            return f"{self.path}: {exc}"
        return None

    def status(self, config: AdaptConfig) -> dict:
        if self.adapter is None:
            return {"enabled": config.enabled, "active": False, "why": self.why, "recalibration": None}
        return {"active": True, **self.adapter.status(), "state_file": str(self.path)}
