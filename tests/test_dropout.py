"""dropout: the compiled op against its plain-PyTorch reference (bit for bit, every
dtype, strided inputs, any thread count), its statistics, gradients (gradcheck,
gradgradcheck), opcheck, compile, the nn.Module face, and bad inputs."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seqrec.models.layers import Dropout
from seqrec.ops import dropout, reference
from seqrec.ops.reference.dropout import dropout_keep_mask

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (33, 65), (4, 3, 50, 17), ()])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_matches_reference_bit_for_bit(dtype, shape, p, device="cpu"):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    got = dropout(x, p, seed=1234)
    want = reference.dropout(x, 1234, p)
    assert got.dtype == dtype and got.shape == x.shape and got.is_contiguous()
    assert torch.equal(got, want)
    keep = dropout_keep_mask(1234, shape, p, device=device)
    assert torch.equal(got != 0, keep & (x != 0))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_reference_bit_for_bit(dtype):
    # The kernel where one is built, else the wrapper's reference path: the same mask.
    test_matches_reference_bit_for_bit(dtype, (4, 3, 50, 17), 0.3, device="cuda")


def test_mask_follows_the_logical_index_not_the_strides():
    base = torch.randn(40, 30)
    x = base.t()  # non-contiguous view
    got = dropout(x, 0.3, seed=5)
    torch.testing.assert_close(got, dropout(x.contiguous(), 0.3, seed=5), rtol=0, atol=0)
    assert torch.equal(got, reference.dropout(x, 5, 0.3))


def test_independent_of_the_thread_count():
    x = torch.randn(300_000)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = dropout(x, 0.4, seed=9)
        torch.set_num_threads(max(threads, 2))
        many = dropout(x, 0.4, seed=9)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.8])
def test_statistics(p):
    n = 1_000_000
    x = torch.ones(n, dtype=torch.float64)
    out = dropout(x, p, seed=42)
    kept = out != 0
    rate = 1 - kept.double().mean().item()
    assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / n)  # 5 sigma
    assert torch.all(out[kept] == 1 / (1 - p))
    assert abs(out.mean().item() - 1.0) < 5 * math.sqrt(p / (1 - p) / n)  # unbiased
    # Neighbouring elements are independent: P(both kept) = (1 - p)^2.
    both = (kept[:-1] & kept[1:]).double().mean().item()
    assert abs(both - (1 - p) ** 2) < 5 * math.sqrt((1 - p) ** 2 * (1 - (1 - p) ** 2) / n) + 1e-4
    # Another seed, another mask; the same seed, the same mask.
    other = dropout(x, p, seed=43) != 0
    assert (other != kept).double().mean().item() == pytest.approx(2 * p * (1 - p), abs=0.01)
    assert torch.equal(dropout(x, p, seed=42), out)


def test_seed_from_torch_generator():
    x = torch.randn(1000)
    torch.manual_seed(3)
    a = dropout(x, 0.5)
    b = dropout(x, 0.5)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.5), a) and not torch.equal(a, b)
    gen = torch.Generator().manual_seed(8)
    c = dropout(x, 0.5, generator=gen)
    assert torch.equal(c, dropout(x, 0.5, generator=torch.Generator().manual_seed(8)))


def test_identity_when_not_dropping():
    x = torch.randn(10)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x


@pytest.mark.parametrize("backend", ["seqrec", "reference"])
def test_gradients(backend):
    x = torch.randn(6, 9, dtype=torch.float64, requires_grad=True)
    fn = lambda t: dropout(t, 0.35, seed=77, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))
    g = torch.randn(6, 9, dtype=torch.float64)
    (grad,) = torch.autograd.grad(fn(x), x, g)
    assert torch.equal(grad, reference.dropout(g, 77, 0.35))


def test_backward_saves_no_mask():
    x = torch.randn(256, 64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        dropout(x, 0.5, seed=1).sum().backward()
    assert [tuple(t.shape) for t in saved] == [(1,)]  # the seed only
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        F.dropout(x, 0.5).sum().backward()
    assert any(t.numel() == x.numel() for t in saved)  # what torch keeps instead


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype):
    x = torch.randn(5, 7, dtype=dtype, requires_grad=True)
    torch.library.opcheck(torch.ops.seqrec.dropout.default, (x, torch.tensor([3]), 0.25))


def test_compile_aot_eager_smoke():
    x = torch.randn(8, 16, requires_grad=True)

    def fn(t):
        return (dropout(t, 0.4, seed=torch.tensor([11])) * 2).sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    eager = fn(x)
    (g_eager,) = torch.autograd.grad(eager, x)
    out = compiled(x)
    (g_compiled,) = torch.autograd.grad(out, x)
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(g_compiled, g_eager)


def test_module_follows_train_and_eval():
    layer = Dropout(0.5)
    x = torch.ones(1000)
    assert isinstance(layer, torch.nn.Dropout) and layer.p == 0.5
    torch.manual_seed(0)
    out = layer(x)
    assert 400 < int((out == 0).sum()) < 600
    layer.eval()
    assert layer(x) is x
    with pytest.raises(ValueError, match="backend must be one of"):
        Dropout(0.1, backend="cuda-please")


def test_bad_inputs():
    with pytest.raises(ValueError, match="x must be a floating-point tensor"):
        dropout(torch.ones(3, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        dropout(torch.ones(3), 1.0)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        dropout(torch.ones(3), -0.1)
    with pytest.raises(ValueError, match="'seed' must be an int or a one-element integer tensor"):
        dropout(torch.ones(3), 0.5, seed=torch.tensor([1.5]))
    with pytest.raises(RuntimeError, match="dropout: argument 'seed' must be a one-element int64 CPU tensor"):
        torch.ops.seqrec.dropout.default(torch.ones(3), torch.tensor([1, 2]), 0.5)
    with pytest.raises(RuntimeError, match="dropout: argument 'seed' must have dtype Long"):
        torch.ops.seqrec.dropout.default(torch.ones(3), torch.tensor([1], dtype=torch.int32), 0.5)
    with pytest.raises(RuntimeError, match=r"dropout: argument 'p' must be in \[0, 1\)"):
        torch.ops.seqrec.dropout.default(torch.ones(3), torch.tensor([1]), 1.0)
    with pytest.raises(RuntimeError, match="dropout: argument 'x' must be a floating-point tensor"):
        torch.ops.seqrec.dropout.default(torch.ones(3, dtype=torch.int64), torch.tensor([1]), 0.5)


def test_baseline_loops_draw_the_same_masks():
    """The CPU kernels hash masks in loops compiled for AVX2 where the CPU has it, else in
    baseline x86-64 loops; SEQREC_CPU_AVX2=0 forces the latter (read once per process),
    so the mask tests of dropout and dif_attention run again in a subprocess that way."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import seqrec._C

    here = Path(__file__).parent
    env = dict(os.environ, SEQREC_CPU_AVX2="0", OMP_NUM_THREADS="1")
    probe = subprocess.run([sys.executable, "-c", "import seqrec._C as c; print(c.cpu_dropout_path())"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip() == "baseline", probe.stdout + probe.stderr
    assert seqrec._C.cpu_dropout_path() in ("avx2", "baseline")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(here / "test_dropout.py"),
         str(here / "test_dif_attention.py"), "-x",
         "-k", "(bit_for_bit and not cuda) or strides or test_dropout_keep_rate or test_dropout_backward"],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
