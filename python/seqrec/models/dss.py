"""DSS: disentangled encoder trained with sequence-to-sequence self-supervision.

Ma, Zhou, Yang, Cui, Wang, Zhu, "Disentangled Self-Supervision in Sequential
Recommenders", KDD 2020. The authors released no code; this module is seqrec's
reference implementation. Our notes (``papers/dss-disentangled-self-supervision.md``)
lack the equations, so everything below that is not in DESIGN.md's contract is a
choice of ours, listed under "Open choices". (An unofficial third-party port,
github.com/abis330/DSSRec, reads the weighting and the confidence cut the way we do in
choices 3 and 10; it trains on one split per user and scores with a max over K.)

Model (``B`` users, ``n`` positions, ``D`` hidden size, ``K`` intentions)::

    z_i        = single-head causal SASRec state at position i      (layers.py)
    p(k|i)     = softmax_k( cos(LN(z_i), LN(c_k)) / tau )            (intent_cluster op)
    p_t(i)     = softmax_{i<=t}( q_t . (key_i + alpha_{t-i}) / sqrt(D) )
                 q_t = LN_q(z_t + b'),  key_i = LN_k(z_i) + ReLU(W LN_k(z_i) + b)
    phi_k(x_1..t) = LN(beta_k + sum_{i<=t} p(k|i) p_t(i) z_i)        K vectors [K, D]

Losses, on a training batch (input ``x_1..x_m`` and next items ``x_2..x_{m+1}``):

* seq2item, at every position t with a target: the next item is scored from the K
  vectors, ``s_k(j) = <phi_k(x_1..t), h_j>``, as a mixture softmax over intentions and
  items, ``-log sum_k exp s_k(x_{t+1}) + log sum_k sum_j exp s_k(j)`` (``loss="ce"``: j
  over all items; ``loss="sampled"``: j over the target and the trainer's m negatives).
* seq2seq, at one split point t per user: ``phi^past_k = phi_k(x_1..t)`` (beta_past)
  against ``phi^fut_k = phi_k(x_{m+1}, x_m, ..., x_{t+1})``, the reversed future encoded
  by the same encoder with its own beta_future. InfoNCE with logits
  ``<phi^past_{u,k}, phi^fut_{u',k'}> / (sqrt(D) * seq2seq_temperature)``: the positive
  is (u, k), the negatives are every other (u', k') of the batch (other intentions of the
  same user and every intention of the other users). Only pairs (u, k) where intention
  k is present on both sides count, and of those only the top ``confidence_lambda``
  fraction by confidence.
  With ``backend="seqrec"`` the all-item mixture NLL streams over blocks of items
  (:func:`mixture_nll`: never holds the [N, K, V] logits); ``"reference"``
  materialises them.
* ``loss = seq2item + seq2seq_weight * seq2seq``; ``seq2seq_weight = 0`` is the
  seq2item-only ablation (no future pass, no split point drawn).

Pretraining (the DSSRec reading of the paper, github.com/abis330/DSSRec; ``seqrec
pretrain --model dss``, :meth:`DSS.corrupt` / :meth:`DSS.pretrain_losses` driven by
:class:`~seqrec.train.Pretrainer` with ``samples="windows"``): each user's training part
is cut into windows of ``max_len`` items ``0.5 * max_len`` apart; each window ``seq``
(length L >= 2) is split at t ~ uniform{1..L-1} into the input ``seq[:t]``, the future
``seq[t:]`` reversed and the next item ``seq[t]``. seq2item: the next item against the
batch's next items, its logit the max over the K intentions of ``<phi_k, h> / sqrt(D)``,
the softmax over every (intention, in-batch item);
seq2seq: the per-intention InfoNCE above without the presence filter, every (u, k) an
anchor, keeping the losses at or below the ``kthvalue`` at ``floor(lambda * B * K)``;
both summed over the batch and divided by B, weights 1 and ``seq2seq_weight`` (1 for
pretraining). Then ``seqrec train --model dss|sasrec --init RUN`` fine-tunes from it
(every tensor into DSS; the item table, positions and blocks into a single-head SASRec);
the fine-tune scores items without the 1/sqrt(D), which ``--init-fold-scale`` folds into
the loaded ``out_norm`` for a seq2item-only DSS (:func:`fold_pretraining_scale`).

Evaluation (``score``, ``recommend``): the K vectors of the whole input, items scored by
``logsumexp_k <phi_k, h_j>``, the log of the mixture the seq2item loss trains (a smooth
max over intentions; order-equivalent to the training likelihood).

Open choices (the paper, as we have it, does not fix these):

1. Encoder: our SASRec layers (post-LN, GELU, ``layers.py``) with one head; item and
   position embeddings as SASRec (right-aligned positions). The past and future
   encoders share every parameter except beta. Like SASRec training, the prefixes
   x_1..t of a training row are read off one causal pass over the row, so their z_i
   carry the row's position embeddings (not those of x_1..t encoded alone).
2. Clustering: cosine after a layer norm without affine parameters on both z_i and
   c_k (the ``intent_cluster`` op), prototypes ``c_k`` learned, temperature ``tau``
   (default 0.5, see :class:`DSSConfig`). Padding positions get p(k|i) = 0.
3. Intention weighting: the notes name ``alpha`` (position embeddings) and ``W, b, b'``
   without the equation. Ours is above: alpha is indexed by the distance t - i to the
   latest position (so the weights of a prefix x_1..t are the same whether it is a
   training prefix or a whole evaluated sequence, and one [B, n, n] causal attention
   gives every prefix at once); alpha is added to the keys after the affine map.
4. beta_past, beta_future (``DSSConfig.beta``). The notes give beta "(0, 1/sqrt(D))
   normal", a different one for the past and the future, and white noise in place of
   an absent intention. Two readings:

   * ``"learned"`` (default): learned [K, D] parameters initialised N(0, 1/D); an
     absent intention (mass ~0) gives ``LN(beta_k)``, a fixed vector per side. Measured
     drawback: the seq2seq InfoNCE can then tell intention k from k' by the betas
     alone. After training with seq2seq, cos(beta_past_k, beta_future_k) is .54-.75
     (Beauty) and .73-.84 (LastFM) against about 0 between different k, while without
     seq2seq the betas stay unrelated (|cos| <= .3).
   * ``"noise"``: no parameters; in training every phi gets fresh N(0, 1/D) noise per
     component, drawn independently for the past and the future side (the CPU
     generator, as the split points), so nothing but the content can match; at
     evaluation beta is its mean, 0 (``phi_k = LN(sum ...)``), like dropout.
     Measured (``reproduce.py report dss-beta``, NDCG@20): seq2seq gains .0011 on
     LastFM (.0440 vs .0429, three seeds, sd ~.001) and costs .0098 on Beauty (seed 42:
     .0570 vs .0668); neither reading shows the paper's gain at weight 0.1.
5. One output LayerNorm (with affine) shared by past and future.
6. seq2item scoring from K vectors: mixture softmax (log-sum-exp over intentions),
   dot products without scaling (as our SASRec; the LN'd phi has norm ~sqrt(D)).
   Default ``loss="ce"`` over all items (the paper's softmax); ``"sampled"`` uses the
   trainer's uniform negatives without a log-Q correction. Measured (``reproduce.py
   report dss-sampled``, LastFM, 100 negatives, three seeds, test NDCG@20): seq2item
   only .0553 +- .0018 sampled vs .0461 +- .0008 all-item; with seq2seq (0.1) the
   sampled model's HR@20 rises (.1229 vs .1183) and its NDCG@20 falls (.0528 vs .0553).
   Beauty (seed 42): seq2item only .0588 sampled vs .0669 all-item; with seq2seq,
   sampled, .0513.
7. seq2seq logits are scaled by 1/sqrt(D) (both sides end in a LayerNorm), times
   ``1 / seq2seq_temperature`` (default 1). Measured (``reproduce.py report
   dss-temperature``, LastFM, weight 0.1, seed 42, test / best valid NDCG@20): 0.5 gives
   .0457 / .0492, 1 .0448 / .0575, 2 .0463 / .0628, seq2item only .0468 / .0635: a
   softer InfoNCE comes closer to seq2item only, none goes above it.
8. Split point: per user and batch, the past length t is uniform in 1..m, where m is
   the number of real input items; the future is ``x_{t+1}..x_{m+1}`` (length 1..m).
   The user's whole visible sequence is ``input_ids`` plus the last target. Drawn
   with ``torch.rand`` from torch's default CPU generator (seeded and checkpointed by
   the trainer), so CPU runs are reproducible; a fixed ``split`` can be passed.
   The future sequence is reversed (x_{t+1}, nearest to the split, is its latest item)
   and left-padded like any input.
9. "Present": intention k is present in a sequence when it is the arg-max intention
   of at least one real position (``argmax_k p(k|i) = k``); parameter-free.
10. Top-lambda cut: among the pairs present on both sides, keep the
    ``ceil(confidence_lambda * count)`` pairs the model is most confident about, i.e.
    with the highest InfoNCE probability of the positive (lowest loss); the selection
    is not differentiated. ``confidence_lambda = 1`` keeps every present pair.
    Measured (``reproduce.py report dss-lambda``, LastFM, weight 0.1, three seeds, test
    NDCG@20): without the cut .0437 +- .0004, with it (0.5) .0444 +- .0009, seq2item
    only .0461 +- .0008: the cut is not what keeps seq2seq from helping.
11. Negatives of the InfoNCE: all K future vectors of every user of the batch (absent
    intentions included: they are easy negatives). Users without a split (no input)
    are neither anchors nor negatives.
12. Reductions: seq2item is the mean over target positions; seq2seq is the mean over
    the kept pairs (0 when none is kept).
13. seq2seq weight 0.1 by default (see :class:`DSSConfig`); the paper's value is not in
    our notes. On the real data (``reproduce.py report dss`` / ``dss-weight``, test
    NDCG@20 against seq2item only) a smaller weight does better: LastFM 0.03 gains
    .0031 (3 seeds, every seed above), 0.1 loses .0017; Beauty 0.01 ties (.0668 vs
    .0669, seed 42), 0.03 loses .0017 and 0.1 loses .0049.
14. Dropout (``hidden_dropout``/``attention_dropout``) as SASRec, on both passes;
    default 0.5 / 0.5 (the S3-Rec authors' SASRec budget on Beauty).
15. No extra disentanglement regulariser (DESIGN.md).
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.backend import get_backend
from ..ops.intent_cluster import intent_cluster
from .layers import (
    ItemPositionEmbedding,
    TransformerEncoder,
    init_transformer_weights,
    padding_mask,
)
from .base import LossOutput, SequentialRecommender, check_candidates, check_ids
from .config import EncoderConfig, Preset, spec
from .losses import confident_info_nce, max_intention_nll, mixture_nll

__all__ = ["DSSConfig", "DSS", "DSSEncoding", "DSSPretrainBatch", "IntentionHead", "PRESETS", "info_nce_pairs",
           "mixture_nll", "pretrain_split"]

LOSSES = ("ce", "sampled")
BETAS = ("learned", "noise")

# Named settings selectable with ``seqrec train --model dss --preset NAME``.
PRESETS: dict[str, Preset] = {
    # Our defaults: SASRec's Beauty budget (S3-Rec authors) with K = 4 intentions.
    "default": Preset(help="our defaults: SASRec's Beauty budget, K = 4"),
    # The paper's ablation: the same encoder trained by seq2item alone.
    "seq2item-only": Preset(model={"seq2seq_weight": 0.0}, help="the paper's ablation: seq2item alone"),
}


@dataclasses.dataclass(frozen=True)
class DSSConfig(EncoderConfig):
    """DSS hyper-parameters (plain numbers).

    Attributes:
        num_items: number of real items; ids are 1..num_items, 0 is padding.
        max_len: longest input (learned positions), 50.
        hidden_size: D, 64.
        num_layers: single-head Transformer blocks of the SASRec encoder, 2.
        num_heads: 1 (the encoder is single-head; the field is the shared encoder's).
        inner_size: feed-forward width; None means 4 * hidden_size.
        hidden_dropout, attention_dropout: as SASRec, 0.5.
        num_intentions: K prototypes / output vectors, 4.
        tau: clustering temperature of p(k|i), 0.5 (ours: on the synthetic data, K = 8,
            0.1 left p(k|i) far from the planted intents, NMI 0.31 vs 0.55 at 0.5, with
            no better NDCG; see ``seqrec.eval.dss_intents``).
        seq2seq_weight: weight of the seq2seq InfoNCE term; 0 = seq2item only. 0.1
            (not the paper's, which we do not know: on the synthetic data, 600 users,
            K 4, 15 epochs, 3 seeds, 0.1 beat seq2item-only, test NDCG@20 0.7064 vs
            0.7022 (every seed above every seed), while 0.3-1.0 slowed the seq2item
            term down and lost 3-20%; it also raises the NMI of p(k|i) with the
            planted intents, see notebooks/dss_intents.ipynb).
        seq2seq_temperature: extra temperature of the InfoNCE logits (which are already
            divided by sqrt(D)), 1.0.
        confidence_lambda: fraction in (0, 1] of the present intention pairs kept by
            the top-lambda confidence cut, 0.5.
        beta: the aggregation's bias beta: ``"learned"`` [K, D] parameters per side, or
            ``"noise"``: fresh N(0, 1/D) noise per side in training, 0 at evaluation
            (module docstring, open choice 4).
        loss: seq2item over all items (``"ce"``) or over the target and the trainer's
            sampled negatives (``"sampled"``).
        initializer_range: std of the normal init of Linear/Embedding weights, 0.02.
        hidden_act: ``"gelu"`` or ``"relu"``.
        layer_norm_eps: 1e-12 (SASRec's); cluster_eps: 1e-5, the layer-norm epsilon
            inside the cosine of p(k|i).
    """

    num_heads: int = spec(1, kind="int", minimum=1, help="attention heads: one (a single-head encoder)")
    num_intentions: int = spec(4, kind="int", minimum=1, help="K intention prototypes / vectors")
    tau: float = spec(0.5, kind="positive", flag="temperature", help="clustering temperature tau of p(k|i)")
    seq2seq_weight: float = spec(0.1, kind="number", minimum=0,
                                 help="weight of the seq2seq InfoNCE term; 0 = the seq2item-only ablation")
    seq2seq_temperature: float = spec(1.0, kind="positive",
                                      help="extra temperature of the seq2seq logits (already divided by sqrt(D))")
    confidence_lambda: float = spec(0.5, kind="number", above=0, maximum=1,
                                    help="fraction of the intention pairs present on both sides kept by the "
                                         "top-lambda confidence cut")
    beta: str = spec("learned", kind="choice", choices=BETAS,
                     help="the aggregation bias: learned parameters per side, or N(0, 1/D) noise in training")
    loss: str = spec("ce", kind="choice", choices=LOSSES,
                     help="seq2item over all items (ce) or over the target and sampled negatives (sampled)")
    cluster_eps: float = spec(1e-5, kind="positive", cli=False, help="layer-norm epsilon inside the cosine of p(k|i)")

    def validate(self) -> None:
        super().validate()
        if self.num_heads != 1:
            self.fail("num_heads", "1 (DSS is a single-head encoder)", self.num_heads)

    # --init: the checkpoint's sizes unless flags say otherwise (from a DSS pretraining also
    # its intentions and beta, which shape parameters; not its head count: a single-head DSS
    # starts from SASRec checkpoints of other head counts); its widths and activation always,
    # as every encoder tensor must load (issue 29 item 1).
    init_defaults: ClassVar[tuple[str, ...]] = ("hidden_size", "num_layers", "num_intentions", "beta")
    init_fixed: ClassVar[tuple[str, ...]] = ("inner_size", "hidden_act", "layer_norm_eps")


class DSSEncoding(NamedTuple):
    """What the encoder says about one batch of sequences (their latest position).

    interests: ``[B, K, D]`` the K intention vectors phi_k.
    assignments: ``[B, n, K]`` p(k|i), 0 at padding.
    weights: ``[B, n]`` p(i) of the latest position, 0 at padding.
    """

    interests: Tensor
    assignments: Tensor
    weights: Tensor


class IntentionHead:
    """DSS's intention head on a host encoder, for the models that compose it.

    The host is a :class:`~seqrec.models.base.SequentialRecommender` with ``config`` (the
    fields of :class:`DSSConfig`'s head: ``hidden_size``, ``max_len``, ``num_intentions``,
    ``tau``, ``cluster_eps``, ``beta``, ``seq2seq_temperature``, ``confidence_lambda``,
    ``loss``, ``layer_norm_eps``), ``backend``, ``embedding.item`` (the item table) and
    ``states(item_seq, mask) -> [B, n, D]`` (causal states, 0 at padding). It adds the
    parameters of the head (:meth:`_build_intentions`, names as DSS's), the K vectors
    (:meth:`encode`, :meth:`interests`, :meth:`prefix_interests`), the log-sum-exp
    :meth:`score` and the two DSS objectives (:meth:`seq2item_nll`, :meth:`seq2seq_pairs`).
    :class:`DSS` is this head on a single-head SASRec encoder.
    """

    has_interests = True

    def _build_intentions(self) -> None:
        """The head's parameters (registered in DSS's order; drawn by :meth:`_init_intentions`)."""
        config = self.config
        d, k = config.hidden_size, config.num_intentions
        self.prototypes = nn.Parameter(torch.empty(k, d))
        self.key_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.key_map = nn.Linear(d, d)
        self.query_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.query_bias = nn.Parameter(torch.zeros(d))
        self.distance = nn.Embedding(config.max_len, d)
        if config.beta == "learned":
            self.beta_past = nn.Parameter(torch.empty(k, d))
            self.beta_future = nn.Parameter(torch.empty(k, d))
        else:
            self.register_parameter("beta_past", None)
            self.register_parameter("beta_future", None)
        self.out_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)

    @torch.no_grad()
    def _init_intentions(self) -> None:
        """After ``init_transformer_weights``: prototypes any scale (they are layer-normed),
        betas N(0, 1/D)."""
        self.prototypes.normal_(0.0, 1.0)
        if self.config.beta == "learned":
            d = self.config.hidden_size
            self.beta_past.normal_(0.0, d ** -0.5)
            self.beta_future.normal_(0.0, d ** -0.5)

    def _keys_query(self, z: Tensor) -> tuple[Tensor, Tensor]:
        zk = self.key_norm(z)
        keys = zk + F.relu(self.key_map(zk))  # [B, n, D]
        query = self.query_norm(z + self.query_bias)  # [B, n, D]
        return keys, query

    def intention_weights(self, z: Tensor, mask: Tensor) -> Tensor:
        """p(i) of the latest position (column n - 1) over the real positions: [B, n]."""
        n = z.size(1)
        keys, query = self._keys_query(z)
        q = query[:, -1]  # [B, D]
        dist = torch.arange(n - 1, -1, -1, device=z.device)  # distance of column i to n - 1
        logits = torch.einsum("bd,bnd->bn", q, keys) + q @ self.distance(dist).t()
        logits = logits * (1.0 / math.sqrt(z.size(-1)))
        logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
        # A fully padded row gives a uniform softmax over padding; zero it.
        return torch.softmax(logits, dim=-1) * mask

    def prefix_weights(self, z: Tensor, mask: Tensor) -> Tensor:
        """p_t(i) for every prefix end t at once: [B, n(t), n(i)], causal, 0 at padding."""
        n = z.size(1)
        keys, query = self._keys_query(z)
        pos = torch.arange(n, device=z.device)
        dist = (pos[:, None] - pos[None, :]).clamp_min(0)  # [n, n], t - i
        qa = query @ self.distance.weight[:n].t()  # [B, n, n]: q_t . alpha_d
        logits = query @ keys.transpose(1, 2) + qa.gather(2, dist.expand(z.size(0), n, n))
        logits = logits * (1.0 / math.sqrt(z.size(-1)))
        allowed = (pos[:, None] >= pos[None, :]) & mask[:, None, :] & mask[:, :, None]
        logits = logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)
        return torch.softmax(logits, dim=-1) * allowed

    def _cluster(self, z: Tensor, mask: Tensor, weights: Tensor | None) -> tuple[Tensor, Tensor]:
        return intent_cluster(z, mask, self.prototypes, self.config.tau, weights=weights,
                              eps=self.config.cluster_eps, backend=self.backend)

    def _aggregate(self, raw: Tensor, future: bool) -> Tensor:
        """phi = LN(beta + raw) for raw [..., K, D], with the past or the future beta."""
        if self.config.beta == "learned":
            return self.out_norm(raw + (self.beta_future if future else self.beta_past))
        if not self.training:
            return self.out_norm(raw)  # the noise's mean
        noise = torch.randn(raw.shape, dtype=raw.dtype).to(raw.device)  # CPU generator: seeded runs
        return self.out_norm(raw + noise * self.config.hidden_size ** -0.5)

    # ------------------------------------------------------------------ public encoder
    def encode(self, item_seq: Tensor, lengths: Tensor | None = None, *,
               future: bool = False) -> DSSEncoding:
        """K intention vectors of each whole sequence (its latest item is column n - 1).

        Args:
            item_seq: [B, n] int64 item ids, LEFT-padded with 0, n <= max_len.
            lengths: optional [B] real lengths (checked against ``item_seq``).
            future: use beta_future (a reversed future sequence) instead of beta_past.

        Returns:
            :class:`DSSEncoding` (interests [B, K, D], assignments [B, n, K],
            weights [B, n]). A fully padded row gives ``LN(beta)`` vectors (with
            ``beta="noise"`` in eval mode: LN of 0, i.e. the norm's bias).
        """
        check_ids("item_seq", item_seq)
        mask = padding_mask(item_seq, lengths)
        z = self.states(item_seq, mask)
        weights = self.intention_weights(z, mask)
        raw, probs = self._cluster(z, mask, weights)
        return DSSEncoding(self._aggregate(raw, future), probs, weights)

    def interests(self, item_seq: Tensor, lengths: Tensor | None = None) -> Tensor:
        """The K intention vectors ``phi_k(x)`` of each sequence: [B, K, D]."""
        return self.encode(item_seq, lengths).interests

    def prefix_interests(self, item_seq: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``phi_k(x_1..t)`` for every prefix end t: [B, n, K, D] (past encoder).

        Row t depends on items at columns <= t only (causal); its last row equals
        :meth:`interests`. Rows at padding hold ``LN(beta_past)`` (``beta="noise"`` in
        eval mode: LN of 0).
        """
        check_ids("item_seq", item_seq)
        mask = padding_mask(item_seq, lengths)
        raw = self._prefix_raw(*self._past(item_seq, mask))
        return self._aggregate(raw, False)

    def _past(self, item_seq: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """States, p(k|i) and p_t(i) of the past encoder on a whole batch."""
        z = self.states(item_seq, mask)
        _, probs = self._cluster(z, mask, None)  # [B, n, K]
        return z, probs, self.prefix_weights(z, mask)

    @staticmethod
    def _prefix_raw(z: Tensor, probs: Tensor, prefix_w: Tensor) -> Tensor:
        """sum_i p(k|i) p_t(i) z_i for every t: [B, n, K, D] (one batched matmul)."""
        b, n, d = z.shape
        k = probs.size(-1)
        per_position = (probs.unsqueeze(-1) * z.unsqueeze(2)).reshape(b, n, k * d)
        return torch.bmm(prefix_w, per_position).view(b, n, k, d)

    # ------------------------------------------------------------------ scoring
    def _item_logits(self, phi: Tensor, items: Tensor | None) -> Tensor:
        """<phi_k, h_j>: [R, K, V + 1] for all items or [R, K, C] for candidates [R, C]."""
        if items is None:
            return phi @ self.embedding.item.weight.t()
        return torch.einsum("rkd,rcd->rkc", phi, self.embedding.item(items))

    def score(self, item_seq: Tensor, lengths: Tensor | None = None,
              items: Tensor | None = None) -> Tensor:
        """Next-item scores ``logsumexp_k <phi_k(x), h_j>`` from the K vectors.

        Args:
            item_seq: [B, n] left-padded item ids.
            lengths: optional [B] real lengths.
            items: optional [B, C] candidate ids; None scores every item.

        Returns:
            [B, num_items + 1] with column 0 (padding) = -inf, or [B, C] with -inf where
            a candidate is 0. Dropout follows the module mode: call ``eval()`` first.
        """
        if items is not None:
            check_candidates(item_seq, items)
        phi = self.interests(item_seq, lengths)
        scores = self._item_logits(phi, items).logsumexp(dim=1)
        if items is None:
            pad = torch.arange(scores.size(1), device=scores.device) == 0
            return scores.masked_fill(pad, float("-inf"))
        return scores.masked_fill(items == 0, float("-inf"))

    def sample_split(self, lengths: Tensor) -> Tensor:
        """Past length t per row, uniform in 1..lengths[b] (1 where lengths is 0): [B].

        Draws ``torch.rand`` from torch's default CPU generator (then moves to the
        device), so a seeded CPU or GPU run draws the same split points.
        """
        u = torch.rand(lengths.shape, dtype=torch.float64).to(lengths.device)
        m = lengths.clamp_min(1)
        return (u * m).floor().to(torch.int64).clamp(max=m - 1) + 1

    @staticmethod
    def reversed_future(input_ids: Tensor, target_ids: Tensor, split: Tensor) -> Tensor:
        """``x_{m+1}, x_m, ..., x_{t+1}`` of each row, LEFT-padded (x_{t+1} last): [B, f].

        Args:
            input_ids: [B, n] left-padded inputs x_1..x_m (the training batch).
            target_ids: [B, n] next items; column n - 1 holds x_{m+1}.
            split: [B] past length t in 1..m.

        The width f is the longest future of the batch (m + 1 - t).
        """
        b, n = input_ids.shape
        m = (input_ids != 0).sum(1)
        full = torch.cat([input_ids, target_ids[:, -1:]], dim=1)  # [B, n + 1], x_{m+1} last
        future_len = (m + 1 - split).clamp_min(0)
        if torch.compiler.is_compiling():  # static: the longest possible future (t = 1, m = n)
            width = n
        else:
            width = max(int(future_len.max()), 1) if b else 1
        col_t = n - m + split - 1  # column of x_t in input_ids / full
        j = torch.arange(width, device=input_ids.device)
        index = col_t[:, None] + width - j[None, :]  # x_{t+1} at j = width - 1
        real = j[None, :] >= (width - future_len)[:, None]
        return full.gather(1, index.clamp(0, n)) * real

    # ------------------------------------------------------------------ objectives
    def seq2item_nll(self, phi: Tensor, target: Tensor, negatives: Tensor | None = None,
                     log_q: Tensor | None = None) -> Tensor:
        """seq2item: the mixture NLL of each row's next item from its K vectors, [N].

        Args:
            phi: [N, K, D] the K vectors of each row's prefix.
            target: [N] next items (0 only in rows the caller weighs 0).
            negatives / log_q: [N, m] sampled negatives and their log-Q correction
                (``config.loss == "sampled"``); unused for ``"ce"`` (all items).
        """
        if self.config.loss == "ce":
            # Items 1..V only: padding never enters the softmax.
            per_position = mixture_nll(phi, self.embedding.item.weight[1:], (target - 1).clamp_min(0),
                                       backend=self.backend)
        else:
            logits = self._item_logits(phi, torch.cat([target[:, None], negatives], dim=1))  # [N, K, 1 + m]
            # A candidate's mixture score is the log-sum-exp over the K vectors, so the log-Q
            # correction and the removal of accidental hits (sampled_softmax_loss's) apply
            # to each of its K logits alike.
            negative = logits[:, :, 1:]
            if log_q is not None:
                negative = negative - log_q.to(logits.dtype)[:, None, :]
            negative = negative.masked_fill((negatives == target[:, None])[:, None, :], float("-inf"))
            logits = torch.cat([logits[:, :, :1], negative], dim=2)
            per_position = logits.flatten(1).logsumexp(1) - logits[:, :, 0].logsumexp(1)
        return per_position

    def seq2seq_pairs(self, inputs: Tensor, targets: Tensor, mask: Tensor, raw: Tensor, probs: Tensor,
                      split: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """seq2seq: the InfoNCE of the K past vectors at one split point per row against the
        K vectors of the reversed future (module docstring, choices 8-12).

        Args:
            inputs, targets, mask: [B, n] the batch (``targets[:, -1]`` is x_{m+1}).
            raw: [B, n, K, D] the past encoder's unnormalised prefix vectors
                (:meth:`_prefix_raw`); probs: [B, n, K] p(k|i).
            split: optional [B] past lengths t in 1..m (default: :meth:`sample_split`).

        Returns:
            (mean loss over the kept pairs, kept count, present count).
        """
        cfg = self.config
        shape = tuple(inputs.shape)
        m = mask.sum(1)
        if split is None:
            split = self.sample_split(m)
        else:
            check_ids("split", split, (shape[0],))
            # A value check is a host sync: skipped under torch.compile, as check_ids's.
            if not torch.compiler.is_compiling() and bool(((split < 1) | (split > m.clamp_min(1))).any()):
                raise ValueError("split must lie in 1..m (the real input length) for every row")
        rows = torch.arange(shape[0], device=inputs.device)
        col_t = inputs.size(1) - m.clamp_min(1) + split - 1
        phi_past = self._aggregate(raw[rows, col_t], False)  # [B, K, D]
        future = self.reversed_future(inputs, targets, split)
        fut_mask = future != 0
        z_f = self.states(future, fut_mask)
        raw_f, probs_f = self._cluster(z_f, fut_mask, self.intention_weights(z_f, fut_mask))
        phi_future = self._aggregate(raw_f, True)  # [B, K, D]

        k = cfg.num_intentions
        hard = F.one_hot(probs.argmax(-1), k).bool()  # [B, n, K]
        upto = torch.arange(inputs.size(1), device=inputs.device)[None, :] <= col_t[:, None]
        present_past = (hard & (mask & upto).unsqueeze(-1)).any(1)  # [B, K]
        present_future = (F.one_hot(probs_f.argmax(-1), k).bool() & fut_mask.unsqueeze(-1)).any(1)
        valid_row = (m > 0) & (targets[:, -1] > 0)  # [B]
        seq2seq, kept, present = info_nce_pairs(
            phi_past, phi_future, present_past & present_future & valid_row[:, None],
            valid_row, scale=1.0 / (math.sqrt(cfg.hidden_size) * cfg.seq2seq_temperature),
            confidence_lambda=cfg.confidence_lambda,
        )
        return seq2seq, kept, present


class DSS(IntentionHead, SequentialRecommender):
    """DSS (Ma et al., KDD 2020); see the module docstring for the equations and every
    choice the paper leaves open.

    Args:
        config: :class:`DSSConfig`.
        backend: ``"seqrec"`` (compiled ``intent_cluster``) or ``"reference"`` (its
            plain-PyTorch reference, and the reference path of every other op);
            None = process default.

    Parameters: ``embedding.*`` and ``encoder.*`` as SASRec (checkpoints of a
    single-head SASRec load into them by name), ``prototypes`` [K, D], the weighting
    ``key_norm``, ``key_map`` (W, b), ``query_norm``, ``query_bias`` (b'),
    ``distance`` (alpha), ``beta_past``, ``beta_future`` [K, D] (``beta="learned"``
    only), ``out_norm``.
    """

    PRESETS = PRESETS

    def __init__(self, config: DSSConfig, *, backend: str | None = None) -> None:
        super().__init__()
        if not isinstance(config, DSSConfig):
            raise ValueError(f"config must be a DSSConfig, got {type(config).__name__}")
        if backend is not None:
            get_backend(backend)
        self.config = config
        self.backend = backend
        d = config.hidden_size
        self.embedding = ItemPositionEmbedding(
            config.num_items + 1, config.max_len, d, config.hidden_dropout, config.layer_norm_eps
        )
        self.encoder = TransformerEncoder(
            config.num_layers, d, 1, config.ffn_size, config.hidden_dropout,
            config.attention_dropout, config.hidden_act, config.layer_norm_eps,
            causal=True, backend=backend,
        )
        self._build_intentions()
        self.apply(partial(init_transformer_weights, std=config.initializer_range))
        self._init_intentions()

    # ------------------------------------------------------------------ encoder pieces
    def states(self, item_seq: Tensor, mask: Tensor) -> Tensor:
        """z_i: single-head causal SASRec states [B, n, D] (0 at padding)."""
        return self.encoder(self.embedding(item_seq), mask)

    def item_table(self) -> nn.Embedding:
        return self.embedding.item

    # ------------------------------------------------------------------ training
    def batch_loss(self, input_ids: Tensor, target_ids: Tensor,
                   negative_ids: Tensor | None = None, *, split: Tensor | None = None,
                   lengths: Tensor | None = None, features=None) -> LossOutput:
        """Both loss terms and what went into them (see the module docstring).

        Args:
            input_ids: [B, n] left-padded inputs x_1..x_m.
            target_ids: [B, n] next items (0 where none); column n - 1 must hold x_{m+1}
                for the seq2seq term (as the trainer's batches do).
            negative_ids: [B, n] or [B, n, m] sampled negatives (``loss="sampled"``:
                softmax over the target and them, log-Q corrected with
                ``features["negative_log_q"]`` when the batch has it, accidental hits
                removed; :func:`~seqrec.models.losses.sampled_softmax_loss`).
            split: optional [B] past lengths t in 1..m (default: :meth:`sample_split`).
            lengths: optional [B] real input lengths m (the padding mask, see
                :func:`layers.padding_mask`); None reads them from the zeros.
            features: ``"negative_log_q"`` (``loss="sampled"``), else unused.

        Returns:
            :class:`LossOutput`: ``loss`` the total, terms ``seq2item``, ``seq2seq`` (0 when
            ``seq2seq_weight == 0``: then nothing of the future is computed and no split
            point drawn), ``pairs`` (number of kept intention pairs) and ``present``
            (pairs present on both sides).
        """
        cfg = self.config
        self.check_ids("input_ids", input_ids)
        shape = tuple(input_ids.shape)
        self.check_ids("target_ids", target_ids, shape)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, n], got shape {shape}")
        # Columns that are padding in every row change nothing (right-aligned positions).
        mask = padding_mask(input_ids, lengths)
        if torch.compiler.is_compiling():  # static shapes: no cropping
            width = shape[1]
        else:
            width = int(mask.any(0).to(torch.int64).sum()) if input_ids.numel() else 0
        keep = slice(shape[1] - max(width, 1), shape[1])
        inputs, targets, mask = input_ids[:, keep], target_ids[:, keep], mask[:, keep]

        z, probs, prefix_w = self._past(inputs, mask)
        raw = self._prefix_raw(z, probs, prefix_w)  # [B, n, K, D]
        real = targets > 0
        count = real.sum().clamp_min(1)
        if torch.compiler.is_compiling():
            # Static shapes: every position is a row, padding weighted 0 (eager keeps the
            # real rows alone: the [N, K, V] mixture logits of "ce" on the targets only).
            def rows(t: Tensor) -> Tensor:
                return t.flatten(0, 1)

            weight = real.flatten()
        else:
            def rows(t: Tensor) -> Tensor:
                return t[real]

            weight = None
        phi = self._aggregate(rows(raw), False)  # [N, K, D]
        tgt = rows(targets)
        negatives = log_q = None
        if cfg.loss == "sampled":
            negatives, log_q = self.sampled_negatives(negative_ids, shape, features)  # [B, n, m]
            negatives, log_q = rows(negatives[:, keep]), None if log_q is None else rows(log_q[:, keep])
        per_position = self.seq2item_nll(phi, tgt, negatives, log_q)
        if weight is not None:
            per_position = torch.where(weight, per_position, 0.0)
        seq2item = per_position.sum() / count

        zero = seq2item.new_zeros(())
        out = {"seq2item": seq2item, "seq2seq": zero, "pairs": zero.long(), "present": zero.long()}
        if cfg.seq2seq_weight == 0:
            return LossOutput(seq2item, out)
        seq2seq, kept, present = self.seq2seq_pairs(inputs, targets, mask, raw, probs, split)
        out.update(seq2seq=seq2seq, pairs=kept, present=present)
        return LossOutput(seq2item + cfg.seq2seq_weight * seq2seq, out)

    # ------------------------------------------------------------------ pretraining
    # The DSSRec reading (github.com/abis330/DSSRec; issue 29): DSS as a pretraining
    # stage of its own, driven by seqrec.train.Pretrainer (samples="windows"), then
    # fine-tuned (`seqrec train --model dss|sasrec --init RUN`).
    def corrupt(self, item_seq: Tensor, *, seed: int) -> "DSSPretrainBatch":
        """Split every sample of a pretraining batch at a random point (the
        :class:`~seqrec.train.Pretrainer` protocol; the name is S3-Rec's).

        Args:
            item_seq: [B, n] LEFT-padded samples (sliding windows), each of at least 2 items.
            seed: the batch's seed: the split points t ~ uniform{1..L-1} (L a sample's
                length) are drawn from a CPU generator seeded with it, so they are a
                pure function of (run seed, epoch, batch).

        Returns:
            :func:`pretrain_split` of the batch (on ``item_seq``'s device).
        """
        check_ids("item_seq", item_seq)
        if item_seq.dim() != 2:
            raise ValueError(f"item_seq must be [B, n], got shape {tuple(item_seq.shape)}")
        lengths = (item_seq != 0).sum(1)
        if item_seq.size(0) and int(lengths.min()) < 2:
            rows = (lengths < 2).nonzero().squeeze(1).tolist()
            raise ValueError(f"DSS pretraining samples need at least 2 items (an input and a future); rows {rows} "
                             "have fewer")
        generator = torch.Generator().manual_seed(int(seed) % 2**64)
        u = torch.rand(item_seq.size(0), generator=generator, dtype=torch.float64)
        span = (lengths.cpu() - 1).to(torch.float64)
        split = ((u * span).floor().to(torch.int64).clamp(max=(lengths.cpu() - 2).clamp_min(0)) + 1)
        return pretrain_split(item_seq, split.to(item_seq.device))

    def pretrain_losses(self, batch: "DSSPretrainBatch") -> dict[str, Tensor]:
        """The two DSS pretraining objectives on a split batch (:meth:`corrupt`).

        ``phi^past = phi(inputs)`` (beta_past) and ``phi^fut = phi(future)``
        (beta_future), [B, K, D] each, by :meth:`encode`; ``h`` the next items' rows of
        the item table. With B the batch's samples:

        * ``seq2item = 1/B sum_b`` :func:`~seqrec.models.losses.max_intention_nll`
          (scale 1/sqrt(D)): the next item against the batch's next items, scored by
          its best intention;
        * ``seq2seq = 1/B sum_{(b,k) kept}`` :func:`~seqrec.models.losses.confident_info_nce`
          (scale 1/(sqrt(D) * seq2seq_temperature)), the kept pairs those at or below
          the kthvalue at floor(confidence_lambda * B * K).

        Both are sums over the batch divided by B, so equal weights weigh them as
        DSSRec's sums do (its log2 is a constant factor of both, dropped here).

        Returns:
            ``{"seq2item", "seq2seq", "kept"}`` (kept: the number of pairs in seq2seq);
            ``seq2seq`` is 0 and not computed when ``seq2seq_weight == 0``.
        """
        cfg = self.config
        d = cfg.hidden_size
        inputs, future, next_item = batch
        b = inputs.size(0)
        phi_past = self.encode(inputs).interests  # [B, K, D]
        nll = max_intention_nll(phi_past, self.embedding.item(next_item), 1.0 / math.sqrt(d))
        seq2item = nll.sum() / max(b, 1)
        zero = seq2item.new_zeros(())
        if cfg.seq2seq_weight == 0:
            return {"seq2item": seq2item, "seq2seq": zero, "kept": zero.long()}
        phi_future = self.encode(future, future=True).interests
        per_pair, keep = confident_info_nce(phi_past, phi_future, 1.0 / (math.sqrt(d) * cfg.seq2seq_temperature),
                                            cfg.confidence_lambda)
        seq2seq = (per_pair * keep).sum() / max(b, 1)
        return {"seq2item": seq2item, "seq2seq": seq2seq, "kept": keep.sum()}

    def weighted_loss(self, losses: dict[str, Tensor]) -> Tensor:
        """``seq2item + seq2seq_weight * seq2seq`` (the pretraining total)."""
        return losses["seq2item"] + self.config.seq2seq_weight * losses["seq2seq"]


class DSSPretrainBatch(NamedTuple):
    """A DSS pretraining batch split at one point t per sample (:func:`pretrain_split`).

    inputs: [B, a] ``seq[:t]``, LEFT-padded (a = the longest input).
    future: [B, f] ``seq[t:]`` reversed (``seq[t]`` last, as the latest item), LEFT-padded.
    next_item: [B] ``seq[t]``.
    """

    inputs: Tensor
    future: Tensor
    next_item: Tensor


def pretrain_split(item_seq: Tensor, split: Tensor) -> DSSPretrainBatch:
    """Cut each LEFT-padded sample ``seq`` (length L) of ``item_seq`` [B, n] at ``split``
    [B] (t in 1..L-1): input ``seq[:t]``, future ``seq[t:]`` reversed, next item ``seq[t]``
    (0-based). Widths: the longest input and the longest future of the batch."""
    if item_seq.dim() != 2 or split.shape != item_seq.shape[:1]:
        raise ValueError(f"pretrain_split: item_seq must be [B, n] and split [B], got {tuple(item_seq.shape)} "
                         f"and {tuple(split.shape)}")
    b, n = item_seq.shape
    lengths = (item_seq != 0).sum(1)
    if b and bool(((split < 1) | (split > lengths - 1)).any()):
        raise ValueError("pretrain_split: split must lie in 1..L-1 for every sample (L its length)")
    begin = n - lengths  # column of seq[0]
    device = item_seq.device
    a = int(split.max()) if b else 1
    f = int((lengths - split).max()) if b else 1
    c = torch.arange(a, device=device)
    j = split[:, None] - a + c  # seq index at input column c
    inputs = torch.where(j >= 0, item_seq.gather(1, (begin[:, None] + j).clamp(0, n - 1)), 0)
    c = torch.arange(f, device=device)
    j = split[:, None] + (f - 1 - c)  # future column f - 1 holds seq[t]
    future = torch.where(j < lengths[:, None], item_seq.gather(1, (begin[:, None] + j).clamp(0, n - 1)), 0)
    next_item = item_seq.gather(1, (begin + split)[:, None]).squeeze(1)
    return DSSPretrainBatch(inputs, future, next_item)


def fold_pretraining_scale(state: dict[str, Tensor], hidden_size: int) -> dict[str, Tensor]:
    """A DSS pretraining's weights with its seq2item scale folded into ``out_norm``.

    The pretraining scores an item by ``max_k <phi_k, h> / sqrt(D)``; a fine-tune scores
    it by ``<phi_k, h>`` (no scale). ``phi = out_norm(...)`` ends in a LayerNorm's affine,
    which the pretraining grows to make up for the 1/sqrt(D): loaded as it is, the
    fine-tune starts from logits sqrt(D) times sharper than the pretraining's (Beauty,
    D = 64: a loss of 20.0 on the first batches, against 8.0 folded and ln V = 9.4
    untrained; 12.0 against 7.5 over the first epoch).
    Multiplying ``out_norm.weight`` and ``out_norm.bias`` by 1/sqrt(D) makes the loaded
    model's plain dot products equal the pretraining's scaled ones.

    Only ``phi`` changes, so only a term that scores ``phi`` against the item table keeps
    its meaning: the seq2seq term compares two ``phi`` and would be scaled by 1/D
    (``seqrec train --init-fold-scale`` refuses it). Returns a new dict; ``state`` is
    left as it is.

    Raises:
        ValueError: ``state`` has no ``out_norm.weight`` / ``out_norm.bias`` of width
            ``hidden_size``.
    """
    factor = hidden_size ** -0.5
    folded = dict(state)
    for name in ("out_norm.weight", "out_norm.bias"):
        tensor = state.get(name)
        if not isinstance(tensor, Tensor) or tuple(tensor.shape) != (hidden_size,):
            found = "missing" if tensor is None else f"of shape {tuple(getattr(tensor, 'shape', ()))}"
            raise ValueError(f"fold_pretraining_scale: {name} is {found}; a DSS pretraining of hidden size "
                             f"{hidden_size} has one of shape ({hidden_size},)")
        folded[name] = tensor * factor
    return folded


def info_nce_pairs(past: Tensor, future: Tensor, eligible: Tensor, valid_row: Tensor, *,
                   scale: float, confidence_lambda: float) -> tuple[Tensor, Tensor, Tensor]:
    """DSS's seq2seq InfoNCE over intention pairs with the top-lambda confidence cut.

    Args:
        past: [B, K, D] anchors phi^past_{u,k}.
        future: [B, K, D] phi^fut_{u,k}; (u, k) is the positive of anchor (u, k), every
            other (u', k') of a valid row a negative.
        eligible: [B, K] bool, anchors that may count (present on both sides).
        valid_row: [B] bool, rows whose future vectors enter the softmax at all.
        scale: multiplies the dot products (1 / (sqrt(D) * temperature)).
        confidence_lambda: fraction in (0, 1] of the eligible anchors kept, those with
            the lowest loss (highest probability of the positive); not differentiated.

    Returns:
        (mean loss over kept anchors (0 when none), kept count, eligible count).
    """
    b, k, d = past.shape
    logits = (past.reshape(b * k, d) @ future.reshape(b * k, d).t()) * scale  # [BK, BK]
    column_ok = valid_row.repeat_interleave(k)
    logits = logits.masked_fill(~column_ok[None, :], float("-inf"))
    # Anchors of invalid rows have only -inf logits in the worst case; only eligible
    # anchors (valid rows) are ever counted, so their NaN-free value is all that matters.
    denom = torch.where(column_ok.any(), logits.logsumexp(1), logits.new_zeros(b * k))
    per_pair = denom - logits.diagonal()  # [BK]
    ok = eligible.reshape(-1)
    per_pair = torch.where(ok, per_pair, per_pair.new_zeros(()))
    count = ok.sum()
    with torch.no_grad():
        ranked = per_pair.masked_fill(~ok, float("inf")).argsort(stable=True).argsort()
        budget = torch.ceil(count.to(torch.float64) * confidence_lambda).to(torch.int64)
        keep = ok & (ranked < budget)
    kept = keep.sum()
    loss = (per_pair * keep).sum() / kept.clamp_min(1)
    return loss, kept, count
