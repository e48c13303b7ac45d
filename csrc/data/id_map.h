#pragma once
// Dense id map: raw string tokens <-> dense ids 1..n, 0 reserved for padding.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace seqrec::data {

class IdMap {
 public:
  IdMap() : tokens_{""} {}

  // Id of `token`, inserting it with the next id when new.
  int64_t add(std::string_view token);
  // Id of `token`, or 0 (padding) when unknown.
  int64_t find(std::string_view token) const;
  const std::string& token(int64_t id) const { return tokens_.at(static_cast<size_t>(id)); }
  // Number of real ids (padding excluded).
  int64_t size() const { return static_cast<int64_t>(tokens_.size()) - 1; }
  // tokens()[0] is "" (padding); tokens()[id] is the raw token of id.
  const std::vector<std::string>& tokens() const { return tokens_; }

  // Renumber so ids follow the natural order of the tokens (numeric when every
  // token is an integer, else lexicographic). Returns old id -> new id.
  std::vector<int64_t> sort_tokens();

 private:
  // Two open-addressing tables (linear probing, at most half full): tokens that are an
  // integer in canonical form ("0", "17", "-3"; no sign '+', no leading zero, at most 18
  // digits) are keyed by their value, so a lookup hashes a number and compares none of
  // the text; every other token is keyed by its string hash and compared on a match.
  // One id space: a token lives in exactly one table, decided by its text alone.
  // Lookups were half the time of reading a file with std::unordered_map.
  struct Slot {
    uint64_t key = 0;  // the integer's bits, or the string's hash
    int64_t id = 0;    // 0: empty
  };
  struct Table {
    std::vector<Slot> slots;
    int64_t used = 0;
  };
  static bool canonical_integer(std::string_view token, int64_t& value);
  int64_t lookup(Table& table, uint64_t key, std::string_view token, bool is_int, bool insert);
  void grow(Table& table);

  std::vector<std::string> tokens_;
  Table ints_, strings_;
};

// The order of `tokens` under Python's natural key (seqrec.data.dataset._natural):
// integer tokens first, by value, then the others by code point (UTF-8 byte order);
// ties keep the input order (a stable sort). Into `order` (indices into tokens).
// Returns false when some token's class cannot be told without Python's int() (a '+',
// '_', whitespace, control or non-ASCII character in a token of digits and signs, or
// more than 18 digits): the caller then sorts in Python, with the same result.
bool natural_order(const std::vector<std::string>& tokens, std::vector<int64_t>& order);

}  // namespace seqrec::data
