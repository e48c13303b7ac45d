"""seq_mask vs per-sample Python masking: one S3-Rec pretraining epoch's corruption on Beauty.

Providers (each produces every batch of one epoch, batch 100, max length 50, p = 0.2):

* ``python-authors``: the S3-Rec authors' ``PretrainDataset.__getitem__`` re-typed: per
  sample a ``random.random()`` per item, a ``neg_sample`` rejection loop, segment sampling
  over the whole data's long sequence, padding, the [n, num_attributes] multi-hot attribute
  lists, seven ``torch.tensor`` calls; then the DataLoader's collate (``torch.stack``).
* ``python-lean``: the same loop, but attribute targets as padded ids like seqrec's output
  instead of the 638-wide multi-hot: the faster, conservative baseline the target is
  judged against.
* ``reference``: ``seqrec.ops.reference.seq_mask`` (per sample, same random streams as the
  kernel, so identical output).
* ``seqrec``: ``seqrec.ops.seq_mask`` on batches sliced from the pre-padded [U, 50] tensor
  (padding/truncation is the data engine's job, done once, outside the timing).

Times are medians over ``--repeats`` epochs (providers slower than ``--max-seconds`` per
epoch run on the first ``--python-batches`` batches and are scaled to the epoch; the table
says so). Memory: bytes of the tensors each provider hands to the model per batch, counted
from their shapes (the pipelines allocate little else that outlives a batch).

Data: ``$SEQREC_SHARED_DATA/Beauty/Beauty.txt`` (+ ``Beauty_item2attributes.json``), else
``../shared/data`` beside the repository, else a synthetic set of the same size. Each
user's pretraining sequence is ``seq[:-2][-50:]`` as in the authors' code (one sample per
user: 22,363; ``--prefixes`` uses the authors' every-prefix expansion instead).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

import seqrec
from seqrec.ops import seq_mask
from seqrec.ops.reference import seq_mask as reference_seq_mask

MAX_LEN, BATCH, MASK_P = 50, 100, 0.2


def load_data(prefixes: bool):
    root = Path(os.environ.get("SEQREC_SHARED_DATA",
                               Path(__file__).resolve().parents[2] / "shared" / "data"))
    path = root / "Beauty" / "Beauty.txt"
    if path.exists():
        users = [list(map(int, line.split()[1:])) for line in path.read_text().splitlines()]
        attr_path = root / "Beauty" / "Beauty_item2attributes.json"
        item2attr = {int(k): v for k, v in json.loads(attr_path.read_text()).items()} \
            if attr_path.exists() else {}
        source = f"Beauty ({path})"
    else:  # same shape as Beauty: 22,363 users, 12,101 items, ~8.9 items per user
        rng = random.Random(0)
        users = [[rng.randint(1, 12101) for _ in range(max(5, int(rng.expovariate(1 / 8.9))))]
                 for _ in range(22363)]
        item2attr = {i: rng.sample(range(1, 638), rng.randint(1, 5)) for i in range(1, 12102)}
        source = "synthetic (Beauty-sized; Beauty.txt not found)"
    num_items = max(max(u) for u in users)
    sequences = []
    for u in users:
        part = u[-(MAX_LEN + 2):-2]
        if prefixes:
            sequences.extend(part[:i + 1] for i in range(len(part)))
        else:
            sequences.append(part)
    long_sequence = [i for u in users for i in u[-(MAX_LEN + 2):-2]]
    return source, sequences, long_sequence, num_items, item2attr


def neg_sample(item_set, item_size):  # the authors' sampler, [1, item_size - 1] inclusive
    item = random.randint(1, item_size - 1)
    while item in item_set:
        item = random.randint(1, item_size - 1)
    return item


def python_sample(sequence, long_sequence, mask_id, item_size, attribute, multi_hot):
    """One sample the authors' way; ``attribute(item)`` gives its multi-hot or padded ids."""
    masked_item_sequence, neg_items = [], []
    item_set = set(sequence)
    for item in sequence[:-1]:
        if random.random() < MASK_P:
            masked_item_sequence.append(mask_id)
            neg_items.append(neg_sample(item_set, item_size))
        else:
            masked_item_sequence.append(item)
            neg_items.append(item)
    masked_item_sequence.append(mask_id)
    neg_items.append(neg_sample(item_set, item_size))
    if len(sequence) < 2:
        masked_segment_sequence = pos_segment = neg_segment = sequence
    else:
        sample_length = random.randint(1, len(sequence) // 2)
        start_id = random.randint(0, len(sequence) - sample_length)
        neg_start_id = random.randint(0, len(long_sequence) - sample_length)
        pos_segment = sequence[start_id:start_id + sample_length]
        neg_segment = long_sequence[neg_start_id:neg_start_id + sample_length]
        masked_segment_sequence = (sequence[:start_id] + [mask_id] * sample_length
                                   + sequence[start_id + sample_length:])
        tail = len(sequence) - (start_id + sample_length)
        pos_segment = [mask_id] * start_id + pos_segment + [mask_id] * tail
        neg_segment = [mask_id] * start_id + neg_segment + [mask_id] * tail
    pad = [0] * (MAX_LEN - len(sequence))
    masked_item_sequence = (pad + masked_item_sequence)[-MAX_LEN:]
    pos_items = (pad + sequence)[-MAX_LEN:]
    neg_items = (pad + neg_items)[-MAX_LEN:]
    masked_segment_sequence = (pad + masked_segment_sequence)[-MAX_LEN:]
    pos_segment = (pad + pos_segment)[-MAX_LEN:]
    neg_segment = (pad + neg_segment)[-MAX_LEN:]
    if multi_hot:  # the authors build it for every position (AAP uses the unmasked ones)
        attributes = [attribute(item) for item in pos_items]
    else:  # seqrec's output: padded ids, masked positions only
        attributes = [attribute(p) if m == mask_id else attribute(0)
                      for p, m in zip(pos_items, masked_item_sequence)]
    return (torch.tensor(attributes, dtype=torch.long),
            torch.tensor(masked_item_sequence, dtype=torch.long),
            torch.tensor(pos_items, dtype=torch.long),
            torch.tensor(neg_items, dtype=torch.long),
            torch.tensor(masked_segment_sequence, dtype=torch.long),
            torch.tensor(pos_segment, dtype=torch.long),
            torch.tensor(neg_segment, dtype=torch.long))


def make_providers(sequences, long_sequence, num_items, item2attr):
    mask_id, item_size = num_items + 1, num_items + 2
    attribute_size = 1 + max((a for v in item2attr.values() for a in v), default=0)
    slots = max((len(v) for v in item2attr.values()), default=1)
    rows = [[0] * slots for _ in range(num_items + 1)]
    for item, attrs in item2attr.items():
        if item <= num_items:
            rows[item][:len(attrs)] = attrs
    table = torch.tensor(rows, dtype=torch.long)

    def multi_hot(item):
        hot = [0] * attribute_size
        for a in item2attr.get(item, ()):
            hot[a] = 1
        return hot

    padded_ids = rows.__getitem__
    padded = torch.zeros(len(sequences), MAX_LEN, dtype=torch.long)
    for u, s in enumerate(sequences):
        if s:
            padded[u, MAX_LEN - len(s):] = torch.tensor(s[-MAX_LEN:])
    starts = range(0, len(sequences), BATCH)

    def python_epoch(attribute, hot):
        def run(num_batches):
            for start in list(starts)[:num_batches]:
                samples = [python_sample(s, long_sequence, mask_id, item_size, attribute, hot)
                           for s in sequences[start:start + BATCH]]
                batch = [torch.stack(field) for field in zip(*samples)]
            return batch
        return run

    def reference_epoch(num_batches):
        for i, start in enumerate(list(starts)[:num_batches]):
            out = reference_seq_mask(padded[start:start + BATCH], num_items=num_items,
                                     mask_token=mask_id, mask_prob=MASK_P, seed=i,
                                     item_attributes=table)
        return out

    def seqrec_epoch(num_batches):
        for i, start in enumerate(list(starts)[:num_batches]):
            out = seq_mask(padded[start:start + BATCH], num_items=num_items, mask_token=mask_id,
                           mask_prob=MASK_P, seed=i, item_attributes=table)
        return out

    def nbytes(out):
        return sum(t.numel() * t.element_size() for t in out)

    # Bytes handed to the model for one full batch.
    b = torch.zeros(BATCH, MAX_LEN, dtype=torch.long).numel() * 8
    sizes = {
        "python-authors": 6 * b + b * attribute_size,
        "python-lean": 6 * b + b * slots,
        "reference": nbytes(reference_seq_mask(padded[:BATCH], num_items=num_items,
                                               mask_token=mask_id, seed=0,
                                               item_attributes=table)),
        "seqrec": nbytes(seq_mask(padded[:BATCH], num_items=num_items, mask_token=mask_id,
                                  seed=0, item_attributes=table)),
    }
    providers = {
        "python-authors": python_epoch(multi_hot, True),
        "python-lean": python_epoch(padded_ids, False),
        "reference": reference_epoch,
        "seqrec": seqrec_epoch,
    }
    return providers, sizes, len(starts), attribute_size, slots


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--python-batches", type=int, default=30,
                        help="batches timed for providers slower than --max-seconds per epoch")
    parser.add_argument("--max-seconds", type=float, default=8.0)
    parser.add_argument("--prefixes", action="store_true",
                        help="the authors' every-prefix samples instead of one per user")
    parser.add_argument("--providers", default="python-authors,python-lean,reference,seqrec")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        print("seq_mask has no CUDA kernel yet (CPU only): skipping --device cuda")
        return 0

    random.seed(0)
    source, sequences, long_sequence, num_items, item2attr = load_data(args.prefixes)
    providers, sizes, num_batches, attribute_size, slots = make_providers(
        sequences, long_sequence, num_items, item2attr)
    print(f"data: {source}; {len(sequences)} sequences, {num_items} items, "
          f"{attribute_size} attribute ids, <= {slots} per item")
    print(f"epoch: {num_batches} batches of {BATCH}, n={MAX_LEN}, p={MASK_P}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"seqrec {seqrec.__version__}")

    results = {}
    for name in args.providers.split(","):
        run = providers[name]
        t0 = time.perf_counter()
        run(args.python_batches)  # warm-up, and a probe of the cost per batch
        per_batch = (time.perf_counter() - t0) / min(args.python_batches, num_batches)
        batches = num_batches if per_batch * num_batches <= args.max_seconds else args.python_batches
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            run(batches)
            times.append((time.perf_counter() - t0) * num_batches / batches)
        results[name] = (statistics.median(times), batches)

    base = results.get("python-lean", results.get("python-authors"))
    print()
    print(f"{'provider':<16}{'epoch s':>10}{'per batch ms':>14}{'batches timed':>15}"
          f"{'speedup':>10}{'MB/batch out':>14}")
    for name, (sec, batches) in results.items():
        speed = f"{base[0] / sec:.3g}x" if base else "-"
        print(f"{name:<16}{sec:>10.3f}{sec / num_batches * 1e3:>14.3f}"
              f"{batches:>9}/{num_batches:<5}{speed:>10}{sizes[name] / 2**20:>14.2f}")
    if "seqrec" in results:
        for ref in ("python-lean", "python-authors"):
            if ref in results:
                print(f"seqrec vs {ref}: {results[ref][0] / results['seqrec'][0]:.1f}x "
                      "faster per epoch (target >= 50x vs the per-sample Python pipeline)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
