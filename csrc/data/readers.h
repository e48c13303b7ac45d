#pragma once
// File readers of the data engine. Every error is a DataError whose message starts
// with "<path>:<line>:" and names the field at fault.
#include <cstdint>
#include <string>
#include <vector>

#include "data/id_map.h"

namespace seqrec::data {

// Sequences in CSR form: user u (dense id u+1 in `users`) has the dense item ids
// items[indptr[u] : indptr[u+1]], in chronological order.
struct SequenceTable {
  IdMap users;
  IdMap items;
  std::vector<int64_t> indptr{0};
  std::vector<int64_t> item_ids;
};

// S3-Rec text format: one user per line, `user item item ...`, chronological, integer
// ids. Dense item ids follow the numeric order of the raw ids; users keep file order.
SequenceTable read_s3rec_text(const std::string& path);

// One column of a RecBole atomic file (`name:type` header, tab separated).
struct AtomicColumn {
  std::string name;
  std::string type;                 // token | token_seq | float | float_seq
  IdMap vocab;                      // token, token_seq: raw token <-> code (1..)
  std::vector<int64_t> codes;       // token: one code per row; token_seq: flattened
  std::vector<double> values;       // float: one per row; float_seq: flattened
  std::vector<int64_t> indptr;      // *_seq: row r spans [indptr[r], indptr[r+1])
};

struct AtomicTable {
  std::string path;
  int64_t num_rows = 0;
  std::vector<AtomicColumn> columns;
};

// Reads the columns named in `fields` (all columns when empty), in the order asked.
// A requested column that the header lacks is an error that lists the ones it has.
AtomicTable read_atomic(const std::string& path, const std::vector<std::string>& fields);

}  // namespace seqrec::data
