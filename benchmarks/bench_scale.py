"""Scale of the data side (issue 25 part 5): reading interactions, opening a prepared
dataset, and batching an epoch.

Synthetic Zipf data (users = interactions / 20, ``--items`` Zipf(1.1)-popular items),
written once per size as a RecBole atomic .inter file (and a Parquet file when pyarrow is
installed). Each measurement runs in a fresh process, its libraries loaded first: time,
and peak resident memory above the process's size before the load, per interaction. Providers, in the same run:

  * load .inter: ``SequenceDataset.from_atomic`` vs ``pd.read_csv`` + a stable sort by
    (user, time) into the same CSR (what a pandas user writes);
  * load parquet: ``SequenceDataset.from_parquet`` vs ``pd.read_parquet`` + the same;
  * prepared: ``SequenceDataset.open_prepared`` of the folder ``seqrec data prepare``
    writes (checksums verified / not), against the parse of the .inter file it replaces;
    its memory is the mapped file pages, shared by every process that opens the folder;
  * epoch: one data-only training epoch (``train_batches``, batch 256, max_len 50, one
    negative) vs a per-user NumPy sampler building the same batches in Python.

Prints seconds and ratios (reference / seqrec: > 1 means seqrec is faster).

    python benchmarks/bench_scale.py [--sizes 1e6 1e7] [--items 1e4 1e5] [--repeats 3] [--no-epoch]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import print_table, rss_bytes, run_child

HERE = Path(__file__).resolve()


def zipf_interactions(n: int, num_items: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    num_users = max(n // 20, 1)
    users = rng.integers(0, num_users, n)
    # Zipf(1.1) popularity over the catalogue, as in real interaction logs.
    weights = 1.0 / np.arange(1, num_items + 1) ** 1.1
    items = rng.choice(num_items, size=n, p=weights / weights.sum()) + 1
    times = rng.integers(0, 10**9, n)
    return users, items, times


def write_atomic(path: Path, users, items, times) -> None:
    header = "user_id:token\titem_id:token\ttimestamp:float\n"
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
    except ImportError:
        with open(path, "w") as fh:
            fh.write(header)
            for s in range(0, len(users), 1_000_000):
                rows = np.stack([users[s:s + 1_000_000], items[s:s + 1_000_000], times[s:s + 1_000_000]], axis=1)
                np.savetxt(fh, rows, fmt="%d", delimiter="\t")
        return
    with open(path, "wb") as fh:
        fh.write(header.encode())
        pacsv.write_csv(pa.table({"u": users, "i": items, "t": times}), fh,
                        pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none"))


def pandas_csr(df):
    """What a pandas user writes: dense ids, stable sort by (user, time), CSR offsets."""
    import pandas as pd

    user_codes, _ = pd.factorize(df["user_id"])
    item_codes, _ = pd.factorize(df["item_id"])
    order = np.lexsort((df["timestamp"].to_numpy(), user_codes))
    counts = np.bincount(user_codes)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    return indptr, item_codes[order] + 1


def numpy_epoch(indptr, items, num_items: int, batch_size: int = 256, max_len: int = 50, seed: int = 0,
                fraction: float = 1.0) -> int:
    """A per-user sampler in NumPy, as a PyTorch Dataset over users would be written:
    each user's training prefix (all but the last two items), its last max_len + 1 items
    as (input, target) pairs, one negative per position drawn uniformly from the items the
    user never touched (rejection), padded into batch arrays. Returns the batch count."""
    import torch

    rng = np.random.default_rng(seed)
    lengths = np.diff(indptr)
    users = rng.permutation(np.flatnonzero(lengths >= 4))
    users = users[:max(1, int(round(len(users) * fraction)))]  # a random share of the epoch
    batches = 0
    for s in range(0, len(users), batch_size):
        chunk = users[s:s + batch_size]
        inp = np.zeros((len(chunk), max_len), np.int64)
        tgt = np.zeros_like(inp)
        neg = np.zeros_like(inp)
        for r, u in enumerate(chunk):
            history = items[indptr[u]:indptr[u + 1]]
            prefix = history[:-2][-(max_len + 1):]
            n = len(prefix) - 1
            inp[r, :n], tgt[r, :n] = prefix[:-1], prefix[1:]
            seen = np.unique(history)
            draw = rng.integers(1, num_items + 1, n)
            bad = np.isin(draw, seen)
            while bad.any():
                draw[bad] = rng.integers(1, num_items + 1, int(bad.sum()))
                bad = np.isin(draw, seen)
            neg[r, :n] = draw
        torch.from_numpy(inp), torch.from_numpy(tgt), torch.from_numpy(neg)
        batches += 1
    return batches


# ---------------------------------------------------------------- child mode: one measurement

def child(task: str, path: str) -> dict:
    import torch  # noqa: F401  (loaded before the baseline, as seqrec loads it)

    from seqrec.data import SequenceDataset

    # Libraries loaded before the clock and the memory baseline, for every provider alike.
    import pandas  # noqa: F401
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        pass
    base = rss_bytes()
    _hwm_reset()
    start = time.perf_counter()
    result = {}
    if task == "seqrec_atomic":
        ds = SequenceDataset.from_atomic(path)
        result["n"] = ds.num_interactions
    elif task == "pandas_atomic":
        import pandas as pd

        # pandas' defaults: integer ids parse as int64, its fastest path.
        indptr, items = pandas_csr(pd.read_csv(path, sep="\t", header=0, names=["user_id", "item_id", "timestamp"]))
        result["n"] = len(items)
    elif task == "seqrec_parquet":
        ds = SequenceDataset.from_parquet(path)
        result["n"] = ds.num_interactions
    elif task == "pandas_parquet":
        import pandas as pd

        indptr, items = pandas_csr(pd.read_parquet(path))
        result["n"] = len(items)
    elif task in ("open_verify", "open_noverify"):
        ds = SequenceDataset.open_prepared(path, verify=task == "open_verify")
        result["n"] = ds.num_interactions
    elif task == "epochs":
        ds = SequenceDataset.open_prepared(path, verify=False)
        split = ds.leave_one_out(max_len=50)
        start = time.perf_counter()
        for _ in split.train_batches(256, seed=0, epoch=0):
            pass
        result["seqrec_epoch"] = time.perf_counter() - start
        start = time.perf_counter()
        fraction = float(os.environ.get("BENCH_SAMPLER_FRACTION", "1"))
        numpy_epoch(ds.indptr, ds.items, ds.num_items, fraction=fraction)
        result["numpy_epoch"] = (time.perf_counter() - start) / fraction
        return result
    else:
        raise SystemExit(f"unknown task {task}")
    result["seconds"] = time.perf_counter() - start
    result["peak_bytes"] = _hwm_bytes() - base
    return result


def _hwm_reset() -> None:
    """Peak RSS from now on (Linux: /proc/self/clear_refs), not the imports' peak."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _hwm_bytes() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(task: str, path: Path, repeats: int) -> tuple[float, float, int]:
    """(median seconds, peak bytes of the first run, interactions) over fresh processes."""
    runs = [run_child(str(HERE), ["--child", task, str(path)]) for _ in range(repeats)]
    return statistics.median(r["seconds"] for r in runs), runs[0]["peak_bytes"], runs[0]["n"]


def epoch_row(tag: str, cache: Path, fraction: float) -> list:
    os.environ["BENCH_SAMPLER_FRACTION"] = str(fraction)
    e = run_child(str(HERE), ["--child", "epochs", str(cache)])
    label = "epoch, batch 256" + (f" (sampler: {fraction:g} of users, scaled)" if fraction < 1 else "")
    return [tag, label, e["seqrec_epoch"], e["numpy_epoch"], e["numpy_epoch"] / e["seqrec_epoch"], "", "", ""]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6])
    parser.add_argument("--items", type=float, nargs="+", default=[1e5], help="catalogue sizes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-epoch", action="store_true", help="skip the epoch rows")
    parser.add_argument("--no-parquet", action="store_true", help="skip the Parquet rows")
    parser.add_argument("--sampler-fraction", type=float, default=1.0,
                        help="time the NumPy sampler on this random share of the users and scale its time up "
                             "(it costs the same per user); the row says so when < 1")
    parser.add_argument("--epoch-only", action="store_true",
                        help="only the epoch rows (the dataset built in memory with from_arrays, no file read)")
    parser.add_argument("--tmp", default=None, help="folder for the generated files (default: the system's)")
    parser.add_argument("--child", nargs=2, metavar=("TASK", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    try:
        import pandas  # noqa: F401
    except ImportError:
        print("skipped: pandas is not installed", file=sys.stderr)
        return 0
    try:
        import pyarrow  # noqa: F401
        have_arrow = not args.no_parquet
    except ImportError:
        have_arrow = False
    from seqrec.data import SequenceDataset

    rows = []
    r = args.repeats
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for size in args.sizes:
            for catalogue in args.items:
                n, m = int(size), int(catalogue)
                tag = f"{n:.0e}/{m:.0e}".replace("e+0", "e")
                users, items, times = zipf_interactions(n, m)
                if args.epoch_only:
                    cache = Path(tmp) / f"zipf{n}_{m}.prepared"
                    SequenceDataset.from_arrays(users, items, times).prepare(cache)
                    del users, items, times
                    rows.append(epoch_row(tag, cache, args.sampler_fraction))
                    continue
                inter = Path(tmp) / f"zipf{n}_{m}.inter"
                start = time.perf_counter()
                write_atomic(inter, users, items, times)
                mb = inter.stat().st_size / 1e6
                print(f"{tag}: wrote {mb:.0f} MB in {time.perf_counter() - start:.1f}s", file=sys.stderr)

                t_s, b_s, n_s = measure("seqrec_atomic", inter, r)
                t_p, b_p, n_p = measure("pandas_atomic", inter, r)
                assert n_s == n_p == n, "providers disagree"
                rows.append([tag, "load .inter", t_s, t_p, t_p / t_s, b_s / n, b_p / n, mb / t_s])
                if have_arrow:
                    import pyarrow as pa
                    import pyarrow.parquet as pq

                    parquet = Path(tmp) / f"zipf{n}_{m}.parquet"
                    pq.write_table(pa.table({"user_id": users, "item_id": items, "timestamp": times}), parquet)
                    t_s2, b_s2, _ = measure("seqrec_parquet", parquet, r)
                    t_p2, b_p2, _ = measure("pandas_parquet", parquet, r)
                    rows.append([tag, "load parquet", t_s2, t_p2, t_p2 / t_s2, b_s2 / n, b_p2 / n, ""])
                    parquet.unlink()
                del users, items, times

                cache = Path(tmp) / f"zipf{n}_{m}.prepared"
                start = time.perf_counter()
                SequenceDataset.from_atomic(inter).prepare(cache)
                print(f"{tag}: prepared in {time.perf_counter() - start:.1f}s", file=sys.stderr)
                inter.unlink()
                for task, label in (("open_verify", "open prepared (sha256)"),
                                    ("open_noverify", "open prepared (no hash)")):
                    t_o, b_o, _ = measure(task, cache, r)
                    rows.append([tag, label, t_o, t_s, t_s / t_o, b_o / n, "", ""])
                if not args.no_epoch:
                    rows.append(epoch_row(tag, cache, args.sampler_fraction))
    print_table("Data side at scale (n/items; seconds; ratio = reference / seqrec, > 1: seqrec faster; "
                "reference: pandas for loads, the .inter parse for opens, a per-user NumPy sampler for epochs)",
                ["n/items", "task", "seqrec s", "reference s", "ratio", "seqrec B/inter", "pandas B/inter",
                 "MB/s"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
