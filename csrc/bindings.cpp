// The single registration point of seqrec's compiled core.
//
//  * TORCH_LIBRARY(seqrec): the schema of every tensor operator, then one
//    TORCH_LIBRARY_IMPL block per dispatch key. Autograd and fake (meta) kernels are
//    registered from Python (python/seqrec/ops/), which owns them.
//  * PYBIND11_MODULE(_C): the data engine (parsers, id maps, CSR sequences, batching,
//    sampling), which trades in NumPy arrays, never in torch types.
//
// Importing seqrec._C runs the registrations.

#include <torch/library.h>
#include <pybind11/pybind11.h>

namespace py = pybind11;

TORCH_LIBRARY(seqrec, m) {
}

TORCH_LIBRARY_IMPL(seqrec, CPU, m) {
}

#ifdef SEQREC_WITH_CUDA
TORCH_LIBRARY_IMPL(seqrec, CUDA, m) {
}
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "seqrec compiled core: torch operators (torch.ops.seqrec) and the data engine";
  m.def("cuda_built", []() {
#ifdef SEQREC_WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "True when the CUDA kernels were compiled into this build.");
}
