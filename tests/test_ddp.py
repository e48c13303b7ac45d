"""DDP (seqrec.train.distributed): 2 gloo CPU processes, one thread each, against one
process with the same global batch; the torchrun command line; the world-size rule of
resume; the launch logic (environment, backend, device) without any process group."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from seqrec.train import PretrainConfig, TrainConfig
from seqrec.train.distributed import (Distributed, check_world_size, choose_backend, rank_device,
                                      torchrun_world)

# Run by every rank (as a script) and by the test itself (exec'd, one process): the same
# data, models and settings, so the results must agree.
WORKER = r'''
import sys

import numpy as np
import torch

import seqrec.train.pretrain as pretrain_module
import seqrec.train.trainer as trainer_module
from seqrec.data import synthetic
from seqrec.models import build_model
from seqrec.train import PretrainConfig, Pretrainer, TrainConfig, Trainer

WRITES = []


def _recording(fn):
    def wrapper(*args, **kwargs):
        WRITES.append(str(args[1] if fn.__name__ == "save_torch" else args[0]))
        return fn(*args, **kwargs)
    return wrapper


def recording_writes():
    """Record what this process writes (to check that rank 0 alone does); returns the undo."""
    saved = [(m, n, getattr(m, n)) for m in (trainer_module, pretrain_module)
             for n in ("save_torch", "write_json", "write_jsonl") if hasattr(m, n)]
    for module, name, fn in saved:
        setattr(module, name, _recording(fn))
    return lambda: [setattr(module, name, fn) for module, name, fn in saved]


def dataset():
    # 45 training users: with a global batch of 4, the last step has one user, so rank 1
    # steps on a stand-in row of weight zero there.
    return synthetic(num_users=45, num_items=30, seed=3)


def sasrec(ds, loss, dropout):
    torch.manual_seed(0)
    return build_model("sasrec", num_items=ds.num_items, max_len=8, hidden_size=16, num_layers=1, num_heads=1,
                       hidden_dropout=dropout, attention_dropout=dropout, loss=loss)


def config(**kw):
    return TrainConfig(**{**dict(epochs=3, batch_size=4, lr=1e-2, ks=(5, 10), metric="NDCG@10", patience=2,
                                 sampled_negatives=5, eval_chunk_size=7, progress=False), **kw})


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def run(root):
    undo = recording_writes()
    try:
        return _run(root)
    finally:
        undo()


def _run(root):
    ds = dataset()
    split = ds.leave_one_out(max_len=8)
    out = {"train_users": len(split.train_users), "eval_users": len(split.eval_users)}
    for loss in ("ce", "bce"):  # a few steps, dropout off: the same losses and weights as one process
        model = sasrec(ds, loss, 0.0)
        trainer = Trainer(model, split, config(grad_clip=1.0 if loss == "bce" else None))
        result = trainer.fit()
        out[loss] = {"losses": [r["loss"] for r in result.history], "valid": [r["valid"] for r in result.history],
                     "test": result.test_full, "sampled": result.test_sampled, "weights": weights(model)}
    # Exact resume with the same world size, dropout on (every rank's RNG stream restored).
    model = sasrec(ds, "ce", 0.3)
    Trainer(model, split, config(epochs=3, patience=0), out_dir=f"{root}/whole").fit()
    out["whole"] = weights(model)
    Trainer(sasrec(ds, "ce", 0.3), split, config(epochs=1, patience=0), out_dir=f"{root}/resumed").fit()
    model = sasrec(ds, "ce", 0.3)
    trainer = Trainer(model, split, config(epochs=3, patience=0), out_dir=f"{root}/resumed")
    assert trainer.resume() and trainer.epoch == 1
    trainer.fit()
    out["resumed"] = weights(model)
    # S3-Rec pretraining (sum reduction): the same losses and weights as one process.
    torch.manual_seed(0)
    s3 = build_model("s3rec", num_items=ds.num_items, num_attributes=1, max_len=8, hidden_size=16, num_layers=1,
                     num_heads=1, hidden_dropout=0.0, attention_dropout=0.0, aap_weight=0.0, map_weight=0.0)
    pre = Pretrainer(s3, ds, PretrainConfig(epochs=2, batch_size=7, lr=1e-2, samples="users", progress=False))
    out["pretrain"] = {"history": [{k: v for k, v in r.items() if k != "seconds"} for r in pre.fit()],
                       "weights": weights(s3)}
    out["writes"] = list(WRITES)
    return out


if __name__ == "__main__":
    import datetime

    import torch.distributed as dist

    rank, world, init, root, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="file://" + init, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    out = run(root)
    torch.save(out, path)
    dist.destroy_process_group()
'''


def _wait(procs, timeout=240):
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:  # never leave a rank waiting in a collective
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    return logs


def _close(got, want, what, rtol=1e-5, atol=1e-6):
    assert got.keys() == want.keys(), what
    # The key bias adds the same q.b to every score of a query: the softmax cancels it, its
    # exact gradient is 0, and what the float gradient holds is rounding noise, which Adam
    # divides by its own magnitude into full-size steps. Nothing to compare there.
    bad = {k: float((got[k] - want[k]).abs().max()) for k in want
           if not k.endswith("attention.key.bias") and not torch.allclose(got[k], want[k], rtol=rtol, atol=atol)}
    assert not bad, f"{what}: largest differences {bad}"


def _metrics_close(got: dict, want: dict, users: int, what: str):
    # Weights equal up to float summation order may swap two items' order for one user.
    assert got.keys() == want.keys(), what
    for key in want:
        assert abs(got[key] - want[key]) <= 1.0 / users + 1e-9, (what, key, got[key], want[key])


@pytest.mark.slow  # 2 Python processes of ~10 s each on an idle 2-core machine
def test_ddp_two_processes_equal_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    for folder in ("whole", "resumed"):
        (tmp_path / "ddp" / folder).mkdir(parents=True)
        (tmp_path / "one" / folder).mkdir(parents=True)
    procs = [subprocess.Popen([sys.executable, str(script), str(rank), "2", str(tmp_path / "init"),
                               str(tmp_path / "ddp"), str(tmp_path / f"rank{rank}.pt")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(2)]
    try:
        ns: dict = {"__name__": "worker"}
        exec(WORKER, ns)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            want = ns["run"](tmp_path / "one")
        finally:
            torch.set_num_threads(threads)
    finally:
        _wait(procs)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert want["train_users"] % 4 == 1  # the last global step has fewer users than ranks
    for loss in ("ce", "bce"):
        one = want[loss]
        for r, got in enumerate(ranks):
            got = got[loss]
            torch.testing.assert_close(got["losses"], one["losses"], rtol=1e-5, atol=0)
            _close(got["weights"], one["weights"], f"{loss} rank {r}")
            assert len(got["valid"]) == len(one["valid"])
            for g, w in zip(got["valid"], one["valid"]):
                _metrics_close(g, w, want["eval_users"], f"{loss} valid rank {r}")
            _metrics_close(got["test"], one["test"], want["eval_users"], f"{loss} test rank {r}")
        # The ranks agree exactly: the same weights, sharded evaluation merged exactly.
        assert ranks[0][loss]["test"] == ranks[1][loss]["test"] and ranks[0][loss]["valid"] == ranks[1][loss]["valid"]
        assert ranks[0][loss]["sampled"] == ranks[1][loss]["sampled"]
        for key, value in ranks[0][loss]["weights"].items():
            assert torch.equal(value, ranks[1][loss]["weights"][key]), key
    for r, got in enumerate(ranks):
        # Resume with the same world size is exact (dropout on: each rank's RNG restored).
        for key, value in got["whole"].items():
            assert torch.equal(value, got["resumed"][key]), (r, key)
        torch.testing.assert_close([h["loss"] for h in got["pretrain"]["history"]],
                                   [h["loss"] for h in want["pretrain"]["history"]], rtol=1e-5, atol=0)
        for h, w in zip(got["pretrain"]["history"], want["pretrain"]["history"]):
            assert h.keys() == w.keys()
            for key in ("mip", "sp"):
                assert h[key] == pytest.approx(w[key], rel=1e-5)
        _close(got["pretrain"]["weights"], want["pretrain"]["weights"], f"pretrain rank {r}")
    # Rank 0 alone writes the run folders, as many files as one process does.
    assert ranks[1]["writes"] == []
    assert sorted(ranks[0]["writes"]) == sorted(w.replace(str(tmp_path / "one"), str(tmp_path / "ddp"))
                                                for w in want["writes"])
    assert ranks[0]["writes"]


def _seqrec(*args, env=None, timeout=240):
    return subprocess.run([sys.executable, "-m", "seqrec", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


TRAIN = ["train", "--model", "sasrec", "--data", "synthetic", "--synthetic-users", "61", "--synthetic-items", "40",
         "--max-len", "8", "--hidden-size", "16", "--num-layers", "1", "--num-heads", "1", "--dropout", "0",
         "--loss", "ce", "--batch-size", "8", "--epochs", "2", "--ks", "5", "10", "--metric", "NDCG@10",
         "--sampled-negatives", "5", "--no-progress"]


@pytest.mark.slow  # torchrun and 3 seqrec processes: ~20 s on an idle 2-core machine
def test_torchrun_cli_rank0_writes_and_matches_one_process(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    ddp_out, one_out = tmp_path / "ddp", tmp_path / "one"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "-m", "seqrec", *TRAIN, "--out", str(ddp_out)]
    ddp = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    one = _seqrec(*TRAIN, "--out", str(one_out), env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    # The results are printed once (rank 0), and the run folder holds one run's files.
    assert ddp.stdout.count("test, full ranking") == 1
    assert sorted(p.name for p in ddp_out.iterdir()) == sorted(p.name for p in one_out.iterdir())
    got, want = (json.loads((folder / "result.json").read_text()) for folder in (ddp_out, one_out))
    users = 61  # every synthetic user has >= 3 interactions
    _metrics_close(got["test_full"], want["test_full"], users, "test")
    for g, w in zip(got["history"], want["history"]):
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-5)
        _metrics_close(g["valid"], w["valid"], users, "valid")
    state = torch.load(ddp_out / "checkpoint.pt", weights_only=False)
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    # Resuming it in one process is refused, naming both world sizes; nothing written.
    before = {p.name: p.stat().st_mtime_ns for p in ddp_out.iterdir()}
    again = _seqrec(*[a if a != "2" else "3" for a in TRAIN], "--out", str(ddp_out), "--resume", env=env)
    assert again.returncode == 2, again.stderr[-3000:]
    assert "world size 2" in again.stderr and "world size 1" in again.stderr, again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in ddp_out.iterdir() if p.name in before} == before
    # evaluate under torchrun (sharded): the tables the training printed for the same weights.
    evaluate = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "seqrec", "evaluate", "--checkpoint", str(ddp_out)]
    sharded = subprocess.run(evaluate, env=env, capture_output=True, text=True, timeout=300)
    assert sharded.returncode == 0, sharded.stdout[-3000:] + sharded.stderr[-3000:]
    table = lambda text: text[text.index("test, full ranking"):].strip()  # noqa: E731
    assert sharded.stdout.count("test, full ranking") == 1
    assert table(sharded.stdout) == table(ddp.stdout)


def test_resume_with_another_world_size_is_refused():
    check_world_size("run/checkpoint.pt", 2, 2)
    check_world_size("run/checkpoint.pt", None, 1)  # written before seqrec recorded it: one process
    with pytest.raises(ValueError, match=r"trained by 2 processes \(world size 2\) and is resumed by 1 "
                                         r"\(world size 1\)"):
        check_world_size("run/checkpoint.pt", 2, 1)
    with pytest.raises(ValueError, match=r"run/checkpoint.pt: .*world size 1\) and is resumed by 4 \(world size 4"):
        check_world_size("run/checkpoint.pt", None, 4)


def test_torchrun_environment_backend_and_device():
    assert torchrun_world({}) is None
    assert torchrun_world({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == (3, 4, 1)
    assert torchrun_world({"WORLD_SIZE": "2", "RANK": "1"}) == (1, 2, 0)
    with pytest.raises(ValueError, match="sets WORLD_SIZE but not RANK"):
        torchrun_world({"WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="RANK='x' is not an integer"):
        torchrun_world({"WORLD_SIZE": "2", "RANK": "x"})
    with pytest.raises(ValueError, match="RANK=2, WORLD_SIZE=2"):
        torchrun_world({"WORLD_SIZE": "2", "RANK": "2"})
    assert choose_backend("cpu") == "gloo"
    assert choose_backend("cuda", cuda_available=True) == "nccl"
    assert choose_backend("cuda:1", cuda_available=True) == "nccl"
    with pytest.raises(ValueError, match="needs CUDA"):
        choose_backend("cuda", cuda_available=False)
    assert rank_device("cuda", 3) == "cuda:3"  # one GPU per process on each node
    assert rank_device("cuda:1", 3) == "cuda:1"  # an explicit device is kept
    assert rank_device("cpu", 3) == "cpu"


def test_setup_without_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert Distributed.setup(None, "cpu") is None  # detect: one process
    assert Distributed.setup(False, "cpu") is None
    with pytest.raises(ValueError, match="not started by torchrun"):
        Distributed.setup(True, "cpu")
    with pytest.raises(ValueError, match="distributed must be None"):
        Distributed.setup("yes", "cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert Distributed.setup(True, "cpu") is None  # a world of one process runs as one process
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="not MASTER_ADDR, MASTER_PORT"):
        Distributed.setup(None, "cpu")
    assert Distributed.setup(False, "cpu") is None  # off even under torchrun
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs CUDA"):  # checked before any connection
            Distributed.setup(None, "cuda")
    assert not torch.distributed.is_initialized()


def test_config_distributed_setting():
    assert TrainConfig().distributed is None and PretrainConfig().distributed is None
    for cls in (TrainConfig, PretrainConfig):
        with pytest.raises(ValueError, match="distributed must be None"):
            cls(distributed="auto")


def test_data_download_refuses_to_run_under_torchrun(tmp_path, monkeypatch, capsys):
    """Every rank would download into the same folder; one process (world 1) downloads."""
    import seqrec.data.download
    from seqrec.cli import main

    fetched = []
    monkeypatch.setattr(seqrec.data.download, "download_dataset",
                        lambda name, to, **kw: fetched.append(name) or tmp_path / "out" / name)
    argv = ["data", "download", "Beauty", "--to", str(tmp_path / "out")]
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "seqrec data download runs under torchrun" in err and "WORLD_SIZE=2" in err, err
    assert fetched == [] and not (tmp_path / "out").exists()
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert main(argv) == 0 and fetched == ["Beauty"]
    with pytest.raises(SystemExit):
        main(["data", "download", "--help"])
    assert "not under torchrun" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("command", [
    ["export", "--checkpoint", "{tmp}/run", "--out", "{tmp}/out"],
    ["data", "prepare", "--data", "synthetic", "--synthetic-users", "20", "--synthetic-items", "40",
     "--out", "{tmp}/out"],
])
def test_writing_commands_refuse_to_run_under_torchrun(command, tmp_path, monkeypatch, capsys):
    from seqrec.cli import main

    argv = [a.format(tmp=tmp_path) for a in command]
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", "1")):
        monkeypatch.setenv(name, value)
    assert main(argv) == 2
    err = capsys.readouterr().err
    name = " ".join(command[:2] if command[0] == "data" else command[:1])
    assert f"seqrec {command[0]}: error:" in err and f"seqrec {name}" in err, err
    assert "torchrun" in err and "WORLD_SIZE=2" in err, err
    assert "run it once, without torchrun" in err, err
    assert not (tmp_path / "out").exists()  # nothing written by any rank
    assert not torch.distributed.is_initialized()
    # A world of one process (torchrun --nproc_per_node 1) is one process: it runs.
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    main(argv)
    assert "torchrun" not in capsys.readouterr().err
    # --help says so.
    with pytest.raises(SystemExit):
        main([*command[:2 if command[0] == "data" else 1], "--help"])
    assert "not under torchrun" in " ".join(capsys.readouterr().out.split())
