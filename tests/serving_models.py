"""Tiny models of every family, with spread-out weights, for the serving and saving tests.

Weights are redrawn N(0, 0.5) (init's 0.02 leaves scores nearly tied, and a top-k
compared across runtimes would then hinge on the last float bit)."""
from __future__ import annotations

import torch

from seqrec.data import synthetic
from seqrec.models import S3Rec, S3RecConfig, build_model, load_pretrained
from seqrec.models.difsr import attribute_config

NUM_ITEMS = 30
MAX_LEN = 6
MODEL_NAMES = ["sasrec", "s3rec", "difsr", "sine", "dss"]


def dataset():
    return synthetic(num_users=20, num_items=NUM_ITEMS, num_intents=3, seed=1)


def build(name: str, seed: int = 0):
    """A model of family ``name`` (``"s3rec"``: the causal SASRec fine-tuned from an S3-Rec
    pretraining model, as ``seqrec train --model s3rec --init`` builds it)."""
    torch.manual_seed(seed)
    small = dict(num_items=NUM_ITEMS, max_len=MAX_LEN, hidden_size=8)
    if name in ("sasrec", "s3rec"):
        model = build_model("sasrec", **small, num_layers=1, num_heads=2, loss="ce")
    elif name == "difsr":
        ds = dataset()
        model = build_model("difsr", **small, num_layers=1, num_heads=2, inner_size=8, attribute_sizes=4, loss="ce",
                            attributes=ds, **attribute_config(ds, ["category"]))
    elif name == "sine":
        model = build_model("sine", **small, num_prototypes=6, num_interests=2)
    elif name == "dss":
        model = build_model("dss", **small, num_layers=1, num_intentions=2, loss="sampled")
    else:
        raise ValueError(name)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 100)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    if name == "s3rec":
        pre = S3Rec(S3RecConfig(num_items=NUM_ITEMS, max_len=MAX_LEN, hidden_size=8, num_layers=1, num_heads=2,
                                aap_weight=0.0, map_weight=0.0))
        with torch.no_grad():
            for p in pre.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        report = load_pretrained(model, pre.state_dict())
        assert report.loaded, report.describe()
    return model.eval()


def histories() -> torch.Tensor:
    """[4, 9] left-padded histories, wider than max_len (the exclusion reads all of it)."""
    h = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 3, 7],
                      [1, 2, 3, 4, 5, 6, 7, 8, 9],
                      [0, 0, 0, 0, 11, 30, 12, 2, 5],
                      [0, 0, 0, 0, 0, 0, 0, 0, 19]])
    return h
