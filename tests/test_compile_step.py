"""torch.compile(fullgraph=True) of every model's training step (issue 24, part 1).

Forward + loss of each model (SASRec BCE and CE, DIF-SR, SINE, DSS, S3-Rec's
pretraining losses) traces into ONE graph (``torch._dynamo.explain``: no graph break),
and the compiled step (AOTAutograd: forward and backward) gives the eager loss and
gradients. Under tracing the models take static-shape paths (every position a row,
padding weighted 0) where eager packs the real positions; these tests compare the two.

The graphs run on the ``aot_eager`` backend: the same traced forward and backward graphs
as inductor, without its C++ code generation, which takes minutes on 2 cores
(benchmarks/bench_compile.py runs inductor on every model). Dropout is 0, so eager and compiled
draw nothing random and must agree within float tolerance.
"""
from __future__ import annotations

import functools

import pytest
import torch
import torch._dynamo

from seqrec.data import synthetic
from seqrec.models import build_model
from seqrec.models.difsr import attribute_config
from seqrec.models.s3rec import item_attribute_table
from seqrec.train import TrainConfig, Trainer
from seqrec.train import trainer as trainer_module
from seqrec.train.trainer import compiled_step

# conftest.one_thread: tiny tensors, one intra-op thread
pytestmark = [pytest.mark.compile, pytest.mark.usefixtures("one_thread")]

MAX_LEN = 30


@pytest.fixture(scope="module")
def dataset():
    return synthetic(num_users=40, num_items=30, num_intents=3, seed=5)


def _batches(dataset, num_negatives=1, batch_size=16, **negatives):
    split = dataset.leave_one_out(max_len=MAX_LEN)
    return list(split.train_batches(batch_size, seed=0, epoch=0, num_negatives=num_negatives, **negatives))


def _model(name, ds):
    small = dict(num_items=ds.num_items, max_len=MAX_LEN, hidden_size=8)
    enc = dict(small, num_layers=1, num_heads=2, hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    if name in ("sasrec-bce", "sasrec-ce", "sasrec-sampled"):
        return build_model("sasrec", **enc, loss=name.split("-")[1])
    if name in ("difsr-ce", "difsr-bce", "difsr-sampled"):
        return build_model("difsr", **enc, inner_size=8, attribute_sizes=4, fusion="gate",
                           loss=name.split("-")[1], attributes=ds, **attribute_config(ds, ["category", "brand"]))
    if name in ("sine", "sine-log-q"):
        return build_model("sine", **small, num_prototypes=6, num_interests=2, max_prefixes=5)
    if name == "dss-ce":
        return build_model("dss", **small, num_layers=1, num_intentions=2, hidden_dropout=0.0,
                           attention_dropout=0.0)
    if name in ("dss-sampled", "dss-sampled-log-q"):
        return build_model("dss", **small, num_layers=1, num_intentions=2, hidden_dropout=0.0,
                           attention_dropout=0.0, loss="sampled")
    raise AssertionError(name)


MODELS = ["sasrec-bce", "sasrec-ce", "difsr-ce", "difsr-bce", "sine", "dss-ce", "dss-sampled",
          "sasrec-sampled", "difsr-sampled", "sine-log-q", "dss-sampled-log-q"]
NEGATIVES = {"sine": 3, "dss-sampled": 4, "sasrec-sampled": 4, "difsr-sampled": 4, "sine-log-q": 3,
             "dss-sampled-log-q": 4}
# Log-Q corrected sampled softmax (issue 25 item 4): popularity negatives with their
# features["negative_log_q"], so the static-shape paths apply the correction too.
LOG_Q = {"sasrec-sampled", "difsr-sampled", "sine-log-q", "dss-sampled-log-q"}


def _loss_and_grads(model, fn, *args):
    model.zero_grad(set_to_none=True)
    loss = fn(*args)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(eager, compiled):
    (loss_e, grads_e), (loss_c, grads_c) = eager, compiled
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    assert grads_c.keys() == grads_e.keys()
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-4, atol=1e-6, msg=name)


def _dss_step(model, batch):
    # DSS draws its split point with torch.rand: fixed here, so both runs see the same one.
    split = model.sample_split(batch.lengths)
    return lambda b: model.loss_terms(b, split=split).loss


@pytest.mark.parametrize("name", MODELS)
def test_training_step_is_one_graph_and_matches_eager(name, dataset):
    torch._dynamo.reset()
    options = {"negatives": "popularity", "with_log_q": True} if name in LOG_Q else {}
    batch = _batches(dataset, NEGATIVES.get(name, 1), **options)[-1]  # the short last batch
    assert (name in LOG_Q) == ("negative_log_q" in batch.features)
    assert bool((batch.input_ids == 0).any()), "the batch must hold padding to test the masked paths"
    model = _model(name, dataset).train()

    if name.startswith("dss"):
        step = _dss_step(model, batch)
    else:
        def step(b):
            return model.loss_terms(b).loss

    # fullgraph=True raises at the first graph break (what torch._dynamo.explain counts).
    compiled = _loss_and_grads(model, torch.compile(step, fullgraph=True, backend="aot_eager"), batch)
    eager = _loss_and_grads(model, step, batch)
    _assert_same(eager, compiled)


def test_streamed_ce_step_is_one_graph_and_matches_eager(dataset, monkeypatch):
    """Exact CE streamed over item blocks (logits above CE_MEMORY: here a budget of a few
    blocks) compiles too: its backward takes the general path instead of branching on the
    sign of the incoming gradient (a host sync that stopped inductor on Beauty)."""
    from seqrec.models import losses

    monkeypatch.setattr(losses, "CE_MEMORY", 4096)
    torch._dynamo.reset()
    batch = _batches(dataset)[-1]
    model = _model("sasrec-ce", dataset).train()
    rows = batch.input_ids.numel()
    assert 2 * rows * 32 * 4 > losses.CE_MEMORY, "the static path's logits must pass the budget"

    def step(b):
        return model.loss_terms(b).loss

    compiled = _loss_and_grads(model, torch.compile(step, fullgraph=True, backend="aot_eager"), batch)
    eager = _loss_and_grads(model, step, batch)
    _assert_same(eager, compiled)


@pytest.mark.parametrize("aap_input, reduction", [("sequence", "sum"), ("item", "mean")])
def test_s3rec_pretraining_step_is_one_graph_and_matches_eager(dataset, aap_input, reduction):
    torch._dynamo.reset()
    torch.manual_seed(0)
    _, num_attributes, fields = item_attribute_table(dataset)
    model = build_model("s3rec", num_items=dataset.num_items, max_len=MAX_LEN, hidden_size=8, num_layers=1,
                        num_heads=2, hidden_dropout=0.0, attention_dropout=0.0, aap_input=aap_input,
                        reduction=reduction, num_attributes=num_attributes, attribute_fields=fields)
    model.attach_dataset(dataset)
    model.train()
    items = _batches(dataset)[0].input_ids
    masked = model.corrupt(items, seed=3)

    def step(m):
        return model.weighted_loss(model.pretrain_losses(m))

    eager = _loss_and_grads(model, step, masked)
    compiled = _loss_and_grads(model, torch.compile(step, fullgraph=True, backend="aot_eager"), masked)
    _assert_same(eager, compiled)
    if aap_input == "item":
        return
    # pretrain_loss (seq_mask inside) is one graph as well.
    explained = torch._dynamo.explain(lambda x: model.pretrain_loss(x, seed=3)[0])(items)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_trainer_compile_setting_trains_like_eager(dataset, monkeypatch):
    """TrainConfig(compile=True): the compiled step over two epochs (full batches and a
    short last one: recompiled, then dynamic shapes) gives eager's losses
    within float tolerance. On aot_eager: inductor's code generation of this step took
    7 minutes on the loaded 2-core CI machine (benchmarks/bench_compile.py runs it)."""
    torch._dynamo.reset()
    monkeypatch.setattr(trainer_module, "compiled_step", functools.partial(compiled_step, backend="aot_eager"))
    split = dataset.leave_one_out(max_len=MAX_LEN)
    losses = {}
    for compile in (False, True):
        config = TrainConfig(epochs=2, batch_size=16, lr=1e-2, sampled_negatives=5, ks=(5,), metric="NDCG@5",
                             progress=False, compile=compile, seed=1)
        trainer = Trainer(_model("sasrec-ce", dataset), split, config)
        losses[compile] = [record["loss"] for record in trainer.fit().history]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_compile_setting_is_checked():
    with pytest.raises(ValueError, match="TrainConfig.compile"):
        TrainConfig(compile="yes")


def test_pretrainer_compile_setting_pretrains_like_eager(dataset, monkeypatch):
    """PretrainConfig(compile=True): the compiled pretrain_losses give eager's epoch losses."""
    from seqrec.train import PretrainConfig, Pretrainer
    from seqrec.train import pretrain as pretrain_module

    torch._dynamo.reset()
    monkeypatch.setattr(pretrain_module, "compiled_step", functools.partial(compiled_step, backend="aot_eager"))
    _, num_attributes, fields = item_attribute_table(dataset)
    history = {}
    for compile in (False, True):
        torch.manual_seed(0)
        model = build_model("s3rec", num_items=dataset.num_items, max_len=MAX_LEN, hidden_size=8, num_layers=1,
                            num_heads=2, hidden_dropout=0.0, attention_dropout=0.0, num_attributes=num_attributes,
                            attribute_fields=fields)
        model.attach_dataset(dataset)
        config = PretrainConfig(epochs=1, batch_size=64, samples="users", progress=False, compile=compile)
        history[compile] = Pretrainer(model, dataset, config).fit()[0]
    for key in ("loss", "aap", "mip", "map", "sp"):
        assert history[True][key] == pytest.approx(history[False][key], rel=1e-4), key
