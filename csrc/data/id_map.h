#pragma once
// Dense id map: raw string tokens <-> dense ids 1..n, 0 reserved for padding.
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
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
  // Transparent hash and equality: lookups by string_view build no std::string, which
  // was one allocation per token read.
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::vector<std::string> tokens_;
  std::unordered_map<std::string, int64_t, Hash, std::equal_to<>> ids_;
};

}  // namespace seqrec::data
