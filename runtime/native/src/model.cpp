// Port of runtime/loader.py's validation: flatbuffers::Verifier first (every table, vector and
// string inside the buffer and aligned, bounded depth and table count), then every field before
// use, with the same checks and messages as the Python loader (the malformed-file corpus of
// tests/test_castml_format.py must fail the same way here).
#include "model.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <tuple>

#include "castml_generated.h"
#include "json.h"

namespace fb = runtime::format::castml_fb;

namespace castml {

constexpr uint64_t kAlignment = 64;
constexpr size_t kMaxDimExpr = 256;

// ---- limits ----------------------------------------------------------------------------------

namespace {

std::mutex g_limits_mutex;
Limits g_limits;
bool g_limits_ready = false;
std::string g_limits_error;  // a malformed CASTML_MAX_* variable, reported on every use
std::atomic<uint64_t> g_limits_generation{0};

// One field per CASTML_MAX_* variable, parsed as runtime/limits.py does: int(raw.replace("_", "")).
void read_environment(Limits* l) {
  const std::pair<const char*, uint64_t*> fields[] = {
      {"max_rank", &l->max_rank}, {"max_ops", &l->max_ops}, {"max_region_depth", &l->max_region_depth},
      {"max_file_bytes", &l->max_file_bytes}, {"max_tensor_bytes", &l->max_tensor_bytes},
      {"max_intermediate_bytes", &l->max_intermediate_bytes}, {"max_loop_iterations", &l->max_loop_iterations}};
  for (const auto& [name, field] : fields) {
    std::string var = "CASTML_" + std::string(name);
    for (char& c : var) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    const char* raw = std::getenv(var.c_str());
    if (!raw) continue;
    std::string text;
    for (const char* p = raw; *p; ++p)
      if (*p != '_') text += *p;
    size_t b = text.find_first_not_of(" \t\n\r\f\v"), e = text.find_last_not_of(" \t\n\r\f\v");
    text = b == std::string::npos ? "" : text.substr(b, e - b + 1);
    bool negative = !text.empty() && text[0] == '-';
    std::string digits = text.substr(!text.empty() && (text[0] == '+' || text[0] == '-') ? 1 : 0);
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos ||
        (negative && digits.find_first_not_of('0') != std::string::npos)) {
      g_limits_error = "environment variable " + var + ": expected a non-negative integer, got '" + raw + "'";
      return;
    }
    uint64_t v = 0;
    for (char c : digits) v = __builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, c - '0', &v) ? UINT64_MAX : v;
    *field = v;
  }
}

}  // namespace

Limits current_limits() {
  std::lock_guard<std::mutex> lock(g_limits_mutex);
  if (!g_limits_ready) {
    read_environment(&g_limits);
    g_limits_ready = true;
  }
  if (!g_limits_error.empty()) fail(kInputError, g_limits_error);
  return g_limits;
}

void set_limits(const Limits& limits) {
  std::lock_guard<std::mutex> lock(g_limits_mutex);
  g_limits = limits;
  g_limits_ready = true;
  g_limits_error.clear();
  ++g_limits_generation;
}

uint64_t limits_generation() { return g_limits_generation.load(); }

std::string how_to_raise(const std::string& name) {
  std::string upper = name;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return "raise it with runtime.limits.set_limits(" + name + "=...) or CASTML_" + upper;
}

void fail_too_big(const std::string& label, const std::string& what, unsigned __int128 bytes) {
  const std::string shown = bytes >> 64 ? "over 2**64" : std::to_string(static_cast<uint64_t>(bytes));
  fail(kInputError, label + ": " + what + " " + shown + " bytes, more than max_tensor_bytes = " +
                        std::to_string(current_limits().max_tensor_bytes) + " (" + how_to_raise("max_tensor_bytes") +
                        ")");
}

// ---- the file ------------------------------------------------------------------------------

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(kIOError, path + ": cannot open (" + std::strerror(errno) + ")");
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(kIOError, path + ": not a regular file");
  }
  if (st.st_size == 0) {
    ::close(fd);
    fail(kFormatError, path + ": the file is empty");
  }
  void* p = mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) fail(kIOError, path + ": cannot map (" + std::strerror(errno) + ")");
  auto f = std::shared_ptr<MappedFile>(new MappedFile());
  f->data_ = static_cast<const uint8_t*>(p);
  f->size_ = static_cast<size_t>(st.st_size);
  f->mapped_ = true;
  return f;
}

std::shared_ptr<MappedFile> MappedFile::copy_of(const void* data, size_t size) {
  auto f = std::shared_ptr<MappedFile>(new MappedFile());
  // 64-byte aligned storage so tensor data (64-aligned in the file) is aligned in memory too
  f->owned_.resize(size + kAlignment);
  uint8_t* base = f->owned_.data();
  uint8_t* aligned = base + (kAlignment - reinterpret_cast<uintptr_t>(base) % kAlignment) % kAlignment;
  if (size) std::memcpy(aligned, data, size);
  f->data_ = aligned;
  f->size_ = size;
  return f;
}

MappedFile::~MappedFile() {
  if (mapped_) munmap(const_cast<uint8_t*>(data_), size_);
}

// ---- decoding --------------------------------------------------------------------------------

namespace {

// The elements of a scalar vector, copied bytewise: the Verifier checks a vector's alignment
// for its length prefix (4 bytes), not for 8-byte elements, so reading them in place could be
// a misaligned load.
template <class T>
std::vector<T> read_vector(const flatbuffers::Vector<T>* v) {
  std::vector<T> out(v ? v->size() : 0);
  if (!out.empty()) std::memcpy(out.data(), v->Data(), out.size() * sizeof(T));
  return out;
}

bool valid_utf8(const char* s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (!len || i + len > n) return false;
    for (size_t k = 1; k < len; ++k)
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 0x2) return false;
    i += len;
  }
  return true;
}

std::string shape_text(const Shape& s) { return shape_str(s); }

class Decoder {
 public:
  Decoder(const MappedFile& f, const Limits& limits) : f_(f), limits_(limits) {}

  [[noreturn]] void fail_at(const std::string& what) { fail(kFormatError, where_ + ": " + what); }

  std::string text(const flatbuffers::String* s, bool required = false) {
    if (!s) {
      if (required) fail_at("missing");
      return "";
    }
    if (!valid_utf8(s->c_str(), s->size())) fail_at("not valid UTF-8");
    return std::string(s->c_str(), s->size());
  }

  DType dtype(int code) {
    if (!dtype_valid(code))
      fail_at("unknown dtype code " + std::to_string(code) + "; known: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]");
    return static_cast<DType>(code);
  }

  // `is_signed`: DIMS attributes hold slice bounds, where -1 is a valid stop.
  Dim dim(const fb::Dim* d, bool is_signed = false) {
    if (!d) fail_at("missing dim");
    if (!d->expr()) {
      if (d->size() < 0 && !is_signed) fail_at("dim " + std::to_string(d->size()) + " is negative");
      Dim out;
      out.size = d->size();
      return out;
    }
    std::string t = text(d->expr());
    if (t.empty() || t.size() > kMaxDimExpr)
      fail_at("dim expression must have 1..256 characters, got " + std::to_string(t.size()));
    std::string canon;
    try {
      canon = canonical_dim(t);
    } catch (const std::exception& e) {
      fail_at("bad dim expression '" + t.substr(0, 80) + "': " + e.what());
    }
    Dim out = compile_dim(t);
    if (canon != t || out.is_static())  // a constant must be stored as a size, not as text
      fail_at("dim expression '" + t + "' is not canonical (expected '" + canon + "')");
    return out;
  }

  std::vector<Dim> shape(const flatbuffers::Vector<flatbuffers::Offset<fb::Dim>>* dims) {
    std::vector<Dim> out;
    if (!dims) return out;
    if (dims->size() > limits_.max_rank) fail_at(rank_error(dims->size()));
    std::string base = where_;
    for (uint32_t j = 0; j < dims->size(); ++j) {
      where_ = base + "[" + std::to_string(j) + "]";
      out.push_back(dim(dims->Get(j)));
    }
    where_ = base;
    return out;
  }

  ModelDef model(std::shared_ptr<MappedFile> file) {
    const uint8_t* buf = f_.data();
    size_t size = f_.size();
    if (size > limits_.max_file_bytes)
      fail(kFormatError, "the model is " + std::to_string(size) + " bytes, more than max_file_bytes = " +
                             std::to_string(limits_.max_file_bytes) + " (" + how_to_raise("max_file_bytes") + ")");
    if (size == 0) fail(kFormatError, "the file is empty");
    if (size < 8 || std::memcmp(buf + 4, "CSML", 4) != 0) {
      std::string got(reinterpret_cast<const char*>(buf) + (size >= 8 ? 4 : 0), size >= 8 ? 4 : size);
      std::string shown;
      for (unsigned char c : got) {
        if (c >= 0x20 && c < 0x7F && c != '\\' && c != '\'') {
          shown += static_cast<char>(c);
        } else {
          char tmp[8];
          std::snprintf(tmp, sizeof tmp, "\\x%02x", c);
          shown += tmp;
        }
      }
      fail(kFormatError, "file identifier (offset 4): expected b'CSML', got b'" + shown + "' - not a .castml file");
    }
    // the FlatBuffer sits at the start; files beyond 2 GiB hold tensor data after it
    size_t fb_len = std::min<size_t>(size, FLATBUFFERS_MAX_BUFFER_SIZE - 1);
    flatbuffers::Verifier::Options opts;
    opts.max_depth = 64;
    opts.max_tables = static_cast<flatbuffers::uoffset_t>(std::min<size_t>(fb_len / 4 + 64, 10000000));
    flatbuffers::Verifier verifier(buf, fb_len, opts);
    if (!fb::VerifyModelBuffer(verifier))
      fail(kFormatError, "FlatBuffer structure: a table, vector or string lies outside the file, is misaligned, "
                         "or the structure is too deep (file of " + std::to_string(size) + " bytes)");
    const fb::Model* m = fb::GetModel(buf);
    ModelDef md;
    md.file = std::move(file);
    md.format_version = m->format_version();
    if (md.format_version != 1)
      fail(kFormatError, "Model.format_version: this loader reads versions [1], the file has " +
                             std::to_string(md.format_version));
    uint64_t data_offset = m->data_offset(), data_length = m->data_length();
    if (data_offset % kAlignment || data_offset < 8 || data_offset > size)
      fail(kFormatError, "Model.data_offset: " + std::to_string(data_offset) + " must be a multiple of 64 within the file (" +
                             std::to_string(size) + " bytes)");
    if (data_length > size - data_offset || data_offset + data_length != size)
      fail(kFormatError, "Model.data_length: data region " + std::to_string(data_offset) + "+" +
                             std::to_string(data_length) + " does not end at the end of the file (" +
                             std::to_string(size) + " bytes; truncated or padded?)");
    where_ = "Model.data_hash";
    text(m->data_hash());
    where_ = "Model.producer";
    md.producer = text(m->producer());
    if (m->tensors()) {
      for (uint32_t t = 0; t < m->tensors()->size(); ++t) {
        where_ = "Model.tensors[" + std::to_string(t) + "]";
        md.tensors.push_back(tensor(m->tensors()->Get(t), buf + data_offset, data_length));
      }
    }
    // the writer stores each distinct constant once, in its own buffer: overlaps are corruption
    std::vector<std::tuple<uint64_t, uint64_t, uint32_t>> spans;
    for (uint32_t t = 0; m->tensors() && t < m->tensors()->size(); ++t)
      if (m->tensors()->Get(t)->length()) spans.emplace_back(m->tensors()->Get(t)->offset(), m->tensors()->Get(t)->length(), t);
    std::sort(spans.begin(), spans.end());
    for (size_t k = 1; k < spans.size(); ++k) {
      auto [o1, n1, t1] = spans[k - 1];
      auto [o2, n2, t2] = spans[k];
      (void)n2;
      if (o2 < o1 + n1)
        fail(kFormatError, "Model.tensors[" + std::to_string(t2) + "]: buffer at " + std::to_string(o2) +
                               " overlaps Model.tensors[" + std::to_string(t1) + "] (" + std::to_string(o1) + "+" +
                               std::to_string(n1) + ")");
    }
    tensors_ = &md.tensors;
    const auto* entries = m->entries();
    for (uint32_t e = 0; entries && e < entries->size(); ++e) {
      std::string ew = "Model.entries[" + std::to_string(e) + "]";
      where_ = ew + ".name";
      const fb::Entry* ent = entries->Get(e);
      std::string name = text(ent->name(), true);
      bool repeated = false;
      for (const auto& kv : md.entries) repeated |= kv.first == name;
      if (name.empty() || repeated) fail_at("entry name '" + name + "' is empty or repeated");
      if (!ent->graph()) fail(kFormatError, ew + ".graph: missing");
      md.entries.emplace_back(name, graph(ent->graph(), ew + ".graph"));
    }
    if (md.entries.empty()) fail(kFormatError, "Model.entries: the model has no entry points");
    return md;
  }

  ConstTensor tensor(const fb::Tensor* t, const uint8_t* data, uint64_t data_length) {
    ConstTensor out;
    out.dtype = dtype(t->dtype());
    size_t n = t->shape() ? t->shape()->size() : 0;
    if (n > limits_.max_rank) fail_at(rank_error(n));
    out.shape = read_vector(t->shape());
    int64_t count = 1;
    bool overflow = false;
    for (int64_t d : out.shape) {
      if (d < 0) fail_at("shape " + shape_text(out.shape) + " has a negative dim");
      if (__builtin_mul_overflow(count, d, &count)) overflow = true;
    }
    if (overflow) fail_at("shape " + shape_text(out.shape) + " has more than 2**63-1 elements");
    uint64_t offset = t->offset(), length = t->length();
    unsigned __int128 want = static_cast<unsigned __int128>(count) * dtype_size(out.dtype);
    if (want != length)
      fail_at("length " + std::to_string(length) + " != " + std::to_string(count) + " elements x " +
              std::to_string(dtype_size(out.dtype)) + " bytes for shape " + shape_text(out.shape));
    if (offset % kAlignment) fail_at("offset " + std::to_string(offset) + " is not a multiple of 64");
    if (offset > data_length || length > data_length - offset)
      fail_at("buffer " + std::to_string(offset) + "+" + std::to_string(length) + " runs past the data region (" +
              std::to_string(data_length) + " bytes)");
    out.data = data + offset;
    return out;
  }

  GraphDef graph(const fb::Graph* g, const std::string& where) {
    GraphDef gd;
    const auto* values = g->values();
    for (uint32_t i = 0; values && i < values->size(); ++i) {
      where_ = where + ".values[" + std::to_string(i) + "]";
      const fb::Value* v = values->Get(i);
      ValueDef vd;
      vd.name = text(v->name());
      vd.dtype = dtype(v->dtype());
      where_ = where + ".values[" + std::to_string(i) + "].shape";
      vd.shape = shape(v->shape());
      gd.values.push_back(std::move(vd));
    }
    const auto* regions = g->regions();
    if (!regions || regions->size() == 0)
      fail(kFormatError, where + ".regions: missing (region 0 is the graph body)");
    for (uint32_t k = 0; k < regions->size(); ++k)
      gd.regions.push_back(region(regions->Get(k), where + ".regions[" + std::to_string(k) + "]", gd.values.size()));
    check_scopes(gd, where);
    int arity = -1;
    where_ = where + ".in_tree";
    tree(g->in_tree(), gd.regions[0].inputs.size(), "inputs", &gd.in_tree, &arity);
    int unused;
    where_ = where + ".out_tree";
    tree(g->out_tree(), gd.regions[0].outputs.size(), "outputs", &gd.out_tree, &unused);
    gd.arg_names = names(g->arg_names(), where + ".arg_names");
    gd.input_names = names(g->input_names(), where + ".input_names");
    gd.output_names = names(g->output_names(), where + ".output_names");
    if (arity != static_cast<int>(gd.arg_names.size()))
      fail(kFormatError, where + ".arg_names: " + std::to_string(gd.arg_names.size()) +
                             " names for an argument tuple of " + std::to_string(arity) + " (in_tree " + gd.in_tree + ")");
    if (gd.input_names.size() != gd.regions[0].inputs.size())
      fail(kFormatError, where + ".input_names: " + std::to_string(gd.input_names.size()) + " names for " +
                             std::to_string(gd.regions[0].inputs.size()) + " values");
    if (gd.output_names.size() != gd.regions[0].outputs.size())
      fail(kFormatError, where + ".output_names: " + std::to_string(gd.output_names.size()) + " names for " +
                             std::to_string(gd.regions[0].outputs.size()) + " values");
    const auto* meta = g->metadata();
    for (uint32_t k = 0; meta && k < meta->size(); ++k) {
      where_ = where + ".metadata[" + std::to_string(k) + "]";
      gd.metadata.emplace_back(text(meta->Get(k)->key(), true), text(meta->Get(k)->value()));
    }
    return gd;
  }

  std::vector<std::string> names(const flatbuffers::Vector<flatbuffers::Offset<flatbuffers::String>>* v,
                                 const std::string& where) {
    std::vector<std::string> out;
    for (uint32_t j = 0; v && j < v->size(); ++j) {
      where_ = where + "[" + std::to_string(j) + "]";
      out.push_back(text(v->Get(j), true));
    }
    return out;
  }

  void tree(const flatbuffers::String* raw, size_t leaves, const char* what, std::string* out, int* arity) {
    *out = text(raw, true);
    int n;
    try {
      n = pytree_num_leaves(*out, arity);
    } catch (const std::exception& e) {
      fail_at(std::string("malformed pytree structure: ") + e.what());
    }
    if (static_cast<size_t>(n) != leaves)
      fail_at("structure has " + std::to_string(n) + " leaves but the graph has " + std::to_string(leaves) + " " + what);
  }

  std::vector<uint32_t> indices(const flatbuffers::Vector<uint32_t>* v, size_t limit, const char* what) {
    std::vector<uint32_t> out;
    for (uint32_t j = 0; v && j < v->size(); ++j) {
      uint32_t x = v->Get(j);
      if (x >= limit)
        fail_at(std::string(what) + " index " + std::to_string(x) + " is out of range (" + std::to_string(limit) +
                " values)");
      out.push_back(x);
    }
    return out;
  }

  RegionDef region(const fb::Region* r, const std::string& where, size_t num_values) {
    RegionDef rd;
    where_ = where + ".inputs";
    rd.inputs = indices(r->inputs(), num_values, "value");
    const auto* ops = r->ops();
    size_t n_ops = ops ? ops->size() : 0;
    op_count_ += n_ops;
    if (op_count_ > limits_.max_ops)
      fail(kFormatError, where + ".ops: more than " + std::to_string(limits_.max_ops) + " ops in the model (" +
                             how_to_raise("max_ops") + ")");
    for (uint32_t j = 0; j < n_ops; ++j) rd.ops.push_back(op(ops->Get(j), where + ".ops[" + std::to_string(j) + "]", num_values));
    where_ = where + ".outputs";
    rd.outputs = indices(r->outputs(), num_values, "value");
    return rd;
  }

  OpDef op(const fb::Op* o, const std::string& where, size_t num_values) {
    OpDef od;
    where_ = where + ".kind";
    od.kind = text(o->kind(), true);
    where_ = where + ".inputs";
    od.inputs = indices(o->inputs(), num_values, "value");
    where_ = where + ".outputs";
    od.outputs = indices(o->outputs(), num_values, "value");
    where_ = where + ".regions";
    od.regions = indices(o->regions(), UINT32_MAX, "region");
    const auto* attrs = o->attrs();
    for (uint32_t a = 0; attrs && a < attrs->size(); ++a) {
      where_ = where + ".attrs[" + std::to_string(a) + "]";
      std::string name;
      Attr value = attr(attrs->Get(a), &name);
      if (od.attrs.count(name)) fail_at("attribute '" + name + "' is repeated");
      od.attrs.emplace(name, std::move(value));
    }
    where_ = where + ".loc";
    od.loc = text(o->loc());
    return od;
  }

  Attr attr(const fb::Attr* a, std::string* name) {
    *name = text(a->name(), true);
    if (name->empty()) fail_at("attribute name is empty");
    where_ += " (" + *name + ")";
    Attr out;
    int kind = a->kind();
    if (kind < 1 || kind > 9) fail_at("unknown attribute kind code " + std::to_string(kind));
    out.kind = static_cast<AttrKind>(kind);
    switch (out.kind) {
      case kAttrInt: out.i = a->i(); break;
      case kAttrFloat: out.f = a->f(); break;
      case kAttrBool:
        if (a->i() != 0 && a->i() != 1) fail_at("bool attribute holds " + std::to_string(a->i()));
        out.i = a->i();
        break;
      case kAttrStr: out.s = text(a->s()); break;
      case kAttrDType: out.dtype = dtype(a->dtype()); break;
      case kAttrInts:
        out.ints = read_vector(a->ints());
        break;
      case kAttrFloats:
        out.floats = read_vector(a->floats());
        break;
      case kAttrDims:
        for (uint32_t j = 0; a->dims() && j < a->dims()->size(); ++j) out.dims.push_back(dim(a->dims()->Get(j), true));
        break;
      case kAttrTensor:
        if (a->tensor() >= tensors_->size())
          fail_at("tensor index " + std::to_string(a->tensor()) + " is out of range (" +
                  std::to_string(tensors_->size()) + " tensors)");
        out.tensor = static_cast<int>(a->tensor());
        break;
    }
    return out;
  }

  // SSA and scoping, as loader._Scopes: defined once, used where visible and after definition;
  // every region but the body owned by exactly one op of an earlier region, nesting bounded.
  void check_scopes(const GraphDef& gd, const std::string& where) {
    defined_.assign(gd.values.size(), 0);
    visible_.assign(gd.values.size(), 0);
    region_used_.assign(gd.regions.size(), 0);
    region_used_[0] = 1;
    walk(gd, where, 0, 0);
    for (size_t k = 0; k < region_used_.size(); ++k)
      if (!region_used_[k])
        fail(kFormatError, where + ".regions[" + std::to_string(k) + "]: region is not referenced by any op");
  }

  void walk(const GraphDef& gd, const std::string& gw, uint32_t k, int depth) {
    std::string rw = gw + ".regions[" + std::to_string(k) + "]";
    if (static_cast<uint64_t>(depth) > limits_.max_region_depth)
      fail(kFormatError, rw + ": regions nest deeper than " + std::to_string(limits_.max_region_depth) + " (" +
                             how_to_raise("max_region_depth") + ")");
    const RegionDef& r = gd.regions[k];
    std::vector<uint32_t> local;
    for (uint32_t v : r.inputs) {
      define(v, rw + ".inputs");
      local.push_back(v);
    }
    for (size_t j = 0; j < r.ops.size(); ++j) {
      const OpDef& op = r.ops[j];
      std::string ow = rw + ".ops[" + std::to_string(j) + "]";
      for (uint32_t v : op.inputs) use(v, ow + ".inputs");
      for (uint32_t sub : op.regions) {
        if (sub <= k || sub >= gd.regions.size())
          fail(kFormatError, ow + ".regions: region " + std::to_string(sub) + " must exist and come after region " +
                                 std::to_string(k));
        if (region_used_[sub]) fail(kFormatError, ow + ".regions: region " + std::to_string(sub) + " is used by two ops");
        region_used_[sub] = 1;
        walk(gd, gw, sub, depth + 1);
      }
      for (uint32_t v : op.outputs) {
        define(v, ow + ".outputs");
        local.push_back(v);
      }
    }
    for (uint32_t v : r.outputs) use(v, rw + ".outputs");
    if (k)
      for (uint32_t v : local) visible_[v] = 0;
  }

  void define(uint32_t v, const std::string& where) {
    if (defined_[v]) fail(kFormatError, where + ": value " + std::to_string(v) + " is defined twice");
    defined_[v] = visible_[v] = 1;
  }

  void use(uint32_t v, const std::string& where) {
    if (!visible_[v])
      fail(kFormatError, where + ": value " + std::to_string(v) +
                             (defined_[v] ? " is used outside its region" : " is used before it is defined"));
  }

 private:
  std::string rank_error(size_t n) const {
    return "rank " + std::to_string(n) + " exceeds the maximum " + std::to_string(limits_.max_rank) + " (" +
           how_to_raise("max_rank") + ")";
  }

  const MappedFile& f_;
  const Limits limits_;  // those in force when the load started
  std::string where_ = "Model";
  size_t op_count_ = 0;
  const std::vector<ConstTensor>* tensors_ = nullptr;
  std::vector<uint8_t> defined_, visible_, region_used_;
};

std::string type_text(const ValueDef& v) {
  std::string s = std::string(dtype_short(v.dtype)) + "[";
  for (size_t i = 0; i < v.shape.size(); ++i)
    s += (i ? "," : "") + (v.shape[i].is_static() ? std::to_string(v.shape[i].size) : v.shape[i].text);
  return s + "]";
}

}  // namespace

ModelDef decode_model(std::shared_ptr<MappedFile> file) {
  Decoder dec(*file, current_limits());
  return dec.model(file);
}

std::string op_label(const GraphDef& g, const OpDef& op) {
  auto name = [&](uint32_t i) { return "%" + (g.values[i].name.empty() ? std::to_string(i) : g.values[i].name); };
  std::string outs, ins;
  for (size_t k = 0; k < op.outputs.size(); ++k)
    outs += (k ? ", " : "") + name(op.outputs[k]) + ": " + type_text(g.values[op.outputs[k]]);
  for (size_t k = 0; k < op.inputs.size(); ++k) ins += (k ? ", " : "") + name(op.inputs[k]);
  std::string s = outs + " = " + op.kind + "(" + ins + ")";
  if (!op.loc.empty()) s += "  # " + op.loc;
  return s;
}

}  // namespace castml
