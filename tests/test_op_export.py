"""Every op through torch.export (and its serializer), and one AOTInductor package.

Issue 24 item 2: AOTInductor failed on ``seqrec::dif_attention`` with "Expected a value
of type 'List[Tensor]' for argument 'side_q' but instead found type 'NoneType'": the
export serializer leaves out arguments at their schema defaults, and ``side_q`` had
none. Optional inputs now have defaults (``Tensor[] = []``, ``Tensor? = None``); these
tests export a function calling each op, save and load the program (the serializer is
where the empty lists went missing), and compare with eager.
"""
from __future__ import annotations

import io

import pytest
import torch

from seqrec import ops


class DifAttention(torch.nn.Module):
    def forward(self, q, k, v, mask):
        return ops.dif_attention(q, k, v, key_padding_mask=mask)  # side_q = side_k = fusion_params = []


class DifAttentionGate(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.params = torch.nn.ParameterList(ops.init_fusion_params("gate", 5, 2, generator=torch.Generator().manual_seed(0)))

    def forward(self, q, k, v, sq, sk):
        return ops.dif_attention(q, k, v, [sq], [sk], fusion="gate", fusion_params=list(self.params))


class IntentCluster(torch.nn.Module):
    def forward(self, x, mask, prototypes):
        return ops.intent_cluster(x, mask, prototypes, 0.5)


class RankTopk(torch.nn.Module):
    def forward(self, scores, indptr, items, target):
        return ops.rank_topk(scores, indptr, items, target, 3)


class RankSampled(torch.nn.Module):
    def forward(self, scores):
        return ops.rank_sampled(scores)


class SeqMask(torch.nn.Module):
    def forward(self, seq):
        return tuple(ops.seq_mask(seq, num_items=8, mask_token=9, seed=5))


class Dropout(torch.nn.Module):
    def forward(self, x, seed):
        return ops.dropout(x, 0.3, seed=seed)


def _cases():
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    mask = torch.tensor([[False, True, True, True, True], [True] * 5])
    return {
        "dif_attention": (DifAttention(), (r(2, 2, 5, 4), r(2, 2, 5, 4), r(2, 2, 5, 3), mask)),
        "dif_attention_gate": (DifAttentionGate(), (r(2, 2, 5, 4), r(2, 2, 5, 4), r(2, 2, 5, 3), r(2, 2, 5, 2),
                                                    r(2, 2, 5, 2))),
        "intent_cluster": (IntentCluster(), (r(2, 4, 6), torch.tensor([[False, True, True, True]] * 2), r(3, 6))),
        "rank_topk": (RankTopk(), (r(3, 8), torch.tensor([0, 2, 4, 6]), torch.tensor([1, 2, 3, 4, 5, 6]),
                                   torch.tensor([1, 2, 3]))),
        "rank_sampled": (RankSampled(), (r(3, 5),)),
        "seq_mask": (SeqMask(), (torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]]),)),
        "dropout": (Dropout(), (r(3, 4), torch.tensor([3]))),
    }


def _same(a, b):
    if isinstance(a, (tuple, list)):
        for x, y in zip(a, b):
            _same(x, y)
    else:
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(_cases()))
def test_export_save_load_each_op(name):
    module, args = _cases()[name]
    exported = torch.export.export(module, args)
    buffer = io.BytesIO()
    torch.export.save(exported, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer)
    _same(loaded.module()(*args), module(*args))


def test_schema_optional_inputs_have_defaults():
    # What AOTInductor and the serializer rely on: optional inputs of the forward ops a
    # serving path calls are Tensor? / Tensor[]? with default None.
    for name in ("dif_attention", "intent_cluster", "seq_mask"):
        for a in getattr(torch.ops.seqrec, name).default._schema.arguments:
            t = str(a.type)
            if t in ("Optional[Tensor]", "Optional[List[Tensor]]", "List[Tensor]"):
                assert t != "List[Tensor]", f"{name}: {a.name} must be Tensor[]? (AOTI passes [] as None)"
                assert a.has_default_value() and a.default_value is None, (name, a.name)


@pytest.mark.compile
# torch 2.13's own inductor (torch/fx/graph.py, under aoti_compile_and_package) still
# calls the deprecated isinstance(treespec, LeafSpec); nothing of ours does.
@pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning")
def test_aoti_package_of_a_topk_path(tmp_path):
    """Attention (no side sources) -> scores against item embeddings -> exclude the
    history -> top-k, compiled by AOTInductor, loaded back, equal to eager."""
    from torch._inductor import aoti_compile_and_package, aoti_load_package

    class TopK(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.items = torch.nn.Parameter(torch.randn(9, 4, generator=torch.Generator().manual_seed(2)))

        def forward(self, q, k, v, mask, indptr, history, target):
            h = ops.dif_attention(q, k, v, key_padding_mask=mask)[:, 0, -1, :]  # [B, d]
            return ops.rank_topk(h @ self.items.t(), indptr, history, target, 3)

    g = torch.Generator().manual_seed(3)
    args = (torch.randn(2, 1, 5, 4, generator=g), torch.randn(2, 1, 5, 4, generator=g),
            torch.randn(2, 1, 5, 4, generator=g), torch.tensor([[False, True, True, True, True], [True] * 5]),
            torch.tensor([0, 2, 3]), torch.tensor([1, 4, 2]), torch.tensor([3, 5]))
    module = TopK().eval()
    with torch.no_grad():
        exported = torch.export.export(module, args)
        path = aoti_compile_and_package(exported, package_path=str(tmp_path / "topk.pt2"))
        loaded = aoti_load_package(path)
        _same(loaded(*args), module(*args))
