// Port of runtime/dims.py: parse an expression into a polynomial with integer coefficients
// over atoms (symbols and opaque "(a//b)" / "(a%b)" atoms), print it canonically, evaluate it.
// Python ints never overflow; here every operation is checked and overflow is an error.
#include "dims.h"

#include <algorithm>
#include <cctype>
#include <stdexcept>

#include "common.h"

namespace castml {
namespace {

using Mono = std::vector<std::string>;  // sorted atoms, with repetition
using Poly = std::map<Mono, int64_t>;   // monomial -> nonzero coefficient

[[noreturn]] void bad(const std::string& what) { throw std::runtime_error(what); }

int64_t checked_add(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r)) bad("integer overflow in a dim expression");
  return r;
}

int64_t checked_mul(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) bad("integer overflow in a dim expression");
  return r;
}

int64_t floor_div(int64_t a, int64_t b) {
  if (a == INT64_MIN && b == -1) bad("integer overflow in a dim expression");
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

int64_t floor_mod(int64_t a, int64_t b) {
  if (b == -1) return 0;
  int64_t r = a % b;
  if (r != 0 && ((r < 0) != (b < 0))) r += b;
  return r;
}

Poly constant(int64_t c) {
  Poly p;
  if (c) p[Mono{}] = c;
  return p;
}

Poly add(const Poly& p, const Poly& q, int64_t sign) {
  Poly out = p;
  for (const auto& [m, c] : q) {
    int64_t v = checked_add(out.count(m) ? out[m] : 0, checked_mul(sign, c));
    if (v) out[m] = v; else out.erase(m);
  }
  return out;
}

Poly mul(const Poly& p, const Poly& q) {
  Poly out;
  for (const auto& [m1, c1] : p) {
    for (const auto& [m2, c2] : q) {
      Mono m = m1;
      m.insert(m.end(), m2.begin(), m2.end());
      std::sort(m.begin(), m.end());
      int64_t v = checked_add(out.count(m) ? out[m] : 0, checked_mul(c1, c2));
      if (v) out[m] = v; else out.erase(m);
    }
  }
  return out;
}

bool as_int(const Poly& p, int64_t* v) {
  if (p.empty()) { *v = 0; return true; }
  if (p.size() == 1 && p.begin()->first.empty()) { *v = p.begin()->second; return true; }
  return false;
}

bool is_symbol_text(const std::string& s) {
  if (s.empty() || !(std::isalpha(static_cast<unsigned char>(s[0])) || s[0] == '_')) return false;
  for (char ch : s) if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '_')) return false;
  return true;
}

bool is_digits(const std::string& s) {
  if (s.empty()) return false;
  for (char ch : s) if (!std::isdigit(static_cast<unsigned char>(ch))) return false;
  return true;
}

std::string to_str(const Poly& p) {
  if (p.empty()) return "0";
  std::vector<const Mono*> order;
  for (const auto& kv : p) order.push_back(&kv.first);
  // Python: sorted(p, key=lambda m: (-len(m), m))
  std::sort(order.begin(), order.end(), [](const Mono* a, const Mono* b) {
    if (a->size() != b->size()) return a->size() > b->size();
    return *a < *b;
  });
  std::string out;
  bool first = true;
  for (const Mono* m : order) {
    int64_t c = p.at(*m);
    if (c == INT64_MIN) bad("integer overflow in a dim expression");
    int64_t ac = c < 0 ? -c : c;
    std::string body;
    if (!m->empty()) {
      for (size_t i = 0; i < m->size(); ++i) body += (i ? "*" : "") + (*m)[i];
      if (ac != 1) body += "*" + std::to_string(ac);
    } else {
      body = std::to_string(ac);
    }
    out += (first ? (c < 0 ? "-" : "") : (c < 0 ? "-" : "+")) + body;
    first = false;
  }
  return out;
}

Poly divmod_poly(const Poly& p, const Poly& q, const std::string& op) {
  int64_t a = 0, b = 0;
  bool a_int = as_int(p, &a), b_int = as_int(q, &b);
  if (b_int && b == 0) bad("division by zero in a dim expression");
  if (a_int && b_int) return constant(op == "//" ? floor_div(a, b) : floor_mod(a, b));
  if (q.size() == 1) {
    const auto& [mq, cq] = *q.begin();
    Poly quotient;
    bool all = true;
    for (const auto& [m, c] : p) {
      Mono rest = m;
      bool found = true;
      for (const auto& atom : mq) {
        auto it = std::find(rest.begin(), rest.end(), atom);
        if (it == rest.end()) { found = false; break; }
        rest.erase(it);
      }
      if (found && floor_mod(c, cq) == 0) {
        quotient[rest] = floor_div(c, cq);
        continue;
      }
      all = false;
      break;
    }
    if (all) return op == "//" ? quotient : Poly{};
  }
  std::string num = to_str(p), den = to_str(q);
  if (p.size() > 1 || num[0] == '-') num = "(" + num + ")";
  if (!(is_symbol_text(den) || is_digits(den))) den = "(" + den + ")";
  Poly out;
  out[Mono{"(" + num + op + den + ")"}] = 1;
  return out;
}

struct Token {
  enum Kind { kInt, kName, kOp } kind;
  std::string text;
};

class Parser {
 public:
  explicit Parser(const std::string& text) : text_(text) { tokenize(); }

  Poly parse() {
    Poly p = expr();
    if (i_ != toks_.size()) bad("bad dim expression '" + text_ + "': trailing '" + toks_[i_].text + "'");
    return p;
  }

 private:
  void tokenize() {
    size_t pos = 0, n = text_.size();
    while (pos < n) {
      char ch = text_[pos];
      if (std::isspace(static_cast<unsigned char>(ch))) { ++pos; continue; }
      if (std::isdigit(static_cast<unsigned char>(ch))) {
        size_t start = pos;
        while (pos < n && std::isdigit(static_cast<unsigned char>(text_[pos]))) ++pos;
        toks_.push_back({Token::kInt, text_.substr(start, pos - start)});
      } else if (std::isalpha(static_cast<unsigned char>(ch)) || ch == '_') {
        size_t start = pos;
        while (pos < n && (std::isalnum(static_cast<unsigned char>(text_[pos])) || text_[pos] == '_')) ++pos;
        toks_.push_back({Token::kName, text_.substr(start, pos - start)});
      } else if (ch == '/' && pos + 1 < n && text_[pos + 1] == '/') {
        toks_.push_back({Token::kOp, "//"});
        pos += 2;
      } else if (std::strchr("-+*%()", ch) && ch != '\0') {
        toks_.push_back({Token::kOp, std::string(1, ch)});
        ++pos;
      } else {
        bad("bad dim expression '" + text_ + "' at column " + std::to_string(pos));
      }
    }
  }

  const Token* peek() const { return i_ < toks_.size() ? &toks_[i_] : nullptr; }

  Poly expr() {
    if (++depth_ > 200) bad("bad dim expression: nested too deeply");
    Poly p = term();
    while (const Token* t = peek()) {
      if (t->kind != Token::kOp || (t->text != "+" && t->text != "-")) break;
      int64_t sign = t->text == "+" ? 1 : -1;
      ++i_;
      p = add(p, term(), sign);
    }
    --depth_;
    return p;
  }

  Poly term() {
    Poly p = factor();
    while (const Token* t = peek()) {
      if (t->kind != Token::kOp || (t->text != "*" && t->text != "//" && t->text != "%")) break;
      std::string op = t->text;
      ++i_;
      Poly q = factor();
      p = op == "*" ? mul(p, q) : divmod_poly(p, q, op);
    }
    return p;
  }

  Poly factor() {
    const Token* t = peek();
    if (!t) bad("bad dim expression '" + text_ + "': unexpected end");
    ++i_;
    if (t->kind == Token::kInt) {
      int64_t v = 0;
      for (char ch : t->text) v = checked_add(checked_mul(v, 10), ch - '0');
      return constant(v);
    }
    if (t->kind == Token::kName) {
      Poly p;
      p[Mono{t->text}] = 1;
      return p;
    }
    if (t->text == "-") {
      if (++depth_ > 200) bad("bad dim expression: nested too deeply");
      Poly p = mul(constant(-1), factor());
      --depth_;
      return p;
    }
    if (t->text == "(") {
      Poly p = expr();
      const Token* close = peek();
      if (!close || close->kind != Token::kOp || close->text != ")")
        bad("bad dim expression '" + text_ + "': missing ')'");
      ++i_;
      return p;
    }
    bad("bad dim expression '" + text_ + "': unexpected '" + t->text + "'");
  }

  std::string text_;
  std::vector<Token> toks_;
  size_t i_ = 0;
  int depth_ = 0;
};

std::string from_poly(const Poly& p) {
  int64_t v;
  if (as_int(p, &v)) return std::to_string(v);
  return to_str(p);
}

}  // namespace

// The compiled form: sum of coef * product(atoms); an atom is a symbol or (num // den) / (num % den).
struct DimAtom {
  std::string symbol;  // empty for a division atom
  bool floor_div = true;
  std::shared_ptr<const DimExpr> num, den;
};

struct DimExpr {
  std::vector<std::pair<int64_t, std::vector<DimAtom>>> terms;

  void symbols(std::set<std::string>* out) const {
    for (const auto& term : terms)
      for (const auto& a : term.second) {
        if (!a.symbol.empty()) {
          out->insert(a.symbol);
        } else {
          a.num->symbols(out);
          a.den->symbols(out);
        }
      }
  }

  int64_t eval(const Env& env) const {
    int64_t total = 0;
    for (const auto& [coef, atoms] : terms) {
      int64_t v = coef;
      for (const auto& a : atoms) {
        int64_t x;
        if (!a.symbol.empty()) {
          auto it = env.find(a.symbol);
          if (it == env.end()) fail(kInputError, "symbol '" + a.symbol + "' is not bound");
          x = it->second;
        } else {
          int64_t n = a.num->eval(env), d = a.den->eval(env);
          if (d == 0) fail(kInputError, "division by zero evaluating a dim expression");
          x = a.floor_div ? floor_div(n, d) : floor_mod(n, d);
        }
        if (__builtin_mul_overflow(v, x, &v)) fail(kInputError, "integer overflow evaluating a dim expression");
      }
      if (__builtin_add_overflow(total, v, &total)) fail(kInputError, "integer overflow evaluating a dim expression");
    }
    return total;
  }
};

namespace {

std::shared_ptr<const DimExpr> compile_poly(const Poly& p);

std::shared_ptr<const DimExpr> compile_text(const std::string& text) { return compile_poly(Parser(text).parse()); }

DimAtom compile_atom(const std::string& atom) {
  DimAtom a;
  if (atom[0] != '(') {
    a.symbol = atom;
    return a;
  }
  std::string inner = atom.substr(1, atom.size() - 2);
  int depth = 0;
  for (size_t i = 0; i < inner.size(); ++i) {
    char ch = inner[i];
    depth += ch == '(';
    depth -= ch == ')';
    if (depth == 0 && (ch == '/' || ch == '%')) {
      size_t op_len = inner.compare(i, 2, "//") == 0 ? 2 : 1;
      a.floor_div = op_len == 2;
      a.num = compile_text(inner.substr(0, i));
      a.den = compile_text(inner.substr(i + op_len));
      return a;
    }
  }
  bad("malformed dim atom '" + atom + "'");
}

std::shared_ptr<const DimExpr> compile_poly(const Poly& p) {
  auto e = std::make_shared<DimExpr>();
  for (const auto& [m, c] : p) {
    std::vector<DimAtom> atoms;
    for (const auto& atom : m) atoms.push_back(compile_atom(atom));
    e->terms.emplace_back(c, std::move(atoms));
  }
  return e;
}

}  // namespace

std::string canonical_dim(const std::string& text) { return from_poly(Parser(text).parse()); }

Dim compile_dim(const std::string& text) {
  Dim d;
  d.text = text;
  Poly p = Parser(text).parse();
  int64_t v;
  if (as_int(p, &v)) {  // not canonical as an expression; the loader refuses it before this
    d.size = v;
    d.text.clear();
    return d;
  }
  d.expr = compile_poly(p);
  return d;
}

bool Dim::is_symbol() const { return expr && is_symbol_text(text); }

void Dim::symbols(std::set<std::string>* out) const {
  if (expr) expr->symbols(out);
}

int64_t Dim::eval(const Env& env) const { return expr ? expr->eval(env) : size; }

}  // namespace castml
