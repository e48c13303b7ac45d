"""Training loop: Adam, periodic validation, early stopping, checkpoints that resume exactly.

The trainer drives a :class:`~seqrec.models.base.SequentialRecommender` (every seqrec
next-item model is one; a model of your own subclasses it):

* ``model.loss_terms(batch) -> LossOutput`` on a :class:`~seqrec.data.TrainBatch`
  batch (the total under ``.loss``, named scalars under ``.terms``);
* ``model.score(input_ids, lengths) -> [B, num_items + 1]`` full-ranking scores, and
  ``model.score(input_ids, lengths, items=[B, C]) -> [B, C]`` candidate scores.

Resume is exact on CPU: the epoch's user order and negatives are pure functions of
(seed, epoch) (see :meth:`LeaveOneOutSplit.train_batches`), and a checkpoint written at
the end of every epoch holds the model, the optimizer, every RNG state, the early-stop
state and the history (and the learning-rate schedule and fp16 gradient scaler where
used). A run killed mid-epoch restarts that epoch from its beginning with the same RNG
state, so it ends with exactly the metrics of an uninterrupted run. Gradient
accumulation groups never cross an epoch's end, so an epoch boundary holds no
half-accumulated gradient.

Extension points (see :mod:`seqrec.train.optim` and :mod:`seqrec.train.callbacks`):
``Trainer(..., optimizer=, scheduler=, callbacks=, loggers=)``; the config's
``scheduler``/``warmup_steps``, ``grad_clip``, ``accumulate`` and ``autocast``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import re
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..data.split import LeaveOneOutSplit
from ..eval import Protocol, evaluate_full_ranking, evaluate_sampled
from ..eval.distributed import LOCAL
from ..eval.metrics import LIST_METRICS, _check_extra
from ..eval.memory import default_eval_memory, parse_memory
from ..models.base import LossOutput
from ..progress import progress_bar, progress_enabled, progress_stream
from ..utils import ChecksumError, load_torch, release_freed_memory, save_torch, write_json
from .distributed import Distributed, check_world_size
from . import optim
from .callbacks import CSV_NAME, LOG_NAME, Callback, Checkpoint, EarlyStopping, JSONLinesLogger, LambdaCallback

CHECKPOINT_NAME = "checkpoint.pt"
RESULT_NAME = "result.json"
# Every file a training run writes into its folder (what --overwrite replaces).
RUN_FILES = re.compile("|".join(map(re.escape, (CHECKPOINT_NAME, LOG_NAME, RESULT_NAME, CSV_NAME))))


def compiled_step(fn: Callable, compile: bool, backend: str = "inductor") -> Callable:
    """``fn`` (a model's loss function) or its ``torch.compile(fullgraph=True)``: the
    whole forward and loss in one graph, whose backward AOTAutograd compiles too. Batch
    shapes change from batch to batch (length, the last batch's size): dynamo recompiles
    once and then treats them as dynamic."""
    return torch.compile(fn, fullgraph=True, backend=backend) if compile else fn


@dataclass
class TrainConfig:
    """Optimisation and evaluation settings (plain values, picklable)."""

    epochs: int = 200
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    num_negatives: int = 1
    # Training negatives: "uniform" (unseen items, the C++ engine), "popularity",
    # "in-batch" or a mix ("uniform,popularity:3"); see seqrec.data.negatives.
    train_negatives: str = "uniform"
    # Log-Q correction of a sampled-softmax loss (models whose uses_negative_log_q):
    # None = on for non-uniform negatives (where q varies by item), off for uniform (the
    # models' published settings); True / False force it.
    log_q: bool | None = None
    # Sparse gradients for the item table and a row-wise Adam (seqrec.train.optim): a
    # step's cost follows the rows a batch touched, not the catalogue.
    sparse_embeddings: bool = False
    eval_every: int = 1
    metric: str = "NDCG@20"
    # Protocol of the validation runs that pick the best epoch: "full" ranking, or
    # "sampled" (target vs sampled_negatives), as the S3-Rec authors' sampled-protocol
    # runs do (they select by sampled validation MRR).
    valid_ranking: str = "full"
    patience: int = 10
    ks: tuple[int, ...] = (5, 10, 20)
    # Evaluation blocks (see seqrec.eval.memory): users per score block, and the memory
    # budget that sizes what is not given (None: the machine's). A chunk size without a
    # budget scores whole rows of that many users, as given.
    eval_chunk_size: int | None = None
    eval_memory: int | str | None = None
    exclude_history: bool = True
    sampled_negatives: int = 99
    seed: int = 42
    device: str = "cpu"
    # Clip the gradients' global L2 norm to this before each step (None: no clipping).
    grad_clip: float | None = None
    # Learning-rate schedule, stepped per optimizer step (seqrec.train.optim.build_scheduler):
    # "none", "cosine" (to 0 at the last epoch's end) or "step" (times lr_gamma every
    # lr_step_epochs epochs), after warmup_steps of linear warmup.
    scheduler: str = "none"
    warmup_steps: int = 0
    lr_step_epochs: int = 10
    lr_gamma: float = 0.1
    # Batches whose gradients are summed (each loss divided by the group's size) into one
    # optimizer step; a group never crosses an epoch's end.
    accumulate: int = 1
    # Mixed precision of the training forward pass: "none", "bf16" (CPU and CUDA) or
    # "fp16" (CUDA only, with a gradient scaler). Evaluation runs in the model's precision.
    autocast: str = "none"
    # torch.compile(fullgraph=True) of the training step (forward + loss; AOTAutograd
    # compiles its backward); evaluation stays eager.
    compile: bool = False
    # Opt-in metric families beside HR/NDCG/MRR (seqrec.eval.metrics.EXTRA_METRICS):
    # Precision, MAP (every protocol), Coverage, Gini (full ranking only).
    metrics: tuple[str, ...] = ()
    # None: on where a person watches (a terminal, a notebook), off in CI and logs
    # (seqrec.progress.progress_enabled); True / False force it.
    progress: bool | None = None
    # DDP (seqrec.train.distributed): None detects torchrun (several processes: DDP),
    # True requires it, False keeps one process. batch_size is then the global batch.
    distributed: bool | None = None

    def __post_init__(self):
        if self.distributed not in (None, True, False):
            raise ValueError(f"TrainConfig.distributed must be None (detect torchrun), True or False, "
                             f"got {self.distributed!r}")
        for name in ("epochs", "batch_size", "eval_every", "eval_chunk_size", "sampled_negatives"):
            if getattr(self, name) is None and name == "eval_chunk_size":
                continue
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        from ..data.negatives import parse_negatives

        if isinstance(self.train_negatives, str):
            parse_negatives(self.train_negatives)
        elif not hasattr(self.train_negatives, "sample"):  # a NegativeSampler instance is accepted too
            raise ValueError(f"TrainConfig.train_negatives must be a sampler name or mix, got "
                             f"{self.train_negatives!r}")
        if self.log_q not in (None, True, False):
            raise ValueError(f"TrainConfig.log_q must be None, True or False, got {self.log_q!r}")
        if not isinstance(self.sparse_embeddings, bool):
            raise ValueError(f"TrainConfig.sparse_embeddings must be a bool, got {self.sparse_embeddings!r}")
        if self.sparse_embeddings and self.grad_clip:
            raise ValueError("TrainConfig.grad_clip cannot be combined with sparse_embeddings: torch's "
                             "clip_grad_norm_ does not take the item table's sparse gradient")
        if self.eval_memory is not None:
            parse_memory(self.eval_memory, "TrainConfig.eval_memory")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if self.patience < 0:
            raise ValueError(f"TrainConfig.patience must be >= 0, got {self.patience}")
        self.betas = tuple(self.betas)
        self.ks = tuple(int(k) for k in self.ks)
        if self.valid_ranking not in ("full", "sampled"):
            raise ValueError(f"TrainConfig.valid_ranking must be 'full' or 'sampled', got {self.valid_ranking!r}")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ValueError(f"TrainConfig.grad_clip must be a finite number > 0 or None, got {self.grad_clip}")
        if self.scheduler not in optim.SCHEDULERS:
            raise ValueError(f"TrainConfig.scheduler must be one of {list(optim.SCHEDULERS)}, got {self.scheduler!r}")
        for name, minimum in (("warmup_steps", 0), ("lr_step_epochs", 1), ("accumulate", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"TrainConfig.{name} must be an int >= {minimum}, got {value!r}")
        if not (math.isfinite(self.lr_gamma) and 0 < self.lr_gamma <= 1):
            raise ValueError(f"TrainConfig.lr_gamma must lie in (0, 1], got {self.lr_gamma}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"TrainConfig.compile must be True or False, got {self.compile!r}")
        if self.autocast not in optim.AUTOCAST:
            raise ValueError(f"TrainConfig.autocast must be one of {list(optim.AUTOCAST)}, got {self.autocast!r}")
        if self.autocast == "fp16" and torch.device(self.device).type != "cuda":
            raise ValueError(f"TrainConfig.autocast 'fp16' needs a CUDA device (it scales the loss with a "
                             f"GradScaler, a CUDA feature here), got device {self.device!r}; use 'bf16' on the CPU")
        try:
            self.metrics = _check_extra(self.metrics)
        except ValueError as exc:
            raise ValueError(f"TrainConfig.metrics: {exc}") from None
        if self.valid_ranking == "sampled" and any(m in LIST_METRICS for m in self.metrics):
            raise ValueError(f"TrainConfig.metrics: {[m for m in self.metrics if m in LIST_METRICS]} describe "
                             "full-ranking top-K lists; they cannot be computed with valid_ranking='sampled'")
        ks = self.ks + ((1,) if self.valid_ranking == "sampled" else ())  # sampled runs also report @1
        # Selection maximises the metric: Gini (lower = less concentrated) cannot select.
        valid_metrics = {f"{m}@{k}" for m in ("HR", "NDCG") + tuple(e for e in self.metrics if e != "Gini")
                         for k in ks} | {"MRR"}
        if self.metric not in valid_metrics:
            raise ValueError(f"TrainConfig.metric must be one of {sorted(valid_metrics)}, got {self.metric!r}")


@dataclass
class FitResult:
    best_epoch: int
    best_valid: dict
    test_full: dict
    test_sampled: dict
    history: list = field(default_factory=list)
    protocol_full: str = ""
    protocol_sampled: str = ""


class Trainer:
    """Train ``model`` on ``split`` with ``config``; write checkpoints and a JSON-lines log
    into ``out_dir`` when given.

    Args:
        optimizer: a :class:`torch.optim.Optimizer` over ``model``'s parameters, or a
            factory ``f(params) -> Optimizer`` (e.g. ``functools.partial(torch.optim.AdamW,
            lr=3e-4)``); default: fused Adam with the config's ``lr``, ``betas`` and
            ``weight_decay`` (:func:`seqrec.train.optim.build_optimizer`). With the config's
            ``sparse_embeddings`` it must be a :class:`~seqrec.train.optim.RowwiseAdam`
            (the sparse item table's gradient): any other is refused with a ValueError.
        scheduler: an ``LRScheduler`` over that optimizer, or a factory ``f(optimizer) ->
            LRScheduler``; stepped once per optimizer step. Default: the config's
            ``scheduler`` / ``warmup_steps`` (none: a constant rate).
        callbacks: :class:`~seqrec.train.callbacks.Callback` objects (hooks on train start,
            step end, evaluation end, epoch end, train end).
        loggers: callbacks that write the history; default ``[JSONLinesLogger()]``
            (``out_dir/history.jsonl``); ``[]`` for none. See
            :func:`seqrec.train.callbacks.make_loggers`.
    """

    def __init__(self, model: torch.nn.Module, split: LeaveOneOutSplit, config: TrainConfig,
                 out_dir: str | Path | None = None, model_spec: dict | None = None, *,
                 optimizer: torch.optim.Optimizer | optim.OptimizerFactory | None = None,
                 scheduler=None, callbacks: Sequence[Callback] = (), loggers: Sequence[Callback] | None = None):
        # [DDP] under torchrun: this rank's device, the process group, the DDP-wrapped model.
        self.ddp = Distributed.setup(config.distributed, config.device)
        try:
            self._init(model, split, config, out_dir, model_spec, optimizer, scheduler, callbacks, loggers)
        except BaseException:
            if self.ddp is not None:  # a group this trainer initialised ends with it
                self.ddp.close()
            raise

    def _init(self, model, split, config, out_dir, model_spec, optimizer, scheduler, callbacks, loggers) -> None:
        if self.ddp is not None:
            self.ddp.check_batch_size(config.batch_size, "TrainConfig.batch_size")
            if self.ddp.device != config.device:
                config = dataclasses.replace(config, device=self.ddp.device)
        self.model = model.to(config.device)
        self._ddp_model = self.ddp.wrap(self.model) if self.ddp is not None else None
        self.split = split
        self.config = config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.model_spec = model_spec or {}
        self.optimizer = optim.resolve_optimizer(optimizer, model, config)
        self.steps_per_epoch = -(-split.num_train_batches(config.batch_size) // config.accumulate)
        self.scheduler = optim.resolve_scheduler(scheduler, self.optimizer, config, self.steps_per_epoch)
        self.precision = optim.MixedPrecision(config.autocast, config.device)
        if config.compile and not getattr(model, "compiles_training_step", True):
            reason = getattr(model, "eager_only_reason", "")
            raise ValueError(f"TrainConfig.compile: {type(model).__name__}'s training step runs eagerly only"
                             f"{': ' + reason if reason else ''} (drop --compile)")
        # None: eager, model.loss_terms looked up at every step.
        self._compiled_loss_terms = compiled_step(model.loss_terms, True) if config.compile else None
        # What the compiled step takes from outside its graph (SequentialRecommender's
        # compiled_step_options; a model of one's own may lack it: none).
        self._compiled_step_options = getattr(model, "compiled_step_options", lambda batch: {})
        self.epoch = 0  # epochs completed
        self.global_step = 0  # optimizer steps taken
        self.should_stop = False  # set by a callback (early stopping) to end fit() after this epoch
        self.history: list[dict] = []
        self.early_stopping = EarlyStopping()
        for callback in [*callbacks, *(loggers or ())]:
            if not isinstance(callback, Callback):
                raise TypeError(f"callbacks and loggers must be seqrec.train.callbacks.Callback objects, got "
                                f"{type(callback).__name__}")
        self.loggers = list(loggers) if loggers is not None else [JSONLinesLogger()]
        if self.ddp is not None and not self.ddp.is_writer:
            self.loggers = []  # [DDP] rank 0 alone writes the logs
        # The checkpoint before the loggers: no log runs ahead of what a resume restores.
        self.callbacks: list[Callback] = [self.early_stopping, Checkpoint(), *self.loggers, *callbacks]
        # The sampled protocol needs `sampled_negatives` unseen items for every user, which
        # a small catalogue can lack: find out now rather than after training.
        self.sampled_problem: str | None = split.sampled_shortfall(config.sampled_negatives)
        if self.sampled_problem is not None:
            self.sampled_problem += "; lower sampled_negatives (seqrec: --sampled-negatives)"
            if config.valid_ranking == "sampled":
                raise ValueError(f"sampled validation cannot run: {self.sampled_problem}")
            warnings.warn(f"the sampled protocol will be skipped: {self.sampled_problem}", stacklevel=3)

    # Model selection lives in the EarlyStopping callback; these read it.
    best_metric = property(lambda self: self.early_stopping.best_metric)
    best_epoch = property(lambda self: self.early_stopping.best_epoch)
    best_valid = property(lambda self: self.early_stopping.best_valid)
    best_state = property(lambda self: self.early_stopping.best_state)
    bad_evals = property(lambda self: self.early_stopping.bad_evals)

    def _call(self, hook: str, *args, callbacks: Sequence[Callback] | None = None) -> None:
        for callback in self.callbacks if callbacks is None else callbacks:
            getattr(callback, hook)(self, *args)

    # ------------------------------------------------------------------ protocols
    def protocol(self, ranking: str) -> Protocol:
        cfg = self.config
        return Protocol(ranking=ranking, num_negatives=cfg.sampled_negatives if ranking == "sampled" else 0,
                        seed=cfg.seed, exclude_history=cfg.exclude_history, max_len=self.split.max_len,
                        split=self.split.info.name, negatives=getattr(self.split, "eval_negatives", "uniform"))

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, stage: str, ranking: str = "full") -> dict:
        """Metrics of the current model on ``stage`` ('valid'/'test') under ``ranking``
        ('full' or 'sampled'); they do not depend on the evaluation chunk size."""
        cfg, model = self.config, self.model
        was_training = model.training
        model.eval()
        try:
            batch = self.split.eval_batch(stage)
            inputs = batch.input_ids.to(cfg.device)
            lengths = batch.lengths.to(cfg.device)
            if ranking == "full":
                def score_fn(rows: torch.Tensor) -> torch.Tensor:
                    rows = rows.to(cfg.device)
                    return model.score(inputs[rows], lengths[rows]).float().cpu()

                memory = cfg.eval_memory
                if memory is None and cfg.eval_chunk_size is None:
                    memory = default_eval_memory(cfg.device)
                metrics, _ = evaluate_full_ranking(
                    score_fn, batch.target, batch.history_indptr, batch.history_items, ks=cfg.ks,
                    chunk_size=cfg.eval_chunk_size, exclude_history=cfg.exclude_history, memory=memory,
                    process_group=self._eval_group(),
                    metrics=cfg.metrics)
            elif ranking == "sampled":
                if self.sampled_problem is not None:
                    raise ValueError(f"the sampled protocol cannot run: {self.sampled_problem}")
                cand = torch.from_numpy(self.split.sampled_candidates(stage, cfg.sampled_negatives, cfg.seed))

                def cand_score_fn(rows: torch.Tensor) -> torch.Tensor:
                    rows_d = rows.to(cfg.device)
                    return model.score(inputs[rows_d], lengths[rows_d], items=cand[rows].to(cfg.device)).float().cpu()

                # Coverage and Gini describe full-ranking top-K lists: not computed here.
                metrics, _ = evaluate_sampled(cand_score_fn, len(cand), ks=(1,) + cfg.ks,
                                              chunk_size=cfg.eval_chunk_size or 1024,
                                              metrics=[m for m in cfg.metrics if m not in LIST_METRICS],
                                              process_group=self._eval_group())
            else:
                raise ValueError(f"ranking must be 'full' or 'sampled', got {ranking!r}")
        finally:
            model.train(was_training)
        return metrics

    def _eval_group(self):
        """[DDP] the users are sharded over the ranks, metrics merged exactly; else one process."""
        if self.ddp is None:
            return LOCAL
        self.ddp.check_open("Trainer.evaluate")
        return self.ddp.group

    def evaluate_sampled_or_why(self, stage: str) -> tuple[dict, str]:
        """``(metrics, protocol description)`` of the sampled protocol on ``stage``, or
        ``({}, "not computed: <why>")`` when the catalogue is too small for it."""
        if self.sampled_problem is not None:
            return {}, f"not computed: {self.sampled_problem}"
        return self.evaluate(stage, "sampled"), self.protocol("sampled").describe()

    # ------------------------------------------------------------------ training
    def _train_epoch(self, epoch: int) -> tuple[float, dict[str, float]]:
        """One pass over the training batches: ``(mean loss, mean of each scalar term of
        the model's :class:`LossOutput`)`` (``{}`` for a model without terms)."""
        cfg, model = self.config, self.model
        model.train()
        total, count = 0.0, 0
        term_sums: dict[str, torch.Tensor] = {}  # summed on the device: no sync per term
        num_batches = self.split.num_train_batches(cfg.batch_size)
        batches = self.split.train_batches(cfg.batch_size, seed=cfg.seed, epoch=epoch,
                                           num_negatives=cfg.num_negatives, **self._negative_options())
        if self.ddp is not None:  # [DDP] this rank's rows of each global batch
            batches = self.ddp.train_batches(self.split, cfg.batch_size, seed=cfg.seed, epoch=epoch,
                                             num_negatives=cfg.num_negatives, **self._negative_options())
        bar = progress_bar(batches, progress=cfg.progress, total=num_batches, desc=f"epoch {epoch + 1}", leave=False)
        group_loss = 0.0
        for step, batch in enumerate(bar):
            batch = batch.to(cfg.device)
            # Accumulation: batches [first, first + size) make one step; the last group of
            # an epoch may be smaller, and each loss is divided by its own group's size.
            first = step - step % cfg.accumulate
            size = min(cfg.accumulate, num_batches - first)
            if step == first:
                self.optimizer.zero_grad(set_to_none=True)
            # [DDP] the gradients are all-reduced once per optimizer step, in the backward
            # pass of the group's last batch; the others only add to the local gradients.
            # Both sum to the same global gradient (up to float summation order).
            with (self._ddp_model.no_sync() if self.ddp is not None and step + 1 < first + size
                  else contextlib.nullcontext()):
                with self.precision.autocast():
                    # [DDP] through DistributedDataParallel (eager); .loss is then the global batch's loss
                    if self.ddp is not None:
                        out = self.ddp.loss_terms(self._ddp_model, batch)
                    elif self._compiled_loss_terms is not None:
                        out = self._compiled_loss_terms(batch, **self._compiled_step_options(batch))
                    else:
                        out = model.loss_terms(batch)
                if not isinstance(out, LossOutput):
                    raise TypeError(f"{type(model).__name__}.loss_terms must return a seqrec.models.LossOutput "
                                    f"(the total under .loss), got {type(out).__name__}")
                loss = out.loss
                for name, value in out.terms.items():
                    if value.dim() == 0:
                        term_sums[name] = term_sums.get(name, 0) + value.detach().double()
                if not torch.isfinite(loss):
                    raise FloatingPointError(non_finite_loss_message(
                        f"epoch {epoch + 1}, step {step + 1} of {num_batches}",
                        loss.item(), cfg.lr, self.out_dir is not None))
                self.precision.backward(loss / size if size > 1 else loss)
            loss_value = loss.item()
            group_loss += loss_value
            if step + 1 == first + size:
                self._optimizer_step()
                self._call("on_step_end", self.global_step, group_loss / size)
                group_loss = 0.0
            total += loss_value
            count += 1
            bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
        # A finite loss can still take a step to NaN/Inf weights (an Inf gradient): caught
        # here, before they are validated or saved, rather than as NaN scores later.
        check_finite_parameters(model, f"epoch {epoch + 1}", cfg.lr, self.out_dir is not None)
        if self.ddp is not None:  # [DDP] each rank summed its share of every term
            term_sums = self.ddp.sum_tensors(term_sums)
        return total / max(count, 1), {name: float(v) / max(count, 1) for name, v in term_sums.items()}

    def _optimizer_step(self) -> None:
        """One optimizer step from the accumulated gradients: unscale (fp16), clip, step,
        then the schedule."""
        self.precision.unscale_(self.optimizer)
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.precision.step(self.optimizer)
        if self.scheduler is not None:
            self.scheduler.step()
        self.global_step += 1

    def _negative_options(self) -> dict:
        """``train_batches`` keywords for ``config.train_negatives`` and the log-Q correction."""
        cfg = self.config
        negatives = cfg.train_negatives
        if isinstance(negatives, str) and negatives == "uniform" and not cfg.log_q:
            return {}  # the engine's uniform draws, as ever
        wants = bool(getattr(self.model, "uses_negative_log_q", False))
        with_log_q = wants and (cfg.log_q if cfg.log_q is not None else negatives != "uniform")
        return {"negatives": negatives, "with_log_q": bool(with_log_q)}

    def fit(self, *, on_epoch: Callable[[dict], None] | None = None) -> FitResult:
        """Train until ``epochs`` or early stopping, restore the best model (by the
        validation metric) and evaluate it on the test set, full and sampled.

        ``on_epoch(record)`` is called after every epoch (after the trainer's callbacks; a
        shorthand for ``callbacks=[LambdaCallback(on_epoch_end=...)]``); without one, and
        with progress on (``config.progress``), one line per epoch is printed (loss,
        validation metric).

        [DDP] A process group this trainer initialised (from torchrun's environment) is
        destroyed when ``fit()`` returns or raises; one the caller initialised stays."""
        cfg = self.config
        if self.ddp is not None:
            self.ddp.check_open("Trainer.fit")
        if on_epoch is None and progress_enabled(cfg.progress):
            on_epoch = self._print_epoch
        callbacks = self.callbacks + ([LambdaCallback(on_epoch_end=lambda _, record: on_epoch(record))]
                                      if on_epoch is not None else [])
        try:
            return self._fit(callbacks)
        except BaseException as error:
            # Every callback closes what it opened (a logger's writer); the error goes on.
            for callback in callbacks:
                try:
                    callback.on_exception(self, error)
                except Exception as hook_error:  # noqa: BLE001 - the training error is the one to raise
                    error.add_note(f"while handling it, {type(callback).__name__}.on_exception raised "
                                   f"{type(hook_error).__name__}: {hook_error}")
            raise
        finally:
            if self.ddp is not None:  # [DDP] a group this trainer initialised ends with fit(), its DDP wrapper first
                if self.ddp.owns_group:
                    self._ddp_model = None
                self.ddp.close()

    def _fit(self, callbacks: list[Callback]) -> FitResult:
        cfg = self.config
        if self.epoch == 0 and not self.history:
            _seed_everything(cfg.seed)
            if self.ddp is not None:
                self.ddp.seed_rank(cfg.seed)  # [DDP] each rank its own dropout stream
        self._call("on_train_start", callbacks=callbacks)
        while self.epoch < cfg.epochs and not self.should_stop:
            start = time.perf_counter()
            loss, terms = self._train_epoch(self.epoch)
            record = {"epoch": self.epoch + 1, "loss": loss, "train_seconds": time.perf_counter() - start}
            if terms:
                record["loss_terms"] = terms
            if self.scheduler is not None:  # the rate of the epoch's last step (a constant rate is not logged)
                record["lr"] = self.scheduler.get_last_lr()[0]
            valid = None
            if (self.epoch + 1) % cfg.eval_every == 0 or self.epoch + 1 == cfg.epochs:
                t0 = time.perf_counter()
                valid = self.evaluate("valid", cfg.valid_ranking)
                record["valid"] = valid
                record["eval_seconds"] = time.perf_counter() - t0
            self.epoch += 1
            if valid is not None:  # model selection and early stopping (EarlyStopping)
                self._call("on_eval_end", "valid", cfg.valid_ranking, valid, callbacks=callbacks)
            self.history.append(record)
            release_freed_memory()  # the RSS returns to what is in use at every epoch's end
            # The checkpoint, then the loggers, then the caller's callbacks.
            self._call("on_epoch_end", record, callbacks=callbacks)
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        test_sampled, protocol_sampled = self.evaluate_sampled_or_why("test")
        result = FitResult(
            best_epoch=self.best_epoch, best_valid=self.best_valid, test_full=self.evaluate("test", "full"),
            test_sampled=test_sampled, history=self.history,
            protocol_full=self.protocol("full").describe(), protocol_sampled=protocol_sampled)
        self._call("on_eval_end", "test", "full", result.test_full, callbacks=callbacks)
        if test_sampled:
            self._call("on_eval_end", "test", "sampled", test_sampled, callbacks=callbacks)
        if self.out_dir is not None:  # [DDP] rank 0 alone writes
            self._on_writer(write_json, self.out_dir / RESULT_NAME,
                            asdict(result) | {"model": self.model_spec, "train": asdict(cfg)}, default=str)
        self._call("on_train_end", result, callbacks=callbacks)
        return result

    def _print_epoch(self, record: dict) -> None:
        valid = record.get("valid")
        metric = f", valid {self.config.metric} {valid[self.config.metric]:.4f}" if valid else ""
        print(f"epoch {record['epoch']}/{self.config.epochs}: loss {record['loss']:.4f}{metric} "
              f"({record['train_seconds']:.1f}s)", file=progress_stream(), flush=True)

    # ------------------------------------------------------------------ persistence
    def _on_writer(self, fn, *args, **kwargs):
        """[DDP] rank 0 alone writes into the run folder; one process writes."""
        return fn(*args, **kwargs) if self.ddp is None else self.ddp.on_writer(fn, *args, **kwargs)

    def _callback_states(self) -> dict:
        states = {}
        for callback in self.callbacks:
            if callback is self.early_stopping:
                continue  # saved at the top level, where seqrec evaluate and older checkpoints have it
            state = callback.state_dict()
            if state is not None:
                states[callback.state_key or type(callback).__qualname__] = state
        return states

    def state_dict(self) -> dict:
        return {
            "format": 1,
            "model_spec": self.model_spec,
            "train_config": asdict(self.config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "optimizer_class": type(self.optimizer).__qualname__,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "grad_scaler": self.precision.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            **self.early_stopping.state_dict(),  # best_metric, best_epoch, best_valid, best_state, bad_evals
            "history": self.history,
            "callbacks": self._callback_states(),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            "world_size": 1 if self.ddp is None else self.ddp.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        saved_class = state.get("optimizer_class")
        if saved_class is not None and saved_class != type(self.optimizer).__qualname__:
            raise ValueError(f"cannot resume: the checkpoint's optimizer is {saved_class}, this trainer's is "
                             f"{type(self.optimizer).__qualname__}")
        if (self.scheduler is None) != (state.get("scheduler") is None):
            raise ValueError("cannot resume: the checkpoint was trained " + (
                "without a learning-rate schedule, this run has one" if self.scheduler is not None
                else "with a learning-rate schedule, this run has none"))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.precision.load_state_dict(state.get("grad_scaler"))
        self.epoch = state["epoch"]
        self.global_step = state.get("global_step", 0)
        self.early_stopping.load_state_dict(state)
        self.history = state["history"]
        saved = state.get("callbacks") or {}
        for callback in self.callbacks:
            key = callback.state_key or type(callback).__qualname__
            if callback is not self.early_stopping and key in saved:
                callback.load_state_dict(saved[key])
        torch.set_rng_state(state["rng"]["torch"] if self.ddp is None else state["rng_ranks"][self.ddp.rank])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])

    def save_checkpoint(self) -> None:
        if self.out_dir is None:
            return
        state = self.state_dict()
        if self.ddp is not None:  # [DDP] every rank's dropout stream, for an exact resume
            state["rng_ranks"] = self.ddp.gather_rng()
        self._on_writer(save_torch, state, self.out_dir / CHECKPOINT_NAME)  # atomic, checksummed

    # Settings a resumed run may change: how long it goes on, and where and how it runs
    # (compile: the same step, compiled).
    RESUME_MAY_CHANGE = frozenset({"epochs", "patience", "eval_every", "eval_chunk_size", "eval_memory", "device",
                                  "progress", "distributed", "compile"})

    def resume(self) -> bool:
        """Load ``out_dir/checkpoint.pt`` if it exists; True when a run was resumed.

        Raises:
            ValueError: the checkpoint was trained with another model configuration or
                with other training settings than those outside ``RESUME_MAY_CHANGE``
                (resuming would mix two runs' optimisation or compare different
                validation metrics); the message names the differing settings. Or
                [DDP] it was trained by another number of processes (both named).
        """
        if self.out_dir is None:
            return False
        path = self.out_dir / CHECKPOINT_NAME
        read = lambda: load_checkpoint(path) if path.exists() else None  # noqa: E731
        if self.ddp is not None:
            self.ddp.check_open("Trainer.resume")
        # [DDP] rank 0 reads the run folder; every rank gets its checkpoint
        state = read() if self.ddp is None else self.ddp.from_writer(read)
        if state is None:
            return False
        check_world_size(path, state.get("world_size"), 1 if self.ddp is None else self.ddp.world_size)
        may_change = self.RESUME_MAY_CHANGE
        if self.config.scheduler == "cosine":  # the cosine schedule's horizon is the epoch budget
            may_change = may_change - {"epochs"}
        check_resumable(path, state.get("train_config", {}), asdict(self.config), state.get("model_spec", {}),
                        self.model_spec, may_change)
        self.load_state_dict(state)
        return True


def check_resumable(path, saved: dict, current: dict, saved_spec: dict, current_spec: dict,
                    may_change: frozenset) -> None:
    """Raise ValueError naming every setting (outside ``may_change``) and model field
    (``name``, ``config``) in which a checkpoint's run differs from the one resuming it."""
    def plain(value):  # tuples and lists compare equal (a config read back from a file)
        return list(value) if isinstance(value, (tuple, list)) else value

    differ = sorted(k for k in current.keys() - may_change if k in saved and plain(saved[k]) != plain(current[k]))
    detail = "; ".join(f"{k}: {saved[k]!r} in the checkpoint, {current[k]!r} now" for k in differ)
    if "name" in saved_spec and "name" in current_spec and saved_spec["name"] != current_spec["name"]:
        differ.append("model name")
    elif "config" in saved_spec and "config" in current_spec:
        name = current_spec.get("name")
        saved_config, current_config = (_complete_config(name, spec["config"]) for spec in (saved_spec, current_spec))
        fields = sorted(saved_config.keys() | current_config.keys())
        changed = [f for f in fields if plain(saved_config.get(f)) != plain(current_config.get(f))]
        if changed:
            differ.append("model config")
            detail = "; ".join(filter(None, [detail, *(f"{f}: {saved_config.get(f)!r} in the checkpoint, "
                                                      f"{current_config.get(f)!r} now" for f in changed)]))
    saved_split, current_split = ((spec.get("data") or {}).get("split") for spec in (saved_spec, current_spec))
    if saved_split is not None and current_split is not None and saved_split != current_split:
        differ.append("split")
        detail = "; ".join(filter(None, [detail, f"split: {saved_split} in the checkpoint, {current_split} now"]))
    if differ:
        raise ValueError(f"{path}: cannot resume, the run differs in {', '.join(differ)}"
                         + (f" ({detail})" if detail else "")
                         + "; only " + ", ".join(sorted(may_change)) + " may change")


# Defaults that changed after checkpoints began to be written with only the fields the
# user set (seqrec now stores every field): such a checkpoint was trained with these.
FORMER_DEFAULTS: dict[str, dict] = {"s3rec": {"aap_input": "item"}}


def _complete_config(name: str | None, config: dict) -> dict:
    """``config`` with every field its model's config dataclass defaults (the former
    default where it changed, see ``FORMER_DEFAULTS``), so a checkpoint written before a
    field was added, or that left a field at its default, resumes when the run asks for
    the behaviour the checkpoint was trained with, and only then."""
    from ..models.registry import MODELS

    if not isinstance(config, dict):
        return {"config": config}  # compared as one value
    if name not in MODELS:
        return dict(config)
    try:
        return asdict(MODELS[name][0](**(FORMER_DEFAULTS.get(name, {}) | config)))
    except (TypeError, ValueError):  # not this model's fields: compare the values as given
        return dict(config)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by :class:`Trainer` or :class:`~seqrec.train.Pretrainer`
    (a folder means its ``checkpoint.pt``), after checking its checksum and that every
    floating-point tensor in it is finite. A checkpoint written before seqrec checksummed
    its files loads with a warning.

    Raises:
        FileNotFoundError: no file there.
        ValueError: (:class:`~seqrec.utils.ChecksumError` among them) the file changed
            after it was written, is not a seqrec checkpoint, or holds NaN/Inf values;
            the message names the file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint there")
    try:
        state = load_torch(path)
    except ValueError as exc:
        if isinstance(exc, ChecksumError):
            raise
        raise ValueError(f"{path}: not a readable seqrec checkpoint ({exc.__cause__ or exc})") from exc
    if not isinstance(state, dict) or state.get("format") != 1:
        raise ValueError(f"{path}: not a seqrec checkpoint (missing format marker)")
    check_finite_state(path, state)
    return state


def _non_finite(named_tensors) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an Inf, else None."""
    for name, tensor in named_tensors:
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def check_finite_state(path, state: dict) -> None:
    """Raise ValueError naming ``path`` and the tensor when a checkpoint's weights (model,
    best state, optimizer state) hold NaN or Inf: the trainers never save such weights,
    so the checkpoint itself is at fault, not the run that loads it."""
    parts = [(f"model[{k!r}]", v) for k, v in (state.get("model") or {}).items()]
    parts += [(f"best_state[{k!r}]", v) for k, v in (state.get("best_state") or {}).items()]
    for index, slots in ((state.get("optimizer") or {}).get("state") or {}).items():
        parts += [(f"optimizer state[{index}][{k!r}]", v) for k, v in slots.items()]
    bad = _non_finite(parts)
    if bad is not None:
        raise ValueError(f"{path}: the checkpoint's {bad} holds NaN or Inf values; seqrec never saves non-finite "
                         "weights, so this file was damaged or written by other code and cannot be used")


def non_finite_loss_message(where: str, value: float, lr: float, saved: bool) -> str:
    return (f"{where}: the training loss is {value}, not finite; stopped before updating the weights with it. "
            f"Likely causes: a learning rate too high (lr {lr:g}; try 10x lower), exploding gradients (clip "
            "them), or input values out of range"
            + ("; the checkpoint of the last finished epoch is intact" if saved else ""))


def check_finite_parameters(model: torch.nn.Module, where: str, lr: float, saved: bool) -> None:
    """Raise FloatingPointError when a parameter of ``model`` holds NaN or Inf."""
    bad = _non_finite(model.named_parameters())
    if bad is not None:
        raise FloatingPointError(
            f"{where}: parameter {bad!r} became NaN or Inf (every loss was finite: a step overflowed). "
            f"Likely causes: a learning rate too high (lr {lr:g}; try 10x lower) or exploding gradients (clip them)"
            + ("; the checkpoint of the last finished epoch is intact" if saved else ""))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
