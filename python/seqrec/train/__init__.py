"""Training: the :class:`Trainer` (early stopping, exact resume, JSON-lines history)."""
from .trainer import FitResult, TrainConfig, Trainer, load_checkpoint

__all__ = ["FitResult", "TrainConfig", "Trainer", "load_checkpoint"]
