"""``seq_mask``: S3-Rec's pretraining corruption of a whole batch in one call.

The C++ kernel (``torch.ops.seqrec.seq_mask``) replaces the authors' per-sample Python
``PretrainDataset.__getitem__`` (masking loop, ``neg_sample`` loop, segment sampling, tensor
building) by one pass over the batch, parallel over rows. Outputs are integer tensors, so
there is no autograd formula. The semantics, and every place they deviate from the authors'
code (RUCAIBox/CIKM2020-S3Rec ``datasets.py``), are in :func:`seq_mask`'s docstring.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .. import _loader  # noqa: F401  (registers torch.ops.seqrec.*)
from ._autograd import register_loop_vmap
from ._checks import check_same_device
from ._random import seed_int64
from ._registry import register_cuda_reference
from .backend import get_backend

__all__ = ["SeqMaskOutput", "seq_mask"]

class SeqMaskOutput(NamedTuple):
    """Result of :func:`seq_mask` (all int64; B batch, n max length, A attribute slots)."""

    masked_items: Tensor        # [B, n] MIP/MAP/AAP encoder input
    pos_items: Tensor           # [B, n] original item where masked, else 0
    neg_items: Tensor           # [B, n] negative item where masked, else 0
    masked_segment_seq: Tensor  # [B, n] SP context input
    pos_segment: Tensor         # [B, n] the segment in place, mask_token elsewhere
    neg_segment: Tensor         # [B, n] a segment of other rows in place, mask_token elsewhere
    segment_start: Tensor       # [B]    absolute start position (0 when no segment)
    segment_len: Tensor         # [B]    segment length (0 when the row has < 2 items)
    attribute_targets: Tensor   # [B, n, A] attribute ids of the masked item, else 0


@torch.library.register_fake("seqrec::seq_mask")
def _seq_mask_fake(item_seq, item_attributes=None, *, num_items, mask_token, mask_prob, seed,
                   mask_last=True):
    check_same_device("seq_mask", item_seq=item_seq, item_attributes=item_attributes)
    torch._check(item_seq.dim() == 2, lambda: "seq_mask: item_seq must be 2-dimensional")
    torch._check(item_seq.dtype == torch.int64, lambda: "seq_mask: item_seq must be int64")
    batch, n = item_seq.shape
    slots = 0
    if item_attributes is not None:
        torch._check(item_attributes.dim() == 2,
                     lambda: "seq_mask: item_attributes must be 2-dimensional")
        slots = item_attributes.shape[1]
    seqs = tuple(item_seq.new_empty((batch, n)) for _ in range(6))
    return (*seqs, item_seq.new_empty((batch,)), item_seq.new_empty((batch,)),
            item_seq.new_empty((batch, n, slots)))


def seq_mask(
    item_seq: Tensor,
    *,
    num_items: int,
    mask_token: int,
    mask_prob: float = 0.2,
    seed: int,
    item_attributes: Tensor | None = None,
    mask_last: bool = True,
    backend: str | None = None,
) -> SeqMaskOutput:
    """Corrupt a batch for S3-Rec pretraining (MIP, MAP, SP targets) in one call.

    Args:
        item_seq: [B, n] int64, left-padded with 0 (most recent item at n-1); ids in
            [0, num_items]. Padding must be a prefix of each row.
        num_items: number of items; item ids are 1..num_items.
        mask_token: id of the mask token, > num_items (S3-Rec uses num_items + 1).
        mask_prob: probability p of masking each real item (paper: 0.2), in [0, 1].
        seed: the op is a pure function of its inputs and this seed (same seed, same
            output; any thread count). Any int in [-2**63, 2**64), the seed contract of
            every seqrec op (``seqrec.ops._random``).
        item_attributes: optional [>= num_items+1, A] int64, row i = the attribute ids of
            item i padded with 0. Its rows are copied into ``attribute_targets``.
        mask_last: also mask the last real item of every row. The notes are silent; the
            authors' released code always does it ("add mask at the last position"), and
            since their pretraining samples are all prefixes of each training sequence,
            every item is the masked last item of one sample. Default True, as they do.
        backend: "seqrec" (C++ kernel) or "reference" (per-sample Python, same streams,
            identical output); None uses the process default (``seqrec.ops.set_backend``).

    Returns:
        :class:`SeqMaskOutput`. Padding positions are 0 in every [B, n] output.

        * Items: each real item is masked with probability p. ``masked_items`` holds
          mask_token there, ``pos_items`` the original item (0 elsewhere), ``neg_items`` an
          item drawn uniformly from {1..num_items} minus the row's own item set (0
          elsewhere): rejection sampling with at most 32 tries, then an exact draw by rank
          among the non-members (same distribution, never an endless loop). A row that
          holds every item raises RuntimeError when it needs a negative.
        * Segment: for a row with len >= 2 items, a length L uniform in [1, len // 2] and a
          start uniform in [0, len - L] (the authors' ``randint`` bounds).
          ``masked_segment_seq`` = input with the segment set to mask_token; ``pos_segment``
          = mask_token on all real positions except the segment, which keeps its items (the
          authors feed the segment in place); ``neg_segment`` = the same with a window of L
          items taken from the other rows of the batch laid end to end (the authors take it
          from all training items laid end to end; a window may straddle two rows, as
          theirs straddles users). If the other rows hold fewer than L items the window
          wraps around them, if they hold none the L items are uniform over 1..num_items.
          Rows with one item get no segment: the three outputs equal the input (as the
          authors do; their SP term is then constant) and ``segment_len`` is 0.
        * ``attribute_targets`` [B, n, A] = item_attributes[pos_items] at masked positions,
          0 elsewhere ([B, n, 0] without item_attributes). Padded ids rather than the
          authors' [B, n, num_attributes] multi-hot: the MAP loss (BCE over all attributes)
          is sum_a softplus(s_a) - sum_{a in ids, a != 0} s_a, a gather instead of a dense
          target, and the op writes A instead of num_attributes values per position
          (attribute ids of one item must be distinct).

    Deviations from the authors' code, all deliberate: ``pos_items``/``neg_items`` are 0
    where not masked (theirs repeat the item; the loss masks those positions either way);
    negatives never equal mask_token (their ``randint(1, item_size - 1)`` can return it);
    negative segments come from the batch, not the whole training set.

    Randomness: splitmix64 streams keyed by (seed, row, purpose); see
    ``csrc/ops/seq_mask/seq_mask.h``. Bounded integer draws use a multiply-shift with a
    bias below m / 2**64.
    """
    seed = seed_int64(seed, "seq_mask")
    if get_backend(backend) == "reference":
        from .reference.seq_mask import seq_mask as reference_seq_mask

        return reference_seq_mask(item_seq, num_items=num_items, mask_token=mask_token,
                                  mask_prob=mask_prob, seed=seed,
                                  item_attributes=item_attributes, mask_last=mask_last)
    out = torch.ops.seqrec.seq_mask.default(
        item_seq, item_attributes, num_items=num_items, mask_token=mask_token,
        mask_prob=float(mask_prob), seed=seed, mask_last=mask_last)
    return SeqMaskOutput(*out)


def _seq_mask_cuda(item_seq, item_attributes=None, *, num_items, mask_token, mask_prob, seed, mask_last=True):
    # The reference of this op is a per-sample Python loop; its CPU kernel computes the
    # identical output (same streams), so CUDA inputs run the CPU kernel on host copies
    # and the outputs come back to the device. It is the data side of pretraining,
    # O(B * n) integers, so the round trip is small.
    check_same_device("seq_mask", item_seq=item_seq, item_attributes=item_attributes)
    out = torch.ops.seqrec.seq_mask.default(
        item_seq.cpu(), None if item_attributes is None else item_attributes.cpu(), num_items=num_items,
        mask_token=mask_token, mask_prob=mask_prob, seed=seed, mask_last=mask_last)
    return tuple(t.to(item_seq.device) for t in out)


register_cuda_reference("seq_mask", _seq_mask_cuda)
register_loop_vmap("seq_mask")
