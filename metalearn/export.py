"""Export a training checkpoint to the ONNX model file the daemon runs (``metaemg-export``).

The graph takes ``windows`` float32 ``(batch, window, channels)`` (conditioned windows straight
from the signal chain), applies the checkpoint's scaler ``(x - offset) / scale`` per channel as
its first ops, runs the model and returns ``logits`` and ``probabilities`` (softmax), both
``(batch, 3)``. Its ``metadata_props["metaemg"]`` is the JSON document read by
:class:`metaemg.modelfile.ModelInfo`.

Safety: an export is written to a temporary file beside ``out``, loaded with onnxruntime exactly as
the daemon loads it (:class:`~metaemg.modelfile.OnnxModel`, self-test included) and compared with
torch on the checkpoint's real ``verify_windows``; only if logits and probabilities agree within
``tolerance`` (and are finite; logits relative to their largest magnitude when it exceeds 1) is it
renamed over ``out``. A bad new model never replaces a good one.

Weights: every ``state_dict`` entry is an ONNX initializer of the same name (constant folding is
off, and initializers are not merged), so :func:`load_torch_from_onnx` rebuilds the torch model
from the file alone (for calibration). The scaler lives in the initializers
``metaemg.scaler.offset`` and ``metaemg.scaler.scale``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from metaemg import __version__
from metaemg.cli import entry_point
from metaemg.errors import ConfigError, MissingDependencyError, ModelError, StorageError
from metaemg.modelfile import (
    FORMAT,
    INPUT,
    LOGITS,
    PROBABILITIES,
    ModelInfo,
    OnnxModel,
    compute_model_id,
    onnx_weights,
    read_model_info,
)
from metaemg.signal import SignalSpec

OPSET = 17
DEFAULT_TOLERANCE = 1e-5
RUN_CHECKPOINT = Path("models") / "best.pt"
SCALER_OFFSET = "metaemg.scaler.offset"
SCALER_SCALE = "metaemg.scaler.scale"
_PLACEHOLDER_ID = "0" * 12


@dataclass(frozen=True)
class ExportReport:
    path: Path
    info: ModelInfo
    max_diff: float  # max |onnxruntime - torch| over logits and probabilities
    n_windows: int


def _deps():
    try:
        import onnx
        import torch
    except ImportError as exc:
        raise MissingDependencyError(
            f"exporting needs torch and onnx ({exc.name} is missing): pip install 'metaemg[train]'"
        ) from None
    return torch, onnx


# ------------------------------------------------------------------------------- sources
def resolve_checkpoint(source: str | os.PathLike) -> Path:
    """A checkpoint file as given, or ``RUN_DIR/models/best.pt`` for a run directory."""
    source = Path(source)
    if source.is_dir():
        candidate = source / RUN_CHECKPOINT
        if candidate.is_file():
            return candidate
        found = sorted(p.name for p in (source / "models").glob("*.pt")) if (source / "models").is_dir() else []
        hint = f"; models/ has {', '.join(found)}" if found else ""
        raise ModelError(f"{source}: no checkpoint in this run directory (looked for {candidate}{hint})")
    if not source.is_file():
        raise ModelError(f"{source}: no such checkpoint file or run directory")
    return source


def _metadata_from_checkpoint(ckpt: dict, where: Path) -> dict[str, Any]:
    """The ``"metaemg"`` document (without ``model``, ``created``, ``model_id``) of a checkpoint."""
    try:
        spec = SignalSpec.from_dict(ckpt["signal"])
    except ConfigError as exc:
        raise ModelError(f"{where}: checkpoint signal spec is invalid: {exc}") from None
    inner, scaler = ckpt["inner"], ckpt["scaler"]
    if not isinstance(inner, dict) or not {"optimizer", "steps", "lr", "first_order"} <= set(inner):
        raise ModelError(f"{where}: checkpoint 'inner' must have optimizer, steps, lr, first_order, got {inner!r}")
    if not isinstance(scaler, dict) or not {"kind", "offset", "scale"} <= set(scaler):
        raise ModelError(f"{where}: checkpoint 'scaler' must have kind, offset, scale, got {scaler!r}")
    val_loss = ckpt.get("val_loss")
    val_loss = None if val_loss is None or not math.isfinite(float(val_loss)) else float(val_loss)
    meta_epoch = ckpt.get("meta_epoch")
    return {
        "format": FORMAT,
        "sample_rate": spec.sample_rate,
        "channels": spec.channels,
        "window": spec.window,
        "stride": spec.stride,
        "signal": spec.to_dict(),
        "class_names": list(ckpt["class_names"]),
        "inner": {
            **{k: inner[k] for k in ("optimizer", "steps", "lr", "first_order")},
            "batch_size": inner.get("batch_size"),
            **{k: inner[k] for k in ("head", "shrinkage", "reject") if inner.get(k) is not None},
        },
        "scaler": {
            "kind": scaler["kind"],
            "offset": np.asarray(scaler["offset"], dtype=np.float64).ravel().tolist(),
            "scale": np.asarray(scaler["scale"], dtype=np.float64).ravel().tolist(),
        },
        "config_hash": ckpt.get("config_hash"),
        "data_hash": ckpt.get("data_hash"),
        "meta_epoch": None if meta_epoch is None else int(meta_epoch),
        "val_loss": val_loss,
        "calibration": None,
        **({"population": ckpt["population"]} if ckpt.get("population") is not None else {}),
    }


# ------------------------------------------------------------------------------- export
def export_onnx(source: str | os.PathLike, out: str | os.PathLike, *, tolerance: float = DEFAULT_TOLERANCE) -> Path:
    """Export a checkpoint (or ``RUN_DIR/models/best.pt``) to ``out``, verified; returns ``out``."""
    return _export_checkpoint(source, out, tolerance).path


def _export_checkpoint(source: str | os.PathLike, out: str | os.PathLike, tolerance: float) -> ExportReport:
    path = resolve_checkpoint(source)  # before importing torch: a wrong path fails fast
    _deps()
    from metalearn.checkpoint import build_from_checkpoint, load_checkpoint

    ckpt = load_checkpoint(path)
    model = build_from_checkpoint(ckpt)
    if ckpt.get("verify_windows") is None:
        raise ModelError(f"{path}: checkpoint has no verify_windows; cannot check onnxruntime against torch")
    windows = ckpt["verify_windows"]
    if hasattr(windows, "detach"):  # a torch tensor
        windows = windows.detach().cpu().numpy()
    metadata = _metadata_from_checkpoint(ckpt, path)
    return _write_verified(model, metadata, out, windows, tolerance, label=str(path))


def export_model(
    model,
    metadata: dict[str, Any],
    out: str | os.PathLike,
    *,
    verify_windows: np.ndarray,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Path:
    """Export a torch model with a ``"metaemg"`` metadata document (e.g. ``ModelInfo.to_dict()``
    of the file it came from, with ``calibration`` filled in), verified on ``verify_windows``
    (conditioned, unscaled). ``model``, ``package_version``, ``created`` and ``model_id`` are
    set here. Returns ``out``."""
    _deps()
    return _write_verified(model, dict(metadata), out, verify_windows, tolerance, label="export").path


def _write_verified(
    model, metadata: dict[str, Any], out: str | os.PathLike, verify_windows: Any, tolerance: float, *, label: str
) -> ExportReport:
    torch, _ = _deps()
    from metalearn.models import model_hparams

    out = Path(out)
    if (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, (int, float))
        or not (math.isfinite(tolerance) and tolerance >= 0)
    ):
        raise ConfigError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    if out.is_dir():
        raise ModelError(f"{out}: is a directory; give the model file to write")
    metadata = {
        **metadata,
        "model": model_hparams(model),
        "package_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_id": _PLACEHOLDER_ID,
    }
    try:
        metadata = json.loads(json.dumps(metadata, allow_nan=False))  # plain JSON values only
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{label}: model metadata is not plain JSON ({exc})") from None
    info = ModelInfo.from_dict(metadata, label)  # refuse inconsistent metadata before any work

    for name, tensor in model.state_dict().items():
        if not torch.isfinite(tensor).all():
            raise ModelError(f"{label}: weight {name} contains NaN/Inf; refusing to export")
    windows = np.asarray(verify_windows, dtype=np.float32)
    if windows.ndim != 3 or windows.shape[0] < 1 or windows.shape[1:] != (info.window, info.channels):
        raise ModelError(
            f"{label}: verify_windows must be (n >= 1, {info.window}, {info.channels}), got shape {windows.shape}"
        )
    if not np.isfinite(windows).all():
        raise ModelError(f"{label}: verify_windows contain NaN/Inf")

    wrapper = _deployed(model, info).eval()
    with torch.no_grad():
        expected = [tuple(t.numpy() for t in wrapper(torch.from_numpy(x))) for x in (windows, windows[:1])]
    if not all(np.isfinite(a).all() for pair in expected for a in pair):
        raise ModelError(f"{label}: the torch model gives NaN/Inf on the verify windows; refusing to export")

    proto = _to_onnx(wrapper, info)
    _finish_proto(proto, model, metadata, label)
    return _verify_and_replace(proto.SerializeToString(), out, windows, expected, tolerance, label)


def _deployed(model, info: ModelInfo):
    """``model`` behind the scaler, returning ``(logits, probabilities)``."""
    import torch

    class Deployed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.register_buffer("scaler_offset", torch.tensor(info.scaler["offset"], dtype=torch.float32))
            self.register_buffer("scaler_scale", torch.tensor(info.scaler["scale"], dtype=torch.float32))

        def forward(self, windows):
            logits = self.model((windows - self.scaler_offset) / self.scaler_scale)
            return logits, torch.softmax(logits, dim=-1)

    return Deployed()


def _to_onnx(wrapper, info: ModelInfo):
    torch, onnx = _deps()
    buf = io.BytesIO()
    example = torch.zeros(2, info.window, info.channels)  # batch 2: a batch of 1 would hide a fixed batch size
    with warnings.catch_warnings():
        # Expected: the TorchScript exporter (dynamo=False) is deprecated since torch 2.9 and
        # says so on every call, and it calls its own deprecated setup_onnx_logging ("The
        # feature will be removed"). The dynamo exporter needs onnxscript, which we do not
        # depend on. The result is checked against torch before it is written.
        warnings.filterwarnings(
            "ignore", message=r"You are using the legacy TorchScript-based ONNX export", category=DeprecationWarning
        )
        warnings.filterwarnings("ignore", message=r"The feature will be removed", category=DeprecationWarning)
        torch.onnx.export(
            wrapper,
            (example,),
            buf,
            dynamo=False,
            opset_version=OPSET,
            export_params=True,
            do_constant_folding=False,  # keep each weight as it is in the state_dict
            keep_initializers_as_inputs=True,  # stops equal weights being merged; moved back in _finish_proto
            input_names=[INPUT],
            output_names=[LOGITS, PROBABILITIES],
            dynamic_axes={INPUT: {0: "batch"}, LOGITS: {0: "batch"}, PROBABILITIES: {0: "batch"}},
        )
    return onnx.load_from_string(buf.getvalue())


def _rename(graph, mapping: dict[str, str]) -> None:
    for init in graph.initializer:
        init.name = mapping.get(init.name, init.name)
    for info in (*graph.input, *graph.value_info):
        info.name = mapping.get(info.name, info.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in mapping:
                node.input[i] = mapping[name]
        for attr in node.attribute:
            for sub in (attr.g, *attr.graphs) if attr.HasField("g") else attr.graphs:
                _rename(sub, mapping)


def _finish_proto(proto, model, metadata: dict[str, Any], label: str) -> None:
    """Make the initializers plain weights named as in the state_dict, check they hold the
    model's exact weights, then set the metadata and model_id."""
    _, onnx = _deps()
    graph = proto.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    del graph.input[:]
    graph.input.extend(inputs)
    state = {name: t.detach().cpu().numpy() for name, t in model.state_dict().items()}
    mapping = {f"model.{name}": name for name in state}
    mapping.update({"scaler_offset": SCALER_OFFSET, "scaler_scale": SCALER_SCALE})
    _rename(graph, mapping)

    weights = onnx_weights(proto)
    for name, value in state.items():
        got = weights.get(name)
        if got is None or got.shape != value.shape or not np.array_equal(got, value):
            raise ModelError(
                f"{label}: the ONNX exporter did not keep weight {name} as an initializer; "
                "the model could not be recovered from the file"
            )

    metadata["model_id"] = compute_model_id(weights, metadata)
    hp = metadata["model"]
    proto.producer_name = "metaemg"
    proto.producer_version = __version__
    graph.name = f"metaemg_{hp['kind']}"
    proto.doc_string = (
        f"MetaEMG intent classifier ({hp['kind']}). Input '{INPUT}': float32 (batch, {hp['window']}, "
        f"{hp['n_channels']}) conditioned EMG windows. Outputs '{LOGITS}' and '{PROBABILITIES}': "
        f"(batch, {hp['n_classes']}) for {', '.join(metadata['class_names'])}. "
        "Everything else is in metadata_props['metaemg']."
    )
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {"metaemg": json.dumps(metadata, sort_keys=True, allow_nan=False)})
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"{label}: the exported graph is not valid ONNX ({' '.join(str(exc).split())})") from None


def _verify_and_replace(
    data: bytes, out: Path, windows: np.ndarray, expected: list, tolerance: float, label: str
) -> ExportReport:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as exc:
        raise StorageError(f"{label}: cannot write {out}: {exc.strerror or exc}") from None
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:  # disk full, file too large
            raise StorageError(f"{label}: cannot write {out}: {exc.strerror or exc}; {out} not written") from None
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the daemon may run as another user
        try:
            onnx_model = OnnxModel(tmp)
            onnx_model.check_stream(onnx_model.info.sample_rate, onnx_model.info.channels)
            onnx_model.self_test()
            got = [onnx_model.infer(x) for x in (windows, windows[:1])]
        except ModelError as exc:
            reason = str(exc).replace(f"{tmp}: ", "")
            raise ModelError(f"{label}: the exported model failed its check, {out} not written: {reason}") from None
        # logits relative to their size (float32 keeps ~7 digits: a logit of 100 is exact to ~1e-5),
        # probabilities absolute
        d_logits = max(
            float(np.abs(g[0] - e[0]).max() / max(1.0, float(np.abs(e[0]).max())))
            for g, e in zip(got, expected, strict=True)
        )
        d_probs = max(float(np.abs(g[1] - e[1]).max()) for g, e in zip(got, expected, strict=True))
        if not (d_logits <= tolerance and d_probs <= tolerance):
            raise ModelError(
                f"{label}: onnxruntime differs from torch by {d_logits:.3g} (logits, relative) and {d_probs:.3g} "
                f"(probabilities) on {len(windows)} verify windows, above the tolerance {tolerance:g}; "
                f"{out} not written"
            )
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return ExportReport(out, read_model_info(out), max(d_logits, d_probs), len(windows))


# ------------------------------------------------------------------------------- import back
def load_torch_from_onnx(path: str | os.PathLike):
    """``(torch model, ModelInfo)`` rebuilt from a model file alone: the model is built from the
    metadata (kind, hyper-parameters) and its weights are the ONNX initializers of the same
    names. The model does not include the scaler: feed it ``info.apply_scaler(windows)``.

    Raises ModelError if the weights or metadata do not match the file's model_id.
    """
    torch, onnx = _deps()
    from metalearn.models import build_model

    path = Path(path)
    info = read_model_info(path)
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelError(f"{path}: not a valid ONNX model ({type(exc).__name__}: {exc})") from None
    weights = onnx_weights(proto)
    if compute_model_id(weights, info.to_dict()) != info.model_id:
        raise ModelError(f"{path}: weights or metadata do not match model_id {info.model_id} (modified after export?)")
    for name, key in ((SCALER_OFFSET, "offset"), (SCALER_SCALE, "scale")):
        expected = np.asarray(info.scaler[key], dtype=np.float32)
        if name not in weights or not np.array_equal(weights[name], expected):
            raise ModelError(f"{path}: initializer {name} does not match the metadata scaler {key}")
    try:
        model = build_model(**dict(info.model))
    except ConfigError as exc:
        raise ModelError(f"{path}: model metadata does not build a model: {exc}") from None
    state, missing = {}, []
    optional = getattr(model, "OPTIONAL_BUFFERS", ())
    sized = getattr(model, "SIZED_BY_FILE", ())
    for name, ref in model.state_dict().items():
        value = weights.get(name)
        if value is None and name in optional:  # a file from before that buffer: its default
            state[name] = ref
            continue
        if (
            value is not None
            and name in sized
            and (value.ndim <= 1 if ref.ndim == 0 else value.shape[1:] == ref.shape[1:])
        ):
            setattr(model, name, torch.from_numpy(value.copy()).to(ref.dtype))  # rows: a wearer's own classes too
            ref = getattr(model, name)
        if value is None or value.shape != tuple(ref.shape):
            missing.append(name)
            continue
        state[name] = torch.from_numpy(value.copy()).to(ref.dtype)
    if missing:
        raise ModelError(f"{path}: no initializer of the right shape for weight(s) {', '.join(missing)}")
    model.load_state_dict(state, strict=True)
    return model.eval(), info


# ------------------------------------------------------------------------------- command line
@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="metaemg-export",
        description="Export a checkpoint (or RUN_DIR/models/best.pt) to the ONNX model file the daemon runs, "
        "verified against torch on the checkpoint's real windows.",
    )
    parser.add_argument("source", metavar="RUN_DIR_or_CHECKPOINT", help="a run directory or a checkpoint file")
    parser.add_argument("--out", required=True, type=Path, help="the model file to write, e.g. model.onnx")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="largest allowed |onnxruntime - torch| on logits and probabilities (default %(default)g)",
    )
    parser.add_argument("--json", action="store_true", help="end with one JSON document: the file and its model")
    args = parser.parse_args(argv)
    report = _export_checkpoint(args.source, args.out, args.tolerance)
    info = report.info
    print(
        f"wrote {report.path}: {info.kind} model {info.model_id}, {info.sample_rate:g} Hz x {info.channels} channels, "
        f"window {info.window} stride {info.stride}; max |onnxruntime - torch| {report.max_diff:.2g} "
        f"on {report.n_windows} windows"
    )
    if args.json:
        doc = {"path": str(report.path), "model_id": info.model_id, "kind": info.kind, "max_diff": report.max_diff}
        print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
