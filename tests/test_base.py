"""The model interface (seqrec.models.base): one implementation of score / recommend /
item_embeddings, LossOutput from every model, explicit capabilities, and the id checks of
the training entry points (issue 23 item 14)."""
from __future__ import annotations

import pytest
import torch

from seqrec.data import synthetic
from seqrec.models import DIFSR, DSS, SINE, LossOutput, SASRec, SequentialRecommender, build_model
from seqrec.models import base
from seqrec.models.difsr import attribute_config

NUM_ITEMS = 30


def _models():
    ds = synthetic(num_users=20, num_items=NUM_ITEMS, num_intents=3, seed=1)
    small = dict(num_items=NUM_ITEMS, max_len=8, hidden_size=8)
    difsr = build_model("difsr", **small, num_layers=1, num_heads=2, inner_size=8, attribute_sizes=4, loss="bce",
                        attributes=ds, **attribute_config(ds, ["category"]))
    return {
        "sasrec": build_model("sasrec", **small, num_layers=1, num_heads=2, loss="bce"),
        "difsr": difsr,
        "sine": build_model("sine", **small, num_prototypes=6, num_interests=2),
        "dss": build_model("dss", **small, num_layers=1, num_intentions=2, loss="sampled"),
    }


def _batch():
    g = torch.Generator().manual_seed(0)
    inputs = torch.randint(1, NUM_ITEMS + 1, (3, 8), generator=g)
    inputs[0, :4] = 0
    targets = torch.roll(inputs, -1, 1)
    targets[:, -1] = torch.randint(1, NUM_ITEMS + 1, (3,), generator=g)
    targets[0, :4] = 0
    negatives = torch.randint(1, NUM_ITEMS + 1, (3, 8), generator=g) * (targets > 0)
    return inputs, targets, negatives


def test_shared_methods_have_one_implementation():
    for cls in (SASRec, DIFSR, SINE, DSS):
        assert issubclass(cls, SequentialRecommender)
        assert cls.recommend is SequentialRecommender.recommend
        assert cls.item_embeddings is SequentialRecommender.item_embeddings
        assert cls._history_tensor is SequentialRecommender._history_tensor
        assert cls.loss is SequentialRecommender.loss
    assert SASRec.score is DIFSR.score is SequentialRecommender.score  # dot product with the last state


@pytest.mark.parametrize("name", ["sasrec", "difsr", "sine", "dss"])
def test_every_model_returns_a_loss_output_and_recommends(name):
    model = _models()[name]
    out = model.loss_terms(*_batch())
    assert isinstance(out, LossOutput) and out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert all(v.dim() == 0 for v in out.terms.values())
    ids, scores = model.recommend([[1, 2, 3], [4]], k=5)
    assert ids.shape == (2, 5) and torch.all(ids > 0)
    assert model.item_embeddings().shape == (NUM_ITEMS + 1, 8)


def test_capabilities_are_explicit():
    models = _models()
    assert [m.has_interests for m in models.values()] == [False, False, True, True]
    assert [m.uses_side_information for m in models.values()] == [False, True, False, False]
    assert models["sine"].item_concepts().shape == (NUM_ITEMS,)
    assert all(models[n].item_concepts() is None for n in ("sasrec", "difsr", "dss"))
    with pytest.raises(NotImplementedError, match="single interest"):
        models["sasrec"].interests(torch.ones(1, 3, dtype=torch.long))


@pytest.mark.parametrize("name", ["sasrec", "difsr", "sine", "dss"])
@pytest.mark.parametrize("arg,value", [("input_ids", NUM_ITEMS + 1), ("target_ids", NUM_ITEMS + 5),
                                       ("negative_ids", -1)])
def test_out_of_range_ids_in_loss_name_the_argument(name, arg, value):
    model = _models()[name]
    batch = dict(zip(("input_ids", "target_ids", "negative_ids"), _batch()))
    batch[arg] = batch[arg].clone()
    batch[arg][1, 5] = value
    # SASRec/DIF-SR/SINE call their first argument item_seq
    with pytest.raises(ValueError, match=rf"(item_seq|{arg}) holds item id {value} outside \[0, num_items={NUM_ITEMS}\]"):
        model.loss(*batch.values())


def test_id_check_is_one_aminmax_and_skipped_under_compile(monkeypatch):
    ids = torch.tensor([[0, 3, 31]])
    with pytest.raises(ValueError, match="ids holds item id 31"):
        base.check_ids("ids", ids, high=30)
    base.check_ids("ids", ids)  # no bound: dtype and shape only
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    base.check_ids("ids", ids, high=30)  # tracing: no data-dependent check
    with pytest.raises(ValueError, match="int64"):
        base.check_ids("ids", ids.float(), high=30)


# ---------------------------------------------------------------- the batch object (issue 28 item 5)
def _train_batch(**over):
    from seqrec.data import TrainBatch

    inputs, targets, negatives = _batch()
    fields = dict(users=torch.arange(3), input_ids=inputs, target_ids=targets, negative_ids=negatives,
                  lengths=(inputs != 0).sum(1))
    fields.update(over)
    return TrainBatch(**fields)


@pytest.mark.parametrize("name", ["sasrec", "difsr", "sine", "dss"])
def test_loss_terms_takes_the_batch_and_builds_the_mask_from_its_lengths(name):
    model = _models()[name].eval()
    torch.manual_seed(3)  # DSS draws its split point
    from_batch = model.loss_terms(_train_batch())
    torch.manual_seed(3)
    from_tensors = model.loss_terms(*_batch())
    assert torch.equal(from_batch.loss, from_tensors.loss)
    assert from_batch.terms.keys() == from_tensors.terms.keys()
    # The lengths reach the padding mask: lengths that disagree with the zeros are refused.
    wrong = _train_batch(lengths=torch.tensor([8, 8, 8]))
    with pytest.raises(ValueError, match="lengths"):
        model.loss_terms(wrong)


def test_loss_terms_refuses_what_is_not_a_batch():
    model = _models()["sasrec"]
    with pytest.raises(ValueError, match="needs target_ids"):
        model.loss_terms(_batch()[0])
    with pytest.raises(ValueError, match="TrainBatch or an input_ids tensor, got dict without"):
        model.loss_terms({"input_ids": _batch()[0]})
    with pytest.raises(ValueError, match="from the batch, not beside it"):
        model.loss_terms(_train_batch(), _batch()[1])


def test_trainer_passes_the_batch_object():
    from seqrec.data import TrainBatch
    from seqrec.train import TrainConfig, Trainer

    seen = []

    class Recording(SASRec):
        def batch_loss(self, input_ids, target_ids, negative_ids=None, *, lengths=None, features=None):
            seen.append((lengths, features))
            return super().batch_loss(input_ids, target_ids, negative_ids, lengths=lengths, features=features)

    ds = synthetic(num_users=40, num_items=NUM_ITEMS, seed=2)
    model = Recording(build_model("sasrec", num_items=ds.num_items, max_len=8, hidden_size=8, num_layers=1,
                                  num_heads=1).config)
    split = ds.leave_one_out(max_len=8)
    Trainer(model, split, TrainConfig(epochs=1, batch_size=16, sampled_negatives=5)).fit()
    first = next(split.train_batches(16, seed=TrainConfig().seed, epoch=0))
    assert len(seen) == split.num_train_batches(16)
    assert all(isinstance(lengths, torch.Tensor) and features == {} for lengths, features in seen)
    assert isinstance(first, TrainBatch) and torch.equal(seen[0][0], first.lengths)
