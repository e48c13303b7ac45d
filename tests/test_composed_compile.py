"""torch.compile(fullgraph=True) of the composed model's training step (issue 29 item 1).

The composed model's step traces into one graph for its compositions (side information,
interests, attention, next-item loss, DIF-SR's attribute predictors, DSS's seq2seq,
SINE's regulariser, S3-Rec's four terms): under tracing every position is a row and the
untrained ones weigh 0, and each part takes its model's static-shape path. The compiled
step gives the eager loss, terms and gradients on the same batch (as
tests/test_compile_step.py checks the papers' models, on the ``aot_eager`` backend: the
traced forward and backward graphs without inductor's code generation, minutes on 2
cores; dropout 0, and DSS's seq2seq split, drawn inside the graph, comes on aot_eager from
the generator eager draws it from). The trainer's compiled step (S3-Rec's corruption drawn
before the graph: ``compiled_step_options``) trains like eager, also over a short last
batch (dynamic shapes), ``seqrec train --model composed --compile`` trains and evaluates,
and a term of one's own that does not read the static rows is refused up front.
"""
from __future__ import annotations

import functools
import json

import pytest
import torch
import torch._dynamo

from seqrec.cli import main
from seqrec.data import synthetic
from seqrec.models import ComposedRecommender, LossOutput, Objective, build_model
from seqrec.models.composed import config_objectives
from seqrec.models.difsr import attribute_config
from seqrec.train import TrainConfig, Trainer
from seqrec.train import trainer as trainer_module
from seqrec.train.trainer import compiled_step
from test_compile_step import _assert_same, _loss_and_grads
from test_composed import TINY

# conftest.one_thread: tiny tensors, one intra-op thread
pytestmark = [pytest.mark.compile, pytest.mark.usefixtures("one_thread")]

MAX_LEN = 12
FIELDS = ["category", "brand"]
S3REC = dict(aap_weight=0.2, mip_weight=1.0, map_weight=0.5, sp_weight=0.5)


@pytest.fixture(scope="module")
def dataset():
    return synthetic(num_users=40, num_items=30, num_intents=3, seed=5)


def _model(ds, **parts) -> ComposedRecommender:
    fields = dict(num_items=ds.num_items, max_len=MAX_LEN, hidden_size=8, num_layers=1, num_heads=2,
                  hidden_dropout=0.0, attention_dropout=0.0)
    if parts.get("side_information") == "difsr" or parts.get("aap_weight") or parts.get("map_weight"):
        fields.update(attribute_sizes=4, inner_size=8, **attribute_config(ds, FIELDS))
    torch.manual_seed(0)
    return build_model("composed", attributes=ds, **{**fields, **parts}).train()


# Each case composes several parts, so that few graphs (tens of seconds each on the
# loaded 2-core machine) cover every part, direction and loss: (parts, negatives per
# position, popularity negatives with their log-Q correction, parameters of the parts
# that must get a gradient from the graph).
CASES = {
    "sasrec-bce-bidirectional-own-term": (dict(loss="bce", attention="bidirectional"), 1, False, ()),
    "difsr-sampled-log-q-attributes-s3rec": (
        dict(side_information="difsr", fusion="gate", loss="sampled", attribute_loss_weight=(1.0, 0.5), **S3REC),
        4, True, ("embedding.attributes.0.weight", "predictors.1.weight", "aap.weight", "mip.weight", "map.weight",
                  "sp.weight", "attribute_embedding.weight", "mask_embedding.weight")),
    "dss-ce-seq2seq": (dict(interests="dss", num_heads=1, num_intentions=2, seq2seq_weight=0.5), 1, False,
                       ("prototypes", "key_map.weight", "distance.weight")),
    "sine-ce-prefixes-covariance-s3rec": (
        dict(interests="sine", num_prototypes=6, num_interests=2, max_prefixes=3, reg_weight=0.1, mip_weight=1.0,
             sp_weight=0.5), 1, False,
        ("prototypes", "concept_key.weight", "next_key.weight", "mip.weight", "sp.weight", "mask_embedding.weight")),
}


def _norm(model, batch):
    """A term of one's own: the mean squared norm of the rows' states (``batch.mean``:
    over the trained rows, eager or compiled)."""
    return LossOutput(batch.mean(batch.hidden.pow(2).sum(-1)))


def _batch(ds, negatives, popularity):
    options = {"negatives": "popularity", "with_log_q": True} if popularity else {}
    split = ds.leave_one_out(max_len=MAX_LEN)
    batch = list(split.train_batches(16, seed=0, epoch=0, num_negatives=negatives, **options))[-1]
    assert popularity == ("negative_log_q" in batch.features)
    assert bool((batch.input_ids == 0).any()), "the batch must hold padding to test the weighted rows"
    return batch


@pytest.mark.parametrize("case", sorted(CASES))
def test_composed_step_is_one_graph_and_matches_eager(case, dataset):
    parts, negatives, popularity, heads = CASES[case]
    torch._dynamo.reset()
    batch = _batch(dataset, negatives, popularity)
    model = _model(dataset, **parts)
    if case.endswith("own-term"):  # declared: it reads the static rows through batch.mean
        model.objectives = (*model.objectives, Objective("norm", 0.1, _norm, compiles=True))
    assert model.compiles_training_step and model.eager_only_reason == ""
    options = model.compiled_step_options(batch)  # S3-Rec's corruption, drawn before the graph
    assert set(options) == ({"masking"} if model.config.s3rec_objectives else set())
    if model.config.interests == "dss":  # DSS's split point, fixed so that both runs see the same one
        options["split"] = model.sample_split(batch.lengths)
    terms = {}

    def step(b):
        out = model.loss_terms(b, **options)
        terms[torch.compiler.is_compiling()] = out.terms
        return out.loss

    # fullgraph=True raises at the first graph break.
    compiled = _loss_and_grads(model, torch.compile(step, fullgraph=True, backend="aot_eager"), batch)
    eager = _loss_and_grads(model, step, batch)
    _assert_same(eager, compiled)
    names = [o.name for o in model.objectives]
    assert set(names) <= set(terms[False]) and terms[True].keys() == terms[False].keys()
    for name, value in terms[False].items():
        torch.testing.assert_close(terms[True][name].to(value.dtype), value.detach(), rtol=1e-5, atol=1e-6,
                                   msg=name)
    # The parts train in the graph (the encoder and each part's own parameters).
    assert {"embedding.item.weight", "encoder.layers.0.attention.query.weight", *heads} <= set(compiled[1])


def test_s3rec_terms_under_compile_need_the_corruption_from_outside(dataset):
    """seq_mask's seed is a Python int drawn from torch's generator: a graph cannot draw
    it, so loss_terms without ``masking`` says what to pass rather than breaking."""
    torch._dynamo.reset()
    model = _model(dataset, mip_weight=1.0)
    batch = _batch(dataset, 1, False)
    step = torch.compile(lambda b: model.loss_terms(b).loss, fullgraph=True, backend="aot_eager")
    # Dynamo reports the ValueError raised while tracing inside its Unsupported (a RuntimeError).
    with pytest.raises((ValueError, RuntimeError), match=r"loss_terms\(batch, \*\*model.compiled_step_options"):
        step(batch)


def test_cli_compiled_training_trains_like_eager(tmp_path, monkeypatch, capsys):
    """``seqrec train --model composed --compile`` with S3-Rec's terms: the trainer draws
    their corruption before the graph (compiled_step_options) from the generator the eager
    step draws it from, so the compiled run (one batch an epoch: one graph) logs the
    eager run's losses and terms and ends at its test metrics; evaluate reproduces them."""
    torch._dynamo.reset()
    monkeypatch.setattr(trainer_module, "compiled_step", functools.partial(compiled_step, backend="aot_eager"))
    parts = ["--attention", "bidirectional", "--loss", "sampled", "--num-negatives", "4", "--mip-weight", "1",
             "--sp-weight", "0.5", "--dropout", "0", "--attention-dropout", "0", "--batch-size", "256"]
    runs = {}
    for compile in (False, True):
        out = tmp_path / f"compile-{compile}"
        argv = ["train", "--model", "composed", *TINY, "--epochs", "2", *parts, *(["--compile"] * compile),
                "--out", str(out)]
        assert main(argv) == 0
        printed = capsys.readouterr().out
        assert json.loads((out / "config.json").read_text())["train"]["compile"] is compile
        history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
        runs[compile] = history, json.loads((out / "result.json").read_text())["test_full"]
    (eager, eager_test), (compiled, compiled_test) = runs[False], runs[True]
    assert len(compiled) == len(eager) == 2
    for e, c in zip(eager, compiled):
        assert c["loss"] == pytest.approx(e["loss"], rel=1e-4)
        assert set(c["loss_terms"]) == set(e["loss_terms"]) == {"item", "mip", "sp"}
        for name, value in e["loss_terms"].items():
            assert c["loss_terms"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    assert compiled_test == pytest.approx(eager_test, rel=1e-3, abs=1e-6)
    assert compiled_test["NDCG@20"] > 0
    assert main(["evaluate", "--checkpoint", str(tmp_path / "compile-True")]) == 0
    assert capsys.readouterr().out.split("\n", 1)[1].strip() == printed.split("\n", 1)[1].strip()


@pytest.mark.parametrize("parts", [
    dict(side_information="difsr", fusion="gate", interests="dss", num_heads=1, num_intentions=2,
         attribute_loss_weight=0.5, seq2seq_weight=0.5),
    dict(interests="sine", num_prototypes=6, num_interests=2, max_prefixes=3, reg_weight=0.1),
], ids=["difsr-dss-seq2seq", "sine"])
def test_trainer_compiles_across_batch_sizes_like_eager(parts, dataset, monkeypatch):
    """TrainConfig(compile=True) on the composed model over two epochs whose last batch
    is short (recompiled, then dynamic shapes): each epoch's loss and terms are eager's
    (as test_compile_step checks the papers' models)."""
    torch._dynamo.reset()
    monkeypatch.setattr(trainer_module, "compiled_step", functools.partial(compiled_step, backend="aot_eager"))
    split = dataset.leave_one_out(max_len=MAX_LEN)
    sizes = [int(b.input_ids.size(0)) for b in split.train_batches(16, seed=1, epoch=0)]
    assert len(sizes) > 2 and sizes[-1] < sizes[0], "a short last batch after full ones"
    history = {}
    for compile in (False, True):
        config = TrainConfig(epochs=2, batch_size=16, lr=1e-2, sampled_negatives=5, ks=(5,), metric="NDCG@5",
                             progress=False, compile=compile, seed=1)
        history[compile] = Trainer(_model(dataset, **parts), split, config).fit().history
    for eager, compiled in zip(history[False], history[True], strict=True):
        assert compiled["loss"] == pytest.approx(eager["loss"], rel=1e-4)
        assert compiled["loss_terms"].keys() == eager["loss_terms"].keys()
        for name, value in eager["loss_terms"].items():
            assert compiled["loss_terms"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


def test_a_term_of_ones_own_must_declare_the_static_rows(dataset):
    """A term that does not say it reads a compiled step's rows (every position, weighed
    by ``EncodedBatch.weight``) would average padding rows under torch.compile: the
    trainer refuses compile=True up front naming it (declared, it compiles: the first case
    of test_composed_step_is_one_graph_and_matches_eager)."""
    config = _model(dataset).config
    split = dataset.leave_one_out(max_len=MAX_LEN)
    own = ComposedRecommender(config, objectives=(*config_objectives(config), Objective("norm", 1e-2, _norm)))
    assert not own.compiles_training_step and "['norm']" in own.eager_only_reason
    with pytest.raises(ValueError, match=r"TrainConfig.compile: ComposedRecommender's training step runs eagerly "
                                         r"only: objectives \['norm'\] do not declare"):
        Trainer(own, split, TrainConfig(epochs=1, batch_size=16, sampled_negatives=5, progress=False, compile=True),
                loggers=[])
    Trainer(own, split, TrainConfig(epochs=1, batch_size=16, sampled_negatives=5, progress=False), loggers=[])  # eager
    with pytest.raises(ValueError, match="compiles must be True or False"):
        ComposedRecommender(config, objectives=(Objective("norm", 1.0, _norm, compiles="yes"),))
