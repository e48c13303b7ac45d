"""Benchmark: full-ranking evaluation of every Beauty user against every item.

Providers (each in a fresh subprocess, same inputs, same user chunks):
  seqrec     evaluate_full_ranking on the rank_topk kernel (ranks, top-20 lists, metrics)
  plain      what one writes in plain PyTorch: clone the score block, mask the history
             with scatter_ (-inf), restore the target, rank = count(>= target score),
             torch.topk(20), HR/NDCG/MRR summed in torch
  reference  (optional, slow) seqrec.ops.reference via backend="reference"

Inputs: a [22363, 12102] float32 score matrix (Beauty's users x items incl. padding),
standard normal with the target's score raised by 3 so the metrics are not ~0. It is
generated before the timed region (the score_fn of both providers returns a view of
one user chunk, no copy). Histories: every user's sequence but the last item (the
target) from ../shared/data/Beauty/Beauty.txt when present, else synthetic with
Beauty's length distribution (min 5, mean ~8.9 items).

Timing: median over --repeats runs after one warm-up, torch's default threads.
Peak memory: in the provider's own process, ru_maxrss at the end minus the resident
set (/proc/self/statm) right after the inputs were built: every byte the evaluation
made resident on top of its inputs, at its high-water mark (an upper bound on the
evaluation's peak). The plain version's padded history matrix is built before that
baseline, like seqrec's CSR.

    python benchmarks/bench_rank_topk.py [--repeats 5] [--chunk 1024] [--providers seqrec,plain]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import resource
import sys
import time

import numpy as np

from common import SHARED_DATA, median_seconds, print_table, rss_bytes, run_child

BEAUTY_USERS, BEAUTY_ITEMS = 22363, 12101


def load_histories(args):
    """(target [U], indptr [U+1], items [nnz], num_items incl. padding, source)."""
    txt = args.data / f"{args.data.name}.txt"
    if txt.exists() and not args.synthetic:
        seqs, vocab = [], {}
        with open(txt) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) < 2:
                    continue
                seqs.append([vocab.setdefault(int(x), len(vocab) + 1) for x in parts[1:]])
        num_items = len(vocab) + 1
        source = f"histories from {txt}"
    else:
        rng = np.random.default_rng(0)
        lengths = np.minimum(4 + rng.geometric(1 / 4.88, size=args.users), 200)
        flat = rng.integers(1, args.items + 1, size=int(lengths.sum()))
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        seqs = [flat[bounds[u]:bounds[u + 1]].tolist() for u in range(args.users)]
        num_items = args.items + 1
        source = "synthetic histories (Beauty's length distribution)"
    target = np.array([s[-1] for s in seqs], np.int64)
    hist_len = np.array([len(s) - 1 for s in seqs], np.int64)
    indptr = np.concatenate([[0], np.cumsum(hist_len)]).astype(np.int64)
    items = np.array([i for s in seqs for i in s[:-1]], np.int64)
    return target, indptr, items, num_items, source


def run_provider(args) -> dict:
    import torch
    from seqrec.eval import evaluate_full_ranking

    target_np, indptr_np, items_np, num_items, source = load_histories(args)
    num_users = len(target_np)
    target, indptr, items = (torch.from_numpy(a) for a in (target_np, indptr_np, items_np))
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(num_users, num_items, generator=gen, device=args.device)
    scores[torch.arange(num_users), target.to(args.device)] += 3.0
    ks, k = (5, 10, 20), args.k

    if args.provider == "plain":
        lengths = indptr[1:] - indptr[:-1]
        width = int(lengths.max())
        hist_padded = torch.zeros(num_users, width, dtype=torch.long)  # 0 = padding column, masked anyway
        cols = torch.arange(int(indptr[-1])) - torch.repeat_interleave(indptr[:-1], lengths)
        hist_padded[torch.repeat_interleave(torch.arange(num_users), lengths), cols] = items
        hist_padded, target_d = hist_padded.to(args.device), target.to(args.device)

        def evaluate():
            sums = torch.zeros(2 * len(ks) + 1, dtype=torch.float64, device=args.device)
            ranks, lists = [], []
            for lo in range(0, num_users, args.chunk):
                hi = min(lo + args.chunk, num_users)
                block, t = scores[lo:hi], target_d[lo:hi, None]
                t_score = block.gather(1, t)
                masked = block.clone()
                masked.scatter_(1, hist_padded[lo:hi], float("-inf"))
                masked[:, 0] = float("-inf")
                masked.scatter_(1, t, t_score)  # the target is always ranked
                rank = (masked >= t_score).sum(dim=1) - 1  # ties count against the model
                lists.append(torch.topk(masked, k, dim=1).indices)
                r = rank.double()
                parts = []
                for kk in ks:
                    hit = rank < kk
                    parts += [hit.double().sum(), (hit.double() / torch.log2(r + 2)).sum()]
                sums += torch.stack(parts + [(1.0 / (r + 1)).sum()])
                ranks.append(rank)
            values = (sums / num_users).tolist()
            names = [f"{m}@{kk}" for kk in ks for m in ("HR", "NDCG")] + ["MRR"]
            return dict(zip(names, values)), torch.cat(ranks), torch.cat(lists)
    else:
        backend = "reference" if args.provider == "reference" else "seqrec"

        def evaluate():
            return evaluate_full_ranking(lambda rows: scores[int(rows[0]):int(rows[-1]) + 1], target, indptr, items,
                                         ks=ks, chunk_size=args.chunk, backend=backend, topk=k)

    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    base_rss = rss_bytes()
    result = {}

    def timed():
        result["out"] = evaluate()
        if args.device == "cuda":
            torch.cuda.synchronize()

    med, times = median_seconds(timed, repeats=args.repeats, warmup=1)
    peak = (torch.cuda.max_memory_allocated() - base if args.device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss)
    metrics, ranks, lists = result["out"]
    ranks, lists = ranks.cpu(), lists.cpu()
    return {"provider": args.provider, "median_s": med, "times": times, "peak_bytes": peak,
            "metrics": metrics, "ranks_sha": hashlib.sha1(ranks.numpy().tobytes()).hexdigest(),
            "ranks": ranks.tolist(), "lists": lists.tolist(), "users": num_users, "items": num_items,
            "nnz": int(indptr[-1]), "source": source, "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=__import__("pathlib").Path, default=SHARED_DATA / "Beauty")
    parser.add_argument("--synthetic", action="store_true", help="synthetic histories even if Beauty.txt exists")
    parser.add_argument("--users", type=int, default=BEAUTY_USERS)
    parser.add_argument("--items", type=int, default=BEAUTY_ITEMS, help="items without the padding column")
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--providers", default="seqrec,plain")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--provider", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)

    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            print("skipped: --device cuda but no CUDA device is available")
            return 0
        if not torch._C._dispatch_has_kernel_for_dispatch_key("seqrec::rank_topk", "CUDA"):
            print("note: seqrec was built without a CUDA rank_topk kernel; running the plain provider only")
            args.providers = "plain"
    if args.provider:
        print(json.dumps(run_provider(args)))
        return 0

    results = []
    for provider in args.providers.split(","):
        child = ["--provider", provider] + (argv if argv is not None else sys.argv[1:])
        start = time.perf_counter()
        res = run_child(__file__, child)
        res["wall"] = time.perf_counter() - start
        results.append(res)

    base = next((r for r in results if r["provider"] == "plain"), results[0])
    first = results[0]
    print(f"full ranking, {first['users']} users x {first['items']} items (incl. padding), "
          f"{first['nnz']} history items ({first['source']}), top-{args.k}, K in (5, 10, 20), "
          f"chunk {args.chunk}, {first['threads']} threads, device {args.device}")
    rows = []
    for r in results:
        same_rank = r["ranks"] == base["ranks"]
        same_lists = float(np.mean([a == b for a, b in zip(r["lists"], base["lists"])]))
        rows.append([r["provider"], r["median_s"], base["median_s"] / r["median_s"], r["peak_bytes"] / 2**20,
                     "yes" if same_rank else "NO", same_lists])
    print_table(f"median of {args.repeats} (after 1 warm-up); peak = high-water RSS above inputs",
                ["provider", "seconds", "speed-up vs plain", "peak MiB", "ranks == plain", "lists == plain"],
                rows)
    for r in results:
        print(f"  {r['provider']:>9}: " + " ".join(f"{name} {v:.4f}" for name, v in r["metrics"].items())
              + "  times " + " ".join(f"{t:.3f}" for t in r["times"]))
    return 0 if all(r["ranks"] == base["ranks"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
