#pragma once
// CSR sequence store operations: grouping interactions into per-user chronological
// sequences and k-core filtering.
#include <cstdint>
#include <vector>

namespace seqrec::data {

struct Csr {
  std::vector<int64_t> indptr;  // [rows + 1]
  std::vector<int64_t> values;  // [indptr.back()]
  std::vector<double> times;    // group_by_user with timestamps: aligned with values; else empty
};

// Groups interactions by user (codes 1..num_users, num_users <= n; row u-1 holds user u) and orders
// each user's items by timestamp, keeping the input order on ties (stable). With
// timestamps == nullptr the input order is the chronological order. With timestamps,
// `times` holds them in the order of `values` (so the caller need not sort them again).
Csr group_by_user(const int64_t* users, const int64_t* items, const double* timestamps, int64_t n,
                  int64_t num_users);

struct KCoreResult {
  Csr sequences;                   // rows: kept users, values: new item ids 1..
  std::vector<int64_t> kept_users;  // old row index (0-based) of each kept user
  std::vector<int64_t> kept_items;  // old item id of each new item id (new id i -> kept_items[i-1])
};

// Repeatedly drops users with fewer than `min_user` interactions and items with fewer
// than `min_item` interactions until both hold for everything left.
KCoreResult kcore(const Csr& sequences, int64_t num_items, int64_t min_user, int64_t min_item);

}  // namespace seqrec::data
