"""Golden runs: the first training steps of every model, pinned.

Recorded from the code before the architecture refactor (issue 28) so that moving code
between modules (one encoder, a model base, one config, the batch type) can be shown to
change no behaviour: same losses step by step and the same weights afterwards.

Each case seeds torch with a fixed integer, builds a small model on the synthetic
dataset, runs a few optimizer steps through the public API and records each step's loss
and a float64 checksum of the parameters (taken in registration order, so a renamed
parameter keeps its place). Portable check: losses within 1e-6 relative (BLAS kernels
differ between CPUs), the checksum within CHECKSUM_REL. Exact check: bit for bit, on the
platform that recorded the figures (torch version and CPU capability), one thread.
"""
from __future__ import annotations

import hashlib

import pytest
import torch

from seqrec.data import synthetic
from seqrec.data.split import LeaveOneOutSplit
from seqrec.models import build_model
from seqrec.models.difsr import attribute_config
from seqrec.models.s3rec import item_attribute_table

STEPS = 3
# Adam divides each gradient by its own running size, so a parameter whose gradient is
# float noise moves by up to lr a step in a direction another CPU's BLAS may flip: the
# weights drift more than the losses do. Measured on an AVX-512 EPYC against the AVX2
# recording: sine 7.8e-6, s3rec 4.0e-6 relative (losses within 1e-6 everywhere).
CHECKSUM_REL = 1e-4
BATCH = 16
MAX_LEN = 20


def _platform() -> str:
    return f"{torch.__version__.split('+')[0]}/{torch.backends.cpu.get_cpu_capability()}"


def _checksum(model: torch.nn.Module) -> tuple[float, str]:
    """(float64 weighted sum of every parameter, sha256 of their bytes), registration order."""
    total = 0.0
    digest = hashlib.sha256()
    for i, p in enumerate(model.parameters()):
        flat = p.detach().double().reshape(-1)
        weights = (torch.arange(flat.numel(), dtype=torch.float64) % 7 + 1) * (i % 5 + 1)
        total += float((flat * weights).sum())
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return total, digest.hexdigest()[:16]


def _dataset():
    return synthetic(num_users=60, num_items=80, num_intents=4, seed=3)


CASES = {
    "sasrec-bce": ("sasrec", dict(hidden_size=16, num_layers=2, num_heads=2, loss="bce")),
    "sasrec-ce": ("sasrec", dict(hidden_size=16, num_layers=2, num_heads=2, loss="ce")),
    "difsr-sum": ("difsr", dict(hidden_size=16, num_layers=2, num_heads=2, inner_size=32,
                                attribute_sizes=8, fusion="sum")),
    "difsr-concat": ("difsr", dict(hidden_size=16, num_layers=2, num_heads=2, inner_size=32,
                                   attribute_sizes=8, fusion="concat")),
    "difsr-gate": ("difsr", dict(hidden_size=16, num_layers=2, num_heads=2, inner_size=32,
                                 attribute_sizes=(8, 4), fusion="gate", loss="bce")),
    "difsr-gate-leak": ("difsr", dict(hidden_size=16, num_layers=1, num_heads=2, inner_size=32,
                                      attribute_sizes=8, fusion="gate", fusion_sees_masked=True)),
    "sine": ("sine", dict(hidden_size=16, num_prototypes=20, num_interests=3)),
    "dss": ("dss", dict(hidden_size=16, num_layers=2, num_intentions=3)),
    "dss-sampled": ("dss", dict(hidden_size=16, num_layers=1, num_intentions=3, loss="sampled",
                                beta="noise")),
}


def run_case(name: str) -> tuple[list[float], float, str]:
    """``(loss of each step, weight checksum, weight sha)`` of ``STEPS`` Adam steps."""
    model_name, fields = CASES[name]
    ds = _dataset()
    split = LeaveOneOutSplit(ds, max_len=MAX_LEN)
    if model_name == "difsr":
        fields = {**fields, **attribute_config(ds, ["category", "brand"])}
    torch.manual_seed(1234)
    side = {"attributes": ds} if model_name == "difsr" else {}
    model = build_model(model_name, num_items=ds.num_items, max_len=MAX_LEN, **side, **fields)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    batches = split.train_batches(BATCH, seed=7, epoch=0, num_negatives=1)
    for _, batch in zip(range(STEPS), batches):
        loss = model.loss(batch)  # as the trainer calls it: masks from batch.lengths
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return (losses, *_checksum(model))


def run_s3rec() -> tuple[list[float], float, str]:
    ds = _dataset()
    table, num_attributes, _ = item_attribute_table(ds, ["category", "brand"])
    torch.manual_seed(1234)
    model = build_model("s3rec", num_items=ds.num_items, num_attributes=num_attributes,
                        attribute_fields=("category", "brand"), max_len=MAX_LEN, hidden_size=16)
    model.set_item_attributes(table)
    split = LeaveOneOutSplit(ds, max_len=MAX_LEN)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    batches = split.train_batches(BATCH, seed=7, epoch=0, num_negatives=1)
    for step, batch in zip(range(STEPS), batches):
        loss, _ = model.pretrain_loss(batch.input_ids, seed=100 + step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return (losses, *_checksum(model))


# Recorded on the pre-refactor code (commit fc9b290), one thread.
RECORDED_PLATFORM = '2.13.0/AVX2'
GOLDEN: dict[str, tuple[list[float], float, str]] = {
    'sasrec-bce': ([1.3805251121520996, 1.3655657768249512, 1.3534550666809082], 1146.5001707377946, '917707699780d78e'),
    'sasrec-ce': ([4.371970176696777, 4.346954345703125, 4.300938606262207], 1158.2129700803453, '694eb1f1d7ae9fbd'),
    'difsr-sum': ([18.258136749267578, 18.125431060791016, 17.427352905273438], 817.4735006604562, '448efce4300f2263'),
    'difsr-concat': ([18.261337280273438, 18.143056869506836, 17.541845321655273], 1164.6531192628718, '6d719358ab4f685a'),
    'difsr-gate': ([15.266708374023438, 14.956583023071289, 14.17333984375], 727.1796504637039, 'ec2cac501f0b684c'),
    'difsr-gate-leak': ([18.255531311035156, 18.026878356933594, 17.43199348449707], 341.13880552631923, '03f2af92aa0e62aa'),
    'sine': ([0.6931389570236206, 0.6681444048881531, 0.636094331741333], 104.16263464526818, '0d2e963f076887bc'),
    'dss': ([4.722189426422119, 4.660971641540527, 4.636063575744629], 1409.6313694303055, '6eddc18c15110ee6'),
    'dss-sampled': ([1.0550520420074463, 1.0396883487701416, 1.0577365159988403], 1348.6246468339282, 'a6bd7acc3f71e54b'),
    's3rec': ([4526.79443359375, 4407.97021484375, 4171.85986328125], 1084.6208979369767, '219909c0ee5c199f'),
}


def _run(name):
    return run_s3rec() if name == "s3rec" else run_case(name)


@pytest.mark.parametrize("name", [*CASES, "s3rec"])
def test_golden_run(name, one_thread):
    losses, checksum, sha = _run(name)
    want_losses, want_checksum, want_sha = GOLDEN[name]
    assert losses == pytest.approx(want_losses, rel=1e-6, abs=1e-7)
    assert checksum == pytest.approx(want_checksum, rel=CHECKSUM_REL)
    if _platform() == RECORDED_PLATFORM:  # bit for bit where the figures were recorded
        assert (losses, checksum, sha) == (want_losses, want_checksum, want_sha)


if __name__ == "__main__":  # print the table to paste above (run on the reference code)
    torch.set_num_threads(1)
    print(f"RECORDED_PLATFORM = {_platform()!r}")
    print("GOLDEN = {")
    for name in [*CASES, "s3rec"]:
        print(f"    {name!r}: {_run(name)!r},")
    print("}")
