"""Exact sharded evaluation: gloo process groups of 1 (in this process), 2 and 3 CPU
processes (subprocesses, bounded by timeouts) give the metrics (bit for bit), ranks and
top-k lists of the one-process evaluation, for several chunk sizes, item blocks, the
sampled protocol, and more ranks than users."""
from __future__ import annotations

import datetime
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from seqrec.eval.distributed import LOCAL, resolve_group, shard_range

# Run by every rank (as a script) and by the test itself (exec'd, one process): the
# same data and calls, so the results must be the same.
WORKER = r'''
import datetime
import sys

import numpy as np
import torch

from seqrec.eval import evaluate_full_ranking, evaluate_sampled

NUM_ITEMS = 97


def setup(num_users, seed=21):
    rng = np.random.default_rng(seed)
    user = torch.tensor(rng.integers(-2, 3, size=(num_users, 6)), dtype=torch.float32)
    item = torch.tensor(rng.integers(-2, 3, size=(NUM_ITEMS, 6)), dtype=torch.float32)
    lengths = rng.integers(0, 12, size=num_users)
    indptr = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    items = torch.from_numpy(rng.integers(1, NUM_ITEMS, size=int(indptr[-1])).astype(np.int64))
    target = torch.from_numpy(rng.integers(1, NUM_ITEMS, size=num_users).astype(np.int64))
    cand = torch.from_numpy(rng.integers(1, NUM_ITEMS, size=(num_users, 12)).astype(np.int64))
    return user, item, target, indptr, items, cand


def run(group):
    out = {}
    ks = (1, 5, 10)
    for num_users in (23, 2):
        user, item, target, indptr, items, cand = setup(num_users)

        def score_fn(rows):
            return user[rows] @ item.T  # integer embeddings: exact scores with many ties

        def ranged(rows, lo, hi):
            return user[rows] @ item[lo:hi].T

        for chunk in (1, 5):
            out[num_users, "full", chunk] = evaluate_full_ranking(
                score_fn, target, indptr, items, ks=ks, chunk_size=chunk, topk=7, process_group=group,
                metrics=("Precision", "MAP", "Coverage", "Gini"))
            out[num_users, "noex", chunk] = evaluate_full_ranking(
                score_fn, target, indptr, items, ks=ks, chunk_size=chunk, exclude_history=False, process_group=group)
            out[num_users, "blocks", chunk] = evaluate_full_ranking(
                ranged, target, indptr, items, ks=ks, chunk_size=chunk, topk=7, num_items=NUM_ITEMS, item_range=True,
                item_chunk_size=10, process_group=group, metrics=("Precision", "MAP", "Coverage", "Gini"))
            out[num_users, "sampled", chunk] = evaluate_sampled(
                lambda rows, c: (user[rows][:, None, :] * item[c]).sum(-1), cand, chunk_size=chunk,
                process_group=group)
        out[num_users, "budget"] = evaluate_full_ranking(score_fn, target, indptr, items, ks=ks, topk=3,
                                                         memory="64MiB", process_group=group)
        out[num_users, "local"] = evaluate_full_ranking(score_fn, target, indptr, items, chunk_size=4,
                                                        process_group=group, gather=False)
    return out


if __name__ == "__main__":
    import torch.distributed as dist

    rank, world, init, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="file://" + init, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    out = run(None)  # the default group
    user, item, target, indptr, items, _ = setup(10 + rank)  # ranks that disagree on the users
    try:
        evaluate_full_ranking(lambda rows: user[rows] @ item.T, target, indptr, items)
    except ValueError as exc:
        out["mismatch"] = str(exc)
    torch.save(out, path)
    dist.destroy_process_group()
'''


def _launch(tmp_path, world):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = []
    for rank in range(world):
        args = [sys.executable, str(script), str(rank), str(world), str(tmp_path / f"init{world}"),
                str(tmp_path / f"out{world}_{rank}.pt")]
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def _wait(procs, timeout=240):
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:  # never leave a rank hanging in a collective
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]


def _same(got, want):
    assert len(got) == len(want)
    assert got[0] == want[0]  # the metrics dict, exactly (floats compared with ==)
    for g, w in zip(got[1:], want[1:]):
        assert torch.equal(g, w)


@pytest.mark.slow  # starts 5 Python processes: ~10 s on an idle 2-core machine
def test_sharded_evaluation_equals_one_process(tmp_path):
    launched = {world: _launch(tmp_path, world) for world in (2, 3)}
    ns: dict = {"__name__": "worker"}
    exec(WORKER, ns)
    want = ns["run"](LOCAL)
    # World size 1 in this process (a group must be named: the default shards only
    # when the world size is > 1).
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init1'}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    try:
        torch.save(ns["run"](dist.group.WORLD), tmp_path / "out1_0.pt")
    finally:
        dist.destroy_process_group()
    for world, procs in [(1, []), *launched.items()]:
        _wait(procs)
        for rank in range(world):
            got = torch.load(tmp_path / f"out{world}_{rank}.pt", weights_only=False)
            mismatch = got.pop("mismatch", None)  # world size 1: nobody to disagree with
            assert world == 1 or f"different users (10 to {9 + world})" in mismatch, mismatch
            for key, value in want.items():
                if key[1] == "local":
                    lo, hi = shard_range(key[0], rank, world)
                    assert got[key][0] == value[0]  # global metrics
                    assert torch.equal(got[key][1], value[1][lo:hi])  # this rank's users only
                else:
                    _same(got[key], value)
    # Chunking and item blocks do not change anything either.
    for num_users in (23, 2):
        _same(want[num_users, "full", 1], want[num_users, "full", 5])
        _same(want[num_users, "blocks", 5], want[num_users, "full", 5])
        budget, full = want[num_users, "budget"][0], want[num_users, "full", 1][0]
        assert budget == {key: full[key] for key in budget}


def test_shard_range_and_group_resolution():
    for users in (0, 1, 2, 7, 23):
        for world in (1, 2, 3, 5):
            parts = [shard_range(users, r, world) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == users
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))  # contiguous, disjoint, covering
            assert max(h - l for l, h in parts) - min(h - l for l, h in parts) <= 1
    with pytest.raises(ValueError, match="rank 3 is not in a world of size 3"):
        shard_range(5, 3, 3)
    assert resolve_group(None) is None and resolve_group(LOCAL) is None  # not initialised: one process
    with pytest.raises(ValueError, match="process_group must be None"):
        resolve_group("world")
    with pytest.raises(ValueError, match="torch.distributed is not initialised"):
        resolve_group(object())
    assert not torch.distributed.is_initialized()
