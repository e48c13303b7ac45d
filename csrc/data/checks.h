#pragma once
// Argument checks of the data engine, shared by every function the bindings expose.
//
// The engine functions index raw arrays with values read from other arrays (indptr,
// item ids, user indices), so one inconsistent input reads or writes out of bounds.
// Python callers build consistent inputs, but the module is public (seqrec._C.data)
// and anything may call it: each entry point checks its inputs here first and throws
// a DataError that names the function, the argument and the offending entry.
//
// Also here: `printable`, which makes arbitrary bytes (file content, paths) safe to
// put in an error message, since a message travels to Python as UTF-8 text.
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace seqrec::data {

// `bytes` with every byte that is not part of valid, printable UTF-8 written as \xNN
// (control characters and NUL included: a NUL would cut the C string short, invalid
// UTF-8 would make Python fail to decode the whole message).
std::string printable(std::string_view bytes);

// True when `bytes` is well-formed UTF-8 (no overlongs, surrogates or values past U+10FFFF).
bool is_utf8(std::string_view bytes);

namespace check {

// `value` >= `min`, else "fn: arg must be >= min, got value".
void at_least(const char* fn, const char* arg, int64_t value, int64_t min);

// Two arrays that go together have the same number of entries.
void same_length(const char* fn, const char* arg_a, int64_t size_a, const char* arg_b, int64_t size_b);

// The product of output dimensions (name, value) of int64 entries: not negative, no
// overflow, and not more bytes than the machine's physical memory; returns it. Guards
// the allocation of a [d0, d1, ...] result.
int64_t elements(const char* fn, std::initializer_list<std::pair<const char*, int64_t>> dims);

// Full check of a CSR store (O(rows + values)): indptr has >= 1 entries, starts at 0,
// never decreases and ends at `num_values`; every value lies in 1..max_value.
void csr(const char* fn, const int64_t* indptr, int64_t indptr_size, const int64_t* values,
         int64_t num_values, int64_t max_value);

// The O(1) part of `csr` (first and last indptr entries, max_value >= 0), for functions
// that touch only a few rows and check each one with `csr_row`: checking every row per
// batch would make an epoch quadratic in the number of users.
void csr_ends(const char* fn, const int64_t* indptr, int64_t indptr_size, int64_t num_values,
              int64_t max_value);

// Row `row` of a CSR store whose ends were checked: indptr[row] <= indptr[row + 1] lie in
// 0..num_values and the row's values lie in 1..max_value. `caller` names where the row
// index came from (e.g. "users[3]").
void csr_row(const char* fn, const std::string& caller, const int64_t* indptr, int64_t num_rows,
             const int64_t* values, int64_t num_values, int64_t max_value, int64_t row);

}  // namespace check
}  // namespace seqrec::data
