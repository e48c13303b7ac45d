"""Data-parallel training over ``torch.distributed``: what the trainers call under torchrun.

One object, :class:`Distributed`, holds the process group of a run (rank, world size,
backend, this rank's device) and everything the trainers do differently with several
processes:

* **Start.** :meth:`Distributed.setup` reads torchrun's environment (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) or reuses a process
  group the caller initialised. ``setting``: None detects (several processes -> DDP),
  True requires it, False never uses it. Backend: NCCL when the device is CUDA (each
  rank on ``cuda:LOCAL_RANK`` when the device names no index), gloo otherwise. A world
  of one process is not distributed: the one-process code path runs unchanged.
* **Batches.** Global step ``s`` of an epoch holds the users that one process with the
  same (global) batch size B would hold (``split.train_order(seed, epoch)``); rank ``r``
  of ``W`` takes its rows ``r, r+W, ...`` (:class:`~seqrec.data.torch_data.ShardedTrainBatches`):
  a deterministic function of (seed, epoch, rank, world size), disjoint and covering.
  Every rank takes the same number of steps: a rank left without a row of the last step
  steps on a stand-in row whose weight is zero (a DDP step must be taken by all ranks).
* **Gradients.** The model runs inside ``DistributedDataParallel`` (which averages the
  gradients). Before the backward pass the ranks sum (local loss x weight, weight) in
  one ``all_reduce``; each rank back-propagates ``loss x weight x W / total weight``, so
  the averaged gradient is the gradient of the global batch's loss: the loss a model
  averages over its target positions (``weight`` = the rank's target positions; SASRec,
  DIF-SR, DSS seq2item) or sums (``mode="sum"``; S3-Rec pretraining) is that of one
  process with batch B, up to float summation order. The loss the trainers see and log
  is the global one, the same on every rank, so a non-finite loss stops every rank.
  What depends on the rows a rank holds is computed per rank, as in any DDP: in-batch
  negatives and contrastive terms over the batch (DSS seq2seq), and dropout masks (each
  rank draws from its own stream, :meth:`seed_rank`).
  With gradient accumulation the trainer runs all but the last batch of each group
  under DDP's ``no_sync()``: one gradient all-reduce per optimizer step.
* **End.** A group :meth:`setup` initialised (``owns_group``) is destroyed by
  :meth:`close`, which the trainers call when ``fit()`` returns or raises, and
  otherwise at the interpreter's exit (``atexit``); a group the caller initialised is
  left to the caller.
* **Writes.** Rank 0 alone writes (:meth:`on_writer`); its success or failure is then
  broadcast, so an error there (a full disk) stops every rank with
  :class:`RankZeroFailed` rather than leaving them waiting in the next collective.
  Rank 0 reads a checkpoint and broadcasts it (:meth:`from_writer`): the other ranks
  need no access to the run folder (another node's disk).
* **Resume.** A checkpoint records the world size and every rank's RNG state
  (:meth:`gather_rng`); a run resumes exactly with the same world size and refuses
  another (:func:`check_world_size`).
"""
from __future__ import annotations

import atexit
import datetime
import gc
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
import torch.distributed as dist

from ..models.base import LossOutput

__all__ = ["Distributed", "RankZeroFailed", "choose_backend", "rank_device", "torchrun_world",
           "check_world_size"]

# torchrun's variables (torch.distributed.run): which process this is, and how many.
ENV_RANK, ENV_WORLD, ENV_LOCAL = "RANK", "WORLD_SIZE", "LOCAL_RANK"
LAUNCH = "torchrun --nproc_per_node N --no-python seqrec ..."


class RankZeroFailed(RuntimeError):
    """Raised on the other ranks when what rank 0 alone does (write, read) failed; rank 0
    raises the error itself."""


def torchrun_world(env: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's environment, or None when the
    process was not started by torchrun (no ``WORLD_SIZE``).

    Raises:
        ValueError: a variable is not an integer, or the rank lies outside the world.
    """
    env = os.environ if env is None else env
    if ENV_WORLD not in env:
        return None
    values = {}
    for name, default in ((ENV_WORLD, None), (ENV_RANK, None), (ENV_LOCAL, "0")):
        text = env.get(name, default)
        if text is None:
            raise ValueError(f"the environment sets {ENV_WORLD} but not {name}: start the processes with {LAUNCH}")
        try:
            values[name] = int(text)
        except ValueError:
            raise ValueError(f"environment variable {name}={text!r} is not an integer") from None
    world, rank, local = values[ENV_WORLD], values[ENV_RANK], values[ENV_LOCAL]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"environment: {ENV_RANK}={rank}, {ENV_WORLD}={world}, {ENV_LOCAL}={local} "
                         "do not describe a process of the world")
    return rank, world, local


def choose_backend(device: str | torch.device, cuda_available: bool | None = None) -> str:
    """``"nccl"`` for a CUDA device, ``"gloo"`` for the CPU (and any other device).

    Raises:
        ValueError: a CUDA device where this torch sees no GPU.
    """
    kind = torch.device(device).type
    if kind == "cuda":
        available = torch.cuda.is_available() if cuda_available is None else cuda_available
        if not available:
            raise ValueError(f"device {str(device)!r}: DDP over NCCL needs CUDA, which this torch does not see "
                             "(train on --device cpu: the ranks then use gloo)")
        return "nccl"
    return "gloo"


def rank_device(device: str | torch.device, local_rank: int) -> str:
    """This rank's device: ``cuda`` without an index becomes ``cuda:<local_rank>`` (one
    GPU per process on each node); any other device is kept as given."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        return f"cuda:{local_rank}"
    return str(dev)


def check_world_size(path, saved: int | None, current: int) -> None:
    """Raise ValueError when a checkpoint written by ``saved`` processes (None: before
    seqrec recorded it, i.e. one) is resumed by ``current``."""
    saved = 1 if saved is None else int(saved)
    if saved != current:
        raise ValueError(
            f"{path}: cannot resume, the run was trained by {saved} process{'es' if saved > 1 else ''} "
            f"(world size {saved}) and is resumed by {current} (world size {current}); each rank's batch rows "
            f"and dropout stream depend on the world size, so resume with {saved} "
            f"({'torchrun --nnodes x --nproc_per_node = ' + str(saved) if saved > 1 else 'one process, no torchrun'})")


def _loss_terms(model, batch):
    # DDP searches the output for the tensors whose graph holds the used parameters: the
    # loss is handed to it on its own, whatever else the model's output type holds.
    out = model.loss_terms(batch)
    return (out.loss if isinstance(out, LossOutput) else None), out


class _Step(torch.nn.Module):
    """What ``DistributedDataParallel`` wraps: ``forward(fn, *args) = fn(model, *args)``,
    so the trainers' own entry points (``loss_terms``, ``pretrain_losses``) run through
    DDP's forward (which prepares the gradient reduction) without a change to the model."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args):
        return fn(self.model, *args)


@dataclass
class Distributed:
    """The process group of a data-parallel run (see the module docstring)."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: str
    owns_group: bool = False  # this object initialised the group (and closes it)
    closed: bool = False  # close() destroyed the group this object had initialised

    # ------------------------------------------------------------------ start and end
    @classmethod
    def setup(cls, setting: bool | None, device: str, *, timeout_s: float | None = None) -> "Distributed | None":
        """The run's :class:`Distributed`, or None for one process.

        Args:
            setting: None (detect: torchrun's environment or an initialised group with
                more than one process), True (required), False (one process).
            device: the configured device (``cpu``, ``cuda``, ``cuda:1``).
            timeout_s: collective timeout of a group this call initialises (None:
                torch's default).

        Raises:
            ValueError: ``setting`` is not None/True/False; True without torchrun's
                environment or a process group; a bad environment; CUDA asked for
                where there is none.
        """
        if setting not in (None, True, False):
            raise ValueError(f"distributed must be None (detect), True or False, got {setting!r}")
        if setting is False:
            return None
        if dist.is_available() and dist.is_initialized():
            world, rank = dist.get_world_size(), dist.get_rank()
            local = (torchrun_world() or (rank, world, rank))[2]
            if world == 1:
                return None
            backend = dist.get_backend()
            dev = rank_device(device, local)
            if backend == "nccl" and torch.device(dev).type != "cuda":
                raise ValueError(f"the process group uses NCCL, which moves CUDA tensors only; device {device!r} "
                                 "is not a CUDA device (use gloo for the CPU)")
            return cls(rank, world, local, backend, dev, owns_group=False)
        env = torchrun_world()
        if env is None or env[1] == 1:
            if setting is True and env is None:
                raise ValueError("distributed=True, but this process was not started by torchrun (no RANK / "
                                 f"WORLD_SIZE in the environment) and torch.distributed is not initialised: start "
                                 f"it with {LAUNCH}")
            return None
        if not dist.is_available():
            raise ValueError("this torch was built without torch.distributed")
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise ValueError(f"the environment sets {ENV_WORLD} but not {', '.join(missing)}: start the processes "
                             f"with {LAUNCH}")
        rank, world, local = env
        backend = choose_backend(device)
        dev = rank_device(device, local)
        if backend == "nccl":
            torch.cuda.set_device(torch.device(dev))
        kwargs = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world, **kwargs)
        group = cls(rank, world, local, backend, dev, owns_group=True)
        # A group still open when the interpreter shuts down (a Trainer used only to
        # evaluate: no fit() closes it) is closed before the shutdown, while Python is alive.
        atexit.register(group.close)
        return group

    def close(self) -> None:
        """Destroy the process group when this object created it (a group the caller
        initialised is left as it is)."""
        if self.owns_group:
            atexit.unregister(self.close)
            if dist.is_initialized():
                # What still holds the group from a reference cycle (a trainer and its DDP
                # reducer) is freed now. Left to the interpreter's shutdown, gloo's threads die
                # with their work and abort the process, "terminate called without an active
                # exception" (pytorch/pytorch#190489).
                gc.collect()
                dist.destroy_process_group()
            self.owns_group = False
            self.closed = True

    def check_open(self, what: str) -> None:
        """Raise RuntimeError when the group this object initialised was destroyed."""
        if self.closed:
            raise RuntimeError(f"{what}: the process group this trainer initialised was destroyed when its fit() "
                               "ended; to keep using DDP after fit(), initialise the group yourself "
                               "(torch.distributed.init_process_group) before creating the trainer")

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    @property
    def group(self):
        return dist.group.WORLD

    def _comm_device(self) -> torch.device:
        return torch.device(self.device) if self.backend == "nccl" else torch.device("cpu")

    # ------------------------------------------------------------------ model
    def wrap(self, model: torch.nn.Module) -> torch.nn.parallel.DistributedDataParallel:
        """``model`` inside DDP (its parameters are broadcast from rank 0 now, so every
        rank starts from the same weights). ``find_unused_parameters``: a model may leave
        parameters out of a loss (DIF-SR without attribute predictors, S3-Rec's
        disabled objectives)."""
        dev = torch.device(self.device)
        return torch.nn.parallel.DistributedDataParallel(
            _Step(model), device_ids=[dev] if dev.type == "cuda" else None, broadcast_buffers=False,
            find_unused_parameters=True)

    def check_batch_size(self, batch_size: int, what: str) -> None:
        if batch_size < self.world_size:
            raise ValueError(f"{what} {batch_size} is the global batch (all ranks together) and must be at least "
                             f"the world size {self.world_size}, so that every rank has rows")

    def seed_rank(self, seed: int) -> None:
        """Give this rank its own torch RNG stream (dropout): rank 0 keeps ``seed``'s (as
        one process), rank r > 0 a stream derived from (seed, r)."""
        if self.rank > 0:
            torch.manual_seed(int(np.random.SeedSequence([int(seed) % 2**64, self.rank]).generate_state(1,
                                                                                                          np.uint64)[0]))

    # ------------------------------------------------------------------ batches
    def train_batches(self, split, batch_size: int, *, seed: int, epoch: int, num_negatives: int,
                      negatives="uniform", with_log_q: bool = False) -> Iterator:
        """This rank's rows of each global training step of ``epoch`` (one batch per step
        on every rank; see the module docstring). ``negatives`` and ``with_log_q`` as in
        :func:`seqrec.data.splits.build_train_batch`; in-batch negatives are drawn from
        this rank's rows (not from the whole global batch as in one process)."""
        from ..data.splits import build_train_batch
        from ..data.torch_data import ShardedTrainBatches

        self.check_batch_size(batch_size, "batch_size")
        sharded = ShardedTrainBatches(split, batch_size, seed=seed, epoch=epoch, num_negatives=num_negatives,
                                      negatives=negatives, with_log_q=with_log_q, rank=self.rank,
                                      world_size=self.world_size)
        mine = iter(sharded)
        order = None
        for step in range(sharded.num_steps):
            batch = next(mine, None)
            self._idle = batch is None
            if batch is None:  # fewer users than ranks in the last step: a stand-in row of weight 0
                order = split.train_order(seed, epoch) if order is None else order
                batch = build_train_batch(split, order[step * batch_size:step * batch_size + 1], seed=seed,
                                          epoch=epoch, num_negatives=num_negatives, negatives=sharded.sampler,
                                          with_log_q=with_log_q)
            yield batch

    def pretrain_rows(self, masked, step_size: int):
        """This rank's rows ``r::W`` of a corrupted global batch (a NamedTuple of [B, ...]
        tensors); a rank without a row gets row 0 with weight zero."""
        self._idle = self.rank >= step_size
        rows = slice(0, 1) if self._idle else slice(self.rank, None, self.world_size)
        return type(masked)(*(t[rows] for t in masked))

    # ------------------------------------------------------------------ steps
    def combine(self, loss: torch.Tensor, weight: torch.Tensor | float, mode: str = "mean"
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(global_loss, share)`` of one step, from this rank's scalar ``loss`` and
        ``weight`` (what the loss averages over; ignored with ``mode="sum"``).

        ``global_loss``: a tensor whose value is the loss of the whole global batch (the
        same on every rank) and whose gradient is that of this rank's part of it, scaled
        for DDP's averaging; back-propagate it. ``share``: this rank's fraction of the
        step's weight (what its scalar terms are multiplied by before summing over ranks).
        """
        idle = getattr(self, "_idle", False)
        weight = torch.as_tensor(0.0 if idle else weight, dtype=torch.float64, device=loss.device)
        if mode == "sum":
            weight = torch.ones_like(weight) * (0.0 if idle else 1.0)
        elif mode != "mean":
            raise ValueError(f"mode must be 'mean' or 'sum', got {mode!r}")
        local = loss.detach().double()
        # An idle rank's stand-in row adds nothing (0 x a finite loss).
        pair = torch.stack([torch.where(weight > 0, local * weight, torch.zeros_like(local)), weight])
        pair = pair.to(self._comm_device())
        dist.all_reduce(pair)
        pair = pair.to(loss.device)
        if mode == "mean":
            total_weight = pair[1].clamp_min(1.0)  # 0 only when no rank has a target: the loss is 0 then
            share, value = weight / total_weight, pair[0] / total_weight
        else:
            share, value = weight, pair[0]
        # DDP divides the summed gradients by W: multiply back.
        scaled = loss * (share * self.world_size).to(loss.dtype)
        value = value.to(loss.dtype)
        return scaled + (value - scaled).detach(), share

    def loss_terms(self, module, batch) -> LossOutput:
        """``model.loss_terms(batch)`` through DDP (``module``, from :meth:`wrap`), combined
        over the ranks by :meth:`combine` with the rank's target positions as weight; the
        scalar terms come back multiplied by the rank's share (sum them over the ranks:
        :meth:`sum_tensors`)."""
        _, out = module(_loss_terms, batch)
        if not isinstance(out, LossOutput):
            return out  # the trainer names the wrong type
        count = (batch.target_ids > 0).sum()
        loss, share = self.combine(out.loss, count)
        terms = {k: v * share.to(v.dtype) if v.dim() == 0 and v.is_floating_point() else v
                 for k, v in out.terms.items()}
        return LossOutput(loss, terms)

    def pretrain_losses(self, module, masked) -> tuple[dict, torch.Tensor]:
        """``(per-objective losses x this rank's share, global weighted loss)`` of S3-Rec
        pretraining through DDP. Losses summed over positions (``reduction="sum"``, the
        authors') are summed over the ranks: exactly one process's. Averaged ones
        (``"mean"``) are weighted by the ranks' rows, which is not the same average (each
        objective averages over its own positions): close, not equal."""
        def step(model, batch):
            losses = model.pretrain_losses(batch)
            return losses, model.weighted_loss(losses)

        losses, loss = module(step, masked)
        mode = "mean" if getattr(module.module.model.config, "reduction", "sum") == "mean" else "sum"
        loss, share = self.combine(loss, masked[0].shape[0], mode)
        return {k: v.detach() * share.to(v.dtype) for k, v in losses.items()}, loss

    def sum_tensors(self, values: dict) -> dict:
        """``values`` (scalars or 0-dim tensors, the same names on every rank) summed over
        the ranks, in one ``all_reduce``."""
        names = sorted(values)
        if not names:
            return {}
        packed = torch.stack([torch.as_tensor(values[n], dtype=torch.float64).reshape(()).cpu() for n in names])
        packed = packed.to(self._comm_device())
        dist.all_reduce(packed)
        return dict(zip(names, packed.cpu().tolist()))

    # ------------------------------------------------------------------ rank 0's work
    def _outcome(self, error: BaseException | None) -> None:
        message = [None if error is None else f"{type(error).__name__}: {error}"]
        dist.broadcast_object_list(message, src=0)
        if error is not None:
            raise error
        if message[0] is not None:
            raise RankZeroFailed(f"rank 0 failed: {message[0]}")

    def on_writer(self, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` on rank 0 (its result; None elsewhere); every rank
        raises when it failed (rank 0 its own error, the others :class:`RankZeroFailed`)."""
        result, error = None, None
        if self.is_writer:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - re-raised below, after the others are told
                error = exc
        self._outcome(error)
        return result

    def from_writer(self, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` computed on rank 0 and broadcast to every rank (a
        picklable result, e.g. a checkpoint read from the run folder)."""
        result = self.on_writer(fn, *args, **kwargs)
        box = [result]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_rng(self) -> list:
        """Every rank's torch RNG state (for the checkpoint), on every rank."""
        states = [None] * self.world_size
        dist.all_gather_object(states, torch.get_rng_state())
        return states
