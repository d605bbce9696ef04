"""metalearn.maml against an oracle (higher 0.2.1), against its own definitions, and across
execution paths (vmap / loop / two torchrun-like processes)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import higher
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F

from metaemg.errors import ConfigError, DataError
from metalearn.maml import (
    ADAM_BETAS,
    ADAM_EPS,
    InnerLoop,
    OuterLoop,
    adapt,
    allreduce_meta_gradients,
    default_device,
    meta_eval,
    meta_gradient,
    meta_loss,
    meta_step,
    meta_step_stats,
    model_params,
    same_shapes,
    shard_tasks,
    torch_threads,
)
from metalearn.models import MODEL_KINDS, build_model

WINDOW, CHANNELS = 6, 3
TINY = {
    "dnn": {"fc_units": 8},
    "cnn": {"fc_units": 8, "filters": 4},
    "tcn": {"fc_units": 8, "filters": 4, "n_blocks": 2},
    "tf": {"fc_units": 8, "d_model": 8, "n_heads": 2, "n_layers": 1},
    "feat": {},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(kind: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(kind, n_channels=CHANNELS, window=WINDOW, **TINY[kind]).to(dtype)


def make_tasks(n: int, *, n_support: int | list[int] = 10, n_query: int = 7, dtype=torch.float64, seed: int = 1):
    """Random tasks whose labels depend on the data (so adaptation has something to learn)."""
    gen = torch.Generator().manual_seed(seed)
    sizes = n_support if isinstance(n_support, list) else [n_support] * n

    def part(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(size, WINDOW, CHANNELS, generator=gen, dtype=dtype)
        return x, x.mean(dim=(1,)).argmax(dim=1) % 3

    return [(*part(sizes[i]), *part(n_query)) for i in range(n)]


def torch_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    return torch.optim.Adam(params, lr=lr, foreach=False)


def higher_meta_gradient(
    model: nn.Module, tasks, *, steps: int, lr: float, optimizer: str, batch: int | None = None
) -> dict:
    """Second-order MAML the research-code way: higher, tasks one by one, mean query loss.

    higher 0.2.1's DifferentiableAdam uses the pre-1.0 torch Adam formula, which adds eps to
    sqrt(v) before bias correction; torch.optim.Adam adds it after. Giving higher
    eps * sqrt(1 - beta2**t) at step t makes the two updates identical. With ``batch``, each
    step is an epoch of consecutive mini-batches (the research code's DataLoader loop).
    """
    model.zero_grad(set_to_none=True)
    for xs, ys, xq, yq in tasks:
        opt = torch_optimizer(optimizer, model.parameters(), lr)
        with higher.innerloop_ctx(model, opt, copy_initial_weights=False, track_higher_grads=True) as (fmodel, diffopt):
            b = batch or len(xs)
            spans = [(lo, lo + b) for _ in range(steps) for lo in range(0, len(xs), b)]
            for t, (lo, hi) in enumerate(spans, start=1):
                override = None
                if optimizer == "adam":
                    override = {"eps": [ADAM_EPS * math.sqrt(1 - ADAM_BETAS[1] ** t)]}
                diffopt.step(F.cross_entropy(fmodel(xs[lo:hi]), ys[lo:hi]), override=override)
            (F.cross_entropy(fmodel(xq), yq) / len(tasks)).backward()
    return {k: p.grad.detach().clone() for k, p in model.named_parameters()}


def first_order_reference(model: nn.Module, tasks, *, steps: int, lr: float, optimizer: str) -> dict:
    """FOMAML by definition: mean over tasks of the query gradient at the adapted weights,
    the weights adapted by a plain torch.optim optimizer."""
    total = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    for xs, ys, xq, yq in tasks:
        clone = copy.deepcopy(model)
        opt = torch_optimizer(optimizer, clone.parameters(), lr)
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(clone(xs), ys).backward()
            opt.step()
        clone.zero_grad()
        F.cross_entropy(clone(xq), yq).backward()
        for k, p in clone.named_parameters():
            total[k] += p.grad / len(tasks)
    return total


def assert_params_close(a: dict, b: dict, atol: float, rtol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=rtol, msg=lambda m, k=k: f"{k}: {m}")


# ---------------------------------------------------------------- oracle: higher


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("kind", ["dnn", "cnn"])
def test_mini_batch_inner_loop_matches_higher(kind: str, batched: bool) -> None:
    """``InnerLoop(batch_size=4)`` on 10 support windows: per epoch, updates on windows 0-3, 4-7
    and 8-9, Adam's step count running on, as the research code's DataLoader loop did."""
    model, tasks = tiny(kind), make_tasks(3, n_support=10)
    inner = InnerLoop(steps=2, lr=0.01, optimizer="adam", batch_size=4)
    assert inner.spans(10) == [(0, 4), (4, 8), (8, 10)] and inner.spans(3) == [(0, 3)]
    expected = higher_meta_gradient(model, tasks, steps=2, lr=0.01, optimizer="adam", batch=4)
    grads, _ = meta_gradient(model, model_params(model), tasks, inner, batched=batched)
    assert_params_close(grads, expected, atol=1e-6)
    whole, _ = meta_gradient(model, model_params(model), tasks, InnerLoop(steps=2, lr=0.01, optimizer="adam"))
    assert max(float((grads[k] - whole[k]).abs().max()) for k in grads) > 1e-4  # the mini-batches matter


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_second_order_meta_gradient_matches_higher(kind: str, optimizer: str) -> None:
    model, tasks = tiny(kind), make_tasks(3)
    lr = 0.1 if optimizer == "sgd" else 0.01
    inner = InnerLoop(steps=3, lr=lr, optimizer=optimizer, first_order=False)
    expected = higher_meta_gradient(model, tasks, steps=3, lr=lr, optimizer=optimizer)
    for batched in (True, False):
        grads, _ = meta_gradient(model, model_params(model), tasks, inner, batched=batched)
        assert_params_close(grads, expected, atol=1e-6)
    assert max(g.abs().max() for g in expected.values()) > 1e-3  # not trivially zero


def test_second_order_adam_with_zero_gradients_stays_finite_and_matches_higher() -> None:
    """A dead ReLU unit has exactly zero gradients, so Adam's v is 0 there; d sqrt(v)/dv is
    masked (as higher does) instead of giving inf * 0 = nan."""
    model, tasks = tiny("dnn"), make_tasks(2)
    with torch.no_grad():
        model.net[0].bias[:3] = -1e3  # three hidden units never fire
    inner = InnerLoop(steps=3, lr=0.01, optimizer="adam")
    grads, loss = meta_gradient(model, model_params(model), tasks, inner)
    assert all(torch.isfinite(g).all() for g in grads.values()) and torch.isfinite(loss)
    assert torch.equal(grads["net.0.weight"][:3], torch.zeros_like(grads["net.0.weight"][:3]))
    assert_params_close(grads, higher_meta_gradient(model, tasks, steps=3, lr=0.01, optimizer="adam"), atol=1e-6)


def test_compiled_meta_gradient_matches_higher_and_replays() -> None:
    """``compile="aot_eager"``: the batched meta-gradient traced once by torch.compile gives
    higher's second-order gradients (Adam, mini-batches), and later calls replay the graph."""
    model, tasks = tiny("dnn"), make_tasks(2, n_support=8)  # each step two mini-batches: 4 updates traced
    inner = InnerLoop(steps=2, lr=0.01, optimizer="adam", batch_size=4)
    expected = higher_meta_gradient(model, tasks, steps=2, lr=0.01, optimizer="adam", batch=4)
    torch._dynamo.reset()
    for _ in range(2):
        grads, loss = meta_gradient(model, model_params(model), tasks, inner, compile="aot_eager")
        assert_params_close(grads, expected, atol=1e-6)
    _, eager_loss = meta_gradient(model, model_params(model), tasks, inner)
    assert float(loss) == pytest.approx(float(eager_loss), abs=1e-9)
    frames = torch._dynamo.utils.counters["stats"]
    assert frames["unique_graphs"] == 1, dict(frames)  # compiled once, replayed once


def test_compile_is_checked() -> None:
    model, tasks = tiny("dnn"), make_tasks(2)
    with pytest.raises(ConfigError, match="compile must be null or one of aot_eager, inductor"):
        meta_gradient(model, model_params(model), tasks, InnerLoop(steps=1), compile="jit")
    with pytest.raises(ConfigError, match="cannot be used with batched=False"):
        meta_gradient(model, model_params(model), tasks, InnerLoop(steps=1), batched=False, compile="aot_eager")


# ---------------------------------------------------------------- first order, adapt


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("kind", ["dnn", "cnn"])
def test_first_order_meta_gradient_matches_its_definition(kind: str, optimizer: str) -> None:
    model, tasks = tiny(kind), make_tasks(3)
    lr = 0.1 if optimizer == "sgd" else 0.01
    inner = InnerLoop(steps=4, lr=lr, optimizer=optimizer, first_order=True)
    expected = first_order_reference(model, tasks, steps=4, lr=lr, optimizer=optimizer)
    for batched in (True, False):
        grads, _ = meta_gradient(model, model_params(model), tasks, inner, batched=batched)
        assert_params_close(grads, expected, atol=1e-9)
    second, _ = meta_gradient(model, model_params(model), tasks, InnerLoop(steps=4, lr=lr, optimizer=optimizer))
    assert max((second[k] - expected[k]).abs().max() for k in expected) > 1e-6  # the flag matters


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_adapt_follows_torch_optim_exactly(optimizer: str) -> None:
    model, ((xs, ys, _, _),) = tiny("cnn"), make_tasks(1)
    adapted = adapt(model, model_params(model), xs, ys, steps=5, lr=0.01, optimizer=optimizer, first_order=True)
    clone = copy.deepcopy(model)
    opt = torch_optimizer(optimizer, clone.parameters(), 0.01)
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(clone(xs), ys).backward()
        opt.step()
    assert_params_close(adapted, {k: p.detach() for k, p in clone.named_parameters()}, atol=1e-12)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_adapt_reduces_support_loss_without_building_a_graph(kind: str, optimizer: str) -> None:
    model, ((xs, ys, _, _),) = tiny(kind, torch.float32), make_tasks(1, n_support=24, dtype=torch.float32)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    params = model_params(model)
    lr = {"sgd": {"dnn": 0.5, "cnn": 1.0, "tcn": 1.0, "tf": 0.5, "feat": 1.0}[kind], "adam": 0.02}[optimizer]
    adapted = adapt(model, params, xs, ys, steps=20, lr=lr, optimizer=optimizer, first_order=False)
    loss0 = F.cross_entropy(torch.func.functional_call(model, params, (xs,)), ys)
    loss1 = F.cross_entropy(torch.func.functional_call(model, adapted, (xs,)), ys)
    assert loss1 < 0.9 * loss0
    assert not any(p.requires_grad or p.grad_fn is not None for p in adapted.values())
    assert_params_close(dict(model.named_parameters()), before, atol=0.0)  # the model is untouched


def test_adapt_works_under_no_grad_and_casts_inputs() -> None:
    model, ((xs, ys, _, _),) = tiny("dnn"), make_tasks(1)
    expected = adapt(model, model_params(model), xs, ys, steps=3, lr=0.1)
    with torch.no_grad():  # e.g. inside an evaluation loop
        got = adapt(model, model_params(model), xs.float(), ys.int(), steps=3, lr=0.1)
    assert all(v.dtype == torch.float64 for v in got.values())
    assert_params_close(got, expected, atol=1e-6)


def test_adapt_with_zero_steps_returns_the_params() -> None:
    model, ((xs, ys, _, _),) = tiny("dnn"), make_tasks(1)
    params = model_params(model)
    assert adapt(model, params, xs, ys, steps=0, lr=0.1) is params


def test_adapt_is_differentiable_when_params_require_grad() -> None:
    model, tasks = tiny("tcn"), make_tasks(1)
    xs, ys, xq, yq = tasks[0]
    leaves = {k: p.detach().requires_grad_() for k, p in model.named_parameters()}
    adapted = adapt(model, leaves, xs, ys, steps=3, lr=0.01, optimizer="adam", first_order=False)
    loss = F.cross_entropy(torch.func.functional_call(model, adapted, (xq,)), yq)
    grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))
    expected, _ = meta_gradient(model, model_params(model), tasks, InnerLoop(steps=3, lr=0.01, optimizer="adam"))
    assert_params_close(grads, expected, atol=1e-12)


# ---------------------------------------------------------------- execution paths


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_vmap_path_equals_loop_path(kind: str, first_order: bool) -> None:
    """The same meta-gradient through vmap and through the task loop: an identity, so compared in
    float64, where the two orders of arithmetic agree to ~1e-13. (In float32, second-order Adam
    amplifies rounding differences to ~0.6 % relative on some CPUs: no tolerance there holds on
    every machine.) Also guards against F.layer_norm, whose second-order gradients are wrong
    under vmap in torch 2.13 when its weight is shared by the mapped tasks (the tf model avoids
    it): that error is of order one, far above these bounds."""
    model, tasks = tiny(kind), make_tasks(4)
    inner = InnerLoop(steps=3, lr=0.01, optimizer="adam", first_order=first_order)
    gv, lv = meta_gradient(model, model_params(model), tasks, inner, batched=True)
    gl, ll = meta_gradient(model, model_params(model), tasks, inner, batched=False)
    assert all(g.dtype == torch.float64 for g in gv.values())
    assert_params_close(gv, gl, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(lv, ll, atol=1e-12, rtol=1e-12)


def test_unequal_task_shapes_use_the_loop() -> None:
    model, tasks = tiny("dnn"), make_tasks(3, n_support=[10, 12, 9])
    inner = InnerLoop(steps=2, lr=0.1)
    assert not same_shapes(tasks)
    with pytest.raises(DataError, match="equal shapes"):
        meta_gradient(model, model_params(model), tasks, inner, batched=True)
    grads, loss = meta_gradient(model, model_params(model), tasks, inner)
    parts = [meta_gradient(model, model_params(model), [t], inner) for t in tasks]
    assert_params_close(grads, {k: sum(g[k] for g, _ in parts) / 3 for k in grads}, atol=1e-12)
    torch.testing.assert_close(loss, sum(lo for _, lo in parts) / 3)


def test_meta_loss_equals_the_meta_gradient_loss() -> None:
    model, inner = tiny("cnn"), InnerLoop(steps=3, lr=0.01, optimizer="adam")
    for tasks in (make_tasks(3), make_tasks(3, n_support=[8, 9, 10])):
        _, expected = meta_gradient(model, model_params(model), tasks, inner)
        got = meta_loss(model, model_params(model), tasks, inner)
        assert got.grad_fn is None
        torch.testing.assert_close(got, expected)


def test_the_meta_step_and_validation_report_the_query_accuracy_after_adaptation() -> None:
    """meta_eval's and meta_step_stats' accuracy (what metaemg-train's curves show) is the query
    accuracy of each task's adapted weights, averaged over tasks: vmapped and looped, before the update."""
    model, inner = tiny("dnn"), InnerLoop(steps=2, lr=0.5, optimizer="sgd")
    for tasks in (make_tasks(3), make_tasks(3, n_support=[8, 9, 10])):
        expected = []
        for xs, ys, xq, yq in tasks:
            fitted = adapt(model, model_params(model), xs, ys, steps=2, lr=0.5, optimizer="sgd")
            logits = torch.func.functional_call(model, fitted, (xq,))
            expected.append(float((logits.argmax(1) == yq).double().mean()))
        loss, acc = meta_eval(model, model_params(model), tasks, inner)
        assert float(acc) == pytest.approx(sum(expected) / 3, abs=1e-6)  # counted in float32
        assert 0 < float(acc) < 1  # neither trivially 0 nor 1 on these tasks
        torch.testing.assert_close(loss, meta_loss(model, model_params(model), tasks, inner))
        before = copy.deepcopy(model)
        step_loss, step_acc = meta_step_stats(model, OuterLoop(model, lr=0.1, lr_cycle=10, lr_factor=1.0), tasks, inner)
        assert (step_loss, step_acc) == pytest.approx((float(loss), float(acc)), abs=1e-6)
        assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before.parameters(), strict=True))
        model = before


# ---------------------------------------------------------------- outer loop


def test_outer_loop_is_adamw_with_a_step_schedule() -> None:
    model = tiny("dnn")
    reference = copy.deepcopy(model)
    outer = OuterLoop(model, lr=0.01, lr_cycle=2, lr_factor=0.5, weight_decay=0.1)
    opt = torch.optim.AdamW(reference.parameters(), lr=0.01, weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    lrs = []
    for step in range(5):
        lrs.append(outer.lr)
        grads = {k: torch.randn(p.shape, generator=gen, dtype=p.dtype) for k, p in model.named_parameters()}
        outer.step(grads)
        for group in opt.param_groups:
            group["lr"] = 0.01 * 0.5 ** (step // 2)
        for k, p in reference.named_parameters():
            p.grad = grads[k]
        opt.step()
    assert lrs == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025])
    assert_params_close(dict(model.named_parameters()), dict(reference.named_parameters()), atol=1e-12)
    assert all(p.grad is None for p in model.parameters())


def test_meta_steps_lower_the_meta_loss() -> None:
    model, tasks = tiny("dnn", torch.float32), make_tasks(4, n_support=20, dtype=torch.float32)
    inner = InnerLoop(steps=2, lr=0.05)
    outer = OuterLoop(model, lr=0.01, lr_cycle=100, lr_factor=0.5)
    start = meta_loss(model, model_params(model), tasks, inner)
    losses = [meta_step(model, outer, tasks, inner) for _ in range(15)]
    assert losses[0] == pytest.approx(float(start), rel=1e-5)
    assert float(meta_loss(model, model_params(model), tasks, inner)) < 0.8 * float(start)


def test_torch_threads_restores_the_previous_count_even_on_error() -> None:
    before = torch.get_num_threads()  # 1, under this module's fixture
    with pytest.raises(RuntimeError), torch_threads(2):
        assert torch.get_num_threads() == 2
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_default_device_prefers_cuda() -> None:
    assert default_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs",
    [
        {"steps": -1},
        {"steps": 2.0},
        {"steps": True},
        {"lr": 0.0},
        {"lr": float("nan")},
        {"lr": "0.1"},
        {"optimizer": "rmsprop"},
        {"first_order": 1},
        {"batch_size": 0},
        {"batch_size": 4.0},
        {"batch_size": True},
    ],
)
def test_bad_inner_settings_raise_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        InnerLoop(**kwargs)
    model, ((xs, ys, _, _),) = tiny("dnn"), make_tasks(1)
    settings = {"steps": 1, "lr": 0.1, "optimizer": "sgd", "first_order": False, **kwargs}
    with pytest.raises(ConfigError):
        adapt(model, model_params(model), xs, ys, **settings)


@pytest.mark.parametrize(
    "kwargs", [{"lr_cycle": 0}, {"lr_cycle": 1.5}, {"lr_factor": 0.0}, {"lr": -1.0}, {"weight_decay": -0.1}]
)
def test_bad_outer_settings_raise_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        OuterLoop(tiny("dnn"), **{"lr_cycle": 10, "lr_factor": 0.5, **kwargs})


def _bad_tasks():
    ((xs, ys, xq, yq),) = make_tasks(1)
    return {
        "empty meta-batch": [],
        "three items": [(xs, ys, xq)],
        "length mismatch": [(xs, ys[:-1], xq, yq)],
        "float labels": [(xs, ys.double(), xq, yq)],
        "label out of range": [(xs, ys + 3, xq, yq)],
        "integer windows": [(xs.long(), ys, xq, yq)],
        "no windows": [(xs[:0], ys[:0], xq, yq)],
    }


@pytest.mark.parametrize("case", list(_bad_tasks()))
def test_bad_tasks_raise_data_error(case: str) -> None:
    model, tasks = tiny("dnn"), _bad_tasks()[case]
    with pytest.raises(DataError):
        meta_gradient(model, model_params(model), tasks, InnerLoop(steps=1))
    if tasks and len(tasks[0]) == 4:
        with pytest.raises(DataError):
            adapt(model, model_params(model), tasks[0][0], tasks[0][1], steps=1, lr=0.1)


def test_meta_gradient_wants_an_inner_loop() -> None:
    model = tiny("dnn")
    with pytest.raises(ConfigError):
        meta_gradient(model, model_params(model), make_tasks(1), {"steps": 1})  # type: ignore[arg-type]


# ---------------------------------------------------------------- sharding across processes


def test_shard_tasks_splits_contiguously() -> None:
    tasks = list(range(7))
    shards = [shard_tasks(tasks, r, 3) for r in range(3)]  # type: ignore[arg-type]
    assert shards == [[0, 1, 2], [3, 4], [5, 6]]
    assert shard_tasks(tasks) == tasks  # type: ignore[arg-type]  # no process group: everything
    with pytest.raises(ConfigError):
        shard_tasks(tasks[:2], 0, 3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        shard_tasks(tasks, 3, 3)  # type: ignore[arg-type]


DIST_STEPS = 3


def _train(meta_steps: int) -> dict:
    """A few meta-steps on meta-batches of 5 tasks; under a process group, on this rank's shard.
    float64: sharding changes the order of the sums, an identity to compare where rounding is
    far below the bound on every CPU."""
    model = tiny("cnn")
    outer = OuterLoop(model, lr=0.01, lr_cycle=2, lr_factor=0.5)
    inner = InnerLoop(steps=2, lr=0.01, optimizer="adam")
    for step in range(meta_steps):
        batch = make_tasks(5, seed=10 + step)
        meta_step(model, outer, shard_tasks(batch), inner)
    return {k: p.detach().clone() for k, p in model.named_parameters()}


def _worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        params = _train(DIST_STEPS)
        grads = {"w": torch.full((2,), float(rank + 1))}  # rank 0: 3 tasks of 1.0, rank 1: 2 of 2.0
        mean, loss = allreduce_meta_gradients(grads, 3 - rank, torch.tensor(float(rank)))
        if rank == 0:
            torch.save({"params": params, "mean": mean["w"], "loss": loss}, out)
        dist.barrier()  # neither rank tears gloo down while the other still uses it
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")  # inherited by the spawned workers
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    result = torch.load(out)
    assert_params_close(result["params"], _train(DIST_STEPS), atol=1e-10)
    torch.testing.assert_close(result["mean"], torch.full((2,), (3 * 1.0 + 2 * 2.0) / 5))
    torch.testing.assert_close(result["loss"], torch.tensor(2 / 5))
