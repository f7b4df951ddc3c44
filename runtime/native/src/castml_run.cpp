// castml-run: run a .castml model on .npy inputs and write the outputs to an .npz, with no
// Python anywhere.
//
//   castml-run model.castml x.npy [more.npy ...] -o out.npz [--entry NAME]
//
// Inputs are the entry's flat input leaves in order; the .npz holds one array per output leaf,
// named by its dotted leaf name. Exit status: 0 ok, 1 bad model or inputs, 2 usage.
#include <cstdio>
#include <string>
#include <vector>

#include "castml.h"
#include "npy.h"

namespace {

int usage() {
  std::fprintf(stderr, "usage: castml-run model.castml [input.npy ...] -o out.npz [--entry NAME]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path, out_path, entry = "main";
  std::vector<std::string> inputs;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-o" || a == "--output") {
      if (++i >= argc) return usage();
      out_path = argv[i];
    } else if (a == "--entry") {
      if (++i >= argc) return usage();
      entry = argv[i];
    } else if (a == "-h" || a == "--help") {
      usage();
      return 0;
    } else if (model_path.empty()) {
      model_path = a;
    } else {
      inputs.push_back(a);
    }
  }
  if (model_path.empty() || out_path.empty()) return usage();
  castml_model* model = castml_load(model_path.c_str());
  if (!model) {
    std::fprintf(stderr, "castml-run: %s\n", castml_last_error());
    return 1;
  }
  int n_in = castml_io_count(model, entry.c_str(), 0);
  if (n_in < 0) {
    std::fprintf(stderr, "castml-run: the model has no entry '%s'\n", entry.c_str());
    castml_free(model);
    return 1;
  }
  if (static_cast<int>(inputs.size()) != n_in) {
    std::fprintf(stderr, "castml-run: entry '%s' takes %d inputs (", entry.c_str(), n_in);
    for (int i = 0; i < n_in; ++i) std::fprintf(stderr, "%s%s", i ? ", " : "", castml_io_name(model, entry.c_str(), 0, i));
    std::fprintf(stderr, "), got %zu\n", inputs.size());
    castml_free(model);
    return 1;
  }
  int status = 0;
  try {
    std::vector<castml::NpyArray> arrays;
    for (const std::string& p : inputs) arrays.push_back(castml::read_npy(p));
    std::vector<castml_tensor> ts;
    for (auto& a : arrays)
      ts.push_back({static_cast<int32_t>(a.dtype), static_cast<int32_t>(a.shape.size()), a.shape.data(), a.data.data()});
    castml_result* r = castml_run(model, entry.c_str(), static_cast<int>(ts.size()), ts.data());
    if (!r) {
      std::fprintf(stderr, "castml-run: %s\n", castml_last_error());
      status = 1;
    } else {
      std::vector<std::pair<std::string, castml::Tensor>> outs;
      for (int i = 0; i < castml_result_count(r); ++i) {
        castml_tensor t;
        castml_result_get(r, i, &t);
        castml::Tensor ct;
        ct.dtype = static_cast<castml::DType>(t.dtype);
        ct.shape.assign(t.shape, t.shape + t.rank);
        ct.data = t.data;
        outs.emplace_back(castml_io_name(model, entry.c_str(), 1, i), ct);
      }
      castml::write_npz(out_path, outs);
      castml_result_free(r);
    }
  } catch (const castml::Error& e) {
    std::fprintf(stderr, "castml-run: %s\n", e.message.c_str());
    status = 1;
  }
  castml_free(model);
  return status;
}
