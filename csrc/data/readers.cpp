#include "data/readers.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <exception>
#include <thread>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string_view>
#include <unordered_map>

#include "data/checks.h"
#include "data/errors.h"

namespace seqrec::data {
namespace {

// The whole file. Only regular files: a directory would read as empty and a device
// such as /dev/zero would never end.
std::string read_file(const std::string& path) {
  namespace fs = std::filesystem;
  const std::string shown = printable(path);
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (status.type() == fs::file_type::not_found) throw DataError(shown + ": no such file");
  if (status.type() == fs::file_type::directory)
    throw DataError(shown + ": is a directory, not a data file");
  if (!ec && status.type() != fs::file_type::regular)
    throw DataError(shown + ": is not a regular file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DataError(shown + ": cannot open file for reading (" + std::strerror(errno) + ")");
  const uintmax_t size = fs::file_size(path, ec);
  std::string text;
  if (!ec) text.resize(static_cast<size_t>(size));
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  if (in.bad() || static_cast<size_t>(in.gcount()) != text.size())
    throw DataError(shown + ": read error");
  // A UTF-8 byte order mark (some editors write one) is not part of the first field.
  if (text.compare(0, 3, "\xEF\xBB\xBF") == 0) text.erase(0, 3);
  return text;
}

// Calls fn(line_number, line) for each line, without the trailing "\r\n" / "\n";
// the first line of `text` is line first_line + 1.
template <typename Fn>
void for_each_line(std::string_view text, Fn&& fn, int64_t first_line = 0) {
  size_t start = 0;
  int64_t line_no = first_line;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    size_t stop = end;
    if (stop > start && text[stop - 1] == '\r') --stop;
    fn(++line_no, text.substr(start, stop - start));
    start = end + 1;
  }
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\v' || c == '\f'; }

std::vector<std::string_view> split_whitespace(std::string_view line) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && is_space(line[i])) ++i;
    size_t j = i;
    while (j < line.size() && !is_space(line[j])) ++j;
    if (j > i) out.push_back(line.substr(i, j - i));
    i = j;
  }
  return out;
}

// Into `out` (cleared), so one buffer serves every line.
void split_tabs(std::string_view line, std::vector<std::string_view>& out) {
  out.clear();
  size_t start = 0;
  while (true) {
    size_t tab = line.find('\t', start);
    if (tab == std::string_view::npos) {
      out.push_back(line.substr(start));
      return;
    }
    out.push_back(line.substr(start, tab - start));
    start = tab + 1;
  }
}

bool is_integer(std::string_view s) {
  long long v;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return ec == std::errc() && ptr == s.data() + s.size();
}

std::string where(const std::string& path, int64_t line) {
  return printable(path) + ":" + std::to_string(line) + ": ";
}

// A field of the file as shown in a message: quoted, cut short, bytes made printable.
std::string excerpt(std::string_view s) {
  constexpr size_t kMax = 40;
  std::string out = "'" + printable(s.substr(0, kMax));
  if (s.size() > kMax) out += "...";
  return out + "'";
}

// Tokens become Python str: text that is not UTF-8 is refused where it is read, so the
// message can name the line and field.
// `what` names the place: "header field", "field 'item_id'".
void check_utf8(std::string_view token, const std::string& path, int64_t line_no,
                const std::string& what) {
  if (!is_utf8(token))
    throw DataError(where(path, line_no) + what + " " + excerpt(token) +
                    " is not valid UTF-8 text (save the file as UTF-8)");
}

}  // namespace

SequenceTable read_s3rec_text(const std::string& path) {
  const std::string text = read_file(path);
  SequenceTable table;
  std::unordered_map<int64_t, int64_t> first_line_of_user;
  for_each_line(text, [&](int64_t line_no, std::string_view line) {
    auto tokens = split_whitespace(line);
    if (tokens.empty()) return;  // blank lines carry no data
    if (!is_integer(tokens[0]))
      throw DataError(where(path, line_no) + "field 'user': " + excerpt(tokens[0]) +
                      " is not an integer id");
    if (tokens.size() < 2)
      throw DataError(where(path, line_no) + "user " + std::string(tokens[0]) +
                      " has no items (expected 'user item item ...')");
    const int64_t before = table.users.size();
    const int64_t user = table.users.add(tokens[0]);
    if (table.users.size() == before)
      throw DataError(where(path, line_no) + "user " + std::string(tokens[0]) +
                      " appears again (first on line " +
                      std::to_string(first_line_of_user[user]) + ")");
    first_line_of_user[user] = line_no;
    for (size_t i = 1; i < tokens.size(); ++i) {
      if (!is_integer(tokens[i]))
        throw DataError(where(path, line_no) + "field 'item' #" + std::to_string(i) + ": " +
                        excerpt(tokens[i]) + " is not an integer id");
      table.item_ids.push_back(table.items.add(tokens[i]));
    }
    table.indptr.push_back(static_cast<int64_t>(table.item_ids.size()));
  });
  if (table.users.size() == 0) throw DataError(printable(path) + ": file is empty (no sequences)");
  const auto old_to_new = table.items.sort_tokens();
  for (auto& item : table.item_ids) item = old_to_new[item];
  return table;
}

namespace {

enum class Kind { kToken, kTokenSeq, kFloat, kFloatSeq };

Kind kind_of(const std::string& type) {
  if (type == "token") return Kind::kToken;
  if (type == "token_seq") return Kind::kTokenSeq;
  if (type == "float") return Kind::kFloat;
  return Kind::kFloatSeq;
}

// The rows of one stretch of complete lines, parsed into columns shaped like the table's.
struct RowsPart {
  std::vector<AtomicColumn> columns;
  int64_t num_rows = 0;
  std::exception_ptr error;  // the stretch's first error (parsing stops there)
};

void parse_rows(std::string_view body, int64_t first_line, const std::string& path,
                const std::vector<int>& source_of, int64_t expected_fields, RowsPart& part) {
  std::vector<Kind> kinds;
  for (const auto& col : part.columns) kinds.push_back(kind_of(col.type));
  std::vector<std::string_view> cells;
  // New tokens only are checked for UTF-8: a repeated token was checked when first seen.
  const auto add_token = [&](AtomicColumn& col, std::string_view token, int64_t line_no) {
    const int64_t before = col.vocab.size();
    const int64_t code = col.vocab.add(token);
    if (col.vocab.size() != before) check_utf8(token, path, line_no, "field " + excerpt(col.name) + ":");
    return code;
  };
  try {
    for_each_line(body, [&](int64_t line_no, std::string_view line) {
      if (line.empty()) return;  // blank lines carry no data
      split_tabs(line, cells);
      if (static_cast<int64_t>(cells.size()) != expected_fields)
        throw DataError(where(path, line_no) + "expected " + std::to_string(expected_fields) +
                        " tab-separated fields, got " + std::to_string(cells.size()));
      for (size_t c = 0; c < part.columns.size(); ++c) {
        AtomicColumn& col = part.columns[c];
        std::string_view cell = cells[source_of[c]];
        auto parse = [&](std::string_view s) {
          double v = 0;
          auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
          if (ec != std::errc() || ptr != s.data() + s.size() || !std::isfinite(v))
            throw DataError(where(path, line_no) + "field " + excerpt(col.name) + ": " + excerpt(s) +
                            " is not a finite number");
          return v;
        };
        switch (kinds[c]) {
          case Kind::kToken:
            if (cell.empty())
              throw DataError(where(path, line_no) + "field " + excerpt(col.name) + ": empty token");
            col.codes.push_back(add_token(col, cell, line_no));
            break;
          case Kind::kTokenSeq:
            for (auto tok : split_whitespace(cell)) col.codes.push_back(add_token(col, tok, line_no));
            col.indptr.push_back(static_cast<int64_t>(col.codes.size()));
            break;
          case Kind::kFloat:
            col.values.push_back(parse(cell));
            break;
          case Kind::kFloatSeq:
            for (auto tok : split_whitespace(cell)) col.values.push_back(parse(tok));
            col.indptr.push_back(static_cast<int64_t>(col.values.size()));
            break;
        }
      }
      ++part.num_rows;
    }, first_line);
  } catch (...) {
    part.error = std::current_exception();
  }
}

// Threads for parsing `bytes` of rows: one per 4 MB, at most the cores (or
// OMP_NUM_THREADS when set, as torch reads it), at most 16.
int reader_threads(size_t bytes) {
  int64_t n = std::max(1u, std::thread::hardware_concurrency());
  if (const char* env = std::getenv("OMP_NUM_THREADS")) {
    int64_t v = 0;
    auto [ptr, ec] = std::from_chars(env, env + std::strlen(env), v);
    if (ec == std::errc() && v >= 1) n = v;
  }
  const int64_t by_size = static_cast<int64_t>(bytes / (4u << 20)) + 1;
  return static_cast<int>(std::min<int64_t>({n, by_size, 16}));
}

// Appends `src` (a part's column) to `dst`, renumbering tokens into dst's vocabulary so
// codes follow first appearance over the whole file, as a sequential read numbers them.
void append_column(AtomicColumn& dst, AtomicColumn&& src) {
  const int64_t value_offset = static_cast<int64_t>(dst.type.rfind("token", 0) == 0 ? dst.codes.size()
                                                                                       : dst.values.size());
  if (dst.type.rfind("token", 0) == 0) {
    std::vector<int64_t> to_global(static_cast<size_t>(src.vocab.size()) + 1, 0);
    for (int64_t j = 1; j <= src.vocab.size(); ++j) to_global[j] = dst.vocab.add(src.vocab.token(j));
    dst.codes.reserve(dst.codes.size() + src.codes.size());
    for (int64_t code : src.codes) dst.codes.push_back(to_global[code]);
  } else {
    dst.values.insert(dst.values.end(), src.values.begin(), src.values.end());
  }
  if (!src.indptr.empty())
    for (size_t r = 1; r < src.indptr.size(); ++r) dst.indptr.push_back(src.indptr[r] + value_offset);
}

}  // namespace

AtomicTable read_atomic(const std::string& path, const std::vector<std::string>& fields) {
  const std::string text = read_file(path);
  AtomicTable table;
  table.path = path;
  for (size_t i = 0; i < fields.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (fields[i] == fields[j])
        throw DataError("read_atomic: fields lists " + excerpt(fields[i]) + " twice");
  if (text.empty()) throw DataError(printable(path) + ": file is empty (no header line)");

  // ---- header: line 1
  size_t header_end = text.find('\n');
  if (header_end == std::string::npos) header_end = text.size();
  std::string_view header = std::string_view(text).substr(0, header_end);
  if (!header.empty() && header.back() == '\r') header.remove_suffix(1);
  std::vector<std::string> header_names, header_types;
  std::vector<int> source_of;  // for each requested column, its index in the header
  std::vector<std::string_view> cells;
  split_tabs(header, cells);
  for (auto cell : cells) {
    const size_t colon = cell.rfind(':');
    if (colon == std::string_view::npos || colon == 0)
      throw DataError(where(path, 1) + "header field " + excerpt(cell) + " is not of the form name:type");
    std::string type(cell.substr(colon + 1));
    if (type != "token" && type != "token_seq" && type != "float" && type != "float_seq")
      throw DataError(where(path, 1) + "header field " + excerpt(cell) + " has unknown type " +
                      excerpt(type) + " (expected token, token_seq, float or float_seq)");
    std::string name(cell.substr(0, colon));
    check_utf8(name, path, 1, "header field");
    // Two columns of one name: whichever were read, the other would be dropped silently.
    for (size_t c = 0; c < header_names.size(); ++c)
      if (header_names[c] == name)
        throw DataError(where(path, 1) + "header field " + excerpt(name) + " appears twice (columns " +
                        std::to_string(c + 1) + " and " + std::to_string(header_names.size() + 1) + ")");
    header_names.push_back(std::move(name));
    header_types.push_back(std::move(type));
  }
  const auto expected_fields = static_cast<int64_t>(header_names.size());
  for (const auto& name : fields.empty() ? header_names : fields) {
    int found = -1;
    for (size_t c = 0; c < header_names.size(); ++c)
      if (header_names[c] == name) found = static_cast<int>(c);
    if (found < 0) {
      std::string have;
      for (const auto& h : header_names) have += (have.empty() ? "" : ", ") + printable(h);
      throw DataError(where(path, 1) + "missing column " + excerpt(name) + " (the header has: " + have + ")");
    }
    source_of.push_back(found);
    AtomicColumn col;
    col.name = name;
    col.type = header_types[found];
    if (col.type == "token_seq" || col.type == "float_seq") col.indptr.push_back(0);
    table.columns.push_back(std::move(col));
  }

  // ---- rows: stretches of whole lines parsed in parallel, merged in file order
  const std::string_view body =
      header_end < text.size() ? std::string_view(text).substr(header_end + 1) : std::string_view();
  const int threads = reader_threads(body.size());
  std::vector<size_t> bounds{0};
  for (int t = 1; t < threads; ++t) {
    size_t cut = body.size() * static_cast<size_t>(t) / static_cast<size_t>(threads);
    cut = std::max(cut, bounds.back());
    const size_t nl = body.find('\n', cut);
    bounds.push_back(nl == std::string_view::npos ? body.size() : nl + 1);
  }
  bounds.push_back(body.size());
  std::vector<RowsPart> parts(static_cast<size_t>(threads));
  std::vector<int64_t> first_line(static_cast<size_t>(threads), 1);  // the header is line 1
  for (int t = 1; t < threads; ++t)
    first_line[t] = first_line[t - 1] + std::count(body.begin() + static_cast<std::ptrdiff_t>(bounds[t - 1]),
                                                   body.begin() + static_cast<std::ptrdiff_t>(bounds[t]), '\n');
  const auto run = [&](int t) {
    parts[t].columns = table.columns;  // empty columns of the right names and types
    parse_rows(body.substr(bounds[t], bounds[t + 1] - bounds[t]), first_line[t], path, source_of,
               expected_fields, parts[t]);
  };
  {
    std::vector<std::thread> workers;
    for (int t = 1; t < threads; ++t) workers.emplace_back(run, t);
    run(0);
    for (auto& w : workers) w.join();
  }
  // The first stretch with an error holds the file's first error: the one a sequential
  // read would report.
  for (auto& part : parts)
    if (part.error) std::rethrow_exception(part.error);
  if (threads == 1) {
    table.columns = std::move(parts[0].columns);
    table.num_rows = parts[0].num_rows;
  } else {
    for (auto& part : parts) {
      for (size_t c = 0; c < table.columns.size(); ++c)
        append_column(table.columns[c], std::move(part.columns[c]));
      table.num_rows += part.num_rows;
      part = RowsPart{};  // free each stretch once merged
    }
  }
  if (table.num_rows == 0) throw DataError(printable(path) + ": file has a header but no rows");
  return table;
}

}  // namespace seqrec::data
