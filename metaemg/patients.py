"""Patients, their calibrated models and the session: the state directory as the controller and
the calibration both read it (torch-free, one definition).

A patient is a pseudonymous id (:data:`PATIENT_ID`, never a name). Every calibrated model file
states the patient it was calibrated for (``calibration.patient`` in its metadata), so a
patient's models are found by reading the files, not by trusting their names.

A **session** belongs to one patient: ``<state>/session.json`` (written by the controller, mode
0600)::

    {"format": "metaemg-session/1", "patient": "P012", "opened": "2026-12-07T09:30:00+00:00",
     "model_id": "0cd31240faff", "kept": false}

The controller runs a session's model only: the patient's newest calibrated model when the
session opens (or the uncalibrated base model, which moves nothing, when the patient has none),
then what a calibration for that patient installs. A model calibrated for another patient is
refused. ``kept``: the clinician chose to go on with the model (the hand may move); a restart
within the session reopens the same model, kept or not, and a new session never starts from
another patient's model.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from metaemg.atomic import PRIVATE, write_text
from metaemg.errors import ConfigError, DataError, ModelError
from metaemg.modelfile import ModelInfo, read_model_info

PATIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")  # a pseudonymous id, safe in a file name
SESSION_FILE = "session.json"
SESSION_FORMAT = "metaemg-session/1"
MODELS = "models"


def check_patient(patient: str | None, what: str = "patient id") -> str | None:
    """``patient`` if it is a valid id (or None); ConfigError in one line, naming ``what`` (the
    option or field it came from), otherwise."""
    if patient is not None and not PATIENT_ID.fullmatch(patient):
        raise ConfigError(
            f"{what} {patient!r}: a patient id is 1-32 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit (a pseudonym such as P012, never a name)"
        )
    return patient


def describe(info: ModelInfo) -> dict:
    """A model for a person: ``model_id``, ``calibrated`` (False: an uncalibrated base model, which
    moves nothing), ``patient``, ``time`` (the calibration's), ``accuracy_after`` (the gate's
    cross-validated accuracy) and ``operating_point``."""
    cal = info.calibration or {}
    return {
        "model_id": info.model_id,
        "calibrated": info.calibration is not None,
        "patient": cal.get("patient"),
        "time": cal.get("time"),
        "accuracy_after": cal.get("accuracy_after"),
        "operating_point": cal.get("operating_point"),
    }


def _calibrated(models: Path):
    """``(path, info)`` of every readable calibrated model file in ``models`` (the versioned ones)."""
    for path in sorted(models.glob("adapted_*.onnx")):
        try:
            info = read_model_info(path)
        except (ModelError, ConfigError, OSError):
            continue
        if info.calibration is not None:
            yield path, info


def latest_model(state_dir: str | os.PathLike, patient: str) -> tuple[Path, ModelInfo] | None:
    """The patient's newest calibrated model (by its calibration's time), or None."""
    mine = [(p, i) for p, i in _calibrated(Path(state_dir) / MODELS) if (i.calibration or {}).get("patient") == patient]
    return max(mine, key=lambda pi: str((pi[1].calibration or {}).get("time") or "")) if mine else None


def find_model(state_dir: str | os.PathLike, model_id: str) -> tuple[Path, ModelInfo] | None:
    """The versioned calibrated model file with ``model_id``, or None."""
    return next(((p, i) for p, i in _calibrated(Path(state_dir) / MODELS) if i.model_id == model_id), None)


@dataclass(frozen=True)
class Session:
    patient: str
    opened: str  # ISO time, UTC
    model_id: str | None  # the model the session runs (None: the base model, the patient has none)
    kept: bool = False  # the clinician chose to go on with it: the hand may move

    def to_dict(self) -> dict:
        return {"format": SESSION_FORMAT, **asdict(self)}


def new_session(patient: str, model_id: str | None) -> Session:
    return Session(check_patient(patient) or "", datetime.now(UTC).isoformat(timespec="seconds"), model_id)


def read_session(state_dir: str | os.PathLike) -> Session | None:
    """The open session, or None; a file that is not one is a DataError naming it."""
    path = Path(state_dir) / SESSION_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the session: {exc}", path=path) from None
    if not isinstance(doc, dict) or doc.get("format") != SESSION_FORMAT or not isinstance(doc.get("patient"), str):
        raise DataError(f"not a session file (format {SESSION_FORMAT})", path=path)
    try:
        check_patient(doc["patient"])
    except ConfigError as exc:
        raise DataError(str(exc), path=path) from None
    return Session(doc["patient"], str(doc.get("opened")), doc.get("model_id"), bool(doc.get("kept")))


def write_session(state_dir: str | os.PathLike, session: Session) -> None:
    write_text(Path(state_dir) / SESSION_FILE, json.dumps(session.to_dict(), sort_keys=True) + "\n", perms=PRIVATE)


def end_session(state_dir: str | os.PathLike) -> None:
    (Path(state_dir) / SESSION_FILE).unlink(missing_ok=True)
