"""Benchmark: peak memory of full-ranking evaluation under a budget (--eval-memory).

Each row is one evaluation in a fresh subprocess: N users over I items, random float32
embeddings (D=64), dot-product scores (column 0, padding, masked in place), 20 random
history items per user, top-20 lists and ranks. The score function can score an item
range, so the evaluator splits rows into item blocks when a whole row does not fit the
budget (two-level top-k); block sizes come from seqrec.eval.memory.plan_chunks.

Peak: the process's resident high-water mark during the evaluation, minus its resident
set just before it (after the inputs were built): Linux's VmHWM, reset through
/proc/self/clear_refs right before the evaluation (ru_maxrss where that is refused).
"vs budget" = that increment / the budget (target <= 1.2 at 10^6 items).

Row "before" re-runs the evaluation loop as it was before the budget (1024 users per
block, the previous block alive while the next is scored) with a score function that
masks the padding column out of place as the models' ``score`` does, over 2048 users
at 10^5 items; row "after" runs the same score function and chunks through today's
evaluate_full_ranking (each block freed before the next is scored). Their increment
in units of one score block shows the old ~3x and what is left of it (the models'
out-of-place mask). Before the measured evaluation each child runs a small one, so
that library code and allocator pools paged in once are not counted.

    python benchmarks/bench_eval_memory.py [--users 300] [--quick]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time

from common import print_table, rss_bytes, run_child

MiB = 2**20


def _hwm_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _hwm_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(args) -> None:
    import torch

    from seqrec.eval import evaluate_full_ranking
    from seqrec.eval.memory import parse_memory, plan_chunks
    from seqrec.ops import rank_topk

    g = torch.Generator().manual_seed(0)
    num_items = args.items + 1  # + padding
    user = torch.randn(args.users, 64, generator=g)
    item = torch.randn(num_items, 64, generator=g)
    target = torch.randint(1, num_items, (args.users,), generator=g)
    indptr = torch.arange(0, 20 * args.users + 1, 20)
    history = torch.randint(1, num_items, (20 * args.users,), generator=g)

    def ranged(rows, lo, hi):
        scores = user[rows] @ item[lo:hi].T
        if lo == 0:
            scores[:, 0] = float("-inf")
        return scores

    # Page in the libraries' code and the allocator's pools on a small problem first: the
    # increment below is then what the evaluation's size costs, not one-time start-up.
    evaluate_full_ranking(lambda r, lo, hi: user[r] @ item[lo:min(hi, 2000)].T, target[:10] % 1999 + 1, indptr[:11],
                          history % 2000, topk=20, num_items=2000, item_range=True, chunk_size=5,
                          item_chunk_size=300)
    evaluate_full_ranking(lambda r: user[r] @ item[:2000].T, target[:10] % 1999 + 1, indptr[:11], history % 2000,
                          topk=20, chunk_size=5)
    gc.collect()
    base = rss_bytes()
    reset = _hwm_reset()
    start_peak = _hwm_bytes() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    chunk, pad = 1024, torch.arange(num_items) == 0

    def model_like(rows):  # what SASRec.score does: a masked copy of the product
        return (user[rows] @ item.T).masked_fill(pad, float("-inf"))

    if args.mode == "before":
        for lo in range(0, args.users, chunk):  # the loop as it was: `scores` rebound, not freed
            hi = min(lo + chunk, args.users)
            scores = model_like(torch.arange(lo, hi))
            ptr = indptr[lo:hi + 1]
            rank_topk(scores, ptr - ptr[0], history[int(ptr[0]):int(ptr[-1])], target[lo:hi], 20)
        plan, budget, block = f"{min(chunk, args.users)} x {num_items}", None, min(chunk, args.users) * num_items * 4
    elif args.mode == "after":  # the same score function and chunks through today's evaluation
        evaluate_full_ranking(model_like, target, indptr, history, topk=20, chunk_size=chunk)
        plan, budget, block = f"{min(chunk, args.users)} x {num_items}", None, min(chunk, args.users) * num_items * 4
    else:
        budget = parse_memory(args.budget)
        p = plan_chunks(args.users, num_items, budget, item_range=True)
        plan = f"{p.users} x {p.items}"
        block = p.users * p.items * 4
        evaluate_full_ranking(ranged, target, indptr, history, topk=20, num_items=num_items, item_range=True,
                              memory=budget)
    seconds = time.perf_counter() - start
    peak = _hwm_bytes() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    increment = peak - base if reset else max(0, peak - max(base, start_peak))
    print(json.dumps({"plan": plan, "base": base, "increment": increment, "budget": budget, "block": block,
                      "seconds": seconds, "hwm_reset": reset, "threads": torch.get_num_threads()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="fewer rows (10^5 items, 200 users)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--items", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--budget", default="", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="budget", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    users = 200 if args.quick else args.users
    cases = [("before", 10**5, ""), ("after", 10**5, "")]
    cases += [("budget", 10**5, b) for b in ("16MiB", "64MiB", "256MiB")]
    if not args.quick:
        cases += [("budget", 10**6, b) for b in ("32MiB", "256MiB", "1GiB")]
    rows = []
    for mode, items, budget in cases:
        n = 2048 if mode != "budget" else users  # two chunks of 1024 users
        out = run_child(os.path.abspath(__file__), ["--child", "--users", str(n), "--items", str(items),
                                                    "--budget", budget, "--mode", mode])
        ratio = out["increment"] / out["budget"] if out["budget"] else float("nan")
        rows.append([mode, items, n, budget or "-", out["plan"], out["block"] / MiB, out["base"] / MiB,
                     out["increment"] / MiB, out["increment"] / out["block"], ratio, out["seconds"]])
        print(f"... {mode} {items} {budget}: +{out['increment'] / MiB:.1f} MiB (threads {out['threads']}, "
              f"VmHWM reset: {out['hwm_reset']})", file=sys.stderr)
    print_table("Evaluation peak memory vs budget (float32 scores, D=64, top-20, 20 history items per user)",
                ["mode", "items", "users", "budget", "block users x items", "block MiB", "base MiB",
                 "peak+ MiB", "peak+/block", "peak+/budget", "seconds"], rows)


if __name__ == "__main__":
    main()
