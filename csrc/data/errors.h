#pragma once
// Errors of the data engine. Every message names where the problem is (file, line,
// field, argument); bindings.cpp turns DataError into the Python exception
// seqrec.data.DataError (a ValueError).
#include <stdexcept>
#include <string>

namespace seqrec::data {

struct DataError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace seqrec::data
