"""Transformer layers shared by the seqrec models (SASRec, S3-Rec, DIF-SR, DSS).

The layout follows the SASRec of the S3-Rec authors (Zhou et al., CIKM 2020,
``RUCAIBox/CIKM2020-S3Rec``), which produced the reference numbers in REFERENCE.md:

- embedding: ``E = Dropout(LN(item(x) + pos))``;
- attention sub-layer (post-LN): ``A = LN(Dropout(W_o MHA(E)) + E)``;
- feed-forward sub-layer (post-LN): ``F = LN(Dropout(W_2 gelu(W_1 A)) + A)``.

Every model computes attention through :func:`scaled_dot_attention` so that one switch
(``backend=``) moves all of them between the compiled operator and plain PyTorch.

Conventions: sequences are LEFT-padded with item id 0, so the most recent item sits at
position ``n - 1``; ``key_padding_mask`` is a bool tensor with True at real items.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.backend import get_backend
from ..ops.dif_attention import dif_attention
from ..ops.dropout import dropout

__all__ = [
    "ACTIVATIONS",
    "Dropout",
    "padding_mask",
    "scaled_dot_attention",
    "ItemPositionEmbedding",
    "PackedPositions",
    "LengthGroups",
    "CroppedGroups",
    "lookup_rows",
    "MultiHeadSelfAttention",
    "FeedForward",
    "TransformerBlock",
    "TransformerEncoder",
    "init_transformer_weights",
]

# The S3-Rec authors' "gelu" is the exact erf form, which is F.gelu's default.
ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


class Dropout(nn.Dropout):
    """``nn.Dropout`` through :func:`seqrec.ops.dropout`: the same statistics, a hashed
    mask drawn in parallel and regenerated in the backward instead of stored (several
    times faster on the CPU; the random stream differs from ``F.dropout``'s). Seeded
    from torch's global generator, so ``torch.manual_seed`` still fixes a run.
    ``backend`` as the ops' (None: the process-wide default); both backends draw the
    same mask.
    """

    def __init__(self, p: float = 0.5, *, backend: str | None = None) -> None:
        super().__init__(p)
        if backend is not None:
            get_backend(backend)
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training, backend=self.backend)


def padding_mask(item_seq: Tensor, lengths: Tensor | None = None) -> Tensor:
    """Bool mask [B, n], True at real items of a LEFT-padded batch.

    Args:
        item_seq: [B, n] integer item ids, 0 = padding, padding at the front.
        lengths: optional [B] number of real items per row. When given, the mask is
            built from it (position ``j`` is real iff ``j >= n - lengths[b]``) and,
            outside ``torch.compile``, checked against ``item_seq != 0`` (one [B, n]
            comparison); under compilation only shapes are checked.

    Raises:
        ValueError: wrong shapes or dtypes, lengths outside [0, n], or lengths that
            disagree with the zeros of ``item_seq``.
    """
    if item_seq.dim() != 2:
        raise ValueError(f"item_seq must be [B, n], got shape {tuple(item_seq.shape)}")
    real = item_seq != 0
    if lengths is None:
        return real
    if lengths.dim() != 1 or lengths.size(0) != item_seq.size(0):
        raise ValueError(
            f"lengths must be [B] with B={item_seq.size(0)}, got shape {tuple(lengths.shape)}"
        )
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be an integer tensor, got {lengths.dtype}")
    n = item_seq.size(1)
    lengths = lengths.to(item_seq.device)
    from_lengths = torch.arange(n, device=item_seq.device) >= (n - lengths).unsqueeze(1)
    if not torch.compiler.is_compiling():
        if bool(((lengths < 0) | (lengths > n)).any()):
            raise ValueError(f"lengths must lie in [0, n={n}], got {lengths.tolist()}")
        if not torch.equal(from_lengths, real):
            raise ValueError(
                "lengths disagree with item_seq: each row must hold exactly lengths[b] "
                "non-zero items at its end (left padding with 0)"
            )
    return from_lengths


def scaled_dot_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    key_padding_mask: Tensor | None,
    dropout_p: float,
    training: bool,
    backend: str | None = None,
) -> Tensor:
    """softmax(q k^T / sqrt(dh) + mask) v, per head. THE attention of every seqrec model.

    Args:
        q: [B, H, n, dh] queries.
        k: [B, H, n, dh] keys.
        v: [B, H, n, dv] values.
        causal: query ``i`` sees keys ``j <= i`` only (SASRec, fine-tuning); False is
            bidirectional (S3-Rec pretraining).
        key_padding_mask: [B, n] bool, True at real keys; None means all real.
        dropout_p: dropout probability on the attention probabilities.
        training: apply dropout only when True.
        backend: ``"seqrec"`` or ``"reference"``; None uses ``seqrec.ops.get_backend()``.

    Returns:
        [B, H, n, dv]. A query row whose keys are all masked (e.g. a padding position
        under causal masking with left padding) outputs exactly 0 and passes 0 gradient,
        never NaN. Masked keys get probability exactly 0.

    It is :func:`seqrec.ops.dif_attention` with no side sources and sum fusion:
    ``backend="seqrec"`` runs the op (on CUDA the reference registered as its kernel
    until one is written; float16 / bfloat16 computed in float32), ``"reference"`` its
    plain-PyTorch reference. Both draw the dropout mask from a hash of a seed taken
    from torch's generator (reproducible under ``torch.manual_seed``, not the same
    draws as ``F.dropout``).
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            "q, k, v must be [B, H, n, d], got shapes "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3] or q.size(-1) != k.size(-1):
        raise ValueError(
            "q, k, v disagree: need q [B,H,nq,dh], k [B,H,nk,dh], v [B,H,nk,dv], got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    nq, nk = q.size(2), k.size(2)
    if causal and nq != nk:
        raise ValueError(f"causal attention needs as many queries as keys, got {nq} vs {nk}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if key_padding_mask is not None and (
        key_padding_mask.dtype != torch.bool or key_padding_mask.shape != (q.size(0), nk)
    ):
        raise ValueError(
            f"key_padding_mask must be a bool tensor [B={q.size(0)}, n={nk}], got "
            f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
        )
    return dif_attention(q, k, v, causal=causal, key_padding_mask=key_padding_mask, dropout_p=dropout_p,
                         training=training, backend=backend)


class PackedPositions:
    """Moves [B, n, ...] tensors to the [N, ...] rows of their N real positions and back.

    Built once per forward from the [B, n] padding mask; ``unpack`` fills padding
    positions with 0. Not traceable by ``torch.compile`` (N depends on the data), so
    compiled models take the padded path.
    """

    def __init__(self, key_padding_mask: Tensor) -> None:
        self.shape = tuple(key_padding_mask.shape)
        self.mask = key_padding_mask
        self.index = key_padding_mask.reshape(-1).nonzero().squeeze(1)  # [N]

    def pack(self, x: Tensor) -> Tensor:  # [B, n, D] -> [N, D]
        return x.reshape(-1, x.size(-1)).index_select(0, self.index)

    def unpack(self, x: Tensor) -> Tensor:  # [N, D] -> [B, n, D]
        out = x.new_zeros(self.shape[0] * self.shape[1], x.size(-1))
        return out.index_copy_(0, self.index, x).view(*self.shape, x.size(-1))

    def attend(self, attention, *rows: Tensor) -> Tensor:
        """``attention(*padded, mask) -> [b, w, D']`` on the padded layout of ``rows``
        (each [N, D_i]); returns its output at the real positions, [N, D']."""
        return self.pack(attention(*(self.unpack(x) for x in rows), self.mask))


# Widths the rows of a batch are cropped to when encoded by length (then the batch's n).
_GROUP_WIDTHS = (8, 16, 32)


def row_spans(mask: Tensor) -> Tensor:
    """[B] columns from each row's first True to its end (0 for a row without one): the
    width a row can be cropped to on the left without losing a real position. For a
    left-padded batch it is the row's length; a right-padded row or one with holes
    keeps its whole span."""
    n = mask.size(1)
    return torch.where(mask.any(1), n - mask.to(torch.uint8).argmax(1), 0)


def length_buckets(span: Tensor, n: int) -> tuple[Tensor, list[int]]:
    """``(group of each row, the groups' widths)``: a row whose real positions span
    ``span`` columns (:func:`row_spans`) goes to the narrowest width (8, 16, 32 below
    ``n``, then ``n``) that holds them. Shared by every model that encodes rows by length."""
    widths = [w for w in _GROUP_WIDTHS if w < n] + [n]
    edges = torch.tensor(widths[:-1], dtype=span.dtype, device=span.device)
    return torch.bucketize(span, edges), widths


class LengthGroups(PackedPositions):
    """:class:`PackedPositions` whose attention runs on rows grouped by length.

    Each row's span (its first real column to the end) puts it in the narrowest group of
    width 8, 16, 32 or n that holds the span, and the group's rows are cropped on the
    left to that width for :meth:`attend`. On Beauty (~9 real items of 50) the padded
    [b, w, D] tensors around the attention shrink several times (SASRec's training step:
    1.13x); under bidirectional masking, where the operator computes every query row,
    padding ones included, the attention itself shrinks too.
    Exact: cropped columns hold no real position, causal order is relative, so real
    positions see the same keys (only dropout draws differ). Rows with no real position
    are in no group. Not traceable by ``torch.compile`` (data-dependent sizes).
    """

    def __init__(self, key_padding_mask: Tensor) -> None:
        super().__init__(key_padding_mask)
        B, n = self.shape
        N = self.index.numel()
        device = key_padding_mask.device
        any_real = key_padding_mask.any(1)
        bucket, widths = length_buckets(row_spans(key_padding_mask), n)
        # packed row of every cell of the [B, n] layout; N (a zero row appended by
        # attend) at padding
        slot = torch.full((B * n,), N, dtype=torch.int64, device=device)
        slot[self.index] = torch.arange(N, device=device)
        slot = slot.view(B, n)
        self.groups: list[tuple[Tensor, Tensor, Tensor]] = []  # (cells' slots, real cells, mask)
        packed_rows = []
        for k in torch.unique(bucket[any_real]).tolist():
            rows = ((bucket == k) & any_real).nonzero().squeeze(1)
            w = widths[k]
            mask = key_padding_mask[rows, n - w:]  # [R, w]
            cells = slot[rows, n - w:].reshape(-1)  # [R * w]
            real = mask.reshape(-1).nonzero().squeeze(1)
            self.groups.append((cells, real, mask))
            packed_rows.append(cells.index_select(0, real))
        # Group outputs come out group by group; this puts them back in packed order.
        self.order = torch.cat(packed_rows).argsort() if len(packed_rows) > 1 else None

    def attend(self, attention, *rows: Tensor) -> Tensor:
        padded = [torch.cat([x, x.new_zeros(1, x.size(-1))]) for x in rows]  # row N = 0
        outputs = []
        for cells, real, mask in self.groups:
            R, w = mask.shape
            out = attention(*(x.index_select(0, cells).view(R, w, -1) for x in padded), mask)
            outputs.append(out.reshape(R * w, -1).index_select(0, real))
        if not outputs:
            return rows[0].new_zeros(0, rows[0].size(-1))
        return outputs[0] if self.order is None else torch.cat(outputs).index_select(0, self.order)


class CroppedGroups:
    """Rows of a left-padded batch grouped by span, each group cropped on the left to its
    width and packed on its own: the layout for attentions whose parameters depend on
    the key columns (DIF-SR's concat / gate fusion maps act on score rows of width
    ``max_len``, cropped to each group's width).

    Args:
        key_padding_mask: [B, n] bool, True at real positions.
        select: [B, n] bool, the (real) positions whose outputs are wanted; rows without
            one are in no group.
        max_len: the width the groups' widths are relative to (8, 16, 32 below it, then
            ``max_len``); a group wider than ``n`` is padded on the left.

    ``groups[g]`` = ``(rows, width, packed, keep)``: the batch rows of the group, its
    width w, the :class:`PackedPositions` of its [R, w] layout and the int64 indices of
    its selected positions among the packed ones. :meth:`real` gives a [B, n] tensor's
    entries at a group's packed positions; :meth:`merge` puts the groups' selected
    outputs back in row-major order of ``select``. Not traceable (data-dependent sizes).
    """

    def __init__(self, key_padding_mask: Tensor, select: Tensor, max_len: int) -> None:
        self.n = n = key_padding_mask.size(1)
        bucket, widths = length_buckets(row_spans(key_padding_mask), max_len)
        wanted = select.any(1)
        self.groups: list[tuple[Tensor, int, PackedPositions, Tensor]] = []
        flats = []
        for k in torch.unique(bucket[wanted]).tolist():
            rows = ((bucket == k) & wanted).nonzero().squeeze(1)
            w = widths[k]
            group_mask, group_select = self.crop(key_padding_mask, rows, w), self.crop(select, rows, w)
            packed = PackedPositions(group_mask)
            keep = group_select.reshape(-1).index_select(0, packed.index).nonzero().squeeze(1)
            self.groups.append((rows, w, packed, keep))
            r, c = group_select.nonzero(as_tuple=True)
            flats.append(rows[r] * n + c - (w - n))  # row-major index in the [B, n] input
        self.order = torch.cat(flats).argsort() if len(flats) > 1 else None

    def crop(self, t: Tensor, rows: Tensor, w: int) -> Tensor:
        """``t`` [B, n, ...] at ``rows``, its last w columns (left-padded with 0 when w > n)."""
        n = self.n
        if w <= n:
            return t[rows, n - w:]
        return F.pad(t[rows], (w - n, 0))

    def real(self, t: Tensor, group: int) -> Tensor:
        """``t`` [B, n] at the packed (real) positions of group ``group``: [N_g]."""
        rows, w, packed, _ = self.groups[group]
        return self.crop(t, rows, w).reshape(-1).index_select(0, packed.index)

    def merge(self, outputs: list[Tensor], empty: Tensor) -> Tensor:
        """The groups' selected outputs ([K_g, D] each, in group order) as [K, D] in
        row-major order of ``select``; ``empty`` [0, D] when no group."""
        if not outputs:
            return empty
        if self.order is None:
            return outputs[0]
        return torch.cat(outputs).index_select(0, self.order)


class ItemPositionEmbedding(nn.Module):
    """``Dropout(LN(item(x) + pos))``: item embedding plus learned position embedding.

    Args:
        num_embeddings: rows of the item table, padding included (SASRec:
            ``num_items + 1``; S3-Rec adds a mask token). Row 0 is padding.
        max_len: number of learned positions, the longest sequence accepted.
        hidden_size: D.
        dropout: dropout after the layer norm.
        layer_norm_eps: 1e-12 as the S3-Rec authors (TF-style LayerNorm).

    Positions are right-aligned: a batch of width ``n <= max_len`` uses positions
    ``max_len - n ... max_len - 1``, so the most recent item (column n - 1 under left
    padding) always gets position ``max_len - 1``. For ``n == max_len`` this is the
    authors' ``arange(n)``; for shorter batches it keeps the output of a sequence
    independent of how much padding its batch carries.
    """

    # The most recent item takes the last row of ``position`` (load_pretrained reads a
    # longer pretrained table's trailing rows).
    positions_right_aligned = True

    def __init__(
        self,
        num_embeddings: int,
        max_len: int,
        hidden_size: int,
        dropout: float,
        layer_norm_eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.max_len = max_len
        self.item = nn.Embedding(num_embeddings, hidden_size, padding_idx=0)
        self.position = nn.Embedding(max_len, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = Dropout(dropout)

    def forward(self, item_seq: Tensor, item_vectors: Tensor | None = None) -> Tensor:
        """item_seq [B, n] int64, left-padded, n <= max_len -> [B, n, D].

        ``item_vectors`` [B, n, D]: ``self.item(item_seq)`` when the caller looked it up
        itself, together with other ids of the same table (:func:`lookup_rows`).
        """
        n = item_seq.size(-1)
        if n > self.max_len:
            raise ValueError(
                f"sequence width {n} exceeds max_len={self.max_len}; keep the most recent "
                f"max_len items (item_seq[:, -{self.max_len}:])"
            )
        if item_vectors is None:
            item_vectors = self.item(item_seq)
        elif item_vectors.shape != (*item_seq.shape, self.item.embedding_dim):
            raise ValueError(f"item_vectors must be [*item_seq.shape, D] = "
                             f"{[*item_seq.shape, self.item.embedding_dim]}, got {list(item_vectors.shape)}")
        positions = torch.arange(self.max_len - n, self.max_len, device=item_seq.device)
        x = item_vectors + self.position(positions)  # [B,n,D] + [n,D]
        return self.dropout(self.norm(x))

    def packed(self, item_seq: Tensor, index: Tensor, item_vectors: Tensor | None = None) -> Tensor:
        """The rows of ``forward(item_seq)`` at the flat positions ``index`` [N] of
        ``item_seq`` [B, n] (e.g. ``PackedPositions.index``, its real positions): [N, D],
        computed for those positions alone (the dropout draws differ from ``forward``'s).

        ``item_vectors`` [N, D]: the items' rows of the table when the caller looked them
        up itself (:func:`lookup_rows`).
        """
        n = item_seq.size(-1)
        if n > self.max_len:
            raise ValueError(f"sequence width {n} exceeds max_len={self.max_len}")
        if item_vectors is None:
            item_vectors = self.item(item_seq.reshape(-1).index_select(0, index))
        elif item_vectors.shape != (index.numel(), self.item.embedding_dim):
            raise ValueError(f"item_vectors must be [N, D] = {[index.numel(), self.item.embedding_dim]}, "
                             f"got {list(item_vectors.shape)}")
        positions = index % n + (self.max_len - n)  # right-aligned, as forward
        return self.dropout(self.norm(item_vectors + self.position(positions)))


def lookup_rows(table: nn.Embedding, *ids: Tensor) -> list[Tensor]:
    """``[table(i) for i in ids]`` (each ``[*i.shape, D]``) in one embedding call.

    Why: every lookup of a table in a training step gets its own dense [V, D] gradient,
    which autograd allocates, zero-fills and then adds to the others. One lookup of the
    concatenated ids gets one. S3-Rec pretraining looked its item table up seven times a
    batch; on the CPU the fills of the 12,103 x 64 Beauty table were about a tenth of
    the step.
    """
    if not ids:
        return []
    rows = table(torch.cat([i.reshape(-1) for i in ids])).split([i.numel() for i in ids])
    return [r.view(*i.shape, table.embedding_dim) for r, i in zip(rows, ids)]


class MultiHeadSelfAttention(nn.Module):
    """``LN(Dropout(W_o Attention(W_q x, W_k x, W_v x)) + x)``, H heads of size D/H.

    Args:
        hidden_size: D, divisible by ``num_heads``.
        num_heads: H.
        hidden_dropout: dropout on the projected output, before the residual.
        attention_dropout: dropout on the attention probabilities.
        layer_norm_eps: LayerNorm epsilon.
        backend: forwarded to :func:`scaled_dot_attention`.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        hidden_dropout: float,
        attention_dropout: float,
        layer_norm_eps: float = 1e-12,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
        if backend is not None:
            get_backend(backend)
        self.num_heads = num_heads
        self.head_size = hidden_size // num_heads
        self.attention_dropout = attention_dropout
        self.backend = backend
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.out_dropout = Dropout(hidden_dropout, backend=backend)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def _heads(self, x: Tensor) -> Tensor:  # [B,n,D] -> [B,H,n,D/H]
        return x.unflatten(-1, (self.num_heads, self.head_size)).transpose(1, 2)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None, causal: bool,
                packed: PackedPositions | None = None, keep: Tensor | None = None,
                side: Mapping[str, object] | None = None) -> Tensor:
        """x [B, n, D], key_padding_mask [B, n] bool (True = real) -> [B, n, D].

        ``side``: side inputs of attentions that use them (see :class:`TransformerBlock`);
        this one uses none and refuses any.

        With ``packed``, ``x`` is [N, D]: only the real positions (see
        :class:`PackedPositions`); the projections run on those alone and only the
        attention itself sees a padded layout (``packed.attend``: the [B, n] batch, or
        rows grouped by length with :class:`LengthGroups`).

        With ``keep`` (int64 indices into the rows of ``x`` flattened to [-1, D]), only
        those rows are returned, [K, D]: every position still serves as a key and value,
        but the output projection, residual and norm run on the kept rows alone.
        """
        if side:
            raise ValueError(f"MultiHeadSelfAttention takes no side inputs, got {sorted(side)}")

        def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:  # [b,w,D] -> [b,w,D]
            return scaled_dot_attention(
                self._heads(q), self._heads(k), self._heads(v),
                causal=causal,
                key_padding_mask=mask,
                dropout_p=self.attention_dropout,
                training=self.training,
                backend=self.backend,
            ).transpose(1, 2).flatten(2)

        if packed is None:
            attn = attention(self.query(x), self.key(x), self.value(x), key_padding_mask)  # [B,n,D]
        else:
            attn = packed.attend(attention, self.query(x), self.key(x), self.value(x))  # [N,D]
        if keep is not None:
            attn = attn.reshape(-1, attn.size(-1)).index_select(0, keep)
            x = x.reshape(-1, x.size(-1)).index_select(0, keep)
        return self.norm(self.out_dropout(self.out(attn)) + x)


class FeedForward(nn.Module):
    """``LN(Dropout(W_2 act(W_1 x)) + x)`` with inner size ``inner_size``."""

    def __init__(
        self,
        hidden_size: int,
        inner_size: int,
        hidden_dropout: float,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-12,
    ) -> None:
        super().__init__()
        if hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {sorted(ACTIVATIONS)}, got {hidden_act!r}")
        self.hidden_act = hidden_act
        self.dense_in = nn.Linear(hidden_size, inner_size)
        self.dense_out = nn.Linear(inner_size, hidden_size)
        self.dropout = Dropout(hidden_dropout)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, n, D] -> [B, n, D]."""
        h = self.dense_out(ACTIVATIONS[self.hidden_act](self.dense_in(x)))
        return self.norm(self.dropout(h) + x)


class TransformerBlock(nn.Module):
    """Self-attention sub-layer then feed-forward sub-layer, each post-LN with residual.

    The attention is a part passed in (as flash-attention's ``Block(mixer_cls=...)``):
    ``attention`` is a factory called once, returning a module with the signature of
    :meth:`MultiHeadSelfAttention.forward` (``x, key_padding_mask, causal, packed, keep,
    side``) that includes its own output projection, dropout, residual and norm. None
    builds :class:`MultiHeadSelfAttention` from the sizes given. DIF-SR's decoupled
    attention (:class:`seqrec.models.difsr.DIFMultiHeadAttention`) is the other one; its
    side inputs (positions, attribute embeddings) travel in the ``side`` mapping.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        inner_size: int,
        hidden_dropout: float,
        attention_dropout: float,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-12,
        backend: str | None = None,
        *,
        attention: Callable[[], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if attention is None:
            self.attention = MultiHeadSelfAttention(
                hidden_size, num_heads, hidden_dropout, attention_dropout, layer_norm_eps, backend
            )
        else:
            self.attention = attention()
        self.feed_forward = FeedForward(
            hidden_size, inner_size, hidden_dropout, hidden_act, layer_norm_eps
        )

    def forward(self, x: Tensor, key_padding_mask: Tensor | None, causal: bool,
                packed: PackedPositions | None = None, keep: Tensor | None = None,
                side: Mapping[str, object] | None = None) -> Tensor:
        """x [B, n, D] (or [N, D] with ``packed``) -> same shape, or [K, D] with ``keep``
        (see :meth:`MultiHeadSelfAttention.forward`); ``side`` goes to the attention."""
        return self.feed_forward(self.attention(x, key_padding_mask, causal, packed, keep, side=side))


class TransformerEncoder(nn.Module):
    """``num_layers`` stacked :class:`TransformerBlock` s.

    Args:
        num_layers, hidden_size, num_heads, inner_size, hidden_dropout,
        attention_dropout, hidden_act, layer_norm_eps, backend: as the blocks.
        causal: default masking; ``forward(..., causal=...)`` overrides it per call so
            one encoder can be pretrained bidirectionally and fine-tuned causally
            (S3-Rec).
        attention: the blocks' attention factory (see :class:`TransformerBlock`), called
            once per layer; None = :class:`MultiHeadSelfAttention`.

    Parameter names are ``layers.{l}.attention.*`` and ``layers.{l}.feed_forward.*``
    whatever the attention, so encoders of every model share them where the parts are
    the same (an S3-Rec pretrained encoder initialises a DIF-SR one's item attention
    and feed-forward).
    """

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        num_heads: int,
        inner_size: int,
        hidden_dropout: float,
        attention_dropout: float,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-12,
        causal: bool = True,
        backend: str | None = None,
        *,
        attention: Callable[[], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.causal = causal
        # Position-wise work (projections, feed-forward, norms) only on real positions:
        # the same outputs at real positions, a fraction of the FLOPs on short
        # sequences (Beauty: ~7 real of 50). Padding positions then output 0.
        self.skip_padding = True
        self.layers = nn.ModuleList(
            TransformerBlock(
                hidden_size,
                num_heads,
                inner_size,
                hidden_dropout,
                attention_dropout,
                hidden_act,
                layer_norm_eps,
                backend,
                attention=attention,
            )
            for _ in range(num_layers)
        )

    def forward(
        self, x: Tensor, key_padding_mask: Tensor | None, *, causal: bool | None = None,
        select: Tensor | None = None, side: Mapping[str, object] | None = None,
        skip_padding: bool | None = None,
    ) -> Tensor:
        """x [B, n, D], key_padding_mask [B, n] bool (True = real) -> [B, n, D].

        ``select``: optional [B, n] bool marking the (real) positions whose outputs are
        wanted; the result is then [K, D], those positions in row-major order. The last
        block computes only them after its attention (the other positions still give it
        their keys and values), which is most of that block's work when few positions
        are wanted (S3-Rec pretraining reads the masked positions and the last one).
        The selected outputs equal those of the full call (dropout aside: it is drawn for
        fewer elements).

        ``side``: side inputs handed to every block's attention, in the padded [B, n]
        layout (only the padded path takes them here; packed callers use
        :meth:`encode_packed`). ``skip_padding``: overrides :attr:`skip_padding` for this
        call (False: every position computed, e.g. for attention maps that read padding).
        """
        causal = self.causal if causal is None else causal
        skip_padding = self.skip_padding if skip_padding is None else skip_padding
        if select is not None:
            if select.dtype != torch.bool or select.shape != x.shape[:2]:
                raise ValueError(f"select must be a bool tensor of shape {tuple(x.shape[:2])}, got "
                                 f"{select.dtype} {tuple(select.shape)}")
            if key_padding_mask is not None and bool((select & ~key_padding_mask).any()):
                raise ValueError("select marks padding positions; only real positions have outputs")
            if len(self.layers) == 0:
                return x[select]
        last = len(self.layers) - 1
        if key_padding_mask is None or not skip_padding or torch.compiler.is_compiling():
            for i, layer in enumerate(self.layers):
                keep = select.reshape(-1).nonzero().squeeze(1) if select is not None and i == last else None
                x = layer(x, key_padding_mask, causal, keep=keep, side=side)
            if select is not None or key_padding_mask is None:
                return x
            # Padding positions output 0 on this path too (the packed path never computes
            # them), so eager, compiled and skip_padding=False give the same tensor.
            return x.masked_fill(~key_padding_mask.unsqueeze(-1), 0.0)
        if side:
            raise ValueError("side inputs need skip_padding=False or encode_packed (packed layouts)")
        packed = LengthGroups(key_padding_mask)
        keep = None
        if select is not None:  # packed rows that are selected
            keep = select.reshape(-1).index_select(0, packed.index).nonzero().squeeze(1)
        h = self.encode_packed(packed.pack(x), packed, causal=causal, keep=keep)
        return h if select is not None else packed.unpack(h)

    def encode_packed(self, h: Tensor, packed: PackedPositions, *, causal: bool | None = None,
                      keep: Tensor | None = None, side: Mapping[str, object] | None = None) -> Tensor:
        """The blocks on ``h`` [N, D], the real positions of a batch in ``packed``'s order
        (``packed.pack(x)``, or :meth:`ItemPositionEmbedding.packed`) -> [N, D].

        ``keep``: int64 indices into the N rows; the result is then those rows, in
        ``keep``'s order, [K, D], and the last block computes only them after its
        attention (as ``select`` in :meth:`forward`). ``side``: side inputs of the
        attention, position-wise ones packed as ``h``.
        """
        causal = self.causal if causal is None else causal
        if len(self.layers) == 0:
            return h if keep is None else h.index_select(0, keep)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h, packed.mask, causal, packed, keep if i == last else None, side=side)
        return h


def encode_last_position(encoder: TransformerEncoder, x: Tensor, mask: Tensor) -> Tensor:
    """The encoder's output at the last column of each row, [B, D] (0 for a row whose last
    column is padding, i.e. an empty row), with the last block computing only that
    column after its attention (``select``).

    Args:
        encoder: the blocks.
        x: [B, n, D] the embedded inputs; mask: [B, n] bool, True at real positions.
    """
    select = torch.zeros_like(mask)
    select[:, -1] = mask[:, -1]
    picked = encoder(x, mask, select=select)  # [rows with an item, D]
    rows = mask[:, -1].nonzero().squeeze(1)
    return picked.new_zeros(mask.size(0), picked.size(-1)).index_copy_(0, rows, picked)


@torch.no_grad()
def init_transformer_weights(module: nn.Module, std: float) -> None:
    """The S3-Rec authors' (BERT) init; use as ``model.apply(partial(init..., std=0.02))``.

    Linear and Embedding weights ~ N(0, std), Linear biases 0, LayerNorm weight 1 and
    bias 0. Unlike the authors, the padding row of an Embedding with ``padding_idx`` is
    set back to 0 (it never receives gradient, so this only keeps exported embeddings
    and padded inputs clean; real positions never attend to padding).
    """
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.normal_(mean=0.0, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.zero_()
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        module.weight[module.padding_idx].zero_()
    if isinstance(module, nn.LayerNorm):
        module.weight.fill_(1.0)
        module.bias.zero_()
