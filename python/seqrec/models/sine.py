"""SINE: sparse-interest network for sequential recommendation.

Tan et al., "Sparse-Interest Network for Sequential Recommendation", WSDM 2021
(notes: ``shared/papers/sine-sparse-interest-network.md``). The intention assignment
and the weighted aggregation into K interests run in one call of the fused
``intent_cluster`` operator (:func:`seqrec.ops.intent_cluster`).

The interest extraction is a head, :class:`SparseInterestHead`: :class:`SINE` is that head
on its item embeddings, :class:`~seqrec.models.ComposedRecommender` (``interests="sine"``)
the same head on a Transformer encoder's states.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import intent_cluster
from ..ops.backend import get_backend
from .layers import Dropout, PackedPositions, padding_mask
from .base import LossOutput, SequentialRecommender, check_candidates, check_ids
from .config import ConfigBase, Preset, spec
from .losses import sampled_softmax_nll

__all__ = ["SINEConfig", "SINE", "SINEOutput", "SINE_PRESETS", "MERGES", "INTENT_ATTENTIONS",
           "SparseInterestHead", "covariance_regularizer", "kept_targets", "prefix_columns"]

MERGES = ("aggregate", "max")
INTENT_ATTENTIONS = ("paper", "assigned")

# Named settings, selectable with ``seqrec train --model sine --preset <name>``.
SINE_PRESETS: dict[str, Preset] = {
    # The paper's defaults (these are also SINEConfig's defaults).
    "paper": Preset(model=dict(num_prototypes=500, num_interests=4, temperature=0.1, reg_weight=0.1)),
    # A small concept pool, for small catalogues and quick looks (the synthetic data).
    "small": Preset(model=dict(num_prototypes=50, num_interests=4, temperature=0.1, reg_weight=0.1)),
}


@dataclasses.dataclass(frozen=True)
class SINEConfig(ConfigBase):
    """SINE hyper-parameters (plain numbers; defaults = the paper's where it gives them).

    Attributes:
        num_items: number of real items; ids are 1..num_items, 0 is padding.
        max_len: longest input (learned positions), 50.
        hidden_size: D, 64 (the size of our SASRec, for same-budget comparisons).
        num_prototypes: L, the concept pool, 500 (paper).
        num_interests: K, concepts activated per user = interest vectors, 4 (paper).
        temperature: tau of the interest aggregation softmax, 0.1 (paper).
        assign_temperature: temperature of the intention-assignment softmax over the K
            activated concepts (cosine similarities), 0.1. See the model docstring.
        reg_weight: lambda of the covariance regulariser on the prototypes, 0.1.
        dropout: dropout on the item embeddings during training, 0.0 (paper: none).
        max_prefixes: training examples per sequence: None = every prefix of the
            training sequence (each real target position); P = its P most recent.
        merge: how ``score`` / ``recommend`` use the K interests: ``"aggregate"`` (the
            paper's user vector, default) or ``"max"`` (max over interests).
        intent_attention: ``"paper"`` (P_{t|k} from per-intention attention alone) or
            ``"assigned"`` (the authors' code: attention logits scaled by P_{k|t} before
            the softmax over positions). See the model docstring.
        initializer_range: std of the normal init, 0.02.
        layer_norm_eps: epsilon of every layer norm, 1e-5.
    """

    num_items: int = spec(kind="int", minimum=1, cli=False,
                          help="number of real items; ids 1..num_items, 0 is padding")
    max_len: int = spec(50, kind="int", minimum=1, cli=False, help="longest input (learned positions)")
    hidden_size: int = spec(64, kind="int", minimum=1, help="hidden size D")
    num_prototypes: int = spec(500, kind="int", minimum=1, help="L, size of the concept pool")
    num_interests: int = spec(4, kind="int", minimum=1, help="K, concepts activated per user")
    temperature: float = spec(0.1, kind="positive", help="tau of the interest aggregation softmax")
    assign_temperature: float = spec(0.1, kind="positive", help="temperature of the intention assignment softmax")
    reg_weight: float = spec(0.1, kind="number", minimum=0,
                             help="lambda of the covariance regulariser on the prototypes")
    dropout: float = spec(0.0, kind="probability", help="dropout on the item embeddings during training")
    max_prefixes: int | None = spec(None, kind="int", minimum=1, optional=True,
                                    help="training prefixes per sequence, most recent first (None: all)")
    merge: str = spec("aggregate", kind="choice", choices=MERGES,
                      help="how scores use the K interests: the aggregated user vector or the max over them")
    intent_attention: str = spec("paper", kind="choice", choices=INTENT_ATTENTIONS,
                                 help="per-intention attention: the paper's, or the authors' code's (scaled by "
                                      "the assignment)")
    initializer_range: float = spec(0.02, kind="positive", cli=False, help="std of the normal init")
    layer_norm_eps: float = spec(1e-5, kind="positive", cli=False, help="epsilon of every layer norm")

    def validate(self) -> None:
        if self.num_interests > self.num_prototypes:
            raise ValueError(
                f"SINEConfig.num_interests={self.num_interests} must be <= "
                f"num_prototypes={self.num_prototypes} (top-K of the L concepts)"
            )


class SINEOutput(NamedTuple):
    """Everything SINE computes for a batch of sequences (B rows, n positions)."""

    user: Tensor  # [B, D] aggregated user vector v_u
    interests: Tensor  # [B, K, D] phi^k, the K interest vectors (after LN_3)
    interest_weights: Tensor  # [B, K] e_k, softmax(<C_apt, phi^k> / tau)
    concepts: Tensor  # [B, K] int64 indices of the activated prototypes (top-K, best first)
    concept_scale: Tensor  # [B, K] sigmoid(s[idx])
    assignment: Tensor  # [B, n, K] P_{k|t} (0 at padding)
    position_weights: Tensor  # [B, K, n] P_{t|k} (0 at padding)


def covariance_regularizer(prototypes: Tensor) -> Tensor:
    """SINE's covariance regulariser on the concept prototypes C [L, D]::

        M   = (C - mean_d C)(C - mean_d C)^T / D       # [L, L], prototype covariances
        L_c = (||M||_F^2 - ||diag(M)||^2) / 2

    Each prototype is centred over its D coordinates (the DeCov form, with prototypes
    as the variables and coordinates as the observations); L_c is 0 exactly when the
    centred prototypes are pairwise orthogonal.
    """
    if prototypes.dim() != 2:
        raise ValueError(f"prototypes must be [L, D], got shape {tuple(prototypes.shape)}")
    centred = prototypes - prototypes.mean(dim=1, keepdim=True)
    m = centred @ centred.t() / prototypes.size(1)
    return 0.5 * (m.square().sum() - torch.diagonal(m).square().sum())


def _masked_softmax(logits: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last dim at True entries of ``mask``; an all-False row gives 0."""
    logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    return torch.softmax(logits, dim=-1) * mask.any(dim=-1, keepdim=True).to(logits.dtype)


def kept_targets(target_ids: Tensor, max_prefixes: int | None) -> Tensor:
    """[B, n] bool: the positions whose next item trains (target > 0), with
    ``max_prefixes = P`` only the P most recent of each row."""
    real = target_ids > 0
    if max_prefixes is not None:
        # Rank of each target from the end of its row; keep the P most recent.
        from_end = real.flip(1).cumsum(1).flip(1)
        real = real & (from_end <= max_prefixes)
    return real


def prefix_columns(real: Tensor, first: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The right-aligned prefixes that end at the True entries of ``real`` [B, n].

    Args:
        real: [B, n] bool, the prefix ends (row-major order is the examples' order).
        first: [B] the first real column of each row (left padding).

    Returns:
        ``(rows [R], cols [R], src [R, W])``: example r is row ``rows[r]`` up to column
        ``cols[r]``; ``src[r, w]`` is the column of its w-th position (the last, w = W - 1,
        is ``cols[r]``), W the longest prefix. Columns below ``first[rows[r]]`` (negative
        ones included) are the prefix's left padding.
    """
    rows, cols = real.nonzero(as_tuple=True)
    width = int((cols - first[rows] + 1).max()) if rows.numel() else 1
    src = cols.unsqueeze(1) - torch.arange(width - 1, -1, -1, device=cols.device)  # [R, W]
    return rows, cols, src


class SparseInterestHead:
    """SINE's interest extraction on a host model, for the models that compose it.

    The host is a :class:`~seqrec.models.base.SequentialRecommender` with ``config``
    (the head's fields of :class:`SINEConfig`: ``hidden_size``, ``max_len``,
    ``num_prototypes``, ``num_interests``, ``temperature``, ``assign_temperature``,
    ``intent_attention``, ``merge``, ``initializer_range``, ``layer_norm_eps``),
    ``backend``, ``embedding.item`` (the table that scores items) and
    ``embedding.position`` (P [max_len, D], right-aligned). The head reads a sequence
    of D-vectors X (SINE: its item embeddings; :class:`~seqrec.models.ComposedRecommender`:
    its encoder's states) and adds its parameters (:meth:`_build_sparse_interests`,
    SINE's names), the extraction of the K interests and the user vector
    (:meth:`sparse_interests`, the equations of :class:`SINE`), the merge rule of the
    scores (:meth:`merged_scores`) and the prefixes that train it
    (:meth:`prefix_sparse_interests`). Its regulariser is :func:`covariance_regularizer` of
    ``prototypes``. :class:`SINE` is this head on the item embeddings.
    """

    def _build_sparse_interests(self) -> None:
        """The head's parameters, registered in SINE's order (drawn by
        :meth:`_init_sparse_interests` and the host's init of Linear layers)."""
        config = self.config
        d, k = config.hidden_size, config.num_interests
        self.prototypes = nn.Parameter(torch.empty(config.num_prototypes, d))  # C [L, D]
        # Concept activation: a = softmax(tanh(X W_1) w_2).
        self.concept_key = nn.Linear(d, d)  # W_1
        self.concept_query = nn.Linear(d, 1, bias=False)  # w_2
        # Intention assignment projection W_3.
        self.assign_proj = nn.Linear(d, d, bias=False)
        # Per-intention attention: W_{k,1} for all k in one [D, K*D] map, w_{k,2} [K, D].
        self.intent_key = nn.Linear(d, k * d)
        self.intent_query = nn.Parameter(torch.empty(k, d))
        self.interest_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)  # LN_3
        # Interest aggregation: pooling of the intention sequence, LN_4.
        self.next_key = nn.Linear(d, d)  # W_5
        self.next_query = nn.Linear(d, 1, bias=False)  # w_6
        self.next_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)  # LN_4

    @torch.no_grad()
    def _init_sparse_interests(self) -> None:
        """After the Linear layers' normal init: the two free parameters, N(0, initializer_range)."""
        std = self.config.initializer_range
        self.prototypes.normal_(0.0, std)
        self.intent_query.normal_(0.0, std)

    def sparse_interests(self, values: Tensor, mask: Tensor) -> SINEOutput:
        """The head on a padded sequence of vectors.

        Args:
            values: [B, n, D] X, one vector per position (0 at padding), LEFT-padded,
                n <= max_len (the most recent position takes position row max_len - 1).
            mask: [B, n] bool, the real positions.

        Returns:
            :class:`SINEOutput`.
        """
        if torch.compiler.is_compiling():  # PackedPositions has a data-dependent size
            return self._extract_interests(values, mask, None)
        packed = PackedPositions(mask)
        return self._extract_interests(packed.pack(values), mask, packed)

    def prefix_sparse_interests(self, values: Tensor, mask: Tensor, real: Tensor) -> SINEOutput:
        """The head on the right-aligned prefix of ``values`` that ends at each True entry
        of ``real`` (row-major order), each prefix its own sequence, as SINE trains.

        Args:
            values: [B, n, D] per-position vectors (0 at padding), LEFT-padded.
            mask: [B, n] bool, the real positions.
            real: [B, n] bool, the prefix ends (real positions).

        Returns:
            :class:`SINEOutput` with one row per True entry of ``real``. Only the real
            positions of the prefixes are gathered (the head's packed path). Under
            ``torch.compile`` (the number of prefixes depends on the data) one row per
            entry of ``real``, [B * n] row-major, each the padded prefix of width n that
            ends at its column (SINE's ``_static_prefix_loss``, on vectors): the rows of
            False entries are the caller's to weigh 0.
        """
        b, n, d = values.shape
        first = n - mask.sum(1)  # first real column of each row
        if torch.compiler.is_compiling():
            ends = torch.arange(n, device=values.device)
            src = ends[:, None] - torch.arange(n - 1, -1, -1, device=values.device)  # [n, n]: columns of each prefix
            inside = src >= first[:, None, None]  # [B, n, n]: the prefixes' real positions
            prefixes = values[:, src.clamp_min(0)].masked_fill(~inside.unsqueeze(-1), 0.0)  # [B, n, n, D]
            return self.sparse_interests(prefixes.reshape(b * n, n, d), inside.reshape(b * n, n))
        rows, _, src = prefix_columns(real, first)
        inside = src >= first[rows].unsqueeze(1)  # [R, W]: the prefixes' real positions
        packed = PackedPositions(inside)
        flat = (rows.unsqueeze(1) * n + src).reshape(-1).index_select(0, packed.index)  # [N] rows of values
        return self._extract_interests(values.reshape(b * n, d).index_select(0, flat), inside, packed)

    def _extract_interests(self, x_real: Tensor, mask: Tensor, packed: PackedPositions | None) -> SINEOutput:
        """The equations of :class:`SINE` from X at the real positions.

        Args:
            x_real: [N, D] X at the real positions of ``mask`` (``packed.index`` order), or
                with ``packed`` None (``torch.compile``) the padded [B, n, D] (0 at padding).
            mask: [B, n] bool, the real positions (right-aligned: a row's last real
                position is column n - 1, the position row max_len - 1).
            packed: ``PackedPositions(mask)``, or None for the padded path.
        """
        cfg = self.config
        b, n = mask.shape
        k = cfg.num_interests
        pos = self.embedding.position.weight[cfg.max_len - n :]  # [n, D], most recent at max_len - 1

        # Position-wise work (projections, tanh, weighted sums) runs on the N real
        # positions only (Beauty: ~7 of 50); `positionwise` returns the padded
        # [B, n, *] layout, `pool(w, t)` = sum_t w[b, t] t[b, t] for w [B, n].
        if packed is None:
            pos_real, x = pos, x_real

            def positionwise(fn, t: Tensor) -> Tensor:
                return fn(t)

            def pool(w: Tensor, t: Tensor) -> Tensor:
                return (w.unsqueeze(-1) * t).sum(1)
        else:
            row = packed.index // n  # [N] batch row of each real position
            pos_real = pos[packed.index % n]  # [N, D]
            x = packed.unpack(x_real)  # [B, n, D]

            def positionwise(fn, t: Tensor) -> Tensor:
                return packed.unpack(fn(t))

            def pool(w: Tensor, t: Tensor) -> Tensor:
                w_real = w.reshape(-1).index_select(0, packed.index).unsqueeze(-1)
                return t.new_zeros(b, t.size(-1)).index_add(0, row, w_real * t)

        # Concept activation.
        a = positionwise(lambda t: self.concept_query(torch.tanh(self.concept_key(t))), x_real)
        a = _masked_softmax(a.squeeze(-1), mask)  # [B, n]
        z = pool(a, x_real)  # [B, D]
        s = z @ self.prototypes.t()  # [B, L]
        top_s, concepts = s.topk(k, dim=1)  # [B, K]
        scale = torch.sigmoid(top_s)

        # Per-intention attention over positions, P_{t|k}.
        # sum_d h[.., k, d] w_{k,2}[d] as ONE matmul of h [.., K*D] with the block-diagonal
        # [K*D, K] matrix of the w_{k,2} (a multiply + sum makes 3 passes over h, and
        # CPU bmm of matrix-vector products is slower still).
        w_k2 = torch.block_diag(*self.intent_query.unbind(0))  # [K, K*D]

        def intent_logits(t: Tensor) -> Tensor:
            return torch.tanh(self.intent_key(t)) @ w_k2.t()  # [.., K]

        att = positionwise(intent_logits, x_real + pos_real).transpose(1, 2)  # [B, K, n]
        xw = positionwise(self.assign_proj, x_real)  # [B, n, D]
        cluster = dict(active=concepts, active_scale=scale, values=x, eps=cfg.layer_norm_eps,
                       backend=self.backend)
        if cfg.intent_attention == "assigned":
            # The authors' code: attention logits scaled by P_{k|t} before the softmax
            # over positions, so each intention attends to the positions assigned to it.
            _, p_kt = intent_cluster(xw, mask, self.prototypes, cfg.assign_temperature, **cluster)
            att = att * p_kt.transpose(1, 2)
        att = _masked_softmax(att, mask.unsqueeze(1).expand(b, k, n))

        # Intention assignment and aggregation into K interests: one fused op.
        raw, assignment = intent_cluster(xw, mask, self.prototypes, cfg.assign_temperature,
                                         weights=att, **cluster)
        interests = self.interest_norm(raw)  # [B, K, D]

        # Interest aggregation: predict the next intention from the intention sequence
        # Xhat = P^u C^u. Its pooling g^T Xhat is computed as (g^T P^u) C^u ([B, K] first).
        active_c = self.prototypes[concepts] * scale.unsqueeze(-1)  # C^u [B, K, D]
        xhat = torch.bmm(assignment, active_c)  # [B, n, D]; 0 at padding
        xhat_real = xhat if packed is None else packed.pack(xhat)
        g = positionwise(lambda t: self.next_query(torch.tanh(self.next_key(t))), xhat_real + pos_real)
        g = _masked_softmax(g.squeeze(-1), mask)  # [B, n]
        mix = (g.unsqueeze(-1) * assignment).sum(1)  # [B, K]
        c_apt = self.next_norm((mix.unsqueeze(-1) * active_c).sum(1))  # [B, D]
        logits = (interests * c_apt.unsqueeze(1)).sum(-1) / cfg.temperature  # [B, K]
        weights = torch.softmax(logits, dim=-1)
        user = (weights.unsqueeze(-1) * interests).sum(1)  # [B, D]
        return SINEOutput(user, interests, weights, concepts, scale, assignment, att)

    def merged_scores(self, out: SINEOutput, items: Tensor | None) -> Tensor:
        """Next-item scores of :meth:`sparse_interests`' output under ``config.merge``:
        [B, V + 1] with column 0 = -inf (``items`` None) or [B, C] with -inf at 0."""
        weight = self.embedding.item.weight  # [V+1, D]
        if items is None:
            if self.config.merge == "aggregate":
                scores = out.user @ weight.t()  # [B, V+1]
            else:
                scores = (out.interests @ weight.t()).amax(dim=1)  # [B, K, V+1] -> [B, V+1]
            pad = torch.arange(scores.size(1), device=scores.device) == 0
            return scores.masked_fill(pad, float("-inf"))
        cand = self.embedding.item(items)  # [B, C, D]
        if self.config.merge == "aggregate":
            scores = torch.bmm(cand, out.user.unsqueeze(-1)).squeeze(-1)
        else:
            scores = torch.bmm(cand, out.interests.transpose(1, 2)).amax(dim=-1)
        return scores.masked_fill(items == 0, float("-inf"))


class ItemPositionTables(nn.Module):
    """SINE's item table ``item`` [num_items + 1, D] (row 0 padding) and learned
    positions ``position`` [max_len, D], right-aligned (the most recent item has row
    max_len - 1). Only a container: SINE adds no norm and applies its own dropout."""

    positions_right_aligned = True

    def __init__(self, num_embeddings: int, max_len: int, hidden_size: int) -> None:
        super().__init__()
        self.item = nn.Embedding(num_embeddings, hidden_size, padding_idx=0)
        self.position = nn.Embedding(max_len, hidden_size)


class SINE(SparseInterestHead, SequentialRecommender):
    """Sparse-interest network (Tan et al., WSDM 2021).

    For a LEFT-padded sequence with item embeddings X [n, D] (real positions only,
    position embeddings P right-aligned as in :class:`layers.ItemPositionEmbedding`)::

        a        = softmax_t(tanh(X W_1) w_2)                     # self-attentive pooling
        z_u      = a^T X;   s = C z_u                             # scores of the L concepts
        idx      = top-K(s);   C^u = C[idx] * sigmoid(s[idx])     # activated concepts
        P_{k|t}  = softmax_k(<N(X_t W_3), N(C^u_k)> / tau_a)      # intention assignment
        P_{t|k}  = softmax_t(tanh((X_t + P_t) W_{k,1}) w_{k,2})   # per-intention attention
        phi^k    = LN_3(sum_t P_{k|t} P_{t|k} X_t)                # K interest vectors
        Xhat     = P^u C^u                                        # [n, D] intention sequence
        C_apt    = LN_4(softmax_t(tanh((Xhat + P) W_5) w_6)^T Xhat)  # predicted next intention
        e        = softmax_k(<C_apt, phi^k> / tau);  v_u = sum_k e_k phi^k

    with ``N(u) = normalize(LN(u))`` (layer norm without affine, then L2: cosine of
    layer-normed vectors). ``P_{k|t}``, ``P_{t|k}`` and ``phi^k`` (before LN_3) are one
    call of :func:`seqrec.ops.intent_cluster` (``x = X W_3``, ``values = X``,
    ``active = idx``, ``active_scale = sigmoid(s[idx])``, ``weights = P_{t|k}``).

    Loss: sampled softmax of the next item against ``m`` sampled negatives,
    ``-log softmax([<v_u, e_pos>, <v_u, e_neg_1..m>])[0]`` averaged over training
    examples, plus ``reg_weight`` times :func:`covariance_regularizer` of C. Items are
    scored with the (shared) item embedding table.

    Retrieval / merge rule (``config.merge``):

    - ``"aggregate"`` (default): score(i) = <v_u, e_i>, the paper's user vector, i.e.
      the K interests weighted by the predicted next intention; exactly the quantity
      the loss trains. The K interests enter through e.
    - ``"max"``: score(i) = max_k <phi^k, e_i>. Its top-k list equals merging the K
      per-interest top-k retrievals by score with duplicates removed (ComiRec-style).

    Deviations and open choices (each documented here, none silent):

    - Training examples: every prefix of a training sequence is one example (the
      next-item target at each real position, like SASRec's per-position loss), each
      encoded on its own, right-aligned, so training and evaluation inputs look alike.
      The authors sample one random prefix per user and step. ``max_prefixes`` keeps
      the P most recent prefixes per sequence.
    - Negatives: the trainer's ``num_negatives`` items per example, by default uniform
      over the items the user never interacted with (``--train-negatives`` picks popularity,
      in-batch or a mix); the batch's log-Q correction is applied when it carries one
      (the trainer adds it for non-uniform samplers, or always with ``log_q=True``).
      The authors use TF's sampled softmax with shared negatives.
    - LN_1 / LN_2 of the intention assignment have no affine parameters (the fused op
      computes cosine similarity of standardised vectors). A positive
      ``active_scale`` therefore does not change P_{k|t}; the top-K choice stays
      differentiable through ``Xhat = P^u C^u`` in the aggregation module, as in the
      paper.
    - The assignment softmax has its own temperature ``assign_temperature`` (0.1): the
      paper writes it without one, but a softmax of cosines in [-1, 1] is then nearly
      uniform; the authors' code divides by 0.07.
    - P_{t|k} uses per-intention W_{k,1} (D x D) and w_{k,2} as in the paper; the k-th
      intention is the k-th best activated concept. Position embeddings enter the
      attention keys (P_{t|k} and C_apt's pooling), as in the authors' code; values
      are the raw item embeddings X.
    - ``intent_attention="paper"`` (default) computes P_{t|k} without looking at the
      assignment, so nothing stops all K attentions from settling on the same
      positions: on the synthetic data (where the last item predicts the next one)
      every P_{t|k} ends up ~99% on the most recent item and the K interests become
      near copies (mean cosine ~0.9). ``"assigned"`` follows the authors' code,
      ``P_{t|k} = softmax_t(P_{k|t} * tanh((X_t + P_t) W_{k,1}) w_{k,2})``: each
      intention attends to its own positions and the interests stay distinct, at
      some cost in accuracy there (``notebooks/interests.ipynb``). It runs the
      assignment twice (one more ``intent_cluster`` call).
    - Fully padded rows (length 0) give zero interests before LN_3 and a finite user
      vector, never NaN.

    Args:
        config: :class:`SINEConfig`.
        backend: ``"seqrec"`` (fused ``intent_cluster`` kernel) or ``"reference"``
            (plain PyTorch); None = process default (:func:`seqrec.ops.get_backend`).
    """

    # Before the item and position tables took the shared names (issue 29).
    RENAMED_PREFIXES: dict[str, str] = {"item.": "embedding.item.", "position.": "embedding.position."}

    def __init__(self, config: SINEConfig, *, backend: str | None = None) -> None:
        super().__init__()
        if not isinstance(config, SINEConfig):
            raise ValueError(f"config must be a SINEConfig, got {type(config).__name__}")
        if backend is not None:
            get_backend(backend)
        self.config = config
        self.backend = backend
        # embedding.item, embedding.position: the names every seqrec model gives them, so
        # a pretrained encoder's tables initialise them (load_pretrained).
        self.embedding = ItemPositionTables(config.num_items + 1, config.max_len, config.hidden_size)
        self.dropout = Dropout(config.dropout)
        # The interest extraction on the item embeddings (prototypes, concept_*, assign_proj,
        # intent_*, interest_norm, next_*: SINE's names, in SINE's order).
        self._build_sparse_interests()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, initializer_range) weights, zero biases, unit layer norms, zero padding row."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
        self.embedding.item.weight[0].zero_()
        self._init_sparse_interests()

    # ------------------------------------------------------------------ encoder
    def encode(self, item_seq: Tensor, lengths: Tensor | None = None) -> SINEOutput:
        """Run SINE on LEFT-padded sequences.

        Args:
            item_seq: [B, n] int64 item ids in [0, num_items], left-padded with 0,
                n <= max_len.
            lengths: optional [B] real lengths (checked against ``item_seq``).

        Returns:
            :class:`SINEOutput` (user vector, K interests, their weights, activated
            concepts, assignment and attention probabilities).
        """
        check_ids("item_seq", item_seq)
        cfg = self.config
        mask = padding_mask(item_seq, lengths)  # [B, n]
        n = item_seq.size(1)
        if n > cfg.max_len:
            raise ValueError(
                f"sequence width {n} exceeds max_len={cfg.max_len}; keep the most recent "
                f"max_len items (item_seq[:, -{cfg.max_len}:])"
            )
        # The embedding lookup on the real positions only (the head's packed path).
        if torch.compiler.is_compiling():  # PackedPositions has a data-dependent size
            x = self.dropout(self.embedding.item(item_seq))  # [B, n, D]; padding rows are 0
            return self._extract_interests(x, mask, None)
        packed = PackedPositions(mask)
        x_real = self.dropout(self.embedding.item(item_seq.reshape(-1)[packed.index]))  # [N, D]
        return self._extract_interests(x_real, mask, packed)

    def forward(self, item_seq: Tensor, lengths: Tensor | None = None) -> Tensor:
        """User vectors v_u [B, D] (see :meth:`encode`)."""
        return self.encode(item_seq, lengths).user

    has_interests = True

    def interests(self, item_seq: Tensor, lengths: Tensor | None = None) -> Tensor:
        """The K interest vectors phi^k [B, K, D] of each sequence (see :meth:`encode`)."""
        return self.encode(item_seq, lengths).interests

    # ------------------------------------------------------------------ scoring
    def score(
        self, item_seq: Tensor, lengths: Tensor | None = None, items: Tensor | None = None
    ) -> Tensor:
        """Next-item scores under ``config.merge`` (see the class docstring).

        Args:
            item_seq: [B, n] left-padded item ids.
            lengths: optional [B] real lengths.
            items: optional [B, C] candidate ids; None scores every item.

        Returns:
            [B, num_items + 1] with column 0 (padding) = -inf, or [B, C] with -inf where
            a candidate is 0. Call ``eval()`` first (dropout).
        """
        out = self.encode(item_seq, lengths)
        if items is not None:
            check_candidates(item_seq, items)
        return self.merged_scores(out, items)

    # ------------------------------------------------------------------ training
    def training_prefixes(self, item_seq: Tensor, target_ids: Tensor,
                          lengths: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The training examples of a batch: one right-aligned prefix per real target.

        Args:
            item_seq: [B, n] left-padded inputs; target_ids: [B, n] next items (0 = none).
            lengths: optional [B] real lengths (checked by :func:`layers.padding_mask`);
                None counts the nonzero ids of ``item_seq``.

        Returns:
            ``(rows [R], cols [R], prefixes [R, W])``: example r is the prefix of row
            ``rows[r]`` ending at column ``cols[r]`` (its target is
            ``target_ids[rows[r], cols[r]]``), left-padded to the longest one, W <= n.
            With ``max_prefixes = P`` only the P most recent targets of a row are kept.
        """
        real = kept_targets(target_ids, self.config.max_prefixes)
        n = item_seq.size(1)
        real_items = padding_mask(item_seq, lengths).sum(1) if lengths is not None else (item_seq != 0).sum(1)
        rows, cols, src = prefix_columns(real, n - real_items)  # n - real_items: first real column of each row
        prefixes = item_seq[rows.unsqueeze(1), src.clamp_min(0)] * (src >= 0)
        return rows, cols, prefixes

    def batch_loss(
        self, item_seq: Tensor, target_ids: Tensor, negative_ids: Tensor | None = None, *,
        lengths: Tensor | None = None, features=None
    ) -> LossOutput:
        """Sampled-softmax loss over every training prefix + covariance regulariser.

        Args:
            item_seq: [B, n] left-padded input ids.
            target_ids: [B, n] next item at each position, 0 where there is none.
            negative_ids: [B, n, m] (or [B, n] for m = 1) sampled negatives per
                position (``TrainConfig.num_negatives`` = m); required.
            lengths: optional [B] real lengths (else from the zeros of ``item_seq``).
            features: ``"negative_log_q"``: the negatives' log-Q correction (subtracted
                from their logits, :func:`~seqrec.models.losses.sampled_softmax_loss`);
                absent, none. Negatives equal to the target are removed.

        Returns:
            :class:`LossOutput`: ``loss`` = mean over examples of
            ``-log softmax([pos, negs - log_q])[0]`` plus ``reg_weight * covariance_regularizer(C)``;
            ``terms``: the two unweighted, ``item`` (the mean NLL; absent when the batch
            has no target) and ``covariance`` (the names of
            :class:`~seqrec.models.ComposedRecommender`'s terms with ``interests="sine"``).
        """
        self.check_ids("item_seq", item_seq)
        shape = tuple(item_seq.shape)
        self.check_ids("target_ids", target_ids, shape)
        negative_ids, log_q = self.sampled_negatives(negative_ids, shape, features)
        covariance = covariance_regularizer(self.prototypes)
        reg = self.config.reg_weight * covariance
        if torch.compiler.is_compiling():
            nll = self._static_prefix_loss(item_seq, target_ids, negative_ids, log_q)
            return LossOutput(nll + reg, {"item": nll, "covariance": covariance})
        rows, cols, prefixes = self.training_prefixes(item_seq, target_ids, lengths)
        if rows.numel() == 0:
            return LossOutput(reg, {"covariance": covariance})
        user = self(prefixes)  # [R, D]
        nll = sampled_softmax_nll(user, self.embedding.item, target_ids[rows, cols], negative_ids[rows, cols],
                                  log_q=None if log_q is None else log_q[rows, cols], reduction="mean")
        return LossOutput(nll + reg, {"item": nll, "covariance": covariance})

    def _static_prefix_loss(self, item_seq: Tensor, target_ids: Tensor, negative_ids: Tensor,
                            log_q: Tensor | None = None) -> Tensor:
        """The sampled-softmax term of :meth:`batch_loss` with static shapes (what a
        ``torch.compile`` graph needs): one prefix per position [B * n, n], the ones
        without a kept target weighted 0, instead of :meth:`training_prefixes`' packed
        [R, W] (R targets, W their longest prefix). Equal in value; eager keeps the
        packed prefixes, since encoding every position's prefix at the full width costs
        (B * n * n) / (R * W) times the work (benchmarks/bench_compile.py,
        ``eager-static``)."""
        real = kept_targets(target_ids, self.config.max_prefixes)
        b, n = item_seq.shape  # the zeros of item_seq make the prefixes (lengths agree with them)
        cols = torch.arange(n, device=item_seq.device)
        src = cols[:, None] - torch.arange(n - 1, -1, -1, device=item_seq.device)  # [n, n]
        prefixes = item_seq[:, src.clamp_min(0)] * (src >= 0)  # [B, n, n]: prefix ending at each column
        user = self(prefixes.reshape(b * n, n))  # [B * n, D]
        m = negative_ids.size(-1)
        per_prefix = sampled_softmax_nll(user, self.embedding.item, target_ids.reshape(b * n), negative_ids.reshape(b * n, m),
                                         log_q=None if log_q is None else log_q.reshape(b * n, m))
        weight = real.reshape(-1).to(per_prefix.dtype)
        return (per_prefix * weight).sum() / weight.sum().clamp_min(1)

    # ------------------------------------------------------------------ retrieval
    # recommend() is the base's: it ranks by score(), which applies config.merge.
    def item_table(self) -> nn.Embedding:
        return self.embedding.item

    @property
    def uses_negative_log_q(self) -> bool:
        return True  # SINE's loss is always a sampled softmax

    @torch.no_grad()
    def item_concepts(self) -> Tensor:
        """Each item's nearest prototype over the whole pool: [num_items] (items 1..V).

        The cosine of layer-normed ``E_i W_3`` and ``C_l``, as in the intention
        assignment (no dropout on this path)."""
        d = self.prototypes.size(1)
        eps = self.config.layer_norm_eps
        emb = self.embedding.item.weight[1:]  # [V, D]
        xn = F.normalize(F.layer_norm(self.assign_proj(emb), (d,), eps=eps), dim=-1)
        cn = F.normalize(F.layer_norm(self.prototypes, (d,), eps=eps), dim=-1)
        return (xn @ cn.t()).argmax(dim=1)
