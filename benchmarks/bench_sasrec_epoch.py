"""One SASRec training epoch on Beauty (S3-Rec settings), seqrec vs a straightforward
eager-PyTorch SASRec with a per-sample Python data pipeline.

Reference provider (written here, in the style of the S3-Rec authors' code): a
``torch.utils.data.Dataset`` that builds each user's (input, target, negative) lists in
Python, drawing negatives with ``random.randint`` rejection, padded with list
arithmetic, collated by a ``DataLoader``; a SASRec built from hand-written LayerNorm
(mean/variance ops), erf-GELU and additive-mask attention.
seqrec provider: the C++ data engine's batches and ``seqrec.models.SASRec``.

Same data, same sizes (hidden 64, 2 layers, 2 heads, dropout 0.5, batch 256, max_len
50, lr 1e-3, BCE with one negative), same optimizer. Prints the median epoch seconds
over repeats and the ratio.

    python benchmarks/bench_sasrec_epoch.py [--repeats 3] [--batches N]
"""
from __future__ import annotations

import argparse
import math
import random
import sys
import time

import torch
import torch.nn as nn

from common import SHARED_DATA, print_table


# ---------------------------------------------------------------- reference
class PerSampleDataset(torch.utils.data.Dataset):
    def __init__(self, sequences, num_items, max_len):
        self.sequences, self.num_items, self.max_len = sequences, num_items, max_len

    def __len__(self):
        return len(self.sequences)

    def __getitem__(self, index):
        items = self.sequences[index]
        input_ids, target_pos = items[:-3], items[1:-2]
        seen = set(items)
        target_neg = []
        for _ in input_ids:
            neg = random.randint(1, self.num_items)
            while neg in seen:
                neg = random.randint(1, self.num_items)
            target_neg.append(neg)
        pad = self.max_len - len(input_ids)
        input_ids = ([0] * pad + input_ids)[-self.max_len:]
        target_pos = ([0] * pad + target_pos)[-self.max_len:]
        target_neg = ([0] * pad + target_neg)[-self.max_len:]
        return (torch.tensor(input_ids, dtype=torch.long), torch.tensor(target_pos, dtype=torch.long),
                torch.tensor(target_neg, dtype=torch.long))


class PlainLayerNorm(nn.Module):
    def __init__(self, size, eps=1e-12):
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(size)), nn.Parameter(torch.zeros(size)), eps

    def forward(self, x):
        u = x.mean(-1, keepdim=True)
        s = (x - u).pow(2).mean(-1, keepdim=True)
        return self.weight * (x - u) / torch.sqrt(s + self.eps) + self.bias


def gelu(x):
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


class PlainLayer(nn.Module):
    def __init__(self, d, heads, dropout):
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = PlainLayerNorm(d), PlainLayerNorm(d)
        self.f1, self.f2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.drop = nn.Dropout(dropout)

    def split(self, x):
        b, n, _ = x.shape
        return x.view(b, n, self.h, self.dh).permute(0, 2, 1, 3)

    def forward(self, x, mask):
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.dh) + mask
        probs = self.drop(nn.functional.softmax(scores, dim=-1))
        ctx = (probs @ v).permute(0, 2, 1, 3).reshape(x.shape)
        x = self.ln1(self.drop(self.o(ctx)) + x)
        return self.ln2(self.drop(self.f2(gelu(self.f1(x)))) + x)


class PlainSASRec(nn.Module):
    def __init__(self, num_items, max_len, d=64, layers=2, heads=2, dropout=0.5):
        super().__init__()
        self.item = nn.Embedding(num_items + 1, d, padding_idx=0)
        self.pos = nn.Embedding(max_len, d)
        self.ln, self.drop = PlainLayerNorm(d), nn.Dropout(dropout)
        self.layers = nn.ModuleList(PlainLayer(d, heads, dropout) for _ in range(layers))

    def forward(self, ids):
        n = ids.size(1)
        x = self.drop(self.ln(self.item(ids) + self.pos(torch.arange(n).unsqueeze(0))))
        attn = (ids > 0).long().unsqueeze(1).unsqueeze(2)
        attn = attn * torch.tril(torch.ones(1, 1, n, n, dtype=torch.long))
        mask = (1.0 - attn.float()) * -10000.0
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def loss(self, ids, pos, neg):
        h = self(ids)
        pos_logit = (h * self.item(pos)).sum(-1)
        neg_logit = (h * self.item(neg)).sum(-1)
        real = (pos > 0).float()
        loss = -(torch.log(torch.sigmoid(pos_logit) + 1e-24) + torch.log(1 - torch.sigmoid(neg_logit) + 1e-24))
        return (loss * real).sum() / real.sum()


def reference_epoch(dataset, model, opt, batch_size, max_batches):
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)
    for b, (ids, pos, neg) in enumerate(loader):
        if b == max_batches:
            break
        loss = model.loss(ids, pos, neg)
        opt.zero_grad()
        loss.backward()
        opt.step()


def seqrec_epoch(split, model, opt, batch_size, max_batches, epoch):
    for b, batch in enumerate(split.train_batches(batch_size, seed=0, epoch=epoch)):
        if b == max_batches:
            break
        loss = model.loss(batch.input_ids, batch.target_ids, batch.negative_ids)
        opt.zero_grad()
        loss.backward()
        opt.step()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED_DATA / "Beauty"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=None, help="limit batches per epoch (quick runs)")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    from seqrec.data import load_dataset
    from seqrec.models import SASRec, SASRecConfig

    try:
        ds = load_dataset(args.data)
    except Exception as exc:  # noqa: BLE001
        print(f"skipped: {exc}", file=sys.stderr)
        return 0
    split = ds.leave_one_out(max_len=50)
    sequences = [ds.sequence(u).tolist() for u in split.train_users]
    max_batches = args.batches if args.batches else 10 ** 9
    torch.manual_seed(0)
    ref_model = PlainSASRec(ds.num_items, 50)
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=1e-3)
    ref_data = PerSampleDataset(sequences, ds.num_items, 50)
    model = SASRec(SASRecConfig(num_items=ds.num_items))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    times = {"reference": [], "seqrec": []}
    for r in range(args.repeats + 1):  # the first round warms up
        t = time.perf_counter()
        reference_epoch(ref_data, ref_model, ref_opt, args.batch_size, max_batches)
        t_ref = time.perf_counter() - t
        t = time.perf_counter()
        seqrec_epoch(split, model, opt, args.batch_size, max_batches, r)
        t_seq = time.perf_counter() - t
        if r:
            times["reference"].append(t_ref)
            times["seqrec"].append(t_seq)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    # The data pipelines alone, to show where the time goes.
    t = time.perf_counter()
    for b, _ in enumerate(torch.utils.data.DataLoader(ref_data, batch_size=args.batch_size, shuffle=True)):
        if b == max_batches:
            break
    t_ref_data = time.perf_counter() - t
    t = time.perf_counter()
    for b, _ in enumerate(split.train_batches(args.batch_size, seed=0, epoch=99)):
        if b == max_batches:
            break
    t_seq_data = time.perf_counter() - t
    print_table(f"SASRec epoch on {ds.name} ({len(sequences)} training users, batch {args.batch_size}, "
                f"torch threads {torch.get_num_threads()}; median of {args.repeats})",
                ["provider", "epoch s", "data s", "speed-up"],
                [["eager reference + per-sample Python data", med["reference"], t_ref_data, 1.0],
                 ["seqrec", med["seqrec"], t_seq_data, med["reference"] / med["seqrec"]]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
