// The kernel interface: one `KernelDef` per op kind, found by name in one table.
//
// Why a `check` next to every `run`: the runtime refuses at load, with the op named, any op it
// cannot execute (a kind, dtype or attribute combination without a native kernel), so
// `backend="auto"` can fall back to NumPy before anything runs. `run` then reads the op's
// attributes (symbolic dims already bound by `env`) and writes into preallocated outputs whose
// shapes come from the declared types; kernels compute their own shape and compare.
#pragma once

#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "common.h"
#include "model.h"

namespace castml {

// What a kernel derives from constant inputs once and reuses on every later call (packed GEMM
// weights): one per step, owned by the Program, filled by the first call under a mutex and
// immutable afterwards, so concurrent runs read it without locking.
class StepCache {
 public:
  StepCache() = default;
  StepCache(const StepCache&) = delete;
  StepCache& operator=(const StepCache&) = delete;
  ~StepCache();
  // The n floats made by fill(64-byte aligned buffer) for `key` (what they derive from: pointers
  // and sizes) on the first call; null when a later call asks with another key (the caller then
  // works uncached).
  template <class Fill>
  const float* get(const std::vector<int64_t>& key, size_t n, Fill&& fill) {
    if (!ready_.load(std::memory_order_acquire)) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!ready_.load(std::memory_order_relaxed)) {
        float* fresh = allocate(n);
        try {
          fill(fresh);
        } catch (...) {
          std::free(fresh);
          throw;
        }
        data_ = fresh;
        key_ = key;
        ready_.store(true, std::memory_order_release);
      }
    }
    return key == key_ ? data_ : nullptr;
  }

 private:
  static float* allocate(size_t n);
  std::mutex mutex_;
  std::atomic<bool> ready_{false};
  std::vector<int64_t> key_;  // written once, before ready_
  float* data_ = nullptr;
};

struct KernelCall {
  const OpDef& op;
  const Env& env;
  const ModelDef& model;
  std::vector<const Tensor*> in;
  std::vector<Tensor*> out;
  StepCache* cache = nullptr;            // this step's cache (null outside a Program)
  const std::vector<uint8_t>* constant = nullptr;  // per input: 1 when it is a constant of the file
  // A conv whose output fed only `add(out, residual)` (then only relu / maximum(., 0) when
  // fused_relu): the Program fused those steps into this one, which writes their result.
  const Tensor* residual = nullptr;
  bool fused_relu = false;

  // Whether input k is a constant of the model (its data never changes between calls).
  bool is_constant(size_t k) const { return constant && k < constant->size() && (*constant)[k]; }

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

// The target of loops compiled a second time for AVX-512 (picked at run time by a CPU check);
// clang takes no prefer-vector-width in a target attribute.
#if defined(__clang__)
#define CASTML_AVX512_TARGET "avx512f,avx512dq,avx512vl,avx512bw,fma"
#else
#define CASTML_AVX512_TARGET "avx512f,avx512dq,avx512vl,avx512bw,fma,prefer-vector-width=512"
#endif
// Whether this CPU runs CASTML_AVX512_TARGET code (x86-64 builds with GCC or clang only).
bool cpu_has_avx512();

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
void register_extra(KernelTable& t);   // kernels_extra.cpp: layout, scatter-style updates, one_hot, prelu, lrn, ...
void register_random(KernelTable& t);  // kernels_random.cpp: counter-based random ops, einsum

// Helpers for checks.
DType value_dtype(const GraphDef& g, uint32_t v);
void require_float(const OpDef& op, const GraphDef& g);  // every input and output f32/f64
void require_no_f16(const OpDef& op, const GraphDef& g);

// Normalized axis (negative counts from the end); throws a kernel error when out of range.
int norm_axis(int64_t axis, int rank);

}  // namespace castml
