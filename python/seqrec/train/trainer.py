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
state and the history. A run killed mid-epoch restarts that epoch from its beginning
with the same RNG state, so it ends with exactly the metrics of an uninterrupted run.
"""
from __future__ import annotations

import copy
import math
import random
import re
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data.split import LeaveOneOutSplit
from ..eval import Protocol, evaluate_full_ranking, evaluate_sampled
from ..eval.memory import default_eval_memory, parse_memory
from ..models.base import LossOutput
from ..progress import progress_bar, progress_enabled, progress_stream
from ..utils import ChecksumError, load_torch, release_freed_memory, save_torch, write_json, write_jsonl

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "history.jsonl"
RESULT_NAME = "result.json"
# Every file a training run writes into its folder (what --overwrite replaces).
RUN_FILES = re.compile("|".join(map(re.escape, (CHECKPOINT_NAME, LOG_NAME, RESULT_NAME))))


@dataclass
class TrainConfig:
    """Optimisation and evaluation settings (plain values, picklable)."""

    epochs: int = 200
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    num_negatives: int = 1
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
    grad_clip: float | None = None
    # None: on where a person watches (a terminal, a notebook), off in CI and logs
    # (seqrec.progress.progress_enabled); True / False force it.
    progress: bool | None = None

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_every", "eval_chunk_size", "sampled_negatives"):
            if getattr(self, name) is None and name == "eval_chunk_size":
                continue
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
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
        ks = self.ks + ((1,) if self.valid_ranking == "sampled" else ())  # sampled runs also report @1
        valid_metrics = {f"{m}@{k}" for m in ("HR", "NDCG") for k in ks} | {"MRR"}
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
    into ``out_dir`` when given."""

    def __init__(self, model: torch.nn.Module, split: LeaveOneOutSplit, config: TrainConfig,
                 out_dir: str | Path | None = None, model_spec: dict | None = None):
        self.model = model.to(config.device)
        self.split = split
        self.config = config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.model_spec = model_spec or {}
        # fused: one kernel for all parameters (25x faster than the per-tensor loop on CPU).
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas,
                                          weight_decay=config.weight_decay, fused=True)
        self.epoch = 0  # epochs completed
        self.best_metric = -math.inf
        self.best_epoch = -1
        self.best_valid: dict = {}
        self.best_state: dict | None = None
        self.bad_evals = 0
        self.history: list[dict] = []
        # The sampled protocol needs `sampled_negatives` unseen items for every user, which
        # a small catalogue can lack: find out now rather than after training.
        self.sampled_problem: str | None = split.sampled_shortfall(config.sampled_negatives)
        if self.sampled_problem is not None:
            self.sampled_problem += "; lower sampled_negatives (seqrec: --sampled-negatives)"
            if config.valid_ranking == "sampled":
                raise ValueError(f"sampled validation cannot run: {self.sampled_problem}")
            warnings.warn(f"the sampled protocol will be skipped: {self.sampled_problem}", stacklevel=2)

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
                    chunk_size=cfg.eval_chunk_size, exclude_history=cfg.exclude_history, memory=memory)
            elif ranking == "sampled":
                if self.sampled_problem is not None:
                    raise ValueError(f"the sampled protocol cannot run: {self.sampled_problem}")
                cand = torch.from_numpy(self.split.sampled_candidates(stage, cfg.sampled_negatives, cfg.seed))

                def cand_score_fn(rows: torch.Tensor) -> torch.Tensor:
                    rows_d = rows.to(cfg.device)
                    return model.score(inputs[rows_d], lengths[rows_d], items=cand[rows].to(cfg.device)).float().cpu()

                metrics, _ = evaluate_sampled(cand_score_fn, len(cand), ks=(1,) + cfg.ks,
                                              chunk_size=cfg.eval_chunk_size or 1024)
            else:
                raise ValueError(f"ranking must be 'full' or 'sampled', got {ranking!r}")
        finally:
            model.train(was_training)
        return metrics

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
        batches = self.split.train_batches(cfg.batch_size, seed=cfg.seed, epoch=epoch,
                                           num_negatives=cfg.num_negatives)
        bar = progress_bar(batches, progress=cfg.progress, total=self.split.num_train_batches(cfg.batch_size),
                           desc=f"epoch {epoch + 1}", leave=False)
        for step, batch in enumerate(bar):
            batch = batch.to(cfg.device)
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
                    f"epoch {epoch + 1}, step {step + 1} of {self.split.num_train_batches(cfg.batch_size)}",
                    loss.item(), cfg.lr, self.out_dir is not None))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            total += loss.item()
            count += 1
            bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
        # A finite loss can still take a step to NaN/Inf weights (an Inf gradient): caught
        # here, before they are validated or saved, rather than as NaN scores later.
        check_finite_parameters(model, f"epoch {epoch + 1}", cfg.lr, self.out_dir is not None)
        return total / max(count, 1), {name: float(v) / max(count, 1) for name, v in term_sums.items()}

    def fit(self, *, on_epoch: Callable[[dict], None] | None = None) -> FitResult:
        """Train until ``epochs`` or early stopping, restore the best model (by the
        validation metric) and evaluate it on the test set, full and sampled.

        ``on_epoch(record)`` is called after every epoch; without one, and with progress
        on (``config.progress``), one line per epoch is printed (loss, validation metric)."""
        cfg = self.config
        if on_epoch is None and progress_enabled(cfg.progress):
            on_epoch = self._print_epoch
        if self.epoch == 0 and not self.history:
            _seed_everything(cfg.seed)
        while self.epoch < cfg.epochs and (cfg.patience == 0 or self.bad_evals < cfg.patience):
            start = time.perf_counter()
            loss, terms = self._train_epoch(self.epoch)
            record = {"epoch": self.epoch + 1, "loss": loss, "train_seconds": time.perf_counter() - start}
            if terms:
                record["loss_terms"] = terms
            if (self.epoch + 1) % cfg.eval_every == 0 or self.epoch + 1 == cfg.epochs:
                t0 = time.perf_counter()
                valid = self.evaluate("valid", cfg.valid_ranking)
                record["valid"] = valid
                record["eval_seconds"] = time.perf_counter() - t0
                if valid[cfg.metric] > self.best_metric:
                    self.best_metric, self.best_epoch, self.best_valid = valid[cfg.metric], self.epoch + 1, valid
                    self.best_state = copy.deepcopy(self.model.state_dict())
                    self.bad_evals = 0
                else:
                    self.bad_evals += 1
            self.epoch += 1
            self.history.append(record)
            # Checkpoint first: the log never runs ahead of what a resume restores.
            self.save_checkpoint()
            self._log(record)
            release_freed_memory()  # the RSS returns to what is in use at every epoch's end
            if on_epoch is not None:
                on_epoch(record)
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        test_sampled, protocol_sampled = self.evaluate_sampled_or_why("test")
        result = FitResult(
            best_epoch=self.best_epoch, best_valid=self.best_valid, test_full=self.evaluate("test", "full"),
            test_sampled=test_sampled, history=self.history,
            protocol_full=self.protocol("full").describe(), protocol_sampled=protocol_sampled)
        if self.out_dir is not None:
            write_json(self.out_dir / RESULT_NAME, asdict(result) | {"model": self.model_spec, "train": asdict(cfg)},
                       default=str)
        return result

    def _print_epoch(self, record: dict) -> None:
        valid = record.get("valid")
        metric = f", valid {self.config.metric} {valid[self.config.metric]:.4f}" if valid else ""
        print(f"epoch {record['epoch']}/{self.config.epochs}: loss {record['loss']:.4f}{metric} "
              f"({record['train_seconds']:.1f}s)", file=progress_stream(), flush=True)

    # ------------------------------------------------------------------ persistence
    def _log(self, record: dict) -> None:
        if self.out_dir is None:
            return
        # Rewritten whole (atomically) so a kill never leaves a torn line behind; each line
        # carries its own checksum (seqrec.utils.read_jsonl checks them).
        write_jsonl(self.out_dir / LOG_NAME, self.history)

    def state_dict(self) -> dict:
        return {
            "format": 1,
            "model_spec": self.model_spec,
            "train_config": asdict(self.config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "best_valid": self.best_valid,
            "best_state": self.best_state,
            "bad_evals": self.bad_evals,
            "history": self.history,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = state["epoch"]
        self.best_metric = state["best_metric"]
        self.best_epoch = state["best_epoch"]
        self.best_valid = state["best_valid"]
        self.best_state = state["best_state"]
        self.bad_evals = state["bad_evals"]
        self.history = state["history"]
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])

    def save_checkpoint(self) -> None:
        if self.out_dir is None:
            return
        save_torch(self.state_dict(), self.out_dir / CHECKPOINT_NAME)  # atomic, checksummed

    # Settings a resumed run may change: how long it goes on, and where it runs.
    RESUME_MAY_CHANGE = frozenset({"epochs", "patience", "eval_every", "eval_chunk_size", "eval_memory", "device",
                                  "progress"})

    def resume(self) -> bool:
        """Load ``out_dir/checkpoint.pt`` if it exists; True when a run was resumed.

        Raises:
            ValueError: the checkpoint was trained with another model configuration or
                with other training settings than those outside ``RESUME_MAY_CHANGE``
                (resuming would mix two runs' optimisation or compare different
                validation metrics); the message names the differing settings.
        """
        if self.out_dir is None or not (self.out_dir / CHECKPOINT_NAME).exists():
            return False
        path = self.out_dir / CHECKPOINT_NAME
        state = load_checkpoint(path)
        check_resumable(path, state.get("train_config", {}), asdict(self.config), state.get("model_spec", {}),
                        self.model_spec, self.RESUME_MAY_CHANGE)
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
