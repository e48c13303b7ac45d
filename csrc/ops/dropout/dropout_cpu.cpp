// CPU kernel of dropout (contract in dropout.h): one pass over the contiguous input,
// parallel over fixed chunks of the flat index, the keep decision hashed per element.
#include "ops/dropout/dropout.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <type_traits>

#include "ops/common/check.h"
#include "ops/common/hash_dropout.h"
#include "ops/common/hash_dropout_cpu.h"

namespace seqrec::ops {

namespace {

// Applies the mask to n elements starting at flat index t0, without branches (the keep
// decision is a coin flip: a branch would mispredict half the time) so the compiler
// vectorises the hash.
template <typename T, typename Acc>
C10_ALWAYS_INLINE void dropout_span(const T* __restrict x, T* __restrict out, int64_t t0, int64_t n,
                                    uint64_t mixed_seed, uint64_t threshold, Acc scale) {
  for (int64_t i = 0; i < n; ++i) {
    const Acc keep = static_cast<Acc>(dropout_keep(mixed_seed, static_cast<uint64_t>(t0 + i), threshold));
    out[i] = static_cast<T>(static_cast<Acc>(x[i]) * (scale * keep));
  }
}

#ifdef SEQREC_HAS_AVX2_PATH
// The same loop compiled for AVX2, chosen at run time (see hash_dropout_cpu.h).
template <typename T>
__attribute__((target("avx2"))) void dropout_span_avx2(const T* x, T* out, int64_t t0, int64_t n,
                                                       uint64_t mixed_seed, uint64_t threshold, T scale) {
  dropout_span<T, T>(x, out, t0, n, mixed_seed, threshold, scale);
}
#endif

template <typename T, typename Acc>
void dropout_dispatch(const T* x, T* out, int64_t t0, int64_t n, uint64_t mixed_seed, uint64_t threshold,
                      Acc scale) {
#ifdef SEQREC_HAS_AVX2_PATH
  if constexpr (std::is_same_v<T, Acc>) {  // float, double
    if (avx2_enabled()) return dropout_span_avx2<T>(x, out, t0, n, mixed_seed, threshold, scale);
  }
#endif
  dropout_span<T, Acc>(x, out, t0, n, mixed_seed, threshold, scale);
}

}  // namespace

at::Tensor dropout_cpu(const at::Tensor& x, const at::Tensor& seed, double p) {
  TORCH_CHECK(at::isFloatingType(x.scalar_type()),
              "dropout: argument 'x' must be a floating-point tensor, got ", x.scalar_type());
  check_tensor(seed, "dropout", "seed", at::kLong, -1);
  check_host_tensor(seed, "dropout", "seed");
  TORCH_CHECK(seed.numel() == 1, "dropout: argument 'seed' must be a one-element int64 CPU tensor, got ",
              seed.numel(), " elements");
  TORCH_CHECK(p >= 0.0 && p < 1.0, "dropout: argument 'p' must be in [0, 1), got ", p);
  TORCH_CHECK(x.device().is_cpu(), "dropout: argument 'x' must be a CPU tensor for this kernel, got ",
              x.device());
  const at::Tensor input = x.contiguous();
  at::Tensor out = at::empty(x.sizes(), input.options());
  const int64_t numel = input.numel();
  if (numel == 0) return out;
  const uint64_t mixed_seed = mix64(static_cast<uint64_t>(seed.item<int64_t>()));
  const uint64_t threshold = dropout_threshold(p);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "dropout_cpu", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const Acc scale = static_cast<Acc>(1.0 / (1.0 - p));
    const scalar_t* src = input.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    // Chunks of 2^14 elements: enough work per task that waking a thread pays off.
    at::parallel_for(0, numel, int64_t{1} << 14, [&](int64_t begin, int64_t end) {
      dropout_dispatch<scalar_t, Acc>(src + begin, dst + begin, begin, end - begin, mixed_seed, threshold, scale);
    });
  });
  return out;
}

}  // namespace seqrec::ops
