"""What ``seqrec.utils.reuse_freed_memory`` (called by ``seqrec train``) saves: the CPU
time of SASRec training steps with glibc's default malloc settings vs with freed blocks
kept for reuse.

Each setting runs in its own fresh process (the setting is process-wide), the two taking
turns over ``--repeats`` rounds: a Beauty-sized SASRec (12,101 items, hidden 64, 2
layers, 2 heads, batch 256 users of length 50 with Beauty's mean of ~9 real items, the
full-softmax CE loss and the BCE loss), ``--steps`` Adam steps after two warm-up steps.
Reports, medians over the rounds: wall and CPU (user + system) milliseconds per step,
system time alone, minor page faults per step, and the process's peak RSS.

Synthetic batches (no data files needed); one thread unless ``--threads``.

    python benchmarks/bench_malloc.py [--repeats 5] [--steps 10] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from common import print_table

CHILD = r"""
import json, resource, sys, time, torch
from seqrec.models import build_model
from seqrec.utils import reuse_freed_memory
loss, reuse, steps, threads = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
applied = reuse_freed_memory() if reuse else False
num_items, n, b = 12101, 50, 256
torch.manual_seed(0)
model = build_model("sasrec", num_items=num_items, max_len=n, hidden_size=64, num_layers=2, num_heads=2,
                    inner_size=256, hidden_dropout=0.5, attention_dropout=0.5, loss=loss)
opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
gen = torch.Generator().manual_seed(1)
def batch():
    length = torch.randint(3, 18, (b,), generator=gen)  # mean ~9, as Beauty
    ids = torch.randint(1, num_items + 1, (b, n + 1), generator=gen)
    ids[torch.arange(n + 1)[None, :] < (n + 1 - length - 1)[:, None]] = 0
    neg = torch.randint(1, num_items + 1, (b, n), generator=gen) * (ids[:, 1:] != 0)
    return ids[:, :-1], ids[:, 1:], neg
batches = [batch() for _ in range(steps + 2)]
def step(inputs, targets, negatives):
    l = model.loss(inputs, targets, negatives)
    opt.zero_grad(set_to_none=True); l.backward(); opt.step()
for x in batches[:2]:
    step(*x)
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for x in batches[2:]:
    step(*x)
t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"applied": applied, "wall_ms": (t1 - t0) / steps * 1e3,
                  "cpu_ms": (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) / steps * 1e3,
                  "sys_ms": (r1.ru_stime - r0.ru_stime) / steps * 1e3,
                  "faults": (r1.ru_minflt - r0.ru_minflt) / steps, "peak_mib": r1.ru_maxrss / 1024}))
"""


def measure(loss: str, reuse: bool, steps: int, threads: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, loss, "1" if reuse else "0", str(steps), str(threads)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--losses", default="ce,bce", help="comma-separated SASRec losses")
    args = ap.parse_args(argv)
    rows = []
    for loss in args.losses.split(","):
        runs: dict[bool, list[dict]] = {False: [], True: []}
        for _ in range(args.repeats):
            for reuse in (False, True):
                runs[reuse].append(measure(loss, reuse, args.steps, args.threads))
        if not all(r["applied"] for r in runs[True]):
            print(f"note: reuse_freed_memory() did not apply here (not glibc?); the {loss} rows compare equal settings")
        med = {reuse: {k: statistics.median(r[k] for r in rs) for k in ("wall_ms", "cpu_ms", "sys_ms", "faults",
                                                                           "peak_mib")}
               for reuse, rs in runs.items()}
        for reuse in (False, True):
            m = med[reuse]
            rows.append([f"SASRec {loss}", "reuse freed memory" if reuse else "glibc default",
                         f"{m['wall_ms']:.0f}", f"{m['cpu_ms']:.0f}", f"{m['sys_ms']:.0f}", f"{m['faults']:.0f}",
                         f"{m['peak_mib']:.0f}",
                         f"{med[False]['cpu_ms'] / m['cpu_ms']:.2f}x" if reuse else "1.00x"])
    print_table(f"SASRec training step, {args.threads} thread(s), medians of {args.repeats} fresh processes each",
                ["model", "malloc", "wall ms/step", "CPU ms/step", "system ms/step", "page faults/step",
                 "peak RSS MiB", "CPU speed-up"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
