"""seq_mask: identical to the per-sample reference on fixed seeds, right statistics, clean errors."""
from __future__ import annotations

import math

import pytest
import torch

import seqrec
from seqrec.ops import SeqMaskOutput, seq_mask

from helpers import shared_dataset

NUM_ITEMS = 40
MASK = NUM_ITEMS + 1


def left_padded(lengths, n, num_items, gen, *, repeats=True):
    """[len(lengths), n] int64 batch, row b holding lengths[b] items at the end."""
    out = torch.zeros(len(lengths), n, dtype=torch.int64)
    for b, length in enumerate(lengths):
        if length == 0:
            continue
        if repeats:
            items = torch.randint(1, num_items + 1, (length,), generator=gen)
        else:
            items = torch.randperm(num_items, generator=gen)[:length] + 1
        out[b, n - length:] = items
    return out


def attribute_table(num_items, slots, num_attr, gen):
    """[num_items+1, slots] distinct attribute ids per item, 0-padded, row 0 empty."""
    table = torch.zeros(num_items + 1, slots, dtype=torch.int64)
    for i in range(1, num_items + 1):
        k = int(torch.randint(0, slots + 1, (1,), generator=gen))
        table[i, :k] = torch.randperm(num_attr, generator=gen)[:k] + 1
    return table


def sample_inputs():
    """(name, item_seq, item_attributes) with the edge cases of STYLE habit 9."""
    gen = torch.Generator().manual_seed(0)
    attrs = attribute_table(NUM_ITEMS, 3, 9, gen)
    odd = left_padded([7, 0, 1, 2, 3, 5, 6], 7, NUM_ITEMS, gen)  # all-padding, len 1, full rows
    wide = left_padded([13, 1, 0, 9, 2, 13, 4, 11, 8], 13, NUM_ITEMS, gen)
    noncontig = left_padded([5, 3, 1, 5, 2, 4], 5, NUM_ITEMS, gen).t().contiguous().t()
    assert not noncontig.is_contiguous()
    return [
        ("odd", odd, attrs),
        ("odd_noattr", odd, None),
        ("wide", wide, attrs),
        ("noncontig", noncontig, attrs[:, :1]),
        ("single_row", left_padded([6], 6, NUM_ITEMS, gen), attrs),  # no other row to draw from
        ("short_others", left_padded([12, 1, 2], 12, NUM_ITEMS, gen), attrs),  # window wraps
        ("n1", left_padded([1, 0, 1], 1, NUM_ITEMS, gen), attrs),
        ("all_padding", torch.zeros(3, 4, dtype=torch.int64), attrs),
        ("empty", torch.zeros(0, 5, dtype=torch.int64), attrs),
    ]


SAMPLES = sample_inputs()
IDS = [s[0] for s in SAMPLES]


def run(seq, attrs=None, *, seed, p=0.2, mask_last=True, backend=None, num_items=NUM_ITEMS):
    return seq_mask(seq, num_items=num_items, mask_token=num_items + 1, mask_prob=p, seed=seed,
                    item_attributes=attrs, mask_last=mask_last, backend=backend)


def assert_same(a: SeqMaskOutput, b: SeqMaskOutput):
    for name, x, y in zip(SeqMaskOutput._fields, a, b):
        assert x.dtype == y.dtype == torch.int64, name
        assert torch.equal(x, y), f"{name}:\n{x}\n{y}"


@pytest.mark.parametrize("name,seq,attrs", SAMPLES, ids=IDS)
@pytest.mark.parametrize("mask_last", [True, False])
def test_matches_reference_on_fixed_seeds(name, seq, attrs, mask_last):
    for seed, p in [(0, 0.2), (1, 0.5), (-7, 1.0), (2**63 + 5, 0.0)]:
        got = run(seq, attrs, seed=seed, p=p, mask_last=mask_last)
        ref = run(seq, attrs, seed=seed, p=p, mask_last=mask_last, backend="reference")
        assert_same(got, ref)
        assert got.attribute_targets.shape == (*seq.shape, 0 if attrs is None else attrs.shape[1])


def test_streams_are_splitmix64():
    # Published splitmix64 outputs from state 0 (Vigna's splitmix64.c): the reference's
    # generator, which the kernel must equal bit for bit, is the real thing.
    from seqrec.ops.reference.seq_mask import _Stream

    stream = _Stream(0, 0, 0)
    stream.state = 0
    assert [stream.next() for _ in range(3)] == [
        0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def test_fallback_negative_scan_matches_reference_and_is_uniform():
    # 190 of 200 items in every row: rejection fails 32 times in ~19% of the draws.
    num_items, n = 200, 190
    seq = torch.arange(1, n + 1).repeat(60, 1)
    assert_same(run(seq[:4], seed=3, p=1.0, num_items=num_items),
                run(seq[:4], seed=3, p=1.0, num_items=num_items, backend="reference"))
    out = run(seq, seed=3, p=1.0, num_items=num_items)
    neg = out.neg_items.flatten()
    assert bool(((neg > n) & (neg <= num_items)).all())
    counts = torch.bincount(neg - n - 1, minlength=10).double()
    expected = neg.numel() / 10
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 27.9  # chi-square, 9 degrees of freedom, p = 0.001


def test_negative_items_uniform_over_non_members():
    seq = torch.tensor([[1, 2, 3, 4, 5]]).repeat(3000, 1)
    out = run(seq, seed=11, p=1.0, num_items=12)
    neg = out.neg_items.flatten()
    counts = torch.bincount(neg, minlength=13)[1:].double()
    assert counts[:5].sum() == 0
    expected = neg.numel() / 7
    chi2 = float(((counts[5:] - expected) ** 2 / expected).sum())
    assert chi2 < 22.5  # 6 degrees of freedom, p = 0.001


def check_invariants(seq, out, mask_token, attrs):
    """Everything that must hold for any seed: padding, masks, negatives, segments, targets."""
    real = seq != 0
    lengths = real.sum(1)
    for name in SeqMaskOutput._fields[:6]:
        assert bool((getattr(out, name)[~real] == 0).all()), f"{name} touched padding"
    masked = out.masked_items == mask_token
    assert bool((masked <= real).all())
    assert torch.equal(out.masked_items[~masked], seq[~masked])
    assert torch.equal(out.pos_items[masked], seq[masked])
    assert bool((out.pos_items[~masked] == 0).all()) and bool((out.neg_items[~masked] == 0).all())
    neg = out.neg_items
    assert bool((neg[masked] >= 1).all()) and bool((neg[masked] < mask_token).all())
    # A negative is never an item of its own row (so never the positive).
    in_row = (neg.unsqueeze(2) == seq.unsqueeze(1)).any(2)
    assert not bool((in_row & masked).any())
    # Segment: one contiguous run of length in [1, len // 2] inside the real items.
    seg = out.masked_segment_seq == mask_token
    has_seg = lengths >= 2
    assert torch.equal(seg.sum(1), out.segment_len)
    assert torch.equal(out.segment_len > 0, has_seg)
    assert bool((out.segment_len[has_seg] <= lengths[has_seg] // 2).all())
    pos = torch.arange(seq.shape[1])
    inside = (pos >= out.segment_start[:, None]) & (pos < (out.segment_start + out.segment_len)[:, None])
    assert torch.equal(seg, inside)
    assert bool((seg <= real).all())
    assert torch.equal(out.pos_segment[seg], seq[seg])
    assert bool((out.pos_segment[real & ~seg & has_seg[:, None]] == mask_token).all())
    assert bool((out.neg_segment[real & ~seg & has_seg[:, None]] == mask_token).all())
    neg_seg = out.neg_segment[seg]
    assert bool((neg_seg >= 1).all()) and bool((neg_seg < mask_token).all())
    one = lengths == 1
    for name in ("masked_segment_seq", "pos_segment", "neg_segment"):
        assert torch.equal(getattr(out, name)[one], seq[one])
    if attrs is not None:
        assert torch.equal(out.attribute_targets[masked], attrs[out.pos_items[masked]])
        assert bool((out.attribute_targets[~masked] == 0).all())
    return masked, lengths


def test_statistics_on_a_large_batch():
    gen = torch.Generator().manual_seed(5)
    num_items, n, batch, p = 500, 50, 3000, 0.2
    lengths = torch.randint(0, n + 1, (batch,), generator=gen).tolist()
    seq = left_padded(lengths, n, num_items, gen)
    attrs = attribute_table(num_items, 4, 30, gen)
    out = run(seq, attrs, seed=99, p=p, mask_last=False, num_items=num_items)
    masked, lens = check_invariants(seq, out, num_items + 1, attrs)
    trials = int(lens.sum())
    rate = masked.sum().item() / trials
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / trials), rate

    # mask_last: the last item always masked, the others still at rate p.
    out = run(seq, attrs, seed=99, p=p, mask_last=True, num_items=num_items)
    masked, lens = check_invariants(seq, out, num_items + 1, attrs)
    nonempty = lens > 0
    assert bool(masked[nonempty, -1].all())
    trials = int(lens.sum() - nonempty.sum())
    rate = (masked[:, :-1].sum().item()) / trials
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / trials), rate

    # Segment length uniform on [1, len // 2] and start uniform on [0, len - L], rows of 20.
    rows20 = out.segment_len[lens == 20]
    counts = torch.bincount(rows20 - 1, minlength=10).double()
    expected = rows20.numel() / 10
    assert counts.numel() == 10
    assert float(((counts - expected) ** 2 / expected).sum()) < 27.9


def test_statistics_on_beauty():
    path = shared_dataset("Beauty") / "Beauty.txt"
    rows = [list(map(int, line.split()[1:])) for line in path.read_text().splitlines()]
    rows = [r[:-2][-50:] for r in rows]  # the authors' pretraining part: no valid/test item
    num_items = max(max(r) for r in rows if r)
    seq = torch.zeros(len(rows), 50, dtype=torch.int64)
    for b, r in enumerate(rows):
        if r:
            seq[b, 50 - len(r):] = torch.tensor(r)
    seq = seq[:5000]
    out = run(seq, seed=1, p=0.2, mask_last=False, num_items=num_items)
    masked, lens = check_invariants(seq, out, num_items + 1, None)
    trials = int(lens.sum())
    assert abs(masked.sum().item() / trials - 0.2) < 4 * math.sqrt(0.16 / trials)


@pytest.mark.parametrize("name,seq,attrs", SAMPLES[:6], ids=IDS[:6])
def test_invariants_on_samples(name, seq, attrs):
    for seed in range(5):
        check_invariants(seq, run(seq, attrs, seed=seed, p=0.4), MASK, attrs)


def test_segment_negatives_come_from_other_rows():
    # Rows use disjoint item ranges, so a negative segment item names its source row.
    seq = torch.stack([torch.arange(1, 11) + 10 * b for b in range(8)])
    out = run(seq, seed=4, num_items=80)
    for b in range(8):
        s, L = out.segment_start[b].item(), out.segment_len[b].item()
        window = out.neg_segment[b, s:s + L]
        assert not bool(((window > 10 * b) & (window <= 10 * b + 10)).any())
        assert bool((window[1:] - window[:-1] == 1).sum() >= L - 2)  # contiguous (one row break at most)


def test_reproducible_and_seed_sensitive():
    gen = torch.Generator().manual_seed(1)
    seq = left_padded(torch.randint(0, 31, (200,), generator=gen).tolist(), 30, NUM_ITEMS, gen)
    a, b = run(seq, seed=123), run(seq, seed=123)
    assert_same(a, b)
    c = run(seq, seed=124)
    assert not torch.equal(a.masked_items, c.masked_items)
    assert not torch.equal(a.masked_segment_seq, c.masked_segment_seq)
    assert_same(run(seq, seed=2**64 - 1), run(seq, seed=-1))  # same 64 bits


def test_independent_of_thread_count_and_padding():
    gen = torch.Generator().manual_seed(2)
    lengths = torch.randint(0, 51, (1500,), generator=gen).tolist()
    seq = left_padded(lengths, 50, 300, gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(seq, seed=7, num_items=300)
        torch.set_num_threads(2)
        two = run(seq, seed=7, num_items=300)
    finally:
        torch.set_num_threads(threads)
    assert_same(one, two)
    # A row's corruption depends on its items, not on how much padding precedes them.
    wider = torch.cat([torch.zeros(1500, 9, dtype=torch.int64), seq], 1)
    out = run(wider, seed=7, num_items=300)
    for name in SeqMaskOutput._fields[:6]:
        assert torch.equal(getattr(out, name)[:, 9:], getattr(one, name)), name
    assert torch.equal(out.segment_start - 9 * (out.segment_len > 0), one.segment_start)


@pytest.mark.parametrize("name,seq,attrs", SAMPLES, ids=IDS)
def test_opcheck(name, seq, attrs):
    torch.library.opcheck(
        torch.ops.seqrec.seq_mask.default, (seq, attrs),
        {"num_items": NUM_ITEMS, "mask_token": MASK, "mask_prob": 0.3, "seed": 5})


def test_compile_fullgraph_aot_eager():
    gen = torch.Generator().manual_seed(3)
    seq = left_padded([5, 0, 1, 8], 8, NUM_ITEMS, gen)

    def corrupt(x):
        out = seq_mask(x, num_items=NUM_ITEMS, mask_token=MASK, seed=9)
        return out.masked_items, out.neg_segment.sum()

    compiled = torch.compile(corrupt, fullgraph=True, backend="aot_eager")
    got, ref = compiled(seq), corrupt(seq)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


@pytest.mark.parametrize("backend", ["seqrec", "reference"])
@pytest.mark.parametrize("kwargs,match", [
    (dict(seq=torch.tensor([[0, 3, 41]])), r"ids must lie in \[0, num_items=40\]"),
    (dict(seq=torch.tensor([[0, 3, 45]])), r"ids must lie in \[0, num_items=40\]"),
    (dict(seq=torch.tensor([[-1, 3, 4]])), r"ids must lie in"),
    (dict(seq=torch.tensor([[2, 0, 4]])), r"left-padded"),
    (dict(p=-0.1), r"mask_prob must lie in \[0, 1\]"),
    (dict(p=1.5), r"mask_prob must lie in \[0, 1\]"),
    (dict(p=float("nan")), r"mask_prob must lie in \[0, 1\]"),
    (dict(seq=torch.tensor([[1, 2, 3]], dtype=torch.int32)), r"item_seq"),
    (dict(seq=torch.tensor([1, 2, 3])), r"item_seq"),
    (dict(mask_token=40), r"mask_token must be > num_items"),
    (dict(attrs=torch.zeros(40, 2, dtype=torch.int64)), r"item_attributes needs a row per item"),
    (dict(attrs=torch.zeros(41, 2)), r"item_attributes"),
    (dict(seq=torch.tensor([[1, 2, 3]]), num_items=3), r"row 0 contains all 3 items"),
])
def test_bad_inputs_raise(backend, kwargs, match):
    seq = kwargs.get("seq", torch.tensor([[0, 1, 2]]))
    num_items = kwargs.get("num_items", NUM_ITEMS)
    with pytest.raises(RuntimeError, match=match):
        seq_mask(seq, num_items=num_items, mask_token=kwargs.get("mask_token", num_items + 1),
                 mask_prob=kwargs.get("p", 0.2), seed=0, item_attributes=kwargs.get("attrs"),
                 backend=backend)


def test_full_row_is_fine_when_nothing_needs_a_negative():
    out = seq_mask(torch.tensor([[1, 2, 3]]), num_items=3, mask_token=4, mask_prob=0.0, seed=0,
                   mask_last=False)
    assert torch.equal(out.masked_items, torch.tensor([[1, 2, 3]]))


def test_bad_seed_raises():
    seq = torch.tensor([[0, 1, 2]])
    with pytest.raises(TypeError, match="'seed' must be an int"):
        seq_mask(seq, num_items=NUM_ITEMS, mask_token=MASK, seed=1.5)
    with pytest.raises(ValueError, match=r"'seed' must lie in \[-2\*\*63, 2\*\*64\)"):
        seq_mask(seq, num_items=NUM_ITEMS, mask_token=MASK, seed=2**64)


def test_default_backend_switch_reaches_reference():
    seq = torch.tensor([[0, 1, 2, 3]])
    with seqrec.ops.use_backend("reference"):
        ref = seq_mask(seq, num_items=NUM_ITEMS, mask_token=MASK, seed=3)
    assert_same(ref, seq_mask(seq, num_items=NUM_ITEMS, mask_token=MASK, seed=3))
