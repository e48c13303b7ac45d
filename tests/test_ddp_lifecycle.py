"""DDP details beyond the equivalence of tests/test_ddp.py, on 2 gloo CPU processes:
gradient accumulation all-reduces the gradients once per optimizer step (``no_sync`` on
the other micro-batches) and still ends with one process's weights; a Trainer or
Pretrainer that initialised the process group destroys it when ``fit()`` returns or
raises, and leaves a group the user initialised alone."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

from test_ddp import _close, _wait

# Run by every rank (as a script) and by the test itself (exec'd, one process).
WORKER = r'''
import atexit
import gc
import os
import sys
import weakref

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from seqrec.data import synthetic
from seqrec.models import build_model
from seqrec.train import PretrainConfig, Pretrainer, TrainConfig, Trainer


def dataset():
    return synthetic(num_users=45, num_items=30, seed=3)


def sasrec(ds):
    torch.manual_seed(0)
    return build_model("sasrec", num_items=ds.num_items, max_len=8, hidden_size=16, num_layers=1, num_heads=1,
                       hidden_dropout=0.0, attention_dropout=0.0, loss="ce")


def config(**kw):
    return TrainConfig(**{**dict(epochs=2, batch_size=4, lr=1e-2, ks=(5, 10), metric="NDCG@10", patience=0,
                                 sampled_negatives=5, eval_chunk_size=7, progress=False), **kw})


def accumulate_run(split, ds, accumulate):
    """Weights after 2 epochs with ``accumulate`` micro-batches per step; under DDP also
    how many gradient buckets were all-reduced and in how many backward passes."""
    model = sasrec(ds)
    trainer = Trainer(model, split, config(accumulate=accumulate))
    out = {}
    if trainer.ddp is not None:
        calls = []

        def counting_hook(state, bucket):  # the default all-reduce, counted
            calls.append(bucket.index())
            return default_hooks.allreduce_hook(state, bucket)

        trainer._ddp_model.register_comm_hook(None, counting_hook)
        out["calls"] = calls
    trainer.fit()
    out["steps"] = trainer.global_step
    out["weights"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return out


class Boom(RuntimeError):
    pass


def exploding(ds, at_call):
    """SASRec whose loss_terms raises on its ``at_call``-th call (mid-epoch)."""
    model = sasrec(ds)
    original, calls = model.loss_terms, [0]

    def loss_terms(batch):
        calls[0] += 1
        if calls[0] == at_call:
            raise Boom(f"loss call {calls[0]}")
        return original(batch)

    model.loss_terms = loss_terms
    return model


def lifecycle(split, ds, ports, out_dir):
    """Whether the group is initialised after each case (the torchrun environment is set)."""
    seen = {}
    os.makedirs(out_dir, exist_ok=True)
    os.environ["MASTER_PORT"] = str(ports[0])
    trainer = Trainer(sasrec(ds), split, config(epochs=1), out_dir=out_dir)
    seen["trainer_owns"] = trainer.ddp.owns_group and dist.is_initialized()
    trainer.fit()
    seen["after_fit"] = dist.is_initialized()
    seen["wrapper_after_fit"] = trainer._ddp_model is not None
    try:  # its group is gone: a clear error, not torch's "not initialized"
        trainer.evaluate("test")
    except RuntimeError as exc:
        seen["evaluate_after_fit"] = str(exc)
    try:
        trainer.resume()
    except RuntimeError as exc:
        seen["resume_after_fit"] = str(exc)
    os.environ["MASTER_PORT"] = str(ports[3])
    try:  # a Trainer that fails to construct after initialising the group destroys it
        Trainer(sasrec(ds), split, config(batch_size=1))
    except ValueError as exc:
        seen["init_error"] = str(exc)
    seen["after_init_error"] = dist.is_initialized()
    os.environ["MASTER_PORT"] = str(ports[1])
    trainer = Trainer(exploding(ds, 3), split, config(epochs=1))
    try:
        trainer.fit()
        seen["raised"] = False
    except Boom:
        seen["raised"] = True
    seen["after_raise"] = dist.is_initialized()
    os.environ["MASTER_PORT"] = str(ports[2])
    torch.manual_seed(0)
    s3 = build_model("s3rec", num_items=ds.num_items, num_attributes=1, max_len=8, hidden_size=16, num_layers=1,
                     num_heads=1, hidden_dropout=0.0, attention_dropout=0.0, aap_weight=0.0, map_weight=0.0)
    pre = Pretrainer(s3, ds, PretrainConfig(epochs=1, batch_size=7, lr=1e-2, samples="users", progress=False))
    seen["pretrainer_owns"] = pre.ddp.owns_group and dist.is_initialized()
    pre.fit()
    seen["after_pretrain"] = dist.is_initialized()
    seen["pretrain_wrapper_after_fit"] = pre._ddp_model is not None
    seen.update(evaluation_only(split, ds, ports[4]))
    return seen


def evaluation_only(split, ds, port):
    """A trainer that owns its group and only evaluates (no fit() to close it): the group
    is closed at exit, and close() frees the trainer's DDP wrapper, held by a reference
    cycle, before it destroys the group (left to the interpreter's shutdown, gloo aborts)."""
    seen, registered, register = {}, [], atexit.register
    os.environ["MASTER_PORT"] = str(port)
    atexit.register = lambda fn, *a, **k: (registered.append(fn), register(fn, *a, **k))[1]
    gc.disable()  # only close() may collect the cycle
    try:
        trainer = Trainer(sasrec(ds), split, config(epochs=1))
        seen["evaluated"] = trainer.evaluate("test")["NDCG@10"] >= 0
        group, wrapper = trainer.ddp, weakref.ref(trainer._ddp_model)
        seen["closes_at_exit"] = group.close in registered
        trainer.itself = trainer
        del trainer
        seen["wrapper_before_close"] = wrapper() is not None
        group.close()
        seen["wrapper_after_close"] = wrapper() is not None
        seen["group_after_close"] = dist.is_initialized()
    finally:
        gc.enable()
        atexit.register = register
    return seen


def users_group(split, ds, init):
    """A group the user initialised: still there after fit() returns and after it raises."""
    seen = {}
    dist.init_process_group("gloo", init_method="file://" + init, rank=int(os.environ["RANK"]),
                            world_size=int(os.environ["WORLD_SIZE"]))
    trainer = Trainer(sasrec(ds), split, config(epochs=1))
    seen["trainer_owns"] = trainer.ddp.owns_group
    trainer.fit()
    seen["after_fit"] = dist.is_initialized()
    try:
        Trainer(exploding(ds, 3), split, config(epochs=1)).fit()
    except Boom:
        pass
    seen["after_raise"] = dist.is_initialized()
    return seen


if __name__ == "__main__":
    torch.set_num_threads(1)
    init, ports, path = sys.argv[1], [int(p) for p in sys.argv[2].split(",")], sys.argv[3]
    ds = dataset()
    split = ds.leave_one_out(max_len=8)
    out = {"num_batches": split.num_train_batches(4)}
    # The user's own group (the accumulation runs use it too), then groups the trainers
    # initialise from torchrun's environment.
    out["users_group"] = users_group(split, ds, init)
    out["accumulate"] = {n: accumulate_run(split, ds, n) for n in (1, 5)}
    dist.destroy_process_group()
    out["lifecycle"] = lifecycle(split, ds, ports, os.path.dirname(init) + "/owned")
    if dist.is_initialized():
        dist.destroy_process_group()
    torch.save(out, path)
'''


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Both ranks' results, and one process's weights with the same global batch."""
    tmp = tmp_path_factory.mktemp("ddp_lifecycle")
    script = tmp / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", WORLD_SIZE="2", LOCAL_RANK="0")
    ports = ",".join(map(str, _free_ports(5)))
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp / "init"), ports, str(tmp / f"rank{r}.pt")],
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    try:
        ns: dict = {"__name__": "worker"}
        exec(WORKER, ns)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            ds = ns["dataset"]()
            split = ds.leave_one_out(max_len=8)
            one = {n: ns["accumulate_run"](split, ds, n) for n in (1, 5)}
        finally:
            torch.set_num_threads(threads)
    finally:
        _wait(procs)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(2)], one


@pytest.mark.slow  # 2 Python processes of ~10 s each on an idle 2-core machine
def test_accumulation_all_reduces_once_per_optimizer_step(ranks):
    got, one = ranks
    batches = got[0]["num_batches"]
    assert batches == 12  # 2 groups of 5 and one of 2 per epoch: a short last group
    for r, out in enumerate(got):
        plain, accumulated = out["accumulate"][1], out["accumulate"][5]
        assert accumulated["steps"] == 2 * 3 and plain["steps"] == 2 * batches
        # One bucket holds this small model: one all-reduce per backward pass without
        # accumulation, and one per optimizer step (not per micro-batch) with it.
        assert plain["calls"] == [0] * plain["steps"]
        assert accumulated["calls"] == [0] * accumulated["steps"], (r, len(accumulated["calls"]))
        # The gradients are the global batch's as before: one process's weights.
        for n in (1, 5):
            _close(out["accumulate"][n]["weights"], one[n]["weights"], f"accumulate {n} rank {r}")
    for key, value in got[0]["accumulate"][5]["weights"].items():
        assert torch.equal(value, got[1]["accumulate"][5]["weights"][key]), key


@pytest.mark.slow
def test_trainer_destroys_only_the_group_it_created(ranks):
    got, _ = ranks
    for out in got:
        life = out["lifecycle"]
        assert life["trainer_owns"] and life["pretrainer_owns"]
        assert life["raised"]
        assert not life["after_fit"] and not life["after_raise"] and not life["after_pretrain"]
        assert "Trainer.evaluate: the process group this trainer initialised was destroyed" in \
            life["evaluate_after_fit"]
        assert "Trainer.resume: the process group this trainer initialised was destroyed" in \
            life["resume_after_fit"]
        assert "must be at least the world size 2" in life["init_error"] and not life["after_init_error"]
        # The DDP wrappers go with the group they hold; a group no fit() closes is closed at
        # exit, and close() frees a wrapper held by a reference cycle before destroying it.
        assert not life["wrapper_after_fit"] and not life["pretrain_wrapper_after_fit"]
        assert life["evaluated"] and life["closes_at_exit"]
        assert life["wrapper_before_close"] and not life["wrapper_after_close"]
        assert not life["group_after_close"]
        user = out["users_group"]
        assert not user["trainer_owns"]
        assert user["after_fit"] and user["after_raise"]
