"""Million-item catalogues (issue 25 item 4): the log-Q corrected sampled softmax, the
streamed exact CE, and row-wise embedding updates.

* ``sampled_softmax_loss`` / ``sampled_softmax_nll`` against a float64 reference of the
  formula; the log-Q term checked statistically (the mean sampled gradient under a
  skewed proposal matches the full softmax's with it, and not without);
* the samplers' ``log_expected_count``, mixes included;
* every next-item model trains with ``loss="sampled"`` (SINE: always) on synthetic data;
* ``streamed_softmax_nll`` = dense CE in value and gradient (gradcheck, float64), and
  ``softmax_nll`` streams above its memory budget;
* ``RowwiseAdam``: touched rows = dense Adam, untouched rows unchanged, state dict
  resumes exactly; the trainer's ``sparse_embeddings`` resumes bit for bit.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seqrec.data import synthetic
from seqrec.data.negatives import (NEGATIVE_LOG_Q, InBatchNegatives, MixedNegatives, PopularityNegatives,
                                   UniformNegatives, make_sampler, parse_negatives)
from seqrec.models import build_model
from seqrec.models.difsr import attribute_config
from seqrec.models.losses import (sampled_softmax_loss, sampled_softmax_nll, softmax_nll,
                                  streamed_softmax_nll)
from seqrec.train import LambdaCallback, TrainConfig, Trainer
from seqrec.train.optim import RowwiseAdam, build_optimizer


# ---------------------------------------------------------------------- sampled softmax
def _reference_sampled(positive, negatives, log_q, hits):
    """The formula row by row in float64: -pos + log(exp(pos) + sum_{j not hit} exp(neg_j - log_q_j))."""
    out = []
    for r in range(positive.size(0)):
        total = torch.exp(positive[r])
        for j in range(negatives.size(1)):
            if not hits[r, j]:
                total = total + torch.exp(negatives[r, j] - log_q[r, j])
        out.append(torch.log(total) - positive[r])
    return torch.stack(out)


def test_sampled_softmax_loss_matches_the_float64_reference():
    gen = torch.Generator().manual_seed(0)
    n, m = 7, 5
    positive = torch.randn(n, generator=gen, dtype=torch.float64, requires_grad=True)
    negatives = torch.randn(n, m, generator=gen, dtype=torch.float64, requires_grad=True)
    log_q = torch.randn(n, m, generator=gen, dtype=torch.float64)
    hits = torch.rand(n, m, generator=gen) < 0.3
    got = sampled_softmax_loss(positive, negatives, log_q=log_q, accidental_hits=hits)
    want = _reference_sampled(positive, negatives, log_q, hits)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g = torch.rand(n, generator=gen, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(got, (positive, negatives), g),
                    torch.autograd.grad(want, (positive, negatives), g)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # No correction, no hits: plain softmax over [pos, negs].
    plain = sampled_softmax_loss(positive, negatives)
    torch.testing.assert_close(plain, F.cross_entropy(torch.cat([positive[:, None], negatives], 1),
                                                      torch.zeros(n, dtype=torch.int64), reduction="none"))
    assert torch.autograd.gradcheck(lambda p, q: sampled_softmax_loss(p, q, log_q=log_q, accidental_hits=hits),
                                    (positive, negatives))


def test_sampled_softmax_nll_of_a_table_and_its_accidental_hits():
    gen = torch.Generator().manual_seed(1)
    table = nn.Embedding(12, 4).double()
    hidden = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    target = torch.randint(1, 12, (6,), generator=gen)
    negatives = torch.randint(1, 12, (6, 3), generator=gen)
    negatives[0, 1] = target[0]  # an accidental hit
    log_q = torch.rand(6, 3, generator=gen, dtype=torch.float64)
    got = sampled_softmax_nll(hidden, table, target, negatives, log_q=log_q)
    w = table.weight
    want = _reference_sampled((hidden * w[target]).sum(1), torch.einsum("nd,nmd->nm", hidden, w[negatives]), log_q,
                              negatives == target[:, None])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    kept = sampled_softmax_nll(hidden, table, target, negatives, log_q=log_q, remove_accidental_hits=False)
    hit_rows = (negatives == target[:, None]).any(1)
    assert hit_rows[0] and bool((kept[hit_rows] > got[hit_rows]).all()) and torch.equal(kept[~hit_rows], got[~hit_rows])


def test_sampled_softmax_bad_inputs():
    with pytest.raises(ValueError, match=r"positive must be \[N\] and negatives \[N, m\]"):
        sampled_softmax_loss(torch.zeros(3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"log_q must be \[N, m\] = \(3, 4\)"):
        sampled_softmax_loss(torch.zeros(3), torch.zeros(3, 4), log_q=torch.zeros(3, 5))
    with pytest.raises(ValueError, match="accidental_hits must be bool"):
        sampled_softmax_loss(torch.zeros(3), torch.zeros(3, 4), accidental_hits=torch.zeros(3, 4))


def _mean_sampled_gradient(hidden, weight, target, sampler, m, trials, correct, seed=0):
    """Mean over ``trials`` draws of m popularity negatives per row of the sampled-softmax
    gradient w.r.t. (hidden, weight): the trials are stacked as rows of one batch (each
    row's loss depends on its own draws only), so one backward gives their sum."""
    rng = np.random.default_rng(seed)
    n = hidden.size(0)
    table = nn.Embedding.from_pretrained(weight.clone(), freeze=False)
    negatives = torch.from_numpy(sampler.draw(rng.random((trials * n, m))))
    log_q = sampler.log_expected_count(negatives, m).double() if correct else None
    h = hidden.repeat(trials, 1).requires_grad_()
    loss = sampled_softmax_nll(h, table, target.repeat(trials), negatives, log_q=log_q).sum()
    gh, gw = torch.autograd.grad(loss, (h, table.weight))
    return [gh.view(trials, n, -1).mean(0), gw / trials]


def test_log_q_makes_the_sampled_gradient_the_full_softmax_gradient():
    """Popularity proposal q ~ 1/rank over 30 items, m = 300 draws with replacement per
    row: importance sampling with log(m q) makes the mean sampled-softmax gradient the
    full softmax's (a consistent estimator; the O(1/m) bias and the noise of 200 trials
    stay under 5%), while the uncorrected one is off by far more (it over-counts
    popular items 1/q times)."""
    gen = torch.Generator().manual_seed(3)
    v, d, n = 30, 6, 4
    weight = torch.randn(v + 1, d, generator=gen, dtype=torch.float64) * 0.7
    hidden = torch.randn(n, d, generator=gen, dtype=torch.float64)
    target = torch.randint(1, v + 1, (n,), generator=gen)
    counts = np.r_[0, 1000.0 / np.arange(1, v + 1)]
    sampler = PopularityNegatives(counts)
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    full = F.cross_entropy(h @ w[1:].t(), target - 1, reduction="sum")
    full_grads = torch.autograd.grad(full, (h, w))

    def error(grads):
        return max(float((g - f).norm() / f.norm()) for g, f in zip(grads, full_grads))

    corrected = error(_mean_sampled_gradient(hidden, weight, target, sampler, 300, 200, True))
    uncorrected = error(_mean_sampled_gradient(hidden, weight, target, sampler, 300, 200, False))
    assert corrected < 0.05, corrected
    assert uncorrected > 0.3, uncorrected


def test_log_expected_count_of_each_sampler_and_of_a_mix():
    ds = synthetic(num_users=30, num_items=40, num_intents=3, seed=2)
    split = ds.leave_one_out(max_len=8)
    batch = next(split.train_batches(30, seed=0, epoch=0, num_negatives=6, negatives="uniform,popularity:2"))
    pop = PopularityNegatives.from_split(split)
    uni = UniformNegatives(ds)
    inb = InBatchNegatives()
    items = batch.negative_ids
    for sampler in (pop, uni, inb):
        got = sampler.log_expected_count(items, 6, batch.users, batch.target_ids)
        want = sampler.log_q(items, batch.users, batch.target_ids) + math.log(6)
        real = items != 0
        torch.testing.assert_close(got[real], want[real].float())
        assert bool((got[~real] == 0).all())
    mix = MixedNegatives([(pop, 2), (uni, 1), (inb, 3)])
    assert [type(s) for s, _ in mix.parts][0] is UniformNegatives  # the engine's draws first
    counts = mix.counts(6)
    assert counts == [1, 2, 3] and mix.engine_count(6) == 1
    got = mix.log_expected_count(items, 6, batch.users, batch.target_ids)
    expected = sum(c * s.log_q(items, batch.users, batch.target_ids).double().exp()
                   for (s, _), c in zip(mix.parts, counts))
    real = items != 0
    torch.testing.assert_close(got[real], expected[real].log().float())
    assert MixedNegatives([(pop, 1), (inb, 1)]).counts(5) == [3, 2]  # largest remainder, ties to the first


def test_mixed_negatives_in_batches():
    ds = synthetic(num_users=40, num_items=60, num_intents=3, seed=4)
    split = ds.leave_one_out(max_len=10)
    kw = dict(seed=5, epoch=1, num_negatives=4)
    batch = next(split.train_batches(40, negatives="uniform,popularity", with_log_q=True, **kw))
    uniform = next(split.train_batches(40, **{**kw, "num_negatives": 2}))
    assert batch.negative_ids.shape == batch.target_ids.shape + (4,)
    real = batch.target_ids != 0
    # The uniform half is the engine's usual draw (same stream), the rest popularity.
    assert torch.equal(batch.negative_ids[..., :2], uniform.negative_ids)
    assert bool((batch.negative_ids[real] > 0).all()) and bool((batch.negative_ids[~real] == 0).all())
    log_q = batch.features[NEGATIVE_LOG_Q]
    assert log_q.shape == batch.negative_ids.shape and log_q.dtype == torch.float32
    mix = make_sampler("uniform,popularity", split)
    torch.testing.assert_close(log_q, mix.log_expected_count(batch.negative_ids, 4, batch.users,
                                                             batch.target_ids))
    # Without with_log_q: no feature.
    assert NEGATIVE_LOG_Q not in next(split.train_batches(40, negatives="popularity", **kw)).features


def test_ddp_rank_batches_carry_the_negatives_and_their_log_q():
    """[DDP] a rank's rows (ShardedTrainBatches, what DistributedContext.train_batches
    yields) get the trainer's negatives and log-Q correction, as one process's batches."""
    from seqrec.data.splits import build_train_batch
    from seqrec.data.torch_data import ShardedTrainBatches

    ds = synthetic(num_users=40, num_items=60, num_intents=3, seed=4)
    split = ds.leave_one_out(max_len=10)
    kw = dict(seed=5, epoch=1, num_negatives=3)
    batches = list(ShardedTrainBatches(split, 8, negatives="popularity", with_log_q=True, rank=1, world_size=2,
                                       **kw))
    assert batches
    for batch in batches:
        want = build_train_batch(split, batch.users.numpy(), negatives="popularity", with_log_q=True, **kw)
        assert torch.equal(batch.negative_ids, want.negative_ids)
        torch.testing.assert_close(batch.features[NEGATIVE_LOG_Q], want.features[NEGATIVE_LOG_Q])
    assert NEGATIVE_LOG_Q not in next(iter(ShardedTrainBatches(split, 8, rank=1, world_size=2, **kw))).features


def test_parse_negatives_errors():
    assert parse_negatives("uniform, popularity:3") == [("uniform", 1.0), ("popularity", 3.0)]
    for bad, match in (("hard", "unknown sampler 'hard'"), ("uniform:0", "share of 'uniform' must be a positive"),
                       ("uniform:x", "share of 'uniform'"), ("uniform,uniform", "appears twice"), ("", "sampler name")):
        with pytest.raises(ValueError, match=match):
            parse_negatives(bad)
    with pytest.raises(ValueError, match="TrainConfig.log_q"):
        TrainConfig(log_q="yes")
    with pytest.raises(ValueError, match="unknown sampler"):
        TrainConfig(train_negatives="uniform,bogus")
    with pytest.raises(ValueError, match="grad_clip cannot be combined with sparse_embeddings"):
        TrainConfig(sparse_embeddings=True, grad_clip=1.0)


# ---------------------------------------------------------------------- models
def _small_model(name, ds, **kw):
    small = dict(num_items=ds.num_items, max_len=10, hidden_size=16)
    if name == "sasrec":
        return build_model("sasrec", **small, num_layers=1, num_heads=2, loss="sampled", **kw)
    if name == "difsr":
        return build_model("difsr", **small, num_layers=1, num_heads=2, inner_size=16, attribute_sizes=4,
                           loss="sampled", attributes=ds, **attribute_config(ds, ["category"]), **kw)
    if name == "dss":
        return build_model("dss", **small, num_layers=1, num_intentions=2, loss="sampled", **kw)
    return build_model("sine", **small, num_prototypes=6, num_interests=2, **kw)


@pytest.mark.parametrize("name", ["sasrec", "difsr", "dss", "sine"])
def test_every_model_trains_with_the_log_q_sampled_softmax(name):
    ds = synthetic(num_users=24, num_items=50, num_intents=3, mean_length=8, max_length=12, seed=7)
    split = ds.leave_one_out(max_len=10)
    torch.manual_seed(0)
    model = _small_model(name, ds)
    assert model.uses_negative_log_q
    batch = next(split.train_batches(24, seed=1, epoch=0, num_negatives=8, negatives="uniform,popularity,in-batch",
                                     with_log_q=True))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    losses = []
    for _ in range(8):
        loss = model.loss_terms(batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.8 * losses[0], losses
    # The correction is used: a different log-Q gives a different loss.
    shifted = batch._replace(features={NEGATIVE_LOG_Q: batch.features[NEGATIVE_LOG_Q] + torch.rand(
        batch.negative_ids.shape)})
    model.eval()

    def next_item_loss(b):  # DSS's seq2seq term draws split points: compare the next-item term
        out = model.loss_terms(b)
        return float(out.terms.get("seq2item", out.terms.get("item", out.loss)).detach())

    assert next_item_loss(shifted) != pytest.approx(next_item_loss(batch))
    bad = batch._replace(features={NEGATIVE_LOG_Q: torch.zeros(3)})
    with pytest.raises(ValueError, match="negative_log_q"):
        model.loss_terms(bad)


def test_trainer_runs_sampled_sasrec_with_popularity_negatives_and_sparse_rows():
    ds = synthetic(num_users=32, num_items=40, num_intents=3, mean_length=8, max_length=12, seed=11)
    torch.manual_seed(0)
    model = _small_model("sasrec", ds)
    config = TrainConfig(epochs=2, batch_size=16, lr=1e-2, num_negatives=5, train_negatives="popularity",
                         sparse_embeddings=True, sampled_negatives=5, ks=(5,), metric="NDCG@5", progress=False)
    trainer = Trainer(model, ds.leave_one_out(max_len=10), config)
    assert isinstance(trainer.optimizer, RowwiseAdam) and model.item_table().sparse
    assert trainer._negative_options() == {"negatives": "popularity", "with_log_q": True}
    result = trainer.fit()
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    # uniform + auto: no correction (the published settings); forced on: corrected.
    assert Trainer(model, ds.leave_one_out(max_len=10), TrainConfig(sampled_negatives=5))._negative_options() == {}
    on = Trainer(model, ds.leave_one_out(max_len=10), TrainConfig(sampled_negatives=5, log_q=True))
    assert on._negative_options() == {"negatives": "uniform", "with_log_q": True}


def test_a_users_optimizer_with_sparse_embeddings_is_rowwise_adam_or_refused():
    import functools

    ds = synthetic(num_users=32, num_items=40, num_intents=3, mean_length=8, max_length=12, seed=11)
    config = TrainConfig(epochs=1, batch_size=16, lr=1e-2, sparse_embeddings=True, sampled_negatives=5, ks=(5,),
                         metric="NDCG@5", progress=False)
    split = ds.leave_one_out(max_len=10)
    model = _small_model("sasrec", ds)
    # Adam, AdamW, ... refuse a sparse gradient at their first step: refused here, naming both settings.
    for optimizer in (functools.partial(torch.optim.AdamW, lr=1e-3), torch.optim.SGD(model.parameters(), lr=0.1)):
        with pytest.raises(ValueError, match=r"optimizer= \(\w+\) .* sparse_embeddings=True.*RowwiseAdam"):
            Trainer(model, split, config, optimizer=optimizer)
        assert not model.item_table().sparse  # nothing changed by the refused call
    # RowwiseAdam (a factory or an object) takes the sparse table: it is made sparse.
    for optimizer in (functools.partial(RowwiseAdam, lr=1e-2), RowwiseAdam(model.parameters(), lr=1e-2)):
        model.item_table().sparse = False
        sparse_steps = []
        trainer = Trainer(model, split, config, optimizer=optimizer, callbacks=[LambdaCallback(
            on_step_end=lambda t, step, loss: sparse_steps.append(t.model.item_table().weight.grad.is_sparse))])
        assert model.item_table().sparse and isinstance(trainer.optimizer, RowwiseAdam)
        trainer.fit()
        assert sparse_steps and all(sparse_steps)


# ---------------------------------------------------------------------- streamed CE
@pytest.mark.parametrize("block", [1, 3, 7, 64])
def test_streamed_ce_equals_dense_ce_and_gradchecks(block):
    gen = torch.Generator().manual_seed(block)
    n, v, d = 9, 13, 4
    hidden = torch.randn(n, d, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, d, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, v, (n,), generator=gen)
    got = streamed_softmax_nll(hidden, weight, target, block_items=block)
    want = F.cross_entropy(hidden @ weight.t(), target, reduction="none")
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g in (torch.full((n,), 0.5, dtype=torch.float64), torch.randn(n, generator=gen, dtype=torch.float64)):
        for a, b in zip(torch.autograd.grad(got, (hidden, weight), g, retain_graph=True),
                        torch.autograd.grad(want, (hidden, weight), g, retain_graph=True)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda h, w: streamed_softmax_nll(h, w, target, block_items=block),
                                    (hidden, weight))


def test_streamed_ce_large_logits_and_one_sided_gradients():
    # Logits far beyond exp's range: the running log-sum-exp rescales, nothing overflows.
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, 3, generator=gen) * 60
    weight = torch.randn(40, 3, generator=gen) * 30
    target = torch.randint(0, 40, (5,), generator=gen)
    got = streamed_softmax_nll(hidden, weight, target, block_items=6)
    torch.testing.assert_close(got, F.cross_entropy(hidden @ weight.t(), target, reduction="none"))
    w = weight.clone().requires_grad_()
    (gw,) = torch.autograd.grad(streamed_softmax_nll(hidden, w, target, block_items=6).sum(), w)
    (want,) = torch.autograd.grad(F.cross_entropy(hidden @ w.t(), target, reduction="sum"), w)
    torch.testing.assert_close(gw, want)


def test_softmax_nll_streams_above_its_memory_budget():
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(20, 8, generator=gen, requires_grad=True)
    weight = torch.randn(100, 8, generator=gen, requires_grad=True)
    target = torch.randint(0, 100, (20,), generator=gen)
    dense = softmax_nll(hidden, weight, target)
    streamed = softmax_nll(hidden, weight, target, memory=20 * 4 * 16)  # blocks of 16 items
    assert "Streamed" not in type(softmax_nll(hidden, weight, target, memory=2 * 20 * 104 * 4).grad_fn).__name__
    assert "Streamed" in type(streamed.grad_fn).__name__ and "Streamed" not in type(dense.grad_fn).__name__
    torch.testing.assert_close(streamed, dense)
    for a, b in zip(torch.autograd.grad(streamed.sum(), (hidden, weight)),
                    torch.autograd.grad(dense.sum(), (hidden, weight))):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="memory must be a positive int"):
        softmax_nll(hidden, weight, target, memory=0)
    with pytest.raises(ValueError, match="block_items must be a positive int"):
        streamed_softmax_nll(hidden, weight, target, block_items=0)


# ---------------------------------------------------------------------- row-wise Adam
def _tables(weight_decay=0.0):
    torch.manual_seed(0)
    dense = nn.Embedding(20, 3, dtype=torch.float64)
    lin = nn.Linear(3, 1, dtype=torch.float64)
    sparse = nn.Embedding(20, 3, sparse=True, dtype=torch.float64)
    lin2 = nn.Linear(3, 1, dtype=torch.float64)
    sparse.load_state_dict(dense.state_dict())
    lin2.load_state_dict(lin.state_dict())
    kw = dict(lr=0.1, betas=(0.8, 0.9), weight_decay=weight_decay)
    return (dense, lin, torch.optim.Adam([*dense.parameters(), *lin.parameters()], foreach=False, **kw),
            sparse, lin2, RowwiseAdam([*sparse.parameters(), *lin2.parameters()], **kw))


def _step(table, lin, opt, ids):
    opt.zero_grad()
    lin(table(ids)).pow(2).sum().backward()
    opt.step()


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_rowwise_adam_touched_rows_follow_adam_untouched_rows_stay(weight_decay):
    dense, lin, opt, sparse, lin2, ropt = _tables(weight_decay)
    before = sparse.weight.detach().clone()
    ids = torch.tensor([3, 5, 3, 11])  # a duplicate row: its gradients add up
    _step(dense, lin, opt, ids)
    _step(sparse, lin2, ropt, ids)
    assert sparse.weight.grad.is_sparse
    touched = torch.tensor([3, 5, 11])
    untouched = torch.tensor([i for i in range(20) if i not in (3, 5, 11)])
    torch.testing.assert_close(sparse.weight[touched], dense.weight[touched], rtol=1e-12, atol=1e-12)
    assert torch.equal(sparse.weight[untouched], before[untouched])
    assert not torch.equal(sparse.weight[touched], before[touched])
    torch.testing.assert_close(lin2.weight, lin.weight, rtol=1e-12, atol=1e-12)  # dense params: Adam's step
    # The same rows at every step: dense Adam exactly, step after step.
    for _ in range(4):
        _step(dense, lin, opt, ids)
        _step(sparse, lin2, ropt, ids)
    torch.testing.assert_close(sparse.weight[touched], dense.weight[touched], rtol=1e-10, atol=1e-12)
    # Lazy: a row left out of a step stays where it is (dense Adam moves it by momentum).
    _step(dense, lin, opt, torch.tensor([5]))
    _step(sparse, lin2, ropt, torch.tensor([5]))
    frozen = sparse.weight[3].detach().clone()
    _step(sparse, lin2, ropt, torch.tensor([5]))
    assert torch.equal(sparse.weight[3], frozen)
    assert not torch.allclose(dense.weight[3], sparse.weight[3])


def test_rowwise_adam_state_dict_resumes_exactly():
    _, _, _, sparse, lin, opt = _tables()
    batches = [torch.tensor(b) for b in ([1, 2], [2, 7, 7], [0, 19], [4, 2])]
    for ids in batches[:2]:
        _step(sparse, lin, opt, ids)
    saved = ({k: v.clone() for k, v in sparse.state_dict().items()}, {k: v.clone() for k, v in lin.state_dict().items()},
             copy.deepcopy(opt.state_dict()))
    state = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in saved[2]["state"][0].items()}
    for ids in batches[2:]:
        _step(sparse, lin, opt, ids)
    _, _, _, sparse2, lin2, opt2 = _tables()
    sparse2.load_state_dict(saved[0])
    lin2.load_state_dict(saved[1])
    opt2.load_state_dict(saved[2])
    assert torch.equal(opt2.state[sparse2.weight]["exp_avg"], state["exp_avg"])
    for ids in batches[2:]:
        _step(sparse2, lin2, opt2, ids)
    assert torch.equal(sparse2.weight, sparse.weight) and torch.equal(lin2.weight, lin.weight)


def test_build_optimizer_and_the_trainer_resume_bit_for_bit_with_sparse_embeddings(tmp_path):
    class Killed(Exception):
        pass

    ds = synthetic(num_users=32, num_items=40, num_intents=3, mean_length=8, max_length=12, seed=11)
    config = TrainConfig(epochs=3, batch_size=16, lr=5e-2, num_negatives=3, train_negatives="uniform,popularity",
                         sparse_embeddings=True, patience=0, sampled_negatives=5, ks=(5,), metric="NDCG@5", seed=3,
                         progress=False)

    def run(out, kill_after=None):
        torch.manual_seed(0)
        trainer = Trainer(_small_model("sasrec", ds), ds.leave_one_out(max_len=10), config, out_dir=out)
        if kill_after is not None:
            def on_epoch(record):
                if record["epoch"] == kill_after:
                    raise Killed

            with pytest.raises(Killed):
                trainer.fit(on_epoch=on_epoch)
            torch.manual_seed(99)
            trainer = Trainer(_small_model("sasrec", ds), ds.leave_one_out(max_len=10), config, out_dir=out)
            assert trainer.resume() and trainer.epoch == kill_after
        return trainer.fit(), trainer

    full, full_trainer = run(tmp_path / "full")
    resumed, resumed_trainer = run(tmp_path / "killed", kill_after=1)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    for k, v in full_trainer.model.state_dict().items():
        assert torch.equal(v, resumed_trainer.model.state_dict()[k]), k
    # Without item_table(): a clear error.
    with pytest.raises(ValueError, match="sparse_embeddings: Linear has no item_table"):
        build_optimizer(nn.Linear(2, 2), config)


# ---------------------------------------------------------------------- command line
def test_cli_catalog_options(tmp_path, capsys):
    from seqrec.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--data", "synthetic", "--train-negatives", "uniform,hard"])
    assert "unknown sampler 'hard'" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main(["train", "--model", "sasrec", "--data", "synthetic", "--synthetic-users", "40",
                 "--synthetic-items", "30", "--max-len", "8", "--hidden-size", "8", "--num-layers", "1",
                 "--epochs", "1", "--batch-size", "20", "--sampled-negatives", "5", "--loss", "sampled",
                 "--train-negatives", "uniform,popularity", "--num-negatives", "4", "--log-q", "on",
                 "--sparse-embeddings", "--out", str(out)]) == 0
    from seqrec.train import load_checkpoint

    train = load_checkpoint(out)["train_config"]
    assert (train["train_negatives"], train["log_q"], train["sparse_embeddings"], train["num_negatives"]) == (
        "uniform,popularity", True, True, 4)
