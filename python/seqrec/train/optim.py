"""The trainer's optimisation parts: optimizer, learning-rate schedule, autocast.

Each part is built by one function that other code can extend or replace:

* :func:`build_optimizer` — the default optimizer (fused Adam over every parameter; with
  ``TrainConfig.sparse_embeddings``, :class:`RowwiseAdam` over a sparse item table). A
  :class:`~seqrec.train.Trainer` takes ``optimizer=`` an optimizer already built over the
  model's parameters, or a factory ``f(params) -> Optimizer`` such as
  ``functools.partial(torch.optim.AdamW, lr=1e-3)``.
* :func:`build_scheduler` — the schedule named by ``TrainConfig.scheduler`` (``none``,
  ``cosine``, ``step``) with ``warmup_steps`` of linear warmup; ``scheduler=`` takes an
  ``LRScheduler`` or a factory ``f(optimizer) -> LRScheduler`` instead. A schedule is
  stepped once per optimizer step (not per batch when gradients are accumulated).
* :class:`MixedPrecision` — ``TrainConfig.autocast``: ``none``, ``bf16`` (CPU and CUDA) or
  ``fp16`` (CUDA only, with a :class:`torch.amp.GradScaler`).
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable

import torch

__all__ = ["RowwiseAdam", "build_optimizer", "build_scheduler", "resolve_optimizer", "resolve_scheduler",
           "schedule_factor", "MixedPrecision", "SCHEDULERS", "AUTOCAST"]

SCHEDULERS = ("none", "cosine", "step")
AUTOCAST = ("none", "bf16", "fp16")


class RowwiseAdam(torch.optim.Adam):
    """:class:`torch.optim.Adam` that updates a parameter with a sparse gradient row by row.

    Parameters with a dense gradient take Adam's own step (same arguments, same kernel:
    identical to :class:`torch.optim.Adam`). A parameter whose gradient is sparse (an
    ``nn.Embedding(sparse=True)`` weight) gets the lazy Adam update (as
    :class:`torch.optim.SparseAdam` and TensorFlow's LazyAdam), for the rows in the
    gradient only::

        g      = grad[rows] (+ weight_decay * p[rows])    # duplicate rows summed
        m[rows] = b1 m[rows] + (1 - b1) g;   v[rows] = b2 v[rows] + (1 - b2) g^2
        p[rows] -= lr / (1 - b1^t) * m[rows] / (sqrt(v[rows] / (1 - b2^t)) + eps)

    with t the parameter's step count (steps in which it had a gradient). So a row
    touched at every step follows dense Adam exactly; a row not in a step's gradient is
    left as it is, where dense Adam would still move it by its decaying momentum and
    decay its moments (its moments catch up on no missed steps: lazy). At the first step
    every touched row equals dense Adam's and every other row is unchanged, as with dense
    Adam. The state layout is Adam's (``step``, ``exp_avg``, ``exp_avg_sq``), so
    ``state_dict`` / ``load_state_dict`` and checkpoints resume exactly, and learning-rate
    schedulers drive it as they drive Adam. ``amsgrad`` is not supported.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, **kwargs):
        if kwargs.get("amsgrad"):
            raise ValueError("RowwiseAdam does not support amsgrad")
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **kwargs)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        hidden = []  # sparse gradients, out of Adam's sight while it steps the dense ones
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    self._sparse_step(p, group)
                    hidden.append((p, p.grad))
                    p.grad = None
        try:
            super().step()
        finally:
            for p, grad in hidden:
                p.grad = grad
        return loss

    def _sparse_step(self, p: torch.Tensor, group: dict) -> None:
        grad = p.grad.coalesce()
        rows, values = grad.indices()[0], grad.values()
        if group.get("maximize", False):
            values = -values
        state = self.state[p]
        if not state:
            # Adam's own layout (a float32 step tensor on the parameter's device, fused
            # or not), so that the state dict is Adam's.
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        t = float(state["step"])
        beta1, beta2 = group["betas"]
        lr, eps, weight_decay = float(group["lr"]), group["eps"], group["weight_decay"]
        rows_p = p.index_select(0, rows)
        if weight_decay:
            values = values + weight_decay * rows_p
        m = state["exp_avg"].index_select(0, rows).lerp_(values, 1 - beta1)
        v = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(values, values, value=1 - beta2)
        state["exp_avg"].index_copy_(0, rows, m)
        state["exp_avg_sq"].index_copy_(0, rows, v)
        bias1, bias2 = 1 - beta1 ** t, 1 - beta2 ** t
        denom = (v.sqrt() / math.sqrt(bias2)).add_(eps)
        p.index_copy_(0, rows, rows_p.addcdiv_(m, denom, value=-lr / bias1))


def build_optimizer(model: torch.nn.Module, config) -> torch.optim.Optimizer:
    """The default optimizer of :class:`~seqrec.train.Trainer`: Adam over every parameter
    of ``model`` with the config's ``lr``, ``betas`` and ``weight_decay``.

    With ``config.sparse_embeddings`` the model's item table (``model.item_table()``) is
    switched to sparse gradients and :class:`RowwiseAdam` updates only the rows each
    batch looked up: a step's cost follows the rows touched, not the catalogue. The
    full-softmax ``"ce"`` losses use the whole table anyway (its gradient stays dense: no
    gain, no harm); the gain is for ``"bce"`` and ``"sampled"``.
    """
    # fused: one kernel for all parameters (25x faster than the per-tensor loop on CPU).
    kwargs = dict(lr=config.lr, betas=config.betas, weight_decay=config.weight_decay, fused=True)
    if not getattr(config, "sparse_embeddings", False):
        return torch.optim.Adam(model.parameters(), **kwargs)
    table = _sparse_table(model)
    optimizer = RowwiseAdam(model.parameters(), **kwargs)
    table.sparse = True
    return optimizer


def _sparse_table(model: torch.nn.Module) -> torch.nn.Embedding:
    """The item table ``sparse_embeddings`` makes sparse (not yet switched)."""
    table = model.item_table() if hasattr(model, "item_table") else None
    if not isinstance(table, torch.nn.Embedding):
        raise ValueError(f"sparse_embeddings: {type(model).__name__} has no item_table() nn.Embedding to make sparse")
    return table


def resolve_optimizer(optimizer, model: torch.nn.Module, config) -> torch.optim.Optimizer:
    """``optimizer`` as given to the Trainer: None (the default of :func:`build_optimizer`),
    an :class:`torch.optim.Optimizer`, or a factory called with ``model.parameters()``.

    With ``config.sparse_embeddings`` the item table's gradient is sparse, which torch's
    dense optimizers (Adam, AdamW, ...) refuse at their first step: a given optimizer must
    then be a :class:`RowwiseAdam` (it takes the sparse table and the dense rest), else
    ValueError names both settings."""
    if optimizer is None:
        return build_optimizer(model, config)
    if isinstance(optimizer, torch.optim.Optimizer):
        opt = optimizer
    elif callable(optimizer):
        opt = optimizer(model.parameters())
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"optimizer factory {optimizer!r} returned {type(opt).__name__}, not a "
                            "torch.optim.Optimizer")
    else:
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or a factory f(params) -> Optimizer, got "
                        f"{type(optimizer).__name__}")
    params = {id(p) for group in opt.param_groups for p in group["params"]}
    trainable = [p for p in model.parameters() if p.requires_grad]
    if trainable and not any(id(p) in params for p in trainable):
        raise ValueError("optimizer: it updates none of the model's parameters (build it over model.parameters() "
                         "of the model given to the Trainer)")
    if getattr(config, "sparse_embeddings", False):
        table = _sparse_table(model)
        if not isinstance(opt, RowwiseAdam):
            raise ValueError(
                f"optimizer= ({type(opt).__name__}) was given together with sparse_embeddings=True (seqrec: "
                f"--sparse-embeddings): the item table's gradient would be sparse, which {type(opt).__name__} "
                "does not take; pass seqrec.train.optim.RowwiseAdam (or a factory of it), or set "
                "sparse_embeddings=False to use this optimizer with a dense table")
        table.sparse = True
    return opt


def schedule_factor(step: int, *, kind: str, warmup_steps: int, total_steps: int, step_every: int,
                    gamma: float) -> float:
    """Learning-rate multiplier after ``step`` optimizer steps.

    * warmup: ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps (never 0);
    * ``cosine``: then ``0.5 * (1 + cos(pi * t))``, t going from 0 to 1 over the steps
      left until ``total_steps`` (0 from there on);
    * ``step``: then ``gamma ** (step // step_every)``;
    * ``none``: then 1.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "step":
        return gamma ** (step // step_every)
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, config, steps_per_epoch: int):
    """The schedule of ``config.scheduler`` / ``warmup_steps`` as a ``LambdaLR`` stepped per
    optimizer step, or None for ``scheduler="none"`` without warmup (a constant rate)."""
    if config.scheduler == "none" and config.warmup_steps == 0:
        return None
    # A closure, not a callable object: LambdaLR saves the state of callable objects, and
    # the schedule's shape must come from the config of the run, not from a checkpoint.
    kind, warmup, gamma = config.scheduler, config.warmup_steps, config.lr_gamma
    total, every = config.epochs * steps_per_epoch, config.lr_step_epochs * steps_per_epoch

    def factor(step: int) -> float:
        return schedule_factor(step, kind=kind, warmup_steps=warmup, total_steps=total, step_every=every,
                               gamma=gamma)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resolve_scheduler(scheduler, optimizer: torch.optim.Optimizer, config, steps_per_epoch: int):
    """``scheduler`` as given to the Trainer: None (the config's, see :func:`build_scheduler`),
    an ``LRScheduler`` over ``optimizer``, or a factory ``f(optimizer) -> LRScheduler``."""
    if scheduler is None:
        return build_scheduler(optimizer, config, steps_per_epoch)
    if not isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler) and callable(scheduler):
        scheduler = scheduler(optimizer)
    if not isinstance(scheduler, (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)):
        raise TypeError(f"scheduler must be a torch.optim.lr_scheduler.LRScheduler or a factory "
                        f"f(optimizer) -> LRScheduler, got {type(scheduler).__name__}")
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise TypeError("scheduler: ReduceLROnPlateau steps on a metric, not per optimizer step; the Trainer "
                        "steps its scheduler once per optimizer step (use a callback's on_eval_end to drive it)")
    if scheduler.optimizer is not optimizer:
        raise ValueError("scheduler: it was built over another optimizer than the Trainer's; pass a factory "
                         "f(optimizer) -> LRScheduler, or build both and pass both")
    if config.scheduler != "none" or config.warmup_steps:
        raise ValueError(f"scheduler: given both a scheduler object and TrainConfig.scheduler="
                         f"{config.scheduler!r} / warmup_steps={config.warmup_steps}; keep one of them")
    return scheduler


class MixedPrecision:
    """``TrainConfig.autocast`` for the training step: the autocast context of the
    forward pass and, for fp16, the :class:`torch.amp.GradScaler` of the backward.

    bf16 keeps fp32's exponent range, so it needs no loss scaling; fp16 does, and
    autocast to fp16 is a CUDA feature here (refused on CPU by :class:`TrainConfig`).
    Evaluation always runs in the model's own precision.
    """

    def __init__(self, mode: str, device: str):
        if mode not in AUTOCAST:
            raise ValueError(f"autocast must be one of {AUTOCAST}, got {mode!r}")
        self.mode = mode
        self.device_type = torch.device(device).type
        if mode == "fp16" and self.device_type != "cuda":
            raise ValueError(f"autocast 'fp16' needs a CUDA device (with a gradient scaler), got device {device!r}; "
                             "use 'bf16' on the CPU")
        self.scaler = torch.amp.GradScaler(self.device_type) if mode == "fp16" else None

    def autocast(self):
        if self.mode == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.mode == "bf16" else torch.float16
        return torch.autocast(self.device_type, dtype=dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale_(self, optimizer) -> None:
        """Gradients back to their true scale (before clipping them)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:  # skips the step when the scaled gradients overflowed, and adapts the scale
            self.scaler.step(optimizer)
            self.scaler.update()

    def state_dict(self) -> dict | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], "torch.optim.lr_scheduler.LRScheduler"]
