#pragma once
// seq_mask: the S3-Rec pretraining corruption of a whole batch in one call.
//
// Contract (CPU kernel here; a CUDA kernel `seq_mask_cuda` would keep it unchanged):
//
//   item_seq        [B, n] int64, left-padded with 0: row b holds its len_b real items at
//                   positions n-len_b .. n-1 (most recent last). Ids lie in [0, num_items];
//                   a 0 after a real item is rejected (padding must be a prefix).
//   item_attributes optional [>= num_items+1, A] int64: row i = attribute ids of item i,
//                   padded with 0 (0 = none). Values are copied, never used as indices.
//   num_items       >= 1; items are 1..num_items.
//   mask_token      > num_items (usually num_items + 1).
//   mask_prob       p in [0, 1].
//   seed            any int64; the op is a pure function of (inputs, seed).
//   mask_last       also mask the last real item of every row (the authors' code does).
//
// Outputs (padding positions are 0 in every [B, n] output):
//   masked_items       [B, n]    input, each real item replaced by mask_token with prob p
//                                (the last one always when mask_last)
//   pos_items          [B, n]    original item at masked positions, 0 elsewhere
//   neg_items          [B, n]    at masked positions an item drawn uniformly from
//                                {1..num_items} minus the row's item set, 0 elsewhere
//   masked_segment_seq [B, n]    input with one contiguous segment of real items -> mask_token
//   pos_segment        [B, n]    mask_token on real positions, original items on the segment
//   neg_segment        [B, n]    mask_token on real positions, the segment filled with a window
//                                of the same length from the other rows of the batch
//   segment_start      [B]       absolute position of the segment (0 when none)
//   segment_len        [B]       its length, uniform in [1, len_b / 2]; 0 when len_b < 2
//   attribute_targets  [B, n, A] item_attributes[pos_items] at masked positions, 0 elsewhere
//                                (A = 0 when item_attributes is absent)
// Rows with len_b == 1 get no segment: masked_segment_seq = pos_segment = neg_segment = input
// (as in the authors' code, so their SP term is a constant). All-padding rows are all 0.
//
// Randomness: a counter-based splitmix64 stream per (seed, row, purpose), so results do not
// depend on the thread count or on how rows are split; python/seqrec/ops/reference/seq_mask.py
// reimplements the same streams and must stay in sync with seq_mask_rng below.
//
// Checked (RuntimeError naming the argument): dtypes, ranks, devices, id range, left padding,
// num_items >= 1, mask_token > num_items, 0 <= p <= 1, and that a negative item exists for
// every masked position (a row holding all num_items items cannot have one).
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace seqrec::ops {

namespace seq_mask_rng {

constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ULL;  // splitmix64 increment (golden ratio)
// Stream purposes: independent streams, so e.g. changing num_items never moves the mask.
constexpr uint64_t kPurposeMask = 0;
constexpr uint64_t kPurposeNegative = 1;
constexpr uint64_t kPurposeSegment = 2;
// Rejection tries for a negative item before the exact fallback scan.
constexpr int kMaxNegativeTries = 32;

// splitmix64 finaliser (Steele, Lea, Flood 2014).
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Starting state of the stream (seed, row, purpose).
inline uint64_t stream_key(uint64_t seed, uint64_t row, uint64_t purpose) {
  return mix64(mix64(seed) + kGamma * (4 * row + purpose + 1));
}

// Plain splitmix64 from that state: the i-th draw (0-based) is mix64(key + (i+1)*kGamma).
struct Stream {
  uint64_t state;
  uint64_t next() {
    state += kGamma;
    return mix64(state);
  }
  // Uniform in [0, 1) with 53 random bits.
  double uniform01() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  // Uniform integer in [0, m), m >= 1: Lemire's multiply-shift (bias below m / 2^64).
  uint64_t below(uint64_t m) {
    return static_cast<uint64_t>((static_cast<unsigned __int128>(next()) * m) >> 64);
  }
};

}  // namespace seq_mask_rng

// What the kernel sees: plain pointers and sizes, all row-major contiguous.
struct SeqMaskParams {
  const int64_t* item_seq;    // [B, n]
  const int64_t* attributes;  // [>= num_items+1, A] or nullptr
  const int64_t* lengths;     // [B] real items per row
  const int64_t* offsets;     // [B+1] exclusive prefix sum of lengths (the batch "long sequence")
  int64_t* masked_items;      // [B, n]
  int64_t* pos_items;         // [B, n]
  int64_t* neg_items;         // [B, n]
  int64_t* masked_segment;    // [B, n]
  int64_t* pos_segment;       // [B, n]
  int64_t* neg_segment;       // [B, n]
  int64_t* segment_start;     // [B]
  int64_t* segment_len;       // [B]
  int64_t* attribute_targets; // [B, n, A] or nullptr when A == 0
  int64_t batch;              // B
  int64_t n;                  // max length
  int64_t num_attr_slots;     // A
  int64_t num_items;
  int64_t mask_token;
  double mask_prob;
  uint64_t seed;
  bool mask_last;
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor>
seq_mask_cpu(const at::Tensor& item_seq, const std::optional<at::Tensor>& item_attributes,
             int64_t num_items, int64_t mask_token, double mask_prob, int64_t seed,
             bool mask_last);

}  // namespace seqrec::ops
