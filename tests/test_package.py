import subprocess
import sys

import torch

import seqrec


def test_build_info_matches_running_torch():
    assert seqrec._build_info.TORCH_VERSION.split("+")[0] == torch.__version__.split("+")[0]
    assert seqrec.cuda_built() in (True, False)


def test_import_registers_op_namespace():
    # Importing seqrec must register the operator library in the torch dispatcher.
    out = subprocess.run(
        [sys.executable, "-c", "import torch, seqrec; print(hasattr(torch.ops, 'seqrec'))"],
        capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == "True"


def test_backend_switch_rejects_unknown_name():
    import pytest
    with pytest.raises(ValueError, match="backend must be one of"):
        seqrec.ops.set_backend("cuda-magic")
    with seqrec.ops.use_backend("reference"):
        assert seqrec.ops.get_backend() == "reference"
    assert seqrec.ops.get_backend() == "seqrec"
