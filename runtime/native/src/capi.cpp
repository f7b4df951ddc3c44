// The C API (castml.h): every entry point catches everything, records the error for the
// calling thread and returns NULL / -1, so nothing C++ ever crosses into C, ctypes or Python.
#include "castml.h"

#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <set>
#include <string>

#include "gemm.h"
#include "json.h"
#include "model.h"
#include "program.h"

// The run-time limits checked for one entry: its values' declared types and live intervals,
// as runtime/session.py's `_Entry.plan` (step outputs of the body, constants excluded).
struct PlannedValue {
  uint32_t value;
  size_t first, last;
};

struct EntryLimits {
  std::vector<PlannedValue> plan;
  std::mutex mutex;  // guards the cache below
  uint64_t generation = ~uint64_t{0};
  std::set<std::vector<int64_t>> checked;  // input shapes already checked under `generation`
};

struct castml_model {
  castml::ModelDef def;
  std::vector<std::unique_ptr<castml::Program>> programs;  // parallel to def.entries
  std::vector<std::unique_ptr<EntryLimits>> limits;        // parallel to def.entries
  std::string description;
};

struct castml_result {
  std::unique_ptr<castml::Result> result;
};

namespace {

thread_local std::string g_error;
thread_local int g_error_kind = CASTML_OK;

void set_error(int kind, const std::string& message) {
  g_error_kind = kind;
  g_error = message;
}

template <class F>
auto guarded(F&& f) -> decltype(f()) {
  set_error(CASTML_OK, "");
  try {
    return f();
  } catch (const castml::Error& e) {
    set_error(e.kind, e.message);
  } catch (const std::bad_alloc&) {
    set_error(CASTML_ERR_KERNEL, "out of memory");
  } catch (const std::exception& e) {
    set_error(CASTML_ERR_KERNEL, std::string("internal error: ") + e.what());
  } catch (...) {
    set_error(CASTML_ERR_KERNEL, "internal error");
  }
  return decltype(f())();
}

std::string dim_json(const castml::Dim& d) {
  return d.is_static() ? std::to_string(d.size) : castml::json_quote(d.text);
}

std::string describe(const castml::ModelDef& m) {
  std::string out = "{";
  bool first_entry = true;
  for (const auto& entry : m.entries) {
    const castml::GraphDef& g = entry.second;  // (a structured binding cannot be captured in C++17)
    out += (first_entry ? "" : ",") + castml::json_quote(entry.first) + ":{";
    first_entry = false;
    auto tensors = [&](const std::vector<uint32_t>& ids, const std::vector<std::string>& names) {
      std::string s = "[";
      for (size_t k = 0; k < ids.size(); ++k) {
        const castml::ValueDef& v = g.values[ids[k]];
        s += (k ? "," : "") + std::string("{\"name\":") + castml::json_quote(names[k]) + ",\"dtype\":" +
             castml::json_quote(castml::dtype_name(v.dtype)) + ",\"shape\":[";
        for (size_t a = 0; a < v.shape.size(); ++a) s += (a ? "," : "") + dim_json(v.shape[a]);
        s += "]}";
      }
      return s + "]";
    };
    out += "\"inputs\":" + tensors(g.regions[0].inputs, g.input_names);
    out += ",\"outputs\":" + tensors(g.regions[0].outputs, g.output_names);
    out += ",\"in_tree\":" + castml::json_quote(g.in_tree) + ",\"out_tree\":" + castml::json_quote(g.out_tree);
    out += ",\"arg_names\":[";
    for (size_t k = 0; k < g.arg_names.size(); ++k) out += (k ? "," : "") + castml::json_quote(g.arg_names[k]);
    out += "],\"metadata\":{";
    for (size_t k = 0; k < g.metadata.size(); ++k)
      out += (k ? "," : "") + castml::json_quote(g.metadata[k].first) + ":" + castml::json_quote(g.metadata[k].second);
    out += "}}";
  }
  return out + "}";
}

// Values a region reads, nested regions included (what `Region.captured()` gives Python).
void region_reads(const castml::GraphDef& g, uint32_t k, std::set<uint32_t>* out) {
  for (const castml::OpDef& op : g.regions[k].ops) {
    out->insert(op.inputs.begin(), op.inputs.end());
    for (uint32_t sub : op.regions) region_reads(g, sub, out);
  }
  out->insert(g.regions[k].outputs.begin(), g.regions[k].outputs.end());
}

// runtime/memory.py's _lifetimes over the body: value -> [defining op, last op reading it];
// graph outputs live to the end.
std::vector<PlannedValue> plan_of(const castml::GraphDef& g) {
  const castml::RegionDef& body = g.regions[0];
  std::map<uint32_t, size_t> index;  // value -> position in `plan`
  std::vector<PlannedValue> plan;
  for (size_t i = 0; i < body.ops.size(); ++i) {
    const castml::OpDef& op = body.ops[i];
    std::set<uint32_t> used(op.inputs.begin(), op.inputs.end());
    for (uint32_t sub : op.regions) region_reads(g, sub, &used);
    for (uint32_t v : used) {
      auto it = index.find(v);
      if (it != index.end()) plan[it->second].last = i;
    }
    if (op.kind == "constant") continue;
    for (uint32_t v : op.outputs) {
      index[v] = plan.size();
      plan.push_back({v, i, i});
    }
  }
  for (uint32_t v : body.outputs) {
    auto it = index.find(v);
    if (it != index.end()) plan[it->second].last = body.ops.size();
  }
  return plan;
}

std::string type_text(const castml::ValueDef& v) {
  std::string s = std::string(castml::dtype_name(v.dtype)) + "[";
  for (size_t a = 0; a < v.shape.size(); ++a)
    s += (a ? "," : "") + (v.shape[a].is_static() ? std::to_string(v.shape[a].size) : v.shape[a].text);
  return s + "]";
}

// runtime.limits.check_plan with the same messages: every planned value within max_tensor_bytes,
// the values alive at once within max_intermediate_bytes. Symbols are bound from the inputs as
// Program::run binds them; a binding it would refuse is left to it (it says why).
void check_run_limits(const std::string& entry, const castml::GraphDef& g, EntryLimits& el,
                      const std::vector<castml::Tensor>& inputs) {
  castml::Limits lim = castml::current_limits();
  std::vector<int64_t> key;
  for (const castml::Tensor& t : inputs) {
    key.push_back(-1 - t.rank());  // a separator no dim can equal
    key.insert(key.end(), t.shape.begin(), t.shape.end());
  }
  uint64_t generation = castml::limits_generation();
  {
    std::lock_guard<std::mutex> lock(el.mutex);
    if (el.generation == generation && el.checked.count(key)) return;
  }
  const castml::RegionDef& body = g.regions[0];
  if (inputs.size() != body.inputs.size()) return;
  castml::Env env;
  std::string env_text;  // as Python prints the dict: {'n': 4, 'm': 3}, in binding order
  for (size_t k = 0; k < inputs.size(); ++k) {
    const castml::ValueDef& vd = g.values[body.inputs[k]];
    if (vd.shape.size() != inputs[k].shape.size()) return;
    for (size_t a = 0; a < vd.shape.size(); ++a) {
      if (!vd.shape[a].is_symbol()) continue;
      auto [it, inserted] = env.emplace(vd.shape[a].text, inputs[k].shape[a]);
      if (!inserted && it->second != inputs[k].shape[a]) return;
      if (inserted) env_text += (env_text.empty() ? "'" : ", '") + it->first + "': " + std::to_string(it->second);
    }
  }
  env_text = "{" + env_text + "}";
  std::string where = "entry '" + entry + "'";
  std::map<size_t, __int128> delta;
  for (const PlannedValue& p : el.plan) {
    const castml::ValueDef& vd = g.values[p.value];
    unsigned __int128 n = 1;
    bool known = true;
    for (const castml::Dim& d : vd.shape) {
      int64_t size;
      try {
        size = d.eval(env);
      } catch (const castml::Error&) {
        known = false;  // a data-dependent dim: nothing to check before running
        break;
      }
      if (size < 0) return;  // Program::run refuses these inputs, naming the value
      if (size == 0 || n <= (~static_cast<unsigned __int128>(0) >> 64))  // (no overflow: n < 2**65 after)
        n = size == 0 ? 0 : n * static_cast<uint64_t>(size);
    }
    if (!known) continue;
    unsigned __int128 nbytes = n * castml::dtype_size(vd.dtype);
    if (nbytes > lim.max_tensor_bytes) {
      std::string shown = nbytes >> 64 ? "over 2**64" : std::to_string(static_cast<uint64_t>(nbytes));
      castml::fail(castml::kInputError, where + ": a value of type " + type_text(vd) + " would take " + shown +
                                            " bytes with " + env_text + ", more than max_tensor_bytes = " +
                                            std::to_string(lim.max_tensor_bytes) + " (" +
                                            castml::how_to_raise("max_tensor_bytes") + ")");
    }
    delta[p.first] += static_cast<__int128>(nbytes);
    delta[p.last + 1] -= static_cast<__int128>(nbytes);
  }
  __int128 live = 0;
  for (const auto& [step, change] : delta) {
    live += change;
    if (live > static_cast<__int128>(lim.max_intermediate_bytes))
      castml::fail(castml::kInputError,
                   where + ": " + std::to_string(static_cast<uint64_t>(live)) +
                       " bytes of intermediate values alive at once (at step " + std::to_string(step) +
                       "), more than max_intermediate_bytes = " + std::to_string(lim.max_intermediate_bytes) + " (" +
                       castml::how_to_raise("max_intermediate_bytes") + ")");
  }
  std::lock_guard<std::mutex> lock(el.mutex);
  if (el.generation != generation) {
    el.checked.clear();
    el.generation = generation;
  }
  if (el.checked.size() > 1024) el.checked.clear();
  el.checked.insert(std::move(key));
}

castml_model* finish_load(std::shared_ptr<castml::MappedFile> file) {
  auto m = std::make_unique<castml_model>();
  m->def = castml::decode_model(std::move(file));
  for (const auto& entry : m->def.entries) {
    try {
      m->programs.push_back(std::make_unique<castml::Program>(m->def, entry.second));
    } catch (const castml::Error& e) {
      castml::fail(e.kind, (m->def.entries.size() > 1 ? "entry '" + entry.first + "': " : std::string()) + e.message);
    } catch (const std::bad_alloc&) {
      throw;
    } catch (const std::exception& e) {
      // a kernel's load-time check tripped over an op form it does not expect (e.g. no inputs,
      // found by fuzzing): this runtime cannot run the graph, the NumPy backend decides
      castml::fail(castml::kUnsupportedError, "entry '" + entry.first + "': the native runtime cannot lower this graph (" +
                                                   e.what() + ")");
    }
    m->limits.push_back(std::make_unique<EntryLimits>());
    m->limits.back()->plan = plan_of(entry.second);
  }
  m->description = describe(m->def);
  return m.release();
}

}  // namespace

extern "C" {

castml_model* castml_load(const char* path) {
  return guarded([&]() -> castml_model* {
    if (!path) castml::fail(castml::kIOError, "castml_load: path is NULL");
    return finish_load(castml::MappedFile::open(path));
  });
}

castml_model* castml_load_buffer(const void* data, size_t size) {
  return guarded([&]() -> castml_model* {
    if (!data && size) castml::fail(castml::kIOError, "castml_load_buffer: data is NULL");
    return finish_load(castml::MappedFile::copy_of(data, size));
  });
}

void castml_free(castml_model* model) { delete model; }

const char* castml_describe(const castml_model* model) { return model ? model->description.c_str() : "{}"; }

static const castml::GraphDef* find_entry(const castml_model* model, const char* entry) {
  if (!model) return nullptr;
  std::string name = entry ? entry : "main";
  for (const auto& e : model->def.entries)
    if (e.first == name) return &e.second;
  return nullptr;
}

int castml_io_count(const castml_model* model, const char* entry, int output) {
  const castml::GraphDef* g = find_entry(model, entry);
  if (!g) return -1;
  return static_cast<int>(output ? g->output_names.size() : g->input_names.size());
}

const char* castml_io_name(const castml_model* model, const char* entry, int output, int i) {
  const castml::GraphDef* g = find_entry(model, entry);
  if (!g) return nullptr;
  const auto& names = output ? g->output_names : g->input_names;
  if (i < 0 || static_cast<size_t>(i) >= names.size()) return nullptr;
  return names[i].c_str();
}

// The index of entry `entry` (NULL: "main") of the model, or an input error naming the entries.
static size_t entry_index(const castml_model* model, const char* entry, const char* caller) {
  if (!model) castml::fail(castml::kInputError, std::string(caller) + ": model is NULL");
  std::string name = entry ? entry : "main", known;
  for (size_t k = 0; k < model->def.entries.size(); ++k) {
    if (model->def.entries[k].first == name) return k;
    known += (k ? ", " : "") + model->def.entries[k].first;
  }
  castml::fail(castml::kInputError, "no entry '" + name + "'; the model has " + known);
}

castml_result* castml_run(const castml_model* model, const char* entry, int n_inputs, const castml_tensor* inputs) {
  return guarded([&]() -> castml_result* {
    const size_t index = entry_index(model, entry, "castml_run");
    const std::string& name = model->def.entries[index].first;
    const castml::Program* program = model->programs[index].get();
    EntryLimits* limits = model->limits[index].get();
    if (n_inputs < 0 || (n_inputs > 0 && !inputs)) castml::fail(castml::kInputError, "castml_run: bad input array");
    std::vector<castml::Tensor> ts(n_inputs);
    for (int k = 0; k < n_inputs; ++k) {
      const castml_tensor& t = inputs[k];
      if (!castml::dtype_valid(t.dtype)) castml::fail(castml::kInputError, "input " + std::to_string(k) + ": bad dtype code");
      if (t.rank < 0 || t.rank > 64 || (t.rank > 0 && !t.shape))
        castml::fail(castml::kInputError, "input " + std::to_string(k) + ": bad rank");
      ts[k].dtype = static_cast<castml::DType>(t.dtype);
      ts[k].shape.assign(t.shape, t.shape + t.rank);
      for (int64_t d : ts[k].shape)
        if (d < 0) castml::fail(castml::kInputError, "input " + std::to_string(k) + ": negative dim");
      ts[k].data = t.data;
      if (!t.data && ts[k].size() > 0) castml::fail(castml::kInputError, "input " + std::to_string(k) + ": data is NULL");
    }
    check_run_limits(name, program->graph(), *limits, ts);
    auto r = std::make_unique<castml_result>();
    r->result = program->run(ts);
    return r.release();
  });
}

const char* castml_memory_plan(const castml_model* model, const char* entry, int n_symbols, const char* const* names,
                               const int64_t* values) {
  return guarded([&]() -> const char* {
    const size_t index = entry_index(model, entry, "castml_memory_plan");
    if (n_symbols < 0 || (n_symbols > 0 && (!names || !values)))
      castml::fail(castml::kInputError, "castml_memory_plan: bad symbol arrays");
    castml::Env env;
    for (int k = 0; k < n_symbols; ++k) {
      if (!names[k]) castml::fail(castml::kInputError, "castml_memory_plan: symbol name " + std::to_string(k) + " is NULL");
      env[names[k]] = values[k];
    }
    const castml::GraphDef& g = model->def.entries[index].second;
    std::string missing, example;
    std::set<std::string> seen;
    for (uint32_t v : g.regions[0].inputs)
      for (const castml::Dim& d : g.values[v].shape)
        if (d.is_symbol() && !env.count(d.text) && seen.insert(d.text).second) {
          missing += (missing.empty() ? "" : ", ") + d.text;
          example += (example.empty() ? "" : ", ") + d.text + "=1";
        }
    if (!missing.empty())
      castml::fail(castml::kInputError, "memory_plan needs a value for every input symbol (" + missing +
                                            "); e.g. memory_plan(" + example + ")");
    const castml::Program::MemoryReport r = model->programs[index]->memory_report(env);
    thread_local std::string json;
    json = "{\"arena_bytes\": " + std::to_string(r.arena_bytes) + ", \"output_bytes\": " + std::to_string(r.output_bytes) +
           ", \"lower_bound_bytes\": " + std::to_string(r.lower_bound_bytes) + ", \"arena\": [";
    for (size_t k = 0; k < r.arena.size(); ++k) {
      const auto& [v, offset, bytes, first, last] = r.arena[k];
      json += std::string(k ? ", " : "") + "[" + std::to_string(v) + ", " + std::to_string(offset) + ", " +
              std::to_string(bytes) + ", " + std::to_string(first) + ", " + std::to_string(last) + "]";
    }
    json += "], \"unknown\": [";
    for (size_t k = 0; k < r.unknown.size(); ++k) json += (k ? ", " : "") + std::to_string(r.unknown[k]);
    json += "]}";
    return json.c_str();
  });
}

int castml_result_count(const castml_result* result) {
  return result ? static_cast<int>(result->result->outputs.size()) : 0;
}

int castml_result_get(const castml_result* result, int i, castml_tensor* out) {
  if (!result || !out || i < 0 || i >= castml_result_count(result)) return -1;
  const castml::Tensor& t = result->result->outputs[i];
  out->dtype = t.dtype;
  out->rank = t.rank();
  out->shape = t.shape.data();
  out->data = t.data;
  return 0;
}

void castml_result_free(castml_result* result) { delete result; }

const char* castml_last_error(void) { return g_error.c_str(); }

int castml_last_error_kind(void) { return g_error_kind; }

void castml_set_num_threads(int n) { castml::set_gemm_threads(n); }

const char* castml_kernel_names(void) {
  static const std::string names = [] {
    std::string s;
    for (const auto& kv : castml::kernels()) s += (s.empty() ? "" : ",") + kv.first;
    return s;
  }();
  return names.c_str();
}

const char* castml_blas(void) { return castml::blas_name(); }

void castml_get_limits(castml_limits* out) {
  if (!out) return;
  castml::Limits l;
  try {
    l = castml::current_limits();
  } catch (const castml::Error&) {  // a malformed CASTML_MAX_* variable: the defaults
  }
  *out = {l.max_rank, l.max_ops, l.max_region_depth, l.max_file_bytes, l.max_tensor_bytes,
          l.max_intermediate_bytes, l.max_loop_iterations};
}

int castml_set_limits(const castml_limits* limits) {
  set_error(CASTML_OK, "");
  if (!limits) {
    set_error(CASTML_ERR_INPUT, "castml_set_limits: limits is NULL");
    return -1;
  }
  castml::Limits l;
  l.max_rank = limits->max_rank;
  l.max_ops = limits->max_ops;
  l.max_region_depth = limits->max_region_depth;
  l.max_file_bytes = limits->max_file_bytes;
  l.max_tensor_bytes = limits->max_tensor_bytes;
  l.max_intermediate_bytes = limits->max_intermediate_bytes;
  l.max_loop_iterations = limits->max_loop_iterations;
  castml::set_limits(l);
  return 0;
}

}  // extern "C"
