"""seqrec.utils.reuse_freed_memory: freed large blocks are reused instead of being
mapped and page-faulted in again. Measured in fresh processes, since the setting is
process-wide (and the in-process CLI tests apply it to pytest's own process)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from seqrec.utils import reuse_freed_memory

# Allocates, fills and frees a 64 MiB tensor (a Beauty [N, V] matrix is ~100 MB; glibc's
# default maps anything over 32 MiB afresh). glibc settles on reusing kept blocks after a
# few rounds (its free lists fill up first), so the faults are counted after 16 rounds.
CHILD = r"""
import json, resource, sys, torch
from seqrec.utils import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "1" else None
def fill():
    x = torch.empty(16 * 1024 * 1024)  # 64 MiB of float32
    x.fill_(1.0)
    return float(x[-1])
for _ in range(16):
    fill()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    fill()
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(reuse: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, "1" if reuse else "0"], check=True, capture_output=True,
                         text=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_reused_blocks_are_not_faulted_in_again():
    default, reused = _faults(False), _faults(True)
    if not reused["applied"]:
        pytest.skip("reuse_freed_memory() does not apply here (the C library is not glibc)")
    # glibc's default maps each 64 MiB block fresh: ~16k faults (4 KiB pages) per round,
    # unless the kernel backs it with 2 MiB pages (transparent_hugepage=always): 32.
    if default["faults"] < 8 * 1_000:
        pytest.skip(f"glibc's default costs only {default['faults']} page faults here (huge pages?)")
    assert default["faults"] > 8 * 8_000, default
    assert reused["faults"] < default["faults"] / 10, (default, reused)


def test_rejects_a_negative_size():
    with pytest.raises(ValueError, match="max_block_bytes must be >= 0"):
        reuse_freed_memory(-1)


def test_cli_applies_it_unless_switched_off(tmp_path, monkeypatch):
    from seqrec import cli
    calls = []
    monkeypatch.setattr(cli, "reuse_freed_memory", lambda: calls.append(1))
    argv = ["data", "stats", "--data", "synthetic", "--synthetic-users", "300", "--synthetic-items", "150"]
    assert cli.main(argv) == 0
    assert calls == []  # only the commands that train or evaluate
    train = ["train", "--model", "sasrec", "--data", "synthetic", "--synthetic-users", "300", "--synthetic-items",
             "150", "--epochs", "1", "--hidden-size", "8", "--no-progress"]
    assert cli.main(train) == 0
    assert calls == [1]
    monkeypatch.setenv("SEQREC_REUSE_FREED_MEMORY", "0")
    assert cli.main(train) == 0
    assert calls == [1]
