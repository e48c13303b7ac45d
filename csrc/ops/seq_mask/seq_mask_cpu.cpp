// seq_mask on the CPU: one pass over the rows to validate them and measure their lengths,
// a prefix sum (the batch's "long sequence" of real items, where negative segments come
// from), then one parallel pass that corrupts each row with its own counter-based streams.
// Contract and RNG: seq_mask.h.
#include "ops/seq_mask/seq_mask.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "ops/common/check.h"

namespace seqrec::ops {
namespace {

constexpr const char* kOp = "seq_mask";
using seq_mask_rng::Stream;
using seq_mask_rng::stream_key;

// Rows per task: ATen's grain (at::internal::GRAIN_SIZE, 32768 elements) counted in
// positions. A Beauty pretraining batch (100 prefixes, n = 50) costs about 75 us on one
// thread; split in two (the former 4096-position grain) it took 180-240 us on the 2-core
// CI machine under load, the OpenMP fork and join costing more than the work. So batches up
// to 32768 positions stay on one thread and large batches split. Results never depend on it.
int64_t grain_rows(int64_t n) {
  constexpr int64_t kGrainPositions = 32768;
  return std::max<int64_t>(1, kGrainPositions / std::max<int64_t>(n, 1));
}

// Number of real items of row b; rejects ids outside [0, num_items] and non-prefix padding.
int64_t row_length(const int64_t* row, int64_t b, int64_t n, int64_t num_items, int64_t mask_token) {
  int64_t first = 0;
  while (first < n && row[first] == 0) ++first;
  for (int64_t t = first; t < n; ++t) {
    const int64_t v = row[t];
    TORCH_CHECK(v != 0, kOp, ": item_seq must be left-padded (0s only before the first item), "
                "but row ", b, " has a 0 at position ", t, " after a real item");
    TORCH_CHECK(v >= 1 && v <= num_items, kOp, ": item_seq ids must lie in [0, num_items=",
                num_items, "] (mask_token=", mask_token, " and above are not items), got ", v,
                " at row ", b, ", position ", t);
  }
  return n - first;
}

// The k-th item (0-based) of the batch's long sequence with row b's own items left out.
int64_t other_item(const SeqMaskParams& p, int64_t b, int64_t k) {
  const int64_t g = k < p.offsets[b] ? k : k + p.lengths[b];
  const int64_t r = (std::upper_bound(p.offsets, p.offsets + p.batch + 1, g) - p.offsets) - 1;
  return p.item_seq[r * p.n + (p.n - p.lengths[r]) + (g - p.offsets[r])];
}

// A negative for a masked item of row b: uniform over {1..num_items} minus the row's items.
// Rejection sampling first (almost always accepts: a row holds at most n of the items); after
// kMaxNegativeTries misses, draw the rank r among the non-members and walk to it, which is
// exact and has the same distribution. `distinct` is the row's sorted item set.
int64_t draw_negative(Stream& rng, const std::vector<int64_t>& distinct, int64_t num_items,
                      int64_t b) {
  const int64_t free_items = num_items - static_cast<int64_t>(distinct.size());
  TORCH_CHECK(free_items > 0, kOp, ": row ", b, " contains all ", num_items,
              " items, so no negative item exists for its masked positions");
  for (int tries = 0; tries < seq_mask_rng::kMaxNegativeTries; ++tries) {
    const int64_t c = 1 + static_cast<int64_t>(rng.below(static_cast<uint64_t>(num_items)));
    if (!std::binary_search(distinct.begin(), distinct.end(), c)) return c;
  }
  int64_t c = 1 + static_cast<int64_t>(rng.below(static_cast<uint64_t>(free_items)));
  for (const int64_t d : distinct) {
    if (d > c) break;
    ++c;
  }
  return c;
}

void seq_mask_row(const SeqMaskParams& p, int64_t b, std::vector<int64_t>& distinct) {
  const int64_t n = p.n, len = p.lengths[b], first = n - len, A = p.num_attr_slots;
  const int64_t* in = p.item_seq + b * n;
  int64_t* mi = p.masked_items + b * n;
  int64_t* pi = p.pos_items + b * n;
  int64_t* ni = p.neg_items + b * n;
  int64_t* ms = p.masked_segment + b * n;
  int64_t* ps = p.pos_segment + b * n;
  int64_t* ns = p.neg_segment + b * n;
  int64_t* at = p.attribute_targets == nullptr ? nullptr : p.attribute_targets + b * n * A;

  for (int64_t t = 0; t < first; ++t) mi[t] = pi[t] = ni[t] = ms[t] = ps[t] = ns[t] = 0;
  if (at != nullptr && first > 0) std::memset(at, 0, sizeof(int64_t) * first * A);

  // Item masking (MIP / MAP). One uniform per real item, in order, even where mask_last
  // overrides it, so the stream position of item j never depends on the other draws.
  Stream mask_rng{stream_key(p.seed, b, seq_mask_rng::kPurposeMask)};
  Stream neg_rng{stream_key(p.seed, b, seq_mask_rng::kPurposeNegative)};
  bool have_set = false;
  for (int64_t j = 0; j < len; ++j) {
    const int64_t t = first + j, item = in[t];
    bool masked = mask_rng.uniform01() < p.mask_prob;
    if (p.mask_last && j == len - 1) masked = true;
    if (!masked) {
      mi[t] = item;
      pi[t] = ni[t] = 0;
      if (at != nullptr) std::memset(at + t * A, 0, sizeof(int64_t) * A);
      continue;
    }
    if (!have_set) {  // built lazily: rows without a masked item never pay for it
      distinct.assign(in + first, in + n);
      std::sort(distinct.begin(), distinct.end());
      distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
      have_set = true;
    }
    mi[t] = p.mask_token;
    pi[t] = item;
    ni[t] = draw_negative(neg_rng, distinct, p.num_items, b);
    if (at != nullptr) std::memcpy(at + t * A, p.attributes + item * A, sizeof(int64_t) * A);
  }

  // Segment masking (SP).
  if (len < 2) {
    for (int64_t t = first; t < n; ++t) ms[t] = ps[t] = ns[t] = in[t];
    p.segment_start[b] = 0;
    p.segment_len[b] = 0;
    return;
  }
  Stream seg_rng{stream_key(p.seed, b, seq_mask_rng::kPurposeSegment)};
  const int64_t L = 1 + static_cast<int64_t>(seg_rng.below(static_cast<uint64_t>(len / 2)));
  const int64_t start = first + static_cast<int64_t>(seg_rng.below(static_cast<uint64_t>(len - L + 1)));
  for (int64_t t = first; t < n; ++t) {
    ms[t] = in[t];
    ps[t] = ns[t] = p.mask_token;
  }
  for (int64_t j = 0; j < L; ++j) {
    ms[start + j] = p.mask_token;
    ps[start + j] = in[start + j];
  }
  // Negative segment: a window of L items of the other rows' items laid end to end (it may
  // straddle two rows, as the authors' window over all users does). Fallbacks when the other
  // rows hold fewer than L items: wrap around them; when they hold none: uniform items.
  const int64_t others = p.offsets[p.batch] - len;
  if (others >= L) {
    const int64_t k0 = static_cast<int64_t>(seg_rng.below(static_cast<uint64_t>(others - L + 1)));
    for (int64_t j = 0; j < L; ++j) ns[start + j] = other_item(p, b, k0 + j);
  } else if (others > 0) {
    const int64_t k0 = static_cast<int64_t>(seg_rng.below(static_cast<uint64_t>(others)));
    for (int64_t j = 0; j < L; ++j) ns[start + j] = other_item(p, b, (k0 + j) % others);
  } else {
    for (int64_t j = 0; j < L; ++j)
      ns[start + j] = 1 + static_cast<int64_t>(seg_rng.below(static_cast<uint64_t>(p.num_items)));
  }
  p.segment_start[b] = start;
  p.segment_len[b] = L;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor>
seq_mask_cpu(const at::Tensor& item_seq, const std::optional<at::Tensor>& item_attributes,
             int64_t num_items, int64_t mask_token, double mask_prob, int64_t seed,
             bool mask_last) {
  SameDevice{kOp}("item_seq", item_seq)("item_attributes", item_attributes);
  check_tensor(item_seq, kOp, "item_seq", at::kLong, 2);
  TORCH_CHECK(num_items >= 1, kOp, ": num_items must be >= 1, got ", num_items);
  TORCH_CHECK(mask_token > num_items, kOp, ": mask_token must be > num_items (it may not be ",
              "an item id), got mask_token=", mask_token, ", num_items=", num_items);
  TORCH_CHECK(mask_prob >= 0.0 && mask_prob <= 1.0, kOp, ": mask_prob must lie in [0, 1], got ",
              mask_prob);
  const bool has_attr = item_attributes.has_value() && item_attributes->defined();
  at::Tensor attributes;
  if (has_attr) {
    check_tensor(*item_attributes, kOp, "item_attributes", at::kLong, 2);
    TORCH_CHECK(item_attributes->size(0) >= num_items + 1, kOp,
                ": item_attributes needs a row per item id 0..num_items (", num_items + 1,
                " rows), got shape ", item_attributes->sizes());
    attributes = item_attributes->contiguous();
  }

  const at::Tensor seq = item_seq.contiguous();
  const int64_t B = seq.size(0), n = seq.size(1);
  const int64_t A = has_attr ? attributes.size(1) : 0;
  const int64_t* seq_ptr = seq.const_data_ptr<int64_t>();

  std::vector<int64_t> lengths(B), offsets(B + 1, 0);
  at::parallel_for(0, B, grain_rows(n), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      lengths[b] = row_length(seq_ptr + b * n, b, n, num_items, mask_token);
  });
  for (int64_t b = 0; b < B; ++b) offsets[b + 1] = offsets[b] + lengths[b];

  const auto opts = seq.options();
  at::Tensor masked_items = at::empty({B, n}, opts), pos_items = at::empty({B, n}, opts),
             neg_items = at::empty({B, n}, opts), masked_segment = at::empty({B, n}, opts),
             pos_segment = at::empty({B, n}, opts), neg_segment = at::empty({B, n}, opts),
             segment_start = at::empty({B}, opts), segment_len = at::empty({B}, opts),
             attribute_targets = at::empty({B, n, A}, opts);

  SeqMaskParams p{};
  p.item_seq = seq_ptr;
  p.attributes = has_attr ? attributes.const_data_ptr<int64_t>() : nullptr;
  p.lengths = lengths.data();
  p.offsets = offsets.data();
  p.masked_items = masked_items.mutable_data_ptr<int64_t>();
  p.pos_items = pos_items.mutable_data_ptr<int64_t>();
  p.neg_items = neg_items.mutable_data_ptr<int64_t>();
  p.masked_segment = masked_segment.mutable_data_ptr<int64_t>();
  p.pos_segment = pos_segment.mutable_data_ptr<int64_t>();
  p.neg_segment = neg_segment.mutable_data_ptr<int64_t>();
  p.segment_start = segment_start.mutable_data_ptr<int64_t>();
  p.segment_len = segment_len.mutable_data_ptr<int64_t>();
  p.attribute_targets = A > 0 ? attribute_targets.mutable_data_ptr<int64_t>() : nullptr;
  p.batch = B;
  p.n = n;
  p.num_attr_slots = A;
  p.num_items = num_items;
  p.mask_token = mask_token;
  p.mask_prob = mask_prob;
  p.seed = static_cast<uint64_t>(seed);
  p.mask_last = mask_last;

  at::parallel_for(0, B, grain_rows(n), [&](int64_t begin, int64_t end) {
    std::vector<int64_t> distinct;  // per-task scratch: the row's sorted item set
    distinct.reserve(static_cast<size_t>(n));
    for (int64_t b = begin; b < end; ++b) seq_mask_row(p, b, distinct);
  });
  return {masked_items, pos_items,     neg_items,   masked_segment,   pos_segment,
          neg_segment,  segment_start, segment_len, attribute_targets};
}

}  // namespace seqrec::ops
