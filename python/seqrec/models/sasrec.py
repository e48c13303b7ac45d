"""SASRec: self-attentive sequential recommendation.

Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018, in the form the
S3-Rec authors fine-tune (Zhou et al., CIKM 2020, ``RUCAIBox/CIKM2020-S3Rec``:
``S3RecModel.finetune`` + ``FinetuneTrainer.cross_entropy``), whose numbers are the
SASRec rows of REFERENCE.md.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.backend import get_backend
from .layers import (
    ACTIVATIONS,
    ItemPositionEmbedding,
    TransformerEncoder,
    init_transformer_weights,
    lookup_rows,
    padding_mask,
)
from .losses import softmax_nll

__all__ = ["SASRecConfig", "SASRec"]

LOSSES = ("bce", "ce")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"SASRecConfig.{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"SASRecConfig.{name} must be >= {minimum}, got {value}")


def _check_probability(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"SASRecConfig.{name} must be a number in [0, 1), got {value!r}")


def _check_positive(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"SASRecConfig.{name} must be a positive number, got {value!r}")


@dataclasses.dataclass(frozen=True)
class SASRecConfig:
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
        loss: ``"bce"`` (one sampled negative per position, the paper's and the
            authors') or ``"ce"`` (softmax over all items).
        initializer_range: std of the normal init, 0.02.
        hidden_act: ``"gelu"`` (authors) or ``"relu"`` (Kang & McAuley).
        layer_norm_eps: 1e-12 (authors).
    """

    num_items: int
    max_len: int = 50
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    inner_size: int | None = None
    hidden_dropout: float = 0.5
    attention_dropout: float = 0.5
    loss: str = "bce"
    initializer_range: float = 0.02
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12

    def __post_init__(self) -> None:
        _check_int("num_items", self.num_items, 1)
        _check_int("max_len", self.max_len, 1)
        _check_int("hidden_size", self.hidden_size, 1)
        _check_int("num_layers", self.num_layers, 1)
        _check_int("num_heads", self.num_heads, 1)
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f"SASRecConfig.hidden_size={self.hidden_size} must be divisible by "
                f"num_heads={self.num_heads}"
            )
        if self.inner_size is not None:
            _check_int("inner_size", self.inner_size, 1)
        _check_probability("hidden_dropout", self.hidden_dropout)
        _check_probability("attention_dropout", self.attention_dropout)
        if self.loss not in LOSSES:
            raise ValueError(f"SASRecConfig.loss must be one of {LOSSES}, got {self.loss!r}")
        _check_positive("initializer_range", self.initializer_range)
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"SASRecConfig.hidden_act must be one of {sorted(ACTIVATIONS)}, "
                f"got {self.hidden_act!r}"
            )
        _check_positive("layer_norm_eps", self.layer_norm_eps)

    @property
    def ffn_size(self) -> int:
        """The feed-forward width actually used."""
        return 4 * self.hidden_size if self.inner_size is None else self.inner_size


def _check_ids(name: str, ids: Tensor, shape: tuple[int, ...] | None = None) -> None:
    """Shape/dtype check only: value checks would cost a device sync on the hot path."""
    if not isinstance(ids, Tensor) or ids.dtype not in (torch.int64, torch.int32):
        got = ids.dtype if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(f"{name} must be an int64 (or int32) tensor, got {got}")
    if shape is not None and tuple(ids.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(ids.shape)}")


class SASRec(nn.Module):
    """SASRec (Kang & McAuley, ICDM 2018) as fine-tuned by the S3-Rec authors.

    Equations (left padding, ``x`` = item ids [B, n], 0 = padding)::

        E   = Dropout(LN(M_I[x] + P))              # learned positions, right-aligned
        F^l = FFN(MHA(F^{l-1}, causal, padding))   # post-LN blocks, GELU, L = 2
        r_{t,i} = <F^L_t, M_I[i]>                  # score of item i after position t

    Loss ``"bce"``: mean over real target positions of
    ``-log sigmoid(r_{t,pos}) - log(1 - sigmoid(r_{t,neg}))`` with one sampled negative
    per position; ``"ce"``: mean over real positions of softmax cross-entropy over
    items 1..num_items.

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
        _check_ids("item_seq", item_seq)
        mask = padding_mask(item_seq, lengths)
        return self.encoder(self.embedding(item_seq), mask)

    def _last_hidden(self, item_seq: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``self(item_seq, lengths)[:, -1]`` [B, D] (0 for an empty row), with the last
        block computing only that column after its attention (``select``)."""
        if torch.compiler.is_compiling():  # select is data-dependent
            return self(item_seq, lengths)[:, -1]
        _check_ids("item_seq", item_seq)
        mask = padding_mask(item_seq, lengths)
        select = torch.zeros_like(mask)
        select[:, -1] = mask[:, -1]
        picked = self.encoder(self.embedding(item_seq), mask, select=select)  # [rows with an item, D]
        rows = mask[:, -1].nonzero().squeeze(1)
        return picked.new_zeros(mask.size(0), picked.size(-1)).index_copy_(0, rows, picked)

    def score(
        self, item_seq: Tensor, lengths: Tensor | None = None, items: Tensor | None = None
    ) -> Tensor:
        """Next-item scores from the last position (the most recent item).

        Args:
            item_seq: [B, n] left-padded item ids (see :meth:`forward`).
            lengths: optional [B] real lengths.
            items: optional [B, C] candidate ids; None scores every item.

        Returns:
            [B, num_items + 1] with column 0 (padding) = -inf, or [B, C] with -inf where
            a candidate is 0. Dropout follows the module mode: call ``eval()`` first.
        """
        last = self._last_hidden(item_seq, lengths)  # [B, D]
        weight = self.embedding.item.weight  # [V+1, D]
        if items is None:
            scores = last @ weight.t()  # [B, V+1]
            pad = torch.arange(scores.size(1), device=scores.device) == 0
            return scores.masked_fill(pad, float("-inf"))
        _check_ids("items", items)
        if items.dim() != 2 or items.size(0) != item_seq.size(0):
            raise ValueError(
                f"items must be [B={item_seq.size(0)}, C], got shape {tuple(items.shape)}"
            )
        scores = torch.bmm(self.embedding.item(items), last.unsqueeze(-1)).squeeze(-1)  # [B,C]
        return scores.masked_fill(items == 0, float("-inf"))

    def loss(
        self, item_seq: Tensor, target_ids: Tensor, negative_ids: Tensor | None = None
    ) -> Tensor:
        """Training loss (``config.loss``) over every real target position.

        Args:
            item_seq: [B, n] left-padded input ids.
            target_ids: [B, n] next item at each position, 0 where there is none.
            negative_ids: [B, n] one sampled negative per position (0 at padding);
                required for ``"bce"``, ignored for ``"ce"``.

        Returns:
            Scalar: mean over positions with ``target_ids > 0``.
        """
        _check_ids("item_seq", item_seq)
        shape = tuple(item_seq.shape)
        _check_ids("target_ids", target_ids, shape)
        real = target_ids > 0
        count = real.sum().clamp_min(1)
        if self.config.loss == "bce":
            if negative_ids is None:
                raise ValueError('negative_ids is required when config.loss == "bce"')
            _check_ids("negative_ids", negative_ids, shape)
            # One lookup of the item table for inputs, targets and negatives: one dense
            # table gradient instead of three (see layers.lookup_rows).
            inputs, targets, negatives = lookup_rows(self.embedding.item, item_seq, target_ids, negative_ids)
            hidden = self.encoder(self.embedding(item_seq, inputs), padding_mask(item_seq))
            pos = (hidden * targets).sum(-1)  # [B, n]
            neg = (hidden * negatives).sum(-1)
            per_position = -(F.logsigmoid(pos) + F.logsigmoid(-neg))
            return (per_position * real).sum() / count
        hidden = self(item_seq)  # [B, n, D]
        # Only positions with a target are scored: under left padding most of a batch is
        # padding (Beauty: 8.9 of 50), and the [positions, V] logits dominate the step
        # (hence softmax_nll, which makes fewer passes over them than F.cross_entropy).
        # Scoring items 1..V only (shift ids by one) keeps padding out of the softmax.
        total = softmax_nll(hidden[real], self.embedding.item.weight[1:], target_ids[real] - 1).sum()
        return total / count

    @torch.no_grad()
    def recommend(
        self,
        sequences: Tensor | Sequence[Sequence[int]],
        k: int = 10,
        exclude_history: bool = True,
        batch_size: int = 1024,
    ) -> tuple[Tensor, Tensor]:
        """Top-k next items for new sequences, in eval mode, batched.

        Args:
            sequences: a list of variable-length lists of DENSE item ids (1..num_items,
                oldest first), or a [B, L] int tensor left-padded with 0. Only the most
                recent ``max_len`` items are encoded.
            k: 1 <= k <= num_items.
            exclude_history: drop every item of the whole given sequence (not only the
                encoded window) from the candidates.
            batch_size: rows encoded at once.

        Returns:
            ``(item_ids [B, k] int64, scores [B, k])`` on the model's device, best
            first. Slots with no admissible item left have id 0 and score -inf. Ids are
            the model's dense ids: map them back with the dataset's id map (the data
            engine's inverse item map) to get original ids.
        """
        num_items = self.config.num_items
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_items:
            raise ValueError(f"k must be an int in [1, num_items={num_items}], got {k!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        # item_embeddings(): every model that borrows this method (DIFSR, SINE, DSS) has it.
        weight = self.item_embeddings()
        history = self._history_tensor(sequences).to(weight.device)  # [B, L] left-padded
        ids = torch.zeros(history.size(0), k, dtype=torch.int64, device=weight.device)
        scores = torch.full((history.size(0), k), float("-inf"), dtype=weight.dtype,
                            device=weight.device)
        was_training = self.training
        self.eval()
        try:
            for start in range(0, history.size(0), batch_size):
                rows = history[start : start + batch_size]
                batch_scores = self.score(rows[:, -self.config.max_len :])
                if exclude_history:
                    batch_scores.scatter_(1, rows, float("-inf"))  # column 0 is -inf anyway
                top_scores, top_ids = batch_scores.topk(k, dim=1)
                scores[start : start + batch_size] = top_scores
                empty = top_scores == float("-inf")  # fewer than k admissible items
                ids[start : start + batch_size] = top_ids.masked_fill(empty, 0)
        finally:
            self.train(was_training)
        return ids, scores

    def _history_tensor(self, sequences: Tensor | Sequence[Sequence[int]]) -> Tensor:
        """Validated [B, L] int64 left-padded tensor (L >= 1) of the given sequences."""
        num_items = self.config.num_items
        if isinstance(sequences, Tensor):
            dtype = sequences.dtype
            if sequences.dim() != 2 or dtype.is_floating_point or dtype == torch.bool:
                raise ValueError(
                    "sequences must be a [B, L] integer tensor or a list of lists, got "
                    f"{sequences.dtype} {tuple(sequences.shape)}"
                )
            history = sequences.to(torch.int64)
            if history.numel() and (history.min() < 0 or history.max() > num_items):
                raise ValueError(f"sequences hold ids outside [0, num_items={num_items}]")
            real = history != 0
            if bool((real[:, :-1] & ~real[:, 1:]).any()):
                raise ValueError("sequences tensor must be LEFT-padded with 0 (no 0 after an item)")
            if history.size(1) == 0:
                history = torch.zeros(history.size(0), 1, dtype=torch.int64)
            return history
        if isinstance(sequences, (str, bytes)) or not isinstance(sequences, Sequence):
            raise ValueError(
                f"sequences must be a list of lists of item ids or a tensor, got "
                f"{type(sequences).__name__}"
            )
        lengths = []
        for row, seq in enumerate(sequences):
            try:
                lengths.append(len(seq))
            except TypeError:
                raise ValueError(
                    f"sequences[{row}] must be a list of item ids, got {type(seq).__name__}"
                ) from None
        width = max(lengths, default=0) or 1
        history = torch.zeros(len(lengths), width, dtype=torch.int64)
        if sum(lengths):
            try:
                flat = torch.as_tensor(list(itertools.chain.from_iterable(sequences)))
            except (TypeError, ValueError, RuntimeError) as exc:
                raise ValueError(f"sequences must hold integer item ids: {exc}") from None
            if flat.dtype.is_floating_point or flat.dtype == torch.bool:
                raise ValueError(f"sequences must hold integer item ids, got {flat.dtype}")
            lengths_t = torch.tensor(lengths)
            if bool(((flat < 1) | (flat > num_items)).any()):
                bad = int(((flat < 1) | (flat > num_items)).nonzero()[0])
                row = int((torch.cumsum(lengths_t, 0) <= bad).sum())
                raise ValueError(
                    f"sequences[{row}] holds item id {int(flat[bad])} outside "
                    f"[1, num_items={num_items}] (dense ids; 0 is padding)"
                )
            rows = torch.repeat_interleave(torch.arange(len(lengths)), lengths_t)
            # Column of each item: left padding puts the last item of a row at width - 1.
            starts = torch.cumsum(lengths_t, 0) - lengths_t
            cols = torch.arange(flat.numel()) - torch.repeat_interleave(starts, lengths_t)
            cols = cols + torch.repeat_interleave(width - lengths_t, lengths_t)
            history[rows, cols] = flat.to(torch.int64)
        return history

    def item_embeddings(self) -> Tensor:
        """Item embedding table [num_items + 1, D] (row 0 = padding), detached.

        Scores are dot products with these rows, so they serve as-is for inner-product
        approximate nearest-neighbour search (``.cpu().numpy()`` to export).
        """
        return self.embedding.item.weight.detach()
