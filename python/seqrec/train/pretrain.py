"""Self-supervised pretraining loop (S3-Rec, DSS): samples, epochs, checkpoints that resume.

The pretraining samples are the S3-Rec authors' (``PretrainDataset.split_sequence``): for
every user, the training part of the sequence (the valid and test items removed, the
last ``max_len`` kept) and every prefix of it; ``samples="users"`` keeps one sample per
user instead; ``samples="windows"`` (DSS pretraining, the DSSRec reading) cuts each
whole training part into windows of ``max_len`` items, ``window_step * max_len`` apart.
Batches are cut from the dataset's CSR arrays with one vectorised gather, then corrupted
by the model's ``corrupt`` (S3-Rec: one ``seq_mask`` call; DSS: a split point per
sample), so no Python runs per sample.

Everything random but dropout is a pure function of ``(seed, epoch, batch)``: the sample
order of an epoch and each batch's corruption seed. A checkpoint written at the end of
every epoch holds the model, the optimizer, the torch RNG (dropout) and the history, so
``resume()`` continues a killed run exactly as if it had not stopped (on CPU).

With ``keep_every=N`` the weights after every N-th epoch are also kept, as
``pretrain-epoch<N>.pt``: as the S3-Rec authors keep every 10th epoch and fine-tune from
the one they choose, one long run then gives every shorter budget too (the first 50
epochs of a 150-epoch run are the 50-epoch run, weight for weight on CPU, as the run is a
pure function of its seed). A snapshot holds the weights, not the optimizer: ``seqrec train --init`` reads it,
``resume()`` never does.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data import SequenceDataset
from ..progress import progress_bar
from ..utils import release_freed_memory, save_torch, write_jsonl
from . import optim
from .distributed import Distributed, check_world_size
from .trainer import check_finite_parameters, compiled_step, non_finite_loss_message

__all__ = ["PretrainConfig", "PretrainSamples", "Pretrainer", "PRETRAIN_CHECKPOINT", "PRETRAIN_LOG",
           "SNAPSHOT_NAME", "CHECKPOINT_KIND"]

PRETRAIN_CHECKPOINT = "pretrain.pt"
PRETRAIN_LOG = "pretrain.jsonl"
SNAPSHOT_NAME = "pretrain-epoch{epoch}.pt"  # with PretrainConfig.keep_every
CHECKPOINT_KIND = "pretrain"
# Every file a pretraining run writes into its folder (what --overwrite replaces).
RUN_FILES = re.compile(re.escape(PRETRAIN_CHECKPOINT) + "|" + re.escape(PRETRAIN_LOG) + "|"
                       + re.escape(SNAPSHOT_NAME).replace(re.escape("{epoch}"), r"\d+"))
SAMPLE_KINDS = ("prefixes", "users", "windows")


@dataclass
class PretrainConfig:
    """Pretraining optimisation settings (defaults: the S3-Rec authors')."""

    epochs: int = 150
    batch_size: int = 100
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    samples: str = "prefixes"
    seed: int = 42
    device: str = "cpu"
    grad_clip: float | None = None
    progress: bool | None = None  # None: seqrec.progress.progress_enabled decides
    keep_every: int = 0  # also keep the weights of every keep_every-th epoch (0: only the last)
    # DDP (seqrec.train.distributed): None detects torchrun, True requires it, False: one
    # process. batch_size is then the global batch; every rank corrupts it whole (seq_mask
    # draws from the batch) and keeps its rows.
    distributed: bool | None = None
    compile: bool = False  # torch.compile(fullgraph=True) of pretrain_losses (see TrainConfig.compile)
    # "none" or "bf16": torch.autocast of the forward (TrainConfig.autocast's, without fp16,
    # whose gradient scaler this loop does not run).
    autocast: str = "none"
    window_step: float = 0.5  # samples="windows": windows start window_step * max_len items apart

    def __post_init__(self):
        for name, least in (("epochs", 1), ("batch_size", 1), ("keep_every", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"PretrainConfig.{name} must be an int >= {least}, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"PretrainConfig.lr must be > 0, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"PretrainConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"PretrainConfig.compile must be True or False, got {self.compile!r}")
        if self.autocast not in ("none", "bf16"):
            raise ValueError(f"PretrainConfig.autocast must be one of ['none', 'bf16'], got {self.autocast!r}")
        if self.samples not in SAMPLE_KINDS:
            raise ValueError(f"PretrainConfig.samples must be one of {SAMPLE_KINDS}, got {self.samples!r}")
        if isinstance(self.window_step, bool) or not (isinstance(self.window_step, (int, float))
                                                      and 0 < self.window_step <= 1):
            raise ValueError(f"PretrainConfig.window_step must be a number in (0, 1], got {self.window_step!r}")
        self.betas = tuple(self.betas)
        if self.distributed not in (None, True, False):
            raise ValueError(f"PretrainConfig.distributed must be None (detect torchrun), True or False, "
                             f"got {self.distributed!r}")


class PretrainSamples:
    """The pretraining samples of a dataset, as (start, length) windows into its items.

    Args:
        dataset: the dataset; user ``u``'s training part is its sequence without the last
            two items (valid and test targets), of which the last ``max_len`` are kept.
        max_len: longest sample.
        kind: ``"prefixes"`` (every prefix of each training part, the authors') or
            ``"users"`` (the whole training part once), or ``"windows"``: the whole
            training part (not only its last ``max_len`` items) cut into windows of
            ``max_len`` items, the last ending at the part's end and each earlier one
            ``step`` items before, down to one starting at the part's first item (a
            part of at most ``max_len`` items is one window); parts shorter than 2
            items are left out (a DSS sample is split into an input and a future).
        window_step: ``"windows"``: the step as a fraction of ``max_len`` (floor, at
            least 1 item), 0.5 as DSSRec.
    """

    def __init__(self, dataset: SequenceDataset, max_len: int, kind: str = "prefixes", window_step: float = 0.5):
        if kind not in SAMPLE_KINDS:
            raise ValueError(f"samples must be one of {SAMPLE_KINDS}, got {kind!r}")
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.items = dataset.items
        self.max_len = int(max_len)
        whole = np.maximum(dataset.lengths - 2, 0)  # the training part: all but the valid and test items
        part = np.minimum(whole, max_len)  # its last max_len items
        begin = dataset.indptr[1:] - 2 - part  # first item of the part
        users = np.flatnonzero(part > 0)
        if kind == "windows":
            if max_len < 2:
                raise ValueError(f"samples='windows' needs max_len >= 2 (a sample is split into an input and a "
                                 f"future), got {max_len}")
            step = max(1, math.floor(window_step * max_len))
            users = np.flatnonzero(whole >= 2)
            extra = whole[users] - max_len  # > 0: the part is longer than one window
            counts = np.where(extra > 0, -(-extra // step) + 1, 1)  # ceil(extra / step) later starts, plus 0
            first = np.repeat(dataset.indptr[:-1][users], counts)
            i = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)  # window index per user
            last = i == np.repeat(counts - 1, counts)
            offset = np.where(last, 0, np.repeat(extra, counts) - i * step)
            starts, lengths = first + offset, np.repeat(np.minimum(whole[users], max_len), counts)
        elif kind == "users":
            starts, lengths = begin[users], part[users]
        else:  # prefix j (1..part) of user u: items begin..begin+j-1
            counts = part[users]
            starts = np.repeat(begin[users], counts)
            lengths = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + 1
        if len(starts) == 0:
            need = 4 if kind == "windows" else 3
            raise ValueError(f"{dataset.name}: no user has the {need} interactions a pretraining sample "
                             "needs (two are held out for validation and test)")
        self.starts = np.ascontiguousarray(starts, dtype=np.int64)  # [S] first item of each sample
        self.lengths = np.ascontiguousarray(lengths, dtype=np.int64)  # [S] its length

    def __len__(self) -> int:
        return len(self.starts)

    def batch(self, index) -> torch.Tensor:
        """Samples ``index`` [B] (ints) as a [B, n] int64 batch, LEFT-padded with 0, n = the
        longest. Positions are right-aligned in the models, so the width changes no output.
        (NumPy: a few small array ops cost less than as many torch dispatches.)"""
        index = np.asarray(index, dtype=np.int64)
        starts, lengths = self.starts[index], self.lengths[index]
        n = max(int(lengths.max()), 1) if len(index) else 1
        cols = np.arange(n)
        pad = (n - lengths)[:, None]  # [B, 1]
        src = starts[:, None] + cols - pad  # [B, n]
        return torch.from_numpy(np.where(cols >= pad, self.items[np.maximum(src, 0)], 0))


_MASK64 = (1 << 64) - 1


class _NoSchedule:
    """PretrainConfig has no schedule fields: a scheduler comes only as an argument."""

    scheduler, warmup_steps = "none", 0


def _mix64(z: int) -> int:  # splitmix64's finaliser
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """The ``seq_mask`` seed of one batch: a 64-bit hash of (seed, epoch, batch)."""
    return _mix64(_mix64(_mix64(int(seed) & _MASK64) ^ int(epoch)) ^ int(batch))


class Pretrainer:
    """Pretrain ``model`` (an :class:`~seqrec.models.S3Rec`, a :class:`~seqrec.models.DSS`,
    or anything with their ``corrupt`` / ``pretrain_losses`` / ``weighted_loss`` methods:
    ``corrupt`` returns a NamedTuple of tensors) on ``dataset``.

    With ``out_dir``: ``pretrain.pt`` (checkpoint, written atomically after every epoch),
    ``pretrain.jsonl`` (one JSON line per epoch: mean weighted loss and per-objective
    losses per batch, seconds, samples) and, with ``config.keep_every``, the snapshots
    ``pretrain-epoch<N>.pt`` (:meth:`snapshot_path`).
    """

    def __init__(self, model: torch.nn.Module, dataset: SequenceDataset, config: PretrainConfig,
                 out_dir: str | Path | None = None, model_spec: dict | None = None, *, optimizer=None,
                 scheduler=None):
        # [DDP] under torchrun: this rank's device, the process group, the DDP-wrapped model.
        self.ddp = Distributed.setup(config.distributed, config.device)
        try:
            self._init(model, dataset, config, out_dir, model_spec, optimizer, scheduler)
        except BaseException:
            if self.ddp is not None:  # a group this trainer initialised ends with it
                self.ddp.close()
            raise

    def _init(self, model, dataset, config, out_dir, model_spec, optimizer, scheduler) -> None:
        if self.ddp is not None:
            if not hasattr(model.config, "reduction"):  # [DDP] combine() knows S3-Rec's losses only
                raise ValueError(f"distributed pretraining is S3-Rec's; {type(model).__name__}'s pretraining "
                                 "losses are batch means (DSS: its confidence cut ranks the whole batch), which "
                                 "the ranks' rows do not add up to: run it in one process")
            self.ddp.check_batch_size(config.batch_size, "PretrainConfig.batch_size")
            if self.ddp.device != config.device:
                config = replace(config, device=self.ddp.device)
        self.model = model.to(config.device)
        self._ddp_model = self.ddp.wrap(self.model) if self.ddp is not None else None
        self.config = config
        self.samples = PretrainSamples(dataset, model.config.max_len, config.samples, config.window_step)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.model_spec = model_spec or {}
        # As the Trainer's (seqrec.train.optim): an optimizer or a factory f(params), default
        # fused Adam; a scheduler or a factory f(optimizer), stepped per optimizer step.
        self.optimizer = optim.resolve_optimizer(optimizer, model, config)
        self.scheduler = optim.resolve_scheduler(scheduler, self.optimizer, _NoSchedule, self.num_batches()) \
            if scheduler is not None else None
        self.precision = optim.MixedPrecision(config.autocast, config.device)
        # None: eager, model.pretrain_losses looked up at every step.
        self._compiled_losses = compiled_step(model.pretrain_losses, True) if config.compile else None
        self.epoch = 0
        self.history: list[dict] = []
        self._seeded = False

    def num_batches(self) -> int:
        return -(-len(self.samples) // self.config.batch_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The sample order of ``epoch``: a pure function of (seed, epoch)."""
        rng = np.random.default_rng([int(self.config.seed) % 2**64, int(epoch)])
        return rng.permutation(len(self.samples))

    def batches(self, epoch: int):
        """Yield ``(batch_index, item_seq [B, n] on the CPU)`` of ``epoch``."""
        order, size = self.epoch_order(epoch), self.config.batch_size
        for b in range(self.num_batches()):
            yield b, self.samples.batch(order[b * size:(b + 1) * size])

    def train_epoch(self, epoch: int) -> dict:
        cfg, model = self.config, self.model
        model.train()
        sums: dict[str, float] = {}
        count = 0
        bar = progress_bar(self.batches(epoch), progress=cfg.progress, total=self.num_batches(),
                           desc=f"pretrain {epoch + 1}", leave=False)
        for b, seq in bar:
            # Corruption on the CPU (the data side; seq_mask has no CUDA kernel yet), then
            # the whole batch (a NamedTuple of tensors) moves to the model's device at once.
            masked = model.corrupt(seq, seed=batch_seed(cfg.seed, epoch, b))
            if self.ddp is not None:  # [DDP] this rank's rows of the corrupted global batch
                masked = self.ddp.pretrain_rows(masked, len(seq))
            if cfg.device != "cpu":
                masked = type(masked)(*(t.to(cfg.device, non_blocking=True) for t in masked))
            with self.precision.autocast():
                if self.ddp is None:
                    losses = (self._compiled_losses or model.pretrain_losses)(masked)
                    loss = model.weighted_loss(losses)
                else:  # [DDP] through DistributedDataParallel (eager); loss: the global batch's
                    losses, loss = self.ddp.pretrain_losses(self._ddp_model, masked)
            if not torch.isfinite(loss):
                raise FloatingPointError(non_finite_loss_message(
                    f"pretraining epoch {epoch + 1}, step {b + 1} of {self.num_batches()}", loss.item(), cfg.lr,
                    self.out_dir is not None))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            for name, value in (("loss", loss), *losses.items()):
                sums[name] = sums.get(name, 0.0) + value.item()
            count += 1
            bar.set_postfix(loss=f"{sums['loss'] / count:.4f}", refresh=False)
        check_finite_parameters(model, f"pretraining epoch {epoch + 1}", cfg.lr, self.out_dir is not None)
        if self.ddp is not None:  # [DDP] each rank summed its share of every objective
            sums = self.ddp.sum_tensors({k: v for k, v in sums.items() if k != "loss"}) | {"loss": sums["loss"]}
        return {k: v / max(count, 1) for k, v in sums.items()}

    def fit(self, *, on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
        """Pretrain until ``config.epochs``; returns the history (one dict per epoch).

        [DDP] A process group this trainer initialised (from torchrun's environment) is
        destroyed when ``fit()`` returns or raises; one the caller initialised stays."""
        if self.ddp is not None:
            self.ddp.check_open("Pretrainer.fit")
        try:
            return self._fit(on_epoch)
        finally:
            if self.ddp is not None:  # [DDP] as Trainer.fit: the wrapper, then a group this pretrainer initialised
                if self.ddp.owns_group:
                    self._ddp_model = None
                self.ddp.close()

    def _fit(self, on_epoch: Callable[[dict], None] | None) -> list[dict]:
        if self.epoch == 0 and not self._seeded:
            torch.manual_seed(self.config.seed)  # dropout
            if self.ddp is not None:
                self.ddp.seed_rank(self.config.seed)  # [DDP] each rank its own dropout stream
            self._seeded = True
        while self.epoch < self.config.epochs:
            start = time.perf_counter()
            record = {"epoch": self.epoch + 1, **self.train_epoch(self.epoch)}
            record["seconds"] = time.perf_counter() - start
            record["samples"] = len(self.samples)
            self.epoch += 1
            self.history.append(record)
            # Snapshot, checkpoint, log, in that order: a run killed between two of them
            # redoes the epoch on resume, so none is ever missing for an epoch the
            # checkpoint or the log has passed.
            if self.config.keep_every and self.epoch % self.config.keep_every == 0:
                self.save_snapshot()
            self.save_checkpoint()
            self._log()
            release_freed_memory()  # the RSS returns to what is in use at every epoch's end
            if on_epoch is not None:
                on_epoch(record)
        return self.history

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        return {
            "format": 1,
            "kind": CHECKPOINT_KIND,
            "model_spec": self.model_spec,
            "pretrain_config": asdict(self.config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "optimizer_class": type(self.optimizer).__qualname__,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch": self.epoch,
            "history": self.history,
            "rng": {"torch": torch.get_rng_state()},
            "world_size": 1 if self.ddp is None else self.ddp.world_size,
        }

    def _on_writer(self, fn, *args, **kwargs):
        """[DDP] rank 0 alone writes into the run folder; one process writes."""
        return fn(*args, **kwargs) if self.ddp is None else self.ddp.on_writer(fn, *args, **kwargs)

    def save_checkpoint(self) -> None:
        if self.out_dir is None:
            return
        state = self.state_dict()
        if self.ddp is not None:  # [DDP] every rank's dropout stream, for an exact resume
            state["rng_ranks"] = self.ddp.gather_rng()
        self._on_writer(save_torch, state, self.out_dir / PRETRAIN_CHECKPOINT)  # atomic, checksummed

    def snapshot_path(self, epoch: int) -> Path | None:
        """Where the weights after ``epoch`` are kept (with ``config.keep_every``)."""
        return None if self.out_dir is None else self.out_dir / SNAPSHOT_NAME.format(epoch=epoch)

    def save_snapshot(self) -> None:
        """The weights after this epoch, for ``seqrec train --init``: a checkpoint without
        the optimizer and RNG (not resumable; ``pretrain.pt`` is)."""
        if self.out_dir is None:
            return
        state = {k: v for k, v in self.state_dict().items()
                 if k not in ("optimizer", "optimizer_class", "scheduler", "rng")}
        self._on_writer(save_torch, state, self.snapshot_path(self.epoch))

    def _log(self) -> None:
        if self.out_dir is None:
            return
        self._on_writer(write_jsonl, self.out_dir / PRETRAIN_LOG, self.history)  # rewritten whole: no torn line; checksummed lines

    # Settings a resumed pretraining run may change.
    RESUME_MAY_CHANGE = frozenset({"epochs", "device", "progress", "keep_every", "distributed", "compile"})

    def resume(self) -> bool:
        """Continue from ``out_dir/pretrain.pt`` if it exists; True when resumed.

        Raises:
            ValueError: not a pretraining checkpoint, or one of another model
                configuration or other settings than ``RESUME_MAY_CHANGE``."""
        if self.out_dir is None:
            return False
        from .trainer import check_resumable, load_checkpoint

        path = self.out_dir / PRETRAIN_CHECKPOINT
        read = lambda: load_checkpoint(path) if path.exists() else None  # noqa: E731
        if self.ddp is not None:
            self.ddp.check_open("Pretrainer.resume")
        # [DDP] rank 0 reads the run folder; every rank gets its checkpoint
        state = read() if self.ddp is None else self.ddp.from_writer(read)
        if state is None:
            return False
        check_world_size(path, state.get("world_size"), 1 if self.ddp is None else self.ddp.world_size)
        if state.get("kind") != CHECKPOINT_KIND:
            raise ValueError(f"{path}: not a pretraining checkpoint")
        check_resumable(path, state.get("pretrain_config", {}), asdict(self.config), state.get("model_spec", {}),
                        self.model_spec, self.RESUME_MAY_CHANGE)
        saved_class = state.get("optimizer_class")
        if saved_class is not None and saved_class != type(self.optimizer).__qualname__:
            raise ValueError(f"{path}: cannot resume: the checkpoint's optimizer is {saved_class}, this run's is "
                             f"{type(self.optimizer).__qualname__}")
        if (self.scheduler is None) != (state.get("scheduler") is None):
            raise ValueError(f"{path}: cannot resume: the checkpoint was trained "
                             + ("without a learning-rate schedule, this run has one" if self.scheduler is not None
                                else "with a learning-rate schedule, this run has none"))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = state["epoch"]
        self.history = state["history"]
        torch.set_rng_state(state["rng"]["torch"] if self.ddp is None else state["rng_ranks"][self.ddp.rank])
        self._seeded = True
        return True
