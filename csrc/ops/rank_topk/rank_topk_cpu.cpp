// CPU kernels of rank_topk and rank_sampled (contract in rank_topk.h).
//
// Users in parallel; per user row, one streaming pass and a few short rescans:
//  1. one branch-free (vectorised) pass over items 1..I-1 in blocks (~(I-1)/8k items): count
//     the items scoring >= and < the target (the two must add up to I-1, otherwise the
//     row holds a NaN) and keep each block's maximum;
//  2. the few excluded history items (about 9 per user on Beauty) are marked in a
//     per-thread byte map, so duplicates count once: the rank drops the ones counted
//     in 1, and a block whose maximum was an excluded item gets its maximum over
//     candidates only;
//  3. the k-th largest block maximum is a lower bound of the k-th best candidate
//     score (k different blocks hold a candidate at least that high), so only blocks
//     whose maximum reaches it can hold the top k: about k of the ~8k blocks. Their
//     candidates reaching the bound (about k to 2k) are gathered, and nth_element +
//     sort on (score desc, item asc) give the list.
// Nothing of size users x items is allocated: the scratch is O(items) per thread.
#include "ops/rank_topk/rank_topk.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "ops/common/check.h"

namespace seqrec::ops {
namespace {

// Items per block: about (I-1) / (8k), so that the ~k rescanned blocks are a small part
// of the row while the block maxima (~8k of them) stay cheap to select from; a multiple
// of 8 (the streaming loop's step) in [kMinBlock, kMaxBlock].
constexpr int64_t kMinBlock = 16;
constexpr int64_t kMaxBlock = 256;

int64_t block_size(int64_t num_items, int64_t k) {
  const int64_t b = (num_items - 1) / (8 * std::max<int64_t>(k, 1));
  return std::clamp<int64_t>(b, kMinBlock, kMaxBlock) / 8 * 8;
}
// Score comparisons per parallel task, at least (as at::internal::GRAIN_SIZE).
constexpr int64_t kGrainWork = 32768;

// Plain view of the validated inputs: the kernels below never see torch types.
struct RankTopkParams {
  const void* scores;          // [U, I] scalar_t, element strides below
  int64_t score_row_stride;    // elements between rows
  int64_t score_col_stride;    // elements between items
  const int64_t* indptr;       // [U+1], indptr[0] == 0
  const int64_t* hist;         // [nnz] in 0..I-1
  const int64_t* target;       // [U] in 1..I-1
  int64_t num_users;           // U
  int64_t num_items;           // I (item 0 is padding)
  int64_t k;                   // >= 0
  bool exclude_history;
  int64_t* topk;               // [U, k] out, contiguous
  int64_t* rank;               // [U] out
};

template <typename acc_t>
struct Entry {
  acc_t score;
  int64_t item;
};

// "a ranks before b": higher score first, then the lower item id. Never sees NaN.
template <typename acc_t>
struct RanksBefore {
  bool operator()(const Entry<acc_t>& a, const Entry<acc_t>& b) const {
    return a.score > b.score || (a.score == b.score && a.item < b.item);
  }
};

// Streams one block: counts of scores >= t and < t, and the block's maximum (which is
// unspecified when the block holds a NaN: such a row is rejected by the counts).
template <typename acc_t>
inline acc_t stream_block(const acc_t* s, int64_t n, acc_t t, int64_t& ge, int64_t& lt) {
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  int64_t g = 0, c = 0;
  for (int64_t j = 0; j < n; ++j) {
    const acc_t v = s[j];
    g += v >= t;
    c += v < t;
    m = std::max(m, v);
  }
  ge += g;
  lt += c;
  return m;
}

#if defined(__SSE2__)
// float, the common case, with SSE2 (part of every x86-64): without fast-math the
// compiler does not vectorise a float max reduction, and this loop is the kernel's cost.
template <>
inline float stream_block<float>(const float* s, int64_t n, float t, int64_t& ge, int64_t& lt) {
  const __m128 vt = _mm_set1_ps(t);
  __m128 m0 = _mm_set1_ps(-std::numeric_limits<float>::infinity()), m1 = m0;
  __m128i g0 = _mm_setzero_si128(), g1 = g0, l0 = g0, l1 = g0;
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m128 a = _mm_loadu_ps(s + j), b = _mm_loadu_ps(s + j + 4);
    // A true comparison is all ones, i.e. -1: subtracting it counts.
    g0 = _mm_sub_epi32(g0, _mm_castps_si128(_mm_cmpge_ps(a, vt)));
    l0 = _mm_sub_epi32(l0, _mm_castps_si128(_mm_cmplt_ps(a, vt)));
    g1 = _mm_sub_epi32(g1, _mm_castps_si128(_mm_cmpge_ps(b, vt)));
    l1 = _mm_sub_epi32(l1, _mm_castps_si128(_mm_cmplt_ps(b, vt)));
    m0 = _mm_max_ps(m0, a);
    m1 = _mm_max_ps(m1, b);
  }
  alignas(16) int32_t gs[4], ls[4];
  alignas(16) float ms[4];
  _mm_store_si128(reinterpret_cast<__m128i*>(gs), _mm_add_epi32(g0, g1));
  _mm_store_si128(reinterpret_cast<__m128i*>(ls), _mm_add_epi32(l0, l1));
  _mm_store_ps(ms, _mm_max_ps(m0, m1));
  int64_t g = int64_t{gs[0]} + gs[1] + gs[2] + gs[3];
  int64_t c = int64_t{ls[0]} + ls[1] + ls[2] + ls[3];
  float m = std::max(std::max(ms[0], ms[1]), std::max(ms[2], ms[3]));
  for (; j < n; ++j) {
    const float v = s[j];
    g += v >= t;
    c += v < t;
    m = std::max(m, v);
  }
  ge += g;
  lt += c;
  return m;
}
#endif

// Per-thread scratch, reused across the users of one parallel task.
template <typename acc_t>
struct RowScratch {
  RowScratch(int64_t num_items, int64_t k, bool exclude)
      : block(block_size(num_items, k)),
        excluded(exclude ? static_cast<size_t>(num_items) : 0, 0),
        block_max(static_cast<size_t>((num_items - 1 + block - 1) / block)),
        select(block_max.size()),
        best(static_cast<size_t>(num_items)) {
    dirty.reserve(64);
  }
  int64_t block;                    // items per block
  std::vector<uint8_t> excluded;    // [I], all zero between users
  std::vector<acc_t> block_max;     // [ceil((I-1)/block)] max over the block's candidates
  std::vector<acc_t> select;        // copy of block_max for nth_element
  std::vector<Entry<acc_t>> best;   // [I] candidates that may be in the top k
  std::vector<int64_t> dirty;       // blocks whose maximum was an excluded item
};

// Ranks one user's row `s` (s[0] is the padding item). Returns false when the row
// holds a NaN (then the outputs are unspecified and the caller raises).
template <typename acc_t>
bool rank_row(const acc_t* s, int64_t num_items, const int64_t* hist_begin, const int64_t* hist_end,
              int64_t target, bool exclude_history, int64_t k, RowScratch<acc_t>& w, int64_t* topk_out,
              int64_t* rank_out) {
  const acc_t t = s[target];
  const int64_t num_blocks = static_cast<int64_t>(w.block_max.size());
  const int64_t block = w.block;

  // 1. Counts and block maxima, over every item 1..I-1.
  int64_t ge = 0, lt = 0;
  for (int64_t b = 0; b < num_blocks; ++b) {
    const int64_t lo = 1 + b * block;
    w.block_max[b] = stream_block(s + lo, std::min(block, num_items - lo), t, ge, lt);
  }
  // Every item compares >= or < a number; only NaN (in the row or as the target's
  // score) escapes both.
  if (ge + lt != num_items - 1) return false;

  // 2. Exclusions: ge counted the target itself and every excluded item >= t.
  int64_t rank = ge - 1;
  bool any_excluded = false;
  if (exclude_history) {
    for (const int64_t* h = hist_begin; h != hist_end; ++h) {
      const int64_t item = *h;
      if (item != target && item != 0 && !w.excluded[item]) {
        w.excluded[item] = 1;
        any_excluded = true;
        rank -= s[item] >= t;
      }
    }
  }
  *rank_out = rank;
  if (k == 0) {
    if (any_excluded) for (const int64_t* h = hist_begin; h != hist_end; ++h) w.excluded[*h] = 0;
    return true;
  }
  if (any_excluded) {
    // A block's maximum is wrong only if every item reaching it is excluded, so only
    // blocks with an excluded item at their maximum are recomputed, once each, over
    // candidates (-inf when none is left: that can only widen the scan below).
    w.dirty.clear();
    for (const int64_t* h = hist_begin; h != hist_end; ++h) {
      const int64_t b = (*h - 1) / block;
      if (w.excluded[*h] && s[*h] >= w.block_max[b]) w.dirty.push_back(b);
    }
    std::sort(w.dirty.begin(), w.dirty.end());
    w.dirty.erase(std::unique(w.dirty.begin(), w.dirty.end()), w.dirty.end());
    for (const int64_t b : w.dirty) {
      const int64_t lo = 1 + b * block, hi = std::min(lo + block, num_items);
      acc_t m = -std::numeric_limits<acc_t>::infinity();
      for (int64_t j = lo; j < hi; ++j)
        if (!w.excluded[j]) m = std::max(m, s[j]);
      w.block_max[b] = m;
    }
  }

  // 3. Only blocks whose maximum reaches the k-th largest block maximum can hold one
  // of the k best candidates.
  acc_t bound = -std::numeric_limits<acc_t>::infinity();
  if (k < num_blocks) {
    std::copy(w.block_max.begin(), w.block_max.end(), w.select.begin());
    std::nth_element(w.select.begin(), w.select.begin() + (k - 1), w.select.end(), std::greater<acc_t>());
    bound = w.select[k - 1];
  }
  // Gather the candidates reaching the bound (about k to 2k of them on real scores):
  // written unconditionally, kept by advancing the count, so the loop has no branch.
  Entry<acc_t>* best = w.best.data();
  int64_t m = 0;
  for (int64_t b = 0; b < num_blocks; ++b) {
    if (w.block_max[b] < bound) continue;
    const int64_t lo = 1 + b * block, hi = std::min(lo + block, num_items);
    if (any_excluded) {
      for (int64_t j = lo; j < hi; ++j) {
        best[m] = {s[j], j};
        m += (s[j] >= bound) & !w.excluded[j];
      }
    } else {
      for (int64_t j = lo; j < hi; ++j) {
        best[m] = {s[j], j};
        m += s[j] >= bound;
      }
    }
  }
  // (score, item) pairs are all distinct, so the k best and their order are unique.
  const int64_t n = std::min(k, m);
  if (m > n) std::nth_element(best, best + (n - 1), best + m, RanksBefore<acc_t>());
  std::sort(best, best + n, RanksBefore<acc_t>());
  for (int64_t i = 0; i < n; ++i) topk_out[i] = best[i].item;
  std::fill(topk_out + n, topk_out + k, int64_t{0});
  if (any_excluded) for (const int64_t* h = hist_begin; h != hist_end; ++h) w.excluded[*h] = 0;
  return true;
}

template <typename scalar_t>
void rank_topk_kernel(const RankTopkParams& p, std::atomic<int64_t>& nan_user) {
  // Rows are ranked in float (double stays double): half/bf16 rows are widened into a
  // per-thread buffer, as are rows whose items are not adjacent in memory.
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const auto* scores = static_cast<const scalar_t*>(p.scores);
  const int64_t grain = std::max<int64_t>(1, kGrainWork / std::max<int64_t>(1, p.num_items));
  at::parallel_for(0, p.num_users, grain, [&](int64_t begin, int64_t end) {
    constexpr bool direct_type = std::is_same_v<scalar_t, acc_t>;
    const bool direct = direct_type && p.score_col_stride == 1;
    std::vector<acc_t> row_buf(direct ? 0 : static_cast<size_t>(p.num_items));
    RowScratch<acc_t> scratch(p.num_items, p.k, p.exclude_history);
    for (int64_t u = begin; u < end; ++u) {
      const scalar_t* src = scores + u * p.score_row_stride;
      const acc_t* row;
      if constexpr (direct_type) {
        if (direct) {
          row = src;
        } else {
          for (int64_t j = 0; j < p.num_items; ++j) row_buf[j] = src[j * p.score_col_stride];
          row = row_buf.data();
        }
      } else {
        for (int64_t j = 0; j < p.num_items; ++j)
          row_buf[j] = static_cast<acc_t>(src[j * p.score_col_stride]);
        row = row_buf.data();
      }
      const bool ok = rank_row<acc_t>(row, p.num_items, p.hist + p.indptr[u], p.hist + p.indptr[u + 1],
                                      p.target[u], p.exclude_history, p.k, scratch, p.topk + u * p.k,
                                      p.rank + u);
      if (!ok) {
        int64_t seen = nan_user.load();
        while ((seen < 0 || u < seen) && !nan_user.compare_exchange_weak(seen, u)) {
        }
      }
    }
  });
}

void check_scores(const at::Tensor& scores, const char* op) {
  TORCH_CHECK(scores.defined(), op, ": argument 'scores' is undefined");
  const auto dt = scores.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16, op,
              ": argument 'scores' must have dtype float32, float64, float16 or bfloat16, got ", dt);
  TORCH_CHECK(scores.dim() == 2, op, ": argument 'scores' must be 2-dimensional [users, items], got shape ",
              scores.sizes());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> rank_topk_cpu(const at::Tensor& scores,
                                                 const at::Tensor& history_indptr,
                                                 const at::Tensor& history_items,
                                                 const at::Tensor& target, int64_t k,
                                                 bool exclude_history) {
  constexpr const char* op = "rank_topk";
  check_scores(scores, op);
  check_tensor(history_indptr, op, "history_indptr", at::kLong, 1);
  check_tensor(history_items, op, "history_items", at::kLong, 1);
  check_tensor(target, op, "target", at::kLong, 1);
  SameDevice{op}("scores", scores)("history_indptr", history_indptr)("history_items", history_items)(
      "target", target);
  const int64_t U = scores.size(0);
  const int64_t I = scores.size(1);
  TORCH_CHECK(k >= 0, op, ": argument 'k' must be >= 0, got ", k);
  TORCH_CHECK(target.size(0) == U, op, ": argument 'target' must have shape [", U,
              "] (one per row of 'scores'), got ", target.sizes());
  TORCH_CHECK(history_indptr.size(0) == U + 1, op, ": argument 'history_indptr' must have shape [",
              U + 1, "] (rows of 'scores' + 1), got ", history_indptr.sizes());

  // Index tensors are small (O(U + nnz)): validate every value here, once, so the
  // kernel can index without checks.
  const at::Tensor indptr_c = history_indptr.contiguous();
  const at::Tensor hist_c = history_items.contiguous();
  const at::Tensor target_c = target.contiguous();
  const int64_t* indptr = indptr_c.const_data_ptr<int64_t>();
  const int64_t* hist = hist_c.const_data_ptr<int64_t>();
  const int64_t* tgt = target_c.const_data_ptr<int64_t>();
  const int64_t nnz = hist_c.size(0);
  TORCH_CHECK(indptr[0] == 0, op, ": argument 'history_indptr' must start at 0, got ", indptr[0]);
  for (int64_t u = 0; u < U; ++u) {
    TORCH_CHECK(indptr[u + 1] >= indptr[u], op,
                ": argument 'history_indptr' must be non-decreasing, but history_indptr[", u + 1,
                "] = ", indptr[u + 1], " < history_indptr[", u, "] = ", indptr[u]);
  }
  TORCH_CHECK(indptr[U] == nnz, op, ": argument 'history_indptr' must end at len(history_items) = ",
              nnz, ", got ", indptr[U]);
  for (int64_t i = 0; i < nnz; ++i) {
    TORCH_CHECK(hist[i] >= 0 && hist[i] < I, op, ": argument 'history_items' must hold item ids in [0, ",
                I, "), got history_items[", i, "] = ", hist[i]);
  }
  for (int64_t u = 0; u < U; ++u) {
    TORCH_CHECK(tgt[u] >= 1 && tgt[u] < I, op, ": argument 'target' must hold item ids in [1, ", I,
                ") (0 is padding), got target[", u, "] = ", tgt[u]);
  }

  // A list never holds more than the I - 1 candidate items: cap k before allocating (a
  // huge k would otherwise allocate U * k results, e.g. 3e9 for k = 1e9).
  k = std::min(k, std::max<int64_t>(I - 1, 0));
  at::Tensor topk = at::empty({U, k}, scores.options().dtype(at::kLong));
  at::Tensor rank = at::empty({U}, scores.options().dtype(at::kLong));
  if (U == 0) return {topk, rank};

  RankTopkParams p{scores.const_data_ptr(),
                   scores.stride(0),
                   scores.stride(1),
                   indptr,
                   hist,
                   tgt,
                   U,
                   I,
                   k,
                   exclude_history,
                   topk.mutable_data_ptr<int64_t>(),
                   rank.mutable_data_ptr<int64_t>()};
  std::atomic<int64_t> nan_user{-1};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "rank_topk_cpu",
                                  [&] { rank_topk_kernel<scalar_t>(p, nan_user); });
  const int64_t bad = nan_user.load();
  TORCH_CHECK(bad < 0, op, ": argument 'scores' holds NaN in row ", bad,
              " (items 1.. or the target's score); NaN has no rank, fix the scores");
  return {topk, rank};
}

at::Tensor rank_sampled_cpu(const at::Tensor& scores) {
  constexpr const char* op = "rank_sampled";
  check_scores(scores, op);
  const int64_t U = scores.size(0);
  const int64_t C = scores.size(1);
  TORCH_CHECK(C >= 1, op, ": argument 'scores' must have at least 1 column (the target), got shape ",
              scores.sizes());
  at::Tensor rank = at::empty({U}, scores.options().dtype(at::kLong));
  int64_t* out = rank.mutable_data_ptr<int64_t>();
  const int64_t rs = scores.stride(0);
  const int64_t cs = scores.stride(1);
  std::atomic<int64_t> nan_user{-1};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "rank_sampled_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const auto* s = scores.const_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, kGrainWork / C);
    at::parallel_for(0, U, grain, [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) {
        const scalar_t* row = s + u * rs;
        const acc_t t = static_cast<acc_t>(row[0]);
        int64_t ge = 0, lt = 0;
        for (int64_t j = 1; j < C; ++j) {
          const acc_t v = static_cast<acc_t>(row[j * cs]);
          ge += v >= t;
          lt += v < t;
        }
        out[u] = ge;
        if (t != t || ge + lt != C - 1) {
          int64_t seen = nan_user.load();
          while ((seen < 0 || u < seen) && !nan_user.compare_exchange_weak(seen, u)) {
          }
        }
      }
    });
  });
  const int64_t bad = nan_user.load();
  TORCH_CHECK(bad < 0, op, ": argument 'scores' holds NaN in row ", bad,
              "; NaN has no rank, fix the scores");
  return rank;
}

}  // namespace seqrec::ops
