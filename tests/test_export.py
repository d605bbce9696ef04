"""metalearn.export: checkpoint -> verified ONNX file -> back to torch, for all four model kinds,
with real onnxruntime sessions and tiny models."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from metaemg.errors import ConfigError, ModelError
from metaemg.modelfile import (
    CLASS_NAMES,
    FORMAT,
    INNER_HEADS,
    INNER_OPTIMIZERS,
    MODEL_KINDS,
    SCALER_KINDS,
    OnnxModel,
    compute_model_id,
    read_model_info,
)
from metaemg.signal import SignalChain, SignalSpec, make_windows
from metalearn import maml, models, tasks
from metalearn.checkpoint import save_checkpoint
from metalearn.export import (
    SCALER_OFFSET,
    SCALER_SCALE,
    export_model,
    export_onnx,
    load_torch_from_onnx,
    main,
)
from metalearn.models import build_model
from metalearn.tasks import Scaler

BIN = Path(sys.executable).parent
SPEC = SignalSpec.myo(window=20, stride=5)
TINY = {
    "dnn": {"fc_units": 8, "n_hidden": 1},
    "cnn": {"fc_units": 8, "filters": 4, "n_layers": 2, "kernel_size": 3},
    "tcn": {"fc_units": 8, "filters": 4, "n_blocks": 2},
    "tf": {"fc_units": 8, "d_model": 8, "n_heads": 2, "n_layers": 2, "ff_mult": 1},
    "feat": {},
}
INNER = {"optimizer": "adam", "steps": 3, "lr": 0.005, "first_order": False, "batch_size": 8}


def emg_windows(seed: int, seconds: float = 3.0) -> np.ndarray:
    """Conditioned windows from random int8 EMG through the real signal chain (float32)."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(-128, 128, (int(seconds * SPEC.sample_rate), SPEC.channels))
    raw[:, :4] //= 4  # channels of different strength, so the scaler is not trivial
    windows, _ = make_windows(SignalChain(SPEC).process(raw), SPEC.window, SPEC.stride)
    return windows.astype(np.float32)


WINDOWS = emg_windows(0)
SCALER = Scaler.fit("standard", WINDOWS)


def make_checkpoint(
    path: Path, kind: str, *, seed: int = 0, nan_weight: bool = False, **extra
) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(seed)
    model = build_model(kind, n_channels=SPEC.channels, window=SPEC.window, **TINY[kind])
    if kind == "feat":  # its whitening and head are fitted, not drawn: fit them to something
        x = torch.from_numpy(SCALER.transform(WINDOWS).astype(np.float32))
        y = torch.from_numpy(np.random.default_rng(seed).integers(0, 3, len(x)))
        model.fit_whitening([(x, y)])
        model.fit_head(x, y, 0.3)
    state = model.state_dict()
    if nan_weight:
        next(iter(state.values())).view(-1)[0] = float("nan")
    ckpt = {
        "model": {"kind": kind, "n_channels": SPEC.channels, "window": SPEC.window, **TINY[kind]},
        "state_dict": state,
        "signal": SPEC.to_dict(),
        "scaler": SCALER.to_dict(),
        "inner": INNER,
        "class_names": list(CLASS_NAMES),
        "config": {"model": kind},
        "config_hash": "c" * 64,
        "data_hash": "d" * 64,
        "meta_epoch": 12,
        "val_loss": 0.75,
        "verify_windows": WINDOWS[:16],
        **extra,
    }
    return save_checkpoint(path, ckpt), model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """Each kind exported once: kind -> (checkpoint, onnx path, original torch model)."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for i, kind in enumerate(MODEL_KINDS):
        ckpt, model = make_checkpoint(root / f"{kind}.pt", kind, seed=i)
        out[kind] = (ckpt, export_onnx(ckpt, root / f"{kind}.onnx"), model)
    return out


def torch_outputs(model: torch.nn.Module, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference: the scaler in numpy (float64, as in training), then torch."""
    x = torch.from_numpy(SCALER.transform(windows).astype(np.float32))
    with torch.no_grad():
        logits = model(x)
    return logits.numpy(), torch.softmax(logits, dim=-1).numpy()


def test_constants_agree_with_the_training_side():
    assert MODEL_KINDS == models.MODEL_KINDS
    assert INNER_OPTIMIZERS == maml.OPTIMIZERS
    assert INNER_HEADS == maml.HEADS
    assert SCALER_KINDS == tasks.SCALERS


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_onnxruntime_matches_torch(exported, kind):
    _, path, model = exported[kind]
    m = OnnxModel(path)
    fresh = emg_windows(seed=99)  # not the verify windows
    logits, probs = m.infer(fresh)
    ref_logits, ref_probs = torch_outputs(model, fresh)
    assert probs.shape == (len(fresh), 3) and probs.dtype == np.float32
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(probs, ref_probs, rtol=0, atol=1e-5)
    for i in (0, 7):  # the daemon's case: one window at a time
        np.testing.assert_allclose(m.predict(fresh[i : i + 1]), ref_probs[i : i + 1], rtol=0, atol=1e-5)
    m.self_test()


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_graph_layout(exported, kind):
    _, path, model = exported[kind]
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["windows"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [SPEC.window, SPEC.channels]
    assert [o.name for o in proto.graph.output] == ["logits", "probabilities"]
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert proto.producer_name == "metaemg" and "relax, open, close" in proto.doc_string
    # every weight is an initializer named as in the state_dict, with the exact values
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(inits[name], value.numpy())
    np.testing.assert_array_equal(inits[SCALER_OFFSET], SCALER.offset.astype(np.float32))
    np.testing.assert_array_equal(inits[SCALER_SCALE], SCALER.scale.astype(np.float32))
    # the scaler is the first thing the input meets
    first = [n for n in proto.graph.node if "windows" in n.input]
    assert [(n.op_type, list(n.input)) for n in first] == [("Sub", ["windows", SCALER_OFFSET])]


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_metadata_round_trip(exported, kind):
    _, path, model = exported[kind]
    info = read_model_info(path)
    assert info.signal == SPEC
    assert (info.sample_rate, info.channels, info.window, info.stride) == (200.0, 8, 20, 5)
    assert info.class_names == CLASS_NAMES
    assert dict(info.inner) == INNER
    assert dict(info.model) == models.model_hparams(model)
    assert info.to_dict()["scaler"] == SCALER.to_dict()
    assert (info.config_hash, info.data_hash) == ("c" * 64, "d" * 64)
    assert (info.meta_epoch, info.val_loss, info.calibration) == (12, 0.75, None)
    created = datetime.fromisoformat(info.created)
    assert created.utcoffset() == timedelta(0)
    doc = info.to_dict()
    assert set(doc) == {
        "format",
        "sample_rate",
        "channels",
        "window",
        "stride",
        "signal",
        "class_names",
        "inner",
        "model",
        "scaler",
        "config_hash",
        "data_hash",
        "package_version",
        "created",
        "meta_epoch",
        "val_loss",
        "model_id",
        "calibration",
    }
    assert doc["format"] == FORMAT and doc["signal"] == SPEC.to_dict()
    proto = onnx.load(str(path))
    weights = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    assert info.model_id == compute_model_id(weights, doc)
    raw = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(raw["metaemg"]) == doc


def test_model_ids_differ_between_models(exported):
    ids = {read_model_info(path).model_id for _, path, _ in exported.values()}
    assert len(ids) == len(MODEL_KINDS)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_load_torch_from_onnx(exported, kind):
    _, path, model = exported[kind]
    rebuilt, info = load_torch_from_onnx(path)
    assert info.model_id == read_model_info(path).model_id and not rebuilt.training
    original = model.state_dict()
    assert list(rebuilt.state_dict()) == list(original)
    for name, value in rebuilt.state_dict().items():
        assert torch.equal(value, original[name]), name
    fresh = emg_windows(seed=5)
    with torch.no_grad():
        logits = rebuilt(torch.from_numpy(info.apply_scaler(fresh)))
    ort_logits, ort_probs = OnnxModel(path).infer(fresh)
    np.testing.assert_allclose(logits.numpy(), ort_logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(torch.softmax(logits, -1).numpy(), ort_probs, rtol=0, atol=1e-5)


def test_equal_weights_are_not_merged(exported):
    # A fresh transformer's LayerNorm weights are all equal; the TorchScript exporter would merge
    # them into one initializer unless told not to, and load_torch_from_onnx could not find them.
    _, path, model = exported["tf"]
    state = model.state_dict()
    assert torch.equal(state["layers.0.norm1.weight"], state["layers.1.norm2.weight"])
    names = {i.name for i in onnx.load(str(path)).graph.initializer}
    assert {"layers.0.norm1.weight", "layers.0.norm2.weight", "layers.1.norm1.weight", "norm.weight"} <= names


def test_export_is_deterministic_apart_from_created(exported, tmp_path):
    ckpt, path, _ = exported["cnn"]
    again = export_onnx(ckpt, tmp_path / "again.onnx")
    assert read_model_info(again).model_id == read_model_info(path).model_id


# ---------------------------------------------------------------------------- sources
def test_run_directory_uses_models_best(exported, tmp_path):
    ckpt, path, _ = exported["dnn"]
    (tmp_path / "run" / "models").mkdir(parents=True)
    (tmp_path / "run" / "models" / "best.pt").write_bytes(ckpt.read_bytes())
    out = export_onnx(tmp_path / "run", tmp_path / "from_run.onnx")
    assert out == tmp_path / "from_run.onnx"
    assert read_model_info(out).model_id == read_model_info(path).model_id


def test_run_directory_without_best(tmp_path):
    run = tmp_path / "run"
    (run / "models").mkdir(parents=True)
    with pytest.raises(ModelError, match=r"run: no checkpoint in this run directory \(looked for .*models/best\.pt\)$"):
        export_onnx(run, tmp_path / "m.onnx")
    (run / "models" / "last.pt").write_bytes(b"x")
    with pytest.raises(ModelError, match=r"looked for .*models/best\.pt; models/ has last\.pt\)"):
        export_onnx(run, tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="no such checkpoint file or run directory"):
        export_onnx(tmp_path / "nope", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_out_must_not_be_a_directory(exported, tmp_path):
    with pytest.raises(ModelError, match="is a directory"):
        export_onnx(exported["dnn"][0], tmp_path)


def test_checkpoint_without_verify_windows_is_refused(tmp_path):
    ckpt, _ = make_checkpoint(tmp_path / "c.pt", "dnn", verify_windows=None)
    with pytest.raises(ModelError, match="has no verify_windows"):
        export_onnx(ckpt, tmp_path / "m.onnx")


def test_verify_windows_of_wrong_shape_are_refused(tmp_path):
    ckpt, _ = make_checkpoint(tmp_path / "c.pt", "dnn", verify_windows=WINDOWS[:4, :10])
    with pytest.raises(ModelError, match=r"verify_windows must be \(n >= 1, 20, 8\), got shape \(4, 10, 8\)"):
        export_onnx(ckpt, tmp_path / "m.onnx")


def test_inconsistent_class_names_are_refused(tmp_path):
    ckpt, _ = make_checkpoint(tmp_path / "c.pt", "dnn", class_names=["relax", "close", "open"])
    with pytest.raises(ModelError, match=r"c\.pt: model metadata field 'class_names'"):
        export_onnx(ckpt, tmp_path / "m.onnx")


# ---------------------------------------------------------------------------- refusals keep the good file
def _no_temp_files(directory: Path) -> bool:
    return not any(p.name.endswith(".tmp") for p in directory.iterdir())


def test_nan_weights_refused_and_good_file_kept(exported, tmp_path):
    _, good, _ = exported["tcn"]
    out = tmp_path / "model.onnx"
    out.write_bytes(good.read_bytes())
    before = out.read_bytes()
    bad, _ = make_checkpoint(tmp_path / "nan.pt", "tcn", nan_weight=True)
    with pytest.raises(ModelError, match=r"nan\.pt: weight blocks\.0\.conv1\.weight contains NaN/Inf") as exc:
        export_onnx(bad, out)
    assert "\n" not in str(exc.value)
    assert out.read_bytes() == before
    assert _no_temp_files(tmp_path)


def test_tolerance_too_tight_refused_and_good_file_kept(exported, tmp_path):
    ckpt, good, model = exported["tf"]
    # Only meaningful if float32 onnxruntime really differs from torch on these windows
    # (it does for this transformer: different matmul and reduction order).
    ort_logits, _ort_probs = OnnxModel(good).infer(WINDOWS[:16])
    wrapper_in = (torch.from_numpy(WINDOWS[:16]) - torch.tensor(SCALER.offset, dtype=torch.float32)) / torch.tensor(
        SCALER.scale, dtype=torch.float32
    )
    with torch.no_grad():
        ref = model(wrapper_in).numpy()
    diff = float(np.abs(ort_logits - ref).max())
    if diff == 0.0:
        pytest.skip("onnxruntime matches torch bit for bit here; a zero tolerance cannot be exceeded")
    out = tmp_path / "model.onnx"
    out.write_bytes(good.read_bytes())
    before = out.read_bytes()
    with pytest.raises(ModelError, match=r"onnxruntime differs from torch by .* above the tolerance 0; .* not written"):
        export_onnx(ckpt, out, tolerance=0.0)
    assert out.read_bytes() == before
    assert _no_temp_files(tmp_path)
    assert export_onnx(ckpt, out, tolerance=1e-5) == out  # the same export passes at the default
    assert read_model_info(out).model_id == read_model_info(good).model_id


@pytest.mark.parametrize("tolerance", [-1.0, float("nan"), float("inf")])
def test_bad_tolerance(exported, tmp_path, tolerance):
    ckpt, _, _ = exported["dnn"]
    with pytest.raises(ConfigError, match="tolerance must be a finite number >= 0"):
        export_onnx(ckpt, tmp_path / "m.onnx", tolerance=tolerance)


# ---------------------------------------------------------------------------- calibration path
def test_export_model_after_adaptation(exported, tmp_path):
    """What the calibration tool does: rebuild from ONNX, change weights, export with
    calibration metadata; the new file has a new id and round-trips."""
    _, path, _ = exported["cnn"]
    model, info = load_torch_from_onnx(path)
    with torch.no_grad():
        model.head[2].bias += 0.5
    calibration = {"support_windows": 16, "steps": 3, "source_model_id": info.model_id}
    out = export_model(
        model, {**info.to_dict(), "calibration": calibration}, tmp_path / "cal.onnx", verify_windows=WINDOWS[16:32]
    )
    new = read_model_info(out)
    assert new.to_dict()["calibration"] == calibration and new.model_id != info.model_id
    rebuilt, _ = load_torch_from_onnx(out)
    assert torch.equal(rebuilt.head[2].bias, model.head[2].bias)


def test_load_torch_refuses_a_file_modified_after_export(exported, tmp_path):
    _, path, _ = exported["dnn"]
    proto = onnx.load(str(path))
    doc = json.loads(proto.metadata_props[0].value)
    doc["calibration"] = {"steps": 1}  # changed without a new model_id
    proto.metadata_props[0].value = json.dumps(doc)
    onnx.save(proto, tmp_path / "edited.onnx")
    with pytest.raises(ModelError, match=r"edited\.onnx: weights or metadata do not match model_id"):
        load_torch_from_onnx(tmp_path / "edited.onnx")


# ---------------------------------------------------------------------------- command line
def test_main_in_process(exported, tmp_path, capsys):
    ckpt, _, _ = exported["dnn"]
    assert main([str(ckpt), "--out", str(tmp_path / "m.onnx")]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'm.onnx'}: dnn model ")
    assert (tmp_path / "m.onnx").stat().st_mode & 0o777 == 0o644  # readable by the daemon's user
    assert main([str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.onnx")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'missing.pt'}: no such checkpoint file or run directory\n"


def test_cli_subprocess(exported, tmp_path):
    ckpt, _, _ = exported["tcn"]
    run_dir = tmp_path / "run"
    (run_dir / "models").mkdir(parents=True)
    (run_dir / "models" / "best.pt").write_bytes(ckpt.read_bytes())
    exe = str(BIN / "metaemg-export")
    ok = subprocess.run(
        [exe, str(run_dir), "--out", str(tmp_path / "m.onnx"), "--tolerance", "1e-4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "wrote" in ok.stdout and "tcn model" in ok.stdout
    assert read_model_info(tmp_path / "m.onnx").kind == "tcn"
    bad = subprocess.run(
        [exe, str(tmp_path / "nope"), "--out", str(tmp_path / "n.onnx")], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
    assert not (tmp_path / "n.onnx").exists()
