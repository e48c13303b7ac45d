#include "data/id_map.h"

#include <algorithm>
#include <charconv>
#include <numeric>

namespace seqrec::data {

namespace {

// splitmix64's finaliser: consecutive ids (the usual raw ids) spread over the table.
uint64_t mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t hash_text(std::string_view s) { return std::hash<std::string_view>{}(s); }

}  // namespace

bool IdMap::canonical_integer(std::string_view token, int64_t& value) {
  const size_t start = !token.empty() && token[0] == '-' ? 1 : 0;
  const size_t digits = token.size() - start;
  if (digits == 0 || digits > 18) return false;
  if (token[start] == '0' && (digits > 1 || start)) return false;  // "007", "-0": not canonical
  int64_t v = 0;
  for (size_t i = start; i < token.size(); ++i) {
    const char c = token[i];
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  value = start ? -v : v;
  return true;
}

void IdMap::grow(Table& table) {
  std::vector<Slot> old = std::move(table.slots);
  table.slots.assign(old.empty() ? 64 : old.size() * 2, Slot{});
  const uint64_t mask = table.slots.size() - 1;
  for (const Slot& s : old) {
    if (s.id == 0) continue;
    uint64_t i = mix(s.key) & mask;
    while (table.slots[i].id != 0) i = (i + 1) & mask;
    table.slots[i] = s;
  }
}

int64_t IdMap::lookup(Table& table, uint64_t key, std::string_view token, bool is_int, bool insert) {
  if (insert && 2 * (table.used + 1) > static_cast<int64_t>(table.slots.size())) grow(table);
  if (table.slots.empty()) return 0;
  const uint64_t mask = table.slots.size() - 1;
  for (uint64_t i = mix(key) & mask;; i = (i + 1) & mask) {
    Slot& slot = table.slots[i];
    if (slot.id == 0) {
      if (!insert) return 0;
      slot.key = key;
      slot.id = static_cast<int64_t>(tokens_.size());
      tokens_.emplace_back(token);
      ++table.used;
      return slot.id;
    }
    if (slot.key == key && (is_int || tokens_[static_cast<size_t>(slot.id)] == token)) return slot.id;
  }
}

int64_t IdMap::add(std::string_view token) {
  int64_t value;
  if (canonical_integer(token, value)) return lookup(ints_, static_cast<uint64_t>(value), token, true, true);
  return lookup(strings_, hash_text(token), token, false, true);
}

int64_t IdMap::find(std::string_view token) const {
  int64_t value;
  auto& self = const_cast<IdMap&>(*this);  // lookup without insert changes nothing
  if (canonical_integer(token, value)) return self.lookup(self.ints_, static_cast<uint64_t>(value), token, true, false);
  return self.lookup(self.strings_, hash_text(token), token, false, false);
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
  // Same tokens, new ids: rebuilt by adding them in their new order.
  tokens_ = {""};
  ints_ = Table{};
  strings_ = Table{};
  for (size_t i = 1; i < sorted.size(); ++i) add(sorted[i]);
  return old_to_new;
}

namespace {

enum class TokenClass { kInteger, kText, kUnsure };

TokenClass classify(const std::string& s, long long& value) {
  // Any printable ASCII character that int() never accepts makes the token text.
  bool other = false;
  for (unsigned char c : s)
    if (c > 0x20 && c < 0x7f && !(c >= '0' && c <= '9') && c != '+' && c != '-' && c != '_') other = true;
  if (other) return TokenClass::kText;
  const size_t start = !s.empty() && s[0] == '-' ? 1 : 0;
  const size_t digits = s.size() - start;
  if (digits == 0 || digits > 18) return TokenClass::kUnsure;
  for (size_t i = start; i < s.size(); ++i)
    if (s[i] < '0' || s[i] > '9') return TokenClass::kUnsure;
  value = 0;
  for (size_t i = start; i < s.size(); ++i) value = value * 10 + (s[i] - '0');
  if (start) value = -value;
  return TokenClass::kInteger;
}

}  // namespace

bool natural_order(const std::vector<std::string>& tokens, std::vector<int64_t>& order) {
  const size_t n = tokens.size();
  std::vector<long long> value(n, 0);
  std::vector<char> is_int(n, 0);
  for (size_t i = 0; i < n; ++i) {
    const TokenClass c = classify(tokens[i], value[i]);
    if (c == TokenClass::kUnsure) return false;
    is_int[i] = c == TokenClass::kInteger;
  }
  order.resize(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    if (is_int[a] != is_int[b]) return is_int[a] > is_int[b];
    if (is_int[a]) return value[a] < value[b];
    return tokens[a] < tokens[b];  // std::string compares bytes as unsigned char
  });
  return true;
}

}  // namespace seqrec::data
