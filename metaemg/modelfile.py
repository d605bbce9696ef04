"""The exported model file, as the daemon sees it: torch-free (numpy + onnxruntime only).

A MetaEMG model is one ONNX file (written by ``metaemg-export``, see :mod:`metalearn.export`):

- input ``windows``: float32 ``(batch, window, channels)``, conditioned windows straight from the
  signal chain (:class:`metaemg.signal.SignalChain`); the per-channel scaler is inside the graph;
- outputs ``logits`` and ``probabilities`` (softmax), float32 ``(batch, 3)`` for the classes
  ``relax``, ``open``, ``close`` in that order;
- ``metadata_props["metaemg"]``: one JSON document (format ``metaemg-model/1``) that says
  everything the daemon and the calibration tool need, parsed and checked by :class:`ModelInfo`.

:class:`OnnxModel` wraps one onnxruntime session for the real-time loop. Everything here raises
:class:`~metaemg.errors.ModelError` with a one-line message naming the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from metaemg.errors import ConfigError, MissingDependencyError, ModelError
from metaemg.intents import INTENTS
from metaemg.signal import RATE_TOLERANCE, SignalSpec, rate_matches

FORMAT = "metaemg-model/1"
METADATA_KEY = "metaemg"
INPUT = "windows"
LOGITS = "logits"
PROBABILITIES = "probabilities"
# The daemon maps output index to hand motion: a model with other classes, or these in another
# order, must never drive the orthosis.
CLASS_NAMES = INTENTS
MODEL_KINDS = ("dnn", "cnn", "tcn", "tf", "feat")  # the one definition (metalearn.models builds them)
SCALER_KINDS = ("none", "standard", "minmax")
INNER_OPTIMIZERS = ("sgd", "adam")  # the inner loop's optimisers (metalearn.maml)
INNER_KEYS = {"optimizer", "steps", "lr", "first_order"}  # plus the optional ones below
INNER_OPTIONAL = {"batch_size", "head", "shrinkage", "reject"}
INNER_HEADS = ("lda",)  # closed-form heads fitted before the gradient steps
DEFAULT_MODEL_NAME = "myo_meta.onnx"
_MODEL_ID = re.compile(r"[0-9a-f]{8,64}")


def default_model_path() -> Path:
    """The packaged default Myo meta-model, ``metaemg/default_model/myo_meta.onnx`` (``make
    default-model`` rebuilds it): what the daemon runs and ``metaemg-calibrate`` adapts when no
    model is named and nothing says which armband is worn."""
    return Path(__file__).resolve().parent / "default_model" / DEFAULT_MODEL_NAME


def shipped_models(directory: Path | None = None) -> list[tuple[Path, ModelInfo]]:
    """Every packaged model (``metaemg/default_model/*.onnx``) and its metadata, the default first."""
    directory = directory or default_model_path().parent
    paths = sorted(directory.glob("*.onnx"), key=lambda p: (p.name != DEFAULT_MODEL_NAME, p.name))
    return [(p, read_model_info(p)) for p in paths]


def shipped_model_for(sample_rate: float, channels: int, directory: Path | None = None) -> Path:
    """The packaged model for an armband stream of ``channels`` at ``sample_rate`` Hz (the rate
    rule of :func:`metaemg.signal.rate_matches`); ModelError naming what is shipped when none fits."""
    shipped = shipped_models(directory)
    for path, info in shipped:
        if info.channels == channels and rate_matches(sample_rate, info.sample_rate):
            return path
    have = "; ".join(f"{p.name}: {i.sample_rate:g} Hz, {i.channels} channels" for p, i in shipped) or "none"
    raise ModelError(
        f"no packaged model fits a stream of {channels} channels at {sample_rate:g} Hz (packaged: {have}); "
        "give the model file"
    )


def describe_shipped(path: Path, info: ModelInfo) -> str:
    """How a tool says which packaged model it chose."""
    return f"the packaged model {path.name} ({info.sample_rate:g} Hz, {info.channels} channels, {info.kind})"


def _freeze(obj: Any) -> Any:
    """Read-only copy of parsed JSON: dicts become mapping proxies, lists tuples."""
    if isinstance(obj, dict):
        return MappingProxyType({k: _freeze(v) for k, v in obj.items()})
    if isinstance(obj, list):
        return tuple(_freeze(v) for v in obj)
    return obj


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _is_num(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and math.isfinite(v)


def compute_model_id(weights: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> str:
    """Short hash of a model's weights (ONNX initializers by name) and its metadata.

    ``model_id`` and ``created`` are left out of the metadata hashed, so exporting the same
    checkpoint twice gives the same id, and the id can be checked against a file.
    """
    h = hashlib.sha256()
    for name in sorted(weights):
        a = np.ascontiguousarray(weights[name])
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    meta = {k: v for k, v in metadata.items() if k not in ("model_id", "created")}
    h.update(json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False).encode())
    return h.hexdigest()[:12]


@dataclass(frozen=True, eq=False)
class ModelInfo:
    """The validated ``"metaemg"`` metadata of a model file (read-only).

    ``inner``, ``model``, ``scaler`` and ``calibration`` are read-only mappings (lists become
    tuples); :meth:`to_dict` gives the plain JSON document back.
    """

    path: str | None
    signal: SignalSpec
    class_names: tuple[str, ...]
    inner: Mapping[str, Any]  # optimizer, steps, lr, first_order[, batch_size] (-> metalearn.maml.InnerLoop(**inner))
    model: Mapping[str, Any]  # kind and hyper-parameters (-> metalearn.models.build_model(**model))
    scaler: Mapping[str, Any]  # kind, offset, scale: (x - offset) / scale per channel, inside the graph
    model_id: str
    created: str
    package_version: str
    config_hash: str | None
    data_hash: str | None
    meta_epoch: int | None
    val_loss: float | None
    calibration: Mapping[str, Any] | None
    metadata_json: str = field(repr=False)
    # optional: what other people's intents look like, for the calibration's plausibility check
    # (FeatLDA.population_means: class means of standardised features, the armband as most
    # training subjects wore it, and how many electrodes of turn to allow)
    population: Mapping[str, Any] | None = None

    # -- derived ---------------------------------------------------------------------------
    @property
    def sample_rate(self) -> float:
        return self.signal.sample_rate

    @property
    def channels(self) -> int:
        return self.signal.channels

    @property
    def window(self) -> int:
        return self.signal.window

    @property
    def stride(self) -> int:
        return self.signal.stride

    @property
    def kind(self) -> str:
        return self.model["kind"]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        """The metadata document as plain JSON values (a fresh copy)."""
        return json.loads(self.metadata_json)

    def apply_scaler(self, windows: np.ndarray) -> np.ndarray:
        """``(x - offset) / scale`` in float32, exactly as the graph's first ops compute it
        (for running the torch model of :func:`metalearn.export.load_torch_from_onnx`)."""
        x = np.asarray(windows, dtype=np.float32)
        offset = np.asarray(self.scaler["offset"], dtype=np.float32)
        scale = np.asarray(self.scaler["scale"], dtype=np.float32)
        return (x - offset) / scale

    # -- parsing ---------------------------------------------------------------------------
    @classmethod
    def from_json(cls, text: str, path: str | os.PathLike | None = None) -> ModelInfo:
        where = _where(path)
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{where}'{METADATA_KEY}' metadata is not valid JSON ({exc})") from None
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: Any, path: str | os.PathLike | None = None) -> ModelInfo:
        where = _where(path)
        if not isinstance(data, dict):
            raise ModelError(f"{where}'{METADATA_KEY}' metadata must be a JSON object, got {type(data).__name__}")

        def bad(name: str, problem: str) -> ModelError:
            return ModelError(f"{where}model metadata field '{name}' {problem}")

        def get(name: str) -> Any:
            if name not in data:
                raise ModelError(f"{where}model metadata has no field '{name}'")
            return data[name]

        fmt = get("format")
        if fmt != FORMAT:
            raise bad("format", f"is {fmt!r}; this version reads {FORMAT!r}")
        signal = _check_signal(get, bad)

        class_names = get("class_names")
        if not isinstance(class_names, list) or tuple(class_names) != CLASS_NAMES:
            raise bad("class_names", f"is {class_names!r}; the orthosis is driven by {list(CLASS_NAMES)} in that order")

        inner = get("inner")
        _check_inner(inner, bad)

        model = get("model")
        _check_model(model, bad, signal, len(class_names))

        scaler = get("scaler")
        _check_scaler(scaler, bad, signal.channels)

        provenance = _check_provenance(get, bad)
        population = data.get("population")
        _check_population(population, bad, len(class_names))

        return cls(
            path=None if path is None else str(path),
            signal=signal,
            class_names=tuple(class_names),
            inner=_freeze(inner),
            model=_freeze(model),
            scaler=_freeze(scaler),
            **provenance,
            metadata_json=json.dumps(data, sort_keys=True),
            population=_freeze(population),
        )

    @classmethod
    def from_metadata_map(cls, props: Mapping[str, str], path: str | os.PathLike | None = None) -> ModelInfo:
        """From an ONNX file's ``metadata_props`` (as onnxruntime or onnx return them)."""
        if METADATA_KEY not in props:
            raise ModelError(
                f"{_where(path)}not a MetaEMG model: no '{METADATA_KEY}' metadata (export it with metaemg-export)"
            )
        return cls.from_json(props[METADATA_KEY], path)


Bad = Callable[[str, str], ModelError]  # (field, problem) -> the error naming the file and field


def _check_signal(get: Callable[[str], Any], bad: Bad) -> SignalSpec:
    """The signal spec, and the fields that repeat it for readers without it."""
    try:
        signal = SignalSpec.from_dict(get("signal"))
    except ConfigError as exc:
        raise bad("signal", f"is invalid: {exc}") from None
    for name, value in (
        ("sample_rate", signal.sample_rate),
        ("channels", signal.channels),
        ("window", signal.window),
        ("stride", signal.stride),
    ):
        got = get(name)
        if not _is_num(got) or not math.isclose(got, value, rel_tol=1e-9):
            raise bad(name, f"is {got!r}, but the signal spec says {value!r}")
    return signal


def _check_provenance(get: Callable[[str], Any], bad: Bad) -> dict[str, Any]:
    """Where the model comes from: its id, creation, versions, training and calibration."""
    model_id = get("model_id")
    if not isinstance(model_id, str) or not _MODEL_ID.fullmatch(model_id):
        raise bad("model_id", f"must be a lowercase hex string, got {model_id!r}")
    created = get("created")
    try:
        datetime.fromisoformat(created)
    except (TypeError, ValueError):
        raise bad("created", f"must be an ISO 8601 time, got {created!r}") from None
    package_version = get("package_version")
    if not isinstance(package_version, str):
        raise bad("package_version", f"must be a string, got {package_version!r}")
    for name in ("config_hash", "data_hash"):
        if get(name) is not None and not isinstance(get(name), str):
            raise bad(name, f"must be a string or null, got {get(name)!r}")
    meta_epoch = get("meta_epoch")
    if meta_epoch is not None and (not _is_int(meta_epoch) or meta_epoch < 0):
        raise bad("meta_epoch", f"must be an integer >= 0 or null, got {meta_epoch!r}")
    val_loss = get("val_loss")
    if val_loss is not None and not _is_num(val_loss):
        raise bad("val_loss", f"must be a finite number or null, got {val_loss!r}")
    calibration = get("calibration")
    if calibration is not None and not isinstance(calibration, dict):
        raise bad("calibration", f"must be an object or null, got {calibration!r}")
    return {
        "model_id": model_id,
        "created": created,
        "package_version": package_version,
        "config_hash": get("config_hash"),
        "data_hash": get("data_hash"),
        "meta_epoch": meta_epoch,
        "val_loss": None if val_loss is None else float(val_loss),
        "calibration": _freeze(calibration),
    }


def _check_inner(inner: Any, bad: Bad) -> None:
    """The ``inner`` field: how calibration adapts this model."""
    if not isinstance(inner, dict) or not INNER_KEYS <= set(inner) <= INNER_KEYS | INNER_OPTIONAL:
        raise bad(
            "inner",
            f"must be an object with optimizer, steps, lr, first_order (and optionally "
            f"{', '.join(sorted(INNER_OPTIONAL))}), got {inner!r}",
        )
    if inner["optimizer"] not in INNER_OPTIMIZERS:
        raise bad("inner", f"optimizer must be one of {', '.join(INNER_OPTIMIZERS)}, got {inner['optimizer']!r}")
    if not _is_int(inner["steps"]) or inner["steps"] < 0:
        raise bad("inner", f"steps must be an integer >= 0, got {inner['steps']!r}")
    if not _is_num(inner["lr"]) or inner["lr"] <= 0:
        raise bad("inner", f"lr must be a finite number > 0, got {inner['lr']!r}")
    if not isinstance(inner["first_order"], bool):
        raise bad("inner", f"first_order must be true or false, got {inner['first_order']!r}")
    batch = inner.get("batch_size")
    if batch is not None and (not _is_int(batch) or batch < 1):
        raise bad("inner", f"batch_size must be null or an integer >= 1, got {batch!r}")
    if inner.get("head") is not None and inner["head"] not in INNER_HEADS:
        raise bad("inner", f"head must be null or one of {', '.join(INNER_HEADS)}, got {inner['head']!r}")
    shrinkage = inner.get("shrinkage", 0.0)
    if not _is_num(shrinkage) or not 0 <= shrinkage <= 1:
        raise bad("inner", f"shrinkage must be a number in [0, 1], got {shrinkage!r}")
    reject = inner.get("reject", 0.0)
    if not _is_num(reject) or reject < 0:
        raise bad("inner", f"reject must be a number >= 0 (0: off), got {reject!r}")


def _check_model(model: Any, bad: Bad, signal: SignalSpec, n_classes: int) -> None:
    """The ``model`` field: its kind and hyper-parameters, consistent with the stream and classes."""
    if not isinstance(model, dict) or model.get("kind") not in MODEL_KINDS:
        raise bad("model", f"must be an object whose kind is one of {', '.join(MODEL_KINDS)}, got {model!r}")
    for key, value in model.items():
        if key != "kind" and (not _is_int(value) or value < 1):
            raise bad("model", f"hyper-parameter {key} must be a positive integer, got {value!r}")
    for key, expected in (
        ("n_channels", signal.channels),
        ("window", signal.window),
        ("n_classes", n_classes),
    ):
        if model.get(key) != expected:
            raise bad("model", f"{key} is {model.get(key)!r}, but the file's stream/classes need {expected}")


def _check_scaler(scaler: Any, bad: Bad, channels: int) -> None:
    """The ``scaler`` field: one finite offset and non-zero scale per channel."""
    if not isinstance(scaler, dict) or scaler.get("kind") not in SCALER_KINDS:
        raise bad("scaler", f"must be an object whose kind is one of {', '.join(SCALER_KINDS)}, got {scaler!r}")
    for key in ("offset", "scale"):
        values = scaler.get(key)
        if not isinstance(values, list) or len(values) != channels or not all(map(_is_num, values)):
            raise bad("scaler", f"{key} must be {channels} finite numbers, got {values!r}")
    if any(v == 0 for v in scaler["scale"]):
        raise bad("scaler", "scale must not contain 0")


def _check_population(population: Any, bad: Bad, n_classes: int) -> None:
    """The optional ``population`` field: the training population's class means."""
    if population is None:
        return
    means = population.get("means") if isinstance(population, dict) else None
    if not (
        isinstance(means, list)
        and len(means) == n_classes
        and all(isinstance(m, list) and m and len(m) == len(means[0]) and all(map(_is_num, m)) for m in means)
    ):
        raise bad("population", f"means must be {n_classes} equal lists of numbers, got {means!r:.80}")
    turn = population.get("max_rotation")
    if not _is_int(turn) or turn < 0:
        raise bad("population", f"max_rotation must be an integer >= 0, got {turn!r}")


def _where(path: str | os.PathLike | None) -> str:
    return "" if path is None else f"{path}: "


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("onnxruntime is needed to run models: pip install 'metaemg[device]'") from None
    return onnxruntime


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")


def _session(path: Path, intra_op_threads: int = 1, data: bytes | None = None) -> Any:
    """An onnxruntime CPU session, single-threaded across operators, sequential (of ``data``,
    the file's bytes, when given: what is verified is what runs)."""
    ort = _import_ort()
    if data is None:
        _check_file(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        return ort.InferenceSession(
            str(path) if data is None else data, sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime's exceptions derive from Exception only
        raise ModelError(f"{path}: not a valid ONNX model ({_one_line(exc)})") from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{path}: model file not found") from None
    except IsADirectoryError:
        raise ModelError(f"{path}: model file not found (it is a directory)") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model file: {exc.strerror or exc}") from None


def onnx_weights(proto: Any) -> dict[str, np.ndarray]:
    """The initializers of a loaded ONNX model by name (what :func:`compute_model_id` hashes)."""
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}


def verify_model_id(data: bytes, info: ModelInfo, path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The file's weights (its initializers by name), checked: ModelError unless they and the
    metadata hash to its ``model_id`` (a file changed after export, by hand or by a broken copy,
    keeps its old id otherwise)."""
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError("verifying a model file needs the onnx package: pip install onnx") from None
    try:
        proto = onnx.load_from_string(data)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelError(f"{path}: not a valid ONNX model ({_one_line(exc)})") from None
    weights = onnx_weights(proto)
    if compute_model_id(weights, info.to_dict()) != info.model_id:
        raise ModelError(
            f"{path}: weights or metadata do not match model_id {info.model_id} (changed after export?); refusing it"
        )
    return weights


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """The validated metadata of a model file (onnxruntime if installed, else the onnx package)."""
    path = Path(path)
    try:
        _import_ort()
    except MissingDependencyError:
        try:
            import onnx
        except ImportError:
            raise MissingDependencyError("reading a model file needs onnxruntime (or onnx)") from None
        _check_file(path)
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf DecodeError and friends
            raise ModelError(f"{path}: not a valid ONNX model ({_one_line(exc)})") from None
        return ModelInfo.from_metadata_map({p.key: p.value for p in proto.metadata_props}, path)
    meta = _session(path).get_modelmeta()
    return ModelInfo.from_metadata_map(meta.custom_metadata_map, path)


class OnnxModel:
    """One model file loaded for real-time inference.

    The onnxruntime session is created once, single-threaded and sequential by default (the
    daemon's loop is one window at a time). A single window runs through an I/O binding to fixed
    input and output buffers (no per-call allocation or feed validation: about a fifth less time
    per call than ``session.run``). :meth:`predict` is not thread-safe: it reuses those buffers;
    call it from one thread.
    """

    def __init__(self, path: str | os.PathLike, *, intra_op_threads: int = 1):
        if not _is_int(intra_op_threads) or intra_op_threads < 1:
            raise ConfigError(f"intra_op_threads must be an integer >= 1, got {intra_op_threads!r}")
        self.path = Path(path)
        data = _read(self.path)  # read once: the session runs and the id check hashes the same bytes
        self._session = _session(self.path, intra_op_threads, data)
        self.info = ModelInfo.from_metadata_map(self._session.get_modelmeta().custom_metadata_map, self.path)
        self.weights = verify_model_id(data, self.info, self.path)  # what the session runs, checked
        self._check_io()
        self._shape = (self.info.window, self.info.channels)
        self._one = np.zeros((1, *self._shape), dtype=np.float32)  # reused for single windows
        self._feed_one = {INPUT: self._one}
        self._prob_only = [PROBABILITIES]
        self._both = [LOGITS, PROBABILITIES]
        self._one_probs = np.zeros((1, self.info.n_classes), dtype=np.float32)
        self._binding = self._session.io_binding()
        self._binding.bind_cpu_input(INPUT, self._one)  # shares self._one's memory
        self._binding.bind_output(
            PROBABILITIES, "cpu", 0, np.float32, self._one_probs.shape, self._one_probs.ctypes.data
        )

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, kind={self.info.kind!r}, model_id={self.info.model_id!r})"

    def _check_io(self) -> None:
        info, where = self.info, f"{self.path}: "
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT or inputs[0].type != "tensor(float)":
            got = [(i.name, i.type) for i in inputs]
            raise ModelError(f"{where}expected one float input '{INPUT}', got {got}")
        shape = list(inputs[0].shape)
        if len(shape) != 3 or isinstance(shape[0], int) or shape[1:] != [info.window, info.channels]:
            raise ModelError(
                f"{where}input '{INPUT}' has shape {shape}, expected [batch, {info.window}, {info.channels}] "
                "with a dynamic batch"
            )
        outputs = {o.name: o for o in self._session.get_outputs()}
        for name in (LOGITS, PROBABILITIES):
            if name not in outputs:
                raise ModelError(f"{where}has no output '{name}' (outputs: {', '.join(outputs)})")
            out_shape = list(outputs[name].shape)
            if len(out_shape) != 2 or out_shape[1] != info.n_classes:
                raise ModelError(f"{where}output '{name}' has shape {out_shape}, expected [batch, {info.n_classes}]")

    # -- inference -------------------------------------------------------------------------
    def _feed(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        x = windows if isinstance(windows, np.ndarray) else np.asarray(windows)
        if x.ndim != 3 or x.shape[1:] != self._shape or x.shape[0] < 1:
            raise ModelError(
                f"{self.path}: expects windows (n, {self._shape[0]}, {self._shape[1]}) with n >= 1, got shape {x.shape}"
            )
        if x.dtype.kind not in "fiub":
            raise ModelError(f"{self.path}: windows must be real numbers, got dtype {x.dtype}")
        if x.shape[0] == 1:
            np.copyto(self._one, x, casting="unsafe")
            return self._feed_one
        return {INPUT: np.ascontiguousarray(x, dtype=np.float32)}

    def _run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            outputs = self._session.run(names, feed)
        except Exception as exc:  # onnxruntime's exceptions derive from Exception only
            raise ModelError(f"{self.path}: inference failed ({_one_line(exc)})") from None
        n = feed[INPUT].shape[0]
        for name, out in zip(names, outputs, strict=True):
            if out.shape != (n, self.info.n_classes):
                expected = (n, self.info.n_classes)
                raise ModelError(f"{self.path}: output '{name}' has shape {out.shape}, expected {expected}")
            if not np.isfinite(out).all():
                raise ModelError(f"{self.path}: output '{name}' is not finite (NaN/Inf)")
        return outputs

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """Class probabilities, float32 ``(n, 3)``, for conditioned windows ``(n, window, channels)``.

        Raises ModelError on a wrong shape or a non-finite output (never returns NaN).
        """
        feed = self._feed(windows)
        if feed is not self._feed_one:
            return self._run(self._prob_only, feed)[0]
        try:
            self._session.run_with_iobinding(self._binding)
        except Exception as exc:  # onnxruntime's exceptions derive from Exception only
            raise ModelError(f"{self.path}: inference failed ({_one_line(exc)})") from None
        out = self._one_probs
        if not np.isfinite(out).all():
            raise ModelError(f"{self.path}: output '{PROBABILITIES}' is not finite (NaN/Inf)")
        return out.copy()

    def infer(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(logits, probabilities)``, both float32 ``(n, 3)``."""
        logits, probabilities = self._run(self._both, self._feed(windows))
        return logits, probabilities

    # -- checks ----------------------------------------------------------------------------
    def check_stream(self, sample_rate: float, channels: int) -> None:
        """Raise ModelError unless a stream of ``channels`` at ``sample_rate`` Hz fits this model
        (rate within 5%)."""
        info = self.info
        if channels != info.channels:
            raise ModelError(f"{self.path}: model expects {info.channels} channels, the stream has {channels}")
        if not _is_num(sample_rate) or not rate_matches(sample_rate, info.sample_rate):
            rate = f"{sample_rate:g}" if isinstance(sample_rate, numbers.Real) else repr(sample_rate)
            raise ModelError(
                f"{self.path}: model expects {info.sample_rate:g} Hz (within {RATE_TOLERANCE:.0%}), "
                f"the stream runs at {rate} Hz"
            )

    def self_test(self) -> None:
        """Run the model on a zero window, a random window and both as a batch; raise
        ModelError on a non-finite output, a wrong shape, probabilities that are not a
        distribution, or a batch result that differs from the single-window results."""
        rng = np.random.default_rng(0)
        single = [np.zeros((1, *self._shape), np.float32), rng.uniform(0.0, 1.0, (1, *self._shape)).astype(np.float32)]
        results = []
        for x in single:
            _, probs = self.infer(x)
            if (probs < 0).any() or (probs > 1).any() or abs(float(probs.sum()) - 1.0) > 1e-4:
                raise ModelError(f"{self.path}: self-test: probabilities {probs.tolist()} are not a distribution")
            results.append(probs)
        _, batch = self.infer(np.concatenate(single))
        diff = float(np.abs(batch - np.concatenate(results)).max())
        if diff > 1e-5:
            raise ModelError(f"{self.path}: self-test: a batch of 2 differs from single windows by {diff:.3g}")
