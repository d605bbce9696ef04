"""metaemg.modelfile, torch-free: real onnxruntime sessions on small hand-built ONNX graphs
(mean over the window, one weight matrix, softmax), so the daemon's side is tested on its own."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from metaemg.errors import ModelError
from metaemg.modelfile import (
    FORMAT,
    ModelInfo,
    OnnxModel,
    compute_model_id,
    read_model_info,
)
from metaemg.signal import SignalSpec

REPO = Path(__file__).resolve().parents[1]
WINDOW, CHANNELS = 20, 8
W = np.linspace(-1.0, 1.0, CHANNELS * 3, dtype=np.float32).reshape(CHANNELS, 3)


def metadata(**overrides) -> dict:
    spec = SignalSpec.myo(window=WINDOW, stride=5)
    meta = {
        "format": FORMAT,
        "sample_rate": spec.sample_rate,
        "channels": spec.channels,
        "window": spec.window,
        "stride": spec.stride,
        "signal": spec.to_dict(),
        "class_names": ["relax", "open", "close"],
        "inner": {"optimizer": "sgd", "steps": 5, "lr": 0.01, "first_order": True},
        "model": {
            "kind": "dnn",
            "n_channels": CHANNELS,
            "window": WINDOW,
            "n_classes": 3,
            "fc_units": 4,
            "n_hidden": 1,
        },
        "scaler": {"kind": "standard", "offset": [0.5] * CHANNELS, "scale": [2.0] * CHANNELS},
        "config_hash": "ab" * 32,
        "data_hash": None,
        "package_version": "0.1.0",
        "created": "2026-01-02T03:04:05+00:00",
        "meta_epoch": 7,
        "val_loss": 0.25,
        "model_id": "0123456789ab",
        "calibration": None,
    }
    meta.update(overrides)
    return meta


def write_model(
    path: Path,
    meta: dict | None = None,
    *,
    weight: np.ndarray = W,
    batch: str | int = "batch",
    props: dict | None = None,
    real_id: bool = True,
) -> Path:
    """windows (batch, 20, 8) -> mean over time @ weight -> logits, softmax -> probabilities;
    ``model_id`` the hash of the weight and metadata (as export writes it) unless ``real_id`` is false."""
    nodes = [
        helper.make_node("ReduceMean", ["windows"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info("windows", TensorProto.FLOAT, [batch, WINDOW, CHANNELS])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, 3]),
        ],
        [numpy_helper.from_array(weight.astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if props is None:
        meta = metadata() if meta is None else meta
        if real_id:
            meta = {**meta, "model_id": compute_model_id({"w": weight.astype(np.float32)}, meta)}
        props = {"metaemg": json.dumps(meta)}
    helper.set_model_props(model, props)
    onnx.save(model, path)
    return path


def expected_probs(x: np.ndarray, weight: np.ndarray = W) -> np.ndarray:
    logits = x.astype(np.float64).mean(axis=1) @ weight.astype(np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    return write_model(tmp_path / "m.onnx")


# ---------------------------------------------------------------------------- inference
def test_predict_single_and_batch(model_file):
    m = OnnxModel(model_file)
    rng = np.random.default_rng(1)
    batch = rng.uniform(0, 1, (5, WINDOW, CHANNELS))  # float64: converted
    probs = m.predict(batch)
    assert probs.dtype == np.float32 and probs.shape == (5, 3)
    np.testing.assert_allclose(probs, expected_probs(batch), atol=1e-6)
    for i in range(5):  # one window at a time through the reused input buffer
        single = batch[i : i + 1].copy()
        np.testing.assert_allclose(m.predict(single), expected_probs(batch[i : i + 1]), atol=1e-6)
        np.testing.assert_array_equal(single, batch[i : i + 1])  # the caller's array is not touched
    logits, probs2 = m.infer(batch.astype(np.float32))
    np.testing.assert_allclose(probs2, probs, atol=1e-7)
    assert logits.shape == (5, 3)


@pytest.mark.parametrize(
    "shape",
    [
        (WINDOW, CHANNELS),
        (1, WINDOW - 1, CHANNELS),
        (1, WINDOW, CHANNELS - 1),
        (0, WINDOW, CHANNELS),
        (1, 1, WINDOW, CHANNELS),
    ],
)
def test_predict_rejects_wrong_shape(model_file, shape):
    m = OnnxModel(model_file)
    with pytest.raises(ModelError, match=rf"expects windows \(n, {WINDOW}, {CHANNELS}\).*got shape"):
        m.predict(np.zeros(shape, np.float32))


def test_predict_refuses_nan_output(model_file):
    m = OnnxModel(model_file)
    x = np.zeros((1, WINDOW, CHANNELS), np.float32)
    x[0, 3, 2] = np.nan
    with pytest.raises(ModelError, match="not finite"):
        m.predict(x)


def test_session_is_single_threaded_by_default(model_file):
    opts = OnnxModel(model_file)._session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (1, 1)
    assert OnnxModel(model_file, intra_op_threads=2)._session.get_session_options().intra_op_num_threads == 2


# ---------------------------------------------------------------------------- checks
def test_check_stream(model_file):
    m = OnnxModel(model_file)
    m.check_stream(200.0, 8)
    m.check_stream(209.0, 8)  # 4.5 % off: within the tolerance
    m.check_stream(191.0, 8)
    with pytest.raises(ModelError, match=r"m\.onnx: model expects 200 Hz \(within 5%\), the stream runs at 211 Hz"):
        m.check_stream(211.0, 8)
    with pytest.raises(ModelError, match="the stream runs at 100 Hz"):
        m.check_stream(100.0, 8)
    with pytest.raises(ModelError, match=r"m\.onnx: model expects 8 channels, the stream has 4"):
        m.check_stream(200.0, 4)
    with pytest.raises(ModelError, match="stream runs at nan Hz"):
        m.check_stream(float("nan"), 8)


def test_self_test_passes_on_a_good_model(model_file):
    OnnxModel(model_file).self_test()


def test_self_test_catches_nan_weights(tmp_path):
    bad = W.copy()
    bad[2, 1] = np.nan
    m = OnnxModel(write_model(tmp_path / "nan.onnx", weight=bad))
    with pytest.raises(ModelError, match=r"nan\.onnx: output 'logits' is not finite"):
        m.self_test()


def test_fixed_batch_size_refused(tmp_path):
    with pytest.raises(ModelError, match="dynamic batch"):
        OnnxModel(write_model(tmp_path / "fixed.onnx", batch=1))


# ---------------------------------------------------------------------------- unreadable files
@pytest.mark.parametrize("content", [b"", b"\x00\x01 this is not a model" * 20, b"\x08\x07garbage"])
def test_garbage_file(tmp_path, content):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(content)
    for opener in (OnnxModel, read_model_info):
        with pytest.raises(ModelError, match=r"garbage\.onnx: not a valid ONNX model \(") as exc:
            opener(path)
        assert "\n" not in str(exc.value)


def test_missing_file(tmp_path):
    for opener in (OnnxModel, read_model_info):
        with pytest.raises(ModelError, match=r"nothere\.onnx: model file not found"):
            opener(tmp_path / "nothere.onnx")


def test_onnx_without_metaemg_metadata(tmp_path):
    path = write_model(tmp_path / "plain.onnx", props={"author": "someone"})
    for opener in (OnnxModel, read_model_info):
        with pytest.raises(ModelError, match=r"plain\.onnx: not a MetaEMG model: no 'metaemg' metadata"):
            opener(path)


def test_metadata_not_json(tmp_path):
    path = write_model(tmp_path / "j.onnx", props={"metaemg": "{not json"})
    with pytest.raises(ModelError, match=r"j\.onnx: 'metaemg' metadata is not valid JSON"):
        read_model_info(path)


# ---------------------------------------------------------------------------- metadata
def test_read_model_info_round_trip(model_file):
    info = read_model_info(model_file)
    assert info.path == str(model_file)
    assert info.to_dict() == {**metadata(), "model_id": compute_model_id({"w": W}, metadata())}
    assert info.signal == SignalSpec.myo(window=WINDOW, stride=5)
    assert (info.sample_rate, info.channels, info.window, info.stride) == (200.0, 8, WINDOW, 5)
    assert info.class_names == ("relax", "open", "close") and info.n_classes == 3
    assert dict(info.inner) == {"optimizer": "sgd", "steps": 5, "lr": 0.01, "first_order": True}
    assert info.kind == "dnn" and info.model["n_hidden"] == 1
    assert info.scaler["offset"] == (0.5,) * 8
    assert (info.meta_epoch, info.val_loss, info.calibration) == (7, 0.25, None)
    assert (info.config_hash, info.data_hash, info.package_version) == ("ab" * 32, None, "0.1.0")
    assert OnnxModel(model_file).info.to_dict() == info.to_dict()


def test_info_is_read_only(model_file):
    info = read_model_info(model_file)
    with pytest.raises(TypeError):
        info.model["kind"] = "tf"  # type: ignore[index]
    with pytest.raises(AttributeError):
        info.model_id = "ffffffffffff"  # type: ignore[misc]
    info.to_dict()["model"]["kind"] = "tf"  # a copy
    assert info.kind == "dnn"


def test_calibration_is_kept(tmp_path):
    cal = {"support_windows": 40, "adapted": "2026-01-03T00:00:00+00:00", "losses": [0.9, 0.4]}
    info = read_model_info(write_model(tmp_path / "c.onnx", metadata(calibration=cal)))
    assert info.calibration["losses"] == (0.9, 0.4)
    assert info.to_dict()["calibration"] == cal


def test_apply_scaler_is_float32_affine(model_file):
    info = read_model_info(model_file)
    x = np.random.default_rng(0).uniform(0, 1, (3, WINDOW, CHANNELS))
    y = info.apply_scaler(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, (x.astype(np.float32) - np.float32(0.5)) / np.float32(2.0))


def _del(key):
    def f(m):
        del m[key]

    return f


def _set(path, value):
    def f(m):
        d = m
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value

    return f


BAD_METADATA = [
    (_set(["format"], "metaemg-model/2"), "field 'format'"),
    (_del("sample_rate"), "no field 'sample_rate'"),
    (_del("calibration"), "no field 'calibration'"),
    (_set(["sample_rate"], 100.0), "field 'sample_rate' is 100.0, but the signal spec says 200.0"),
    (_set(["channels"], 4), "field 'channels'"),
    (_set(["window"], 50), "field 'window'"),
    (_set(["stride"], "5"), "field 'stride'"),
    (_set(["signal", "sample_rate"], -1), "field 'signal' is invalid"),
    (_set(["signal", "bogus"], 1), "field 'signal' is invalid"),
    (_set(["class_names"], ["relax", "close", "open"]), "field 'class_names'"),
    (_set(["class_names"], ["relax", "open"]), "field 'class_names'"),
    (_set(["inner", "lr"], 0), "field 'inner' lr"),
    (_set(["inner", "steps"], -1), "field 'inner' steps"),
    (_set(["inner", "optimizer"], "lbfgs"), "field 'inner' optimizer"),
    (_set(["inner", "first_order"], 1), "field 'inner' first_order"),
    (_set(["inner", "batch_size"], 0), "field 'inner' batch_size"),
    (_set(["inner", "momentum"], 0.9), "field 'inner' must be an object"),
    (_del("inner"), "no field 'inner'"),
    (_set(["model", "kind"], "rnn"), "field 'model'"),
    (_set(["model", "n_channels"], 4), "field 'model' n_channels"),
    (_set(["model", "window"], 21), "field 'model' window"),
    (_set(["model", "n_hidden"], 0), "field 'model' hyper-parameter n_hidden"),
    (_set(["scaler", "scale"], [1.0] * 7), "field 'scaler' scale"),
    (_set(["scaler", "scale"], [1.0] * 7 + [0.0]), "field 'scaler' scale must not contain 0"),
    (_set(["scaler", "offset"], [1.0] * 7 + [None]), "field 'scaler' offset"),
    (_set(["scaler", "kind"], "robust"), "field 'scaler'"),
    (_set(["model_id"], "XYZ"), "field 'model_id'"),
    (_set(["created"], "yesterday"), "field 'created'"),
    (_set(["package_version"], 1), "field 'package_version'"),
    (_set(["data_hash"], 5), "field 'data_hash'"),
    (_set(["meta_epoch"], -1), "field 'meta_epoch'"),
    (_set(["val_loss"], "low"), "field 'val_loss'"),
    (_set(["calibration"], [1, 2]), "field 'calibration'"),
    (_set(["population"], {"means": [[1.0], [2.0]], "max_rotation": 1}), "field 'population' means"),
    (_set(["population"], {"means": [[1.0], [2.0], [3.0]], "max_rotation": -1}), "field 'population' max_rotation"),
]


@pytest.mark.parametrize(("mutate", "message"), BAD_METADATA, ids=[m for _, m in BAD_METADATA])
def test_invalid_metadata_names_field_and_file(tmp_path, mutate, message):
    meta = copy.deepcopy(metadata())
    mutate(meta)
    path = write_model(tmp_path / "bad.onnx", meta, real_id=False)  # the metadata exactly as mutated
    with pytest.raises(ModelError) as exc:
        read_model_info(path)
    text = str(exc.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text
    with pytest.raises(ModelError, match="^" + re.escape("model metadata")):
        ModelInfo.from_dict(meta)  # without a file: no path prefix


def test_metadata_must_be_an_object(tmp_path):
    with pytest.raises(ModelError, match="must be a JSON object, got list"):
        read_model_info(write_model(tmp_path / "l.onnx", props={"metaemg": "[1, 2]"}))


def test_unknown_extra_fields_are_tolerated(tmp_path):
    info = read_model_info(write_model(tmp_path / "x.onnx", metadata(notes="from a newer exporter")))
    assert info.to_dict()["notes"] == "from a newer exporter"


# ---------------------------------------------------------------------------- model id
def test_compute_model_id():
    weights = {"a": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}
    meta = metadata()
    ref = compute_model_id(weights, meta)
    assert len(ref) == 12 and int(ref, 16) >= 0
    assert compute_model_id(dict(reversed(weights.items())), meta) == ref
    assert compute_model_id(weights, metadata(created="2030-01-01T00:00:00+00:00", model_id="ffffffffffff")) == ref
    changed = {**weights, "b": np.array([0, 0, 1e-7], np.float32)}
    assert compute_model_id(changed, meta) != ref
    assert compute_model_id(weights, metadata(calibration={"steps": 3})) != ref
    assert compute_model_id({**weights, "a": weights["a"].reshape(3, 2)}, meta) != ref


# ---------------------------------------------------------------------------- torch-free
def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)


def test_importing_modelfile_does_not_import_torch():
    proc = _python("import metaemg.modelfile, sys; assert 'torch' not in sys.modules, 'torch imported'")
    assert proc.returncode == 0, proc.stderr


def test_running_a_model_does_not_import_torch(model_file):
    proc = _python(
        "import sys; from metaemg.modelfile import OnnxModel; import numpy as np\n"
        f"m = OnnxModel({str(model_file)!r}); m.self_test(); m.predict(np.zeros((1, {WINDOW}, {CHANNELS})))\n"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    assert proc.returncode == 0, proc.stderr


def test_read_model_info_without_onnxruntime_uses_onnx(model_file):
    proc = _python(
        "import sys; sys.modules['onnxruntime'] = None  # as if not installed\n"
        "from metaemg.errors import MissingDependencyError\n"
        "from metaemg.modelfile import OnnxModel, read_model_info\n"
        f"print(read_model_info({str(model_file)!r}).model_id)\n"
        "try:\n"
        f"    OnnxModel({str(model_file)!r})\n"
        "except MissingDependencyError as exc:\n"
        "    print('missing:', exc)\n"
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == read_model_info(model_file).model_id
    assert lines[1].startswith("missing: onnxruntime is needed")


def test_a_model_whose_weights_changed_after_export_is_refused(tmp_path):
    """issue 14: a reloaded file with other weights kept reporting the original model_id. Every
    OnnxModel (the daemon, eval, calibration) now hashes the bytes it runs against the id."""
    good = write_model(tmp_path / "good.onnx")
    meta = read_model_info(good).to_dict()
    tampered = write_model(tmp_path / "tampered.onnx", meta, weight=W * 2, real_id=False)  # same id, other weights
    assert read_model_info(tampered).model_id == meta["model_id"]  # the metadata alone cannot tell
    with pytest.raises(
        ModelError,
        match=r"tampered.onnx: weights or metadata do not match model_id "
        rf"{meta['model_id']} \(changed after export\?\); refusing it",
    ):
        OnnxModel(tampered)
    OnnxModel(good)
