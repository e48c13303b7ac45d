"""bf16 autocast against float32: the training step of SASRec CE, DIF-SR (paper size) and
S3-Rec pretraining on Beauty shapes, on this CPU.

The step is ``TrainConfig(autocast="bf16")``'s: the forward and loss under
``torch.autocast(device, torch.bfloat16)``, backward and fused Adam outside it (weights
and optimizer state stay float32). Each model runs in a fresh process; the two variants
alternate over ``--repeats`` timed passes over the same ``--batches`` batches (after a
warm-up pass each), so both see the same machine load. Prints the median seconds per
step and the speed ratio, and whether the CPU has bf16 hardware (AMX / AVX512-BF16):
without it, bf16 matrix products are converted to float32 and back, and cost more.

    python benchmarks/bench_autocast.py [--models sasrec-ce difsr s3rec] [--batches 4] [--repeats 3]
"""
from __future__ import annotations

import statistics
import sys
import time

from bench_compile import build_case
from common import model_children, print_table

MODELS = ["sasrec-ce", "difsr", "s3rec", "sasrec-bce", "sine", "dss"]


def cpu_bf16_flags() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    found = sorted(f for f in flags if f.startswith("amx") or f == "avx512_bf16")
    return " ".join(found) or "none (no AMX, no AVX512-BF16)"


def run_model(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model, inputs, loss_fn = build_case(args.model, args.data, args.batches)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)

    def one_pass(bf16: bool) -> float:
        start = time.perf_counter()
        for x in inputs:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - start) / len(inputs)

    times = {False: [], True: []}
    one_pass(False), one_pass(True)  # warm-up
    for _ in range(args.repeats):
        for bf16 in (False, True):
            times[bf16].append(one_pass(bf16))
    return {"model": args.model, "fp32": statistics.median(times[False]), "bf16": statistics.median(times[True]),
            "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    driven = model_children(argv, doc=__doc__, script=__file__, models=MODELS, default_models=MODELS[:3],
                            default_batches=4, run_model=run_model,
                            row=lambda r: [r["model"], r["fp32"] * 1e3, r["bf16"] * 1e3, r["fp32"] / r["bf16"],
                                           r["threads"]])
    if driven is None:
        return 0
    args, rows = driven
    print_table(f"training step, bf16 autocast vs float32, median of {args.repeats} passes over {args.batches} "
                f"batches; CPU bf16 hardware: {cpu_bf16_flags()}",
                ["model", "fp32 ms", "bf16 ms", "fp32/bf16 (>1: bf16 faster)", "threads"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
