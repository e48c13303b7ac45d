"""The trainer's optimisation parts: optimizer, learning-rate schedule, autocast.

Each part is built by one function that other code can extend or replace:

* :func:`build_optimizer` — the default optimizer (fused Adam over every parameter). A
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

__all__ = ["build_optimizer", "build_scheduler", "resolve_optimizer", "resolve_scheduler", "schedule_factor",
           "MixedPrecision", "SCHEDULERS", "AUTOCAST"]

SCHEDULERS = ("none", "cosine", "step")
AUTOCAST = ("none", "bf16", "fp16")


def build_optimizer(model: torch.nn.Module, config) -> torch.optim.Optimizer:
    """The default optimizer of :class:`~seqrec.train.Trainer`: Adam over every parameter
    of ``model`` with the config's ``lr``, ``betas`` and ``weight_decay``."""
    # fused: one kernel for all parameters (25x faster than the per-tensor loop on CPU).
    return torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay,
                            fused=True)


def resolve_optimizer(optimizer, model: torch.nn.Module, config) -> torch.optim.Optimizer:
    """``optimizer`` as given to the Trainer: None (the default of :func:`build_optimizer`),
    an :class:`torch.optim.Optimizer`, or a factory called with ``model.parameters()``."""
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
