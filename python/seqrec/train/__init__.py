"""Training: the :class:`Trainer` (early stopping, exact resume, JSON-lines history), its
callbacks and loggers (:mod:`seqrec.train.callbacks`) and optimisation parts
(:mod:`seqrec.train.optim`)."""
from .callbacks import (Callback, Checkpoint, CSVLogger, EarlyStopping, JSONLinesLogger, LambdaCallback, Logger,
                        TensorBoardLogger, make_loggers)
from .pretrain import PretrainConfig, Pretrainer, PretrainSamples
from .trainer import FitResult, TrainConfig, Trainer, load_checkpoint

__all__ = ["FitResult", "TrainConfig", "Trainer", "load_checkpoint", "PretrainConfig", "Pretrainer",
           "PretrainSamples", "Callback", "LambdaCallback", "EarlyStopping", "Checkpoint", "Logger",
           "JSONLinesLogger", "CSVLogger", "TensorBoardLogger", "make_loggers"]
