"""metalearn.models: shapes, deterministic init, hyper-parameters, validation, ONNX export."""

from __future__ import annotations

import io
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap

from metaemg.errors import ConfigError, MetaEMGError, ModelError
from metalearn.models import MODEL_KINDS, build_model, model_hparams

WINDOW, CHANNELS = 12, 8
TINY = {
    "dnn": {"fc_units": 16},
    "cnn": {"fc_units": 16, "filters": 8},
    "tcn": {"fc_units": 16, "filters": 8, "n_blocks": 2},
    "tf": {"fc_units": 16, "d_model": 16, "n_heads": 2, "n_layers": 2},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")

def tiny(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(kind, n_channels=CHANNELS, window=WINDOW, **TINY[kind])


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_logits_shape_and_dtype(kind: str) -> None:
    model = tiny(kind)
    out = model(torch.randn(5, WINDOW, CHANNELS))
    assert out.shape == (5, 3) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_default_sizes_build_for_real_windows(kind: str) -> None:
    torch.manual_seed(0)
    model = build_model(kind, n_channels=8, window=50, n_classes=3)
    assert model(torch.randn(2, 50, 8)).shape == (2, 3)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_init_is_deterministic_from_seed(kind: str) -> None:
    a, b, c = tiny(kind, seed=1), tiny(kind, seed=1), tiny(kind, seed=2)
    for (name, pa), (_, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_no_buffers_batchnorm_or_dropout(kind: str) -> None:
    model = tiny(kind)
    assert list(model.buffers()) == []
    banned = (nn.modules.batchnorm._BatchNorm, nn.Dropout)
    assert not any(isinstance(m, banned) for m in model.modules())
    x = torch.randn(4, WINDOW, CHANNELS)
    assert torch.equal(model.train()(x), model.eval()(x))


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_hparams_rebuild_the_same_architecture(kind: str) -> None:
    model = tiny(kind)
    hp = model_hparams(model)
    assert hp["kind"] == kind and hp["window"] == WINDOW and hp["n_channels"] == CHANNELS and hp["n_classes"] == 3
    assert json.loads(json.dumps(hp)) == hp  # plain values, fit for ONNX metadata
    hp["window"] = -1  # a copy: the model's own dict is untouched
    assert model.hparams["window"] == WINDOW
    torch.manual_seed(0)
    rebuilt = build_model(**model_hparams(model))
    assert rebuilt.load_state_dict(model.state_dict()) is not None
    x = torch.randn(3, WINDOW, CHANNELS)
    assert torch.equal(rebuilt(x), model(x))


def test_unknown_kind_names_the_allowed_four() -> None:
    with pytest.raises(ConfigError) as err:
        build_model("lstm", n_channels=8, window=50)
    assert all(kind in str(err.value) for kind in MODEL_KINDS)
    assert isinstance(err.value, MetaEMGError) and isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    ("kind", "hp"),
    [
        ("dnn", {"filters": 8}),  # belongs to cnn/tcn
        ("cnn", {"fc_units": 0}),
        ("cnn", {"kernel_size": 4}),  # even kernel would change the window length
        ("tcn", {"n_blocks": -1}),
        ("tf", {"d_model": 10, "n_heads": 4}),
        ("tf", {"n_layers": 1.5}),
        ("dnn", {"n_hidden": True}),
        ("dnn", {"window": 0}),
    ],
)
def test_bad_hyper_parameters_raise_config_error(kind: str, hp: dict) -> None:
    args = {"n_channels": 8, "window": 50, **hp}
    with pytest.raises(ConfigError):
        build_model(kind, **args)


def test_model_hparams_refuses_foreign_modules() -> None:
    with pytest.raises(ModelError):
        model_hparams(nn.Linear(2, 3))


@pytest.mark.parametrize("kind", MODEL_KINDS)
@pytest.mark.parametrize("shape", [(4, WINDOW + 1, CHANNELS), (4, WINDOW, CHANNELS - 1), (WINDOW, CHANNELS)])
def test_wrong_input_shape_raises_model_error(kind: str, shape: tuple) -> None:
    with pytest.raises(ModelError, match="expects input"):
        tiny(kind)(torch.randn(*shape))


def test_tcn_is_causal() -> None:
    model = tiny("tcn")
    x = torch.randn(2, WINDOW, CHANNELS)
    y = x.clone()
    y[:, 7:] += torch.randn(2, WINDOW - 7, CHANNELS)
    hx, hy = model.blocks(x.transpose(1, 2)), model.blocks(y.transpose(1, 2))
    assert torch.equal(hx[:, :, :7], hy[:, :, :7])
    assert not torch.allclose(hx[:, :, 7:], hy[:, :, 7:])


def test_transformer_layer_norm_matches_torch() -> None:
    model = tiny("tf")
    norm = model.norm
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 5, 16) * 3 + 1
    expected = nn.functional.layer_norm(x, (16,), norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_functional_call_under_vmap_matches_module(kind: str) -> None:
    model = tiny(kind)
    params = {k: v.detach() for k, v in model.named_parameters()}
    xs = torch.randn(3, 4, WINDOW, CHANNELS)
    out = vmap(lambda x: functional_call(model, params, (x,)))(xs)
    torch.testing.assert_close(out, torch.stack([model(x) for x in xs]), rtol=1e-5, atol=1e-6)


def export_onnx(model: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.onnx.export(
        model.eval(),
        (torch.randn(2, WINDOW, CHANNELS),),
        buf,
        dynamo=False,
        opset_version=17,
        input_names=["emg"],
        output_names=["logits"],
        dynamic_axes={"emg": {0: "batch"}, "logits": {0: "batch"}},
    )
    return buf.getvalue()


# torch 2.13's default ONNX exporter (dynamo) needs onnxscript, which is not installed; the
# TorchScript exporter works but announces its deprecation: only those two warnings are let through.
@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning")
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_onnx_export_matches_torch(kind: str) -> None:
    model = tiny(kind)
    session = ort.InferenceSession(export_onnx(model), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        x = torch.randn(batch, WINDOW, CHANNELS)
        got = session.run(None, {"emg": x.numpy()})[0]
        with torch.no_grad():
            want = model(x).numpy()
        assert got.shape == (batch, 3)
        assert np.abs(got - want).max() <= 1e-5

