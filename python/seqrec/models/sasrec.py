"""SASRec: self-attentive sequential recommendation.

Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018, in the form the
S3-Rec authors fine-tune (Zhou et al., CIKM 2020, ``RUCAIBox/CIKM2020-S3Rec``:
``S3RecModel.finetune`` + ``FinetuneTrainer.cross_entropy``), whose numbers are the
SASRec rows of REFERENCE.md.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.backend import get_backend
from .layers import (
    ItemPositionEmbedding,
    TransformerEncoder,
    encode_last_position,
    init_transformer_weights,
    lookup_rows,
    padding_mask,
)
from .base import LossOutput, SequentialRecommender, check_ids
from .config import EncoderConfig, spec
from .losses import sampled_softmax_nll, softmax_nll

__all__ = ["SASRecConfig", "SASRec"]

LOSSES = ("bce", "ce", "sampled")


@dataclasses.dataclass(frozen=True)
class SASRecConfig(EncoderConfig):
    """SASRec hyper-parameters (plain numbers; defaults = the S3-Rec authors' run).

    Attributes:
        num_items: number of real items; ids are 1..num_items, 0 is padding.
        max_len: longest input (learned positions), 50.
        hidden_size: D, 64.
        num_layers: Transformer blocks, 2.
        num_heads: attention heads, 2 (must divide hidden_size).
        inner_size: feed-forward width; None means 4 * hidden_size (the authors').
        hidden_dropout: dropout on embeddings and sub-layer outputs, 0.5.
        attention_dropout: dropout on attention probabilities, 0.5.
        initializer_range: std of the normal init, 0.02.
        hidden_act: ``"gelu"`` (authors) or ``"relu"`` (Kang & McAuley).
        layer_norm_eps: 1e-12 (authors).
        loss: ``"bce"`` (one sampled negative per position, the paper's and the
            authors'), ``"ce"`` (softmax over all items, streamed over blocks of items
            when the logits would pass :data:`~seqrec.models.losses.CE_MEMORY`) or
            ``"sampled"`` (softmax over the target and the trainer's m negatives, with
            the log-Q correction: :func:`~seqrec.models.losses.sampled_softmax_nll`).

    The encoder fields and their checks are :class:`~seqrec.models.config.EncoderConfig`'s.
    """

    loss: str = spec("bce", kind="choice", choices=LOSSES,
                     help="bce: pairwise BCE with one sampled negative; ce: softmax over all items; "
                          "sampled: softmax over the target and the sampled negatives, log-Q corrected")


class SASRec(SequentialRecommender):
    """SASRec (Kang & McAuley, ICDM 2018) as fine-tuned by the S3-Rec authors.

    Equations (left padding, ``x`` = item ids [B, n], 0 = padding)::

        E   = Dropout(LN(M_I[x] + P))              # learned positions, right-aligned
        F^l = FFN(MHA(F^{l-1}, causal, padding))   # post-LN blocks, GELU, L = 2
        r_{t,i} = <F^L_t, M_I[i]>                  # score of item i after position t

    Loss ``"bce"``: mean over real target positions of
    ``-log sigmoid(r_{t,pos}) - log(1 - sigmoid(r_{t,neg}))`` with one sampled negative
    per position; ``"ce"``: mean over real positions of softmax cross-entropy over
    items 1..num_items; ``"sampled"``: mean over real positions of
    ``-log softmax([r_{t,pos}, r_{t,neg_j} - log(m q(neg_j))])[0]`` (log-Q corrected
    sampled softmax, accidental hits removed).

    Deviations and open choices (none changes a real position's output in eval mode):

    - Architecture and defaults are the S3-Rec authors', not the original paper's:
      post-LN blocks with GELU and LayerNorm on the embedding (Kang & McAuley: pre-LN
      queries, ReLU, embedding scaled by sqrt(D)); ``hidden_act="relu"`` is available.
    - The item table has num_items + 1 rows; the authors' table also holds S3-Rec's
      mask token, which a pretraining model adds on its own side.
    - Positions are right-aligned to ``max_len`` (see :class:`ItemPositionEmbedding`),
      identical to the authors when batches are padded to ``max_len``.
    - Masking is exact (masked keys get probability 0) instead of an additive -10000,
      and padding query rows, whose keys are all masked, output 0 instead of uniform
      attention over padding; padded positions never reach the loss or the scores.
    - The padding embedding row is initialised to 0 (authors: N(0, 0.02), frozen).
    - BCE uses ``logsigmoid`` (stable) instead of ``log(sigmoid(x) + 1e-24)``; a batch
      with no real target gives loss 0 rather than NaN.
    - The ``"ce"`` option (DIF-SR's loss) is an addition.

    Args:
        config: :class:`SASRecConfig`.
        backend: attention backend (``"seqrec"`` / ``"reference"``), None = process
            default (:func:`seqrec.ops.get_backend`).

    Parameter names (``embedding.item``, ``embedding.position``, ``embedding.norm``,
    ``encoder.layers.{l}.attention.{query,key,value,out,norm}``,
    ``encoder.layers.{l}.feed_forward.{dense_in,dense_out,norm}``) are shared with the
    other models built from :mod:`seqrec.models.layers`, so checkpoints load by name.
    """

    def __init__(self, config: SASRecConfig, *, backend: str | None = None) -> None:
        super().__init__()
        if not isinstance(config, SASRecConfig):
            raise ValueError(f"config must be a SASRecConfig, got {type(config).__name__}")
        if backend is not None:
            get_backend(backend)
        self.config = config
        self.embedding = ItemPositionEmbedding(
            config.num_items + 1,
            config.max_len,
            config.hidden_size,
            config.hidden_dropout,
            config.layer_norm_eps,
        )
        self.encoder = TransformerEncoder(
            config.num_layers,
            config.hidden_size,
            config.num_heads,
            config.ffn_size,
            config.hidden_dropout,
            config.attention_dropout,
            config.hidden_act,
            config.layer_norm_eps,
            causal=True,
            backend=backend,
        )
        self.apply(partial(init_transformer_weights, std=config.initializer_range))

    def forward(self, item_seq: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Hidden states of every position.

        Args:
            item_seq: [B, n] int64 item ids in [0, num_items], LEFT-padded with 0,
                n <= max_len.
            lengths: optional [B] real lengths; the padding mask then comes from it and
                is checked against ``item_seq`` (see :func:`layers.padding_mask`).

        Returns:
            [B, n, D]; row ``t`` depends on items ``<= t`` only (causal). Out-of-range
            ids raise IndexError from the embedding on CPU.
        """
        check_ids("item_seq", item_seq)
        mask = padding_mask(item_seq, lengths)
        return self.encoder(self.embedding(item_seq), mask)

    def encode_last(self, item_seq: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``self(item_seq, lengths)[:, -1]`` [B, D] (0 for an empty row), with the last
        block computing only that column after its attention (``select``)."""
        if torch.compiler.is_compiling():  # select is data-dependent
            return self(item_seq, lengths)[:, -1]
        check_ids("item_seq", item_seq)
        mask = padding_mask(item_seq, lengths)
        return encode_last_position(self.encoder, self.embedding(item_seq), mask)

    def batch_loss(
        self, item_seq: Tensor, target_ids: Tensor, negative_ids: Tensor | None = None, *,
        lengths: Tensor | None = None, features=None
    ) -> LossOutput:
        """Training loss (``config.loss``) over every real target position.

        Args:
            item_seq: [B, n] left-padded input ids.
            target_ids: [B, n] next item at each position, 0 where there is none.
            negative_ids: [B, n] one sampled negative per position (0 at padding);
                required for ``"bce"``, ignored for ``"ce"``; [B, n, m] or [B, n] for
                ``"sampled"``.
            lengths: optional [B] real lengths (the padding mask; see
                :func:`layers.padding_mask`).
            features: ``"negative_log_q"`` (``"sampled"``): the negatives' log-Q
                correction; absent, none is applied.

        Returns:
            :class:`LossOutput` whose ``loss`` is the mean over positions with
            ``target_ids > 0`` (no other terms).

        Raises:
            ValueError: wrong dtypes or shapes, or ids outside [0, num_items].
        """
        self.check_ids("item_seq", item_seq)
        shape = tuple(item_seq.shape)
        self.check_ids("target_ids", target_ids, shape)
        real = target_ids > 0
        count = real.sum().clamp_min(1)
        if self.config.loss == "bce":
            if negative_ids is None:
                raise ValueError('negative_ids is required when config.loss == "bce"')
            self.check_ids("negative_ids", negative_ids, shape)
            # One lookup of the item table for inputs, targets and negatives: one dense
            # table gradient instead of three (see layers.lookup_rows).
            inputs, targets, negatives = lookup_rows(self.embedding.item, item_seq, target_ids, negative_ids)
            hidden = self.encoder(self.embedding(item_seq, inputs), padding_mask(item_seq, lengths))
            pos = (hidden * targets).sum(-1)  # [B, n]
            neg = (hidden * negatives).sum(-1)
            per_position = -(F.logsigmoid(pos) + F.logsigmoid(-neg))
            return LossOutput((per_position * real).sum() / count)
        hidden = self(item_seq, lengths)  # [B, n, D]
        if self.config.loss == "sampled":
            negatives, log_q = self.sampled_negatives(negative_ids, shape, features)
            if torch.compiler.is_compiling():
                # Static shapes: every position scored, padding weighted 0 (its target and
                # negatives are id 0, an accidental hit: a finite NLL of 0).
                m = negatives.size(-1)
                nll = sampled_softmax_nll(hidden.reshape(-1, hidden.size(-1)), self.embedding.item,
                                          target_ids.reshape(-1), negatives.reshape(-1, m),
                                          log_q=None if log_q is None else log_q.reshape(-1, m))
                return LossOutput((nll * real.reshape(-1)).sum() / count)
            total = sampled_softmax_nll(hidden[real], self.embedding.item, target_ids[real], negatives[real],
                                        log_q=None if log_q is None else log_q[real]).sum()
            return LossOutput(total / count)
        weight = self.embedding.item.weight[1:]  # items 1..V only: padding stays out of the softmax
        if torch.compiler.is_compiling():
            # Static shapes for a compiled graph: every position is scored and padding
            # weighted 0 (its hidden state is 0, so its NLL is finite). Eager keeps the
            # packed rows below: on Beauty B * n = 12,800 positions hold ~2,300 targets,
            # and the [positions, V] logits dominate the step (eager-static column of
            # benchmarks/bench_compile.py).
            flat = hidden.reshape(-1, hidden.size(-1))
            nll = softmax_nll(flat, weight, (target_ids - 1).clamp_min(0).reshape(-1))
            return LossOutput((nll * real.reshape(-1)).sum() / count)
        # Only positions with a target are scored: under left padding most of a batch is
        # padding (Beauty: 8.9 of 50), and the [positions, V] logits dominate the step
        # (hence softmax_nll, which makes fewer passes over them than F.cross_entropy).
        total = softmax_nll(hidden[real], weight, target_ids[real] - 1).sum()
        return LossOutput(total / count)

    def item_table(self) -> nn.Embedding:
        return self.embedding.item
