"""bf16 autocast training of every model (issue 24, part 4) and the trainer/CLI settings
that turn it (and torch.compile) on: ``TrainConfig(autocast="bf16", compile=True)``,
``seqrec train --autocast bf16 --compile``."""
from __future__ import annotations

import json
import math

import pytest
import torch

from seqrec.cli import main
from seqrec.data import synthetic
from seqrec.models import build_model
from seqrec.models.difsr import attribute_config
from seqrec.models.losses import mixture_nll, softmax_nll
from seqrec.models.s3rec import item_attribute_table
from seqrec.train import TrainConfig, Trainer
from seqrec.train import trainer as trainer_module

MAX_LEN = 12


# conftest.one_thread: tiny tensors, one intra-op thread
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset():
    return synthetic(num_users=48, num_items=30, num_intents=3, seed=5)


def _model(name, ds):
    small = dict(num_items=ds.num_items, max_len=MAX_LEN, hidden_size=16)
    enc = dict(small, num_layers=1, num_heads=2, hidden_dropout=0.1, attention_dropout=0.1)
    torch.manual_seed(0)
    if name in ("sasrec-bce", "sasrec-ce"):
        return build_model("sasrec", **enc, loss=name.split("-")[1])
    if name == "difsr":
        return build_model("difsr", **enc, inner_size=16, attribute_sizes=4, fusion="gate", attributes=ds,
                           **attribute_config(ds, ["category", "brand"]))
    if name == "sine":
        return build_model("sine", **small, num_prototypes=6, num_interests=2)
    if name == "dss":
        return build_model("dss", **small, num_layers=1, num_intentions=2)
    if name == "s3rec":
        _, num_attributes, fields = item_attribute_table(ds)
        model = build_model("s3rec", **enc, num_attributes=num_attributes, attribute_fields=fields)
        model.attach_dataset(ds)
        return model
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["sasrec-bce", "sasrec-ce", "difsr", "sine", "dss", "s3rec"])
def test_bf16_autocast_training_steps_lower_a_finite_loss(name, dataset):
    model = _model(name, dataset).train()
    batch = next(iter(dataset.leave_one_out(max_len=MAX_LEN).train_batches(
        48, seed=0, epoch=0, num_negatives=3 if name == "sine" else 1)))
    if name == "s3rec":
        def loss_fn():
            return model.pretrain_loss(batch.input_ids, seed=1)[0]
    else:
        def loss_fn():
            return model.loss_terms(batch).loss
    seen = set()
    hooks = [m.register_forward_hook(lambda m, i, o: seen.add(o.dtype)) for m in model.modules()
             if isinstance(m, torch.nn.Linear)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    for h in hooks:
        h.remove()
    assert torch.bfloat16 in seen, "the forward did not run under bf16 autocast"
    assert all(math.isfinite(v) for v in losses), losses
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("loss", ["softmax", "mixture"])
def test_item_losses_under_autocast_compute_in_bf16_and_return_float32(loss):
    torch.manual_seed(0)
    hidden = torch.randn(6, 2, 8, requires_grad=True) if loss == "mixture" else torch.randn(6, 8, requires_grad=True)
    weight = torch.randn(21, 8, requires_grad=True)
    target = torch.randint(0, 21, (6,))
    fn = mixture_nll if loss == "mixture" else softmax_nll
    want = fn(hidden, weight, target)
    want_grads = torch.autograd.grad(want.sum(), (hidden, weight))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fn(hidden, weight, target)
    assert got.dtype == torch.float32
    grads = torch.autograd.grad(got.sum(), (hidden, weight))
    assert [g.dtype for g in grads] == [torch.float32, torch.float32]
    # bf16 has 8 significant bits: agreement to about 2^-6 relative.
    torch.testing.assert_close(got, want, rtol=3e-2, atol=3e-2)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, rtol=5e-2, atol=5e-2)
    assert not torch.equal(got, want), "the product did not run in bf16"


def test_trainer_autocast_setting_runs_the_step_in_bf16(dataset):
    model = _model("sasrec-ce", dataset)
    seen = set()
    model.encoder.layers[0].feed_forward.dense_in.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
    config = TrainConfig(epochs=2, batch_size=16, lr=1e-2, sampled_negatives=5, ks=(5,), metric="NDCG@5",
                         progress=False, autocast="bf16")
    result = Trainer(model, dataset.leave_one_out(max_len=MAX_LEN), config).fit()
    assert torch.bfloat16 in seen
    assert all(math.isfinite(r["loss"]) for r in result.history)
    assert math.isfinite(result.test_full["NDCG@5"])


@pytest.mark.parametrize("bad", ["fp8", "bfloat16", None])
def test_autocast_setting_is_checked(bad):
    with pytest.raises(ValueError, match="TrainConfig.autocast"):
        TrainConfig(autocast=bad)


def test_cli_compile_and_autocast_flags_reach_the_trainer(tmp_path, monkeypatch):
    calls = []

    def record(fn, compile):  # the step stays eager here: test_compile_step compiles it
        calls.append(compile)
        return fn

    monkeypatch.setattr(trainer_module, "compiled_step", record)
    args = ["train", "--data", "synthetic", "--synthetic-users", "60", "--synthetic-items", "40", "--hidden-size",
            "8", "--num-layers", "1", "--max-len", "10", "--epochs", "1", "--sampled-negatives", "5",
            "--no-progress"]
    assert main([*args, "--compile", "--autocast", "bf16", "--out", str(tmp_path / "on")]) == 0
    assert main([*args, "--out", str(tmp_path / "off")]) == 0
    assert calls == [True]  # the eager run compiles nothing
    on = json.loads((tmp_path / "on" / "result.json").read_text())["train"]
    off = json.loads((tmp_path / "off" / "result.json").read_text())["train"]
    assert (on["compile"], on["autocast"]) == (True, "bf16")
    assert (off["compile"], off["autocast"]) == (False, "none")
    with pytest.raises(SystemExit):
        main([*args, "--autocast", "fp8"])


def test_pretrainer_autocast_setting(dataset):
    from seqrec.train import PretrainConfig, Pretrainer

    model = _model("s3rec", dataset)
    seen = set()
    model.mip.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
    config = PretrainConfig(epochs=2, batch_size=64, samples="users", progress=False, autocast="bf16")
    history = Pretrainer(model, dataset, config).fit()
    assert torch.bfloat16 in seen
    assert all(math.isfinite(r["loss"]) for r in history)
    with pytest.raises(ValueError, match="PretrainConfig.autocast"):
        PretrainConfig(autocast="fp8")
