#pragma once
// Argument validation shared by every operator: messages name the operator, the
// argument and what was expected, and surface in Python as RuntimeError.
#include <ATen/core/Tensor.h>

namespace seqrec::ops {

// dtype must match exactly; dim < 0 accepts any rank.
void check_tensor(const at::Tensor& t, const char* op, const char* name, at::ScalarType dtype,
                  int64_t dim);
void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op, const char* name_a,
                       const char* name_b);

}  // namespace seqrec::ops
