// Elementwise kernels with NumPy semantics: unary math and activations, binary arithmetic and
// comparisons with broadcasting, where, cast. Inputs whose dtype differs from the dtype an op
// computes in (an int input of exp, an int32 operand of an int64 add) are converted first,
// which is what NumPy's ufunc type resolution does.
#include <cmath>
#include <type_traits>

#include "f16.h"
#include "kernel.h"
#include "loops.h"
#include "vecmath.h"

namespace castml {

// ---- shared helpers (declared in loops.h) --------------------------------------------------------

Shape broadcast_shape(const Shape& a, const Shape& b) {
  size_t r = std::max(a.size(), b.size());
  Shape out(r);
  for (size_t i = 0; i < r; ++i) {
    int64_t x = i < r - a.size() ? 1 : a[i - (r - a.size())];
    int64_t y = i < r - b.size() ? 1 : b[i - (r - b.size())];
    if (x != y && x != 1 && y != 1)
      fail(kKernelError, "shapes " + shape_str(a) + " and " + shape_str(b) + " do not broadcast");
    out[i] = x == 1 ? y : x;
  }
  return out;
}

void broadcast_copy(const Tensor& src, Tensor& dst) {
  size_t item = dtype_size(dst.dtype);
  const char* sp = static_cast<const char*>(src.data);
  char* dp = static_cast<char*>(dst.data);
  for_each_row<1>(dst.shape, {&src.shape}, [&](int64_t o, std::array<int64_t, 1> off, int64_t n, std::array<int64_t, 1> st) {
    if (st[0] == 1) {
      std::memcpy(dp + o * item, sp + off[0] * item, n * item);
    } else {
      for (int64_t i = 0; i < n; ++i) std::memcpy(dp + (o + i) * item, sp + (off[0] + i * st[0]) * item, item);
    }
  });
}

namespace {
template <class To, class From>
To convert_one(From v) {
  if constexpr (std::is_same_v<To, bool>) {
    return v != From(0);
  } else if constexpr (std::is_floating_point_v<From> && std::is_integral_v<To>) {
    // NumPy leaves out-of-range float -> int undefined; saturate instead of invoking C++ UB
    if (!(v == v)) return To(0);
    double d = static_cast<double>(v);
    if (d <= static_cast<double>(std::numeric_limits<To>::min())) return std::numeric_limits<To>::min();
    if (d >= static_cast<double>(std::numeric_limits<To>::max())) return std::numeric_limits<To>::max();
    return static_cast<To>(v);
  } else {
    return static_cast<To>(v);
  }
}
}  // namespace

void convert(const void* src, DType from, void* dst, DType to, int64_t n) {
  if (from == to) {
    std::memcpy(dst, src, static_cast<size_t>(n) * dtype_size(from));
    return;
  }
  if (from == kFloat16 || to == kFloat16) return convert_f16(src, from, dst, to, n);  // f16.cpp
  dispatch_all(from, [&](auto f) {
    using F = decltype(f);
    dispatch_all(to, [&](auto t) {
      using T = decltype(t);
      const F* s = static_cast<const F*>(src);
      T* d = static_cast<T*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = convert_one<T>(s[i]);
    });
  });
}

const void* as_dtype(const Tensor& t, DType to, std::vector<uint8_t>& scratch) {
  if (t.dtype == to) return t.data;
  scratch.resize(static_cast<size_t>(t.size()) * dtype_size(to) + 1);
  convert(t.data, t.dtype, scratch.data(), to, t.size());
  return scratch.data();
}

namespace {

// ---- unary ---------------------------------------------------------------------------------------

// y = f(x) computed in y's float dtype (x converted first when it is not).
template <class F>
void map_float(KernelCall& c, F&& f) {
  const Tensor& x = *c.in.at(0);
  Tensor& y = *c.out.at(0);
  c.expect_shape(0, x.shape);
  std::vector<uint8_t> scratch;
  const void* xd = as_dtype(x, y.dtype, scratch);
  dispatch_float(y.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(xd);
    T* yp = y.ptr<T>();
    int64_t n = y.size();
    for (int64_t i = 0; i < n; ++i) yp[i] = static_cast<T>(f(xp[i]));
  });
}

// y = f(x) for any number dtype, computed in y's dtype.
template <class F>
void map_number(KernelCall& c, F&& f) {
  const Tensor& x = *c.in.at(0);
  Tensor& y = *c.out.at(0);
  c.expect_shape(0, x.shape);
  std::vector<uint8_t> scratch;
  const void* xd = as_dtype(x, y.dtype, scratch);
  dispatch_number(y.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(xd);
    T* yp = y.ptr<T>();
    int64_t n = y.size();
    for (int64_t i = 0; i < n; ++i) yp[i] = static_cast<T>(f(xp[i]));
  });
}

// bool y = pred(x), x in its own dtype.
template <class F>
void map_predicate(KernelCall& c, F&& pred) {
  const Tensor& x = *c.in.at(0);
  Tensor& y = *c.out.at(0);
  c.expect_shape(0, x.shape);
  c.expect_dtype(kBool);
  dispatch_all(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.ptr<T>();
    bool* yp = y.ptr<bool>();
    for (int64_t i = 0, n = y.size(); i < n; ++i) yp[i] = pred(xp[i]);
  });
}

void check_float_out(const OpDef& op, const GraphDef& g) {
  DType t = value_dtype(g, op.outputs.at(0));
  if (t != kFloat32 && t != kFloat64)
    fail(kUnsupportedError, "native '" + op.kind + "' computes float32/float64 only, got " + dtype_name(t));
  require_no_f16(op, g);
}

void check_number(const OpDef& op, const GraphDef& g) {
  require_no_f16(op, g);
  if (value_dtype(g, op.outputs.at(0)) == kBool) fail(kUnsupportedError, "native '" + op.kind + "' has no bool kernel");
}

template <class T>
[[gnu::always_inline]] inline T sigmoid_of(T v) {
  T e = fast_exp(-std::abs(v));
  return (v >= 0 ? T(1) : e) / (T(1) + e);
}

// the standard normal CDF; exact GELU is v * normal_cdf(v), as in runtime/kernels/special.py
double normal_cdf(double v) { return 0.5 * std::erfc(-v * M_SQRT1_2); }
[[gnu::always_inline]] inline float normal_cdf(float v) { return 0.5f * fast_erfc(-v * static_cast<float>(M_SQRT1_2)); }
double gelu_erf(double v) { return v * normal_cdf(v); }
[[gnu::always_inline]] inline float gelu_erf(float v) { return v * normal_cdf(v); }

double gelu_tanh(double v) {
  const double k = std::sqrt(2.0 / M_PI);
  return 0.5 * v * (1.0 + std::tanh(k * (v + 0.044715 * v * v * v)));
}

template <class T>
T elu_like(T v, double alpha, double scale, double gamma) {
  // selu/elu/celu: gamma * (v > 0 ? v : alpha * (exp(v * scale) - 1))
  return static_cast<T>(v > 0 ? gamma * v : gamma * alpha * std::expm1(static_cast<double>(v) * scale));
}

#define FLOAT_UNARY(name, expr) \
  t[name] = {[](KernelCall& c) { map_float(c, [](auto v) { return expr; }); }, check_float_out};

// floor/ceil/trunc/round: integer outputs (NumPy 2 keeps ints for ints) are a copy
template <class F>
void rounding(KernelCall& c, F f) {
  if (!is_float(c.out.at(0)->dtype)) {
    c.expect_shape(0, c.in.at(0)->shape);
    convert(c.in.at(0)->data, c.in.at(0)->dtype, c.out.at(0)->data, c.out.at(0)->dtype, c.in.at(0)->size());
  } else {
    map_float(c, f);
  }
}

void register_unary(KernelTable& t) {
  using std::abs;
  FLOAT_UNARY("exp", fast_exp(v))
  FLOAT_UNARY("exp2", std::exp2(v))
  FLOAT_UNARY("expm1", std::expm1(v))
  FLOAT_UNARY("log", std::log(v))
  FLOAT_UNARY("log2", std::log2(v))
  FLOAT_UNARY("log10", std::log10(v))
  FLOAT_UNARY("log1p", std::log1p(v))
  FLOAT_UNARY("sqrt", std::sqrt(v))
  FLOAT_UNARY("cbrt", std::cbrt(v))
  FLOAT_UNARY("sin", std::sin(v))
  FLOAT_UNARY("cos", std::cos(v))
  FLOAT_UNARY("tan", std::tan(v))
  FLOAT_UNARY("asin", std::asin(v))
  FLOAT_UNARY("acos", std::acos(v))
  FLOAT_UNARY("atan", std::atan(v))
  FLOAT_UNARY("sinh", std::sinh(v))
  FLOAT_UNARY("cosh", std::cosh(v))
  FLOAT_UNARY("tanh", std::tanh(v))
  FLOAT_UNARY("asinh", std::asinh(v))
  FLOAT_UNARY("acosh", std::acosh(v))
  FLOAT_UNARY("atanh", std::atanh(v))
  FLOAT_UNARY("reciprocal", decltype(v)(1) / v)
  FLOAT_UNARY("erf", std::erf(static_cast<double>(v)))
  FLOAT_UNARY("normal_cdf", normal_cdf(v))
  FLOAT_UNARY("sigmoid", sigmoid_of(v))
  FLOAT_UNARY("softplus", std::log1p(std::exp(-abs(v))) + (v > 0 ? v : decltype(v)(0)))
  FLOAT_UNARY("softsign", v / (decltype(v)(1) + abs(v)))
  FLOAT_UNARY("hard_swish", v * std::fmax(decltype(v)(0), std::fmin(decltype(v)(1), v / decltype(v)(6) + decltype(v)(0.5))))
  t["gelu"] = {[](KernelCall& c) {
                 std::string mode = c.s("approximate", "none");
                 if (mode == "tanh") {
                   map_float(c, [](auto v) { return gelu_tanh(static_cast<double>(v)); });
                 } else if (mode == "none") {
                   map_float(c, [](auto v) { return gelu_erf(v); });
                 } else {
                   fail(kKernelError, "gelu: approximate must be 'none' or 'tanh', got '" + mode + "'");
                 }
               },
               check_float_out};
  t["elu"] = {[](KernelCall& c) {
                double a = c.f("alpha", 1.0);
                map_float(c, [a](auto v) { return elu_like(v, a, 1.0, 1.0); });
              },
              check_float_out};
  t["celu"] = {[](KernelCall& c) {
                 double a = c.f("alpha", 1.0);
                 map_float(c, [a](auto v) { return elu_like(v, a, 1.0 / a, 1.0); });
               },
               check_float_out};
  t["selu"] = {[](KernelCall& c) {
                 double a = c.f("alpha", 1.6732632423543772), g = c.f("gamma", 1.0507009873554805);
                 map_float(c, [a, g](auto v) { return elu_like(v, a, 1.0, g); });
               },
               check_float_out};
  t["leaky_relu"] = {[](KernelCall& c) {
                       double a = c.f("alpha", 0.01);
                       map_float(c, [a](auto v) { return v >= 0 ? v : static_cast<decltype(v)>(v * a); });
                     },
                     check_float_out};
  t["thresholded_relu"] = {[](KernelCall& c) {
                             double a = c.f("alpha", 1.0);
                             map_float(c, [a](auto v) { return v > a ? v : decltype(v)(0); });
                           },
                           check_float_out};
  t["hard_sigmoid"] = {[](KernelCall& c) {
                         double a = c.f("alpha", 0.2), b = c.f("beta", 0.5);
                         map_float(c, [a, b](auto v) { return std::fmax(0.0, std::fmin(1.0, a * v + b)); });
                       },
                       check_float_out};
  t["floor"] = {[](KernelCall& c) { rounding(c, [](auto v) { return std::floor(v); }); }, require_no_f16};
  t["ceil"] = {[](KernelCall& c) { rounding(c, [](auto v) { return std::ceil(v); }); }, require_no_f16};
  t["trunc"] = {[](KernelCall& c) { rounding(c, [](auto v) { return std::trunc(v); }); }, require_no_f16};
  t["round"] = {[](KernelCall& c) { rounding(c, [](auto v) { return std::nearbyint(v); }); },  // half to even, as np.rint
                require_no_f16};
  t["neg"] = {[](KernelCall& c) { map_number(c, [](auto v) { return -v; }); }, check_number};
  t["abs"] = {[](KernelCall& c) {
                map_number(c, [](auto v) {
                  if constexpr (std::is_unsigned_v<decltype(v)>) return v;
                  else return v < 0 ? -v : v;
                });
              },
              check_number};
  t["sign"] = {[](KernelCall& c) {
                 map_number(c, [](auto v) {
                   using T = decltype(v);
                   if (v != v) return v;  // nan
                   return static_cast<T>((v > T(0)) - (v < T(0)));
                 });
               },
               check_number};
  t["relu"] = {[](KernelCall& c) {
                 map_number(c, [](auto v) { return v > decltype(v)(0) || v != v ? v : decltype(v)(0); });
               },
               check_number};
  t["logical_not"] = {[](KernelCall& c) { map_predicate(c, [](auto v) { return !(v != decltype(v)(0)); }); },
                      require_no_f16};
  t["isnan"] = {[](KernelCall& c) { map_predicate(c, [](auto v) { return v != v; }); }, require_no_f16};
  t["isinf"] = {[](KernelCall& c) {
                  map_predicate(c, [](auto v) {
                    if constexpr (std::is_floating_point_v<decltype(v)>) return std::isinf(v);
                    else return false;
                  });
                },
                require_no_f16};
  t["isfinite"] = {[](KernelCall& c) {
                     map_predicate(c, [](auto v) {
                       if constexpr (std::is_floating_point_v<decltype(v)>) return std::isfinite(v);
                       else return true;
                     });
                   },
                   require_no_f16};
  t["bitwise_not"] = {[](KernelCall& c) {
                        const Tensor& x = *c.in.at(0);
                        c.expect_shape(0, x.shape);
                        c.expect_dtype(x.dtype, 1);
                        dispatch_all(x.dtype, [&](auto tag) {
                          using T = decltype(tag);
                          if constexpr (std::is_floating_point_v<T>) {
                            fail(kKernelError, "bitwise_not of a float");
                          } else {
                            const T* xp = x.ptr<T>();
                            T* yp = c.out.at(0)->ptr<T>();
                            for (int64_t i = 0, n = x.size(); i < n; ++i) {
                              if constexpr (std::is_same_v<T, bool>) yp[i] = !xp[i];
                              else yp[i] = static_cast<T>(~xp[i]);
                            }
                          }
                        });
                      },
                      require_no_f16};
}
#undef FLOAT_UNARY

// ---- where, cast ---------------------------------------------------------------------------------

void where_kernel(KernelCall& c) {
  const Tensor& cond = *c.in.at(0);
  const Tensor& a = *c.in.at(1);
  const Tensor& b = *c.in.at(2);
  Tensor& y = *c.out.at(0);
  c.expect_shape(0, broadcast_shape(cond.shape, broadcast_shape(a.shape, b.shape)));
  std::vector<uint8_t> sc, sa, sb;
  const bool* cp = static_cast<const bool*>(as_dtype(cond, kBool, sc));
  const void* ad = as_dtype(a, y.dtype, sa);
  const void* bd = as_dtype(b, y.dtype, sb);
  dispatch_all(y.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* ap = static_cast<const T*>(ad);
    const T* bp = static_cast<const T*>(bd);
    T* yp = y.ptr<T>();
    for_each_row<3>(y.shape, {&cond.shape, &a.shape, &b.shape},
                    [&](int64_t o, std::array<int64_t, 3> off, int64_t n, std::array<int64_t, 3> st) {
                      for (int64_t i = 0; i < n; ++i)
                        yp[o + i] = cp[off[0] + i * st[0]] ? ap[off[1] + i * st[1]] : bp[off[2] + i * st[2]];
                    });
  });
}

void cast_kernel(KernelCall& c) {
  c.expect_shape(0, c.in.at(0)->shape);
  convert(c.in.at(0)->data, c.in.at(0)->dtype, c.out.at(0)->data, c.out.at(0)->dtype, c.in.at(0)->size());
}

}  // namespace

void register_elementwise(KernelTable& t) {
  register_unary(t);
  t["where"] = {where_kernel, require_no_f16};
  t["cast"] = {cast_kernel, require_no_f16};
  t["stop_gradient"] = {[](KernelCall& c) { cast_kernel(c); }, require_no_f16};
}

// ---- float32 loops of vecmath.h, one body compiled for baseline x86-64 and for AVX-512 ----------

#if defined(__x86_64__) && defined(__GNUC__) && !defined(CASTML_NO_AVX512)  // the latter: test the portable path
#define CASTML_VEC_AVX512 __attribute__((target(CASTML_AVX512_TARGET)))
#endif

#ifdef CASTML_VEC_AVX512
bool cpu_has_avx512() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("fma");
  }();
  return ok;
}
#endif

namespace {

[[gnu::always_inline]] inline void activate_body(float* __restrict y, int64_t n, Activation act) {
  switch (act) {
    case kActNone:
      return;
    case kActRelu:
      for (int64_t i = 0; i < n; ++i) y[i] = (y[i] > 0.0f || y[i] != y[i]) ? y[i] : 0.0f;
      return;
    case kActSigmoid:
      for (int64_t i = 0; i < n; ++i) y[i] = sigmoid_of(y[i]);
      return;
    case kActTanh:
      for (int64_t i = 0; i < n; ++i) y[i] = std::tanh(y[i]);
      return;
    case kActGelu:
      for (int64_t i = 0; i < n; ++i) y[i] = gelu_erf(y[i]);
      return;
    case kActGeluTanh:
      for (int64_t i = 0; i < n; ++i) y[i] = static_cast<float>(gelu_tanh(static_cast<double>(y[i])));
      return;
  }
}

[[gnu::always_inline]] inline void softmax_body(const float* __restrict p, float* __restrict q, int64_t n) {
  constexpr int kL = 16;  // explicit lanes: max and sums vectorize without reassociation flags
  float mx[kL];
  int nan[kL];
  for (int k = 0; k < kL; ++k) mx[k] = -INFINITY, nan[k] = 0;
  int64_t j = 0;
  for (; j + kL <= n; j += kL)
    for (int k = 0; k < kL; ++k) {
      float v = p[j + k];
      nan[k] |= v != v;
      mx[k] = v > mx[k] ? v : mx[k];
    }
  float m = -INFINITY;
  bool any_nan = false;
  for (int k = 0; k < kL; ++k) m = mx[k] > m ? mx[k] : m, any_nan |= nan[k] != 0;
  for (; j < n; ++j) {
    any_nan |= p[j] != p[j];
    m = p[j] > m ? p[j] : m;
  }
  if (any_nan) m = NAN;
  for (int64_t i = 0; i < n; ++i) q[i] = fast_exp(p[i] - m);
  float acc[kL];
  for (int k = 0; k < kL; ++k) acc[k] = 0.0f;
  j = 0;
  for (; j + kL <= n; j += kL)
    for (int k = 0; k < kL; ++k) acc[k] += q[j + k];
  double sum = 0;
  for (int k = 0; k < kL; ++k) sum += acc[k];
  for (; j < n; ++j) sum += q[j];
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) q[i] *= inv;
}

[[gnu::always_inline]] inline void layer_norm_body(const float* __restrict p, float* __restrict q, int64_t n,
                                                   double eps, const float* __restrict scale,
                                                   const float* __restrict bias) {
  constexpr int kL = 8;  // double lanes
  double acc[kL];
  for (int k = 0; k < kL; ++k) acc[k] = 0;
  int64_t j = 0;
  for (; j + kL <= n; j += kL)
    for (int k = 0; k < kL; ++k) acc[k] += p[j + k];
  double s = 0;
  for (int k = 0; k < kL; ++k) s += acc[k];
  for (; j < n; ++j) s += p[j];
  const double mean = n ? s / n : 0.0;
  for (int k = 0; k < kL; ++k) acc[k] = 0;
  j = 0;
  for (; j + kL <= n; j += kL)
    for (int k = 0; k < kL; ++k) {
      double d = p[j + k] - mean;
      acc[k] += d * d;
    }
  double v = 0;
  for (int k = 0; k < kL; ++k) v += acc[k];
  for (; j < n; ++j) v += (p[j] - mean) * (p[j] - mean);
  const float tm = static_cast<float>(mean), ti = static_cast<float>(1.0 / std::sqrt((n ? v / n : 0.0) + eps));
  for (int64_t i = 0; i < n; ++i) q[i] = (p[i] - tm) * ti * scale[i] + bias[i];
}

void activate_base(float* y, int64_t n, Activation act) { activate_body(y, n, act); }
void softmax_base(const float* p, float* q, int64_t n) { softmax_body(p, q, n); }
void layer_norm_base(const float* p, float* q, int64_t n, double eps, const float* scale, const float* bias) {
  layer_norm_body(p, q, n, eps, scale, bias);
}
#ifdef CASTML_VEC_AVX512
CASTML_VEC_AVX512 void activate_avx512(float* y, int64_t n, Activation act) { activate_body(y, n, act); }
CASTML_VEC_AVX512 void softmax_avx512(const float* p, float* q, int64_t n) { softmax_body(p, q, n); }
CASTML_VEC_AVX512 void layer_norm_avx512(const float* p, float* q, int64_t n, double eps, const float* scale,
                                         const float* bias) {
  layer_norm_body(p, q, n, eps, scale, bias);
}
#endif

}  // namespace

Activation activation_code(const std::string& name) {
  if (name == "none") return kActNone;
  if (name == "relu") return kActRelu;
  if (name == "sigmoid") return kActSigmoid;
  if (name == "tanh") return kActTanh;
  if (name == "gelu") return kActGelu;
  if (name == "gelu_tanh") return kActGeluTanh;
  fail(kKernelError, "unknown activation '" + name + "'");
}

void vec_activate(float* y, int64_t n, Activation act) {
#ifdef CASTML_VEC_AVX512
  if (cpu_has_avx512()) return activate_avx512(y, n, act);
#endif
  activate_base(y, n, act);
}

void vec_softmax_row(const float* p, float* q, int64_t n) {
#ifdef CASTML_VEC_AVX512
  if (cpu_has_avx512()) return softmax_avx512(p, q, n);
#endif
  softmax_base(p, q, n);
}

void vec_layer_norm_row(const float* p, float* q, int64_t n, double eps, const float* scale, const float* bias) {
#ifdef CASTML_VEC_AVX512
  if (cpu_has_avx512()) return layer_norm_avx512(p, q, n, eps, scale, bias);
#endif
  layer_norm_base(p, q, n, eps, scale, bias);
}

}  // namespace castml
