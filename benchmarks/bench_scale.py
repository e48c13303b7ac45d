"""Scale of the data side (issue 25 part 5): reading interactions and batching an epoch.

Synthetic Zipf data (users = interactions / 20, items Zipf-popular), written once per
size as a RecBole atomic .inter file (and a Parquet file when pyarrow is installed).
Providers, in the same run:

  * load: ``SequenceDataset.from_atomic`` vs ``pd.read_csv`` + a stable sort by (user,
    time) into the same CSR (what a pandas user writes); with pyarrow also
    ``SequenceDataset.from_parquet`` vs ``pd.read_parquet`` + the same grouping.
  * epoch: one data-only training epoch (``train_batches``, batch 256) per interaction,
    to show the cost stays linear in the data.

Prints seconds, ratios (pandas / seqrec: > 1 means seqrec is faster) and ns per interaction.

    python benchmarks/bench_scale.py [--sizes 1e6 1e7] [--repeats 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import median_seconds, print_table


def zipf_interactions(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    num_users = max(n // 20, 1)
    num_items = max(n // 100, 10)
    users = rng.integers(0, num_users, n)
    # Zipf(1.1) popularity over the catalogue, as in real interaction logs.
    weights = 1.0 / np.arange(1, num_items + 1) ** 1.1
    items = rng.choice(num_items, size=n, p=weights / weights.sum()) + 1
    times = rng.integers(0, 10**9, n)
    return users, items, times


def write_atomic(path: Path, users, items, times) -> None:
    with open(path, "w") as fh:
        fh.write("user_id:token\titem_id:token\ttimestamp:float\n")
        chunk = 1_000_000
        for s in range(0, len(users), chunk):
            rows = np.stack([users[s:s + chunk], items[s:s + chunk], times[s:s + chunk]], axis=1)
            np.savetxt(fh, rows, fmt="%d", delimiter="\t")


def pandas_csr(df):
    """What a pandas user writes: dense ids, stable sort by (user, time), CSR offsets."""
    import pandas as pd

    user_codes, _ = pd.factorize(df["user_id"])
    item_codes, _ = pd.factorize(df["item_id"])
    order = np.lexsort((df["timestamp"].to_numpy(), user_codes))
    counts = np.bincount(user_codes)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    return indptr, item_codes[order] + 1


def pandas_atomic(path: Path):
    import pandas as pd

    # pandas' defaults: integer ids parse as int64, its fastest path.
    df = pd.read_csv(path, sep="\t", header=0, names=["user_id", "item_id", "timestamp"])
    return pandas_csr(df)


def pandas_parquet(path: Path):
    import pandas as pd

    return pandas_csr(pd.read_parquet(path))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS for the readers (default: as set in the environment)")
    args = parser.parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    try:
        import pandas  # noqa: F401
    except ImportError:
        print("skipped: pandas is not installed", file=sys.stderr)
        return 0
    try:
        import pyarrow  # noqa: F401
        have_arrow = True
    except ImportError:
        have_arrow = False
    from seqrec.data import SequenceDataset

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            n = int(size)
            users, items, times = zipf_interactions(n)
            inter = Path(tmp) / f"zipf{n}.inter"
            start = time.perf_counter()
            write_atomic(inter, users, items, times)
            mb = inter.stat().st_size / 1e6
            print(f"n={n}: wrote {mb:.0f} MB in {time.perf_counter() - start:.1f}s", file=sys.stderr)

            ds = SequenceDataset.from_atomic(inter)
            ref_indptr, _ = pandas_atomic(inter)
            assert ds.num_interactions == n and ds.num_users == len(ref_indptr) - 1, "providers disagree"
            t_seqrec, _ = median_seconds(lambda: SequenceDataset.from_atomic(inter), args.repeats)
            t_pandas, _ = median_seconds(lambda: pandas_atomic(inter), args.repeats)
            rows.append([n, "atomic .inter", t_seqrec, t_pandas, t_pandas / t_seqrec, 1e9 * t_seqrec / n,
                         mb / t_seqrec])

            if have_arrow:
                import pyarrow as pa
                import pyarrow.parquet as pq

                parquet = Path(tmp) / f"zipf{n}.parquet"
                pq.write_table(pa.table({"user_id": users, "item_id": items, "timestamp": times}), parquet)
                t_seqrec, _ = median_seconds(lambda: SequenceDataset.from_parquet(parquet), args.repeats)
                t_pandas, _ = median_seconds(lambda: pandas_parquet(parquet), args.repeats)
                rows.append([n, "parquet", t_seqrec, t_pandas, t_pandas / t_seqrec, 1e9 * t_seqrec / n, ""])

            split = ds.leave_one_out(max_len=50)

            def epoch():
                for _ in split.train_batches(256, seed=0, epoch=0):
                    pass

            t_epoch, _ = median_seconds(epoch, 1, warmup=0)
            rows.append([n, "epoch (batch 256)", t_epoch, "", "", 1e9 * t_epoch / n, ""])
            del ds, split
    print_table("Data side at scale (seconds; ratio = pandas / seqrec, > 1: seqrec faster)",
                ["interactions", "task", "seqrec s", "pandas s", "ratio", "ns/interaction", "MB/s"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
