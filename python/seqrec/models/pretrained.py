"""Initialise a model from another model's weights by parameter name (``seqrec train --init``).

Models built from :mod:`seqrec.models.layers` share parameter names (``embedding.item``,
``embedding.position``, ``embedding.norm``, ``encoder.layers.{l}.*``), so a pretrained
encoder loads into a fine-tune model by name: S3-Rec's and DSS's pretraining into
SASRec, DIF-SR, DSS and SINE (whose item and position tables carry the same names). An
embedding table may hold more rows in the source than in the target (S3-Rec's item table
has the mask token after the last item): its leading rows are loaded and the report says
so. A position table of a module whose positions are right-aligned (the attribute
``positions_right_aligned``: every seqrec model's; a shorter ``max_len`` in the target)
loads its trailing rows instead, so the most recent item takes the last row in both
models.

The *encoder tensors* (:func:`encoder_tensor_names`) are the parts every model shares:
the item and position tables, the embedding norm, and per block the attention's
``query``/``key``/``value``/``out``/``norm`` and the feed-forward. A load is refused,
before anything is copied, when one of them is missing from the checkpoint or has another
shape there (``strict=True``, the default; ``seqrec train --init-partial`` /
``strict=False`` load what fits). Other target tensors the checkpoint does not hold are the model's own parts
(DIF-SR's side-information projections, DSS's intention heads after S3-Rec pretraining):
they stay at their initialisation, and the report lists them as such.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["LoadReport", "IncompleteLoadError", "encoder_tensor_names", "load_pretrained",
           "read_pretrained_state"]

# The shared encoder's tensors, by name: what every pretraining must initialise.
ENCODER_TENSOR = re.compile(
    r"embedding\.(item|position)\.weight|embedding\.norm\.(weight|bias)"
    r"|encoder\.layers\.\d+\.(attention\.(query|key|value|out|norm)|feed_forward\.(dense_in|dense_out|norm))"
    r"\.(weight|bias)")


def encoder_tensor_names(names) -> list[str]:
    """The names among ``names`` (a state dict, a model, or names) that are encoder tensors."""
    if isinstance(names, nn.Module):
        names = names.state_dict().keys()
    return [n for n in names if ENCODER_TENSOR.fullmatch(n)]


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did.

    loaded: target names copied from the source (same shape, or some of its rows, see
    ``partial``); partial: name -> "first R of S rows" (or "last R of S rows" for a
    right-aligned position table); missing: target names absent from
    the source (left as initialised); mismatched: name -> "target shape vs source shape"
    (left as initialised); unused: source names the target has no use for; encoder: the
    target's encoder tensors (:func:`encoder_tensor_names`).
    """

    loaded: list[str] = field(default_factory=list)
    partial: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    mismatched: dict[str, str] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)
    encoder: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every tensor of the target came from the source."""
        return not self.missing and not self.mismatched

    @property
    def missing_encoder(self) -> list[str]:
        """Encoder tensors of the target the source does not hold."""
        encoder = set(self.encoder)
        return [n for n in self.missing if n in encoder]

    @property
    def own(self) -> list[str]:
        """Target tensors outside the encoder that the source does not hold: the model's
        own parts, left at initialisation."""
        encoder = set(self.encoder)
        return [n for n in self.missing if n not in encoder]

    @property
    def mismatched_encoder(self) -> dict[str, str]:
        """Encoder tensors the source holds with another shape."""
        encoder = set(self.encoder)
        return {n: why for n, why in self.mismatched.items() if n in encoder}

    @property
    def encoder_complete(self) -> bool:
        """Every encoder tensor of the target loaded (what ``strict=True`` requires)."""
        return not self.missing_encoder and not self.mismatched_encoder

    def describe(self) -> str:
        """Multi-line human summary (printed by ``seqrec train --init``)."""
        loaded = set(self.loaded)
        encoder_loaded = sum(n in loaded for n in self.encoder)
        lines = [f"loaded {len(self.loaded)} tensors ({encoder_loaded} of the {len(self.encoder)} encoder "
                 f"tensors): {_names(self.loaded)}"]
        lines += [f"  {name}: {how}" for name, how in self.partial.items()]
        not_loaded = ([f"{n} (encoder tensor missing from the checkpoint)" for n in self.missing_encoder]
                      + [f"{n} ({why})" for n, why in self.mismatched.items()]
                      + [f"{n} (the model's own: no such tensor in the checkpoint)" for n in self.own])
        lines.append(f"not loaded (kept at initialisation): {_names(not_loaded) or 'none'}")
        lines.append(f"unused from the checkpoint: {_names(self.unused) or 'none'}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"loaded": self.loaded, "partial": self.partial, "missing": self.missing,
                "mismatched": self.mismatched, "unused": self.unused, "encoder": self.encoder}


class IncompleteLoadError(ValueError):
    """A strict :func:`load_pretrained` that would leave encoder tensors at their
    initialisation; ``report`` says what a non-strict load would do. Nothing was copied."""

    def __init__(self, message: str, report: LoadReport) -> None:
        super().__init__(message)
        self.report = report


def _names(names: list[str]) -> str:
    return ", ".join(names)


@torch.no_grad()
def load_pretrained(model: nn.Module, source: dict[str, Tensor], *, strict: bool = True) -> LoadReport:
    """Copy every tensor of ``source`` whose name and shape fit into ``model``.

    Args:
        model: the target module (its parameters and persistent buffers are candidates).
        source: a state dict (e.g. a pretrained S3-Rec or DSS model's). Names the target
            model renamed (its ``RENAMED_PREFIXES``, old prefix -> new) are read under
            their new names; a model with ``adapt_pretrained(source) -> source`` reads it
            through that first.
        strict: refuse (:class:`IncompleteLoadError`, naming the tensors, nothing
            copied) a load that leaves an encoder tensor of the target at its
            initialisation (absent from the source, or of another shape there). False
            loads what fits. Either way the report names every tensor left at
            initialisation and why (a model's own part of another shape in the source,
            e.g. DSS's K prototypes against SINE's concept pool, is one).

    Returns:
        A :class:`LoadReport`. Rules: same name and shape -> copied; same name, the
        target an ``nn.Embedding`` weight with fewer rows than the source and the same
        width -> its rows copied from the source's leading rows (from its trailing rows
        for the position table of a module with ``positions_right_aligned``); anything
        else with the same name -> ``mismatched``; no such name -> ``missing``.
    """
    if not isinstance(source, dict):
        raise ValueError(f"source must be a state dict, got {type(source).__name__}")
    renamed = getattr(model, "RENAMED_PREFIXES", None) or {}
    if renamed:
        source = dict(source)
        for old, new in renamed.items():
            for key in [k for k in source if k.startswith(old)]:
                source.setdefault(new + key[len(old):], source.pop(key))
    adapt = getattr(model, "adapt_pretrained", None)
    if adapt is not None:  # the model's own reading of a checkpoint (the composed model: S3-Rec's mask row)
        source = adapt(source)
    embedding_weights = {f"{name}.weight" if name else "weight"
                         for name, m in model.named_modules() if isinstance(m, nn.Embedding)}
    right_aligned = {f"{name}.position.weight" if name else "position.weight"
                     for name, m in model.named_modules() if getattr(m, "positions_right_aligned", False)}
    report = LoadReport()
    target = model.state_dict(keep_vars=True)
    report.encoder = encoder_tensor_names(target)
    copies: list[tuple[Tensor, Tensor]] = []  # (target, what it gets), copied once the load is accepted
    for name, tensor in target.items():
        if name not in source:
            report.missing.append(name)
            continue
        src = source[name]
        if not isinstance(src, Tensor):
            report.mismatched[name] = f"not a tensor in the checkpoint ({type(src).__name__})"
            continue
        if src.shape == tensor.shape:
            copies.append((tensor, src))
            report.loaded.append(name)
        elif (name in embedding_weights and src.dim() == 2 and tensor.dim() == 2
              and src.size(1) == tensor.size(1) and src.size(0) > tensor.size(0)):
            rows, total = tensor.size(0), src.size(0)
            if name in right_aligned:
                copies.append((tensor, src[total - rows:]))
                report.partial[name] = f"last {rows} of {total} rows (right-aligned positions)"
            else:
                copies.append((tensor, src[:rows]))
                report.partial[name] = f"first {rows} of {total} rows"
            report.loaded.append(name)
        else:
            report.mismatched[name] = (f"shape {tuple(tensor.shape)} here, "
                                       f"{tuple(src.shape)} in the checkpoint")
    report.unused = [name for name in source if name not in target]
    if strict and not report.encoder_complete:
        problems = [f"{n} (missing from the checkpoint)" for n in report.missing_encoder]
        problems += [f"{n} ({why})" for n, why in report.mismatched_encoder.items()]
        raise IncompleteLoadError(
            f"the checkpoint would initialise {len(report.loaded)} of the model's {len(target)} tensors and "
            f"leave {len(problems)} at their initialisation that it should provide: {_names(problems)}. "
            "Match the architecture (hidden size, layers, inner size, max_len, items), or load what fits "
            "with --init-partial (strict=False)", report)
    for tensor, src in copies:
        tensor.copy_(src)
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
