"""S3-Rec: self-supervised pretraining of a bidirectional encoder with four objectives.

Zhou et al., "S3-Rec: Self-Supervised Learning for Sequential Recommendation with Mutual
Information Maximization", CIKM 2020 (code: ``RUCAIBox/CIKM2020-S3Rec``). Notes in
``papers/s3rec-notes-*.md``. Pretraining is this module's :class:`S3Rec`; fine-tuning is
seqrec's causal :class:`~seqrec.models.SASRec` initialised from the pretrained weights by
name (:func:`seqrec.models.load_pretrained`): ``embedding.item`` (the mask-token row
dropped), ``embedding.position``, ``embedding.norm`` and every ``encoder.layers.*`` tensor.

The four objectives are :class:`S3RecObjectives`, which :class:`S3Rec` and the composed
model (:mod:`seqrec.models.composed`: the objectives as weighted terms trained jointly with
the next item, ``seqrec train --model composed --mip-weight ...``) both run.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.backend import get_backend
from ..ops.seq_mask import SeqMaskOutput, seq_mask
from .layers import (
    ItemPositionEmbedding,
    LengthGroups,
    TransformerEncoder,
    init_transformer_weights,
    lookup_rows,
)
from .config import EncoderConfig, Preset, spec

if TYPE_CHECKING:
    from ..data import SequenceDataset

__all__ = ["S3RecConfig", "S3Rec", "S3RecObjectives", "PRESETS", "OBJECTIVES", "attribute_config",
           "item_attribute_table", "combined_attribute_table"]

OBJECTIVES = ("aap", "mip", "map", "sp")
AAP_INPUTS = ("item", "sequence")
REDUCTIONS = ("sum", "mean")

_PAPER = dict(hidden_size=64, num_layers=2, num_heads=2, hidden_dropout=0.5, attention_dropout=0.5, mask_prob=0.2,
              aap_weight=0.2, mip_weight=1.0, map_weight=1.0, sp_weight=0.5)

# Named settings (``seqrec pretrain --preset NAME``): model fields, and pretraining
# settings (``train``: epochs, batch_size) where a preset names them.
PRESETS: dict[str, Preset] = {
    # The paper's (and REFERENCE.md's) S3-Rec settings; they are also the defaults.
    "paper": Preset(model=_PAPER),
    # The first stage of issue 29's recipe (README "The recipe"): the paper's model and
    # objectives, AAP on the encoder output, 20 epochs; `seqrec train --model composed
    # --preset best --init DIR` fine-tunes from it (every encoder tensor loads: the
    # encoders' shapes are the same). 20, not the authors' 150 epochs: the fine-tune
    # from epoch 20 of this pretraining is what the s3rec-aap-input suite measured,
    # and validation picks the composition on Beauty and LastFM.
    "best": Preset(model=dict(_PAPER, aap_input="sequence"), train=dict(epochs=20),
                   help="first stage of issue 29's recipe: the paper's settings, 20 epochs; fine-tune with "
                        "`seqrec train --model composed --preset best --init DIR`"),
}


@dataclasses.dataclass(frozen=True)
class S3RecConfig(EncoderConfig):
    """S3-Rec pretraining hyper-parameters (plain values; defaults = the paper's).

    Attributes:
        num_items: real items, ids 1..num_items; id num_items + 1 is the mask token.
        num_attributes: attribute ids 1..num_attributes (all fields of
            ``attribute_fields`` in one id space); 0 means no side information, which
            requires AAP and MAP off.
        attribute_fields: the dataset's categorical fields used as attributes, in order
            (their ids are offset into one space, see :func:`item_attribute_table`);
            empty = every categorical field.
        max_len, hidden_size, num_layers, num_heads, inner_size, hidden_dropout,
        attention_dropout, initializer_range, hidden_act, layer_norm_eps: the encoder,
            as :class:`~seqrec.models.SASRecConfig` (they must match the fine-tune model).
        mask_prob: item masking probability p, 0.2.
        aap_weight, mip_weight, map_weight, sp_weight: objective weights 0.2 / 1 / 1 /
            0.5; 0 switches an objective off (it is then not computed at all).
        aap_input: ``"sequence"`` (default): AAP scores the encoder output at the
            item's unmasked position (the authors' released code); ``"item"``: the item
            embedding e_i (the paper's f(i, a) = sigmoid(e_i^T W e_a)). The default is
            the reading the published numbers come from: with 20 pretraining epochs it
            fine-tunes to sampled HR@10 .5902 +- .0074 on LastFM (3 seeds; .5725 +-
            .0046 with ``"item"``) and .5447 on Beauty (.5248 with ``"item"``)
            (``benchmarks/reproduce.py``, suites ``s3rec-aap-input``, ``s3rec-seeds``
            and ``s3rec-short``).
        reduction: ``"sum"`` over scored positions/rows (the authors', which weights
            AAP and MAP by their attribute counts) or ``"mean"`` (each objective divided
            by its number of scored positions or rows).
    """

    num_attributes: int = spec(0, kind="int", minimum=0, cli=False,
                               help="attribute ids 1..num_attributes (0: no side information)")
    attribute_fields: tuple[str, ...] = spec((), kind="any", cli=False,
                                             help="categorical fields used as attributes (empty: all)")
    mask_prob: float = spec(0.2, kind="number", minimum=0, maximum=1, flag="mask-p", help="item masking probability p")
    aap_weight: float = spec(0.2, kind="number", minimum=0, help="weight of the AAP loss (0: off)")
    mip_weight: float = spec(1.0, kind="number", minimum=0, help="weight of the MIP loss (0: off)")
    map_weight: float = spec(1.0, kind="number", minimum=0, help="weight of the MAP loss (0: off)")
    sp_weight: float = spec(0.5, kind="number", minimum=0, help="weight of the SP loss (0: off)")
    aap_input: str = spec("sequence", kind="choice", choices=AAP_INPUTS,
                          help="what AAP scores: the encoder output at the item (sequence) or the item embedding")
    reduction: str = spec("sum", kind="choice", choices=REDUCTIONS,
                          help="sum each loss over its scored positions (the authors') or average it")

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.attribute_fields, tuple) or not all(
                isinstance(f, str) and f for f in self.attribute_fields):
            self.fail("attribute_fields", "a tuple of field names", self.attribute_fields)
        if not self.objectives:
            raise ValueError("S3RecConfig: every objective weight is 0; keep at least one of "
                             "aap, mip, map, sp on")
        if self.num_attributes == 0 and (self.aap_weight > 0 or self.map_weight > 0):
            raise ValueError("S3RecConfig: AAP and MAP need item attributes but num_attributes=0; "
                             "give the dataset's attributes or switch them off (aap_weight=0, "
                             "map_weight=0; CLI: --no-aap --no-map)")

    @property
    def objectives(self) -> tuple[str, ...]:
        """The objectives switched on (weight > 0), in the paper's order."""
        return tuple(o for o in OBJECTIVES if getattr(self, f"{o}_weight") > 0)


def attribute_config(dataset: "SequenceDataset", fields: tuple[str, ...] | list[str] = ()) -> dict:
    """``num_attributes`` and ``attribute_fields`` of :class:`S3RecConfig` for the named
    categorical fields of ``dataset`` (all of them when none is named)."""
    _, num_attributes, fields = item_attribute_table(dataset, fields)
    return dict(num_attributes=num_attributes, attribute_fields=fields)


def item_attribute_table(dataset: "SequenceDataset", fields: tuple[str, ...] | list[str] = ()
                         ) -> tuple[Tensor, int, tuple[str, ...]]:
    """Item -> attribute ids table for S3-Rec, from a dataset's categorical fields.

    Args:
        dataset: a :class:`~seqrec.data.SequenceDataset`.
        fields: categorical field names to use, in order; empty = all categorical
            fields in the dataset's order. Numeric fields are rejected.

    Returns:
        ``(table, num_attributes, fields)``: ``table`` [num_items + 1, W] int64, row i =
        the attribute ids of item i padded with 0 (row 0 empty; W >= 1 is the largest
        number of ids of one item), the ids of field k offset by the value counts of
        fields 0..k-1 so all fields share one id space 1..num_attributes.
    """
    available = [n for n, f in dataset.attributes.items() if f.kind == "categorical"]
    fields = tuple(fields) if fields else tuple(available)
    for name in fields:
        if name not in dataset.attributes:
            raise ValueError(f"attribute field {name!r} not in the dataset (it has "
                             f"{sorted(dataset.attributes) or 'no attribute fields'})")
    return combined_attribute_table(dataset.attributes, fields, dataset.num_items)


def combined_attribute_table(attributes: Mapping[str, object], fields: Sequence[str], num_items: int
                             ) -> tuple[Tensor, int, tuple[str, ...]]:
    """:func:`item_attribute_table` of the named categorical fields of ``attributes``
    (``{name: AttributeField}``, e.g. ``dataset.attributes``), each covering ``num_items``
    items: ``(table, num_attributes, fields)``. Also how the composed model gets S3-Rec's
    table from the fields it is built with."""
    fields = tuple(fields)
    for name in fields:
        if name not in attributes:
            raise ValueError(f"attribute field {name!r} is missing; given: {sorted(attributes)}")
        if attributes[name].kind != "categorical":
            raise ValueError(f"attribute field {name!r} is numeric; S3-Rec needs categorical "
                             "attributes")
        if attributes[name].num_items != num_items:
            raise ValueError(f"attribute field {name!r} covers {attributes[name].num_items} items, "
                             f"the model {num_items}")
    blocks, offset = [], 0
    for name in fields:
        field = attributes[name]
        padded = field.padded().astype(np.int64)
        blocks.append(np.where(padded > 0, padded + offset, 0))
        offset += field.num_values
    if not blocks:
        return torch.zeros(num_items + 1, 1, dtype=torch.int64), 0, ()
    table = np.concatenate(blocks, axis=1)
    # Ids first in each row, padding after (a row's fields may be partly empty).
    table = -np.sort(-table, axis=1)
    width = max(int((table > 0).sum(1).max()), 1)
    return torch.from_numpy(np.ascontiguousarray(table[:, :width])), offset, fields


class S3RecObjectives:
    """S3-Rec's four objectives (AAP, MIP, MAP, SP) on a host's encoder: the one code both
    :class:`S3Rec` (pretraining) and the composed model (:mod:`seqrec.models.composed`,
    the objectives trained jointly with the next item) run.

    The host is an ``nn.Module`` with ``config`` (``num_items``, ``num_attributes``,
    ``mask_prob``, ``aap_input``, ``reduction`` and the four ``*_weight`` fields of
    :class:`S3RecConfig`), ``backend``, ``embedding`` (``item`` table, ``packed``),
    ``encoder`` (a :class:`~seqrec.models.layers.TransformerEncoder`), the heads of the
    objectives it computes (``attribute_embedding``, ``aap``, ``mip``, ``map``, ``sp``)
    and the ``item_attributes`` buffer ([num_items + 1, W], width 0 until set). The
    mask token is item id ``num_items + 1``; :meth:`_lookup_items` gives the vectors of
    ids (S3-Rec: rows of its item table, which holds the mask token's row too) and
    :meth:`_hidden_at` the encoder's bidirectional outputs at chosen positions of a
    corrupted batch (a host with another encoder overrides it).
    """

    @property
    def s3rec_objectives(self) -> tuple[str, ...]:
        """The objectives switched on (weight > 0), in the paper's order."""
        return tuple(o for o in OBJECTIVES if getattr(self.config, f"{o}_weight") > 0)

    def _computed_objectives(self, names: Sequence[str] | None) -> tuple[str, ...]:
        """``names`` checked against the objectives switched on, in the paper's order."""
        on = self.s3rec_objectives
        if names is None:
            return on
        names = tuple(names)
        off = [n for n in names if n not in on]
        if off:
            raise ValueError(f"S3-Rec objectives {off} are not switched on (weight 0 or unknown); on: {list(on)}")
        return tuple(o for o in on if o in names)

    @property
    def mask_token(self) -> int:
        return self.config.num_items + 1

    def set_item_attributes(self, table: Tensor) -> None:
        """Store ``table`` [num_items + 1, W] int64: row i = attribute ids of item i
        (distinct, in 1..num_attributes), padded with 0; row 0 must be empty."""
        cfg = self.config
        if (not isinstance(table, Tensor) or table.dtype != torch.int64 or table.dim() != 2
                or table.size(0) != cfg.num_items + 1 or table.size(1) < 1):
            got = f"{table.dtype} {tuple(table.shape)}" if isinstance(table, Tensor) else type(table)
            raise ValueError(f"item attribute table must be int64 [num_items + 1 = "
                             f"{cfg.num_items + 1}, W >= 1], got {got}")
        if table.numel() and (int(table.min()) < 0 or int(table.max()) > cfg.num_attributes):
            raise ValueError(f"item attribute ids must lie in [0, num_attributes="
                             f"{cfg.num_attributes}]")
        if bool((table[0] != 0).any()):
            raise ValueError("row 0 (the padding item) of the attribute table must be empty")
        self.item_attributes = table.to(self.embedding.item.weight.device)

    def _missing_attributes_message(self) -> str:
        return ("AAP/MAP need the item attribute table: call model.attach_dataset(dataset) or "
                "set_item_attributes(table) first")

    def _lookup_items(self, *ids: Tensor) -> list[Tensor]:
        """The item vectors of ``ids`` (mask token included), in one table lookup."""
        return lookup_rows(self.embedding.item, *ids)

    def _bidirectional_states(self, item_seq: Tensor) -> Tensor:
        """[R, n, D] bidirectional outputs of every position (the ``torch.compile`` path)."""
        raise NotImplementedError(f"{type(self).__name__}: S3-Rec's objectives under torch.compile")

    def _hidden_at(self, item_seq: Tensor, rows: Tensor, cols: Tensor, extra_ids: Tensor
                   ) -> tuple[Tensor, Tensor]:
        """Encoder outputs [K, D] at positions ``(rows[k], cols[k])`` of ``item_seq`` [R, n]
        (real positions), and the item vectors of ``extra_ids`` (the objectives' own
        lookups: :func:`~seqrec.models.layers.lookup_rows` does all of them and the
        encoder's in one call).

        Only rows holding a requested position are encoded, and only their real
        positions (one packed call: embedding, projections and feed-forward on those
        rows alone, the attention on rows grouped by length, see
        :class:`~seqrec.models.layers.LengthGroups`); the last block computes only the
        requested positions (``TransformerEncoder.encode_packed``'s ``keep``), and the
        padded [R, n, D] result is never built."""
        if torch.compiler.is_compiling():  # data-dependent selection: one full call
            return self._bidirectional_states(item_seq)[rows, cols], self._lookup_items(extra_ids)[0]
        n = item_seq.size(1)
        used, local = torch.unique(rows, return_inverse=True)
        seq = item_seq.index_select(0, used)
        packed = LengthGroups(seq != 0)
        ids = seq.reshape(-1).index_select(0, packed.index)
        vectors, extra = self._lookup_items(ids, extra_ids)
        h = self.embedding.packed(seq, packed.index, vectors)
        # packed.index lists the real positions in row-major order: a request's packed
        # row is its place there.
        keep = torch.searchsorted(packed.index, local * n + cols)
        return self.encoder.encode_packed(h, packed, causal=False, keep=keep), extra

    def corrupt(self, item_seq: Tensor, *, seed: int) -> SeqMaskOutput:
        """One :func:`seqrec.ops.seq_mask` call on the batch (p = ``config.mask_prob``,
        the last item always masked, as the authors). Runs where ``item_seq`` lives."""
        return seq_mask(item_seq, num_items=self.config.num_items, mask_token=self.mask_token,
                        mask_prob=self.config.mask_prob, seed=seed, backend=self.backend)

    # ------------------------------------------------------------------ objectives
    def s3rec_losses(self, masked: SeqMaskOutput, names: Sequence[str] | None = None) -> dict[str, Tensor]:
        """The unweighted loss of every objective switched on, from a corrupted batch.

        Args:
            masked: :class:`~seqrec.ops.SeqMaskOutput` of the batch (its
                ``masked_items``, ``pos_items``, ``neg_items``, ``masked_segment_seq``,
                ``pos_segment``, ``neg_segment``, ``segment_len`` are read; attribute
                targets come from the attached table).
            names: compute only these objectives (each switched on); None = all that
                are. The encoder states and lookups of the others are not computed.

        Returns:
            ``{"aap": ..., "mip": ..., "map": ..., "sp": ...}`` (those computed only),
            scalars reduced by ``config.reduction``.
        """
        cfg = self.config
        on = self._computed_objectives(names)
        if ("aap" in on or "map" in on) and self.item_attributes.size(1) == 0:
            raise ValueError(self._missing_attributes_message())
        items = masked.masked_items
        mean = cfg.reduction == "mean"
        losses: dict[str, Tensor] = {}
        # [num_attributes, D] (a host builds the table only for AAP / MAP)
        attr_weight = self.attribute_embedding.weight[1:] if ("aap" in on or "map" in on) else None
        keep = (items != 0) & (items != self.mask_token)  # unmasked real positions (AAP)
        where = items == self.mask_token  # masked positions (MIP, MAP)

        if torch.compiler.is_compiling():
            states, vectors, weights = self._static_selection(masked, keep, where, on)
            kept_items, targets = torch.where(keep, items, 0).flatten(), masked.pos_items.flatten()
        else:
            states, vectors, kept_items, targets = self._packed_selection(masked, keep, where, on)
            weights = {}

        def reduce(per_item: Tensor, name: str) -> Tensor:
            w = weights.get(name)
            if w is None:
                return _reduce(per_item, mean)
            total = (per_item * w).sum()  # static shapes: rows outside the selection weigh 0
            return total / w.sum().clamp_min(1) if mean else total

        if "aap" in on:
            x = vectors["kept"] if cfg.aap_input == "item" else states["kept"]
            per_position = _attribute_bce(self.aap(x) @ attr_weight.t(),
                                          self.item_attributes[kept_items])
            losses["aap"] = reduce(per_position, "kept")
        if "mip" in on or "map" in on:
            h = states["masked"]  # [M, D]
            if "mip" in on:
                hm = self.mip(h)
                pos = torch.sigmoid((hm * vectors["target"]).sum(-1))
                neg = torch.sigmoid((hm * vectors["negative"]).sum(-1))
                losses["mip"] = reduce(F.softplus(neg - pos), "masked")
            if "map" in on:
                per_position = _attribute_bce(self.map(h) @ attr_weight.t(),
                                              self.item_attributes[targets])
                losses["map"] = reduce(per_position, "masked")
        if "sp" in on:
            context = self.sp(states["context"])
            pos = torch.sigmoid((context * states["pos_segment"]).sum(-1))
            neg = torch.sigmoid((context * states["neg_segment"]).sum(-1))
            losses["sp"] = reduce(F.softplus(neg - pos), "context")
        return {o: losses[o] for o in OBJECTIVES if o in losses}

    def _static_selection(self, masked: SeqMaskOutput, keep: Tensor, where: Tensor, on: tuple[str, ...]
                          ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """What :meth:`_packed_selection` selects, with static shapes (a ``torch.compile``
        graph): every position of the corrupted rows and the last one of every segment
        row, each with a 0/1 weight (``{"kept": keep, "masked": where, "context": rows
        with a segment}``) instead of being packed out by a mask. Eager keeps the packed
        selection: it encodes the real positions alone and runs the last block on the
        selected ones. ``on``: the objectives computed."""
        cfg = self.config
        items = masked.masked_items
        batch, n = items.shape
        states: dict[str, Tensor] = {}
        weights = {"kept": keep.flatten(), "masked": where.flatten()}
        inputs = []
        if "mip" in on or "map" in on or ("aap" in on and cfg.aap_input == "sequence"):
            inputs.append(items)
        if "sp" in on:
            inputs += [masked.masked_segment_seq, masked.pos_segment, masked.neg_segment]
            weights["context"] = masked.segment_len > 0
        if inputs:
            hidden = self._bidirectional_states(torch.cat(inputs))  # [R, n, D]
            if inputs[0] is items:
                states["masked"] = states["kept"] = hidden[:batch].flatten(0, 1)  # [B * n, D]
                hidden = hidden[batch:]
            if "sp" in on:
                last = hidden[:, -1]
                states["context"], states["pos_segment"], states["neg_segment"] = last.split(batch)
        vectors = {}
        if "aap" in on and cfg.aap_input == "item":
            vectors["kept"] = self.embedding.item(torch.where(keep, items, 0).flatten())
        if "mip" in on:
            vectors["target"] = self.embedding.item(masked.pos_items.flatten())
            vectors["negative"] = self.embedding.item(masked.neg_items.flatten())
        return states, vectors, {k: v.to(self.embedding.item.weight.dtype) for k, v in weights.items()}

    def _packed_selection(self, masked: SeqMaskOutput, keep: Tensor, where: Tensor, on: tuple[str, ...]
                          ) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor, Tensor]:
        """The hidden states and item vectors the objectives ``on`` read, at the selected
        positions only: ``(states, vectors, kept item ids, masked targets)``."""
        cfg = self.config
        items = masked.masked_items
        batch, n = items.shape
        # One encoder call for every hidden state needed: the masked (and, for AAP on the
        # sequence, unmasked) positions of the item-masked rows, and the last position of
        # the segment-masked, positive- and negative-segment rows of rows with a segment.
        inputs, rows, cols, sizes = [], [], [], {}
        if "mip" in on or "map" in on or ("aap" in on and cfg.aap_input == "sequence"):
            inputs.append(items)
            for name, sel in (("masked", where), ("kept", keep)):
                if name == "masked" and not ("mip" in on or "map" in on):
                    continue
                if name == "kept" and not ("aap" in on and cfg.aap_input == "sequence"):
                    continue
                r, c = sel.nonzero(as_tuple=True)
                rows.append(r)
                cols.append(c)
                sizes[name] = r.numel()
        if "sp" in on:
            offset = len(inputs) * batch
            inputs += [masked.masked_segment_seq, masked.pos_segment, masked.neg_segment]
            has = (masked.segment_len > 0).nonzero().squeeze(1)
            for j, name in enumerate(("context", "pos_segment", "neg_segment")):
                rows.append(has + offset + j * batch)
                cols.append(torch.full_like(has, n - 1))
                sizes[name] = has.numel()
        # The item vectors the objectives read directly, looked up with the encoder's.
        kept_items = items[keep]
        targets = masked.pos_items[where]
        lookups = {}
        if "aap" in on and cfg.aap_input == "item":
            lookups["kept"] = kept_items
        if "mip" in on:
            lookups["target"] = targets
            lookups["negative"] = masked.neg_items[where]
        extra_ids = torch.cat(list(lookups.values())) if lookups else items.new_zeros(0)
        if inputs:
            hidden, extra = self._hidden_at(torch.cat(inputs), torch.cat(rows), torch.cat(cols), extra_ids)
            states = dict(zip(sizes, hidden.split(list(sizes.values()))))
        else:
            states, extra = {}, self._lookup_items(extra_ids)[0]
        vectors = dict(zip(lookups, extra.split([i.numel() for i in lookups.values()])))
        return states, vectors, kept_items, targets


class S3Rec(S3RecObjectives, nn.Module):
    """S3-Rec pretraining model (Zhou et al., CIKM 2020).

    Encoder: SASRec's embedding and Transformer blocks (:mod:`seqrec.models.layers`,
    same parameter names) run bidirectionally, with one more item row, the mask token
    ``num_items + 1``. One :func:`seqrec.ops.seq_mask` call corrupts a batch; then, with
    ``F`` the encoder output of the item-masked sequence, ``e`` item embeddings, ``e_a``
    attribute embeddings and ``W_*`` linear maps (with bias, as the authors)::

        AAP  f(t, a) = sigmoid(F_t^T W_AAP e_a)      unmasked real positions, every attribute
                                                     (or e_i for F_t: ``aap_input="item"``)
        MIP  f(t, i) = sigmoid(F_t^T W_MIP e_i)      masked positions, original vs negative item
        MAP  f(t, a) = sigmoid(F_t^T W_MAP e_a)      masked positions, every attribute
        SP   f(s, s') = sigmoid(s^T W_SP s')         s, s': last-position outputs of the
                                                     segment-masked sequence and of the segment

    Losses. MIP and SP: the paper's NCE term with the one sampled negative,
    ``-(f_pos - log(exp f_pos + exp f_neg)) = softplus(f_neg - f_pos)`` (identical to the
    authors' ``BCE(sigmoid(f_pos - f_neg), 1)``). AAP and MAP: binary cross-entropy of
    ``sigmoid(score)`` against the item's attribute set over all attributes ("its
    attributes vs the rest"), as the authors' code (the paper writes an NCE whose
    denominator runs over the non-attributes). Total
    ``0.2 AAP + 1 MIP + 1 MAP + 0.5 SP`` by default, each summed over the batch.

    Deviations and open choices:

    - AAP scores the encoder output at the unmasked position, as the authors' code
      (``aap_input="sequence"``); the paper's formula scores the item embedding
      (``aap_input="item"``), which fine-tunes measurably worse (see
      :class:`S3RecConfig`).
    - Rows with fewer than 2 items have no segment and are left out of SP (the authors
      keep them; their term is the constant log 2 there, with zero gradient).
    - The segment negative comes from the other rows of the batch, the item negatives
      never equal the mask token (see :func:`seqrec.ops.seq_mask`).
    - MAP targets are gathered from the attached item table at the masked positions
      (``seq_mask`` is called without ``item_attributes``): its dense [B, n, W] copy
      would cost W values per position (LastFM: up to W = 110 tags an item) for the ~20% masked.
    - Attribute id 0 (padding) is not scored. The four encoder passes (item-masked,
      segment-masked, positive and negative segment) run as one call over the rows that
      hold a position some objective reads, on their real positions (see ``_hidden_at``).

    Args:
        config: :class:`S3RecConfig`.
        backend: attention and ``seq_mask`` backend (``"seqrec"`` / ``"reference"``),
            None = process default.

    Side information: :meth:`attach_dataset` (or :meth:`set_item_attributes`) stores the
    item -> attribute ids table as a non-persistent buffer; AAP and MAP need it.
    """

    def __init__(self, config: S3RecConfig, *, backend: str | None = None) -> None:
        super().__init__()
        if not isinstance(config, S3RecConfig):
            raise ValueError(f"config must be an S3RecConfig, got {type(config).__name__}")
        if backend is not None:
            get_backend(backend)
        self.config = config
        self.backend = backend
        d = config.hidden_size
        self.embedding = ItemPositionEmbedding(config.num_items + 2, config.max_len, d,
                                               config.hidden_dropout, config.layer_norm_eps)
        self.encoder = TransformerEncoder(
            config.num_layers, d, config.num_heads, config.ffn_size, config.hidden_dropout,
            config.attention_dropout, config.hidden_act, config.layer_norm_eps, causal=False,
            backend=backend)
        self.attribute_embedding = nn.Embedding(config.num_attributes + 1, d, padding_idx=0)
        self.aap = nn.Linear(d, d)
        self.mip = nn.Linear(d, d)
        self.map = nn.Linear(d, d)
        self.sp = nn.Linear(d, d)
        self.register_buffer("item_attributes",
                             torch.zeros(config.num_items + 1, 0, dtype=torch.int64),
                             persistent=False)
        self.apply(partial(init_transformer_weights, std=config.initializer_range))

    # ------------------------------------------------------------------ side information
    def attach_dataset(self, dataset: "SequenceDataset") -> None:
        """Take the item -> attribute table from ``dataset`` (fields ``config.attribute_fields``)."""
        table, num_attributes, fields = item_attribute_table(dataset, self.config.attribute_fields)
        if dataset.num_items != self.config.num_items:
            raise ValueError(f"dataset has {dataset.num_items} items, the model "
                             f"num_items={self.config.num_items}")
        if num_attributes != self.config.num_attributes:
            raise ValueError(
                f"dataset attribute fields {list(fields)} hold {num_attributes} attribute ids, "
                f"the model num_attributes={self.config.num_attributes}")
        self.set_item_attributes(table)

    # ------------------------------------------------------------------ encoder
    def forward(self, item_seq: Tensor) -> Tensor:
        """Bidirectional hidden states [B, n, D] of ``item_seq`` [B, n] (ids in
        [0, num_items + 1], left-padded with 0; the mask token counts as a real position);
        0 at padding positions."""
        if not isinstance(item_seq, Tensor) or item_seq.dtype not in (torch.int64, torch.int32) \
                or item_seq.dim() != 2:
            raise ValueError("item_seq must be a [B, n] int64 tensor")
        if torch.compiler.is_compiling():  # data-dependent sizes: the padded call
            return self._encode(item_seq)
        packed = LengthGroups(item_seq != 0)
        h = self.embedding.packed(item_seq, packed.index)
        return packed.unpack(self.encoder.encode_packed(h, packed, causal=False))

    def _encode(self, item_seq: Tensor) -> Tensor:
        return self.encoder(self.embedding(item_seq), item_seq != 0, causal=False)

    def _bidirectional_states(self, item_seq: Tensor) -> Tensor:
        return self._encode(item_seq)

    # ------------------------------------------------------------------ objectives
    def pretrain_losses(self, masked: SeqMaskOutput) -> dict[str, Tensor]:
        """The unweighted loss of every objective switched on, from a corrupted batch
        (:meth:`S3RecObjectives.s3rec_losses`): ``{"aap": ..., "mip": ..., "map": ...,
        "sp": ...}`` (enabled ones only), scalars reduced by ``config.reduction``."""
        return self.s3rec_losses(masked)

    def weighted_loss(self, losses: dict[str, Tensor]) -> Tensor:
        """``sum_o weight_o * losses[o]`` over the enabled objectives."""
        return sum(getattr(self.config, f"{o}_weight") * v for o, v in losses.items())

    def pretrain_loss(self, item_seq: Tensor, *, seed: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Corrupt ``item_seq`` [B, n] (one ``seq_mask`` call) and return
        ``(weighted total, per-objective losses)``."""
        losses = self.pretrain_losses(self.corrupt(item_seq, seed=seed))
        return self.weighted_loss(losses), losses


def _attribute_bce(scores: Tensor, ids: Tensor) -> Tensor:
    """Per-row BCE of sigmoid(scores) [P, num_attributes] against the attribute set given as
    padded ids [P, W] (1-based, 0 = none, distinct): sum_a softplus(s_a) - sum_{a in ids} s_a."""
    picked = scores.gather(1, (ids - 1).clamp_min(0)) * (ids > 0)
    return F.softplus(scores).sum(-1) - picked.sum(-1)


def _reduce(per_item: Tensor, mean: bool) -> Tensor:
    total = per_item.sum()
    return total / max(per_item.numel(), 1) if mean else total
