// Symbolic dims, matching runtime/dims.py: a dim is a size or a canonical expression string
// ("batch", "batch*4", "(seq//2)+1"). The loader re-canonicalizes every expression (the same
// polynomial normal form as the Python code) and refuses non-canonical text; a compiled form
// is evaluated once per run with the symbols bound from the inputs.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace castml {

using Env = std::map<std::string, int64_t>;

struct DimExpr;

// One dim of a declared shape or a DIMS attribute.
struct Dim {
  int64_t size = 0;                    // when expr is null
  std::shared_ptr<const DimExpr> expr;  // a compiled expression, or null for a static size
  std::string text;                    // the expression text ("" for a static size)

  bool is_static() const { return !expr; }
  bool is_symbol() const;  // a bare symbol such as "batch"
  int64_t eval(const Env& env) const;  // throws castml::Error (kInputError) on unbound symbols
  void symbols(std::set<std::string>* out) const;  // the symbols the expression mentions
};

// Canonical text of an expression (throws std::runtime_error with the reason when malformed).
std::string canonical_dim(const std::string& text);

// Parses and compiles `text`; the caller has checked that it is canonical.
Dim compile_dim(const std::string& text);

}  // namespace castml
