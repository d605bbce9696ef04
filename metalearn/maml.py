"""MAML (Finn et al. 2017) on ``torch.func``: functional inner loop, batched meta-gradients.

Parameters travel as plain dicts ``{name: tensor}`` (:func:`model_params`) and the model runs
through ``torch.func.functional_call``. The inner loop (:func:`adapt`) takes ``steps`` plain SGD
or Adam steps on a task's support set, each on the whole set or, with ``InnerLoop.batch_size``,
an epoch of mini-batches as the research code's DataLoader loop. Adam is written functionally
with the exact ``torch.optim.Adam`` update (bias correction, default betas and eps), so second-order MAML
differentiates through it. (higher 0.2.1's DifferentiableAdam keeps the pre-1.0 formula that adds
eps before bias correction: with its eps set to ``eps * sqrt(1 - beta2**t)`` at step t the two
agree; see tests/test_maml.py.) :func:`meta_gradient` returns the gradient of the mean query loss
with respect to the initial parameters, with all tasks in one ``vmap`` when their shapes agree,
one by one otherwise; ``compile`` runs the batched meta-gradient through ``torch.compile``
(:data:`COMPILE_BACKENDS`). :class:`OuterLoop` applies it with AdamW and the research code's StepLR
schedule; :func:`allreduce_meta_gradients` combines shards of a meta-batch under torchrun.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.func import functional_call, grad, grad_and_value, vmap
from torch.nn import functional as F

from metaemg.errors import ConfigError, DataError
from metaemg.modelfile import INNER_HEADS as HEADS
from metaemg.modelfile import INNER_OPTIMIZERS as OPTIMIZERS
from metalearn.config import COMPILE_BACKENDS

Params = dict[str, Tensor]
Task = tuple[Tensor, Tensor, Tensor, Tensor]  # x_support, y_support, x_query, y_query
ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam defaults
ADAM_EPS = 1e-8
# torch.compile backends for the batched meta-gradient. "aot_eager" traces the whole meta-gradient
# (inner loop, vmap, double backward) once into one graph of plain aten ops and replays it without
# torch.func's per-op dispatch: same values as eager to ~1e-7, tens of seconds to compile.
# "inductor" also fuses the element-wise Adam arithmetic into generated C++/Triton kernels: several
# times faster again, but minutes to compile the first time (cached on disk after that) and values
# that differ from eager's by up to ~1e-4 on the bench's dnn (reordered float arithmetic).


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous number (tiny
    models: one thread is as fast, and far faster when other processes share the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def model_params(model: nn.Module) -> Params:
    """The model's parameters as a dict of detached tensors (sharing storage with the model)."""
    return {name: p.detach() for name, p in model.named_parameters()}


@dataclass(frozen=True)
class InnerLoop:
    """Inner-loop settings: ``steps`` of ``optimizer`` at learning rate ``lr`` on the support set.

    ``first_order`` treats inner gradients as constants (FOMAML); otherwise the meta-gradient
    differentiates through them (second order). ``batch_size`` None makes each step one
    full-batch step on the support set; a number makes each step an epoch: one optimiser step per
    consecutive mini-batch of that many windows (the last may be smaller), in order, as the
    research code's DataLoader loop did.
    """

    steps: int = 10
    lr: float = 1e-2
    optimizer: str = "sgd"
    first_order: bool = False
    batch_size: int | None = None

    @classmethod
    def from_config(cls, cfg) -> InnerLoop:
        """The inner loop of a :class:`metalearn.config.TrainConfig` (``test.inner_*``)."""
        return cls(
            steps=cfg.inner_steps,
            lr=float(cfg.inner_lr),
            optimizer=cfg.inner_optimizer,
            first_order=cfg.first_order,
            batch_size=cfg.inner_batch_size,
        )

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ConfigError(f"inner steps must be an integer >= 0, got {self.steps!r}")
        if (
            isinstance(self.lr, bool)
            or not isinstance(self.lr, int | float)
            or not (math.isfinite(self.lr) and self.lr > 0)
        ):
            raise ConfigError(f"inner lr must be a finite number > 0, got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown inner optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if not isinstance(self.first_order, bool):
            raise ConfigError(f"first_order must be a bool, got {self.first_order!r}")
        if self.batch_size is not None and (
            isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1
        ):
            raise ConfigError(f"inner batch_size must be null or an integer >= 1, got {self.batch_size!r}")

    def spans(self, n: int) -> list[tuple[int, int]]:
        """The (start, stop) window ranges of one step's optimiser updates on ``n`` support windows."""
        b = self.batch_size
        return [(0, n)] if b is None or b >= n else [(lo, min(lo + b, n)) for lo in range(0, n, b)]


# ---------------------------------------------------------------- functional inner loop


def _loss(model: nn.Module, params: Params, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(functional_call(model, params, (x,)), y)


_TINY = 1e-38  # added to v under the sqrt: its gradient stays finite at v == 0 (where it meets g == 0)


def _adam_update(
    p: Tensor, g: Tensor, m: Tensor | None, v: Tensor | None, lr: float, t: int
) -> tuple[Tensor, Tensor, Tensor]:
    """One step of ``torch.optim.Adam`` on one tensor, ``(p', m', v')``; ``m``/``v`` None at t == 1.

    Written with fused ops (lerp, addcmul, addcdiv) so that autograd records 7 nodes instead of
    ~16: second-order MAML with an Adam inner loop spends most of its time in these ops. The
    tiny term keeps the square root's gradient finite where v == 0, so that the chain rule gives
    0 there (v == 0 only where every g so far was 0), as higher masks it, instead of
    inf * 0 = nan; it changes no value that matters (sqrt(1e-38) = 1e-19 against eps = 1e-8).
    """
    b1, b2 = ADAM_BETAS
    m_new = g * (1 - b1) if m is None else torch.lerp(m, g, 1 - b1)
    v_new = g * g * (1 - b2) if v is None else torch.addcmul(v * b2, g, g, value=1 - b2)
    c2 = math.sqrt(1 - b2**t)
    # p - lr/(1-b1^t) * m / (sqrt(v)/c2 + eps) = p - (lr*c2/(1-b1^t)) * m / (sqrt(v) + eps*c2)
    denom = (v_new + _TINY).sqrt() + ADAM_EPS * c2
    return torch.addcdiv(p, m_new, denom, value=-lr * c2 / (1 - b1**t)), m_new, v_new


def _grads_functional(model: nn.Module, params: Params, x: Tensor, y: Tensor, first_order: bool) -> Params:
    """Support-loss gradients with ``torch.func.grad`` (composes with ``vmap`` and outer ``grad``)."""
    at = {k: p.detach() for k, p in params.items()} if first_order else params
    return grad(partial(_loss, model))(at, x, y)


def _grads_eager(model: nn.Module, params: Params, x: Tensor, y: Tensor, first_order: bool) -> Params:
    """Support-loss gradients with ``torch.autograd.grad``; a graph only for tracked, second-order params."""
    tracked = not first_order and any(p.requires_grad for p in params.values())
    at = {k: p if tracked and p.requires_grad else p.detach().requires_grad_() for k, p in params.items()}
    with torch.enable_grad():  # also under a caller's no_grad()
        gs = torch.autograd.grad(_loss(model, at, x, y), list(at.values()), create_graph=tracked, allow_unused=True)
    return {k: torch.zeros_like(p) if g is None else g for (k, p), g in zip(at.items(), gs, strict=True)}


def _adapt(
    model: nn.Module, params: Params, x: Tensor, y: Tensor, inner: InnerLoop, *, functional: bool = True
) -> Params:
    """The inner loop, without input checks; ``functional`` (torch.func) inside transforms."""
    grads = _grads_functional if functional else _grads_eager
    m: Params = {}
    v: Params = {}
    spans = inner.spans(x.shape[0])
    updates = [(lo, hi) for _ in range(inner.steps) for lo, hi in spans]
    for t, (lo, hi) in enumerate(updates, start=1):
        whole = hi - lo == x.shape[0]
        g = grads(model, params, x if whole else x[lo:hi], y if whole else y[lo:hi], inner.first_order)
        if inner.optimizer == "sgd":
            params = {k: p - inner.lr * g[k] for k, p in params.items()}
            continue
        new = {}
        for k, p in params.items():
            new[k], m[k], v[k] = _adam_update(p, g[k], m.get(k), v.get(k), inner.lr, t)
        params = new
    return params


def _check_xy(x: object, y: object, what: str, n_classes: int | None = None) -> tuple[Tensor, Tensor]:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise DataError(f"{what}: x and y must be tensors, got {type(x).__name__}, {type(y).__name__}")
    if not x.is_floating_point() or x.dim() < 2:
        raise DataError(f"{what}: x must be a floating tensor (n, ...), got {x.dtype} {tuple(x.shape)}")
    if y.dim() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise DataError(f"{what}: y must be a 1-D integer tensor, got {y.dtype} {tuple(y.shape)}")
    if len(x) != len(y) or len(y) == 0:
        raise DataError(f"{what}: x has {len(x)} windows but y has {len(y)} labels (need equal, > 0)")
    if n_classes is not None and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise DataError(f"{what}: labels must lie in 0..{n_classes - 1}, got {int(y.min())}..{int(y.max())}")
    return x, y.long()


def _n_classes(model: nn.Module) -> int | None:
    hparams = getattr(model, "hparams", None)
    return hparams.get("n_classes") if isinstance(hparams, dict) else None


def _to(x: Tensor, ref: Tensor) -> Tensor:
    return x.to(device=ref.device, dtype=ref.dtype) if x.is_floating_point() else x.to(ref.device)


def adapt(
    model: nn.Module,
    params: Params,
    x_support: Tensor,
    y_support: Tensor,
    *,
    steps: int,
    lr: float,
    optimizer: str = "sgd",
    first_order: bool = False,
    batch_size: int | None = None,
) -> Params:
    """Adapted parameters after ``steps`` inner steps on the support set (eager autograd).

    With detached ``params`` (e.g. :func:`model_params`) no graph is kept: this is plain
    fine-tuning, as for calibration. Parameters that require grad stay differentiable: the
    result depends on them through the inner gradients too unless ``first_order``.
    """
    inner = InnerLoop(steps=steps, lr=lr, optimizer=optimizer, first_order=first_order, batch_size=batch_size)
    x, y = _check_xy(x_support, y_support, "support set", _n_classes(model))
    ref = next(iter(params.values()))
    return _adapt(model, params, _to(x, ref), _to(y, ref), inner, functional=False)


# HEADS: closed-form heads a model may fit before the gradient steps (FeatLDA.fit_head)


def check_head(head: object, shrinkage: object) -> None:
    """ConfigError unless ``head`` is None or one of :data:`HEADS` and ``shrinkage`` a fraction."""
    if head is not None and head not in HEADS:
        raise ConfigError(f"inner head must be null or one of {', '.join(HEADS)}, got {head!r}")
    if isinstance(shrinkage, bool) or not isinstance(shrinkage, int | float) or not 0 <= shrinkage <= 1:
        raise ConfigError(f"inner shrinkage must be a number in [0, 1], got {shrinkage!r}")


def adapt_model(model: nn.Module, x: Tensor, y: Tensor, inner: Mapping[str, Any]) -> nn.Module:
    """A copy of ``model`` adapted to the labelled windows ``(x, y)`` as its ``inner`` settings say
    (the ``inner`` document of a checkpoint or model file): with ``head: lda`` the model's
    closed-form head first (:meth:`metalearn.models.FeatLDA.fit_head`, with ``shrinkage``), then
    ``steps`` gradient steps of the inner loop (:func:`adapt`, first order). ``model`` is untouched."""
    head, shrinkage = inner.get("head"), inner.get("shrinkage", 0.3)
    check_head(head, shrinkage)
    x, y = _check_xy(x, y, "adaptation set", _n_classes(model))
    fitted = copy.deepcopy(model)
    if head == "lda":
        if not hasattr(fitted, "fit_head"):
            raise ConfigError(
                f"inner head 'lda' needs a model with a closed-form head (feat), not {type(model).__name__}"
            )
        # torch types a module's dynamic attributes as Tensor | Module; hasattr() checked it above
        fitted.fit_head(x, y, float(shrinkage), float(inner.get("reject", 0.0)))  # type: ignore[operator]
    steps = int(inner["steps"])
    if steps:
        params = adapt(
            fitted,
            model_params(fitted),
            x,
            y,
            steps=steps,
            lr=float(inner["lr"]),
            optimizer=inner["optimizer"],
            first_order=True,
            batch_size=inner.get("batch_size"),
        )
        with torch.no_grad():
            for name, p in fitted.named_parameters():
                p.copy_(params[name])
    return fitted.eval()


# ---------------------------------------------------------------- meta-gradient


def _task_loss(
    model: nn.Module, inner: InnerLoop, params: Params, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor
) -> tuple[Tensor, Tensor]:
    """A task's query loss after adaptation, and its query accuracy (no gradient) from the same logits."""
    logits = functional_call(model, _adapt(model, params, xs, ys, inner), (xq,))
    return F.cross_entropy(logits, yq), _accuracy(logits, yq)


def _accuracy(logits: Tensor, y: Tensor) -> Tensor:
    return (logits.detach().argmax(-1) == y).float().mean()


def _check_tasks(model: nn.Module, tasks: Sequence[Task], ref: Tensor) -> list[Task]:
    n_classes = _n_classes(model)
    if len(tasks) == 0:
        raise DataError("meta-batch is empty")
    out = []
    for i, task in enumerate(tasks):
        if len(task) != 4:
            raise DataError(f"task {i}: expected (x_support, y_support, x_query, y_query), got {len(task)} items")
        xs, ys = _check_xy(task[0], task[1], f"task {i} support set", n_classes)
        xq, yq = _check_xy(task[2], task[3], f"task {i} query set", n_classes)
        out.append((_to(xs, ref), _to(ys, ref), _to(xq, ref), _to(yq, ref)))
    return out


def same_shapes(tasks: Sequence[Task]) -> bool:
    """Whether all tasks have identical tensor shapes (so they can run in one ``vmap``)."""
    first = [t.shape for t in tasks[0]]
    return all([t.shape for t in task] == first for task in tasks[1:])


def _batched_meta_gradient(model: nn.Module, inner: InnerLoop):
    """``f(params, xs, ys, xq, yq) -> (gradients, (mean query loss, mean query accuracy))`` over
    tasks stacked on dim 0."""
    task_loss = partial(_task_loss, model, inner)

    def mean_loss(params: Params, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> tuple[Tensor, Tensor]:
        losses, accs = vmap(task_loss, in_dims=(None, 0, 0, 0, 0))(params, xs, ys, xq, yq)
        return losses.mean(), accs.mean()

    return grad_and_value(mean_loss, has_aux=True)


@lru_cache(maxsize=4)  # one compiled function per (model, inner loop, backend): compiling costs seconds to minutes
def _compiled_meta_gradient(model: nn.Module, inner: InnerLoop, backend: str):
    return torch.compile(_batched_meta_gradient(model, inner), backend=backend)


def check_compile(compile: str | None) -> str | None:
    """``compile`` as given when it is None or one of :data:`COMPILE_BACKENDS`, else a ConfigError."""
    if compile is not None and compile not in COMPILE_BACKENDS:
        raise ConfigError(f"compile must be null or one of {', '.join(COMPILE_BACKENDS)}, got {compile!r}")
    return compile


def meta_gradient(
    model: nn.Module,
    params: Params,
    tasks: Sequence[Task],
    inner: InnerLoop,
    *,
    batched: bool | None = None,
    compile: str | None = None,
) -> tuple[Params, Tensor]:
    """Gradient of the mean over ``tasks`` of the query loss after adaptation, w.r.t. ``params``.

    Returns ``(gradients, mean query loss)``, both detached. ``batched`` None runs all tasks in
    one ``vmap`` when their shapes agree and loops otherwise; True requires equal shapes.
    ``compile`` (a :data:`COMPILE_BACKENDS` name) runs the batched path through ``torch.compile``;
    the first call with a model, inner loop and task shapes compiles, later calls replay.
    """
    grads, loss, _ = _meta_gradient(model, params, tasks, inner, batched=batched, compile=compile)
    return grads, loss


def _meta_gradient(
    model: nn.Module,
    params: Params,
    tasks: Sequence[Task],
    inner: InnerLoop,
    *,
    batched: bool | None = None,
    compile: str | None = None,
) -> tuple[Params, Tensor, Tensor]:
    """:func:`meta_gradient`, and the mean query accuracy after adaptation (from the same pass)."""
    if not isinstance(inner, InnerLoop):
        raise ConfigError(f"inner must be an InnerLoop, got {type(inner).__name__}")
    check_compile(compile)
    params = {k: p.detach() for k, p in params.items()}  # fresh leaves, not the model's tensors
    checked = _check_tasks(model, tasks, next(iter(params.values())))
    uniform = same_shapes(checked)
    if batched and not uniform:
        raise DataError("batched meta-gradient needs tasks of equal shapes; sample fixed-size support/query sets")
    if compile and batched is False:
        raise ConfigError("compile applies to the batched meta-gradient; it cannot be used with batched=False")
    if uniform if batched is None else batched:
        stacked = [torch.stack(parts) for parts in zip(*checked, strict=True)]
        f = _compiled_meta_gradient(model, inner, compile) if compile else _batched_meta_gradient(model, inner)
        grads, (loss, acc) = f(params, *stacked)
        return grads, loss.detach(), acc.detach()
    leaves = {k: p.requires_grad_() for k, p in params.items()}
    total: Params = {k: torch.zeros_like(p) for k, p in params.items()}
    loss_sum = next(iter(params.values())).new_zeros(())
    acc_sum = loss_sum.clone()
    for xs, ys, xq, yq in checked:  # eager autograd: faster than torch.func without vmap
        logits = functional_call(model, _adapt(model, leaves, xs, ys, inner, functional=False), (xq,))
        loss = F.cross_entropy(logits, yq)
        for k, g in zip(leaves, torch.autograd.grad(loss, list(leaves.values()), allow_unused=True), strict=True):
            if g is not None:
                total[k] += g
        loss_sum += loss.detach()
        acc_sum += _accuracy(logits, yq)
    return {k: t / len(checked) for k, t in total.items()}, loss_sum / len(checked), acc_sum / len(checked)


def meta_loss(model: nn.Module, params: Params, tasks: Sequence[Task], inner: InnerLoop) -> Tensor:
    """Mean query loss after adaptation, without a meta-gradient (e.g. for validation).

    The value equals the loss :func:`meta_gradient` returns; no graph is kept.
    """
    return meta_eval(model, params, tasks, inner)[0]


def meta_eval(model: nn.Module, params: Params, tasks: Sequence[Task], inner: InnerLoop) -> tuple[Tensor, Tensor]:
    """(:func:`meta_loss`, the mean query accuracy after adaptation), from one pass."""
    if not isinstance(inner, InnerLoop):
        raise ConfigError(f"inner must be an InnerLoop, got {type(inner).__name__}")
    params = {k: p.detach() for k, p in params.items()}
    checked = _check_tasks(model, tasks, next(iter(params.values())))
    fast = replace(inner, first_order=True)  # same values, no second-order graph
    if same_shapes(checked):
        stacked = [torch.stack(parts) for parts in zip(*checked, strict=True)]
        losses, accs = vmap(partial(_task_loss, model, fast), in_dims=(None, 0, 0, 0, 0))(params, *stacked)
        return losses.mean().detach(), accs.mean()
    each: list[Tensor] = []  # loss, accuracy, loss, ...
    for xs, ys, xq, yq in checked:
        logits = functional_call(model, _adapt(model, params, xs, ys, fast, functional=False), (xq,))
        each += [F.cross_entropy(logits, yq).detach(), _accuracy(logits, yq)]
    return torch.stack(each[0::2]).mean(), torch.stack(each[1::2]).mean()


# ---------------------------------------------------------------- outer loop


class OuterLoop:
    """AdamW on the initial parameters; lr times ``lr_factor`` every ``lr_cycle`` meta-steps."""

    def __init__(
        self, model: nn.Module, *, lr: float = 1e-3, lr_cycle: int, lr_factor: float, weight_decay: float = 1e-2
    ):
        for name, value in (("lr", lr), ("lr_factor", lr_factor)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"outer {name} must be a finite number > 0, got {value!r}")
        if isinstance(lr_cycle, bool) or not isinstance(lr_cycle, int) or lr_cycle < 1:
            raise ConfigError(f"lr_cycle must be an integer >= 1, got {lr_cycle!r}")
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, int | float) or weight_decay < 0:
            raise ConfigError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
        self.model = model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=lr_cycle, gamma=lr_factor)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def step(self, grads: Params) -> None:
        """Apply one meta-gradient (as from :func:`meta_gradient`) and advance the schedule."""
        for name, p in self.model.named_parameters():
            p.grad = grads[name].detach().to(p.dtype).clone()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


# ---------------------------------------------------------------- torchrun sharding


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def shard_tasks(tasks: Sequence[Task], rank: int | None = None, world_size: int | None = None) -> list[Task]:
    """This rank's contiguous share of a meta-batch (sizes differ by at most one)."""
    if rank is None or world_size is None:
        rank, world_size = (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside world size {world_size}")
    if len(tasks) < world_size:
        raise ConfigError(f"meta-batch of {len(tasks)} tasks cannot be shared by {world_size} processes")
    q, r = divmod(len(tasks), world_size)
    start = rank * q + min(rank, r)
    return list(tasks[start : start + q + (rank < r)])


def allreduce_meta_gradients(
    grads: Params, n_tasks: int, loss: Tensor | None = None, *, group: dist.ProcessGroup | None = None
) -> tuple[Params, Tensor]:
    """Combine per-rank mean meta-gradients over ``n_tasks`` local tasks into the global mean.

    One all-reduce (gloo on CPU, nccl on GPU) of the task-weighted sums. Returns the global
    ``(gradients, mean loss)``; the loss is zero if none was given.
    """
    names = list(grads)
    ref = grads[names[0]]
    weight = torch.tensor([float(n_tasks)], dtype=ref.dtype, device=ref.device)
    loss_t = torch.zeros(1, dtype=ref.dtype, device=ref.device) if loss is None else loss.detach().reshape(1).to(ref)
    flat = torch.cat([grads[k].reshape(-1) for k in names] + [loss_t, torch.ones_like(weight)]) * weight
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    total = flat[-1]
    if total <= 0:
        raise DataError("no tasks on any rank")
    flat = flat / total
    out, offset = {}, 0
    for k in names:
        size = grads[k].numel()
        out[k] = flat[offset : offset + size].view_as(grads[k])
        offset += size
    return out, flat[-2]


def meta_step(
    model: nn.Module,
    outer: OuterLoop,
    tasks: Sequence[Task],
    inner: InnerLoop,
    *,
    batched: bool | None = None,
    compile: str | None = None,
) -> float:
    """One meta-step on (this rank's share of) a meta-batch; returns the mean query loss.

    Under an initialised process group with more than one process, ``tasks`` is this rank's
    shard and the gradients are averaged over all ranks' tasks before the update. ``batched``
    and ``compile`` as for :func:`meta_gradient`.
    """
    return meta_step_stats(model, outer, tasks, inner, batched=batched, compile=compile)[0]


def meta_step_stats(
    model: nn.Module,
    outer: OuterLoop,
    tasks: Sequence[Task],
    inner: InnerLoop,
    *,
    batched: bool | None = None,
    compile: str | None = None,
) -> tuple[float, float]:
    """:func:`meta_step`, returning (mean query loss, mean query accuracy) of the meta-batch
    after adaptation, before the update (the accuracy from the loss's own logits)."""
    grads, loss, acc = _meta_gradient(model, model_params(model), tasks, inner, batched=batched, compile=compile)
    if _distributed():
        grads, loss = allreduce_meta_gradients(grads, len(tasks), loss)
        acc = allreduce_meta_gradients({"accuracy": acc.reshape(1)}, len(tasks))[0]["accuracy"]
    outer.step(grads)
    return float(loss), float(acc)
