#pragma once
// Batch building and sampling over CSR sequences.
//
// Randomness is counter based: every draw for user u comes from a generator seeded
// with (seed, stream, u), so a batch's content depends only on which users it holds,
// never on batch composition, order or thread count. That is what makes a resumed run
// identical to an uninterrupted one.
//
// Layout: sequences are LEFT-padded with item 0 to max_len columns, the most recent
// item in the last column; truncation keeps the most recent items.
#include <cstdint>
#include <vector>

namespace seqrec::data {

// splitmix64-driven generator (Steele, Lea & Flood 2014); fast and good enough for
// sampling, never for cryptography.
class CounterRng {
 public:
  CounterRng(uint64_t seed, uint64_t stream, uint64_t key);
  uint64_t next();
  // Uniform integer in [0, n), unbiased (Lemire's multiply-and-reject).
  uint64_t below(uint64_t n);

 private:
  uint64_t state_;
};

// Every function below checks the ends of the view (check::csr_ends) and each row it
// reads (check::csr_row), so an inconsistent view is a DataError, never a stray read.
struct CsrView {
  const int64_t* indptr;  // [num_users + 1]
  const int64_t* items;   // [num_values]
  int64_t num_users;
  int64_t num_values;     // entries of `items`; indptr[num_users] must equal it
  int64_t num_items;      // item ids are 1..num_items
};

struct TrainBatch {
  std::vector<int64_t> input_ids;     // [B, max_len]
  std::vector<int64_t> target_ids;    // [B, max_len]
  std::vector<int64_t> negative_ids;  // [B, max_len, num_negatives]
  std::vector<int64_t> lengths;       // [B]
};

// For each user u = users[b]: visible = the first prefix_len[b] items of its sequence;
// inputs are visible[:-1], targets visible[1:] (next item at every position), each with
// num_negatives items drawn uniformly from items the user never interacted with (whole
// sequence). Rows whose prefix is shorter than 2 get length 0 (all padding).
TrainBatch build_train_batch(const CsrView& seqs, const int64_t* users, const int64_t* prefix_len,
                             int64_t batch, int64_t max_len, int64_t num_negatives, uint64_t seed,
                             uint64_t stream);

struct EvalBatch {
  std::vector<int64_t> input_ids;       // [B, max_len]: the last max_len items of the prefix
  std::vector<int64_t> lengths;         // [B]
  std::vector<int64_t> target;          // [B]: the item right after the prefix
  std::vector<int64_t> history_indptr;  // [B + 1]: the whole prefix, untruncated
  std::vector<int64_t> history_items;
};

// For each user: prefix = first prefix_len[b] items, target = item prefix_len[b].
EvalBatch build_eval_batch(const CsrView& seqs, const int64_t* users, const int64_t* prefix_len,
                           int64_t batch, int64_t max_len);

// [B, num_negatives] distinct items, uniform among those user users[b] never interacted with.
std::vector<int64_t> sample_unseen(const CsrView& seqs, const int64_t* users, int64_t batch,
                                   int64_t num_negatives, uint64_t seed, uint64_t stream);

}  // namespace seqrec::data
