"""One encoder, parts chosen by configuration: side information, interests, attention
direction and weighted objectives (issue 29 item 1).

``ComposedRecommender`` is the shared Transformer encoder of :mod:`seqrec.models.layers`
with the parts of the papers' models put on it by :class:`ComposedConfig`:

* ``side_information``: ``"none"`` (item + learned position embeddings, as SASRec) or
  ``"difsr"``: DIF-SR's decoupled fusion (:class:`~seqrec.models.difsr.DIFMultiHeadAttention`
  in every block, its attribute tables and embeddings: :class:`~seqrec.models.difsr.DecoupledSideInformation`);
* ``interests``: ``"none"`` (one user vector, the last position's state), ``"dss"``:
  DSS's K intention vectors (:class:`~seqrec.models.dss.IntentionHead`: intention
  clustering, weighting, aggregation, log-sum-exp scoring), or ``"sine"``: SINE's K
  sparse interests (:class:`~seqrec.models.sine.SparseInterestHead`: concept activation,
  intention assignment, interests, their aggregation into a user vector, SINE's
  ``merge`` rule for scores) read from the encoder's states where SINE reads its item
  embeddings (its positions, right-aligned, still enter its attention keys). As SINE
  trains on every prefix of a sequence, each target position trains the head on the
  prefix of the (causal) states that ends there, right-aligned as its own sequence
  (``max_prefixes``: the P most recent of a row); scoring reads the whole sequence;
* ``attention``: ``"causal"`` or ``"bidirectional"``; bidirectional attention sees a
  position's own next item, so then only the last position of a row is trained (its
  target is the item after the whole input; SINE's head then reads the whole input's
  states) and it is refused with DSS's intentions, whose prefix vectors need causal
  states;
* objectives, each a weighted term (:class:`Objective`); a weight of 0 leaves the term
  out (not computed, its parameters get no gradient):

  - ``item`` (one user vector: the last state, or SINE's aggregated user vector) or
    ``seq2item`` (DSS's K vectors), weight ``next_item_weight`` (``--next-item-weight``,
    1): the next item, ``loss`` ``ce`` / ``bce`` / ``sampled`` (log-Q corrected); with
    ``interests="dss"`` DSS's mixture softmax over the K vectors (``ce`` / ``sampled``);
    with ``interests="sine"`` ``ce`` or ``sampled`` (SINE's: a softmax over items);
  - ``attr:<field>``, weight ``attribute_loss_weight`` (``--attribute-weight``, 0; one
    or one per field): DIF-SR's attribute predictors, the multi-label BCE of the next
    item's attributes from the encoder's state (needs ``side_information="difsr"``);
  - ``seq2seq``, weight ``seq2seq_weight`` (``--seq2seq-weight``, 0): DSS's InfoNCE of
    the past against the reversed future's intention vectors, logged with its ``pairs``
    and ``present`` counts (needs ``interests="dss"``);
  - ``covariance``, weight ``reg_weight`` (``--reg-weight``, 0): SINE's covariance
    regulariser of its concept prototypes (needs ``interests="sine"``);
  - ``aap``, ``mip``, ``map``, ``sp``, weights ``aap_weight`` ... ``sp_weight``
    (``--aap-weight`` ..., 0): S3-Rec's self-supervised objectives trained jointly with
    the others (see below); AAP and MAP need categorical ``attribute_fields``.

S3-Rec's objectives are :class:`~seqrec.models.s3rec.S3RecObjectives`, the code ``seqrec
pretrain --model s3rec`` runs. Each batch's training parts (:func:`s3rec_sequence`: the
inputs and the item after them) are corrupted once by ``seq_mask`` (``mask_prob``; its seed
drawn from torch's default CPU generator, so a seeded run repeats and a resumed one
continues exactly) and the four terms share that corruption and one encoder call. Choices:

* Attention: the terms' encoder passes are bidirectional, with the shared weights,
  whatever ``attention`` the next-item term uses (the attention mask is per call, as S3-Rec
  pretrains bidirectionally and fine-tunes causally). S3-Rec defines its objectives on a
  bidirectional encoder; run causally, a masked item would be predicted from its past
  only (MIP a next-item term in disguise) and SP's context would not see the segment's
  right. So with ``attention="causal"`` the joint model is S3-Rec's pretraining and its
  causal fine-tuning trained at once on one set of weights.
* The mask token (id ``num_items + 1``) has its own vector, ``mask_embedding``: the item
  table keeps its ``num_items + 1`` rows, so scoring and the softmax never see it;
  :func:`~seqrec.models.load_pretrained` reads it from an S3-Rec checkpoint's last item
  row. With DIF-SR's fusion a masked position has no attributes (else MIP / MAP would read
  the masked item's).
* Attributes: S3-Rec's ids are the categorical ``attribute_fields`` offset into one space
  (:func:`~seqrec.models.s3rec.item_attribute_table`), taken from the constructor's
  ``attributes``; without DIF-SR's side information the fields serve only AAP / MAP.
* ``reduction`` defaults to ``"mean"`` (S3-Rec's is ``"sum"``, which grows with the batch
  against the next-item mean); one sample per user (the training part whole), not S3-Rec
  pretraining's every prefix.

Every part is the papers' models' own code (no copy): the equivalence tests
(``tests/test_composed.py``) load a SASRec, DIF-SR or DSS state dict into the composed
model configured as that model and get the same loss and gradients
(``tests/test_composed_s3rec.py``: an S3-Rec state dict, S3-Rec's four terms); SINE's head,
given SINE's item embeddings for states, loads a SINE state dict and gives SINE's loss,
terms, gradients and scores (``tests/test_composed_sine.py``). Parameter names are
those of the model each part comes from, so checkpoints load by name both ways and any
pretraining (S3-Rec, DSS) initialises the encoder completely (``seqrec train --model
composed --init RUN``).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.backend import get_backend
from ..ops.seq_mask import SeqMaskOutput
from .base import LossOutput, SequentialRecommender, check_candidates
from .config import EncoderConfig, Preset, field_of, flag_name, spec
from .difsr import DIFMultiHeadAttention, DIFSRConfig, DecoupledSideInformation, SideInformationFields, _Embeddings
from .dss import DSSConfig, IntentionHead
from .layers import (ItemPositionEmbedding, TransformerEncoder, encode_last_position, init_transformer_weights,
                     lookup_rows)
from .losses import next_item_nll
from .s3rec import OBJECTIVES as S3REC_OBJECTIVES, S3RecConfig, S3RecObjectives, combined_attribute_table
from .sine import SINEConfig, SINEOutput, SparseInterestHead, covariance_regularizer, kept_targets

__all__ = ["ComposedConfig", "ComposedRecommender", "EncodedBatch", "Objective", "config_objectives",
           "next_item_term", "attribute_term", "seq2seq_term", "s3rec_term", "s3rec_sequence", "covariance_term",
           "PRESETS"]

SIDE_INFORMATION = ("none", "difsr")
INTERESTS = ("none", "dss", "sine")
ATTENTIONS = ("causal", "bidirectional")
LOSSES = ("ce", "bce", "sampled")

# Named compositions (``seqrec train --model composed --preset NAME``), chosen on
# validation data only.
PRESETS: dict[str, Preset] = {
    # Issue 29's recipe: DIF-SR's decoupled fusion of the item attributes (--attributes)
    # and DSS's K = 4 intentions on the small encoder, trained by the full softmax. Chosen
    # on validation NDCG@20 over the archived rows (benchmarks/results; README "The
    # recipe"): the full softmax beats a sampled one (100 negatives) by 12% on Beauty's
    # validation (DSS seq2item only: .0825 vs .0727) and loses 4% on LastFM's (.0635 vs
    # .0662), and the intentions (.0825) beat one user vector (.0795) on Beauty. The
    # budget is one rule for any data: at most 200 epochs, stopped after 30 validations
    # without a new best. LastFM (5 batches an epoch) still improves after 100 epochs, so
    # a patience of 10 there stops on a plateau of noise (SASRec CE: best epoch 6).
    # Initialised (--init) from `seqrec pretrain --preset best` (S3-Rec's, 20 epochs), the
    # recipe's first stage, it is better on both datasets' validation (README "The recipe").
    "best": Preset(
        model=dict(side_information="difsr", interests="dss", loss="ce", hidden_size=64, num_layers=2, num_heads=2,
                   hidden_dropout=0.5, attention_dropout=0.5, attribute_sizes=64, fusion="gate",
                   num_intentions=4, attribute_loss_weight=0.0, seq2seq_weight=0.0),
        train=dict(lr=1e-3, batch_size=256, epochs=200, patience=30),
        help="issue 29's recipe: DIF-SR fusion (needs --attributes) + DSS intentions, full-softmax CE; "
             "best with --init from `seqrec pretrain --preset best`"),
}


@dataclasses.dataclass(frozen=True)
class ComposedConfig(SideInformationFields, EncoderConfig):
    """The composed model's parts and objectives (module docstring).

    The encoder fields are :class:`~seqrec.models.config.EncoderConfig`'s (SASRec's
    defaults). The side-information fields are :class:`~seqrec.models.difsr.DIFSRConfig`'s,
    the intention fields :class:`~seqrec.models.dss.DSSConfig`'s and the sparse-interest
    fields :class:`~seqrec.models.sine.SINEConfig`'s (same checks, help and flags; SINE's
    ``temperature`` is ``--aggregation-temperature`` here, ``--temperature`` being DSS's
    ``tau``), read only when their part is chosen; the defaults leave every part and every
    auxiliary term off (a SASRec with the ``ce`` loss).
    """

    side_information: str = spec("none", kind="choice", choices=SIDE_INFORMATION,
                                 help="side information on the encoder: none, or difsr (DIF-SR's decoupled fusion "
                                      "of --attributes)")
    interests: str = spec("none", kind="choice", choices=INTERESTS,
                          help="user vectors: none (the last position's state), dss (DSS's K intention vectors) "
                               "or sine (SINE's K sparse interests on the encoder's states)")
    attention: str = spec("causal", kind="choice", choices=ATTENTIONS,
                          help="attention direction; bidirectional trains the last position only")
    loss: str = spec("ce", kind="choice", choices=LOSSES,
                     help="next-item loss: ce (softmax over all items), bce (one sampled negative), sampled "
                          "(softmax over the target and the sampled negatives, log-Q corrected); ce or sampled "
                          "with --interests dss or sine")
    next_item_weight: float = spec(1.0, kind="number", minimum=0, help="weight of the next-item term (item / seq2item)")
    # DIF-SR's side information (DIFSRConfig's fields).
    attribute_fields: tuple[str, ...] = field_of(DIFSRConfig, "attribute_fields")
    attribute_vocab_sizes: tuple[int, ...] = field_of(DIFSRConfig, "attribute_vocab_sizes")
    attribute_sizes: int | tuple[int, ...] = field_of(DIFSRConfig, "attribute_sizes")
    fusion: str = field_of(DIFSRConfig, "fusion")
    position_scores: bool = field_of(DIFSRConfig, "position_scores")
    pooling: str = field_of(DIFSRConfig, "pooling")
    fusion_sees_masked: bool = field_of(DIFSRConfig, "fusion_sees_masked")
    attribute_loss_weight: float | tuple[float, ...] = field_of(DIFSRConfig, "attribute_loss_weight", default=0.0)
    # DSS's intentions (DSSConfig's fields).
    num_intentions: int = field_of(DSSConfig, "num_intentions")
    tau: float = field_of(DSSConfig, "tau")
    seq2seq_weight: float = field_of(DSSConfig, "seq2seq_weight", default=0.0)
    seq2seq_temperature: float = field_of(DSSConfig, "seq2seq_temperature")
    confidence_lambda: float = field_of(DSSConfig, "confidence_lambda")
    beta: str = field_of(DSSConfig, "beta")
    cluster_eps: float = field_of(DSSConfig, "cluster_eps")
    # S3-Rec's self-supervised objectives, trained jointly (S3RecConfig's fields; off by
    # default, and averaged rather than summed: the next-item term is a mean over rows).
    aap_weight: float = field_of(S3RecConfig, "aap_weight", default=0.0,
                                 help="weight of S3-Rec's AAP term, the item's attributes (--attributes) from "
                                      "the bidirectional state at unmasked positions (0: off)")
    mip_weight: float = field_of(S3RecConfig, "mip_weight", default=0.0,
                                 help="weight of S3-Rec's MIP term, the masked item vs a negative (0: off)")
    map_weight: float = field_of(S3RecConfig, "map_weight", default=0.0,
                                 help="weight of S3-Rec's MAP term, the masked item's attributes (--attributes) "
                                      "(0: off)")
    sp_weight: float = field_of(S3RecConfig, "sp_weight", default=0.0,
                                help="weight of S3-Rec's SP term, a masked segment vs another row's (0: off)")
    mask_prob: float = field_of(S3RecConfig, "mask_prob",
                                help="S3-Rec's item masking probability p (MIP, MAP, AAP; the last item is "
                                     "always masked)")
    aap_input: str = field_of(S3RecConfig, "aap_input")
    reduction: str = field_of(S3RecConfig, "reduction", default="mean",
                              help="S3-Rec's terms: average over their scored positions / rows, or sum (the "
                                   "authors', which scales with the batch)")
    # SINE's sparse interests (SINEConfig's fields). SINE's interest-aggregation
    # temperature takes its own flag: --temperature is DSS's tau here.
    num_prototypes: int = field_of(SINEConfig, "num_prototypes")
    num_interests: int = field_of(SINEConfig, "num_interests")
    temperature: float = field_of(SINEConfig, "temperature", flag="aggregation-temperature",
                                  help="tau of SINE's interest aggregation softmax (--model sine: --temperature)")
    assign_temperature: float = field_of(SINEConfig, "assign_temperature")
    reg_weight: float = field_of(SINEConfig, "reg_weight", default=0.0)
    max_prefixes: int | None = field_of(SINEConfig, "max_prefixes")
    merge: str = field_of(SINEConfig, "merge")
    intent_attention: str = field_of(SINEConfig, "intent_attention")

    def validate(self) -> None:
        super().validate()
        self._check_side_fields()
        side, dss = self.side_information == "difsr", self.interests == "dss"
        if side and not self.attribute_fields:
            self.fail("attribute_fields", "at least one attribute field with side_information='difsr' "
                                          "(seqrec train: --attributes FIELD ...)", self.attribute_fields)
        s3rec_attributes = "aap" in self.s3rec_objectives or "map" in self.s3rec_objectives
        if not side and self.attribute_fields and not s3rec_attributes:
            self.fail("attribute_fields", "empty without side information (side_information='none') unless "
                                          "S3-Rec's AAP / MAP read them; --side-information difsr reads them",
                      self.attribute_fields)
        if s3rec_attributes and not self.s3rec_attribute_fields:
            self.fail("attribute_fields", "one or more categorical attribute fields with aap_weight or map_weight "
                                          "> 0 (S3-Rec's AAP / MAP predict an item's attributes; seqrec train: "
                                          "--attributes FIELD ...)", self.attribute_fields)
        if s3rec_attributes and not side and len(self.s3rec_attribute_fields) != len(self.attribute_fields):
            numeric = [f for f in self.attribute_fields if f not in self.s3rec_attribute_fields]
            self.fail("attribute_fields", f"categorical fields for S3-Rec's AAP / MAP ({numeric} numeric; "
                                          "without side information the fields serve nothing else)",
                      self.attribute_fields)
        if not side and any(self.field_loss_weights or [self.attribute_loss_weight]):
            self.fail("attribute_loss_weight", "0 without side information (the attribute predictors read "
                                               "the tables of side_information='difsr')", self.attribute_loss_weight)
        if not dss and self.seq2seq_weight:
            self.fail("seq2seq_weight", "0 without intentions (seq2seq compares DSS's intention vectors: "
                                        "interests='dss')", self.seq2seq_weight)
        if dss and self.loss == "bce":
            self.fail("loss", "'ce' or 'sampled' with interests='dss' (the K vectors score an item by a "
                              "mixture softmax)", self.loss)
        if dss and self.attention != "causal":
            self.fail("attention", "'causal' with interests='dss' (the intention vectors of every prefix "
                                   "read causal states)", self.attention)
        self._check_sine_fields()
        if not (self.next_item_weight or self.seq2seq_weight or any(self.field_loss_weights)
                or self.s3rec_objectives or self.reg_weight):
            self.fail("next_item_weight", "> 0 when every other objective's weight is 0 (nothing to train)",
                      self.next_item_weight)

    # The fields each optional part reads (the others are the encoder's and the
    # next-item term's, always read).
    PART_FIELDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "difsr": ("attribute_sizes", "fusion", "position_scores", "pooling", "fusion_sees_masked",
                  "attribute_loss_weight"),
        "dss": ("num_intentions", "tau", "seq2seq_weight", "seq2seq_temperature", "confidence_lambda", "beta"),
        "sine": ("num_prototypes", "num_interests", "temperature", "assign_temperature", "reg_weight",
                 "max_prefixes", "merge", "intent_attention"),
        "s3rec": ("mask_prob", "reduction"),
        "aap": ("aap_input",),
    }

    @classmethod
    def unread_fields(cls, values: Mapping[str, Any]) -> dict[str, str]:
        """The fields of the parts that ``values`` leave off (``--num-intentions`` without
        ``--interests dss`` would train a model without intentions, silently)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}

        def value(name: str) -> Any:
            return values[name] if name in values else fields[name].default

        def flag(name: str) -> str:
            return "--" + flag_name(fields[name])

        terms = [n for n in S3REC_OBJECTIVES if value(f"{n}_weight")]
        off = {
            "difsr": (value("side_information") != "difsr", f"{flag('side_information')} difsr"),
            "dss": (value("interests") != "dss", f"{flag('interests')} dss"),
            "sine": (value("interests") != "sine", f"{flag('interests')} sine"),
            "s3rec": (not terms, "S3-Rec's terms (" + ", ".join(flag(f"{n}_weight") for n in S3REC_OBJECTIVES)
                      + " > 0)"),
            "aap": ("aap" not in terms, f"{flag('aap_weight')} > 0"),
        }
        return {name: reads for part, (unread, reads) in off.items() if unread for name in cls.PART_FIELDS[part]}

    @property
    def s3rec_objectives(self) -> tuple[str, ...]:
        """S3-Rec's objectives switched on (weight > 0), in the paper's order."""
        return tuple(o for o in S3REC_OBJECTIVES if getattr(self, f"{o}_weight") > 0)

    @property
    def s3rec_attribute_fields(self) -> tuple[str, ...]:
        """The categorical fields of ``attribute_fields``: S3-Rec's attributes (AAP, MAP),
        their ids offset into one space in this order (:func:`~seqrec.models.s3rec.item_attribute_table`)."""
        return tuple(f for f, v in zip(self.attribute_fields, self.attribute_vocab_sizes) if v > 0)

    @property
    def num_attributes(self) -> int:
        """S3-Rec's attribute ids 1..num_attributes (its ``S3RecConfig.num_attributes``)."""
        return sum(v for v in self.attribute_vocab_sizes if v > 0)

    def _check_sine_fields(self) -> None:
        """The combinations of SINE's interests that cannot work."""
        sine = self.interests == "sine"
        if not sine and self.reg_weight:
            self.fail("reg_weight", "0 without SINE's interests (the covariance regulariser reads SINE's concept "
                                    "prototypes: interests='sine')", self.reg_weight)
        if not sine and self.max_prefixes is not None:
            self.fail("max_prefixes", "None without SINE's interests (it limits the prefixes SINE trains: "
                                      "interests='sine')", self.max_prefixes)
        if sine and self.num_interests > self.num_prototypes:
            self.fail("num_interests", f"<= num_prototypes={self.num_prototypes} with interests='sine' (top-K of "
                                       "the L concepts)", self.num_interests)
        if sine and self.loss == "bce":
            self.fail("loss", "'ce' or 'sampled' with interests='sine' (SINE's user vector is trained by a "
                              "softmax over items: sampled as SINE, or ce, the full softmax)", self.loss)

    # ``seqrec train --init``: an encoder of the checkpoint's sizes (and, from a DSS
    # pretraining, its intentions and beta, which shape parameters).
    init_defaults = ("hidden_size", "num_layers", "num_heads", "num_intentions", "beta", "num_prototypes",
                     "num_interests")
    init_fixed = EncoderConfig.init_fixed


@dataclasses.dataclass
class EncodedBatch:
    """What the encoder gives the objectives of one training batch.

    The rows are the batch's target positions (``real``), in row-major order. Under
    ``torch.compile`` (static shapes) every position of the batch is a row, row-major,
    and ``weight`` marks the trained ones: a term sums ``torch.where(weight, per_row, 0)``
    (:meth:`mean`), as the papers' models' compiled paths weigh padding 0.

    Attributes:
        inputs, targets, mask: [B, n] the batch (columns that are padding in every row
            cropped when interests are DSS's, in eager mode).
        real: [B, n] bool, the trained positions (targets > 0; with SINE's interests the
            ``max_prefixes`` most recent of a row; the last column only with bidirectional
            attention).
        target: [N] the next item of each row (0 in rows of weight False).
        count: the number of trained rows, which the terms are averaged over (at least 1;
            an int, under ``torch.compile`` a 0-dim tensor).
        weight: None (eager: the N rows are the trained positions), or under
            ``torch.compile`` [N = B * n] bool, ``real`` flattened: the rows that count.
        hidden: [N, D] the encoder's final state at each row (the user vector when
            ``interests="none"``).
        phi: [N, K, D] the K intention vectors of each row (``interests="dss"``), else None.
        negatives, log_q: [N] or [N, m] the rows' sampled negatives and log-Q correction
            (``loss`` bce / sampled), else None.
        raw, probs: DSS's unnormalised prefix vectors [B, n, K, D] and p(k|i) [B, n, K]
            (for the seq2seq term), else None.
        split: optional [B] DSS's past lengths (None: drawn by the seq2seq term).
        masking: optional S3-Rec corruption (:class:`~seqrec.ops.SeqMaskOutput`) of the
            rows' training parts (:func:`s3rec_sequence`); None: drawn by the first
            S3-Rec term. s3rec: the S3-Rec terms' losses of this batch, computed once
            (one corruption, one encoder call) by the first of them.
        sine: SINE's head on the right-aligned prefix of the encoder's states that ends
            at each row (``interests="sine"``; its ``user`` [N, D] is what the next-item
            term scores), else None.
    """

    inputs: Tensor
    targets: Tensor
    mask: Tensor
    real: Tensor
    target: Tensor
    count: int
    hidden: Tensor | None = None
    phi: Tensor | None = None
    negatives: Tensor | None = None
    log_q: Tensor | None = None
    raw: Tensor | None = None
    probs: Tensor | None = None
    split: Tensor | None = None
    masking: SeqMaskOutput | None = None
    s3rec: dict[str, Tensor] | None = None
    sine: SINEOutput | None = None
    weight: Tensor | None = None

    def mean(self, per_row: Tensor) -> Tensor:
        """``per_row`` [N] summed over the trained rows, divided by ``count``."""
        if self.weight is None:
            return per_row.sum() / self.count
        return torch.where(self.weight, per_row, 0.0).sum() / self.count


@dataclasses.dataclass(frozen=True)
class Objective:
    """One weighted term of the training loss.

    Attributes:
        name: the term's name in the logged terms.
        weight: its weight in the total (> 0: terms of weight 0 are not built).
        compute: ``(model, encoded batch) -> LossOutput``: ``loss`` the unweighted
            scalar term, ``terms`` extra diagnostics logged beside it (counts).
        compiles: True when ``compute`` also reads the static rows of a compiled training
            step (every position a row, the trained ones ``EncodedBatch.weight``; e.g.
            it reduces rows with :meth:`EncodedBatch.mean`), as every built-in term does.
            A model with a term that does not is refused ``torch.compile`` of its training
            step up front (``TrainConfig.compile``): that term would read padding rows.
    """

    name: str
    weight: float
    compute: Callable[["ComposedRecommender", EncodedBatch], LossOutput]
    compiles: bool = False


def next_item_term(model: "ComposedRecommender", batch: EncodedBatch) -> LossOutput:
    """Next-item NLL averaged over the rows: one user vector (``next_item_nll``: the last
    state, or SINE's aggregated user vector), or DSS's mixture over the K intention
    vectors (``IntentionHead.seq2item_nll``)."""
    if batch.phi is not None:
        per_row = model.seq2item_nll(batch.phi, batch.target, batch.negatives, batch.log_q)
    else:
        user = batch.hidden if batch.sine is None else batch.sine.user
        per_row = next_item_nll(user, model.embedding.item, batch.target, model.config.loss,
                                batch.negatives, log_q=batch.log_q)
    return LossOutput(batch.mean(per_row))


def attribute_term(field: int) -> Callable[["ComposedRecommender", EncodedBatch], LossOutput]:
    """DIF-SR's attribute predictor BCE of one categorical field (``attribute_terms``)."""
    def compute(model: "ComposedRecommender", batch: EncodedBatch) -> LossOutput:
        weight = None if batch.weight is None else batch.weight.to(batch.hidden.dtype)
        return LossOutput(model.attribute_bce(field, batch.hidden, batch.target, weight, batch.count))
    return compute


def seq2seq_term(model: "ComposedRecommender", batch: EncodedBatch) -> LossOutput:
    """DSS's seq2seq InfoNCE (``IntentionHead.seq2seq_pairs``), with its pair counts."""
    loss, kept, present = model.seq2seq_pairs(batch.inputs, batch.targets, batch.mask, batch.raw, batch.probs,
                                              batch.split)
    return LossOutput(loss, {"pairs": kept, "present": present})


# ---------------------------------------------------------------------- S3-Rec's objectives
def s3rec_sequence(inputs: Tensor, targets: Tensor, max_len: int) -> Tensor:
    """The training part each row of a batch holds, what S3-Rec's terms corrupt: the inputs
    and the item after them (``targets``' last column; rows without one keep their
    inputs), left-padded, the last ``max_len`` items kept. [B, min(n + 1, max_len)].

    (S3-Rec pretrains on the training part of each sequence; the next-item term's target
    is a training item too, so the terms see nothing the evaluation holds out.)"""
    last = targets[:, -1:]
    whole = torch.where(last > 0, torch.cat([inputs, last], 1), F.pad(inputs, (1, 0)))
    return whole[:, -max_len:]


def s3rec_term(name: str) -> Callable[["ComposedRecommender", EncodedBatch], LossOutput]:
    """S3-Rec's objective ``name`` (``aap``, ``mip``, ``map``, ``sp``): the model's terms
    of S3-Rec share one corruption of the batch and one encoder call, computed by the
    first that runs (:meth:`ComposedRecommender.s3rec_batch_losses`)."""
    if name not in S3REC_OBJECTIVES:
        raise ValueError(f"S3-Rec objective must be one of {S3REC_OBJECTIVES}, got {name!r}")

    def compute(model: "ComposedRecommender", batch: EncodedBatch) -> LossOutput:
        if batch.s3rec is None:
            batch.s3rec = model.s3rec_batch_losses(batch)
        return LossOutput(batch.s3rec[name])
    compute.s3rec_objective = name  # what the model's objectives ask of S3-Rec's
    return compute


def covariance_term(model: "ComposedRecommender", batch: EncodedBatch) -> LossOutput:
    """SINE's covariance regulariser of its concept prototypes (:func:`~seqrec.models.sine.covariance_regularizer`)."""
    return LossOutput(covariance_regularizer(model.prototypes))


def config_objectives(config: ComposedConfig) -> tuple[Objective, ...]:
    """The weighted terms ``config`` asks for, in logging order (weights of 0 left out)."""
    out = []
    if config.next_item_weight:
        out.append(Objective("seq2item" if config.interests == "dss" else "item", config.next_item_weight,
                             next_item_term, compiles=True))
    if config.side_information == "difsr":
        for i, (name, vocab, weight) in enumerate(zip(config.attribute_fields, config.attribute_vocab_sizes,
                                                      config.field_loss_weights)):
            if weight and vocab > 0:  # numeric fields have no multi-label target
                out.append(Objective(f"attr:{name}", weight, attribute_term(i), compiles=True))
    if config.seq2seq_weight:
        out.append(Objective("seq2seq", config.seq2seq_weight, seq2seq_term, compiles=True))
    for name in config.s3rec_objectives:
        out.append(Objective(name, getattr(config, f"{name}_weight"), s3rec_term(name), compiles=True))
    if config.reg_weight:  # SINE's regulariser, logged under SINE's name
        out.append(Objective("covariance", config.reg_weight, covariance_term, compiles=True))
    return tuple(out)


class ComposedRecommender(DecoupledSideInformation, IntentionHead, SparseInterestHead, S3RecObjectives,
                          SequentialRecommender):
    """The shared encoder with the parts and objectives of :class:`ComposedConfig`
    (module docstring).

    Args:
        config: :class:`ComposedConfig`.
        attributes: with ``side_information="difsr"``, the tables of
            ``config.attribute_fields`` (a :class:`~seqrec.data.SequenceDataset` or
            ``{name: AttributeField}``), as :class:`~seqrec.models.DIFSR`'s; with S3-Rec's
            AAP / MAP, also their item -> attribute table (the categorical fields of
            ``config.attribute_fields``); ignored otherwise.
        backend: ``"seqrec"`` / ``"reference"`` for the ops, None = process default.
        objectives: the weighted terms of the training loss; None = those the config
            asks for (:func:`config_objectives`). Pass your own to add a term, e.g.
            ``(*config_objectives(config), Objective("l2", 1e-4, my_term))`` with
            ``my_term(model, encoded) -> LossOutput`` (not saved with the model: only
            training reads them); ``compiles=True`` when it also reads a compiled step's
            static rows (:class:`EncodedBatch`'s ``weight``, e.g. through its ``mean``).

    Parameters, by part (the names of the model each part comes from): ``embedding.*``
    (SASRec's, or DIF-SR's with ``embedding.attributes``), ``encoder.layers.*`` (DIF-SR's
    attention adds ``position_*``, ``attribute_*``, ``fusion_params``), ``predictors``
    (DIF-SR's attribute heads, with side information), DSS's ``prototypes``,
    ``key_norm``, ``key_map``, ``query_norm``, ``query_bias``, ``distance``, ``beta_*``,
    ``out_norm`` (with its intentions), SINE's ``prototypes``, ``concept_*``,
    ``assign_proj``, ``intent_*``, ``interest_norm``, ``next_*`` (with its interests; its
    position table is the encoder's ``embedding.position``); with S3-Rec's objectives,
    S3-Rec's heads of the terms switched on (``aap``, ``mip``, ``map``, ``sp``, and
    ``attribute_embedding`` for AAP / MAP) and ``mask_embedding`` [1, D], the mask token's
    vector (S3-Rec's item table row ``num_items + 1``: :func:`~seqrec.models.load_pretrained`
    takes it from there).

    With DSS's intentions or SINE's interests the attribute predictors read the encoder's
    final state at each position (what DIF-SR's read), not the K vectors.

    ``torch.compile(fullgraph=True)`` of the training step (``seqrec train --compile``)
    works for every composition: under tracing the parts take their models' static-shape
    paths (DIF-SR's padded encoder, DSS without the column crop, SINE's head on padded
    prefixes, S3-Rec's static selection) and every position is a row, the untrained ones
    weighed 0 (:class:`EncodedBatch`); S3-Rec's corruption, whose ``seq_mask`` seed is a
    Python int, is drawn before the graph (:meth:`compiled_step_options`). Eager keeps
    the packed paths. A term of one's own must say it reads those rows
    (``Objective.compiles``), else compiling is refused (:attr:`eager_only_reason`).
    """

    def __init__(self, config: ComposedConfig, *, attributes=None, backend: str | None = None,
                 objectives: Sequence[Objective] | None = None) -> None:
        super().__init__()
        if not isinstance(config, ComposedConfig):
            raise ValueError(f"config must be a ComposedConfig, got {type(config).__name__}")
        if backend is not None:
            get_backend(backend)
        self.config = config
        self.backend = backend
        side = config.side_information == "difsr"
        if side:
            self.embedding = _Embeddings(config)
        else:
            self.embedding = ItemPositionEmbedding(config.num_items + 1, config.max_len, config.hidden_size,
                                                   config.hidden_dropout, config.layer_norm_eps)
        self.encoder = TransformerEncoder(
            config.num_layers, config.hidden_size, config.num_heads, config.ffn_size, config.hidden_dropout,
            config.attention_dropout, config.hidden_act, config.layer_norm_eps,
            causal=config.attention == "causal", backend=backend,
            attention=partial(DIFMultiHeadAttention, config, backend) if side else None)
        if side:
            self.predictors = nn.ModuleList(nn.Linear(config.hidden_size, v) if v > 0 else nn.Identity()
                                            for v in config.attribute_vocab_sizes)
        if config.interests == "dss":
            self._build_intentions()
        if config.s3rec_objectives:
            self._build_s3rec_heads()
        if config.interests == "sine":
            self._build_sparse_interests()
        self.apply(partial(init_transformer_weights, std=config.initializer_range))
        if side:
            self._init_side_information(attributes)
        if config.interests == "dss":
            self._init_intentions()
        if attributes is not None and {"aap", "map"} & set(config.s3rec_objectives):
            self._init_s3rec_attributes(attributes)
        if config.interests == "sine":
            self._init_sparse_interests()
        self.objectives = self._checked_objectives(config_objectives(config) if objectives is None else objectives)
        self.s3rec_terms  # refuses, up front, a term of S3-Rec's whose objective is switched off

    @staticmethod
    def _checked_objectives(terms: Sequence[Objective]) -> tuple[Objective, ...]:
        terms = tuple(terms)
        for i, term in enumerate(terms):
            if not isinstance(term, Objective):
                raise ValueError(f"objectives[{i}] must be an Objective(name, weight, compute), got "
                                 f"{type(term).__name__}")
            if isinstance(term.weight, bool) or not isinstance(term.weight, (int, float)) \
                    or not math.isfinite(term.weight) or term.weight <= 0:
                raise ValueError(f"objectives[{i}] ({term.name!r}): weight must be a finite number > 0 (leave a "
                                 f"term of weight 0 out), got {term.weight!r}")
            if not callable(term.compute):
                raise ValueError(f"objectives[{i}] ({term.name!r}): compute must be callable")
            if not isinstance(term.compiles, bool):
                raise ValueError(f"objectives[{i}] ({term.name!r}): compiles must be True or False, got "
                                 f"{term.compiles!r}")
        names = [t.name for t in terms]
        if not terms or len(set(names)) != len(names):
            raise ValueError(f"objectives must be one or more terms with distinct names, got {names}")
        return terms

    # ------------------------------------------------------------------ S3-Rec's objectives
    def _build_s3rec_heads(self) -> None:
        """S3-Rec's heads of the objectives switched on (its parameter names), the mask
        token's vector and the (non-persistent) item -> attribute ids table."""
        cfg, d = self.config, self.config.hidden_size
        on = cfg.s3rec_objectives
        self.mask_embedding = nn.Embedding(1, d)
        if "aap" in on or "map" in on:
            self.attribute_embedding = nn.Embedding(cfg.num_attributes + 1, d, padding_idx=0)
        for name in on:
            setattr(self, name, nn.Linear(d, d))
        self.register_buffer("item_attributes", torch.zeros(cfg.num_items + 1, 0, dtype=torch.int64),
                             persistent=False)

    def _init_s3rec_attributes(self, attributes) -> None:
        """S3-Rec's table from the constructor's ``attributes`` (its categorical fields)."""
        cfg = self.config
        fields = attributes if isinstance(attributes, Mapping) else self._dataset_fields(attributes)
        for name, vocab in zip(cfg.attribute_fields, cfg.attribute_vocab_sizes):
            field = fields.get(name)
            if field is not None and vocab > 0 and field.kind == "categorical" and field.num_values != vocab:
                raise ValueError(f"attribute field {name!r} has {field.num_values} values, the model was built "
                                 f"with {vocab} (attribute_vocab_sizes)")
        table, _, _ = combined_attribute_table(fields, cfg.s3rec_attribute_fields, cfg.num_items)
        self.set_item_attributes(table)

    def _missing_attributes_message(self) -> str:
        name = type(self).__name__
        return (f"{name}: S3-Rec's AAP / MAP read the item -> attribute table of attribute_fields "
                f"{list(self.config.s3rec_attribute_fields)}, which this model was built without: build it with "
                f"{name}(config, attributes=dataset) or call set_item_attributes(table)")

    # Without DIF-SR's side information the attribute fields are S3-Rec's alone: no
    # DIF-SR tables, and scoring needs none.
    @property
    def uses_side_information(self) -> bool:
        return self.config.side_information == "difsr"

    def _side_buffer_names(self) -> list[str]:
        return DecoupledSideInformation._side_buffer_names(self) if self.uses_side_information else []

    def _lookup_items(self, *ids: Tensor) -> list[Tensor]:
        """Item vectors in one table lookup; with S3-Rec's objectives the mask token
        (id ``num_items + 1``) reads ``mask_embedding``."""
        if not self.config.s3rec_objectives:
            return lookup_rows(self.embedding.item, *ids)
        token = self.mask_token
        rows = lookup_rows(self.embedding.item, *(i.masked_fill(i == token, 0) for i in ids))
        return [torch.where((i == token).unsqueeze(-1), self.mask_embedding.weight[0], r) for i, r in zip(ids, rows)]

    def _field_embeddings(self, item_seq: Tensor) -> list[Tensor]:
        # A masked position hides its item's attributes too (else MIP / MAP would read them).
        if self.config.s3rec_objectives:
            item_seq = item_seq.masked_fill(item_seq == self.mask_token, 0)
        return DecoupledSideInformation._field_embeddings(self, item_seq)

    def _hidden_at(self, item_seq: Tensor, rows: Tensor, cols: Tensor, extra_ids: Tensor) -> tuple[Tensor, Tensor]:
        """S3-Rec's encoder outputs at ``(rows, cols)`` of a corrupted batch, bidirectional
        (:meth:`S3RecObjectives._hidden_at`; with DIF-SR's side information its encoder
        paths, with the attention direction of the call)."""
        if self.config.side_information != "difsr":
            return S3RecObjectives._hidden_at(self, item_seq, rows, cols, extra_ids)
        n = item_seq.size(1)
        mask, flat = item_seq != 0, rows * n + cols
        if self._takes_padded_path():
            h = self._encode_padded(item_seq, mask, causal=False).reshape(-1, self.config.hidden_size)
            hidden = h.index_select(0, flat)
        else:
            select = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device).index_fill_(0, flat, True)
            out = self._encode(item_seq, mask, select.view_as(mask), causal=False)  # row-major
            hidden = out.index_select(0, torch.searchsorted(select.nonzero().squeeze(1), flat))
        return hidden, self._lookup_items(extra_ids)[0]

    def _bidirectional_states(self, item_seq: Tensor) -> Tensor:
        """[R, n, D] bidirectional states of every position of a corrupted batch (S3-Rec's
        terms under ``torch.compile``: :meth:`S3RecObjectives._static_selection`), 0 at
        padding; the mask token reads ``mask_embedding``."""
        mask = item_seq != 0
        if self.config.side_information == "difsr":
            return self._encode_padded(item_seq, mask, causal=False)
        return self.encoder(self.embedding(item_seq, self._lookup_items(item_seq)[0]), mask, causal=False)

    def corrupt_batch(self, inputs: Tensor, targets: Tensor) -> SeqMaskOutput:
        """S3-Rec's corruption (:meth:`S3RecObjectives.corrupt`, one ``seq_mask`` call on
        the CPU) of the rows' training parts (:func:`s3rec_sequence`), its seed drawn from
        torch's default CPU generator: a seeded run masks the same way, and ``--resume``
        (which restores that generator) continues exactly."""
        seq = s3rec_sequence(inputs, targets, self.config.max_len)
        seed = int(torch.randint(0, 2 ** 63 - 1, (), dtype=torch.int64))
        masked = self.corrupt(seq.cpu(), seed=seed)
        return masked if seq.device.type == "cpu" else SeqMaskOutput(*(t.to(seq.device) for t in masked))

    @property
    def s3rec_terms(self) -> tuple[str, ...]:
        """S3-Rec's objectives the model's terms read (:func:`s3rec_term`), in the paper's
        order: those switched on, less any that objectives of one's own leave out."""
        on = self.s3rec_objectives
        asked = {o.name: o.compute.s3rec_objective for o in self.objectives
                 if hasattr(o.compute, "s3rec_objective")}
        off = {name: objective for name, objective in asked.items() if objective not in on}
        if off:
            raise ValueError(f"objectives {list(off)} read S3-Rec's {sorted(set(off.values()))}, which the config "
                             f"leaves off (weight 0: no head is built); switched on: {list(on)}")
        return tuple(o for o in on if o in asked.values())

    def s3rec_batch_losses(self, batch: EncodedBatch) -> dict[str, Tensor]:
        """The unweighted losses of S3-Rec's objectives the model's terms read
        (:attr:`s3rec_terms`) for an encoded batch (:meth:`S3RecObjectives.s3rec_losses`
        of ``batch.masking``, drawn by :meth:`corrupt_batch` when None)."""
        masking = batch.masking
        if masking is None:
            if torch.compiler.is_compiling():
                raise ValueError("S3-Rec's terms under torch.compile need the batch's corruption drawn before the "
                                 "graph: loss_terms(batch, **model.compiled_step_options(batch)) (what the "
                                 "trainer's compiled step passes)")
            masking = self.corrupt_batch(batch.inputs, batch.targets)
        elif not isinstance(masking, SeqMaskOutput) or masking.masked_items.dim() != 2 \
                or masking.masked_items.size(0) != batch.inputs.size(0):
            raise ValueError(f"masking must be a SeqMaskOutput of the batch's {batch.inputs.size(0)} rows "
                             "(seq_mask of s3rec_sequence(inputs, targets, max_len))")
        return self.s3rec_losses(masking, self.s3rec_terms)

    def adapt_pretrained(self, source: dict[str, Tensor]) -> dict[str, Tensor]:
        """:func:`~seqrec.models.load_pretrained`'s view of a checkpoint: an S3-Rec item
        table's mask-token row (``num_items + 1``) is this model's ``mask_embedding``."""
        item = source.get("embedding.item.weight")
        if (self.config.s3rec_objectives and "mask_embedding.weight" not in source and isinstance(item, Tensor)
                and item.dim() == 2 and item.size(0) == self.config.num_items + 2):
            source = {**source, "mask_embedding.weight": item[-1:]}
        return source

    # ------------------------------------------------------------------ capabilities
    @property
    def has_interests(self) -> bool:
        return self.config.interests != "none"

    @property
    def eager_only_reason(self) -> str:
        """Why the training step cannot be compiled ("" when it can): a term that does not
        read a compiled step's static rows (``Objective.compiles`` False)."""
        eager = [o.name for o in self.objectives if not o.compiles]
        if not eager:
            return ""
        return (f"objectives {eager} do not declare that they read a compiled step's static rows "
                "(Objective(..., compiles=True): every position a row, EncodedBatch.weight the trained ones)")

    @property
    def compiles_training_step(self) -> bool:
        return not self.eager_only_reason

    def compiled_step_options(self, batch) -> dict[str, object]:
        """With S3-Rec's terms (:attr:`s3rec_terms`), the batch's corruption
        (:meth:`corrupt_batch`, drawn
        here, before the graph: ``seq_mask``'s seed is a Python int drawn from torch's
        generator, which a graph cannot hold) as ``{"masking": ...}``; else none."""
        if not self.s3rec_terms:
            return {}
        return {"masking": self.corrupt_batch(batch.input_ids, batch.target_ids)}

    def item_table(self) -> nn.Embedding:
        return self.embedding.item

    # ------------------------------------------------------------------ encoder
    def states(self, item_seq: Tensor, mask: Tensor) -> Tensor:
        """Final states of every position, [B, n, D] (0 at padding)."""
        if self.config.side_information == "difsr":
            return self._side_states(item_seq, mask)
        return self.encoder(self.embedding(item_seq), mask)

    def forward(self, item_seq: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Hidden states [B, n, D] of a LEFT-padded batch [B, n <= max_len] (0 at padding)."""
        return self.states(item_seq, self._mask(item_seq, lengths))

    def encode_last(self, item_seq: Tensor, lengths: Tensor | None = None) -> Tensor:
        """The last position's state [B, D] (one user vector; 0 for an empty row)."""
        if self.has_interests:
            raise NotImplementedError(f"with interests={self.config.interests!r} the model scores from K interest "
                                      "vectors (interests()), not one last-position vector")
        if self.config.side_information == "difsr":
            return DecoupledSideInformation.encode_last(self, item_seq, lengths)
        if torch.compiler.is_compiling():  # select is data-dependent
            return self(item_seq, lengths)[:, -1]
        mask = self._mask(item_seq, lengths)
        return encode_last_position(self.encoder, self.embedding(item_seq), mask)

    def interests(self, item_seq: Tensor, lengths: Tensor | None = None) -> Tensor:
        if self.config.interests == "sine":
            return self.encode_sine(item_seq, lengths).interests
        if not self.has_interests:
            return SequentialRecommender.interests(self, item_seq, lengths)
        return IntentionHead.interests(self, item_seq, lengths)

    def score(self, item_seq: Tensor, lengths: Tensor | None = None, items: Tensor | None = None) -> Tensor:
        """Next-item scores: the dot product with the last state, with DSS's intentions
        the log-sum-exp over the K vectors' dot products, with SINE's interests its
        ``merge`` rule (the aggregated user vector, or the max over the K interests)."""
        if self.config.interests == "sine":
            out = self.encode_sine(item_seq, lengths)
            if items is not None:
                check_candidates(item_seq, items)
            return self.merged_scores(out, items)
        if self.has_interests:
            return IntentionHead.score(self, item_seq, lengths, items)
        return SequentialRecommender.score(self, item_seq, lengths, items)

    # ------------------------------------------------------------------ SINE's interests
    def encode_sine(self, item_seq: Tensor, lengths: Tensor | None = None) -> SINEOutput:
        """SINE's head (:class:`~seqrec.models.sine.SparseInterestHead`) on the encoder's
        states of each whole LEFT-padded sequence [B, n]: :class:`~seqrec.models.sine.SINEOutput`
        (user vector, K interests, ...). ``interests="sine"`` only."""
        if self.config.interests != "sine":
            raise NotImplementedError(f"encode_sine needs interests='sine', not {self.config.interests!r}")
        mask = self._mask(item_seq, lengths)
        return self.sparse_interests(self.states(item_seq, mask), mask)

    # ------------------------------------------------------------------ training
    def encode_batch(self, input_ids: Tensor, target_ids: Tensor, negative_ids: Tensor | None = None, *,
                     lengths: Tensor | None = None, features=None, split: Tensor | None = None,
                     masking: SeqMaskOutput | None = None) -> EncodedBatch:
        """Encode a training batch for the objectives (see :class:`EncodedBatch`).

        Under ``torch.compile`` the shapes are static: no column crop, every position a
        row (``EncodedBatch.weight``), and each part on its model's static path (the
        encoder without ``select``, DIF-SR's padded encoder, SINE's head on the padded
        prefix of every position); eager packs the trained positions."""
        cfg = self.config
        static = torch.compiler.is_compiling()
        self.check_ids("input_ids", input_ids)
        shape = tuple(input_ids.shape)
        self.check_ids("target_ids", target_ids, shape)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, n], got shape {shape}")
        mask = self._mask(input_ids, lengths)
        inputs, targets, cols = input_ids, target_ids, slice(None)
        if cfg.interests == "dss" and not static:
            # As DSS: columns that are padding in every row change nothing (right-aligned
            # positions), so they are cropped (eager: the width is data-dependent).
            width = int(mask.any(0).to(torch.int64).sum()) if input_ids.numel() else 0
            cols = slice(shape[1] - max(width, 1), shape[1])
            inputs, targets, mask = input_ids[:, cols], target_ids[:, cols], mask[:, cols]
        real = targets > 0 if cfg.interests != "sine" else kept_targets(targets, cfg.max_prefixes)
        if cfg.attention == "bidirectional":  # a position sees its own target: train the last one only
            real = real & (torch.arange(real.size(1), device=real.device) == real.size(1) - 1)
        if static:
            # Every position a row, the untrained ones weighed 0 (as the papers' models'
            # compiled paths; the value check below is a host sync, skipped as check_ids's).
            def rows(t: Tensor) -> Tensor:
                return t.flatten(0, 1)

            weight, count = real.flatten(), real.sum().clamp_min(1)
        else:
            if bool((real & ~mask).any()):
                raise ValueError("target_ids has targets at padding positions of input_ids (id 0)")

            def rows(t: Tensor) -> Tensor:
                return t[real]

            weight, count = None, max(int(real.sum()), 1)
        encoded = EncodedBatch(inputs, targets, mask, real, rows(targets), count, split=split, masking=masking,
                               weight=weight)
        if cfg.loss == "bce" and cfg.next_item_weight:
            if negative_ids is None:
                raise ValueError('negative_ids is required when config.loss == "bce"')
            self.check_ids("negative_ids", negative_ids, shape)
            encoded.negatives = rows(negative_ids[:, cols])
        elif cfg.loss == "sampled" and cfg.next_item_weight:
            negatives, log_q = self.sampled_negatives(negative_ids, shape, features)  # [B, n, m]
            encoded.negatives = rows(negatives[:, cols])
            encoded.log_q = None if log_q is None else rows(log_q[:, cols])
        if cfg.interests == "sine":
            # SINE's head on the prefix of the encoder's states that ends at each row,
            # each prefix its own right-aligned sequence as SINE trains (the states are
            # causal: those of a prefix do not see its future).
            states = self.states(inputs, mask)  # [B, n, D]
            encoded.sine = self.prefix_sparse_interests(states, mask, real)
            encoded.hidden = rows(states)  # the encoder's state (what the attribute predictors read)
        elif cfg.interests == "dss":
            z, encoded.probs, prefix_w = self._past(inputs, mask)
            encoded.raw = self._prefix_raw(z, encoded.probs, prefix_w)  # [B, n, K, D]
            encoded.phi = self._aggregate(rows(encoded.raw), False)  # [N, K, D]
            encoded.hidden = rows(z)  # the encoder's state (what the attribute predictors read)
        elif cfg.side_information == "difsr":
            # Only the target positions leave the last block (DIF-SR's grouped encoder).
            encoded.hidden = (rows(self._encode_padded(inputs, mask)) if self._takes_padded_path()
                              else self._encode(inputs, mask, real))
        elif static:  # the encoder's `select` is data-dependent
            encoded.hidden = rows(self.encoder(self.embedding(inputs), mask))  # [B * n, D]
        else:
            encoded.hidden = self.encoder(self.embedding(inputs), mask, select=real)  # [N, D]
        return encoded

    def batch_loss(self, input_ids: Tensor, target_ids: Tensor, negative_ids: Tensor | None = None, *,
                   lengths: Tensor | None = None, features=None, split: Tensor | None = None,
                   masking: SeqMaskOutput | None = None) -> LossOutput:
        """The weighted sum of the objectives, every unweighted term logged.

        Args:
            input_ids: [B, n] left-padded inputs; target_ids: [B, n] next items (0 where
                none; column n - 1 holds the item after the input, for seq2seq).
            negative_ids: [B, n] (bce) or [B, n, m] (sampled) negatives.
            lengths: optional [B] real lengths (the padding mask).
            features: ``"negative_log_q"`` (``loss="sampled"``).
            split: optional [B] DSS's past lengths for the seq2seq term (default: drawn
                as DSS draws them).
            masking: optional S3-Rec corruption of the batch for S3-Rec's terms
                (default: drawn, :meth:`corrupt_batch`).

        Returns:
            :class:`LossOutput`: ``loss = sum_j weight_j * term_j``; ``terms`` every
            unweighted term by name (and seq2seq's ``pairs`` / ``present`` counts).
        """
        encoded = self.encode_batch(input_ids, target_ids, negative_ids, lengths=lengths, features=features,
                                    split=split, masking=masking)
        total, terms = None, {}
        for objective in self.objectives:
            out = objective.compute(self, encoded)
            terms[objective.name] = out.loss
            terms.update(out.terms)
            weighted = objective.weight * out.loss
            total = weighted if total is None else total + weighted
        return LossOutput(total, terms)
