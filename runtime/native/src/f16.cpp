// float16: IEEE binary16 conversions (bit code, F16C where available) and the lowering of
// float16 ops (see f16.h for why most of them run their float32 kernels).
#include "f16.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "loops.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(CASTML_NO_F16C)  // the latter: test the bit code
#include <cpuid.h>
#include <immintrin.h>
#define CASTML_F16C __attribute__((target("avx,f16c")))
#endif

namespace castml {

// ---- one value ---------------------------------------------------------------------------------

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  uint32_t bits;
  if (e == 0) {  // zero or subnormal: m * 2^-24, exact in float
    float v = static_cast<float>(m) * 0x1p-24f;
    return sign ? -v : v;
  }
  if (e == 31) {
    bits = sign | 0x7f800000u | (m ? 0x400000u | (m << 13) : 0u);  // inf, or NaN (quieted, as F16C)
  } else {
    bits = sign | ((e + 112) << 23) | (m << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

namespace {
// Rounds `mant` (with `drop` low bits to remove) to nearest even: the kept bits, maybe carried.
template <class U>
U round_shift(U mant, int drop) {
  const U kept = mant >> drop, rest = mant & ((U(1) << drop) - 1), half = U(1) << (drop - 1);
  return (rest > half || (rest == half && (kept & 1))) ? kept + 1 : kept;
}

// An IEEE binary value (U its bits; kMant mantissa bits, kBias exponent bias) rounded to half.
template <class U, int kMant, int kBias, class F>
uint16_t to_half(F value) {
  U bits;
  std::memcpy(&bits, &value, sizeof bits);
  constexpr int kBits = 8 * sizeof(U), kDrop = kMant - 10;  // mantissa bits a half does not keep
  const uint16_t sign = static_cast<uint16_t>((bits >> (kBits - 16)) & 0x8000u);
  const int e = static_cast<int>((bits >> kMant) & ((U(1) << (kBits - 1 - kMant)) - 1));
  const U mant = bits & ((U(1) << kMant) - 1);
  if (e == (1 << (kBits - 1 - kMant)) - 1 && mant)  // NaN, quieted
    return static_cast<uint16_t>(sign | 0x7e00u | (mant >> kDrop));
  if (e >= kBias + 16) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 2^16: inf
  if (e < kBias - 25) return sign;                                    // < 2^-25: zero
  if (e < kBias - 14)  // a subnormal half (or the smallest normal, by the carry): units of 2^-24
    return static_cast<uint16_t>(sign | round_shift<U>(mant | (U(1) << kMant), kBias - 14 + kDrop - e));
  // normal: a mantissa carry runs into the exponent, up to inf, as it should
  return static_cast<uint16_t>(sign | ((static_cast<U>(e - (kBias - 15)) << 10) + round_shift<U>(mant, kDrop)));
}
}  // namespace

uint16_t float_to_half(float f) { return to_half<uint32_t, 23, 127>(f); }

uint16_t double_to_half(double d) { return to_half<uint64_t, 52, 1023>(d); }

// ---- n values ----------------------------------------------------------------------------------

namespace {
#ifdef CASTML_F16C
bool cpu_has_f16c() {
  static const bool ok = [] {
    // cpuid leaf 1: ECX bit 28 (AVX) and bit 29 (F16C); clang 14 knows no "f16c" feature string
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
    const unsigned osxsave = 1u << 27, avx = 1u << 28, f16c = 1u << 29;
    return (c & osxsave) && (c & avx) && (c & f16c);
  }();
  return ok;
}

// The tails go through an 8-lane buffer, so every element sees the same instruction.
CASTML_F16C void half_to_float_f16c(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  if (i < n) {
    uint16_t in[8] = {0};
    float out[8];
    std::memcpy(in, src + i, (n - i) * sizeof(uint16_t));
    _mm256_storeu_ps(out, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in))));
    std::memcpy(dst + i, out, (n - i) * sizeof(float));
  }
}

CASTML_F16C void float_to_half_f16c(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  if (i < n) {
    float in[8] = {0};
    uint16_t out[8];
    std::memcpy(in, src + i, (n - i) * sizeof(float));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_cvtps_ph(_mm256_loadu_ps(in), _MM_FROUND_TO_NEAREST_INT));
    std::memcpy(dst + i, out, (n - i) * sizeof(uint16_t));
  }
}
#endif
}  // namespace

void half_to_float(const uint16_t* src, float* dst, int64_t n) {
#ifdef CASTML_F16C
  if (cpu_has_f16c()) return half_to_float_f16c(src, dst, n);
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = half_to_float(src[i]);
}

void float_to_half(const float* src, uint16_t* dst, int64_t n) {
#ifdef CASTML_F16C
  if (cpu_has_f16c()) return float_to_half_f16c(src, dst, n);
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = float_to_half(src[i]);
}

void double_to_half(const double* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = double_to_half(src[i]);
}

void convert_f16(const void* src, DType from, void* dst, DType to, int64_t n) {
  constexpr int64_t kChunk = 256;
  float tmp[kChunk];
  if (from == kFloat16) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    if (to == kFloat32) return half_to_float(s, static_cast<float*>(dst), n);
    const size_t item = dtype_size(to);
    for (int64_t i = 0; i < n; i += kChunk) {
      const int64_t m = std::min(kChunk, n - i);
      half_to_float(s + i, tmp, m);
      convert(tmp, kFloat32, static_cast<char*>(dst) + i * item, to, m);
    }
    return;
  }
  if (to != kFloat16) fail(kKernelError, "convert_f16: neither dtype is float16");
  uint16_t* d = static_cast<uint16_t*>(dst);
  if (from == kFloat32) return float_to_half(static_cast<const float*>(src), d, n);
  if (from == kFloat64) return double_to_half(static_cast<const double*>(src), d, n);
  const size_t item = dtype_size(from);
  for (int64_t i = 0; i < n; i += kChunk) {  // integers and bool: through float32, as NumPy
    const int64_t m = std::min(kChunk, n - i);
    convert(static_cast<const char*>(src) + i * item, from, tmp, kFloat32, m);
    float_to_half(tmp, d + i, m);
  }
}

// ---- lowering ----------------------------------------------------------------------------------

namespace {

enum class Path {
  kCopy,     // moves bits: its own kernel; every output (and every concat input) has input 0's dtype
  kDirect,   // its own kernel handles float16 (cast and full through convert)
  kFloat32,  // its float32 kernel on float32 copies, float16 outputs rounded
  kCumsum,   // NumPy's float16 accumulate: rounded to float16 after every addition
};

const std::map<std::string, Path>& paths() {
  static const std::map<std::string, Path> table = [] {
    std::map<std::string, Path> t;
    for (const char* k : {"reshape", "transpose", "broadcast_to", "slice", "pad", "tile", "repeat", "concat", "split",
                          "gather", "stop_gradient"})
      t[k] = Path::kCopy;
    for (const char* k : {"cast", "constant", "full", "shape_dim"}) t[k] = Path::kDirect;
    for (const char* k :
         {// unary math and activations (NumPy's half loops and special.py compute in float32)
          "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sqrt", "cbrt", "sin", "cos", "tan", "asin",
          "acos", "atan", "sinh", "cosh", "tanh", "asinh", "acosh", "atanh", "reciprocal", "erf", "sigmoid",
          "softplus", "softsign", "hard_swish", "gelu", "normal_cdf", "elu", "celu", "selu", "leaky_relu",
          "thresholded_relu", "hard_sigmoid", "floor", "ceil", "trunc", "round", "neg", "abs", "sign", "relu",
          // predicates and comparisons: exact on the float32 values
          "logical_not", "isnan", "isinf", "isfinite", "equal", "not_equal", "less", "less_equal", "greater",
          "greater_equal", "logical_and", "logical_or", "logical_xor", "where",
          // binary arithmetic (NumPy's half loops compute in float32 and round)
          "add", "sub", "mul", "div", "floordiv", "mod", "pow", "maximum", "minimum", "fmax", "fmin", "atan2",
          "hypot", "arange",
          // reductions: max/min/arg exact; sums and products accumulate in double and round once
          "reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin",
          // float32 accumulation rounded once, as NumPy's float16 matmul and runtime/kernels/{conv,nn}.py
          "matmul", "gemm", "conv", "fused_conv", "softmax", "log_softmax", "layer_norm", "batch_norm",
          "instance_norm", "max_pool", "avg_pool", "global_avg_pool", "global_max_pool"})
      t[k] = Path::kFloat32;
    t["cumsum"] = Path::kCumsum;
    return t;
  }();
  return table;
}

// The op as its float32 kernel sees it: its values alone, float16 declared as float32.
struct Float32View {
  GraphDef graph;
  OpDef op;
  Float32View(const OpDef& src, const GraphDef& g) {
    op.kind = src.kind;
    op.attrs = src.attrs;
    op.loc = src.loc;
    op.regions = src.regions;
    auto add = [&](uint32_t v, std::vector<uint32_t>* ids) {
      ids->push_back(static_cast<uint32_t>(graph.values.size()));
      graph.values.push_back(g.values[v]);
      if (graph.values.back().dtype == kFloat16) graph.values.back().dtype = kFloat32;
    };
    for (uint32_t v : src.inputs) add(v, &op.inputs);
    for (uint32_t v : src.outputs) add(v, &op.outputs);
  }
};

// Per-call float32 buffers, freed however the call ends.
struct Buffers {
  std::vector<void*> owned;
  Buffers() = default;
  Buffers(const Buffers&) = delete;
  Buffers& operator=(const Buffers&) = delete;
  ~Buffers() {
    for (void* p : owned) std::free(p);
  }
  float* floats(int64_t n) {
    const size_t bytes = (std::max<size_t>(static_cast<size_t>(n), 1) * sizeof(float) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, bytes);
    if (!p) fail(kKernelError, "out of memory allocating " + std::to_string(bytes) + " bytes of float32 scratch");
    owned.push_back(p);
    return static_cast<float*>(p);
  }
};

// Runs the op's float32 kernel: float16 inputs converted (constants once, into the step's
// cache), float16 outputs computed into float32 buffers and rounded to nearest even.
void run_in_float32(KernelCall& c) {
  const KernelDef& inner = kernels().at(c.op.kind);
  KernelCall call{c.op, c.env, c.model, {}, {}, nullptr, nullptr};
  call.residual = c.residual;
  call.fused_relu = c.fused_relu;
  const size_t ni = c.in.size(), no = c.out.size();
  std::vector<Tensor> ins(ni), outs(no);
  Buffers buffers;
  // constant float16 inputs (weights): converted on the first call, 64-byte aligned each
  std::vector<int64_t> key;
  std::vector<size_t> offset(ni, 0);
  size_t total = 0;
  for (size_t k = 0; k < ni; ++k) {
    const Tensor& t = *c.in[k];
    if (t.dtype != kFloat16 || !c.is_constant(k) || !c.cache) continue;
    key.push_back(reinterpret_cast<int64_t>(t.data));
    key.push_back(t.size());
    offset[k] = total;
    total += (static_cast<size_t>(t.size()) + 15) / 16 * 16;
  }
  const float* cached = nullptr;
  if (total) {
    cached = c.cache->get(key, total, [&](float* out) {
      for (size_t k = 0; k < ni; ++k)
        if (c.in[k]->dtype == kFloat16 && c.is_constant(k))
          half_to_float(c.in[k]->ptr<uint16_t>(), out + offset[k], c.in[k]->size());
    });
  }
  for (size_t k = 0; k < ni; ++k) {
    const Tensor& t = *c.in[k];
    if (t.dtype != kFloat16) {
      call.in.push_back(c.in[k]);
      continue;
    }
    ins[k].dtype = kFloat32;
    ins[k].shape = t.shape;
    if (cached && c.is_constant(k)) {
      ins[k].data = const_cast<float*>(cached + offset[k]);
    } else {
      float* p = buffers.floats(t.size());
      half_to_float(t.ptr<uint16_t>(), p, t.size());
      ins[k].data = p;
    }
    call.in.push_back(&ins[k]);
  }
  for (size_t k = 0; k < no; ++k) {
    Tensor& t = *c.out[k];
    if (t.dtype != kFloat16) {
      call.out.push_back(c.out[k]);
      continue;
    }
    outs[k] = Tensor{kFloat32, t.shape, buffers.floats(t.size())};
    call.out.push_back(&outs[k]);
  }
  inner.run(call);
  for (size_t k = 0; k < no; ++k)
    if (c.out[k]->dtype == kFloat16) float_to_half(outs[k].ptr<float>(), c.out[k]->ptr<uint16_t>(), c.out[k]->size());
}

// np.cumsum(x, axis, dtype=float16): out[0] = x[0], out[j] = half(float(out[j-1]) + float(x[j])).
void cumsum_f16(KernelCall& c) {
  const Tensor& x = *c.in.at(0);
  int axis = norm_axis(c.i("axis", 0), x.rank());
  c.expect_shape(0, x.shape);
  c.expect_dtype(kFloat16, 1);
  int64_t outer, n, inner;
  split_axis(x.shape, axis, &outer, &n, &inner);
  const uint16_t* xp = x.ptr<uint16_t>();
  uint16_t* yp = c.out.at(0)->ptr<uint16_t>();
  for (int64_t o = 0; o < outer && n > 0; ++o) {
    const uint16_t* xr = xp + o * n * inner;
    uint16_t* yr = yp + o * n * inner;
    std::memcpy(yr, xr, static_cast<size_t>(inner) * sizeof(uint16_t));
    for (int64_t j = 1; j < n; ++j)
      for (int64_t i = 0; i < inner; ++i)
        yr[j * inner + i] = float_to_half(half_to_float(yr[(j - 1) * inner + i]) + half_to_float(xr[j * inner + i]));
  }
}

const KernelDef kInFloat32{run_in_float32, nullptr};
const KernelDef kCumsumF16{cumsum_f16, nullptr};

}  // namespace

bool touches_f16(const OpDef& op, const GraphDef& g) {
  for (auto ids : {&op.inputs, &op.outputs})
    for (uint32_t v : *ids)
      if (g.values[v].dtype == kFloat16) return true;
  return false;
}

const KernelDef* checked_kernel(const OpDef& op, const GraphDef& g, const KernelDef& k) {
  if (!touches_f16(op, g)) {
    if (k.check) k.check(op, g);
    return &k;
  }
  auto it = paths().find(op.kind);
  if (it == paths().end()) {  // a kernel that decides on float16 itself (its check refuses it or not)
    if (k.check) k.check(op, g);
    else fail(kUnsupportedError, "native '" + op.kind + "' has no float16 kernel");
    return &k;
  }
  const Path path = it->second;
  if (path == Path::kCumsum) {
    if (op.inputs.size() != 1 || op.outputs.size() != 1 || g.values[op.inputs[0]].dtype != kFloat16 ||
        g.values[op.outputs[0]].dtype != kFloat16)
      fail(kUnsupportedError, "native float16 'cumsum' takes one float16 input to one float16 output");
    return &kCumsumF16;
  }
  if (path == Path::kCopy) {
    if (op.inputs.empty()) fail(kUnsupportedError, "native '" + op.kind + "' needs an input");
    const DType t = g.values[op.inputs[0]].dtype;
    std::vector<uint32_t> same(op.outputs);
    if (op.kind == "concat") same.insert(same.end(), op.inputs.begin(), op.inputs.end());
    for (uint32_t v : same)
      if (g.values[v].dtype != t)
        fail(kUnsupportedError, "native '" + op.kind + "' expects every output in its input's dtype " + dtype_name(t) +
                                    ", got " + dtype_name(g.values[v].dtype));
  }
  if (k.check) {  // the attribute and dtype checks of the kernel, float16 read as float32
    Float32View view(op, g);
    k.check(view.op, view.graph);
  }
  return path == Path::kFloat32 ? &kInFloat32 : &k;
}

}  // namespace castml
