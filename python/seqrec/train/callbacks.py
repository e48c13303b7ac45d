"""Callbacks of the :class:`~seqrec.train.Trainer`: a small interface, and the parts of
the training loop built on it (early stopping, checkpoints, loggers).

A callback subclasses :class:`Callback` and overrides the hooks it needs; each hook gets
the trainer first (its ``model``, ``optimizer``, ``scheduler``, ``config``, ``epoch`` =
epochs completed, ``global_step`` = optimizer steps taken, ``history``, ``out_dir``):

===========================================  ==============================================
``on_train_start(trainer)``                  ``fit()`` begins (also after a resume)
``on_step_end(trainer, step, loss)``         after each optimizer step: ``step`` steps taken
                                             in the run, ``loss`` the mean loss of its batches
``on_eval_end(trainer, stage, ranking, m)``  after an evaluation in ``fit()``: each epoch's
                                             validation ('valid') and the final 'test' ones
``on_epoch_end(trainer, record)``            after each epoch; ``record`` is the epoch's line
                                             of the history (already in ``trainer.history``)
``on_train_end(trainer, result)``            ``fit()`` returns ``result`` (a FitResult)
``on_exception(trainer, error)``             ``fit()`` is leaving with ``error`` (an exception,
                                             a KeyboardInterrupt too): close files; the error
                                             propagates after every callback's hook ran
===========================================  ==============================================

Callbacks run in order: the trainer's own (:class:`EarlyStopping`, :class:`Checkpoint`),
then the loggers, then those given to the Trainer, then ``fit(on_epoch=)``. The
checkpoint is written before any logger runs, so no log ever runs ahead of what a
resume restores. A callback with state to resume returns it from ``state_dict()`` (it
is saved in the checkpoint under the callback's ``state_key``) and takes it back in
``load_state_dict()``; loggers need none: they rewrite their files from
``trainer.history``, which the checkpoint holds.

Loggers (:class:`JSONLinesLogger`, today's ``history.jsonl``; :class:`CSVLogger`;
:class:`TensorBoardLogger`) are callbacks; :func:`make_loggers` builds them from names
(``seqrec train --logger jsonl,csv,tensorboard``). The JSON-lines and CSV files are
rewritten whole (atomically) at every epoch's end and hold no file open; the TensorBoard
writer is closed by ``on_train_end`` or, when ``fit()`` raises, by ``on_exception``.
"""
from __future__ import annotations

import copy
import csv
import io
import math
from pathlib import Path
from typing import Callable, Iterable

from ..utils import atomic_write, write_jsonl

__all__ = ["Callback", "LambdaCallback", "EarlyStopping", "Checkpoint", "Logger", "JSONLinesLogger", "CSVLogger",
           "TensorBoardLogger", "LOGGERS", "make_loggers", "flatten_record"]

LOG_NAME = "history.jsonl"
CSV_NAME = "history.csv"
TENSORBOARD_DIR = "tensorboard"


class Callback:
    """Base class: every hook does nothing. See the module docstring for when each runs."""

    #: Key of this callback's state in a checkpoint (default: the class name).
    state_key: str | None = None

    def on_train_start(self, trainer) -> None:
        pass

    def on_step_end(self, trainer, step: int, loss: float) -> None:
        pass

    def on_eval_end(self, trainer, stage: str, ranking: str, metrics: dict) -> None:
        pass

    def on_epoch_end(self, trainer, record: dict) -> None:
        pass

    def on_train_end(self, trainer, result) -> None:
        pass

    def on_exception(self, trainer, error: BaseException) -> None:
        """``fit()`` failed with ``error`` (it is raised again after this hook): release
        what ``on_train_start`` opened. An error raised here is attached to ``error`` as a
        note, never in its place."""
        pass

    def state_dict(self) -> dict | None:
        """State to save in the checkpoint, or None (nothing to resume)."""
        return None

    def load_state_dict(self, state: dict) -> None:
        pass


class LambdaCallback(Callback):
    """A callback from plain functions, e.g. ``LambdaCallback(on_epoch_end=lambda t, r: print(r))``."""

    HOOKS = ("on_train_start", "on_step_end", "on_eval_end", "on_epoch_end", "on_train_end", "on_exception")

    def __init__(self, **hooks: Callable):
        unknown = sorted(set(hooks) - set(self.HOOKS))
        if unknown:
            raise TypeError(f"LambdaCallback: unknown hook(s) {unknown}; the hooks are {list(self.HOOKS)}")
        for name, fn in hooks.items():
            if not callable(fn):
                raise TypeError(f"LambdaCallback: {name} must be callable, got {type(fn).__name__}")
            setattr(self, name, fn)


class EarlyStopping(Callback):
    """Model selection and early stopping by ``config.metric`` of each validation run
    (``config.valid_ranking``): keeps the best epoch's weights, and asks the loop to stop
    (``trainer.should_stop``) after ``config.patience`` evaluations without improvement
    (0: never). Its state is the checkpoint's ``best_*`` and ``bad_evals`` entries."""

    def __init__(self):
        self.best_metric = -math.inf
        self.best_epoch = -1
        self.best_valid: dict = {}
        self.best_state: dict | None = None
        self.bad_evals = 0

    def _exhausted(self, trainer) -> bool:
        return trainer.config.patience > 0 and self.bad_evals >= trainer.config.patience

    def on_train_start(self, trainer) -> None:
        # A resumed run may go on with a larger patience (or none): decided anew.
        trainer.should_stop = self._exhausted(trainer)

    def on_eval_end(self, trainer, stage, ranking, metrics) -> None:
        cfg = trainer.config
        if stage != "valid" or ranking != cfg.valid_ranking:
            return
        if metrics[cfg.metric] > self.best_metric:
            self.best_metric, self.best_epoch, self.best_valid = metrics[cfg.metric], trainer.epoch, metrics
            self.best_state = copy.deepcopy(trainer.model.state_dict())
            self.bad_evals = 0
        else:
            self.bad_evals += 1
        if self._exhausted(trainer):
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"best_metric": self.best_metric, "best_epoch": self.best_epoch, "best_valid": self.best_valid,
                "best_state": self.best_state, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        for key in ("best_metric", "best_epoch", "best_valid", "best_state", "bad_evals"):
            setattr(self, key, state[key])


class Checkpoint(Callback):
    """Writes ``out_dir/checkpoint.pt`` (atomically, checksummed) after every epoch, so a
    killed run resumes from its last finished epoch (:meth:`Trainer.resume`)."""

    def on_epoch_end(self, trainer, record) -> None:
        trainer.save_checkpoint()


# ---------------------------------------------------------------------- loggers
class Logger(Callback):
    """A callback that writes the history somewhere: into ``log_dir`` when given, else
    the trainer's ``out_dir`` (nothing is written when both are None)."""

    def __init__(self, log_dir: str | Path | None = None):
        self.log_dir = Path(log_dir) if log_dir is not None else None

    def folder(self, trainer) -> Path | None:
        return self.log_dir if self.log_dir is not None else trainer.out_dir


class JSONLinesLogger(Logger):
    """``history.jsonl``: one JSON line per epoch (the history record), each line with its
    own checksum (:func:`seqrec.utils.read_jsonl` checks them); rewritten whole and
    atomically after every epoch, so a kill never leaves a torn line behind."""

    def __init__(self, log_dir: str | Path | None = None, name: str = LOG_NAME):
        super().__init__(log_dir)
        self.name = name

    def on_epoch_end(self, trainer, record) -> None:
        folder = self.folder(trainer)
        if folder is not None:
            write_jsonl(folder / self.name, trainer.history)


def flatten_record(record: dict, prefix: str = "") -> dict:
    """A history record as flat ``{column: value}``: nested dicts join their keys with
    '/' (``valid/NDCG@10``, ``loss_terms/aap``)."""
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(flatten_record(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class CSVLogger(Logger):
    """``history.csv``: one row per epoch, one column per flattened field of the history
    (:func:`flatten_record`; an epoch without validation leaves its ``valid/*`` cells
    empty). Rewritten whole and atomically after every epoch, like ``history.jsonl``."""

    def __init__(self, log_dir: str | Path | None = None, name: str = CSV_NAME):
        super().__init__(log_dir)
        self.name = name

    def on_epoch_end(self, trainer, record) -> None:
        folder = self.folder(trainer)
        if folder is None:
            return
        rows = [flatten_record(r) for r in trainer.history]
        columns = list(dict.fromkeys(k for row in rows for k in row))  # first-seen order
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(folder / self.name, "w") as fh:
            fh.write(text.getvalue())


def _summary_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch's module imports the tensorboard package
        raise ImportError("TensorBoard logging needs the tensorboard package: pip install 'seqrec[tensorboard]' "
                          f"(or pip install tensorboard); importing torch.utils.tensorboard failed: {exc}") from None
    return SummaryWriter


class TensorBoardLogger(Logger):
    """TensorBoard scalars through :class:`torch.utils.tensorboard.SummaryWriter` (the
    optional extra ``seqrec[tensorboard]``), in ``log_dir`` (default
    ``out_dir/tensorboard``): per epoch (the global step), every number of the history
    record under its flattened name (``loss``, ``valid/NDCG@10``, ``lr``, ...).

    At every ``fit()`` start the writer purges the events from step 1 on and writes the
    history so far again, so after a resume (or a kill between the checkpoint and the
    log) the scalars are exactly the history's, one point per epoch.
    """

    def __init__(self, log_dir: str | Path | None = None):
        super().__init__(log_dir)
        self._writer_class = _summary_writer_class()  # fails now, not after the first epoch
        self.writer = None

    def folder(self, trainer) -> Path | None:
        if self.log_dir is not None:
            return self.log_dir
        return trainer.out_dir / TENSORBOARD_DIR if trainer.out_dir is not None else None

    def on_train_start(self, trainer) -> None:
        folder = self.folder(trainer)
        if folder is None:
            raise ValueError("TensorBoardLogger: no folder to write to; give it log_dir= or the Trainer an out_dir")
        self.writer = self._writer_class(log_dir=str(folder), purge_step=1)
        for record in trainer.history:
            self._write(record)
        self.writer.flush()

    def _write(self, record: dict) -> None:
        step = record["epoch"]
        for key, value in flatten_record(record).items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)

    def on_epoch_end(self, trainer, record) -> None:
        if self.writer is not None:
            self._write(record)
            self.writer.flush()

    def on_train_end(self, trainer, result) -> None:
        self._close()

    def on_exception(self, trainer, error) -> None:
        self._close()  # what the epochs before the error wrote is flushed to disk

    def _close(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()


LOGGERS = {"jsonl": JSONLinesLogger, "csv": CSVLogger, "tensorboard": TensorBoardLogger}


def make_loggers(names: str | Iterable[str]) -> list[Logger]:
    """Loggers from names: ``"jsonl,csv,tensorboard"`` or ``["jsonl", "csv"]``; ``""`` or
    ``"none"`` for none. Raises ValueError naming an unknown or repeated name, and
    ImportError when TensorBoard is asked for but not installed."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")] if names.strip() not in ("", "none") else []
    names = list(names)
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ValueError(f"unknown logger(s) {unknown}; the loggers are {sorted(LOGGERS)} (comma-separated)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"logger(s) {repeated} named more than once")
    return [LOGGERS[n]() for n in names]
