"""Training: the :class:`Trainer` (early stopping, exact resume, JSON-lines history)."""
from .pretrain import PretrainConfig, Pretrainer, PretrainSamples
from .trainer import FitResult, TrainConfig, Trainer, load_checkpoint

__all__ = ["FitResult", "TrainConfig", "Trainer", "load_checkpoint", "PretrainConfig", "Pretrainer",
           "PretrainSamples"]
