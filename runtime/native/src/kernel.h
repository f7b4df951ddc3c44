// The kernel interface: one `KernelDef` per op kind, found by name in one table.
//
// Why a `check` next to every `run`: the runtime refuses at load, with the op named, any op it
// cannot execute (a kind, dtype or attribute combination without a native kernel), so
// `backend="auto"` can fall back to NumPy before anything runs. `run` then reads the op's
// attributes (symbolic dims already bound by `env`) and writes into preallocated outputs whose
// shapes come from the declared types; kernels compute their own shape and compare.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "common.h"
#include "model.h"

namespace castml {

struct KernelCall {
  const OpDef& op;
  const Env& env;
  const ModelDef& model;
  std::vector<const Tensor*> in;
  std::vector<Tensor*> out;

  bool has(const char* name) const { return op.attrs.count(name) > 0; }
  const Attr& attr(const char* name) const;
  int64_t i(const char* name, int64_t dflt) const;
  double f(const char* name, double dflt) const;
  std::string s(const char* name, const std::string& dflt) const;
  std::vector<int64_t> ints(const char* name) const;  // INTS, or DIMS evaluated with env
  std::vector<int64_t> ints_or(const char* name, std::vector<int64_t> dflt) const;
  ConstTensor tensor(const char* name) const;
  // Throws a kernel error unless output k has this shape (the declared type, evaluated).
  void expect_shape(size_t k, const Shape& shape) const;
  // Throws a kernel error unless output k and inputs [0, n_in) have dtype t (kernels that read
  // and write one C++ type rely on it: a file declaring otherwise must not overrun a buffer).
  void expect_dtype(DType t, size_t n_in = 0) const;
};

using KernelFn = void (*)(KernelCall&);
// Throws castml::Error(kUnsupportedError, ...) when the op (dtypes, attributes) is not covered.
using CheckFn = void (*)(const OpDef&, const GraphDef&);

struct KernelDef {
  KernelFn run;
  CheckFn check;  // may be null: every dtype and attribute is handled
};

using KernelTable = std::map<std::string, KernelDef>;
const KernelTable& kernels();

// Registration, one function per kernel family (kernels_*.cpp).
void register_elementwise(KernelTable& t);
void register_binary(KernelTable& t);
void register_shape(KernelTable& t);
void register_reduce(KernelTable& t);
void register_nn(KernelTable& t);
void register_linalg(KernelTable& t);

// Helpers for checks.
DType value_dtype(const GraphDef& g, uint32_t v);
void require_float(const OpDef& op, const GraphDef& g);  // every input and output f32/f64
void require_no_f16(const OpDef& op, const GraphDef& g);

// Normalized axis (negative counts from the end); throws a kernel error when out of range.
int norm_axis(int64_t axis, int rank);

}  // namespace castml
