"""Per-position float64 formula tests, written from the equations (not from our layers'
internals): the post-LN Transformer encoder of SASRec / S3-Rec / DSS, and DIF-SR's
decoupled attention layer (projections, per-field head sizes, sum / concat / gate fusion).

Each expected value is computed position by position with plain Python loops over
queries, keys and heads, from the parameters read by their (stable) state-dict names.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seqrec.data import synthetic
from seqrec.models import build_model
from seqrec.models.difsr import attribute_config

TOL = dict(rtol=1e-9, atol=1e-10)


def _ln(x, w, b, eps):
    mu = x.mean()
    var = ((x - mu) ** 2).mean()
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Every parameter non-trivial (layer norms included) so each term of the formula shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


def _block(sd, prefix, x_rows, allowed, heads, eps, side_scores=None, fuse=None):
    """One post-LN block at every row of ``x_rows`` [n, D] (one sequence).

    allowed[i][j]: query i may attend key j. side_scores(h, i, j) -> list of raw side
    scores of head h; fuse(h, i, raw_row) -> fused raw scores of query i (row over j).
    """
    n, D = x_rows.shape
    dh = D // heads
    W = lambda name: sd[f"{prefix}.{name}"]  # noqa: E731
    q = x_rows @ W("attention.query.weight").T + W("attention.query.bias")
    k = x_rows @ W("attention.key.weight").T + W("attention.key.bias")
    v = x_rows @ W("attention.value.weight").T + W("attention.value.bias")
    out = torch.zeros(n, D, dtype=torch.float64)
    for i in range(n):
        if not any(allowed[i]):
            continue
        for h in range(heads):
            sl = slice(h * dh, (h + 1) * dh)
            raw = []
            for j in range(n):
                item = float(q[i, sl] @ k[j, sl])
                sources = [item] + (side_scores(h, i, j) if side_scores else [])
                # masked keys enter the fusion as 0 (fusion_sees_masked=False)
                raw.append([s if allowed[i][j] else 0.0 for s in sources])
            fused = fuse(h, i, raw) if fuse else [sum(r) for r in raw]
            logits = [fused[j] / math.sqrt(dh) for j in range(n)]
            top = max(logits[j] for j in range(n) if allowed[i][j])
            e = [math.exp(logits[j] - top) if allowed[i][j] else 0.0 for j in range(n)]
            z = sum(e)
            for j in range(n):
                out[i, sl] += e[j] / z * v[j, sl]
    rows = []
    for i in range(n):
        a = out[i] @ W("attention.out.weight").T + W("attention.out.bias")
        a = _ln(a + x_rows[i], W("attention.norm.weight"), W("attention.norm.bias"), eps)
        f = _gelu(a @ W("feed_forward.dense_in.weight").T + W("feed_forward.dense_in.bias"))
        f = f @ W("feed_forward.dense_out.weight").T + W("feed_forward.dense_out.bias")
        rows.append(_ln(f + a, W("feed_forward.norm.weight"), W("feed_forward.norm.bias"), eps))
    return torch.stack(rows)


@pytest.mark.parametrize("width", [6, 8])
def test_sasrec_encoder_formula(width):
    """SASRec: E = LN(item + pos) (right-aligned positions), 2 post-LN blocks, causal +
    padding masks; padding positions output 0."""
    torch.manual_seed(0)
    model = build_model("sasrec", num_items=30, max_len=8, hidden_size=8, num_layers=2, num_heads=2,
                        inner_size=12, hidden_dropout=0.0, attention_dropout=0.0).double().eval()
    _randomise(model, 1)
    eps = model.config.layer_norm_eps
    seq = torch.tensor([[0, 0, 3, 7, 7, 1, 2, 30][8 - width:], [0] * (width - 2) + [5, 9],
                        [4, 8, 15, 16, 23, 29, 2, 11][8 - width:]])
    got = model(seq)
    sd = model.state_dict()
    for b in range(seq.size(0)):
        real = [int(t) != 0 for t in seq[b]]
        first = real.index(True)
        x = torch.stack([
            _ln(sd["embedding.item.weight"][seq[b, j]] + sd["embedding.position.weight"][8 - width + j],
                sd["embedding.norm.weight"], sd["embedding.norm.bias"], eps)
            for j in range(width)])
        allowed = [[j <= i and real[j] for j in range(width)] for i in range(width)]
        for layer in range(2):
            x = _block(sd, f"encoder.layers.{layer}", x, allowed, 2, eps)
        torch.testing.assert_close(got[b, first:], x[first:], **TOL)
        assert torch.all(got[b, :first] == 0)


def _difsr(fusion, sizes, width_max=6):
    ds = synthetic(num_users=30, num_items=40, num_intents=4, seed=5)
    torch.manual_seed(0)
    model = build_model("difsr", num_items=ds.num_items, max_len=width_max, hidden_size=8, num_layers=1,
                        num_heads=2, inner_size=12, attribute_sizes=sizes, fusion=fusion, hidden_dropout=0.0,
                        attention_dropout=0.0, attribute_predictor=False, attributes=ds,
                        **attribute_config(ds, ["category", "brand"])).double()
    _randomise(model, 2)
    return ds, model.eval()


# Names of DIF-SR's parameters in the pre-refactor layout -> the function that reads them.
def _difsr_names(sd):
    layer = "encoder.layers.0" if "encoder.layers.0.attention.query.weight" in sd else "layers.0"
    return layer


@pytest.mark.parametrize("fusion,sizes", [("sum", 4), ("concat", (4, 2)), ("gate", (2, 4))])
@pytest.mark.parametrize("width", [6, 4])
def test_difsr_layer_formula(fusion, sizes, width):
    """DIF-SR: R0 = LN(item) (no position added); per head, raw scores of item q/k
    (head D/H), position q/k (head D/H) and each attribute field's own q/k (head d_f/H),
    masked ones zeroed, fused (sum; concat: W [n, S*n] over (source, key); gate: softmax
    over sources of w2 relu(W1 row + b1) + b2), / sqrt(D/H), softmax, item-only values,
    post-LN; the FFN as SASRec."""
    ds, model = _difsr(fusion, sizes)
    L, H, eps = 6, 2, model.config.layer_norm_eps
    sd = model.state_dict()
    layer = _difsr_names(sd)
    field_sizes = model.config.field_sizes
    tables = [np.asarray(ds.attributes[f].padded()) for f in ("category", "brand")]
    seq = torch.tensor([[0, 0, 3, 7, 7, 1][L - width:], [0] * (width - 2) + [5, 9], [4, 8, 15, 16, 23, 29][L - width:]])
    got = model(seq)
    S = 4
    for b in range(seq.size(0)):
        real = [int(t) != 0 for t in seq[b]]
        first = real.index(True)
        items = [int(t) for t in seq[b]]
        x = torch.stack([_ln(sd["embedding.item.weight"][i], sd["embedding.norm.weight"], sd["embedding.norm.bias"],
                             eps) for i in items])
        pos = sd["embedding.position.weight"][L - width:]  # right-aligned
        A = lambda name: sd[f"{layer}.attention.{name}"]  # noqa: E731
        pq = pos @ A("position_query.weight").T + A("position_query.bias")
        pk = pos @ A("position_key.weight").T + A("position_key.bias")
        attr_q, attr_k = [], []
        for f, (table, d) in enumerate(zip(tables, field_sizes)):
            emb = sd[f"embedding.attributes.{f}.weight"]
            vec = torch.stack([sum((emb[a] for a in table[i] if a > 0), torch.zeros(d, dtype=torch.float64))
                               for i in items])
            attr_q.append(vec @ A(f"attribute_query.{f}.weight").T + A(f"attribute_query.{f}.bias"))
            attr_k.append(vec @ A(f"attribute_key.{f}.weight").T + A(f"attribute_key.{f}.bias"))

        def side(h, i, j):
            dp = 8 // H
            out = [float(pq[i, h * dp:(h + 1) * dp] @ pk[j, h * dp:(h + 1) * dp])]
            for f, d in enumerate(field_sizes):
                df = d // H
                out.append(float(attr_q[f][i, h * df:(h + 1) * df] @ attr_k[f][j, h * df:(h + 1) * df]))
            return out

        params = [sd[k] for k in sorted(sd) if k.startswith(f"{layer}.attention.fusion_params.")]
        params = [sd[f"{layer}.attention.fusion_params.{i}"] for i in range(len(params))]

        def fuse(h, i, raw):  # raw[j][s] over this batch's width; the maps span max_len columns
            full = [[0.0] * S for _ in range(L - width)] + raw
            if fusion == "concat":
                w, bias = params
                vec = torch.tensor([full[j][s] for s in range(S) for j in range(L)], dtype=torch.float64)
                return (w @ vec + bias)[L - width:].tolist()
            w1, b1, w2, b2 = params
            energies = [float(w2[0] @ torch.relu(w1 @ torch.tensor([full[j][s] for j in range(L)],
                                                                   dtype=torch.float64) + b1) + b2[0])
                        for s in range(S)]
            top = max(energies)
            wts = [math.exp(e - top) for e in energies]
            wts = [w / sum(wts) for w in wts]
            return [sum(wts[s] * raw[j][s] for s in range(S)) for j in range(width)]

        allowed = [[j <= i and real[j] for j in range(width)] for i in range(width)]
        want = _block(sd, layer, x, allowed, H, eps, side, None if fusion == "sum" else fuse)
        torch.testing.assert_close(got[b, first:], want[first:], **TOL)
        assert torch.all(got[b, :first] == 0)
