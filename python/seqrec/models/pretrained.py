"""Initialise a model from another model's weights by parameter name (S3-Rec fine-tuning).

Models built from :mod:`seqrec.models.layers` share parameter names (``embedding.item``,
``embedding.position``, ``embedding.norm``, ``encoder.layers.{l}.*``), so a pretrained
encoder loads into a fine-tune model by name. An embedding table may hold more rows in
the source than in the target (S3-Rec's item table has the mask token after the last
item): its leading rows are loaded and the report says so. A position table of
:class:`~seqrec.models.layers.ItemPositionEmbedding` (a shorter ``max_len`` in the
target) loads its trailing rows instead: positions are right-aligned, so the most recent
item takes the last row in both models.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["LoadReport", "load_pretrained", "read_pretrained_state"]


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did.

    loaded: target names copied from the source (same shape, or some of its rows, see
    ``partial``); partial: name -> "first R of S rows" (or "last R of S rows" for a
    right-aligned position table); missing: target names absent from
    the source (left as initialised); mismatched: name -> "target shape vs source shape"
    (left as initialised); unused: source names the target has no use for.
    """

    loaded: list[str] = field(default_factory=list)
    partial: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    mismatched: dict[str, str] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every tensor of the target came from the source."""
        return not self.missing and not self.mismatched

    def describe(self) -> str:
        """Multi-line human summary (printed by ``seqrec train --init``)."""
        lines = [f"loaded {len(self.loaded)} tensors: {_names(self.loaded)}"]
        lines += [f"  {name}: {how}" for name, how in self.partial.items()]
        not_loaded = self.missing + [f"{n} ({why})" for n, why in self.mismatched.items()]
        lines.append(f"not loaded (kept at initialisation): {_names(not_loaded) or 'none'}")
        lines.append(f"unused from the checkpoint: {_names(self.unused) or 'none'}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"loaded": self.loaded, "partial": self.partial, "missing": self.missing,
                "mismatched": self.mismatched, "unused": self.unused}


def _names(names: list[str]) -> str:
    return ", ".join(names)


@torch.no_grad()
def load_pretrained(model: nn.Module, source: dict[str, Tensor]) -> LoadReport:
    """Copy every tensor of ``source`` whose name and shape fit into ``model``.

    Args:
        model: the target module (its parameters and persistent buffers are candidates).
        source: a state dict (e.g. a pretrained S3-Rec model's).

    Returns:
        A :class:`LoadReport`. Rules: same name and shape -> copied; same name, the
        target an ``nn.Embedding`` weight with fewer rows than the source and the same
        width -> its rows copied from the source's leading rows (from its trailing rows
        for the position table of an ``ItemPositionEmbedding``, whose positions are
        right-aligned); anything else with the same name -> ``mismatched``; no such
        name -> ``missing``.
    """
    from .layers import ItemPositionEmbedding
    if not isinstance(source, dict):
        raise ValueError(f"source must be a state dict, got {type(source).__name__}")
    embedding_weights = {f"{name}.weight" if name else "weight"
                         for name, m in model.named_modules() if isinstance(m, nn.Embedding)}
    right_aligned = {f"{name}.position.weight" if name else "position.weight"
                     for name, m in model.named_modules() if isinstance(m, ItemPositionEmbedding)}
    report = LoadReport()
    target = model.state_dict(keep_vars=True)
    for name, tensor in target.items():
        if name not in source:
            report.missing.append(name)
            continue
        src = source[name]
        if not isinstance(src, Tensor):
            report.mismatched[name] = f"not a tensor in the checkpoint ({type(src).__name__})"
            continue
        if src.shape == tensor.shape:
            tensor.copy_(src)
            report.loaded.append(name)
        elif (name in embedding_weights and src.dim() == 2 and tensor.dim() == 2
              and src.size(1) == tensor.size(1) and src.size(0) > tensor.size(0)):
            rows, total = tensor.size(0), src.size(0)
            if name in right_aligned:
                tensor.copy_(src[total - rows:])
                report.partial[name] = f"last {rows} of {total} rows (right-aligned positions)"
            else:
                tensor.copy_(src[:rows])
                report.partial[name] = f"first {rows} of {total} rows"
            report.loaded.append(name)
        else:
            report.mismatched[name] = (f"shape {tuple(tensor.shape)} here, "
                                       f"{tuple(src.shape)} in the checkpoint")
    report.unused = [name for name in source if name not in target]
    return report


def read_pretrained_state(path: str | Path) -> tuple[dict[str, Tensor], dict, Path]:
    """The model weights stored at ``path`` for :func:`load_pretrained`.

    ``path`` may be a ``seqrec pretrain`` folder (``pretrain.pt``), a ``seqrec train``
    folder (``checkpoint.pt``: its best model), either file, or a file holding a plain
    state dict. Returns ``(state_dict, model_spec or {}, file)``.

    Raises:
        FileNotFoundError: nothing loadable at ``path``.
        ValueError: the file is not a checkpoint or state dict.
    """
    from ..train.pretrain import PRETRAIN_CHECKPOINT
    from ..train.trainer import CHECKPOINT_NAME

    path = Path(path)
    if path.is_dir():
        for name in (PRETRAIN_CHECKPOINT, CHECKPOINT_NAME):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise FileNotFoundError(f"{path}: no {PRETRAIN_CHECKPOINT} or {CHECKPOINT_NAME} in this folder")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and state.get("format") == 1 and "model" in state:
        weights = state.get("best_state") or state["model"]
        return weights, state.get("model_spec") or {}, path
    if isinstance(state, dict) and state and all(isinstance(v, Tensor) for v in state.values()):
        return state, {}, path
    raise ValueError(f"{path}: neither a seqrec checkpoint nor a state dict of tensors")
