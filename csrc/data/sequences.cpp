#include "data/sequences.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <utility>

#include "data/checks.h"
#include "data/errors.h"

namespace seqrec::data {

Csr group_by_user(const int64_t* users, const int64_t* items, const double* timestamps, int64_t n,
                  int64_t num_users) {
  constexpr const char* fn = "group_by_user";
  check::at_least(fn, "num_users", num_users, 0);
  check::at_least(fn, "len(users)", n, 0);
  // Codes come from a vocabulary of the interactions, so every user has one: a larger
  // num_users is a caller's mistake, and would size the result by it (memory for nothing).
  if (num_users > n)
    throw DataError("group_by_user: num_users = " + std::to_string(num_users) + " is more than the " +
                    std::to_string(n) + " interactions given (every user code must occur)");
  // NaN would break the strict weak order the sort below relies on (undefined behaviour).
  if (timestamps != nullptr)
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(timestamps[i]))
        throw DataError("group_by_user: timestamps[" + std::to_string(i) + "] = " +
                        std::to_string(timestamps[i]) + " is not a finite number");
  for (int64_t i = 0; i < n; ++i)
    if (users[i] < 1 || users[i] > num_users)
      throw DataError("group_by_user: users[" + std::to_string(i) + "] = " +
                      std::to_string(users[i]) + " is not a user code in 1..num_users = " +
                      std::to_string(num_users));
  Csr out;
  out.indptr.assign(static_cast<size_t>(num_users) + 1, 0);
  for (int64_t i = 0; i < n; ++i) ++out.indptr[users[i]];
  std::partial_sum(out.indptr.begin(), out.indptr.end(), out.indptr.begin());
  // Counting sort by user keeps the input order within a user.
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::vector<int64_t> cursor(out.indptr.begin(), out.indptr.end() - 1);
  for (int64_t i = 0; i < n; ++i) order[cursor[users[i] - 1]++] = i;
  if (timestamps != nullptr) {
    // Each user's (time, row) pairs sorted in a contiguous buffer: the comparisons then
    // read neighbouring memory instead of timestamps[] at random rows. Rows rise within
    // a user, so ordering by (time, row) is the stable order by time.
    std::vector<std::pair<double, int64_t>> pairs;
    for (int64_t u = 0; u < num_users; ++u) {
      const int64_t begin = out.indptr[u], end = out.indptr[u + 1];
      bool sorted = true;
      for (int64_t j = begin + 1; j < end && sorted; ++j) sorted = timestamps[order[j - 1]] <= timestamps[order[j]];
      if (sorted) continue;
      pairs.clear();
      for (int64_t j = begin; j < end; ++j) pairs.emplace_back(timestamps[order[j]], order[j]);
      std::sort(pairs.begin(), pairs.end());
      for (int64_t j = begin; j < end; ++j) order[j] = pairs[j - begin].second;
    }
  }
  out.values.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out.values[i] = items[order[i]];
  if (timestamps != nullptr) {
    out.times.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) out.times[i] = timestamps[order[i]];
  }
  return out;
}

KCoreResult kcore(const Csr& seqs, int64_t num_items, int64_t min_user, int64_t min_item) {
  constexpr const char* fn = "kcore";
  check::at_least(fn, "min_user", min_user, 0);
  check::at_least(fn, "min_item", min_item, 0);
  check::csr(fn, seqs.indptr.data(), static_cast<int64_t>(seqs.indptr.size()), seqs.values.data(),
             static_cast<int64_t>(seqs.values.size()), num_items);
  // Three arrays of num_items + 1 entries (degrees, liveness, new ids) are allocated.
  check::elements(fn, {{"num_items", num_items}, {"arrays per item", 3}});
  const int64_t num_users = static_cast<int64_t>(seqs.indptr.size()) - 1;
  std::vector<char> user_alive(num_users, 1), item_alive(num_items + 1, 1);
  item_alive[0] = 0;
  std::vector<int64_t> user_deg(num_users), item_deg(num_items + 1);
  for (bool changed = true; changed;) {
    changed = false;
    std::fill(user_deg.begin(), user_deg.end(), 0);
    std::fill(item_deg.begin(), item_deg.end(), 0);
    for (int64_t u = 0; u < num_users; ++u) {
      if (!user_alive[u]) continue;
      for (int64_t j = seqs.indptr[u]; j < seqs.indptr[u + 1]; ++j) {
        const int64_t it = seqs.values[j];
        if (item_alive[it]) ++user_deg[u], ++item_deg[it];
      }
    }
    for (int64_t u = 0; u < num_users; ++u)
      if (user_alive[u] && user_deg[u] < min_user) user_alive[u] = 0, changed = true;
    for (int64_t it = 1; it <= num_items; ++it)
      if (item_alive[it] && item_deg[it] < min_item) item_alive[it] = 0, changed = true;
  }
  KCoreResult out;
  std::vector<int64_t> new_item_id(num_items + 1, 0);
  for (int64_t it = 1; it <= num_items; ++it) {
    if (item_alive[it] && item_deg[it] > 0) {
      out.kept_items.push_back(it);
      new_item_id[it] = static_cast<int64_t>(out.kept_items.size());
    }
  }
  out.sequences.indptr.push_back(0);
  for (int64_t u = 0; u < num_users; ++u) {
    if (!user_alive[u] || user_deg[u] == 0) continue;
    out.kept_users.push_back(u);
    for (int64_t j = seqs.indptr[u]; j < seqs.indptr[u + 1]; ++j)
      if (new_item_id[seqs.values[j]] != 0) out.sequences.values.push_back(new_item_id[seqs.values[j]]);
    out.sequences.indptr.push_back(static_cast<int64_t>(out.sequences.values.size()));
  }
  return out;
}

}  // namespace seqrec::data
