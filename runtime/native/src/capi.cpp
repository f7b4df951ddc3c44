// The C API (castml.h): every entry point catches everything, records the error for the
// calling thread and returns NULL / -1, so nothing C++ ever crosses into C, ctypes or Python.
#include "castml.h"

#include <memory>
#include <new>
#include <string>

#include "gemm.h"
#include "json.h"
#include "model.h"
#include "program.h"

struct castml_model {
  castml::ModelDef def;
  std::vector<std::unique_ptr<castml::Program>> programs;  // parallel to def.entries
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
  for (const auto& [name, g] : m.entries) {
    out += (first_entry ? "" : ",") + castml::json_quote(name) + ":{";
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

castml_model* finish_load(std::shared_ptr<castml::MappedFile> file) {
  auto m = std::make_unique<castml_model>();
  m->def = castml::decode_model(std::move(file));
  for (const auto& entry : m->def.entries) {
    try {
      m->programs.push_back(std::make_unique<castml::Program>(m->def, entry.second));
    } catch (const castml::Error& e) {
      castml::fail(e.kind, (m->def.entries.size() > 1 ? "entry '" + entry.first + "': " : std::string()) + e.message);
    }
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

castml_result* castml_run(const castml_model* model, const char* entry, int n_inputs, const castml_tensor* inputs) {
  return guarded([&]() -> castml_result* {
    if (!model) castml::fail(castml::kInputError, "castml_run: model is NULL");
    std::string name = entry ? entry : "main";
    const castml::Program* program = nullptr;
    std::string known;
    for (size_t k = 0; k < model->def.entries.size(); ++k) {
      if (model->def.entries[k].first == name) program = model->programs[k].get();
      known += (k ? ", " : "") + model->def.entries[k].first;
    }
    if (!program) castml::fail(castml::kInputError, "no entry '" + name + "'; the model has " + known);
    if (n_inputs < 0 || (n_inputs > 0 && !inputs)) castml::fail(castml::kInputError, "castml_run: bad input array");
    std::vector<castml::Tensor> ts(n_inputs);
    for (int k = 0; k < n_inputs; ++k) {
      const castml_tensor& t = inputs[k];
      if (!castml::dtype_valid(t.dtype)) castml::fail(castml::kInputError, "input " + std::to_string(k) + ": bad dtype code");
      if (t.rank < 0 || t.rank > 8 || (t.rank > 0 && !t.shape))
        castml::fail(castml::kInputError, "input " + std::to_string(k) + ": bad rank");
      ts[k].dtype = static_cast<castml::DType>(t.dtype);
      ts[k].shape.assign(t.shape, t.shape + t.rank);
      for (int64_t d : ts[k].shape)
        if (d < 0) castml::fail(castml::kInputError, "input " + std::to_string(k) + ": negative dim");
      ts[k].data = t.data;
      if (!t.data && ts[k].size() > 0) castml::fail(castml::kInputError, "input " + std::to_string(k) + ": data is NULL");
    }
    auto r = std::make_unique<castml_result>();
    r->result = program->run(ts);
    return r.release();
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

}  // extern "C"
