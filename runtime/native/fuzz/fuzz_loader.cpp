// libFuzzer target for the native loader: every input is a candidate .castml file.
//
// It goes through the C API exactly as a user's file does (castml_load_buffer: verify, decode,
// semantic checks, lowering), then runs every entry whose inputs can be made small (symbols bound
// to 2, zeros) under tight limits, so mutated shapes and attributes reach the kernels' checks.
// A finding is what ASan/UBSan/libFuzzer report (crash, leak, undefined behaviour, timeout,
// out-of-memory) plus two contract breaks trapped here: a refused load whose error kind is not
// "malformed file"/"unsupported op" (an internal error escaped as an exception), and a failure
// with no message. Built by scripts/fuzz_native.sh (CMake option CASTML_FUZZ, clang).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "castml.h"
#include "model.h"

namespace {

void expect(bool ok) {
  if (!ok) __builtin_trap();
}

bool set_tight_limits() {
  castml_limits l;
  castml_get_limits(&l);
  l.max_tensor_bytes = 1 << 24;        // no single value beyond 16 MiB
  l.max_intermediate_bytes = 1 << 26;  // nor 64 MiB alive at once
  return castml_set_limits(&l) == 0;
}

// Zero-filled inputs for the entry's declared types, symbols bound to 2; false when an input dim
// is an expression (no simple binding) or the inputs would be large.
bool make_inputs(const castml::GraphDef& g, std::vector<std::vector<int64_t>>* shapes,
                 std::vector<castml_tensor>* tensors, std::vector<uint8_t>* zeros) {
  size_t biggest = 0;
  for (uint32_t v : g.regions[0].inputs) {
    const castml::ValueDef& vd = g.values[v];
    std::vector<int64_t> shape;
    uint64_t n = 1;
    for (const castml::Dim& d : vd.shape) {
      if (!d.is_static() && !d.is_symbol()) return false;
      int64_t size = d.is_static() ? d.size : 2;
      if (size < 0 || size > 4096 || (n *= static_cast<uint64_t>(size)) > (1u << 16)) return false;
      shape.push_back(size);
    }
    biggest = std::max<size_t>(biggest, n * castml::dtype_size(vd.dtype));
    shapes->push_back(std::move(shape));
  }
  zeros->assign(biggest + 64, 0);
  for (size_t k = 0; k < shapes->size(); ++k) {
    const castml::ValueDef& vd = g.values[g.regions[0].inputs[k]];
    (*tensors).push_back({static_cast<int32_t>(vd.dtype), static_cast<int32_t>((*shapes)[k].size()),
                          (*shapes)[k].data(), zeros->data()});
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool limited = set_tight_limits();
  expect(limited);
  castml_model* m = castml_load_buffer(data, size);
  if (!m) {
    int kind = castml_last_error_kind();
    expect(kind == CASTML_ERR_FORMAT || kind == CASTML_ERR_UNSUPPORTED);
    expect(castml_last_error()[0] != '\0');
    return 0;
  }
  expect(castml_describe(m)[0] == '{');
  // the load succeeded, so decoding again does too; it gives the entries' declared input types
  castml::ModelDef def = castml::decode_model(castml::MappedFile::copy_of(data, size));
  for (const auto& [name, g] : def.entries) {
    // its memory plan with the symbols bound to 2: a plan, or an error that says why
    std::vector<const char*> symbols;
    for (uint32_t v : g.regions[0].inputs)
      for (const castml::Dim& d : g.values[v].shape)
        if (d.is_symbol() && std::find_if(symbols.begin(), symbols.end(), [&](const char* s) { return d.text == s; }) ==
                                 symbols.end())
          symbols.push_back(d.text.c_str());
    std::vector<int64_t> twos(symbols.size(), 2);
    const char* plan = castml_memory_plan(m, name.c_str(), static_cast<int>(symbols.size()), symbols.data(), twos.data());
    expect(plan ? plan[0] == '{' : castml_last_error()[0] != '\0');
    std::vector<std::vector<int64_t>> shapes;
    std::vector<castml_tensor> tensors;
    std::vector<uint8_t> zeros;
    if (!make_inputs(g, &shapes, &tensors, &zeros)) continue;
    castml_result* r = castml_run(m, name.c_str(), static_cast<int>(tensors.size()), tensors.data());
    if (!r) {
      expect(castml_last_error()[0] != '\0');
      continue;
    }
    castml_tensor out;
    for (int k = 0; k < castml_result_count(r); ++k) expect(castml_result_get(r, k, &out) == 0);
    castml_result_free(r);
  }
  castml_free(m);
  return 0;
}
