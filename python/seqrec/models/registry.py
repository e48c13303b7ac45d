"""The one place where models are found by name (used by the CLI).

Models never look each other up by string; code that knows which model it wants
imports the class. ``build_model("sasrec", num_items=100, hidden_size=64)`` builds the
config dataclass from the keyword arguments (so every field is validated there) and the
model from the config.
"""
from __future__ import annotations

import dataclasses
import inspect

from torch import nn

from .s3rec import S3Rec, S3RecConfig
from .difsr import DIFSR, DIFSRConfig
from .dss import DSS, DSSConfig
from .sasrec import SASRec, SASRecConfig
from .sine import SINE, SINEConfig

__all__ = ["MODELS", "build_model", "available_models"]

# name -> (config dataclass, model class); a model is built as model_cls(config, backend=...).
MODELS: dict[str, tuple[type, type[nn.Module]]] = {
    "sasrec": (SASRecConfig, SASRec),
    "dss": (DSSConfig, DSS),
    "sine": (SINEConfig, SINE),
    "s3rec": (S3RecConfig, S3Rec),  # pretraining; fine-tuning is SASRec (seqrec train --init)
    "difsr": (DIFSRConfig, DIFSR),
}


def available_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(MODELS)


def build_model(name: str, *, backend: str | None = None, attributes=None, **config: object) -> nn.Module:
    """Build model ``name`` from keyword config fields.

    Args:
        name: one of :func:`available_models` (case-insensitive).
        backend: attention/op backend for the model, None = process default.
        attributes: item side information (a :class:`~seqrec.data.SequenceDataset` or
            ``{name: AttributeField}``) for the models whose constructor takes it
            (DIF-SR: the tables of its ``attribute_fields``); not passed to the others.
        **config: fields of the model's config dataclass (e.g. :class:`SASRecConfig`).

    Raises:
        ValueError: unknown model name, unknown config field, or an invalid value.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {available_models()}")
    config_cls, model_cls = MODELS[key]
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(
            f"unknown {config_cls.__name__} field(s) {unknown}; valid fields: {sorted(fields)}"
        )
    try:
        cfg = config_cls(**config)
    except TypeError as exc:  # a missing required field, e.g. num_items
        raise ValueError(f"cannot build {config_cls.__name__}: {exc}") from None
    if attributes is not None and "attributes" in inspect.signature(model_cls).parameters:
        return model_cls(cfg, backend=backend, attributes=attributes)
    return model_cls(cfg, backend=backend)
