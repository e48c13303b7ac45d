// Shared argument checks for the operator kernels (see common/check.h).
#include "ops/common/check.h"

#include <sstream>

namespace seqrec::ops {

void check_tensor(const at::Tensor& t, const char* op, const char* name, at::ScalarType dtype,
                  int64_t dim) {
  TORCH_CHECK(t.defined(), op, ": argument '", name, "' is undefined");
  TORCH_CHECK(t.scalar_type() == dtype, op, ": argument '", name, "' must have dtype ", dtype,
              ", got ", t.scalar_type());
  TORCH_CHECK(dim < 0 || t.dim() == dim, op, ": argument '", name, "' must be ", dim,
              "-dimensional, got shape ", t.sizes());
}

void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op, const char* name_a,
                       const char* name_b) {
  TORCH_CHECK(a.device() == b.device(), op, ": '", name_a, "' is on ", a.device(), " but '",
              name_b, "' is on ", b.device());
}

}  // namespace seqrec::ops
