#pragma once
// dropout: elementwise dropout whose mask is a hash of (seed, element index), never stored.
//
// Contract (CPU kernel here; a CUDA kernel `dropout_cuda` would keep it unchanged):
//
//   dropout(x, seed, p) -> out
//     x     any shape, float32 / float64 / float16 / bfloat16, any strides.
//     seed  one-element int64 CPU tensor (the Python wrapper draws it from torch's
//           generator, so torch.manual_seed makes runs reproducible).
//     p     drop probability in [0, 1).
//     out   contiguous, x's shape and dtype: out[t] = x[t] * keep(t) / (1 - p), where t is
//           the element's row-major index in x.shape and keep(t) = dropout_keep(mix64(seed),
//           t, round(p * 2^32)) (ops/common/hash_dropout.h). The factor 1 / (1 - p) is
//           rounded to x's dtype once (computed in float for half types).
//
//   The op is linear in x with a mask that depends only on (seed, shape, p), so its
//   backward is the same op applied to the incoming gradient with the same seed: nothing
//   is saved for the backward but the seed. The mask does not depend on x's strides, the
//   thread count or the device.
//
// Checked (RuntimeError naming the argument): x's dtype, seed's dtype / device / size,
// 0 <= p < 1.
#include <ATen/core/Tensor.h>

namespace seqrec::ops {

at::Tensor dropout_cpu(const at::Tensor& x, const at::Tensor& seed, double p);

}  // namespace seqrec::ops
