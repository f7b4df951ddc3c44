// Control flow: `if` and `loop` (ONNX semantics, as runtime/kernels/control.py), each region a
// sub-program with its own steps, memory plan and arena pool (see program.h).
//
// A sub-program runs on the call's value table: it reads the values it captures from enclosing
// programs where they are, and the op's step copies what the region yields into the op's
// outputs. A loop keeps its carried values in two buffers per value that it alternates between
// iterations (a yielded value may be a parameter, or another carried value's parameter); the
// body's arena is taken once per loop call, as its planned sizes depend only on symbols bound
// before the loop (values sized by a symbol that changes across iterations are dynamic).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <set>
#include <unordered_map>

#include "program.h"

namespace castml {

namespace {

void* aligned_buffer(size_t n) {
  size_t rounded = (std::max<size_t>(n, 1) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded);
  if (!p) fail(kKernelError, "out of memory allocating " + std::to_string(n) + " bytes");
  return p;
}

// The values used and defined in region k and the regions nested in it (ids are unique per
// graph, so what is used and not defined there is captured from outside).
void region_values(const GraphDef& g, uint32_t k, std::set<uint32_t>& used, std::set<uint32_t>& defined) {
  const RegionDef& r = g.regions[k];
  defined.insert(r.inputs.begin(), r.inputs.end());
  for (const OpDef& op : r.ops) {
    used.insert(op.inputs.begin(), op.inputs.end());
    defined.insert(op.outputs.begin(), op.outputs.end());
    for (uint32_t sub : op.regions) region_values(g, sub, used, defined);
  }
  used.insert(r.outputs.begin(), r.outputs.end());
}

std::string type_str(const Tensor& t) { return std::string(dtype_name(t.dtype)) + " " + shape_str(t.shape); }

}  // namespace

void Program::allocate_dynamic(Tensor& t, const std::string& label, std::vector<void*>& dynamic) {
  if (t.nbytes() > current_limits().max_tensor_bytes) fail_too_big(label, "the output would take", t.nbytes());
  dynamic.push_back(nullptr);
  dynamic.back() = t.data = aligned_buffer(t.nbytes());
}

void Program::Frame::release_dynamic() {
  for (void* p : dynamic) std::free(p);
  dynamic.clear();
}

Program::Frame::~Frame() {
  release_dynamic();
  if (arena) program->give_arena(std::move(arena));
}

// An `if` or `loop` op becomes one step without a kernel; what the file must satisfy for it
// (the type rules of ir/ops/control.py that execution relies on) is checked here, and a file
// that breaks them is left to the NumPy runtime (unsupported), which decides what it means.
void Program::lower_control(const OpDef& op, const std::string& label) {
  auto refuse = [&](const std::string& why) {
    fail(kUnsupportedError, "native '" + op.kind + "': " + why + ": " + label);
  };
  auto scalar = [&](uint32_t v, DType t) { return graph_.values[v].dtype == t && graph_.values[v].shape.empty(); };
  auto alike = [&](uint32_t a, uint32_t b) {
    return graph_.values[a].dtype == graph_.values[b].dtype &&
           graph_.values[a].shape.size() == graph_.values[b].shape.size();
  };
  const size_t n_out = op.outputs.size();
  if (op.kind == "if") {
    if (op.inputs.size() != 1 || op.regions.size() != 2)
      refuse("expected one input and two regions, got " + std::to_string(op.inputs.size()) + " and " +
             std::to_string(op.regions.size()));
    if (!scalar(op.inputs[0], kBool)) refuse("the condition must be a bool scalar");
    for (uint32_t k : op.regions) {
      const RegionDef& r = graph_.regions[k];
      if (!r.inputs.empty() || r.outputs.size() != n_out)
        refuse("a branch takes no inputs and yields " + std::to_string(n_out) + " values, got " +
               std::to_string(r.inputs.size()) + " inputs and " + std::to_string(r.outputs.size()) + " values");
      for (size_t i = 0; i < n_out; ++i)
        if (!alike(r.outputs[i], op.outputs[i]))
          refuse("a branch yields output " + std::to_string(i) + " with another dtype or rank than the op's");
    }
  } else {
    if (op.inputs.size() < 2 || op.regions.size() != 1 || op.outputs.size() != op.inputs.size() - 2)
      refuse("expected (max_trip_count, cond, *carried) inputs, as many outputs as carried values and one region");
    if (!scalar(op.inputs[0], kInt64) || !scalar(op.inputs[1], kBool))
      refuse("max_trip_count must be an int64 scalar and cond a bool scalar");
    const RegionDef& body = graph_.regions[op.regions[0]];
    if (body.inputs.size() != 2 + n_out || body.outputs.size() != 1 + n_out)
      refuse("the body takes (iteration, cond, *carried) and yields (cond, *carried), got " +
             std::to_string(body.inputs.size()) + " inputs and " + std::to_string(body.outputs.size()) + " values");
    if (!scalar(body.inputs[0], kInt64) || !scalar(body.inputs[1], kBool) || !scalar(body.outputs[0], kBool))
      refuse("the body's iteration must be an int64 scalar, its cond input and output bool scalars");
    for (size_t i = 0; i < n_out; ++i)
      if (!alike(op.inputs[2 + i], body.inputs[2 + i]) || !alike(body.outputs[1 + i], body.inputs[2 + i]) ||
          !alike(op.outputs[i], body.inputs[2 + i]))
        refuse("carried value " + std::to_string(i) + " changes dtype or rank");
  }
  Step step{&op, nullptr, label, {}, op.outputs, {}, std::make_unique<StepCache>()};
  for (uint32_t v : op.inputs) step.inputs.push_back(resolve(v));
  std::set<uint32_t> used, defined;
  for (uint32_t k : op.regions) region_values(graph_, k, used, defined);
  std::set<uint32_t> own(op.inputs.begin(), op.inputs.end());
  for (uint32_t v : used)
    if (!defined.count(v) && !own.count(v)) step.inputs.push_back(resolve(v));  // captured: alive through the step
  steps_.push_back(std::move(step));
}

void Program::build_regions() {
  for (Step& s : steps_) {
    if (s.kernel != nullptr) continue;
    bool loop = s.op->kind == "loop";
    for (uint32_t k : s.op->regions)
      s.regions.push_back(std::unique_ptr<Program>(new Program(*this, k, s.bound_before, loop)));
  }
}

Program::Program(Program& parent, uint32_t region, const std::set<std::string>& bound_before, bool loop_body)
    : model_(parent.model_), graph_(parent.graph_), root_(parent.root_), region_(region), loop_body_(loop_body) {
  const RegionDef& r = graph_.regions[region];
  std::set<std::string> bound = bound_before;
  if (loop_body) {
    // a parameter's bare-symbol dim not bound before the loop is rebound every iteration (a
    // carried value that grows); anything else in a parameter's type must be bound already
    for (size_t k = 2; k < r.inputs.size(); ++k)
      for (const Dim& d : graph_.values[r.inputs[k]].shape)
        if (d.is_symbol() && !bound_before.count(d.text)) rebound_.insert(d.text);
    bound.insert(rebound_.begin(), rebound_.end());
    dynamic_symbols_ = rebound_;
    for (size_t k = 2; k < r.inputs.size(); ++k) {
      std::set<std::string> syms;
      for (const Dim& d : graph_.values[r.inputs[k]].shape) d.symbols(&syms);
      for (const std::string& name : syms)
        if (!bound.count(name))
          fail(kUnsupportedError, "a loop body parameter's size uses symbol '" + name +
                                      "', which nothing binds before it runs (not supported by the native runtime)");
    }
  }
  lower(region, 0);
  for (uint32_t v : r.outputs) outputs_.push_back(resolve(v));
  check_symbols(bound);
  mark_dynamic();
  // what the steps define: constants point into the file, dynamic values are sized when their
  // step runs, the rest live in this program's arena; yielded values live past the last step
  std::unordered_map<uint32_t, size_t> index;
  std::vector<std::pair<int, int>> live;
  const int ns = static_cast<int>(steps_.size());
  for (int j = 0; j < ns; ++j) {
    Step& s = steps_[j];
    for (uint32_t v : s.inputs) {
      auto it = index.find(v);
      if (it != index.end()) live[it->second].second = j;
    }
    for (size_t k = 0; k < s.outputs.size(); ++k) {
      index[s.outputs[k]] = defs_.size();
      defs_.push_back({s.outputs[k], static_cast<uint32_t>(j), !s.dynamic.empty() && s.dynamic[k] ? -2 : 0});
      live.emplace_back(j, j);
    }
    if (s.op->kind == "constant") {
      const OpDef& op = *s.op;
      auto value = op.attrs.find("value");
      if (op.outputs.size() != 1 || !op.inputs.empty() || value == op.attrs.end() || value->second.kind != kAttrTensor)
        fail(kFormatError, s.label + ": a constant has no inputs, one output and a tensor attribute 'value'");
      const ConstTensor& t = model_.tensors[value->second.tensor];
      root_->const_data_[op.outputs[0]] = t.data;
      defs_.back().slot = -1;
      const ValueDef& vd = graph_.values[op.outputs[0]];
      bool same = vd.dtype == t.dtype && vd.shape.size() == t.shape.size();
      for (size_t d = 0; same && d < vd.shape.size(); ++d)
        same = vd.shape[d].is_static() && vd.shape[d].size == t.shape[d];
      s.skip = same;
    }
  }
  for (uint32_t v : outputs_) {
    auto it = index.find(v);
    if (it != index.end()) live[it->second].second = ns;
  }
  for (size_t i = 0; i < defs_.size(); ++i) {
    if (defs_[i].slot != 0) continue;
    defs_[i].slot = static_cast<int>(arena_values_.size());
    arena_values_.push_back(defs_[i].value);
    live_.push_back(live[i]);
  }
  for (Step& s : steps_)
    for (uint32_t v : s.inputs) s.constant.push_back(root_->const_data_[v] != nullptr);
  build_regions();
}

void Program::enter(std::vector<Tensor>& values, const Env& env, Frame& f) const {
  f.program = this;
  std::vector<size_t> sizes(arena_values_.size());
  for (const Def& d : defs_) {
    if (d.slot == -2) continue;
    shape_value(values[d.value], d.value, env, steps_[d.step].label);
    if (d.slot >= 0)
      sizes[d.slot] = values[d.value].nbytes();
    else
      values[d.value].data = const_cast<void*>(root_->const_data_[d.value]);
  }
  if (arena_values_.empty()) return;
  f.plan = plan_for(sizes);
  f.arena = take_arena(f.plan->total);
  char* base = static_cast<char*>(f.arena->data);
  for (size_t k = 0; k < arena_values_.size(); ++k) values[arena_values_[k]].data = base + f.plan->offsets[k];
}

void Program::finish_control(const Step& s, const std::vector<const Tensor*>& ys, std::vector<Tensor>& values,
                             Env& env, std::vector<void*>& dynamic, const char* what) const {
  for (size_t k = 0; k < ys.size(); ++k)
    if (ys[k]->shape.size() != graph_.values[s.outputs[k]].shape.size())
      fail(kKernelError, s.label + ": " + what + " yielded " + type_str(*ys[k]) + " for output " + std::to_string(k) +
                             ", whose declared rank is " + std::to_string(graph_.values[s.outputs[k]].shape.size()));
  for (const auto& [k, axis, symbol] : s.fresh) env[symbol] = ys[k]->shape[axis];  // as the executor's fresh dims
  for (size_t k = 0; k < ys.size(); ++k) {
    Tensor& out = values[s.outputs[k]];
    const Tensor& y = *ys[k];
    if (!s.dynamic.empty() && s.dynamic[k]) {
      shape_value(out, s.outputs[k], env, s.label);
      if (out.shape == y.shape) allocate_dynamic(out, s.label, dynamic);
    }
    if (out.shape != y.shape || out.dtype != y.dtype)
      fail(kKernelError, s.label + ": " + what + " yielded " + type_str(y) + " for output " + std::to_string(k) +
                             ", declared as " + type_str(out));
    if (out.nbytes()) std::memcpy(out.data, y.data, out.nbytes());
  }
}

void Program::run_if(const Step& s, std::vector<Tensor>& values, Env& env, std::vector<void*>& dynamic) const {
  bool cond = *static_cast<const uint8_t*>(values[s.inputs[0]].data) != 0;
  const Program& branch = *s.regions[cond ? 0 : 1];
  Frame f;
  branch.enter(values, env, f);
  branch.exec(values, env, f.dynamic);  // the executor runs a branch in the caller's env too
  std::vector<const Tensor*> ys;
  for (uint32_t v : branch.outputs_) ys.push_back(&values[v]);
  finish_control(s, ys, values, env, dynamic, cond ? "the then branch" : "the else branch");
}

// ONNX Loop: while i < max_trip_count and cond: cond, *carried = body(i, cond, *carried).
void Program::run_loop(const Step& s, std::vector<Tensor>& values, Env& env, std::vector<void*>& dynamic) const {
  const Program& body = *s.regions[0];
  const RegionDef& r = graph_.regions[body.region_];
  const int64_t trips = *static_cast<const int64_t*>(values[s.inputs[0]].data);
  bool go = *static_cast<const uint8_t*>(values[s.inputs[1]].data) != 0;
  const size_t nc = s.outputs.size();
  const uint64_t cap = current_limits().max_loop_iterations;
  struct Buffer {
    void* p = nullptr;
    size_t size = 0;
    ~Buffer() { std::free(p); }
  };
  std::vector<Buffer> spare(2 * nc);
  std::vector<Tensor> carried(nc);
  for (size_t k = 0; k < nc; ++k) carried[k] = values[s.inputs[2 + k]];
  int64_t iteration = 0;
  uint8_t cond_in = 1;
  values[r.inputs[0]] = Tensor{kInt64, {}, &iteration};
  values[r.inputs[1]] = Tensor{kBool, {}, &cond_in};
  Frame f;
  Env local;
  for (int64_t i = 0; i < trips && go; ++i) {
    if (static_cast<uint64_t>(i) >= cap)  // a hostile trip count (2**62) must not hang the caller
      fail(kInputError, s.label + ": the loop ran " + std::to_string(cap) + " iterations, max_loop_iterations (" +
                            how_to_raise("max_loop_iterations") + ")");
    iteration = i;
    local = env;  // the parameters' symbols are bound per iteration (runtime/kernels/control.py _bind)
    for (size_t k = 0; k < nc; ++k) {
      const std::vector<Dim>& decl = graph_.values[r.inputs[2 + k]].shape;
      if (carried[k].shape.size() != decl.size())
        fail(kKernelError, s.label + ": carried value " + std::to_string(k) + " is " + type_str(carried[k]) +
                               ", the body takes rank " + std::to_string(decl.size()));
      for (size_t a = 0; a < decl.size(); ++a)
        if (decl[a].is_symbol() && body.rebound_.count(decl[a].text)) local[decl[a].text] = carried[k].shape[a];
    }
    for (size_t k = 0; k < nc; ++k) {
      const std::vector<Dim>& decl = graph_.values[r.inputs[2 + k]].shape;
      for (size_t a = 0; a < decl.size(); ++a)
        if (decl[a].eval(local) != carried[k].shape[a])
          fail(kKernelError, s.label + ": carried value " + std::to_string(k) + " is " + type_str(carried[k]) +
                                 " at iteration " + std::to_string(i) + ", which its declared type does not admit");
      values[r.inputs[2 + k]] = carried[k];
    }
    if (!f.program) body.enter(values, local, f);  // sizes from symbols bound before the loop
    body.exec(values, local, f.dynamic);
    go = *static_cast<const uint8_t*>(values[body.outputs_[0]].data) != 0;
    for (size_t k = 0; k < nc; ++k) {
      const Tensor& y = values[body.outputs_[1 + k]];
      Buffer& b = spare[2 * k].p == carried[k].data ? spare[2 * k + 1] : spare[2 * k];
      size_t n = y.nbytes();
      if (b.size < n || !b.p) {
        std::free(b.p);
        b.p = nullptr;
        b.p = aligned_buffer(n);
        b.size = n;
      }
      if (n) std::memcpy(b.p, y.data, n);
      carried[k] = Tensor{y.dtype, y.shape, b.p};
    }
    f.release_dynamic();
  }
  std::vector<const Tensor*> ys;
  for (const Tensor& t : carried) ys.push_back(&t);
  finish_control(s, ys, values, env, dynamic, "the loop");
}

}  // namespace castml
