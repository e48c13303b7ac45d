"""Pins of the attention paths the models rely on (issue 28): gradcheck of bidirectional
attention (S3-Rec pretraining) and of ``fusion_sees_masked`` (DIF-SR's code), and the
op's dropout against the reference's for sum and concat fusion with side sources (the
dropout-vs-reference tests elsewhere use item scores only)."""
from __future__ import annotations

import pytest
import torch

from seqrec.ops import dif_attention
from test_dif_attention import FUSIONS, assert_matches_reference, leaves, make_case


def _gradcheck(case, **kw):
    m = len(case["side_q"])

    def f(*xs):
        return dif_attention(xs[0], xs[1], xs[2], list(xs[3:3 + m]), list(xs[3 + m:3 + 2 * m]),
                             fusion=case["fusion"], fusion_params=list(xs[3 + 2 * m:]),
                             key_padding_mask=case["key_padding_mask"], causal=case["causal"], **kw)

    assert torch.autograd.gradcheck(f, leaves(case), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_gradcheck_bidirectional(fusion):
    case = make_case(fusion=fusion, B=2, H=2, nq=4, dh=3, dv=2, side_dims=(2, 3), shared_first=True,
                     padding="holes", causal=False, gate_hidden=3, seed=21)
    _gradcheck(case, dropout_p=0.25, training=True, seed=5)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("fusion", ["concat", "gate"])
def test_gradcheck_fusion_sees_masked(fusion, causal):
    case = make_case(fusion=fusion, B=2, H=2, nq=4, dh=3, dv=2, side_dims=(2,), shared_first=True,
                     padding="left", causal=causal, gate_hidden=3, seed=22)
    _gradcheck(case, fusion_sees_masked=True)


@pytest.mark.parametrize("fusion", ["sum", "concat"])
@pytest.mark.parametrize("causal", [True, False])
def test_dropout_with_side_sources_matches_reference(fusion, causal):
    """Same seed, same keep mask: op and reference agree in values and gradients."""
    case = make_case(fusion=fusion, side_dims=(3, 2, 6), shared_first=True, causal=causal, padding="left",
                     seed=23)
    assert_matches_reference(case, dropout_p=0.3, training=True, seed=1234)
