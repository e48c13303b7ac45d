#include "data/checks.h"

#include <unistd.h>

#include "data/errors.h"

namespace seqrec::data {
namespace {

// Length of the well-formed UTF-8 sequence starting at s[i] (1..4), or 0 when the bytes
// there are not one; `cp` receives its code point.
size_t utf8_sequence(std::string_view s, size_t i, uint32_t& cp) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char b0 = byte(i);
  if (b0 < 0x80) {
    cp = b0;
    return 1;
  }
  size_t len;
  uint32_t min;
  if ((b0 & 0xE0) == 0xC0) len = 2, cp = b0 & 0x1F, min = 0x80;
  else if ((b0 & 0xF0) == 0xE0) len = 3, cp = b0 & 0x0F, min = 0x800;
  else if ((b0 & 0xF8) == 0xF0) len = 4, cp = b0 & 0x07, min = 0x10000;
  else return 0;
  if (i + len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (byte(i + k) & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

void append_hex(std::string& out, unsigned char b) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += "\\x";
  out += kHex[b >> 4];
  out += kHex[b & 0xF];
}

std::string str(int64_t v) { return std::to_string(v); }

}  // namespace

std::string printable(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    uint32_t cp = 0;
    const size_t len = utf8_sequence(bytes, i, cp);
    const bool control = cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp < 0xA0);
    if (len == 0 || control) {
      append_hex(out, static_cast<unsigned char>(bytes[i]));
      ++i;
    } else {
      out.append(bytes.substr(i, len));
      i += len;
    }
  }
  return out;
}

bool is_utf8(std::string_view bytes) {
  for (size_t i = 0; i < bytes.size();) {
    if (static_cast<unsigned char>(bytes[i]) < 0x80) {  // ASCII fast path
      ++i;
      continue;
    }
    uint32_t cp = 0;
    const size_t len = utf8_sequence(bytes, i, cp);
    if (len == 0) return false;
    i += len;
  }
  return true;
}

namespace check {

void at_least(const char* fn, const char* arg, int64_t value, int64_t min) {
  if (value < min)
    throw DataError(std::string(fn) + ": " + arg + " must be >= " + str(min) + ", got " + str(value));
}

void same_length(const char* fn, const char* arg_a, int64_t size_a, const char* arg_b, int64_t size_b) {
  if (size_a != size_b)
    throw DataError(std::string(fn) + ": " + arg_a + " and " + arg_b +
                    " must have the same length, got " + str(size_a) + " and " + str(size_b));
}

int64_t elements(const char* fn, std::initializer_list<std::pair<const char*, int64_t>> dims) {
  int64_t total = 1;
  std::string shape;
  for (const auto& [name, value] : dims) {
    shape += (shape.empty() ? "" : " x ") + std::string(name) + "=" + str(value);
    if (value < 0) throw DataError(std::string(fn) + ": " + name + " must be >= 0, got " + str(value));
  }
  int64_t bytes = 0;
  for (const auto& [name, value] : dims) {
    if (__builtin_mul_overflow(total, value, &total))
      throw DataError(std::string(fn) + ": the result would have " + shape +
                      " entries, more than int64 can count");
  }
  // Refused before allocating: a result larger than the machine's memory would end in
  // an allocation error at best and in the OOM killer at worst.
  const int64_t pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGE_SIZE);
  if (!__builtin_mul_overflow(total, int64_t{8}, &bytes) && pages > 0 && page_size > 0 &&
      bytes / page_size <= pages)
    return total;
  throw DataError(std::string(fn) + ": the result would have " + shape + " = " + str(total) +
                  " entries of 8 bytes, more than this machine's memory");
}

void csr_ends(const char* fn, const int64_t* indptr, int64_t indptr_size, int64_t num_values,
              int64_t max_value) {
  const std::string f(fn);
  if (indptr_size < 1) throw DataError(f + ": indptr must have at least one entry (num_rows + 1)");
  if (indptr[0] != 0) throw DataError(f + ": indptr[0] must be 0, got " + str(indptr[0]));
  if (indptr[indptr_size - 1] != num_values)
    throw DataError(f + ": indptr[-1] = " + str(indptr[indptr_size - 1]) +
                    " must equal the number of items (" + str(num_values) + ")");
  if (max_value < 0) throw DataError(f + ": num_items must be >= 0, got " + str(max_value));
}

void csr(const char* fn, const int64_t* indptr, int64_t indptr_size, const int64_t* values,
         int64_t num_values, int64_t max_value) {
  csr_ends(fn, indptr, indptr_size, num_values, max_value);
  for (int64_t r = 1; r < indptr_size; ++r)
    if (indptr[r] < indptr[r - 1])
      throw DataError(std::string(fn) + ": indptr must not decrease, but indptr[" + str(r) +
                      "] = " + str(indptr[r]) + " < indptr[" + str(r - 1) + "] = " +
                      str(indptr[r - 1]));
  for (int64_t j = 0; j < num_values; ++j)
    if (values[j] < 1 || values[j] > max_value)
      throw DataError(std::string(fn) + ": items[" + str(j) + "] = " + str(values[j]) +
                      " is not an item id in 1..num_items = " + str(max_value));
}

void csr_row(const char* fn, const std::string& caller, const int64_t* indptr, int64_t num_rows,
             const int64_t* values, int64_t num_values, int64_t max_value, int64_t row) {
  const std::string f(fn);
  if (row < 0 || row >= num_rows)
    throw DataError(f + ": " + caller + " = " + str(row) + " is not a user index in 0.." +
                    str(num_rows - 1));
  const int64_t begin = indptr[row], end = indptr[row + 1];
  if (begin < 0 || end < begin || end > num_values)
    throw DataError(f + ": indptr[" + str(row) + ":" + str(row + 2) + "] = [" + str(begin) + ", " +
                    str(end) + "] (user " + str(row) + ", from " + caller +
                    ") is not a range within the " + str(num_values) + " items");
  for (int64_t j = begin; j < end; ++j)
    if (values[j] < 1 || values[j] > max_value)
      throw DataError(f + ": items[" + str(j) + "] = " + str(values[j]) + " (user " + str(row) +
                      ") is not an item id in 1..num_items = " + str(max_value));
}

}  // namespace check
}  // namespace seqrec::data
