"""Benchmark 1: loading Amazon Beauty (S3-Rec text + item2attributes JSON).

Providers: seqrec's C++ reader (SequenceDataset.from_s3rec) vs a plain-Python reader
doing the same work (split lines, map raw ids to dense ids both ways, CSR arrays,
attribute lists). Prints medians over repeats and the speed ratio.

    python benchmarks/bench_data_loading.py [--data ../shared/data/Beauty] [--repeats 7]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from common import SHARED_DATA, median_seconds, print_table


def plain_python_load(txt: Path, attr_json: Path):
    """The straightforward reader: Python lines, dicts and lists, then NumPy CSR."""
    user_tokens, raw_items, indptr = [], [], [0]
    with open(txt) as fh:
        for line in fh:
            parts = line.split()
            if not parts:
                continue
            user_tokens.append(parts[0])
            raw_items.extend(int(x) for x in parts[1:])
            indptr.append(len(raw_items))
    vocab = sorted(set(raw_items))
    index = {item: i + 1 for i, item in enumerate(vocab)}
    items = np.asarray([index[i] for i in raw_items], np.int64)
    with open(attr_json) as fh:
        attrs = json.load(fh)
    per_item = [[] for _ in range(len(vocab) + 1)]
    for key, values in attrs.items():
        per_item[index[int(key)]] = list(dict.fromkeys(values))
    return np.asarray(indptr, np.int64), items, user_tokens, [""] + [str(v) for v in vocab], per_item


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "Beauty")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    txt = args.data / f"{args.data.name}.txt"
    attr = args.data / f"{args.data.name}_item2attributes.json"
    if not txt.exists():
        print(f"skipped: {txt} not found", file=sys.stderr)
        return 0
    from seqrec.data import SequenceDataset

    ds = SequenceDataset.from_s3rec(txt, attr)
    ref = plain_python_load(txt, attr)
    assert np.array_equal(ref[0], ds.indptr) and np.array_equal(ref[1], ds.items), "providers disagree"
    t_seqrec, _ = median_seconds(lambda: SequenceDataset.from_s3rec(txt, attr), args.repeats)
    t_plain, _ = median_seconds(lambda: plain_python_load(txt, attr), args.repeats)
    t_seq_only, _ = median_seconds(lambda: SequenceDataset.from_s3rec(txt, None), args.repeats)
    print_table(f"load {args.data.name}: {ds.num_users} users, {ds.num_items} items, {ds.num_interactions} "
                f"interactions (median of {args.repeats})",
                ["provider", "seconds", "vs plain"],
                [["plain Python (text + JSON)", t_plain, 1.0],
                 ["seqrec (text + JSON)", t_seqrec, t_plain / t_seqrec],
                 ["seqrec (text only)", t_seq_only, t_plain / t_seq_only]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
