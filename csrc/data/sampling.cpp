#include "data/sampling.h"

#include <algorithm>
#include <string>

#include "data/checks.h"
#include "data/errors.h"

namespace seqrec::data {
namespace {

uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

void check_view(const char* fn, const CsrView& seqs) {
  check::csr_ends(fn, seqs.indptr, seqs.num_users + 1, seqs.num_values, seqs.num_items);
}

// The row of users[row], checked before any of it is read.
void check_user(const char* fn, const CsrView& seqs, int64_t user, int64_t row) {
  check::csr_row(fn, "users[" + std::to_string(row) + "]", seqs.indptr, seqs.num_users, seqs.items,
                 seqs.num_values, seqs.num_items, user);
}

int64_t checked_prefix(const char* fn, const CsrView& seqs, int64_t user, int64_t prefix,
                       int64_t row, int64_t need_after) {
  const int64_t len = seqs.indptr[user + 1] - seqs.indptr[user];
  if (prefix < 0 || prefix > len - need_after)
    throw DataError(std::string(fn) + ": prefix_len[" + std::to_string(row) + "] = " +
                    std::to_string(prefix) + " does not fit user " + std::to_string(user) + "'s " +
                    std::to_string(len) + " items");
  return prefix;
}

// The user's items, sorted, for membership tests by binary search.
void sorted_history(const CsrView& seqs, int64_t user, std::vector<int64_t>& out) {
  out.assign(seqs.items + seqs.indptr[user], seqs.items + seqs.indptr[user + 1]);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
}

bool contains(const std::vector<int64_t>& sorted, int64_t x) {
  return std::binary_search(sorted.begin(), sorted.end(), x);
}

// Uniform item in 1..num_items outside `seen` (sorted, unique). Rejection sampling is
// fast when the history is a small part of the catalogue; otherwise pick the k-th
// unseen item directly, so a dense history never loops for long.
int64_t draw_unseen(CounterRng& rng, int64_t num_items, const std::vector<int64_t>& seen) {
  const int64_t free = num_items - static_cast<int64_t>(seen.size());
  if (free <= 0) throw DataError("a user has interacted with every item: no negative exists");
  if (static_cast<int64_t>(seen.size()) * 2 <= num_items) {
    while (true) {
      const int64_t item = 1 + static_cast<int64_t>(rng.below(static_cast<uint64_t>(num_items)));
      if (!contains(seen, item)) return item;
    }
  }
  // k-th (0-based) unseen item: walk the gaps between seen items.
  int64_t k = static_cast<int64_t>(rng.below(static_cast<uint64_t>(free)));
  int64_t candidate = 1;
  for (int64_t s : seen) {
    const int64_t gap = s - candidate;
    if (k < gap) return candidate + k;
    k -= gap;
    candidate = s + 1;
  }
  return candidate + k;
}

}  // namespace

CounterRng::CounterRng(uint64_t seed, uint64_t stream, uint64_t key)
    : state_(mix(mix(mix(seed) ^ (stream * 0x9e3779b97f4a7c15ULL)) ^ key)) {}

uint64_t CounterRng::next() {
  state_ += 0x9e3779b97f4a7c15ULL;
  return mix(state_);
}

uint64_t CounterRng::below(uint64_t n) {
  unsigned __int128 m = static_cast<unsigned __int128>(next()) * n;
  uint64_t low = static_cast<uint64_t>(m);
  if (low < n) {
    const uint64_t threshold = (0 - n) % n;
    while (low < threshold) {
      m = static_cast<unsigned __int128>(next()) * n;
      low = static_cast<uint64_t>(m);
    }
  }
  return static_cast<uint64_t>(m >> 64);
}

TrainBatch build_train_batch(const CsrView& seqs, const int64_t* users, const int64_t* prefix_len,
                             int64_t batch, int64_t max_len, int64_t num_negatives, uint64_t seed,
                             uint64_t stream) {
  constexpr const char* fn = "train_batch";
  check_view(fn, seqs);
  check::at_least(fn, "max_len", max_len, 1);
  check::at_least(fn, "num_negatives", num_negatives, 0);
  const auto cells = static_cast<size_t>(check::elements(fn, {{"users", batch}, {"max_len", max_len}}));
  const auto negative_cells = static_cast<size_t>(check::elements(
      fn, {{"users", batch}, {"max_len", max_len}, {"num_negatives", num_negatives}}));
  TrainBatch out;
  out.input_ids.assign(cells, 0);
  out.target_ids.assign(cells, 0);
  out.negative_ids.assign(negative_cells, 0);
  out.lengths.assign(static_cast<size_t>(batch), 0);
  std::vector<int64_t> seen;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t user = users[b];
    check_user(fn, seqs, user, b);
    const int64_t prefix = checked_prefix(fn, seqs, user, prefix_len[b], b, 0);
    if (prefix < 2) continue;
    const int64_t* seq = seqs.items + seqs.indptr[user];
    const int64_t len = std::min(prefix - 1, max_len);  // number of (input, target) pairs
    const int64_t first = prefix - 1 - len;               // index of the first input kept
    out.lengths[b] = len;
    CounterRng rng(seed, stream, static_cast<uint64_t>(user));
    if (num_negatives > 0) sorted_history(seqs, user, seen);
    for (int64_t t = 0; t < len; ++t) {
      const int64_t col = max_len - len + t;
      out.input_ids[b * max_len + col] = seq[first + t];
      out.target_ids[b * max_len + col] = seq[first + t + 1];
      for (int64_t j = 0; j < num_negatives; ++j)
        out.negative_ids[(b * max_len + col) * num_negatives + j] =
            draw_unseen(rng, seqs.num_items, seen);
    }
  }
  return out;
}

EvalBatch build_eval_batch(const CsrView& seqs, const int64_t* users, const int64_t* prefix_len,
                           int64_t batch, int64_t max_len) {
  constexpr const char* fn = "eval_batch";
  check_view(fn, seqs);
  check::at_least(fn, "max_len", max_len, 1);
  const auto cells = static_cast<size_t>(check::elements(fn, {{"users", batch}, {"max_len", max_len}}));
  EvalBatch out;
  out.input_ids.assign(cells, 0);
  out.lengths.assign(static_cast<size_t>(batch), 0);
  out.target.assign(static_cast<size_t>(batch), 0);
  out.history_indptr.assign(static_cast<size_t>(batch) + 1, 0);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t user = users[b];
    check_user(fn, seqs, user, b);
    const int64_t prefix = checked_prefix(fn, seqs, user, prefix_len[b], b, 1);
    const int64_t* seq = seqs.items + seqs.indptr[user];
    const int64_t len = std::min(prefix, max_len);
    for (int64_t t = 0; t < len; ++t)
      out.input_ids[b * max_len + (max_len - len + t)] = seq[prefix - len + t];
    out.lengths[b] = len;
    out.target[b] = seq[prefix];
    out.history_items.insert(out.history_items.end(), seq, seq + prefix);
    out.history_indptr[b + 1] = static_cast<int64_t>(out.history_items.size());
  }
  return out;
}

std::vector<int64_t> sample_unseen(const CsrView& seqs, const int64_t* users, int64_t batch,
                                   int64_t num_negatives, uint64_t seed, uint64_t stream) {
  constexpr const char* fn = "sample_unseen";
  check_view(fn, seqs);
  check::at_least(fn, "num_negatives", num_negatives, 1);
  std::vector<int64_t> out(static_cast<size_t>(
      check::elements(fn, {{"users", batch}, {"num_negatives", num_negatives}})));
  std::vector<int64_t> seen;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t user = users[b];
    check_user(fn, seqs, user, b);
    sorted_history(seqs, user, seen);
    const int64_t free = seqs.num_items - static_cast<int64_t>(seen.size());
    if (free < num_negatives)
      throw DataError("user " + std::to_string(user) + " has only " + std::to_string(free) +
                      " unseen items, fewer than the " + std::to_string(num_negatives) +
                      " negatives asked for");
    CounterRng rng(seed, stream, static_cast<uint64_t>(user));
    // Drawn items join `seen` (kept sorted) so the negatives are distinct.
    for (int64_t j = 0; j < num_negatives; ++j) {
      const int64_t item = draw_unseen(rng, seqs.num_items, seen);
      out[b * num_negatives + j] = item;
      seen.insert(std::lower_bound(seen.begin(), seen.end(), item), item);
    }
  }
  return out;
}

}  // namespace seqrec::data
