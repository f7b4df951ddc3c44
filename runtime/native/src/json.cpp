// A minimal JSON parser (arrays, strings, and the scalars it must skip) and the pytree rules of
// runtime/pytree.py `_from_obj`: "*", "none", ["tuple", [...]], ["list", [...]],
// ["dict", [keys...], [children...]], nested at most 64 tree levels.
#include "json.h"

#include <cctype>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <vector>

namespace castml {
namespace {

struct Node {
  enum Kind { kArray, kString, kOther } kind = kOther;
  std::string text;
  std::vector<Node> items;
};

class JsonParser {
 public:
  explicit JsonParser(const std::string& s) : s_(s) {}

  Node parse() {
    Node n = value(0);
    skip_ws();
    if (pos_ != s_.size()) bad("extra data");
    return n;
  }

 private:
  [[noreturn]] void bad(const std::string& what) {
    throw std::runtime_error(what + " at character " + std::to_string(pos_));
  }

  void skip_ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
  }

  Node value(int depth) {
    if (depth > 200) bad("nested too deeply");
    skip_ws();
    if (pos_ >= s_.size()) bad("unexpected end");
    char ch = s_[pos_];
    if (ch == '[') return array(depth);
    if (ch == '"') return string();
    if (ch == '{') bad("objects are not part of a tree structure");
    // numbers, true, false, null: consume a literal token (tree validation refuses them anyway)
    size_t start = pos_;
    while (pos_ < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '-' ||
                                s_[pos_] == '+' || s_[pos_] == '.'))
      ++pos_;
    if (pos_ == start) bad("unexpected character");
    Node n;
    n.text = s_.substr(start, pos_ - start);
    if (n.text != "true" && n.text != "false" && n.text != "null" &&
        !(std::isdigit(static_cast<unsigned char>(n.text[0])) || n.text[0] == '-'))
      bad("invalid literal");
    return n;
  }

  Node array(int depth) {
    Node n;
    n.kind = Node::kArray;
    ++pos_;
    skip_ws();
    if (pos_ < s_.size() && s_[pos_] == ']') { ++pos_; return n; }
    for (;;) {
      n.items.push_back(value(depth + 1));
      skip_ws();
      if (pos_ >= s_.size()) bad("unexpected end in an array");
      if (s_[pos_] == ',') { ++pos_; continue; }
      if (s_[pos_] == ']') { ++pos_; return n; }
      bad("expected ',' or ']'");
    }
  }

  Node string() {
    Node n;
    n.kind = Node::kString;
    ++pos_;
    while (pos_ < s_.size()) {
      char ch = s_[pos_++];
      if (ch == '"') return n;
      if (static_cast<unsigned char>(ch) < 0x20) bad("control character in a string");
      if (ch != '\\') { n.text += ch; continue; }
      if (pos_ >= s_.size()) break;
      char e = s_[pos_++];
      switch (e) {
        case '"': case '\\': case '/': n.text += e; break;
        case 'b': n.text += '\b'; break;
        case 'f': n.text += '\f'; break;
        case 'n': n.text += '\n'; break;
        case 'r': n.text += '\r'; break;
        case 't': n.text += '\t'; break;
        case 'u': {
          if (pos_ + 4 > s_.size()) bad("truncated \\u escape");
          unsigned code = std::stoul(s_.substr(pos_, 4), nullptr, 16);
          pos_ += 4;
          // keys are only compared for shape, so an approximate UTF-8 encoding is enough
          if (code < 0x80) {
            n.text += static_cast<char>(code);
          } else if (code < 0x800) {
            n.text += static_cast<char>(0xC0 | (code >> 6));
            n.text += static_cast<char>(0x80 | (code & 0x3F));
          } else {
            n.text += static_cast<char>(0xE0 | (code >> 12));
            n.text += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
            n.text += static_cast<char>(0x80 | (code & 0x3F));
          }
          break;
        }
        default: bad("invalid escape");
      }
    }
    bad("unterminated string");
  }

  const std::string& s_;
  size_t pos_ = 0;
};

int leaves(const Node& n, int depth) {
  if (depth > 64) throw std::runtime_error("tree structure nested deeper than 64");
  if (n.kind != Node::kArray || n.items.empty() || n.items[0].kind != Node::kString)
    throw std::runtime_error("malformed tree node");
  const std::string& kind = n.items[0].text;
  if ((kind == "*" || kind == "none") && n.items.size() == 1) return kind == "*" ? 1 : 0;
  if ((kind == "tuple" || kind == "list") && n.items.size() == 2 && n.items[1].kind == Node::kArray) {
    int total = 0;
    for (const auto& c : n.items[1].items) total += leaves(c, depth + 1);
    return total;
  }
  if (kind == "dict" && n.items.size() == 3 && n.items[1].kind == Node::kArray && n.items[2].kind == Node::kArray &&
      n.items[1].items.size() == n.items[2].items.size()) {
    int total = 0;
    for (const auto& k : n.items[1].items)
      if (k.kind != Node::kString) throw std::runtime_error("malformed tree node (dict key is not a string)");
    for (const auto& c : n.items[2].items) total += leaves(c, depth + 1);
    return total;
  }
  throw std::runtime_error("malformed tree node");
}

}  // namespace

int pytree_num_leaves(const std::string& json, int* tuple_arity) {
  Node root = JsonParser(json).parse();
  int n = leaves(root, 0);
  *tuple_arity = (root.items[0].text == "tuple") ? static_cast<int>(root.items[1].items.size()) : -1;
  return n;
}

std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) {
    unsigned char u = static_cast<unsigned char>(ch);
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (u < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", u);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

}  // namespace castml
