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
    "feat": {},
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
    for (name, pa), (_, pb), (_, _pc) in zip(
        a.named_parameters(), b.named_parameters(), c.named_parameters(), strict=True
    ):
        assert torch.equal(pa, pb), name
    if kind == "feat":  # fitted, not drawn: a zero head (equal probabilities) whatever the seed
        assert all(not p.any() for p in c.parameters())
        return
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True))


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_no_buffers_batchnorm_or_dropout(kind: str) -> None:
    """Buffers only where fitted statistics live (feat), never running statistics."""
    model = tiny(kind)
    expected = ["feat_offset", "feat_scale", "whiten", "class_means", "precision", "reject_distance"]
    expected += ["other_means", "other_log_prior"]
    expected = expected if kind == "feat" else []
    assert [name for name, _ in model.named_buffers()] == expected
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


# ---------------------------------------------------------------- feat: features, closed-form head, whitening
def test_feat_features_are_log_mav_and_log_wl_at_three_scales_laid_out_by_channel() -> None:
    from metalearn.models import FEAT_SCALES, feature_count

    model = build_model("feat", n_channels=3, window=10)
    x = torch.zeros(1, 10, 3)
    x[0, :, 0] = torch.tensor([1.0, -1.0] * 5)  # |x| = 1, |diff| = 2 everywhere
    x[0, 8:, 1] = 3.0  # only the newest two samples: seen by the short scales
    f = model.features(x).reshape(2, len(FEAT_SCALES), 3)  # (mav | wl, scale, channel)
    assert f.shape[1] * 6 == feature_count(10, 3) and feature_count(10, 3) == 18
    eps = 1e-4
    torch.testing.assert_close(f[0, :, 0], torch.full((3,), float(np.log(1 + eps))))
    torch.testing.assert_close(f[1, :, 0], torch.full((3,), float(np.log(2 + eps))))
    # channel 1: mean |x| over the last 10, 5 and 2 samples
    torch.testing.assert_close(f[0, :, 1], torch.log(torch.tensor([0.6, 1.2, 3.0]) + eps))
    torch.testing.assert_close(f[0, :, 2], torch.full((3,), float(np.log(eps))))
    rolled = model.features(torch.roll(x, 1, dims=2)).reshape(2, 3, 3)
    torch.testing.assert_close(rolled, torch.roll(f, 1, dims=2))  # rotating the armband rolls the last axis


def test_lda_matches_the_textbook_formula() -> None:
    from metalearn.models import lda

    rng = np.random.default_rng(0)
    means = rng.normal(0, 2, (3, 4))
    y = np.repeat(np.arange(3), 30)
    z = means[y] + rng.normal(0, 1, (90, 4))
    w, b = lda(torch.from_numpy(z), torch.from_numpy(y), 3, 0.25)
    mu = np.stack([z[y == k].mean(0) for k in range(3)])
    r = z - mu[y]
    cov = r.T @ r / (90 - 3)
    cov = 0.75 * cov + 0.25 * np.eye(4) * np.trace(cov) / 4
    inv = np.linalg.inv(cov)
    np.testing.assert_allclose(w.numpy(), mu @ inv, rtol=1e-10)
    np.testing.assert_allclose(b.numpy(), -0.5 * np.einsum("kd,de,ke->k", mu, inv, mu), rtol=1e-10)
    # a class without windows is never decided
    w, b = lda(torch.from_numpy(z[y < 2]), torch.from_numpy(y[y < 2]), 3, 0.25)
    assert b[2] == -1e4


def test_feat_is_safe_until_fitted_then_separates_its_clip() -> None:
    torch.manual_seed(0)
    model = build_model("feat", n_channels=8, window=20)
    gains = torch.tensor([[0.1] * 8, [1.0] * 4 + [0.1] * 4, [0.1] * 4 + [1.0] * 4])  # relax, open, close
    y = torch.arange(3).repeat_interleave(40)
    x = torch.randn(120, 20, 8) * gains[y][:, None, :]
    probs = torch.softmax(model(x), dim=1)
    torch.testing.assert_close(probs, torch.full_like(probs, 1 / 3))  # below any threshold: no motion
    model.fit_head(x, y, 0.3)
    f = model.features(x)
    torch.testing.assert_close(model.feat_offset, f.mean(0))
    torch.testing.assert_close(model.feat_scale, f.std(0, unbiased=False))
    fresh = torch.randn(120, 20, 8) * gains[y][:, None, :]
    assert (model(fresh).argmax(1) == y).float().mean() > 0.95


def test_feat_whitening_is_the_inverse_root_of_the_pooled_within_class_covariance() -> None:
    torch.manual_seed(0)
    model = build_model("feat", n_channels=4, window=10)
    tasks = [(torch.randn(60, 10, 4) * (1 + k), torch.arange(3).repeat(20)) for k in range(3)]
    model.fit_whitening(tasks, rotate=True)
    resid = []
    for x, y in tasks:
        f = model.features(x).double()
        f = (f - f.mean(0)) / f.std(0, unbiased=False)
        mu = torch.stack([f[y == k].mean(0) for k in range(3)])
        r = f - mu[y]
        resid += [torch.roll(r.reshape(60, -1, 4), s, dims=2).reshape(60, -1) for s in range(4)]
    r = torch.cat(resid)
    cov = r.T @ r / len(r)
    w = model.whiten.double()
    torch.testing.assert_close(
        w @ (cov + 1e-3 * torch.eye(len(cov), dtype=torch.float64)) @ w.T,
        torch.eye(len(cov), dtype=torch.float64),
        atol=1e-4,
        rtol=0,
    )
    # averaged over rotations: rotating every task's armband changes nothing
    rotated = build_model("feat", n_channels=4, window=10)
    rotated.fit_whitening([(torch.roll(x, 1, dims=2), y) for x, y in tasks], rotate=True)
    torch.testing.assert_close(rotated.whiten, model.whiten, atol=1e-5, rtol=0)


def test_adapt_model_fits_the_head_then_steps_and_leaves_the_model_alone() -> None:
    from metalearn.maml import adapt_model

    torch.manual_seed(0)
    model = build_model("feat", n_channels=8, window=20)
    x, y = torch.randn(60, 20, 8), torch.arange(3).repeat(20)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inner = {"optimizer": "adam", "steps": 0, "lr": 0.01, "first_order": True, "head": "lda", "shrinkage": 0.3}
    fitted = adapt_model(model, x, y, inner)
    reference = build_model("feat", n_channels=8, window=20)
    reference.fit_head(x, y, 0.3)
    for k, v in reference.state_dict().items():
        torch.testing.assert_close(fitted.state_dict()[k], v)
    stepped = adapt_model(model, x, y, {**inner, "steps": 3})
    assert not torch.equal(stepped.head.weight, fitted.head.weight)
    torch.testing.assert_close(stepped.feat_offset, fitted.feat_offset)  # steps move the head only
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="inner head 'lda' needs a model with a closed-form head"):
        adapt_model(tiny("dnn"), torch.randn(6, WINDOW, CHANNELS), torch.arange(3).repeat(2), inner)
    with pytest.raises(ConfigError, match="inner head must be null or one of lda"):
        adapt_model(model, x, y, {**inner, "head": "svm"})


def _clip(rng: np.random.Generator, n: int, gains: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` windows of each intent: noise with that intent's gain per channel."""
    x = np.concatenate([rng.standard_normal((n, WINDOW, CHANNELS)) * g for g in gains])
    y = np.repeat(np.arange(len(gains)), n)
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y)


def test_feat_decides_relax_for_a_movement_unlike_the_clips_open_and_close():
    """The novelty rejection: a window whose best intent is open, but which lies far from every
    open window of the clip (another muscle pattern: a wrist movement), is decided relax; the
    clip's own intents are not, and with ``reject`` 0 nothing is rejected."""
    rng = np.random.default_rng(0)
    relax, opening, closing = np.full(CHANNELS, 0.2), np.full(CHANNELS, 0.2), np.full(CHANNELS, 0.2)
    opening[:3], closing[4:7] = 3.0, 3.0
    x, y = _clip(rng, 200, [relax, opening, closing])
    wrist = opening.copy()
    wrist[3] = 40.0  # open's muscles and, far stronger, one that open never used
    novel, _ = _clip(rng, 50, [wrist])
    fresh, fresh_y = _clip(rng, 50, [relax, opening, closing])
    decided = {}
    for reject in (0.0, 3.0):
        model = tiny("feat").eval()
        model.fit_head(x, y, shrinkage=0.3, reject=reject)
        assert float(model.reject_distance) == reject * model.whiten.shape[0]
        with torch.no_grad():
            decided[reject] = (torch.softmax(model(novel), -1), model(fresh).argmax(1))
    probs_off, fresh_off = decided[0.0]
    probs_on, fresh_on = decided[3.0]
    assert (probs_off.argmax(1) == 1).float().mean() > 0.9  # without it: open
    assert (probs_on.argmax(1) == 0).all() and torch.allclose(probs_on[:, 0], torch.ones(50))
    assert torch.equal(fresh_on, fresh_off) and (fresh_on == fresh_y).float().mean() > 0.95


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning")
def test_feat_novelty_rejection_runs_the_same_in_onnxruntime():
    rng = np.random.default_rng(1)
    gains = [np.full(CHANNELS, 0.2), np.r_[np.full(3, 3.0), np.full(5, 0.2)], np.r_[np.full(5, 0.2), np.full(3, 3.0)]]
    x, y = _clip(rng, 100, gains)
    model = tiny("feat").eval()
    model.fit_head(x, y, shrinkage=0.3, reject=3.0)
    session = ort.InferenceSession(export_onnx(model), providers=["CPUExecutionProvider"])
    probe = torch.from_numpy(
        (rng.standard_normal((64, WINDOW, CHANNELS)) * rng.uniform(0.1, 20, CHANNELS)).astype(np.float32)
    )
    got = session.run(None, {"emg": probe.numpy()})[0]
    with torch.no_grad():
        want = model(probe).numpy()
    assert np.array_equal(got.argmax(1), want.argmax(1)) and np.abs(got - want).max() <= 1e-3
    assert (want[:, 1:] == -30.0).all(axis=1).any()  # some probes were rejected


def test_feat_decides_relax_for_a_movement_like_other_peoples_non_intent_movements():
    """The non-intent classes: a window nearer (in the LDA's terms, with the prior) to other
    people's wrist movements than to the clip's intents is decided relax, even where the novelty
    rejection would let it through; with their prior off nothing changes."""
    rng = np.random.default_rng(2)
    relax, opening, closing = np.full(CHANNELS, 0.2), np.full(CHANNELS, 0.2), np.full(CHANNELS, 0.2)
    opening[:3], closing[4:7] = 3.0, 3.0
    wrist = opening.copy()
    wrist[3] = 6.0  # like open, plus a muscle open does not use
    x, y = _clip(rng, 200, [relax, opening, closing])
    model = tiny("feat").eval()
    # "other people": the same muscles; their wrist movement as all four non-intent movements
    others, _ = _clip(rng, 100, [wrist])
    codes = torch.from_numpy(np.repeat(np.arange(1, 5), 25))
    model.fit_non_intent([(x, others, codes)], log_prior=-18.0)
    probe, _ = _clip(rng, 50, [wrist])
    fresh, fresh_y = _clip(rng, 50, [relax, opening, closing])
    decided = {}
    for prior in (-18.0, 0.0):
        model.other_log_prior.fill_(prior)
        model.fit_head(x, y, shrinkage=0.3, reject=100.0)  # the novelty rejection all but off
        with torch.no_grad():
            decided[prior] = (model(probe).argmax(1), model(fresh).argmax(1))
    assert (decided[0.0][0] == 1).float().mean() > 0.9  # prior off: open
    assert (decided[-18.0][0] == 0).float().mean() > 0.9  # on: relax
    assert (decided[-18.0][1] == fresh_y).float().mean() > 0.95
