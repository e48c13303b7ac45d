#pragma once
// Counter-based dropout masks shared by the operators that drop elements (dropout,
// dif_attention's attention dropout): the keep decision of an element is a pure function
// of (seed, the element's flat index, p), so a backward regenerates its forward's mask
// instead of storing it, every backend and thread split draws the same mask, and the
// plain-PyTorch references (python/seqrec/ops/reference/dif_attention.py,
// dropout_keep_mask) reproduce it bit for bit.
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace seqrec::ops {

// splitmix64's finalizer.
C10_HOST_DEVICE inline uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  x ^= x >> 31;
  return x;
}

// Keep decision of element t: the t-th output of a splitmix64 stream seeded with
// mix64(seed), upper 32 bits compared with threshold = round(p * 2^32).
// `mixed_seed` = mix64(seed), computed once per call.
C10_HOST_DEVICE inline bool dropout_keep(uint64_t mixed_seed, uint64_t t, uint64_t threshold) {
  const uint64_t h = mix64(mixed_seed + (t + 1) * 0x9E3779B97F4A7C15ULL);
  return (h >> 32) >= threshold;
}

// threshold of dropout_keep for probability p in [0, 1).
inline uint64_t dropout_threshold(double p) {
  return static_cast<uint64_t>(std::llround(p * 4294967296.0));
}

}  // namespace seqrec::ops
