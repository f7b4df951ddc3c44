// Lowering an entry to steps, the memory plan, and the execution loop (see program.h).
#include "program.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <set>

#include "f16.h"

namespace castml {

// ---- kernel table and call helpers -----------------------------------------------------------

const KernelTable& kernels() {
  static const KernelTable table = [] {
    KernelTable t;
    register_elementwise(t);
    register_binary(t);
    register_shape(t);
    register_reduce(t);
    register_nn(t);
    register_linalg(t);
    register_extra(t);
    register_random(t);
    return t;
  }();
  return table;
}

const Attr& KernelCall::attr(const char* name) const {
  auto it = op.attrs.find(name);
  if (it == op.attrs.end()) fail(kKernelError, std::string("missing attribute '") + name + "'");
  return it->second;
}

int64_t KernelCall::i(const char* name, int64_t dflt) const { return has(name) ? attr(name).i : dflt; }

double KernelCall::f(const char* name, double dflt) const {
  if (!has(name)) return dflt;
  const Attr& a = attr(name);
  return a.kind == kAttrFloat ? a.f : static_cast<double>(a.i);
}

std::string KernelCall::s(const char* name, const std::string& dflt) const { return has(name) ? attr(name).s : dflt; }

std::vector<int64_t> KernelCall::ints(const char* name) const {
  const Attr& a = attr(name);
  if (a.kind == kAttrDims) {
    std::vector<int64_t> out;
    for (const Dim& d : a.dims) out.push_back(d.eval(env));
    return out;
  }
  if (a.kind == kAttrInt) return {a.i};
  return a.ints;
}

std::vector<int64_t> KernelCall::ints_or(const char* name, std::vector<int64_t> dflt) const {
  return has(name) ? ints(name) : dflt;
}

ConstTensor KernelCall::tensor(const char* name) const {
  const Attr& a = attr(name);
  if (a.kind != kAttrTensor) fail(kKernelError, std::string("attribute '") + name + "' is not a tensor");
  return model.tensors[a.tensor];
}

void KernelCall::expect_shape(size_t k, const Shape& shape) const {
  if (out.at(k)->shape != shape)
    fail(kKernelError, "computed output shape " + shape_str(shape) + " does not match the declared " +
                           shape_str(out.at(k)->shape));
}

void KernelCall::expect_dtype(DType t, size_t n_in) const {
  for (const Tensor* o : out)
    if (o->dtype != t) fail(kKernelError, std::string("output dtype ") + dtype_name(o->dtype) + " != " + dtype_name(t));
  for (size_t k = 0; k < n_in && k < in.size(); ++k)
    if (in[k]->dtype != t)
      fail(kKernelError, "input " + std::to_string(k) + " has dtype " + dtype_name(in[k]->dtype) + ", expected " +
                             dtype_name(t));
}

DType value_dtype(const GraphDef& g, uint32_t v) { return g.values[v].dtype; }

void require_float(const OpDef& op, const GraphDef& g) {
  for (auto ids : {&op.inputs, &op.outputs})
    for (uint32_t v : *ids)
      if (g.values[v].dtype != kFloat32 && g.values[v].dtype != kFloat64)
        fail(kUnsupportedError, "native '" + op.kind + "' runs float32/float64 only, got " + dtype_name(g.values[v].dtype));
}

void require_no_f16(const OpDef& op, const GraphDef& g) {
  for (auto ids : {&op.inputs, &op.outputs})
    for (uint32_t v : *ids)
      if (g.values[v].dtype == kFloat16)
        fail(kUnsupportedError, "native '" + op.kind + "' has no float16 kernel");
}

int norm_axis(int64_t axis, int rank) {
  int64_t a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank) fail(kKernelError, "axis " + std::to_string(axis) + " is out of range for rank " +
                                                               std::to_string(rank));
  return static_cast<int>(a);
}

// ---- lowering ---------------------------------------------------------------------------------

Result::~Result() {
  for (void* p : owned) std::free(p);
}

Program::Arena::~Arena() { std::free(data); }

StepCache::~StepCache() { std::free(data_); }

float* StepCache::allocate(size_t n) {
  void* p = std::aligned_alloc(64, (std::max<size_t>(n, 1) * sizeof(float) + 63) / 64 * 64);
  if (!p)
    fail(kKernelError, "out of memory allocating " + std::to_string(n * sizeof(float)) + " bytes of packed weights");
  return static_cast<float*>(p);
}

namespace {
void* aligned_malloc(size_t n) {
  size_t rounded = (std::max<size_t>(n, 1) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded);
  if (!p) fail(kKernelError, "out of memory allocating " + std::to_string(n) + " bytes");
  return p;
}
}  // namespace

namespace {
bool same_type(const ValueDef& a, const ValueDef& b) {
  if (a.dtype != b.dtype || a.shape.size() != b.shape.size()) return false;
  for (size_t i = 0; i < a.shape.size(); ++i)
    if (a.shape[i].is_static() != b.shape[i].is_static() || a.shape[i].size != b.shape[i].size ||
        a.shape[i].text != b.shape[i].text)
      return false;
  return true;
}
}  // namespace

uint32_t Program::resolve(uint32_t v) const {
  const std::vector<uint32_t>& alias = root_->alias_;
  while (alias[v] != v) v = alias[v];
  return v;
}

// Appends the steps of region k. A `fused_elementwise` op (a chain of elementwise ops that
// ir.optimize groups in a region) is inlined: its region's inputs and outputs become aliases
// of the op's, so the chain runs as ordinary steps in the arena.
void Program::lower(uint32_t k, int depth) {
  for (const OpDef& op : graph_.regions[k].ops) {
    std::string label = op_label(graph_, op);
    if (op.kind == "fused_elementwise" && op.regions.size() == 1 && depth < 4) {
      const RegionDef& r = graph_.regions[op.regions[0]];
      if (r.inputs.size() != op.inputs.size() || r.outputs.size() != op.outputs.size())
        fail(kFormatError, label + ": its region has " + std::to_string(r.inputs.size()) + " inputs and " +
                               std::to_string(r.outputs.size()) + " outputs for the op's " +
                               std::to_string(op.inputs.size()) + " and " + std::to_string(op.outputs.size()));
      for (size_t i = 0; i < r.inputs.size(); ++i) {
        if (!same_type(graph_.values[r.inputs[i]], graph_.values[op.inputs[i]]))
          fail(kFormatError, label + ": region input " + std::to_string(i) + " and op input differ in type");
        root_->alias_[r.inputs[i]] = resolve(op.inputs[i]);
      }
      lower(op.regions[0], depth + 1);
      for (size_t i = 0; i < r.outputs.size(); ++i) {
        if (!same_type(graph_.values[r.outputs[i]], graph_.values[op.outputs[i]]))
          fail(kFormatError, label + ": region output " + std::to_string(i) + " and op output differ in type");
        root_->alias_[op.outputs[i]] = resolve(r.outputs[i]);
      }
      continue;
    }
    if (op.kind == "if" || op.kind == "loop") {
      lower_control(op, label);  // control.cpp
      continue;
    }
    auto it = kernels().find(op.kind);
    if (it == kernels().end() || !op.regions.empty())
      fail(kUnsupportedError, "unknown op kind '" + op.kind + "' (no kernel in the native runtime): " + label);
    const KernelDef* kernel = &it->second;
    try {
      kernel = checked_kernel(op, graph_, it->second);  // f16.cpp: the kernel's check; float16 ops
    } catch (const Error& e) {
      fail(kUnsupportedError, e.message + ": " + label);
    }
    Step step{&op, kernel, label, {}, op.outputs, {}, std::make_unique<StepCache>()};
    for (uint32_t v : op.inputs) step.inputs.push_back(resolve(v));
    steps_.push_back(std::move(step));
  }
}

Program::~Program() = default;

Program::Program(const ModelDef& model, const GraphDef& graph) : model_(model), graph_(graph), root_(this) {
  const RegionDef& body = graph.regions[0];
  size_t nv = graph.values.size();
  storage_.assign(nv, kUnusedValue);
  const_data_.assign(nv, nullptr);
  arena_index_.assign(nv, -1);
  alias_.resize(nv);
  for (uint32_t v = 0; v < nv; ++v) alias_[v] = v;
  for (uint32_t v : body.inputs) storage_[v] = kInputValue;
  lower(0, 0);
  std::set<std::string> bound;
  for (uint32_t v : body.inputs)
    for (const Dim& d : graph_.values[v].shape)
      if (d.is_symbol()) bound.insert(d.text);
  check_symbols(bound);
  for (uint32_t v : body.outputs) outputs_.push_back(resolve(v));
  fuse_residuals();
  mark_dynamic();
  std::vector<int> first(nv, -1), last(nv, -1);
  for (size_t j = 0; j < steps_.size(); ++j) {
    const Step& s = steps_[j];
    const OpDef& op = *s.op;
    int step = static_cast<int>(j);
    for (uint32_t v : s.inputs) last[v] = step;
    if (s.residual != kNoValue) last[s.residual] = step;
    for (size_t k = 0; k < s.outputs.size(); ++k) {
      uint32_t v = s.outputs[k];
      first[v] = last[v] = step;
      storage_[v] = !s.dynamic.empty() && s.dynamic[k] ? kDynamicValue : kArenaValue;
    }
    if (op.kind == "constant") {
      auto value = op.attrs.find("value");
      if (op.outputs.size() != 1 || !op.inputs.empty() || value == op.attrs.end() || value->second.kind != kAttrTensor)
        fail(kFormatError, s.label + ": a constant has no inputs, one output and a tensor attribute 'value'");
      const ConstTensor& t = model.tensors[value->second.tensor];
      storage_[op.outputs[0]] = kConstValue;
      const_data_[op.outputs[0]] = t.data;
      // its kernel only compares the stored type with the declared one: with a static declared
      // shape that is done once here, and the step costs nothing per call
      const ValueDef& vd = graph.values[op.outputs[0]];
      bool same = vd.dtype == t.dtype && vd.shape.size() == t.shape.size();
      for (size_t d = 0; same && d < vd.shape.size(); ++d)
        same = vd.shape[d].is_static() && vd.shape[d].size == t.shape[d];
      steps_[j].skip = same;
    }
  }
  for (uint32_t v : outputs_)
    if (storage_[v] == kArenaValue) {
      storage_[v] = kOutputValue;
      returned_.emplace_back(v, first[v]);
    }
  for (Step& s : steps_)
    for (uint32_t v : s.inputs) s.constant.push_back(storage_[v] == kConstValue);
  for (uint32_t v = 0; v < nv; ++v) {
    if (storage_[v] != kArenaValue) continue;
    arena_index_[v] = static_cast<int>(arena_values_.size());
    arena_values_.push_back(v);
    live_.emplace_back(first[v], last[v]);
  }
  build_regions();  // control.cpp: after const_data_ is complete (regions read it)
}

// conv -> add(., r) -> relu / maximum(., 0) chains (see program.h) become one conv step placed
// where the add was: the conv's inputs exist by then, the residual r may be computed only after
// the conv, and nothing else reads the conv's or the add's output. Malformed ops are left alone
// (the checks after lowering report them).
void Program::fuse_residuals() {
  const size_t nv = graph_.values.size(), ns = steps_.size();
  std::vector<int> uses(nv, 0), def(nv, -1);
  for (size_t j = 0; j < ns; ++j) {
    for (uint32_t v : steps_[j].inputs) ++uses[v];
    for (uint32_t v : steps_[j].outputs) def[v] = static_cast<int>(j);
  }
  for (uint32_t v : outputs_) uses[v] += 2;  // a returned value is never fused away
  auto sole_user = [&](uint32_t v, size_t from) -> int {
    if (uses[v] != 1) return -1;
    for (size_t k = from; k < ns; ++k)
      for (uint32_t u : steps_[k].inputs)
        if (u == v) return static_cast<int>(k);
    return -1;
  };
  auto is_zero = [&](uint32_t c) {
    if (def[c] < 0 || steps_[def[c]].op->kind != "constant") return false;
    auto it = steps_[def[c]].op->attrs.find("value");
    if (it == steps_[def[c]].op->attrs.end() || it->second.kind != kAttrTensor ||
        it->second.tensor < 0 || static_cast<size_t>(it->second.tensor) >= model_.tensors.size())
      return false;
    const ConstTensor& t = model_.tensors[it->second.tensor];
    if (t.dtype != kFloat32 || numel(t.shape) != 1 || !t.data) return false;
    float x;
    std::memcpy(&x, t.data, sizeof x);
    return x == 0.0f;
  };
  std::vector<uint8_t> gone(ns, 0);
  for (size_t j = 0; j < ns; ++j) {
    Step& s = steps_[j];
    const OpDef& op = *s.op;
    if (gone[j] || (op.kind != "conv" && op.kind != "fused_conv") || s.outputs.size() != 1 ||
        s.residual != kNoValue)
      continue;
    auto act = op.attrs.find("activation");
    if (act != op.attrs.end() && (act->second.kind != kAttrStr || act->second.s != "none")) continue;
    const uint32_t v = s.outputs[0];
    const ValueDef& vd = graph_.values[v];
    if (vd.dtype != kFloat32) continue;
    const int k = sole_user(v, j + 1);
    if (k < 0 || steps_[k].op->kind != "add" || steps_[k].inputs.size() != 2 || steps_[k].outputs.size() != 1)
      continue;
    const uint32_t r = steps_[k].inputs[0] == v ? steps_[k].inputs[1] : steps_[k].inputs[0];
    uint32_t out = steps_[k].outputs[0];
    if (r == v || !same_type(graph_.values[r], vd) || !same_type(graph_.values[out], vd)) continue;
    bool relu = false;
    const int l = sole_user(out, k + 1);
    if (l >= 0) {
      const Step& a = steps_[l];
      const bool is_relu = a.op->kind == "relu" && a.inputs.size() == 1;
      const bool is_max0 = a.op->kind == "maximum" && a.inputs.size() == 2 && a.inputs[0] != a.inputs[1] &&
                           is_zero(a.inputs[0] == out ? a.inputs[1] : a.inputs[0]);
      if ((is_relu || is_max0) && a.outputs.size() == 1 && same_type(graph_.values[a.outputs[0]], vd)) {
        relu = true;
        out = a.outputs[0];
        gone[l] = 1;
      }
    }
    Step fused{s.op, s.kernel, s.label + (relu ? " + residual add, relu" : " + residual add"), s.inputs, {out},
               {}, std::move(s.cache)};
    fused.residual = r;
    fused.relu = relu;
    steps_[k] = std::move(fused);
    gone[j] = 1;
  }
  std::vector<Step> kept;
  kept.reserve(ns);
  for (size_t j = 0; j < ns; ++j)
    if (!gone[j]) kept.push_back(std::move(steps_[j]));
  steps_ = std::move(kept);
}

// As the Python runtime's _check_symbols: every symbol of an input dim or a DIMS attribute must be
// bound by a bare-symbol input dim (a malformed file otherwise), or by an earlier `if`/`loop`,
// whose outputs bind their unbound bare-symbol dims when they have run (dynamic symbols). Other
// op outputs whose sizes depend on data (fresh symbols) are beyond this runtime. `bound`: the
// symbols bound when this program starts.
void Program::check_symbols(std::set<std::string> bound) {
  auto unbound = [&](const std::vector<Dim>& dims) {
    std::set<std::string> syms;
    for (const Dim& d : dims) d.symbols(&syms);
    std::string out;
    for (const auto& s : syms)
      if (!bound.count(s)) out += (out.empty() ? "'" : ", '") + s + "'";
    return out;
  };
  if (this == root_) {
    for (uint32_t v : graph_.regions[0].inputs) {
      std::string u = unbound(graph_.values[v].shape);
      if (!u.empty()) fail(kFormatError, "input dim of value " + std::to_string(v) + " uses symbols [" + u +
                                             "] that no input binds");
    }
  }
  for (Step& s : steps_) {
    bool control = s.kernel == nullptr;  // `if` / `loop`: their `fresh` attribute names what they bind
    for (const auto& [name, a] : s.op->attrs) {
      std::string u = a.kind == kAttrDims && !control ? unbound(a.dims) : "";
      if (!u.empty())
        fail(kFormatError, s.label + ": attribute '" + name + "' uses symbols [" + u + "] that are not bound before it runs");
    }
    if (control) s.bound_before = bound;
    for (size_t k = 0; k < s.outputs.size(); ++k) {
      const std::vector<Dim>& shape = graph_.values[s.outputs[k]].shape;
      for (size_t a = 0; control && a < shape.size(); ++a) {
        if (!shape[a].is_symbol() || bound.count(shape[a].text)) continue;
        s.fresh.emplace_back(k, a, shape[a].text);
        bound.insert(shape[a].text);
        dynamic_symbols_.insert(shape[a].text);
      }
      std::string u = unbound(shape);
      if (!u.empty())
        fail(kUnsupportedError, s.label + ": a data-dependent size (symbols [" + u +
                                    "]) is not supported by the native runtime");
    }
  }
}

void Program::mark_dynamic() {
  if (dynamic_symbols_.empty()) return;
  for (Step& s : steps_) {
    s.dynamic.assign(s.outputs.size(), 0);
    if (s.op->kind == "constant") continue;  // its data is the file's
    for (size_t k = 0; k < s.outputs.size(); ++k) {
      std::set<std::string> syms;
      for (const Dim& d : graph_.values[s.outputs[k]].shape) d.symbols(&syms);
      for (const std::string& name : syms) s.dynamic[k] |= dynamic_symbols_.count(name) ? 1 : 0;
    }
  }
}

Env Program::bind(const std::vector<Tensor>& inputs) const {
  const RegionDef& body = graph_.regions[0];
  if (inputs.size() != body.inputs.size())
    fail(kInputError, "expected " + std::to_string(body.inputs.size()) + " inputs, got " + std::to_string(inputs.size()));
  Env env;
  auto type_of = [&](uint32_t v) {
    const ValueDef& vd = graph_.values[v];
    std::string s = std::string(dtype_short(vd.dtype)) + "[";
    for (size_t i = 0; i < vd.shape.size(); ++i)
      s += (i ? "," : "") + (vd.shape[i].is_static() ? std::to_string(vd.shape[i].size) : vd.shape[i].text);
    return s + "]";
  };
  for (size_t k = 0; k < inputs.size(); ++k) {
    const ValueDef& vd = graph_.values[body.inputs[k]];
    const Tensor& t = inputs[k];
    const std::string& name = graph_.input_names[k];
    if (t.dtype != vd.dtype)
      fail(kInputError, "input '" + name + "': expected dtype " + type_of(body.inputs[k]) + ", got " + dtype_name(t.dtype) +
                            " " + shape_str(t.shape));
    if (t.shape.size() != vd.shape.size())
      fail(kInputError, "input '" + name + "': expected " + type_of(body.inputs[k]) + " (rank " +
                            std::to_string(vd.shape.size()) + "), got shape " + shape_str(t.shape));
    for (size_t a = 0; a < vd.shape.size(); ++a) {
      if (!vd.shape[a].is_symbol()) continue;
      auto [it, inserted] = env.emplace(vd.shape[a].text, t.shape[a]);
      if (!inserted && it->second != t.shape[a])
        fail(kInputError, "input '" + name + "': dim " + std::to_string(a) + " is " + std::to_string(t.shape[a]) + " but " +
                              it->first + " = " + std::to_string(it->second) + " from an earlier input (expected " +
                              type_of(body.inputs[k]) + ")");
    }
  }
  for (size_t k = 0; k < inputs.size(); ++k) {
    const ValueDef& vd = graph_.values[body.inputs[k]];
    for (size_t a = 0; a < vd.shape.size(); ++a)
      if (!vd.shape[a].is_symbol() && vd.shape[a].eval(env) != inputs[k].shape[a])
        fail(kInputError, "input '" + graph_.input_names[k] + "': expected " + type_of(body.inputs[k]) + ", got shape " +
                              shape_str(inputs[k].shape));
  }
  return env;
}

std::shared_ptr<const Program::Plan> Program::plan_for(const std::vector<size_t>& sizes) const {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [key, plan] : plans_)
      if (key == sizes) return plan;
  }
  // greedy by size: place each value at the lowest offset that does not overlap a placed value
  // whose live interval intersects its own
  auto plan = std::make_shared<Plan>();
  size_t n = sizes.size();
  plan->offsets.assign(n, 0);
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return sizes[a] > sizes[b]; });
  std::vector<size_t> placed;
  for (size_t idx : order) {
    size_t need = (sizes[idx] + 63) / 64 * 64;
    std::vector<std::pair<size_t, size_t>> busy;
    for (size_t p : placed)
      if (live_[p].first <= live_[idx].second && live_[idx].first <= live_[p].second)
        busy.emplace_back(plan->offsets[p], plan->offsets[p] + (sizes[p] + 63) / 64 * 64);
    std::sort(busy.begin(), busy.end());
    size_t offset = 0;
    for (const auto& [lo, hi] : busy) {
      if (offset + need <= lo) break;
      offset = std::max(offset, hi);
    }
    plan->offsets[idx] = offset;
    plan->total = std::max(plan->total, offset + need);
    placed.push_back(idx);
  }
  std::lock_guard<std::mutex> lock(mutex_);
  if (plans_.size() > 64) plans_.clear();
  plans_.emplace_back(sizes, plan);
  return plan;
}

std::vector<size_t> Program::shape_steps(const Env& env, std::vector<Tensor>& values) const {
  std::vector<size_t> sizes(arena_values_.size());
  for (const Step& s : steps_) {
    for (size_t k = 0; k < s.outputs.size(); ++k) {
      uint32_t v = s.outputs[k];
      if (!s.dynamic.empty() && s.dynamic[k]) continue;
      shape_value(values[v], v, env, s.label);
      if (arena_index_[v] >= 0) sizes[arena_index_[v]] = values[v].nbytes();
    }
  }
  return sizes;
}

Program::MemoryReport Program::memory_report(const Env& env) const {
  MemoryReport r;
  std::vector<Tensor> values(graph_.values.size());
  std::vector<size_t> sizes = shape_steps(env, values);
  for (const Step& s : steps_)
    for (size_t k = 0; k < s.outputs.size(); ++k)
      if (!s.dynamic.empty() && s.dynamic[k]) r.unknown.push_back(s.outputs[k]);
  std::shared_ptr<const Plan> plan = plan_for(sizes);
  r.arena_bytes = plan->total;
  std::vector<size_t> delta(steps_.size() + 2, 0), ends(steps_.size() + 2, 0);  // bytes coming, going
  for (size_t k = 0; k < arena_values_.size(); ++k) {
    r.arena.emplace_back(arena_values_[k], plan->offsets[k], sizes[k], live_[k].first, live_[k].second);
    delta[live_[k].first] += sizes[k];
    ends[live_[k].second + 1] += sizes[k];
  }
  for (const auto& [v, step] : returned_) {
    r.output_bytes += values[v].nbytes();
    delta[step] += values[v].nbytes();
  }
  size_t live = 0;
  for (size_t j = 0; j < delta.size(); ++j) {
    live = live + delta[j] - ends[j];
    r.lower_bound_bytes = std::max(r.lower_bound_bytes, live);
  }
  return r;
}

std::unique_ptr<Program::Arena> Program::take_arena(size_t size) const {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t k = 0; k < arenas_.size(); ++k) {
      if (arenas_[k]->size >= size) {
        auto a = std::move(arenas_[k]);
        arenas_.erase(arenas_.begin() + static_cast<long>(k));
        return a;
      }
    }
  }
  // The arena holds every planned value, fused regions' inner values too, which the entry's check
  // of the values alive at once (capi.cpp, as runtime.limits.check_plan) does not see: a file
  // declaring huge inner types must not reach malloc. Packing live values into one arena can take
  // more than their sum (alignment, fragmentation), so the bound here is twice the limit.
  const uint64_t lim = current_limits().max_intermediate_bytes;
  if (size / 2 > lim)
    fail(kInputError, "the memory plan needs " + std::to_string(size) +
                          " bytes of intermediate values for these inputs, more than twice max_intermediate_bytes = " +
                          std::to_string(lim) + " (" + how_to_raise("max_intermediate_bytes") + ")");
  auto a = std::make_unique<Arena>();
  a->data = aligned_malloc(size);
  a->size = size;
  return a;
}

void Program::give_arena(std::unique_ptr<Arena> a) const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (arenas_.size() < 8) arenas_.push_back(std::move(a));
}

void Program::shape_value(Tensor& t, uint32_t v, const Env& env, const std::string& label) const {
  t.dtype = graph_.values[v].dtype;
  t.shape.clear();
  int64_t count = 1;
  for (const Dim& d : graph_.values[v].shape) {
    int64_t n = d.eval(env);
    if (n < 0 || __builtin_mul_overflow(count, n, &count))
      fail(kInputError, "value %" + std::to_string(v) + " would have dim " + std::to_string(n) + " with these inputs (" +
                            label + ")");
    t.shape.push_back(n);
  }
  if (static_cast<unsigned __int128>(count) * dtype_size(t.dtype) > (static_cast<unsigned __int128>(1) << 40))
    fail(kInputError, "value %" + std::to_string(v) + " would need more than 1 TiB (" + label + ")");
}

void Program::exec(std::vector<Tensor>& values, Env& env, std::vector<void*>& dynamic) const {
  for (const Step& s : steps_) {
    if (s.skip) continue;
    if (s.kernel == nullptr) {  // `if` / `loop` (control.cpp): errors inside say where already
      if (s.op->kind == "if")
        run_if(s, values, env, dynamic);
      else
        run_loop(s, values, env, dynamic);
      continue;
    }
    for (size_t k = 0; k < s.dynamic.size(); ++k) {
      if (!s.dynamic[k]) continue;
      Tensor& t = values[s.outputs[k]];
      shape_value(t, s.outputs[k], env, s.label);
      allocate_dynamic(t, s.label, dynamic);
    }
    KernelCall call{*s.op, env, model_, {}, {}, s.cache.get(), &s.constant};
    if (s.residual != kNoValue) call.residual = &values[s.residual];
    call.fused_relu = s.relu;
    for (uint32_t v : s.inputs) call.in.push_back(&values[v]);
    for (uint32_t v : s.outputs) call.out.push_back(&values[v]);
    try {
      s.kernel->run(call);
    } catch (const Error& e) {
      fail(e.kind == kInputError ? kInputError : kKernelError, "while executing " + s.label + ": " + e.message);
    } catch (const std::exception& e) {
      fail(kKernelError, "while executing " + s.label + ": " + e.what());
    }
  }
}

std::unique_ptr<Result> Program::run(const std::vector<Tensor>& inputs) const {
  Env env = bind(inputs);
  const RegionDef& body = graph_.regions[0];
  size_t nv = graph_.values.size();
  std::vector<Tensor> values(nv);
  auto result = std::make_unique<Result>();
  std::vector<size_t> sizes = shape_steps(env, values);
  for (size_t k = 0; k < body.inputs.size(); ++k) values[body.inputs[k]] = inputs[k];
  std::shared_ptr<const Plan> plan = plan_for(sizes);
  std::unique_ptr<Arena> arena = take_arena(plan->total);
  struct ArenaReturn {  // the arena goes back to the pool however the call ends
    const Program* p;
    std::unique_ptr<Arena>* a;
    ~ArenaReturn() { p->give_arena(std::move(*a)); }
  } give_back{this, &arena};
  struct Dynamic {  // dynamic values' buffers, freed however the call ends
    std::vector<void*> buffers;
    ~Dynamic() {
      for (void* p : buffers) std::free(p);
    }
  } dynamic;
  char* base = static_cast<char*>(arena->data);
  for (size_t k = 0; k < arena_values_.size(); ++k) values[arena_values_[k]].data = base + plan->offsets[k];
  for (uint32_t v = 0; v < nv; ++v) {
    if (storage_[v] == kConstValue) {
      values[v].data = const_cast<void*>(const_data_[v]);
    } else if (storage_[v] == kOutputValue) {
      values[v].data = aligned_malloc(values[v].nbytes());
      result->owned.push_back(values[v].data);
    }
  }
  exec(values, env, dynamic.buffers);
  // outputs: returned buffers are handed over; inputs, constants, dynamic values and repeats
  // are copied
  std::vector<uint8_t> handed(nv, 0);
  for (uint32_t v : outputs_) {
    Tensor t = values[v];
    if (storage_[v] != kOutputValue || handed[v]) {
      void* copy = aligned_malloc(t.nbytes());
      if (t.nbytes()) std::memcpy(copy, t.data, t.nbytes());
      result->owned.push_back(copy);
      t.data = copy;
    }
    handed[v] = 1;
    result->outputs.push_back(t);
  }
  return result;
}

}  // namespace castml
