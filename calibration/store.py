"""The state directory: calibration clips, versioned models, the current model and rollback.

Layout (every file is written atomically: temporary file, fsync, rename)::

    <state>/clips/<UTC time>_<patient>_<sha8>.csv  every calibration clip, never deleted
    <state>/models/adapted_<UTC time>_<patient>_<id>.onnx
                                                   every installed adapted model (the newest
                                                   ``keep`` are kept)
    <state>/models/current.onnx                    what the daemon loads (a regular file)
    <state>/models/previous.onnx                   what was current before the last change
    <state>/models/history.jsonl                   one line per install or rollback
    <state>/reports/<UTC time>_<patient>_<sha8>.json/.png    one report per calibration

``<patient>`` is the patient's id (``metaemg-calibrate --patient``; a pseudonym, never a name:
:data:`metaemg.patients.PATIENT_ID`), left out when none is given; the UTC time is the session's start. Hashes stay
in the files' metadata and in ``history.jsonl``.

``current.onnx`` changes by one ``os.replace`` of a complete, verified file, so the daemon's file
watcher sees exactly one change. Installing copies the old current to ``previous.onnx`` first
(on the first install, the base model the calibration started from). ``rollback`` swaps the two:
a second rollback undoes the first. A lock file stops two calibrations writing at once.

An install or a rollback that is killed half-way (``kill -9``, a power cut) is finished by the
next calibration on the directory: each writes its intent first (``models/.pending.json``: the
model ids previous and current must end with, and the history line), and :meth:`Store.lock`
completes a pending one and removes temporary files left by a dead process.

The state directory is, in this order: ``--state-dir``, ``$STATE_DIRECTORY`` (systemd's
StateDirectory=), ``state_dir`` in the configuration, ``$XDG_STATE_HOME/myhand``,
``~/.local/state/myhand``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from metaemg import patients
from metaemg.atomic import PRIVATE, write_bytes, write_text
from metaemg.errors import ConfigError, MetaEMGError, ModelError
from metaemg.modelfile import OnnxModel, read_model_info
from metaemg.trust import private_dir
from metalearn.recording import Recording, write_recording


def check_patient(patient: str | None) -> str | None:
    """``--patient``: :func:`metaemg.patients.check_patient`."""
    return patients.check_patient(patient, "--patient")


def _stem(when: datetime, patient: str | None, tail: str) -> str:
    return "_".join(p for p in (utc_stamp(when), patient, tail) if p)


class StateError(MetaEMGError):
    """The state directory cannot be used (locked, unwritable, nothing to roll back to)."""


def resolve_state_dir(
    cli: str | os.PathLike | None = None, config: str | os.PathLike | None = None, env: Mapping[str, str] | None = None
) -> Path:
    env = os.environ if env is None else env
    if cli:
        return Path(cli).expanduser()
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    if config:
        return Path(config).expanduser()
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]) / "myhand"
    return Path.home() / ".local" / "state" / "myhand"


def utc_stamp(when: datetime | None = None) -> str:
    return (when or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Installed:
    current: Path
    versioned: Path
    model_id: str
    previous_model_id: str | None


class Store:
    CURRENT = "current.onnx"
    PREVIOUS = "previous.onnx"

    def __init__(self, root: str | os.PathLike, keep: int = 10):
        self.root = Path(root)
        self.keep = keep
        self.clips = self.root / "clips"
        self.models = self.root / "models"
        self.reports = self.root / "reports"
        self.current = self.models / self.CURRENT
        self.previous = self.models / self.PREVIOUS
        self.history = self.models / "history.jsonl"
        self.pending = self.models / ".pending.json"

    # -- set-up ----------------------------------------------------------------------------------
    def ensure(self) -> Store:
        try:
            for d in (self.root, self.clips, self.models, self.reports):  # patient data: 0700, ours
                private_dir(d, "state directory")
        except ConfigError as exc:
            raise StateError(str(exc)) from None
        if not os.access(self.models, os.W_OK):
            raise StateError(
                f"{self.models}: not writable by this user (run as the daemon's user, or give --state-dir)"
            )
        return self

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive for one process; StateError at once if another calibration holds it."""
        self.ensure()
        fd = os.open(self.root / ".calibrate.lock", os.O_RDWR | os.O_CREAT, PRIVATE)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StateError(f"{self.root}: another metaemg-calibrate is running on this state directory") from None
            self._recover()
            yield
        finally:
            os.close(fd)

    # -- clips -----------------------------------------------------------------------------------
    def save_clip_bytes(
        self, data: bytes, when: datetime, suffix: str = "", patient: str | None = None
    ) -> tuple[Path, str]:
        digest = sha256_bytes(data)
        path = _unique(self.clips / (_stem(when, patient, digest[:8]) + suffix), ".csv")
        write_bytes(path, data, perms=PRIVATE)
        return path, digest

    def save_clip(
        self, rec: Recording, when: datetime, *, extra: dict | None = None, suffix: str = "", patient: str | None = None
    ) -> tuple[Path, str]:
        """Write a recorded clip in the research CSV format, named by patient, time and content hash."""
        pending = _unique(self.clips / (_stem(when, patient, "pending") + suffix), ".csv")
        write_recording(pending, rec, extra=extra, perms=PRIVATE)
        digest = sha256_bytes(pending.read_bytes())
        path = _unique(self.clips / (_stem(when, patient, digest[:8]) + suffix), ".csv")
        os.replace(pending, path)
        return path, digest

    def report_stem(self, when: datetime, digest: str, patient: str | None = None) -> Path:
        return _unique(self.reports / _stem(when, patient, digest[:8]), ".json").with_suffix("")

    # -- models ----------------------------------------------------------------------------------
    def candidate_path(self) -> Path:
        return self.models / f".candidate-{os.getpid()}.onnx"

    def install(
        self, candidate: Path, when: datetime, base_model: Path, note: dict, patient: str | None = None
    ) -> Installed:
        """Keep ``candidate`` as a versioned file and make it current; the old current (or, on
        the first install, ``base_model``) becomes previous."""
        info = read_model_info(candidate)
        versioned = _unique(self.models / ("adapted_" + _stem(when, patient, info.model_id)), ".onnx")
        os.chmod(candidate, PRIVATE)
        os.replace(candidate, versioned)
        old = self.current if self.current.is_file() else Path(base_model)
        previous_id = _model_id_or_none(old)
        self._apply(
            {
                "previous": str(old),
                "previous_id": previous_id,
                "current": str(versioned),
                "current_id": info.model_id,
                "history": {
                    "action": "install",
                    "model_id": info.model_id,
                    "file": versioned.name,
                    "previous_model_id": previous_id,
                    "patient": patient,
                    **note,
                },
            }
        )
        self.prune()
        return Installed(self.current, versioned, info.model_id, previous_id)

    def _apply(self, change: dict) -> None:
        """Make previous and current the models ``change`` names, then log it: written down first
        (``.pending.json``), so that a process killed half-way is finished by the next one."""
        write_text(self.pending, json.dumps(change, sort_keys=True), perms=PRIVATE)
        self._finish(change)

    def _finish(self, change: dict) -> None:
        if _model_id_or_none(self.current) != change["current_id"]:  # current not switched yet
            if _model_id_or_none(self.previous) != change["previous_id"]:
                write_bytes(self.previous, Path(change["previous"]).read_bytes(), perms=PRIVATE)
            write_bytes(self.current, Path(change["current"]).read_bytes(), perms=PRIVATE)  # what the daemon sees
        self._log(change["history"])
        self.pending.unlink()

    def _recover(self) -> None:
        """Under the lock: finish an install or rollback a killed process left half done, and
        remove the temporary files such a process left."""
        for leftover in [
            *self.models.glob(".*.tmp"),
            *self.models.glob(".candidate-*"),
            *self.clips.glob(".*.tmp"),
            *self.reports.glob(".*.tmp"),
        ]:
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        if self.pending.is_file():
            change = json.loads(self.pending.read_text(encoding="utf-8"))
            change["history"] = {**change["history"], "recovered": True}
            self._finish(change)
        for leftover in self.models.glob(".rollback-*.onnx"):
            leftover.unlink()

    def describe(self, path: Path) -> dict | None:
        """What a model file of this directory is, for a person (:func:`metaemg.patients.describe`);
        None when there is no readable file."""
        try:
            return patients.describe(read_model_info(path))
        except (ModelError, ConfigError):
            return None

    def history_entries(self) -> list[dict]:
        """``history.jsonl``, oldest first (lines that are not JSON objects are left out)."""
        if not self.history.is_file():
            return []
        out = []
        for line in self.history.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    out.append(entry)
        return out

    def rollback(
        self,
        *,
        to_uncalibrated: bool = False,
        expect: str | None = None,
        across_patients: tuple[str | None, str | None] | None = None,
    ) -> tuple[str, str | None]:
        """Swap current and previous; returns ``(model id now current, model id it replaced)``.
        Going back to an uncalibrated base model (it decides nothing: the hand would not move until
        the next calibration) is refused unless ``to_uncalibrated``; to a model of another patient
        (or one without a patient id) unless ``across_patients`` names both, ``(current's,
        previous's)``; and to any model but ``expect``, when given (what the person confirming saw)."""
        if not self.previous.is_file():
            raise StateError(f"nothing to roll back to: {self.previous} does not exist (no calibration installed yet)")
        try:
            model = OnnxModel(self.previous)
            model.self_test()
        except ModelError as exc:
            raise StateError(
                f"cannot roll back: the previous model is unusable ({exc}); current is unchanged"
            ) from None
        if expect is not None and model.info.model_id != expect:
            raise StateError(
                f"the previous model is now {model.info.model_id}, not {expect} as confirmed (the models changed "
                "since): nothing rolled back; look again and confirm what you see"
            )
        now_patient = (self.describe(self.current) or {}).get("patient")
        back_patient = (model.info.calibration or {}).get("patient")
        crossing = model.info.calibration is not None and now_patient != back_patient
        if crossing and across_patients != (now_patient, back_patient):
            raise StateError(
                f"rolling back would give patient {now_patient or '(none given)'} the model calibrated for patient "
                f"{back_patient or '(none given)'} ({model.info.model_id}); current is unchanged. To do it anyway, "
                f"name both: --across-patients {now_patient or '-'},{back_patient or '-'}"
            )
        if model.info.calibration is None and not to_uncalibrated:
            raise StateError(
                f"rolling back would return to the uncalibrated base model {model.info.model_id}, which decides "
                "nothing (the hand would not move until the next calibration); current is unchanged. "
                "Add --force to roll back to it anyway"
            )
        replaced_id = _model_id_or_none(self.current)
        # the two files swap: keep the bytes of both beside them while it happens
        keep_new, keep_old = self.models / ".rollback-new.onnx", self.models / ".rollback-old.onnx"
        write_bytes(keep_new, self.previous.read_bytes(), perms=PRIVATE)
        write_bytes(keep_old, (self.current if self.current.is_file() else self.previous).read_bytes(), perms=PRIVATE)
        self._apply(
            {
                "previous": str(keep_old),
                "previous_id": replaced_id,
                "current": str(keep_new),
                "current_id": model.info.model_id,
                "history": {"action": "rollback", "model_id": model.info.model_id, "previous_model_id": replaced_id},
            }
        )
        for f in (keep_new, keep_old):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
        return model.info.model_id, replaced_id

    def prune(self) -> list[Path]:
        """Delete all but the newest ``keep`` versioned models (current and previous are copies),
        never a patient's newest: a patient's next session starts from it."""
        files = sorted(self.models.glob("adapted_*.onnx"))
        newest: dict[str, Path] = {}
        for f in files:  # oldest first: the last one seen for a patient is the newest
            try:
                patient = (read_model_info(f).calibration or {}).get("patient")
            except (ModelError, ConfigError):
                continue
            if patient:
                newest[patient] = f
        keep = set(newest.values())
        gone = [f for f in files[: max(0, len(files) - self.keep)] if f not in keep]
        for f in gone:
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
        return gone

    def current_model_id(self) -> str | None:
        return _model_id_or_none(self.current)

    def _log(self, entry: dict) -> None:
        line = json.dumps({"time": datetime.now(UTC).isoformat(timespec="seconds"), **entry}, sort_keys=True)
        old = self.history.read_text(encoding="utf-8") if self.history.is_file() else ""
        write_text(self.history, old + line + "\n", perms=PRIVATE)


def _unique(stem: Path, suffix: str) -> Path:
    path = stem.with_name(stem.name + suffix)
    n = 2
    while path.exists():
        path = stem.with_name(f"{stem.name}-{n}{suffix}")
        n += 1
    return path


def _model_id_or_none(path: Path) -> str | None:
    try:
        return read_model_info(path).model_id
    except (ModelError, ConfigError):
        return None
