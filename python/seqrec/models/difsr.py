"""DIF-SR: decoupled side-information fusion for sequential recommendation.

Xie et al., "Decoupled Side Information Fusion for Sequential Recommendation", SIGIR
2022 (code: ``AIM-SE/DIF-SR``, RecBole ``SASRecD``). Attributes and positions enter a
SASRec-like encoder only through their own attention score matrices, fused per head by
``seqrec.ops.dif_attention``; the value path stays item-only.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.backend import get_backend
from ..ops.dif_attention import dif_attention, fusion_param_shapes
from .layers import (
    CroppedGroups,
    Dropout,
    PackedPositions,
    TransformerEncoder,
    init_transformer_weights,
    lookup_rows,
    padding_mask,
)
from .base import LossOutput, SequentialRecommender, check_ids
from .config import EncoderConfig, Preset, spec
from .losses import next_item_nll

__all__ = ["DIFSRConfig", "DIFSR", "DIFMultiHeadAttention", "DecoupledSideInformation", "SideInformationFields",
           "PRESETS", "attribute_config"]

FUSIONS = ("sum", "concat", "gate")
POOLINGS = ("sum", "mean", "max")
LOSSES = ("ce", "bce", "sampled")

# Named settings (``seqrec train --preset NAME``): fields of DIFSRConfig (model) and
# of TrainConfig (train).
PRESETS: dict[str, Preset] = {
    # The paper's Amazon Beauty run (REFERENCE.md; DIF-SR's Beauty config): 4 layers,
    # 8 heads, hidden 256, attribute size 64, inner 256, dropout 0.5 / attention 0.3,
    # gate fusion, lambda 10, CE loss, lr 1e-4. Batch: the paper's 2048 counts training
    # PAIRS (RecBole expands every prefix of a sequence into its own sample); a seqrec
    # batch row is a user and trains every position of its prefix at once (~6-8 on
    # Beauty), so 256 users is about the paper's 2048 pairs per step.
    "difsr-beauty": Preset(
        model=dict(hidden_size=256, num_layers=4, num_heads=8, inner_size=256, attribute_sizes=64,
                   hidden_dropout=0.5, attention_dropout=0.3, fusion="gate", pooling="sum",
                   attribute_predictor=True, attribute_loss_weight=10.0, loss="ce", max_len=50),
        train=dict(lr=1e-4, batch_size=256),
        help="the paper's Amazon Beauty run"),
}


def _err(name: str, msg: str, owner: str = "DIFSRConfig") -> ValueError:
    return ValueError(f"{owner}.{name} {msg}")


def _int(name: str, value: object, minimum: int, owner: str = "DIFSRConfig") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise _err(name, f"must be an int >= {minimum}, got {value!r}", owner)
    return int(value)


def _per_field(name: str, value: object, count: int, convert, owner: str = "DIFSRConfig") -> tuple:
    """A scalar (same for every field) or one value per field, as a tuple."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise _err(name, f"needs one value per attribute field ({count}), got {len(value)}", owner)
        return tuple(convert(v) for v in value)
    return tuple(convert(value) for _ in range(count))


class SideInformationFields:
    """The checks and derived sizes of DIF-SR's side-information fields, for any config
    that declares them (``attribute_fields``, ``attribute_vocab_sizes``,
    ``attribute_sizes``, ``attribute_loss_weight``, ``position_scores``, ``num_heads``):
    :class:`DIFSRConfig` and the composed model's config."""

    def _check_side_fields(self) -> None:
        """Check and normalise the side-information fields (call from ``validate``)."""
        owner = type(self).__name__
        set_ = self._set
        fields = self.attribute_fields
        if isinstance(fields, str) or not isinstance(fields, (list, tuple)) or not all(
                isinstance(f, str) and f for f in fields):
            raise _err("attribute_fields", f"must be a sequence of field names, got {fields!r}", owner)
        if len(set(fields)) != len(fields):
            raise _err("attribute_fields", f"has duplicates: {list(fields)}", owner)
        set_("attribute_fields", tuple(fields))
        p = len(fields)
        vocab = self.attribute_vocab_sizes
        if not isinstance(vocab, (list, tuple)) or len(vocab) != p:
            raise _err("attribute_vocab_sizes", f"needs one entry per attribute field ({p}), got {vocab!r}", owner)
        set_("attribute_vocab_sizes", tuple(_int("attribute_vocab_sizes", v, 0, owner) for v in vocab))
        heads = self.num_heads
        sizes = _per_field("attribute_sizes", self.attribute_sizes, p,
                           lambda v: _int("attribute_sizes", v, 1, owner), owner)
        for f, d in zip(fields, sizes):
            if d % heads:
                raise _err("attribute_sizes", f"of field {f!r} (={d}) must be divisible by num_heads={heads}", owner)
        set_("attribute_sizes", sizes if isinstance(self.attribute_sizes, (list, tuple)) else
             _int("attribute_sizes", self.attribute_sizes, 1, owner))

        def weight(v):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise _err("attribute_loss_weight", f"must be a finite number >= 0, got {v!r}", owner)
            return float(v)

        w = self.attribute_loss_weight
        _per_field("attribute_loss_weight", w, p, weight, owner)
        set_("attribute_loss_weight", tuple(weight(v) for v in w) if isinstance(w, (list, tuple)) else weight(w))

    @property
    def field_sizes(self) -> tuple[int, ...]:
        """Embedding size of each attribute field."""
        return _per_field("attribute_sizes", self.attribute_sizes, len(self.attribute_fields), int)

    @property
    def field_loss_weights(self) -> tuple[float, ...]:
        """lambda of each attribute field."""
        return _per_field("attribute_loss_weight", self.attribute_loss_weight, len(self.attribute_fields), float)

    @property
    def num_sources(self) -> int:
        """Score matrices fused per head: item, position (if used), one per field."""
        return 1 + int(self.position_scores) + len(self.attribute_fields)


@dataclasses.dataclass(frozen=True)
class DIFSRConfig(SideInformationFields, EncoderConfig):
    """DIF-SR hyper-parameters; defaults = the paper's Beauty settings.

    Attributes:
        num_items: number of real items; ids 1..num_items, 0 is padding.
        attribute_fields: names of the dataset's attribute fields used as side sources
            (in order); empty = no attributes (then only position scores are added).
        attribute_vocab_sizes: per field, its number of attribute values (ids 1..V) for a
            categorical field, 0 for a numeric one. Filled from the dataset by the CLI /
            :func:`attribute_config`; it shapes the embedding and predictor tables.
        attribute_sizes: embedding size of each field (one int for all, or one per
            field), 64; each must be divisible by ``num_heads`` (head size d_f / H) and
            may differ from ``hidden_size`` and from each other.
        max_len: sequence length (positions, and the width of the concat / gate maps), 50.
        hidden_size: D, 256.  num_layers: 4.  num_heads: H, 8.  inner_size: FFN width, 256.
        hidden_dropout: 0.5.  attention_dropout: 0.3.
        fusion: ``"gate"`` (the paper's best), ``"sum"`` or ``"concat"``.
        position_scores: position information as its own score matrix (DIF-SR); False
            leaves the model without any position information.
        pooling: how a multi-valued attribute of one item is pooled, ``"sum"`` (default,
            DIF-SR's ``pooling_mode``), ``"mean"`` or ``"max"``.
        attribute_predictor: the auxiliary attribute predictors (AAP).
        attribute_loss_weight: lambda, one float for all fields or one per field, 10.
        loss: next-item loss, ``"ce"`` (softmax over all items, the paper's) or ``"bce"``
            (one sampled negative per position, as SASRec) or ``"sampled"`` (softmax over
            the target and the trainer's m negatives, log-Q corrected:
            :func:`~seqrec.models.losses.sampled_softmax_nll`).
        fusion_sees_masked: False (default): masked scores (future and padding keys) are
            zeroed before the concat / gate maps, so no position sees its future. True:
            DIF-SR's code, whose maps read whole raw score rows (see ``dif_attention``);
            every batch is then padded to max_len (slower: see ``DIFSR._encode``).
        initializer_range: std of the normal init, 0.02.  hidden_act: ``"gelu"``.
        layer_norm_eps: 1e-12.
    """

    # The encoder's fields, with the paper's Beauty defaults.
    hidden_size: int = spec(256, kind="int", minimum=1, help="hidden size D")
    num_layers: int = spec(4, kind="int", minimum=1, help="Transformer blocks")
    num_heads: int = spec(8, kind="int", minimum=1, help="attention heads (must divide the hidden size and "
                                                          "every attribute size)")
    inner_size: int = spec(256, kind="int", minimum=1, help="feed-forward width")
    attention_dropout: float = spec(0.3, kind="probability", follows="hidden_dropout",
                                    help="dropout on attention probabilities")
    # Side information and fusion.
    attribute_fields: tuple[str, ...] = spec((), kind="any", cli=False,
                                             help="attribute fields of the dataset used as side sources")
    attribute_vocab_sizes: tuple[int, ...] = spec((), kind="any", cli=False,
                                                  help="values per field (0: numeric), from the dataset")
    attribute_sizes: int | tuple[int, ...] = spec(64, kind="any", flag="attribute-size", several=int,
                                                  help="attribute embedding size, one for all fields or one per field")
    fusion: str = spec("gate", kind="choice", choices=FUSIONS, help="fusion of the score matrices")
    position_scores: bool = spec(True, kind="bool",
                                 help="position information as its own scores (without: no position information)")
    pooling: str = spec("sum", kind="choice", choices=POOLINGS,
                        help="pooling of an item's several values of one field")
    attribute_predictor: bool = spec(True, kind="bool", help="the auxiliary attribute predictors")
    attribute_loss_weight: float | tuple[float, ...] = spec(10.0, kind="any", flag="attribute-weight", several=float,
                                                           help="lambda of the attribute loss, one or one per field")
    loss: str = spec("ce", kind="choice", choices=LOSSES,
                     help="ce: softmax over all items (the paper's); bce: one sampled negative; sampled: softmax "
                          "over the target and the sampled negatives, log-Q corrected")
    fusion_sees_masked: bool = spec(False, kind="bool",
                                    help="DIF-SR's code: fusion maps read masked (future/padding) scores too")

    def validate(self) -> None:
        super().validate()
        self._check_side_fields()

    @classmethod
    def from_preset(cls, name: str, **fields: object) -> "DIFSRConfig":
        """The config of :data:`PRESETS` ``[name]`` with ``fields`` (num_items, attributes...)
        added or overriding."""
        if name not in PRESETS:
            raise ValueError(f"unknown DIF-SR preset {name!r}; available: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name].model, **fields})


def attribute_config(dataset, fields: Sequence[str]) -> dict:
    """``attribute_fields`` and ``attribute_vocab_sizes`` for the named fields of a
    :class:`~seqrec.data.SequenceDataset`; ValueError naming the available fields."""
    out_fields, vocab = [], []
    for name in fields:
        if name not in dataset.attributes:
            raise ValueError(f"dataset {dataset.name!r} has no attribute field {name!r}; "
                             f"available: {sorted(dataset.attributes)}")
        field = dataset.attributes[name]
        out_fields.append(name)
        vocab.append(field.num_values if field.kind == "categorical" else 0)
    return dict(attribute_fields=tuple(out_fields), attribute_vocab_sizes=tuple(vocab))


class _NumericFieldEmbedding(nn.Module):
    """A numeric attribute value x as the vector x * w (RecBole's float-field embedding)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size))

    def forward(self, values: Tensor) -> Tensor:  # [..., m] -> [..., m, d]
        return values.unsqueeze(-1) * self.weight


class DIFMultiHeadAttention(nn.Module):
    """``LN(Dropout(W_o DIF-Attention(...)) + x)``: DIF-SR's attention sub-layer.

    Per head: item q/k/v from x (head size D/H), position q/k from the position
    embeddings (head size D/H, shared by the batch), for each attribute field its own
    q/k from the field's embedding (head size d_f/H); the score matrices are fused by
    ``fusion`` in :func:`seqrec.ops.dif_attention`, scaled by 1/sqrt(D/H), masked
    (causal + padding), softmaxed, dropped out and applied to the item values only.
    """

    def __init__(self, config: DIFSRConfig, backend: str | None = None) -> None:
        super().__init__()
        D, H = config.hidden_size, config.num_heads
        self.num_heads, self.head_size = H, D // H
        self.fusion = config.fusion
        self.fusion_sees_masked = config.fusion_sees_masked
        self.max_len = config.max_len
        self.attention_dropout = config.attention_dropout
        self.backend = backend
        self.query, self.key, self.value = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)
        self.position_query = nn.Linear(D, D) if config.position_scores else None
        self.position_key = nn.Linear(D, D) if config.position_scores else None
        self.attribute_query = nn.ModuleList(nn.Linear(d, d) for d in config.field_sizes)
        self.attribute_key = nn.ModuleList(nn.Linear(d, d) for d in config.field_sizes)
        # The fusion maps act on score rows of length max_len (inputs are padded to it).
        self.fusion_params = nn.ParameterList(
            nn.Parameter(torch.empty(shape))
            for shape in fusion_param_shapes(config.fusion, config.max_len, config.num_sources))
        self.out = nn.Linear(D, D)
        self.out_dropout = Dropout(config.hidden_dropout)
        self.norm = nn.LayerNorm(D, eps=config.layer_norm_eps)

    def _heads(self, x: Tensor) -> Tensor:  # [..., n, H*d] -> [..., H, n, d]
        return x.unflatten(-1, (self.num_heads, -1)).transpose(-3, -2)

    def _fusion_params(self, n: int) -> list[Tensor]:
        """The fusion maps for key rows of the last ``n`` of max_len columns.

        A batch cropped on the left (every row's first max_len - n keys are padding) has
        those columns masked; with ``fusion_sees_masked=False`` they enter the maps as 0,
        so the maps restricted to the last n columns give the same fused scores."""
        params = list(self.fusion_params)
        L = self.max_len
        if n == L or not params:
            return params
        if self.fusion == "concat":  # W [L, S*L] (row: output key; column: source s, key j)
            w, b = params
            w = w.view(L, -1, L)[L - n:, :, L - n:].reshape(n, -1)
            return [w, b[L - n:]]
        w1, b1, w2, b2 = params  # gate: W1 [a, L] reads the key columns
        return [w1[:, L - n:].contiguous(), b1, w2, b2]

    def forward(self, x: Tensor, key_padding_mask: Tensor, causal: bool = True,
                packed: PackedPositions | None = None, keep: Tensor | None = None,
                side: Mapping[str, object] | None = None) -> Tensor:
        """x [B, n, D] (or [N, D] with ``packed``), key_padding_mask [B, n] -> same shape
        as x; or only the rows ``keep`` of x flattened to [-1, D], [K, D] (every position
        still gives its keys and values; the output map, residual and norm run on the
        kept rows). The signature of :meth:`MultiHeadSelfAttention.forward`, so the
        shared :class:`~seqrec.models.layers.TransformerBlock` takes it as its attention.

        ``side`` (required): ``positions`` [n, D], the position embeddings of the n
        columns; ``attributes``: per field [B, n, d_f] (or [N, d_f] with ``packed``).

        ``n`` is max_len, or less for a batch cropped on the left (the last n of the
        max_len right-aligned columns), which needs ``fusion_sees_masked=False``."""
        if not side or "positions" not in side or "attributes" not in side:
            raise ValueError("DIFMultiHeadAttention needs side={'positions': [n, D], 'attributes': [...]}")
        positions, attributes = side["positions"], side["attributes"]
        n = key_padding_mask.size(1)
        if n != self.max_len and self.fusion_sees_masked and self.fusion != "sum":
            raise ValueError(f"a batch {n} wide (max_len {self.max_len}) needs fusion_sees_masked=False: "
                             "the fusion maps would read the cropped columns")
        unpack = (lambda t: t) if packed is None else packed.unpack
        side_q, side_k = [], []
        if self.position_query is not None:
            side_q.append(self._heads(self.position_query(positions)))  # [H, n, D/H]
            side_k.append(self._heads(self.position_key(positions)))
        for a, wq, wk in zip(attributes, self.attribute_query, self.attribute_key):
            side_q.append(self._heads(unpack(wq(a))))  # [B, H, n, d_f/H]
            side_k.append(self._heads(unpack(wk(a))))
        attn = dif_attention(
            self._heads(unpack(self.query(x))), self._heads(unpack(self.key(x))),
            self._heads(unpack(self.value(x))), side_q, side_k, fusion=self.fusion,
            fusion_params=self._fusion_params(n), key_padding_mask=key_padding_mask, causal=causal,
            fusion_sees_masked=self.fusion_sees_masked, dropout_p=self.attention_dropout,
            training=self.training, backend=self.backend)
        attn = attn.transpose(1, 2).flatten(2)  # [B, n, D]
        if packed is not None:
            attn = packed.pack(attn)
        if keep is not None:
            attn = attn.reshape(-1, attn.size(-1)).index_select(0, keep)
            x = x.reshape(-1, x.size(-1)).index_select(0, keep)
        return self.norm(self.out_dropout(self.out(attn)) + x)


class _Embeddings(nn.Module):
    """Item table (``Dropout(LN(.))`` on lookup, no position added), learned positions,
    and one table per attribute field."""

    positions_right_aligned = True  # the most recent item has position max_len - 1

    def __init__(self, config: DIFSRConfig) -> None:
        super().__init__()
        D = config.hidden_size
        self.item = nn.Embedding(config.num_items + 1, D, padding_idx=0)
        self.position = nn.Embedding(config.max_len, D)
        self.norm = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout)
        self.attributes = nn.ModuleList(
            nn.Embedding(v + 1, d, padding_idx=0) if v > 0 else _NumericFieldEmbedding(d)
            for v, d in zip(config.attribute_vocab_sizes, config.field_sizes))


class DecoupledSideInformation:
    """DIF-SR's side information on the shared encoder, for a model that composes it.

    The host is a :class:`~seqrec.models.base.SequentialRecommender` with ``config``
    (the fields of :class:`DIFSRConfig`'s side information: ``attribute_fields``,
    ``attribute_vocab_sizes``, ``pooling``, ``fusion``, ``fusion_sees_masked``,
    ``max_len``, ``hidden_size``), ``embedding`` (:class:`_Embeddings`), ``encoder`` (a
    :class:`~seqrec.models.layers.TransformerEncoder` of :class:`DIFMultiHeadAttention`)
    and ``predictors`` (one head per field, ``nn.Identity`` where there is none). It
    gives the item -> attribute tables (persistent buffers ``_attr_{i}``, constructor
    inputs or loaded from a state dict), the grouped and padded encoder paths, and the
    attribute predictors' loss terms. :class:`DIFSR` is this on its own; the composed
    model (:mod:`seqrec.models.composed`) puts other heads and objectives on it.
    """

    def _init_side_information(self, attributes) -> None:
        """After ``init_transformer_weights``: DIF-SR's init of the fusion maps and numeric
        field embeddings, then the table buffers (and the tables, when given)."""
        config = self.config
        with torch.no_grad():  # DIF-SR's nn.Linear fusion layers get the same init
            for layer in self.encoder.layers:
                for t in layer.attention.fusion_params:
                    t.normal_(0.0, config.initializer_range) if t.dim() == 2 else t.zero_()
            for emb in self.embedding.attributes:
                if isinstance(emb, _NumericFieldEmbedding):
                    emb.weight.normal_(0.0, config.initializer_range)
        # Registered after initialisation, so the parameter draws are unchanged; None
        # until given (None buffers are left out of the state dict).
        for i in range(len(config.attribute_fields)):
            self.register_buffer(f"_attr_{i}", None)
            if config.attribute_vocab_sizes[i] == 0:
                self.register_buffer(f"_attr_present_{i}", None)
        if attributes is not None:
            if not isinstance(attributes, Mapping):  # a SequenceDataset
                attributes = self._dataset_fields(attributes)
            self._set_attributes(attributes)

    def _side_buffer_names(self) -> list[str]:
        names = []
        for i, vocab in enumerate(self.config.attribute_vocab_sizes):
            names += [f"_attr_{i}"] + ([f"_attr_present_{i}"] if vocab == 0 else [])
        return names

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # (RENAMED_PREFIXES are applied by SequentialRecommender._load_from_state_dict.)
        # Attribute tables: a saved table replaces the model's (its shape is the data's,
        # not the config's, so the buffer takes the saved shape first); a checkpoint
        # from before the tables were saved keeps the tables the model was built with.
        for name in self._side_buffer_names():
            key, current = prefix + name, getattr(self, name)
            if key in state_dict:
                saved = state_dict[key]
                if not isinstance(saved, Tensor):
                    continue  # super() reports it
                self._check_saved_table(key, name, saved)
                device = self.embedding.item.weight.device
                if current is None or current.shape != saved.shape or current.dtype != saved.dtype:
                    setattr(self, name, torch.empty(saved.shape, dtype=saved.dtype, device=device))
            elif current is not None:
                state_dict[key] = current
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _check_saved_table(self, key: str, name: str, saved: Tensor) -> None:
        """A loaded attribute table must fit the config: one row per item (and padding),
        int64 ids in [0, vocab] for a categorical field, a bool mask or floats else."""
        cfg = self.config
        i = int(name.rsplit("_", 1)[1])
        vocab = cfg.attribute_vocab_sizes[i]
        if name.startswith("_attr_present_"):
            ok, want = saved.dtype == torch.bool, "bool"
        elif vocab > 0:
            ok, want = saved.dtype == torch.int64, "int64"
            if ok and saved.numel() and not 0 <= int(saved.min()) <= int(saved.max()) <= vocab:
                raise ValueError(f"state dict {key!r}: attribute ids outside [0, {vocab}] of field "
                                 f"{cfg.attribute_fields[i]!r}")
        else:
            ok, want = saved.is_floating_point(), "floating point"
        if not ok or saved.dim() != 2 or saved.size(0) != cfg.num_items + 1:
            raise ValueError(f"state dict {key!r} must be a [num_items + 1 = {cfg.num_items + 1}, m] {want} table "
                             f"of field {cfg.attribute_fields[i]!r}, got {saved.dtype} {tuple(saved.shape)}")

    # ------------------------------------------------------------------ side information
    @property
    def uses_side_information(self) -> bool:
        """True when the config names attribute fields (then the model needs their tables)."""
        return bool(self.config.attribute_fields)

    def _dataset_fields(self, dataset) -> dict:
        """``{name: AttributeField}`` of the configured fields of a SequenceDataset."""
        cfg = self.config
        if dataset.num_items != cfg.num_items:
            raise ValueError(f"dataset has {dataset.num_items} items, the model {cfg.num_items}")
        return {name: dataset.attributes[name] for name in
                attribute_config(dataset, cfg.attribute_fields)["attribute_fields"]}

    def attach_dataset(self, dataset) -> None:
        """Deprecated: pass ``attributes=dataset`` to the constructor. Replaces the
        attribute tables by those of ``dataset``."""
        name = type(self).__name__
        warnings.warn(f"{name}.attach_dataset is deprecated: build the model with {name}(config, "
                      "attributes=dataset) (the tables are then saved in the state dict)",
                      DeprecationWarning, stacklevel=2)
        self._set_attributes(self._dataset_fields(dataset))

    def attach_attributes(self, fields: Mapping[str, object]) -> None:
        """Deprecated: pass ``attributes={name: AttributeField}`` to the constructor."""
        name = type(self).__name__
        warnings.warn(f"{name}.attach_attributes is deprecated: build the model with {name}(config, "
                      "attributes=fields)", DeprecationWarning, stacklevel=2)
        self._set_attributes(fields)

    def _set_attributes(self, fields: Mapping[str, object]) -> None:
        """Store the item -> attribute tables ``{name: AttributeField}`` of the configured
        fields as persistent buffers.

        Raises ValueError when a field is missing, covers another item count, changes
        kind, or has another number of values than the config was built with.
        """
        cfg = self.config
        device = self.embedding.item.weight.device
        for i, (name, vocab) in enumerate(zip(cfg.attribute_fields, cfg.attribute_vocab_sizes)):
            if name not in fields:
                raise ValueError(f"attribute field {name!r} is missing; given: {sorted(fields)}")
            field = fields[name]
            if field.num_items != cfg.num_items:
                raise ValueError(f"attribute field {name!r} covers {field.num_items} items, "
                                 f"the model {cfg.num_items}")
            kind = "categorical" if vocab > 0 else "numeric"
            if field.kind != kind:
                raise ValueError(f"attribute field {name!r} is {field.kind}, the model was built for a {kind} one")
            if kind == "categorical" and field.num_values != vocab:
                raise ValueError(f"attribute field {name!r} has {field.num_values} values, the model was "
                                 f"built with attribute_vocab_sizes[{i}]={vocab}")
            table = torch.from_numpy(np.ascontiguousarray(field.padded()))
            if kind == "categorical":
                setattr(self, f"_attr_{i}", table.to(device=device, dtype=torch.int64))
            else:
                present = ~torch.isnan(table)
                setattr(self, f"_attr_{i}", torch.nan_to_num(table).to(device=device, dtype=torch.float32))
                setattr(self, f"_attr_present_{i}", present.to(device))

    @property
    def has_attribute_tables(self) -> bool:
        """True when every configured field's item -> attribute table is present."""
        return all(getattr(self, name) is not None for name in self._side_buffer_names())

    def _field_embeddings(self, item_seq: Tensor) -> list[Tensor]:
        """Pooled attribute embeddings of every position, per field: [*item_seq.shape, d_f]."""
        if not self.has_attribute_tables:
            name = type(self).__name__
            raise RuntimeError(f"{name} uses attribute fields {list(self.config.attribute_fields)} but has no "
                               f"item -> attribute tables: build it with {name}(config, attributes=dataset) "
                               "or load a state dict that holds them")
        out = []
        for i, emb in enumerate(self.embedding.attributes):
            table = getattr(self, f"_attr_{i}")
            if isinstance(emb, _NumericFieldEmbedding):
                vec = emb(table[item_seq].to(emb.weight.dtype))  # [..., m, d]
                present = getattr(self, f"_attr_present_{i}")[item_seq]
            else:
                ids = table[item_seq]  # [..., m], 0 = none
                vec, present = emb(ids), ids > 0  # the padding row is 0
            if self.config.pooling == "max":
                vec = vec.masked_fill(~present.unsqueeze(-1), float("-inf")).amax(-2)
                vec = vec.masked_fill(~present.any(-1, keepdim=True), 0.0)
            else:
                vec = (vec * present.unsqueeze(-1).to(vec.dtype)).sum(-2)
                if self.config.pooling == "mean":
                    vec = vec / present.sum(-1, keepdim=True).clamp_min(1).to(vec.dtype)
            out.append(vec)
        return out

    # ------------------------------------------------------------------ encoder
    def forward(self, item_seq: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Hidden states [B, n, D] of every position of a LEFT-padded batch [B, n <= max_len]
        (row t depends on items <= t only; padding positions give 0). ``lengths`` as in
        :meth:`SASRec.forward`."""
        return self._side_states(item_seq, self._mask(item_seq, lengths))

    def _side_states(self, item_seq: Tensor, mask: Tensor) -> Tensor:
        """:meth:`forward` on a checked mask [B, n]: [B, n, D], 0 at padding."""
        if self._takes_padded_path():
            return self._encode_padded(item_seq, mask)
        h = self._encode(item_seq, mask, mask)
        return h.new_zeros(mask.numel(), h.size(-1)).index_copy_(
            0, mask.reshape(-1).nonzero().squeeze(1), h).view(*mask.shape, h.size(-1))

    def encode_last(self, item_seq: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``self(item_seq, lengths)[:, -1]`` [B, D] (what :meth:`score` reads), with the
        last block computing only that column after its attention."""
        mask = self._mask(item_seq, lengths)
        if self._takes_padded_path():
            return self._encode_padded(item_seq, mask)[:, -1]
        select = torch.zeros_like(mask)
        select[:, -1] = mask[:, -1]
        h = self._encode(item_seq, mask, select)
        return h.new_zeros(mask.size(0), h.size(-1)).index_copy_(0, mask[:, -1].nonzero().squeeze(1), h)

    def _takes_padded_path(self) -> bool:
        """True under torch.compile (grouping and packing depend on the data) and when
        the fusion maps read masked scores (``fusion_sees_masked`` with gate/concat, the
        reproduction of DIF-SR's leak): those scores include padding keys, whose
        projections of LN(embedding of id 0) only the padded batch has."""
        return torch.compiler.is_compiling() or (self.config.fusion_sees_masked and self.config.fusion != "sum")

    def _mask(self, item_seq: Tensor, lengths: Tensor | None) -> Tensor:
        check_ids("item_seq", item_seq)
        n, L = item_seq.size(-1), self.config.max_len
        if n > L:
            raise ValueError(f"sequence width {n} exceeds max_len={L}; keep the most recent max_len items "
                             f"(item_seq[:, -{L}:])")
        return padding_mask(item_seq, lengths)

    def _lookup_items(self, *ids: Tensor) -> list[Tensor]:
        """The item vectors of ``ids`` in one table lookup (a host with more than the
        item table's ids overrides it: the composed model's S3-Rec mask token)."""
        return lookup_rows(self.embedding.item, *ids)

    def _encode(self, item_seq: Tensor, mask: Tensor, select: Tensor, *, causal: bool | None = None) -> Tensor:
        """Outputs [K, D] at the K positions of ``select`` [B, n] (real ones), row-major.
        ``causal``: the attention direction of this call (None: the encoder's).

        Rows are encoded in groups of similar span (:class:`~seqrec.models.layers.CroppedGroups`),
        each cropped on the left to its width (8, 16, 32 or max_len columns): Beauty's
        sequences hold about 9 items, so the padded [B, H, n, n] attention and the
        [B, n, D] projections it reads shrink by about 5x against one batch padded to
        max_len. Exact (the outputs are those of the padded batch: positions are
        right-aligned and, with ``fusion_sees_masked=False``, cropped padding keys reach
        neither the softmax nor the fusion maps); only dropout draws differ. Rows without
        a selected position are not encoded. Not traceable, and not for the maps that
        read masked scores (see :meth:`_takes_padded_path`).
        """
        groups = CroppedGroups(mask, select, self.config.max_len)
        # One item-table lookup for every group (one dense table gradient: lookup_rows).
        real_items = [groups.real(item_seq, g) for g in range(len(groups.groups))]
        vectors = self._lookup_items(*real_items)
        outputs = []
        for (_, w, packed, keep), items, v in zip(groups.groups, real_items, vectors):
            # Position-wise work (embedding norm, projections, FFN, attribute lookups) on
            # the real positions only.
            h = self.embedding.dropout(self.embedding.norm(v))
            side = {"positions": self.embedding.position.weight[self.config.max_len - w:],  # [w, D]
                    "attributes": self._field_embeddings(items)}
            outputs.append(self.encoder.encode_packed(h, packed, causal=causal, keep=keep, side=side))
        return groups.merge(outputs, self.embedding.item.weight.new_zeros(0, self.config.hidden_size))

    def _encode_padded(self, item_seq: Tensor, mask: Tensor, *, causal: bool | None = None) -> Tensor:
        """[B, n, D] from one batch padded to max_len, every position computed (see
        :meth:`_takes_padded_path`). Padding positions output 0, as on the grouped path.
        ``causal``: as :meth:`_encode`."""
        n, L = item_seq.size(1), self.config.max_len
        seq, m = F.pad(item_seq, (L - n, 0)), F.pad(mask, (L - n, 0))
        x = self.embedding.dropout(self.embedding.norm(self._lookup_items(seq)[0]))
        side = {"positions": self.embedding.position.weight, "attributes": self._field_embeddings(seq)}
        x = self.encoder(x, m, causal=causal, side=side, skip_padding=False)
        return x[:, L - n:].masked_fill(~mask.unsqueeze(-1), 0.0)

    # ------------------------------------------------------------------ attribute predictors
    def attribute_terms(self, hidden: Tensor, target: Tensor, weight: Tensor | None,
                        count: Tensor | int) -> dict[str, Tensor]:
        """The attribute predictors' BCE of every categorical field, unweighted:
        ``{"attr:<field>": attribute_bce(...)}`` (numeric fields have no term)."""
        return {f"attr:{name}": self.attribute_bce(i, hidden, target, weight, count)
                for i, (name, vocab) in enumerate(zip(self.config.attribute_fields, self.config.attribute_vocab_sizes))
                if vocab > 0}

    def attribute_bce(self, field: int, hidden: Tensor, target: Tensor, weight: Tensor | None,
                      count: Tensor | int) -> Tensor:
        """The multi-label BCE of categorical field ``field``'s predictor: its logits
        ``W_f h + b_f`` against the multi-hot attributes of each row's next item, summed
        over rows and values and divided by ``count * V_f``.

        Args:
            hidden: [N, D] final states of the rows.
            target: [N] the next item of each row (its attributes are the labels).
            weight: [N] row weights (padding 0, under torch.compile) or None (every row counts).
            count: the number of real rows.
        """
        vocab = self.config.attribute_vocab_sizes[field]
        ids = getattr(self, f"_attr_{field}")[target]  # [N, m]
        labels = hidden.new_zeros(ids.size(0), vocab + 1).scatter_(1, ids, 1.0)[:, 1:]
        logits = self.predictors[field](hidden)
        if weight is None:
            bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
        else:
            bce = (F.binary_cross_entropy_with_logits(logits, labels, reduction="none").sum(1) * weight).sum()
        return bce / (count * vocab)



class DIFSR(DecoupledSideInformation, SequentialRecommender):
    """DIF-SR (Xie et al., SIGIR 2022): SASRec whose attention is ``dif_attention``.

    Equations (left padding, ``x`` = item ids [B, n], padded on the left to max_len)::

        R^0 = Dropout(LN(M_I[x]))                  # item only: no position added
        P   = M_P[0..max_len)                      # positions, only as score matrices
        A_f = pool_{a in attrs_f(x_t)} M_f[a]      # per field, [B, n, d_f], fixed
        R^l = FFN(DIF-MHA(R^{l-1}, P, A_1..A_p))   # post-LN blocks, GELU
        per head: att = fuse(q k^T, q_P k_P^T, q_A1 k_A1^T, ...) / sqrt(D/H),
                  out = softmax(att + mask) (R W_V)   (values item-only)
        r_{t,i} = <R^L_t, M_I[i]>

    Loss: ``"ce"`` softmax cross-entropy over all items (the paper's) or ``"bce"`` (one
    sampled negative), averaged over real target positions; plus, with the attribute
    predictors, ``sum_f lambda_f * mean BCE(W_f R^L_t + b_f, multi-hot attrs_f(target_t))``
    over the same positions and the field's attribute values (categorical fields).

    Deviations and open choices:

    - Every position of a training prefix is trained at once (causal attention, next
      item at each position), the way seqrec trains SASRec; DIF-SR's RecBole pipeline
      makes each prefix its own sample and predicts at its last position. The attribute
      predictors therefore act on every position's final representation, each with its
      own next item's attributes. Under ``fusion_sees_masked=False`` (default) the two
      give the same per-prefix function: masked scores never reach the gate / concat
      maps (DIF-SR's code lets those maps read a row's padded and future raw scores).
    - Positions are right-aligned (the most recent item has position max_len - 1), as
      in seqrec's SASRec; inputs narrower than max_len are left-padded to max_len so the
      concat / gate maps (length-max_len score rows) always see the same columns.
    - "Positions only through their own scores" holds for ``fusion="sum"``; the gate /
      concat maps (DIF-SR's nn.Linear over a length-max_len score row) weigh score
      columns by key position themselves, as in DIF-SR.
    - A fully padded query row outputs 0 instead of uniform attention over padding.
    - The attribute predictors skip numeric fields (no multi-label target); numeric
      fields are embedded as value * w and pooled like categorical ones.
    - Predictor tables have V_f outputs (ids 1..V_f); DIF-SR keeps a padding column and
      drops it from the loss, which is the same.

    Side information: the item -> attribute tables of the configured fields are
    constructor inputs (``attributes``), stored as persistent buffers ``_attr_{i}``
    (and ``_attr_present_{i}`` for numeric fields), so they travel in the state dict
    and a loaded model scores new sequences without its dataset. A model built
    without them takes them from the state dict it loads (see
    :meth:`_load_from_state_dict`); checkpoints written before the tables were saved
    load into a model built with ``attributes`` and keep its tables.

    Args:
        config: :class:`DIFSRConfig`.
        attributes: the tables of ``config.attribute_fields``: a
            :class:`~seqrec.data.SequenceDataset` or ``{name: AttributeField}``;
            required before training or scoring when the config names fields (None
            leaves them to :meth:`load_state_dict`).
        backend: ``"seqrec"`` / ``"reference"`` for the attention op, None = default.
    """

    def __init__(self, config: DIFSRConfig, *, attributes=None, backend: str | None = None) -> None:
        super().__init__()
        if not isinstance(config, DIFSRConfig):
            raise ValueError(f"config must be a DIFSRConfig, got {type(config).__name__}")
        if backend is not None:
            get_backend(backend)
        self.config = config
        self.embedding = _Embeddings(config)
        # The shared encoder with DIF-SR's attention (same registration order as the
        # former own blocks: initialisation draws are unchanged).
        self.encoder = TransformerEncoder(
            config.num_layers, config.hidden_size, config.num_heads, config.inner_size, config.hidden_dropout,
            config.attention_dropout, config.hidden_act, config.layer_norm_eps, causal=True, backend=backend,
            attention=partial(DIFMultiHeadAttention, config, backend))
        self.predictors = nn.ModuleList(
            nn.Linear(config.hidden_size, v) if config.attribute_predictor and v > 0 else nn.Identity()
            for v in config.attribute_vocab_sizes)
        self.apply(partial(init_transformer_weights, std=config.initializer_range))
        self._init_side_information(attributes)

    # Parameter names that changed (old prefix -> new): DIF-SR's blocks became the shared
    # encoder's (issue 28), so checkpoints written before load under the new names.
    RENAMED_PREFIXES: dict[str, str] = {"layers.": "encoder.layers."}

    # ------------------------------------------------------------------ losses
    def batch_loss(self, item_seq: Tensor, target_ids: Tensor, negative_ids: Tensor | None = None, *,
                   lengths: Tensor | None = None, features=None) -> LossOutput:
        """Training loss over the real target positions (``target_ids > 0``): next-item
        loss + sum_f lambda_f * attribute loss_f (0 for a batch without real targets),
        with terms ``{"item": next-item loss, "attr:<field>": attribute BCE
        (unweighted), ...}``. ``lengths`` [B] gives the padding mask (None: the zeros of
        ``item_seq``); the attributes come from the model's own tables; ``features`` may
        hold ``"negative_log_q"``, the log-Q correction of ``loss="sampled"``."""
        self.check_ids("item_seq", item_seq)
        shape = tuple(item_seq.shape)
        self.check_ids("target_ids", target_ids, shape)
        real = target_ids > 0
        mask = self._mask(item_seq, lengths)
        # `weight` [N]: None when the N rows are the real targets (eager); under
        # torch.compile every position is a row (static shapes) and padding weighs 0.
        # Eager keeps the rows of the targets alone: the [N, V] logits of "ce" and the
        # attribute heads then run on the real targets only, a fraction of B * n on Beauty
        # (eager-static column of benchmarks/bench_compile.py).
        weight = None
        if torch.compiler.is_compiling():
            hidden = self._encode_padded(item_seq, mask).flatten(0, 1)  # [B * n, D]; 0 at padding
            weight = real.flatten().to(hidden.dtype)

            def rows(t: Tensor) -> Tensor:
                return t.flatten()

            count = real.sum().clamp_min(1)
        else:
            if self._takes_padded_path():
                hidden = self._encode_padded(item_seq, mask)[real]  # [N, D]
            else:
                if bool((real & ~mask).any()):
                    raise ValueError("target_ids has targets at padding positions of item_seq (id 0)")
                # Only the target positions leave the last block, in the order of [real].
                hidden = self._encode(item_seq, mask, real)

            def rows(t: Tensor) -> Tensor:
                return t[real]

            count = max(int(hidden.size(0)), 1)
        target = rows(target_ids)  # [N]

        def total(per_row: Tensor) -> Tensor:
            return (per_row.sum() if weight is None else (per_row * weight).sum()) / count

        negatives = log_q = None
        if self.config.loss == "bce":
            if negative_ids is None:
                raise ValueError('negative_ids is required when config.loss == "bce"')
            self.check_ids("negative_ids", negative_ids, shape)
            negatives = rows(negative_ids)
        elif self.config.loss == "sampled":
            negatives, log_q = self.sampled_negatives(negative_ids, shape, features)  # [B, n, m]

            def position_rows(t: Tensor) -> Tensor:  # [B, n, m] -> [N, m], the rows of `target`
                return t.flatten(0, 1) if weight is not None else t[real]

            negatives, log_q = position_rows(negatives), None if log_q is None else position_rows(log_q)
        terms = {"item": total(next_item_nll(hidden, self.embedding.item, target, self.config.loss, negatives,
                                             log_q=log_q))}
        if self.config.attribute_predictor:
            terms.update(self.attribute_terms(hidden, target, weight, count))
        total = terms["item"]
        for name, weight in zip(self.config.attribute_fields, self.config.field_loss_weights):
            if f"attr:{name}" in terms:
                total = total + weight * terms[f"attr:{name}"]
        return LossOutput(total, terms)

    def item_table(self) -> nn.Embedding:
        return self.embedding.item
