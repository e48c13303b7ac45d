#pragma once
// CPU helpers for the hashed dropout masks of hash_dropout.h. The hash takes two 64-bit
// multiplies per element, which the baseline x86-64 target has no vector instruction
// for: compiled for it, a loop of keep decisions runs one element at a time (measured,
// one core: 7.3 ns per float element against 1.5 ns for the same loop compiled for
// AVX2). So the loops here are also compiled for AVX2 and picked at run time.
#include <c10/macros/Macros.h>

#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "ops/common/hash_dropout.h"

namespace seqrec::ops {

#if defined(__GNUC__) && defined(__x86_64__)
#define SEQREC_HAS_AVX2_PATH 1
// Whether to take the AVX2 loops: the CPU has AVX2 and SEQREC_CPU_AVX2 is not "0" (which
// forces the baseline loops, so the tests check both on an AVX2 machine). Read once.
inline bool avx2_enabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("SEQREC_CPU_AVX2");
    return __builtin_cpu_supports("avx2") && !(env != nullptr && std::string_view(env) == "0");
  }();
  return enabled;
}
#else
inline bool avx2_enabled() { return false; }
#endif

namespace detail {

// Branch-free (a keep decision is a coin flip a branch would mispredict), so it vectorises.
template <typename T>
C10_ALWAYS_INLINE void dropout_factors_loop(uint64_t mixed_seed, uint64_t t0, int64_t n, uint64_t threshold,
                                            T scale, T* __restrict out) {
  for (int64_t i = 0; i < n; ++i) {
    out[i] = scale * static_cast<T>(dropout_keep(mixed_seed, t0 + static_cast<uint64_t>(i), threshold));
  }
}

#ifdef SEQREC_HAS_AVX2_PATH
template <typename T>
__attribute__((target("avx2"))) void dropout_factors_avx2(uint64_t mixed_seed, uint64_t t0, int64_t n,
                                                          uint64_t threshold, T scale, T* out) {
  dropout_factors_loop<T>(mixed_seed, t0, n, threshold, scale, out);
}
#endif

}  // namespace detail

// out[i] = the dropout factor of element t0 + i: `scale` (= 1 / (1 - p)) where
// dropout_keep keeps it, else 0; for i in [0, n).
template <typename T>
void dropout_factors(uint64_t mixed_seed, uint64_t t0, int64_t n, uint64_t threshold, T scale, T* out) {
#ifdef SEQREC_HAS_AVX2_PATH
  if (avx2_enabled()) return detail::dropout_factors_avx2<T>(mixed_seed, t0, n, threshold, scale, out);
#endif
  detail::dropout_factors_loop<T>(mixed_seed, t0, n, threshold, scale, out);
}

}  // namespace seqrec::ops
