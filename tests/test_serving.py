"""Serving paths that leave Python (issue 24 item 2): every model's top-k path (scores ->
exclude the history -> top-k) through torch.export, AOTInductor and ONNX, each equal to
eager ``recommend()``."""
from __future__ import annotations

import importlib.util
import io

import pytest
import torch

from seqrec import serving
from serving_models import MODEL_NAMES, NUM_ITEMS, build, histories

K = 10


def _eager(model, history, exclude=None):
    return model.recommend(history, K, exclude_items=exclude)


def _no_exclude(history):
    return torch.zeros(history.size(0), 1, dtype=torch.int64)


@pytest.fixture(scope="module")
def exported():
    """name -> (model, its exported top-k program): each model is traced once for the
    export, AOTInductor and ONNX tests (a trace takes seconds on 2 cores)."""
    cache = {}

    def get(name, decomposed=False):
        if name not in cache:
            model = build(name)
            cache[name] = (model, serving.export_topk(model, K))
        if decomposed and (name, "decomposed") not in cache:
            model, program = cache[name]
            cache[name, "decomposed"] = (model, serving.decompose_seqrec_ops(program))
        return cache[(name, "decomposed") if decomposed else name]
    return get


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_topk_module_equals_recommend(name):
    model = build(name)
    h = histories()
    ids, scores = serving.TopK(model, K)(h, _no_exclude(h))
    want_ids, want_scores = _eager(model, h)
    assert torch.equal(ids, want_ids)
    torch.testing.assert_close(scores, want_scores)
    # Items to exclude besides the history: recommend(exclude_items=...) and the module agree.
    extra = want_ids[:, :2].reshape(-1).unique()
    ids, _ = serving.TopK(model, K)(h, extra.expand(h.size(0), -1))
    assert torch.equal(ids, _eager(model, h, extra)[0])
    assert not torch.isin(ids, extra).any()


def test_topk_rejects_bad_k():
    with pytest.raises(ValueError, match="k must be an int in"):
        serving.TopK(build("sasrec"), NUM_ITEMS + 1)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_export_with_dynamic_batch_and_width_saves_and_loads(name, exported):
    model, program = exported(name)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer).module()
    h = histories()
    for rows, width in ((h, h.size(1)), (h[:3, -4:], 4), (h[:1, -1:], 1)):  # other batch sizes and widths
        rows = rows.contiguous()
        ids, scores = loaded(rows, _no_exclude(rows))
        want_ids, want_scores = _eager(model, rows)
        assert torch.equal(ids, want_ids), (name, width)
        torch.testing.assert_close(scores, want_scores)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_decomposed_program_has_no_seqrec_ops_and_equals_eager(name, exported):
    model, program = exported(name, decomposed=True)
    assert serving.seqrec_ops_in(exported(name)[1]), "the program calls no seqrec op: nothing to decompose"
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any(t.startswith("seqrec.") for t in targets), targets
    h = histories()
    ids, scores = program.module()(h, _no_exclude(h))
    want_ids, want_scores = _eager(model, h)
    assert torch.equal(ids, want_ids)
    torch.testing.assert_close(scores, want_scores, rtol=1e-5, atol=1e-5)


def test_decomposition_table_covers_the_inference_ops(exported):
    # Every seqrec op that an eval-mode model's graph holds has a decomposition.
    seen = set()
    for name in MODEL_NAMES:
        _, program = exported(name)
        seen |= {n.target for n in program.graph.nodes
                 if n.op == "call_function" and str(n.target).startswith("seqrec.")}
    assert seen, "the models' graphs call no seqrec operator: nothing was tested"
    assert seen <= set(serving.DECOMPOSITIONS), seen - set(serving.DECOMPOSITIONS)


# --------------------------------------------------------------------------- AOTInductor
# One package per model; each compiles C++ (~tens of seconds on 2 cores): tiny sizes.
@pytest.mark.compile
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_aoti_package_loads_and_equals_eager(name, tmp_path, exported):
    from torch._inductor import aoti_load_package

    model, program = exported(name)
    paths = []
    # torch's LeafSpec warning, from its compile_fx, is filtered (see the warnings section).
    assert _leafspec_warnings(
        lambda: paths.append(serving.aoti_package(model, tmp_path / f"{name}.pt2", K, program=program))) == []
    path = paths[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.pt2"]  # no temporary file left
    runner = aoti_load_package(path)
    h = histories()
    for rows in (h, h[:2, -3:].contiguous()):  # dynamic batch and width
        ids, scores = runner(rows, _no_exclude(rows))
        want_ids, want_scores = _eager(model, rows)
        assert torch.equal(ids, want_ids)
        torch.testing.assert_close(scores, want_scores, rtol=1e-5, atol=1e-5)


def test_aoti_package_path_must_be_pt2(tmp_path):
    with pytest.raises(ValueError, match=r"\.pt2"):
        serving.aoti_package(build("sasrec"), tmp_path / "model.zip", K)


# --------------------------------------------------------------------------- ONNX
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_onnx_runtime_top10_equals_recommend(name, tmp_path, exported):
    pytest.importorskip("onnx", reason="optional: pip install 'seqrec[onnx]' (onnx, onnxscript, onnxruntime)")
    pytest.importorskip("onnxscript", reason="optional: pip install 'seqrec[onnx]'")
    ort = pytest.importorskip("onnxruntime", reason="optional: pip install 'seqrec[onnx]'")
    model, program = exported(name, decomposed=True)
    path = tmp_path / f"{name}.onnx"
    serving.onnx_program(model, K, path=path, program=program)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["history", "exclude"]
    h = histories()
    for rows in (h, h[1:, -5:].contiguous()):  # dynamic batch and width
        extra = torch.tensor([[4, 0]] * rows.size(0))
        ids, scores = session.run(["ids", "scores"], {"history": rows.numpy(), "exclude": extra.numpy()})
        want_ids, want_scores = _eager(model, rows, torch.tensor([4]))
        assert torch.equal(torch.from_numpy(ids), want_ids), name
        torch.testing.assert_close(torch.from_numpy(scores), want_scores, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- warnings
def _leafspec_warnings(fn) -> list[str]:
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in caught if "LeafSpec" in str(w.message)]


def test_export_paths_do_not_print_torchs_leafspec_warning(exported):
    """torch's run_decompositions deep-copies the program's tree specs, which re-creates
    its deprecated LeafSpec and warns (FutureWarning), though no code of ours touches it:
    filtered around our calls only, so the same warning still shows anywhere else."""
    import copy

    from torch.utils import _pytree

    assert _leafspec_warnings(lambda: copy.deepcopy(_pytree.treespec_leaf())), "torch no longer warns here"
    model, program = exported("sasrec")
    assert _leafspec_warnings(lambda: serving.decompose_seqrec_ops(program)) == []
    if all(importlib.util.find_spec(p) for p in ("onnx", "onnxscript")):
        assert _leafspec_warnings(lambda: serving.onnx_program(model, K, program=program)) == []
    assert _leafspec_warnings(lambda: copy.deepcopy(_pytree.treespec_leaf()))  # not filtered globally
