"""Serving paths that leave Python: ``torch.export``, AOTInductor and ONNX of a model's top-k.

What is exported is :class:`TopK`, a model's whole serving path in one module::

    history [B, L] (left-padded dense ids) -> score(last max_len items) [B, V + 1]
        -> history and ``exclude`` items set to -inf -> top-k -> (ids [B, k], scores [B, k])

the same computation as :meth:`SequentialRecommender.recommend` (ids 0 and score -inf
where fewer than k items are admissible), traced once with a dynamic batch and a
dynamic history width. From the exported program:

* :func:`aoti_package` compiles it with AOTInductor into a ``.pt2`` package that
  ``torch._inductor.aoti_load_package`` runs without the model's Python code (the
  ``seqrec::*`` operators still come from the seqrec library: import seqrec, or load
  its ``_C`` library, in the serving process);
* :func:`onnx_program` replaces every ``seqrec::*`` operator by its decomposition into
  ATen (:data:`DECOMPOSITIONS`, the ops' plain-PyTorch references, the same math) and
  exports with ``torch.onnx.export(..., dynamo=True)``, so the ONNX graph holds only
  standard ONNX operators and runs in onnxruntime without seqrec.

TorchScript is not offered: it is in maintenance upstream; export / AOTInductor / ONNX
are the supported serving paths.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import seqrec._loader  # noqa: F401  (registers torch.ops.seqrec.*)

from .ops import reference
from .ops.reference.dif_attention import dif_attention_with_lse
from .ops.reference.dropout import dropout_keep_mask

__all__ = ["TopK", "DECOMPOSITIONS", "export_topk", "decompose_seqrec_ops", "seqrec_ops_in", "aoti_package",
           "onnx_program"]


class TopK(nn.Module):
    """A model's recommendation path as one exportable module.

    Args:
        model: a :class:`~seqrec.models.SequentialRecommender` (put in eval mode here:
            dropout off, as in :meth:`~seqrec.models.SequentialRecommender.recommend`).
        k: items returned per row, 1 <= k <= num_items.

    ``forward(history, exclude)``:
        history: [B, L] int64 dense item ids, LEFT-padded with 0, any L >= 1; the last
            ``max_len`` columns are encoded, every item of the row is excluded.
        exclude: [B, m] int64 dense ids to exclude besides the history (out of stock,
            already shown), 0 = none; m >= 1 (a [B, 1] of zeros excludes nothing).

    Returns ``(ids [B, k] int64, scores [B, k])``, best first; id 0 and score -inf in
    slots with no admissible item left. Equal to ``model.recommend(history, k)`` when
    ``exclude`` holds no item.
    """

    def __init__(self, model: nn.Module, k: int = 10) -> None:
        super().__init__()
        num_items = model.config.num_items
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_items:
            raise ValueError(f"k must be an int in [1, num_items={num_items}], got {k!r}")
        self.model = model.eval()
        self.k = k
        self.max_len = model.config.max_len

    def forward(self, history: Tensor, exclude: Tensor) -> tuple[Tensor, Tensor]:
        # The encoded window is always max_len wide (left-padded when the history is
        # shorter: positions are right-aligned and padding is masked, so the scores are
        # those of the unpadded rows), so the graph has one window shape for any L.
        window = F.pad(history, (self.max_len, 0))[:, -self.max_len:]
        scores = self.model.score(window)  # [B, V + 1], column 0 = -inf
        scores = scores.scatter(1, history, float("-inf")).scatter(1, exclude, float("-inf"))
        top_scores, top_ids = scores.topk(self.k, dim=1)
        return top_ids.masked_fill(top_scores == float("-inf"), 0), top_scores


def _example_inputs(model: nn.Module, batch: int = 2) -> tuple[Tensor, Tensor]:
    """Inputs to trace with: full rows of distinct real ids (no path depends on them)."""
    n, v = model.config.max_len, model.config.num_items
    history = (torch.arange(batch * n).view(batch, n) % v) + 1
    history[0, : n // 2] = 0  # one left-padded row
    exclude = torch.zeros(batch, 2, dtype=torch.int64)
    device = next(model.parameters()).device
    return history.to(device), exclude.to(device)


def export_topk(model: nn.Module, k: int = 10, *, example: tuple[Tensor, Tensor] | None = None,
                dynamic: bool = True) -> torch.export.ExportedProgram:
    """``torch.export`` of :class:`TopK` (``model``, ``k``).

    Args:
        model: a :class:`~seqrec.models.SequentialRecommender`.
        k: items per row.
        example: ``(history, exclude)`` to trace with; default: two rows of ``max_len``
            ids and a [2, 2] exclude.
        dynamic: batch size, history width and exclude width are dynamic (any B >= 1,
            L >= 1, m >= 1 at run time); False fixes the example's shapes.

    Returns:
        The exported program (``.module()`` runs it; ``torch.export.save`` stores it).
    """
    module = TopK(model, k)
    args = example if example is not None else _example_inputs(model)
    shapes = None
    if dynamic:
        auto = torch.export.Dim.AUTO  # the tracer finds each dimension's range
        shapes = {"history": {0: auto, 1: auto}, "exclude": {0: auto, 1: auto}}
    with torch.no_grad():
        return torch.export.export(module, args, dynamic_shapes=shapes)


# ---------------------------------------------------------------------------------------
# Decompositions of the seqrec operators into ATen (their plain-PyTorch references), for
# exporters that only know standard operators (ONNX). Each takes the op's schema.

def _dif_attention_decomposition(q, k, v, side_q=None, side_k=None, fusion_params=None, key_padding_mask=None,
                                 seed=None, *, fusion="sum", causal=True, scale=None, fusion_sees_masked=False,
                                 dropout_p=0.0):
    if dropout_p > 0.0:
        raise RuntimeError("seqrec::dif_attention with dropout_p > 0 (a training graph) has no decomposition; "
                           "export the model in eval mode")
    return dif_attention_with_lse(q, k, v, list(side_q or []), list(side_k or []), fusion=fusion,
                                  fusion_params=list(fusion_params or []), key_padding_mask=key_padding_mask,
                                  causal=causal, scale=scale, fusion_sees_masked=fusion_sees_masked)


def _intent_cluster_decomposition(x, mask, prototypes, tau, active=None, active_scale=None, weights=None,
                                  values=None, eps=1e-5):
    return reference.intent_cluster(x, mask, prototypes, tau, active=active, active_scale=active_scale,
                                    weights=weights, values=values, eps=eps)


def _dropout_decomposition(x, seed, p):
    keep = dropout_keep_mask(seed, tuple(x.shape), p, device=x.device)
    return x * keep.to(x.dtype) * (1.0 / (1.0 - p))


#: ``seqrec::*`` forward operator -> its decomposition into ATen (the op's plain-PyTorch
#: reference, the same math), for ``ExportedProgram.run_decompositions``. Covers every
#: operator a model's inference path calls (``dif_attention``, ``intent_cluster``;
#: ``dropout`` for completeness, a no-op in eval mode). ``rank_topk`` / ``rank_sampled``
#: (evaluation) and ``seq_mask`` (S3-Rec pretraining) are not serving operators.
DECOMPOSITIONS: dict[torch._ops.OpOverload, Callable] = {
    torch.ops.seqrec.dif_attention.default: _dif_attention_decomposition,
    torch.ops.seqrec.intent_cluster.default: _intent_cluster_decomposition,
    torch.ops.seqrec.dropout.default: _dropout_decomposition,
}


# torch's own FutureWarning, not ours: ExportedProgram.run_decompositions deep-copies the
# program's module call graph (_get_updated_module_call_graph), and copying a tree spec
# re-creates torch's LeafSpec through its deprecated class, which warns as if isinstance
# had been called on it; inductor's compile_fx (AOTInductor) copies them too. Filtered
# around our calls into torch only (run_decompositions, torch.onnx.export,
# aoti_compile_and_package), so the same warning from anyone else still shows.
_TORCH_LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


@contextlib.contextmanager
def _without_torch_leafspec_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TORCH_LEAFSPEC_WARNING, category=FutureWarning)
        yield


def seqrec_ops_in(program: torch.export.ExportedProgram) -> list[str]:
    """Names of the ``seqrec::*`` operators ``program``'s graph calls."""
    return sorted({str(n.target) for n in program.graph.nodes
                   if n.op == "call_function" and str(n.target).startswith("seqrec.")})


def decompose_seqrec_ops(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``program`` with every ``seqrec::*`` operator replaced by its ATen decomposition
    (:data:`DECOMPOSITIONS`); other operators are left as they are (an exporter such as
    ONNX applies its own decompositions to them).

    Raises:
        RuntimeError: naming the seqrec operators that have no decomposition.
    """
    with _without_torch_leafspec_warning():
        decomposed = program.run_decompositions(dict(DECOMPOSITIONS))
    left = seqrec_ops_in(decomposed)
    if left:
        raise RuntimeError(f"seqrec operators without a decomposition are left in the graph: {left}")
    return decomposed


def aoti_package(model: nn.Module, path: str | os.PathLike, k: int = 10, *,
                 program: torch.export.ExportedProgram | None = None) -> str:
    """Compile :class:`TopK` (``model``, ``k``) with AOTInductor into the package ``path``
    (a ``.pt2`` file, written to a temporary name and renamed).

    Load it with ``torch._inductor.aoti_load_package(path)`` and call it with
    ``(history, exclude)``; the serving process must have imported ``seqrec`` (or
    loaded its operator library) for the ``seqrec::*`` kernels. Compiling runs a C++
    compiler: tens of seconds on a few cores.

    Returns:
        ``str(path)``.
    """
    from torch._inductor import aoti_compile_and_package

    path = Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"aoti_package: path must end in .pt2 (AOTInductor's package format), got {path}")
    program = export_topk(model, k) if program is None else program
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.pt2")
    try:
        with _without_torch_leafspec_warning():  # inductor's compile_fx deep-copies tree specs too
            aoti_compile_and_package(program, package_path=str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return str(path)


def onnx_program(model: nn.Module, k: int = 10, *, path: str | os.PathLike | None = None,
                 program: torch.export.ExportedProgram | None = None):
    """ONNX export of :class:`TopK` (``model``, ``k``): ``torch.onnx.export(dynamo=True)``
    of the exported program with the ``seqrec::*`` operators decomposed
    (:func:`decompose_seqrec_ops`), so onnxruntime runs it without seqrec.

    Inputs ``history`` [B, L] and ``exclude`` [B, m] (int64), outputs ``ids`` and
    ``scores`` [B, k], all dimensions but k dynamic. Needs the optional packages
    ``onnx`` and ``onnxscript`` (``pip install seqrec[onnx]``).

    Args:
        path: when given, the ``.onnx`` file is written there (atomically).

    Returns:
        The ``torch.onnx.ONNXProgram`` (``.model_proto`` is the ONNX model).
    """
    for package in ("onnx", "onnxscript"):
        try:
            __import__(package)
        except ImportError:
            raise ImportError(f"onnx_program needs the optional package {package!r}: pip install 'seqrec[onnx]'") \
                from None
    program = export_topk(model, k) if program is None else program
    if seqrec_ops_in(program):  # a program decomposed already is taken as it is
        program = decompose_seqrec_ops(program)
    with _without_torch_leafspec_warning():
        onnx = torch.onnx.export(program, dynamo=True, input_names=["history", "exclude"],
                                 output_names=["ids", "scores"], verbose=False)
    if path is not None:
        from .utils import atomic_write

        with atomic_write(path, "wb") as fh:
            fh.write(onnx.model_proto.SerializeToString())
    return onnx
