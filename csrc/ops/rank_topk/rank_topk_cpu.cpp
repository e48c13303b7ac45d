// CPU kernels of rank_topk and rank_sampled (contract in rank_topk.h).
//
// One pass per user row, users in parallel. Per row:
//  * the row is read in blocks of kBlock items; a branch-free loop counts the items
//    scoring >= and < the target (the two must add up to the row length, otherwise the
//    row holds a NaN) and the items beating the current k-th best score;
//  * only blocks with such items are rescanned to update a size-k heap, which after
//    the first few blocks is rare, so the row costs about one vectorised compare pass;
//  * excluded history items are corrected for afterwards: they are few (about 9 per
//    user on Beauty), marked in a per-thread byte map so duplicates count once and the
//    heap skips them.
// Nothing of size users x items is allocated: the scratch is O(items) per thread.
#include "ops/rank_topk/rank_topk.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <type_traits>
#include <vector>

#include "ops/common/check.h"

namespace seqrec::ops {
namespace {

constexpr int64_t kBlock = 256;
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

// Keeps the k best entries seen so far. Items arrive in increasing id order, so a new
// item with the same score as the worst kept one ranks after it and never enters:
// the admission test is a strict score comparison.
template <typename acc_t>
class TopK {
 public:
  explicit TopK(int64_t k, int64_t num_items) : k_(k) {
    heap_.reserve(static_cast<size_t>(std::min(k, num_items)));
  }
  void clear() { heap_.clear(); }
  bool full() const { return static_cast<int64_t>(heap_.size()) == k_; }
  // Score an item must beat to enter; only meaningful when full().
  acc_t threshold() const { return heap_.front().score; }
  void offer(acc_t s, int64_t item) {
    if (!full()) {
      heap_.push_back({s, item});
      std::push_heap(heap_.begin(), heap_.end(), RanksBefore<acc_t>());  // front = worst
    } else if (s > heap_.front().score) {
      std::pop_heap(heap_.begin(), heap_.end(), RanksBefore<acc_t>());
      heap_.back() = {s, item};
      std::push_heap(heap_.begin(), heap_.end(), RanksBefore<acc_t>());
    }
  }
  // Writes the kept items best first, then pads with 0 up to k.
  void write(int64_t* out) {
    std::sort_heap(heap_.begin(), heap_.end(), RanksBefore<acc_t>());
    const int64_t n = static_cast<int64_t>(heap_.size());
    for (int64_t i = 0; i < n; ++i) out[i] = heap_[i].item;
    std::fill(out + n, out + k_, int64_t{0});
  }

 private:
  int64_t k_;
  std::vector<Entry<acc_t>> heap_;
};

// Counts of one block: branch-free so that the compiler vectorises it.
template <typename acc_t>
inline void count_block(const acc_t* s, int64_t n, acc_t t, acc_t thr, int64_t& ge, int64_t& lt,
                        int64_t& above_thr) {
  int32_t cge = 0, clt = 0, chit = 0;
  for (int64_t j = 0; j < n; ++j) {
    const acc_t v = s[j];
    cge += v >= t;
    clt += v < t;
    chit += v > thr;
  }
  ge += cge;
  lt += clt;
  above_thr += chit;
}

// Ranks one user's row `s` (s[0] is the padding item). `excluded` is all-zero on entry
// and on exit. Returns false when the row holds a NaN.
template <typename acc_t>
bool rank_row(const acc_t* s, int64_t num_items, const int64_t* hist_begin,
              const int64_t* hist_end, int64_t target, bool exclude_history,
              std::vector<uint8_t>& excluded, TopK<acc_t>& top, int64_t k, int64_t* topk_out,
              int64_t* rank_out) {
  const acc_t t = s[target];
  bool any_excluded = false;
  if (exclude_history) {
    for (const int64_t* h = hist_begin; h != hist_end; ++h) {
      if (*h != target && *h != 0) {
        excluded[*h] = 1;
        any_excluded = true;
      }
    }
  }

  int64_t ge = 0, lt = 0;
  top.clear();
  for (int64_t b = 1; b < num_items; b += kBlock) {
    const int64_t n = std::min(kBlock, num_items - b);
    const acc_t* blk = s + b;
    int64_t above = 0;
    const bool full = top.full();
    // With an empty heap slot every candidate enters, so the block is always rescanned;
    // with k == 0 nothing ever does (+inf is beaten by nothing).
    const acc_t thr = k == 0 ? std::numeric_limits<acc_t>::infinity()
                      : full ? top.threshold()
                             : -std::numeric_limits<acc_t>::infinity();
    count_block(blk, n, t, thr, ge, lt, above);
    if (k > 0 && (!full || above > 0)) {
      for (int64_t j = 0; j < n; ++j) {
        const acc_t v = blk[j];
        if (v != v) continue;  // NaN: reported below, kept out of the ordering
        const int64_t item = b + j;
        if (any_excluded && excluded[item]) continue;
        top.offer(v, item);
      }
    }
  }
  // Every item 1..I-1 compares >= or < a number; only NaN (in the row or as the target
  // score) escapes both.
  const bool finite_order = ge + lt == num_items - 1;

  // ge counted the target itself and every excluded item scoring >= t; take them out.
  int64_t rank = ge - 1;
  if (any_excluded) {
    for (const int64_t* h = hist_begin; h != hist_end; ++h) {
      const int64_t item = *h;
      if (excluded[item]) {
        excluded[item] = 0;  // duplicates in the history are corrected once
        rank -= s[item] >= t;
      }
    }
  }
  *rank_out = rank;
  if (k > 0) top.write(topk_out);
  return finite_order;
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
    std::vector<uint8_t> excluded(p.exclude_history ? static_cast<size_t>(p.num_items) : 0, 0);
    TopK<acc_t> top(p.k, p.num_items);
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
                                      p.target[u], p.exclude_history, excluded, top, p.k,
                                      p.topk + u * p.k, p.rank + u);
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
  check_same_device(scores, history_indptr, op, "scores", "history_indptr");
  check_same_device(scores, history_items, op, "scores", "history_items");
  check_same_device(scores, target, op, "scores", "target");
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
