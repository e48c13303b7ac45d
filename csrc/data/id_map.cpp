#include "data/id_map.h"

#include <algorithm>
#include <charconv>
#include <numeric>

namespace seqrec::data {

int64_t IdMap::add(std::string_view token) {
  auto it = ids_.find(token);
  if (it != ids_.end()) return it->second;
  const int64_t id = static_cast<int64_t>(tokens_.size());
  tokens_.emplace_back(token);
  ids_.emplace(tokens_.back(), id);
  return id;
}

int64_t IdMap::find(std::string_view token) const {
  auto it = ids_.find(token);
  return it == ids_.end() ? 0 : it->second;
}

static bool parse_int(const std::string& s, long long& out) {
  if (s.empty()) return false;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && ptr == s.data() + s.size();
}

std::vector<int64_t> IdMap::sort_tokens() {
  const size_t n = tokens_.size();
  std::vector<long long> numeric(n, 0);
  bool all_numeric = true;
  for (size_t i = 1; i < n && all_numeric; ++i) all_numeric = parse_int(tokens_[i], numeric[i]);

  std::vector<int64_t> order(n - 1);
  std::iota(order.begin(), order.end(), 1);
  if (all_numeric) {
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return numeric[a] < numeric[b]; });
  } else {
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return tokens_[a] < tokens_[b]; });
  }
  std::vector<int64_t> old_to_new(n, 0);
  std::vector<std::string> sorted{""};
  sorted.reserve(n);
  for (size_t rank = 0; rank < order.size(); ++rank) {
    old_to_new[order[rank]] = static_cast<int64_t>(rank + 1);
    sorted.push_back(std::move(tokens_[order[rank]]));
  }
  tokens_ = std::move(sorted);
  ids_.clear();
  for (size_t i = 1; i < tokens_.size(); ++i) ids_.emplace(tokens_[i], static_cast<int64_t>(i));
  return old_to_new;
}

}  // namespace seqrec::data
