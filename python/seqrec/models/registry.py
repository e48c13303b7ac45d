"""The one place where models are found by name (used by the CLI).

Models never look each other up by string; code that knows which model it wants
imports the class. ``build_model("sasrec", num_items=100, hidden_size=64)`` builds the
config dataclass from the keyword arguments (so every field is validated there) and the
model from the config.

Each model is registered with its presets (``seqrec train --preset NAME``) and the
training settings of its paper (:class:`~seqrec.models.config.Preset` both), so the
command line derives everything it offers for a model from here and from the config
fields.
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping

from torch import nn

from .config import Preset
from . import difsr, s3rec
from .composed import ComposedConfig, ComposedRecommender, PRESETS as COMPOSED_PRESETS
from .difsr import DIFSR, DIFSRConfig, PRESETS as DIFSR_PRESETS
from .dss import DSS, DSSConfig, PRESETS as DSS_PRESETS
from .s3rec import S3Rec, S3RecConfig, PRESETS as S3REC_PRESETS
from .sasrec import SASRec, SASRecConfig
from .sine import SINE, SINEConfig, SINE_PRESETS

__all__ = ["MODELS", "REGISTRY", "Registration", "build_model", "available_models"]


@dataclasses.dataclass(frozen=True)
class Registration:
    """A model as the command line knows it.

    Attributes:
        config: its config dataclass (the flags are its fields', see
            :func:`~seqrec.models.config.spec`).
        model: its ``nn.Module`` class, built as ``model(config, backend=...)``.
        label: its name in help texts.
        presets: named settings, ``--preset NAME``.
        defaults: the settings of its paper that are not config fields (``train``:
            :class:`~seqrec.train.TrainConfig` fields), used when neither a flag nor the
            preset gives them.
        side_information: ``(dataset, field names) -> config fields`` for models that take
            item attributes (``--attributes``: the names given, or an empty tuple); None
            for those that take none.
    """

    config: type
    model: type[nn.Module]
    label: str
    presets: Mapping[str, Preset] = dataclasses.field(default_factory=dict)
    defaults: Preset = dataclasses.field(default_factory=Preset)
    side_information: Callable | None = None


REGISTRY: dict[str, Registration] = {
    "sasrec": Registration(SASRecConfig, SASRec, "SASRec",
                           defaults=Preset(train=dict(lr=1e-3, batch_size=256, num_negatives=1))),
    # DSS: SASRec's Beauty budget, single head, the paper's softmax seq2item loss.
    "dss": Registration(DSSConfig, DSS, "DSS", DSS_PRESETS,
                        defaults=Preset(train=dict(lr=1e-3, batch_size=256, num_negatives=1))),
    # SINE: its loss is a softmax over the target and 100 sampled items.
    "sine": Registration(SINEConfig, SINE, "SINE", SINE_PRESETS,
                         defaults=Preset(train=dict(lr=1e-3, batch_size=256, num_negatives=100))),
    # Pretraining (`seqrec pretrain`); fine-tuning is SASRec (seqrec train --init).
    "s3rec": Registration(S3RecConfig, S3Rec, "S3-Rec", S3REC_PRESETS, side_information=s3rec.attribute_config),
    # DIF-SR's Beauty settings (its difsr-beauty preset).
    "difsr": Registration(DIFSRConfig, DIFSR, "DIF-SR", DIFSR_PRESETS,
                          defaults=Preset(train=dict(lr=1e-4, batch_size=256, num_negatives=1)),
                          side_information=difsr.attribute_config),
    # One encoder, parts and weighted objectives chosen by flags (seqrec.models.composed);
    # SASRec's training settings.
    "composed": Registration(ComposedConfig, ComposedRecommender, "composed", COMPOSED_PRESETS,
                             defaults=Preset(train=dict(lr=1e-3, batch_size=256, num_negatives=1)),
                             side_information=difsr.attribute_config),
}

# name -> (config dataclass, model class); a model is built as model_cls(config, backend=...).
MODELS: dict[str, tuple[type, type[nn.Module]]] = {name: (r.config, r.model) for name, r in REGISTRY.items()}


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
