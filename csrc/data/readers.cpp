#include "data/readers.h"

#include <cerrno>
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

// Calls fn(line_number, line) for each line, without the trailing "\r\n" / "\n".
template <typename Fn>
void for_each_line(const std::string& text, Fn&& fn) {
  size_t start = 0;
  int64_t line_no = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    size_t stop = end;
    if (stop > start && text[stop - 1] == '\r') --stop;
    fn(++line_no, std::string_view(text).substr(start, stop - start));
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

AtomicTable read_atomic(const std::string& path, const std::vector<std::string>& fields) {
  const std::string text = read_file(path);
  AtomicTable table;
  table.path = path;
  std::vector<std::string> header_names, header_types;
  std::vector<int> source_of;  // for each requested column, its index in the header
  std::vector<std::string_view> cells;
  int64_t expected_fields = 0;
  for (size_t i = 0; i < fields.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (fields[i] == fields[j])
        throw DataError("read_atomic: fields lists " + excerpt(fields[i]) + " twice");

  // New tokens only are checked for UTF-8: a repeated token was checked when first seen.
  const auto add_token = [&](AtomicColumn& col, std::string_view token, int64_t line_no) {
    const int64_t before = col.vocab.size();
    const int64_t code = col.vocab.add(token);
    if (col.vocab.size() != before) check_utf8(token, path, line_no, "field " + excerpt(col.name) + ":");
    return code;
  };
  for_each_line(text, [&](int64_t line_no, std::string_view line) {
    if (line_no == 1) {
      split_tabs(line, cells);
      for (auto cell : cells) {
        const size_t colon = cell.rfind(':');
        if (colon == std::string_view::npos || colon == 0)
          throw DataError(where(path, 1) + "header field " + excerpt(cell) +
                          " is not of the form name:type");
        std::string type(cell.substr(colon + 1));
        if (type != "token" && type != "token_seq" && type != "float" && type != "float_seq")
          throw DataError(where(path, 1) + "header field " + excerpt(cell) + " has unknown type " +
                          excerpt(type) + " (expected token, token_seq, float or float_seq)");
        std::string name(cell.substr(0, colon));
        check_utf8(name, path, 1, "header field");
        // Two columns of one name: whichever were read, the other would be dropped silently.
        for (size_t c = 0; c < header_names.size(); ++c)
          if (header_names[c] == name)
            throw DataError(where(path, 1) + "header field " + excerpt(name) +
                            " appears twice (columns " + std::to_string(c + 1) + " and " +
                            std::to_string(header_names.size() + 1) + ")");
        header_names.push_back(std::move(name));
        header_types.push_back(std::move(type));
      }
      expected_fields = static_cast<int64_t>(header_names.size());
      std::vector<std::string> wanted = fields.empty() ? header_names : fields;
      for (const auto& name : wanted) {
        int found = -1;
        for (size_t c = 0; c < header_names.size(); ++c)
          if (header_names[c] == name) found = static_cast<int>(c);
        if (found < 0) {
          std::string have;
          for (const auto& h : header_names) have += (have.empty() ? "" : ", ") + printable(h);
          throw DataError(where(path, 1) + "missing column " + excerpt(name) + " (the header has: " +
                          have + ")");
        }
        source_of.push_back(found);
        AtomicColumn col;
        col.name = name;
        col.type = header_types[found];
        if (col.type == "token_seq" || col.type == "float_seq") col.indptr.push_back(0);
        table.columns.push_back(std::move(col));
      }
      return;
    }
    if (line.empty()) return;  // blank lines carry no data
    split_tabs(line, cells);
    if (static_cast<int64_t>(cells.size()) != expected_fields)
      throw DataError(where(path, line_no) + "expected " + std::to_string(expected_fields) +
                      " tab-separated fields, got " + std::to_string(cells.size()));
    for (size_t c = 0; c < table.columns.size(); ++c) {
      AtomicColumn& col = table.columns[c];
      std::string_view cell = cells[source_of[c]];
      if (col.type == "token") {
        if (cell.empty())
          throw DataError(where(path, line_no) + "field " + excerpt(col.name) + ": empty token");
        col.codes.push_back(add_token(col, cell, line_no));
      } else if (col.type == "token_seq") {
        for (auto tok : split_whitespace(cell)) col.codes.push_back(add_token(col, tok, line_no));
        col.indptr.push_back(static_cast<int64_t>(col.codes.size()));
      } else {
        auto parse = [&](std::string_view s) {
          double v = 0;
          auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
          if (ec != std::errc() || ptr != s.data() + s.size() || !std::isfinite(v))
            throw DataError(where(path, line_no) + "field " + excerpt(col.name) + ": " + excerpt(s) +
                            " is not a finite number");
          return v;
        };
        if (col.type == "float") {
          col.values.push_back(parse(cell));
        } else {
          for (auto tok : split_whitespace(cell)) col.values.push_back(parse(tok));
          col.indptr.push_back(static_cast<int64_t>(col.values.size()));
        }
      }
    }
    ++table.num_rows;
  });
  if (header_names.empty()) throw DataError(printable(path) + ": file is empty (no header line)");
  if (table.num_rows == 0) throw DataError(printable(path) + ": file has a header but no rows");
  return table;
}

}  // namespace seqrec::data
