// Binary elementwise kernels with NumPy broadcasting: arithmetic (computed in the output dtype,
// operands converted as NumPy's type resolution does), comparisons and logical ops (computed in
// the promoted operand dtype, bool out). Its own file: these are the most template
// instantiations (op x dtype x loop shape), so they compile in parallel with the rest.
#include <cmath>
#include <limits>
#include <type_traits>

#include "kernel.h"
#include "loops.h"

namespace castml {
namespace {

bool in_common_set(DType t);

void check_float_out(const OpDef& op, const GraphDef& g) {
  DType t = value_dtype(g, op.outputs.at(0));
  if (t != kFloat32 && t != kFloat64)
    fail(kUnsupportedError, "native '" + op.kind + "' computes float32/float64 only, got " + dtype_name(t));
}

void check_integer_out(const OpDef& op, const GraphDef& g) {
  DType t = value_dtype(g, op.outputs.at(0));
  if (!in_common_set(t) || is_float(t)) fail(kUnsupportedError, "native '" + op.kind + "' needs integer or bool operands");
}

// ---- binary --------------------------------------------------------------------------------------

DType promote(DType a, DType b) {
  if (a == b) return a;
  if (is_float(a) || is_float(b)) {
    if (is_float(a) && is_float(b)) return a > b ? a : b;
    return kFloat64;
  }
  if (a == kBool) return b;
  if (b == kBool) return a;
  return kInt64;
}

// out = f(a, b) computed in dtype `work` (inputs converted); the result dtype is `work` itself
// (arithmetic) or bool (comparisons, kBoolOut).
enum TypeSet { kAllTypes, kFloatTypes, kIntegerTypes };

// The dtypes binary kernels are instantiated for: each op x dtype x loop shape is compiled code,
// so the rarely used int16/uint16/uint32/uint64 are left to the NumPy backend (refused at load).
bool in_common_set(DType t) {
  return t == kBool || t == kInt8 || t == kInt32 || t == kInt64 || t == kUInt8 || t == kFloat32 || t == kFloat64;
}

template <class F>
auto dispatch_common(DType t, F&& f) {
  switch (t) {
    case kBool: return f(bool{});
    case kInt8: return f(int8_t{});
    case kInt32: return f(int32_t{});
    case kInt64: return f(int64_t{});
    case kUInt8: return f(uint8_t{});
    case kFloat32: return f(float{});
    case kFloat64: return f(double{});
    default: fail(kUnsupportedError, std::string("no native binary kernel for dtype ") + dtype_name(t));
  }
}

template <class F>
auto dispatch_common_integer(DType t, F&& f) {
  switch (t) {
    case kBool: return f(bool{});
    case kInt8: return f(int8_t{});
    case kInt32: return f(int32_t{});
    case kInt64: return f(int64_t{});
    case kUInt8: return f(uint8_t{});
    default: fail(kUnsupportedError, std::string("no native bitwise kernel for dtype ") + dtype_name(t));
  }
}

template <TypeSet kTypes, class F>
auto dispatch_set(DType t, F&& f) {
  if constexpr (kTypes == kFloatTypes) return dispatch_float(t, f);
  else if constexpr (kTypes == kIntegerTypes) return dispatch_common_integer(t, f);
  else return dispatch_common(t, f);
}

DType promote(DType a, DType b);

void check_arith(const OpDef& op, const GraphDef& g) {
  DType t = value_dtype(g, op.outputs.at(0));
  if (!in_common_set(t)) fail(kUnsupportedError, "native '" + op.kind + "' has no " + dtype_name(t) + " kernel");
}

void check_compare(const OpDef& op, const GraphDef& g) {
  if (op.inputs.size() != 2) fail(kUnsupportedError, "native '" + op.kind + "' takes two operands");
  DType t = promote(value_dtype(g, op.inputs[0]), value_dtype(g, op.inputs[1]));
  if (!in_common_set(t)) fail(kUnsupportedError, "native '" + op.kind + "' has no " + dtype_name(t) + " kernel");
}

template <bool kBoolOut, TypeSet kTypes = kAllTypes, class F>
void binary_in(KernelCall& c, DType work, F&& f) {
  const Tensor& a = *c.in.at(0);
  const Tensor& b = *c.in.at(1);
  Tensor& y = *c.out.at(0);
  c.expect_shape(0, broadcast_shape(a.shape, b.shape));
  if (y.dtype != (kBoolOut ? kBool : work))
    fail(kKernelError, std::string("unexpected output dtype ") + dtype_name(y.dtype));
  std::vector<uint8_t> sa, sb;
  const void* ad = as_dtype(a, work, sa);
  const void* bd = as_dtype(b, work, sb);
  dispatch_set<kTypes>(work, [&](auto tag) {
    using T = decltype(tag);
    using R = std::conditional_t<kBoolOut, bool, T>;
    const T* ap = static_cast<const T*>(ad);
    const T* bp = static_cast<const T*>(bd);
    R* yp = y.ptr<R>();
    for_each_row<2>(y.shape, {&a.shape, &b.shape},
                    [&](int64_t o, std::array<int64_t, 2> off, int64_t n, std::array<int64_t, 2> st) {
                      const T* pa = ap + off[0];
                      const T* pb = bp + off[1];
                      R* py = yp + o;
                      if (st[0] == 1 && st[1] == 1) {
                        for (int64_t i = 0; i < n; ++i) py[i] = static_cast<R>(f(pa[i], pb[i]));
                      } else if (st[0] == 1 && st[1] == 0) {
                        const T bv = *pb;
                        for (int64_t i = 0; i < n; ++i) py[i] = static_cast<R>(f(pa[i], bv));
                      } else {
                        for (int64_t i = 0; i < n; ++i) py[i] = static_cast<R>(f(pa[i * st[0]], pb[i * st[1]]));
                      }
                    });
  });
}

// Arithmetic: computed in the output dtype.
#define ARITH(name, expr)                                                                          \
  t[name] = {[](KernelCall& c) { binary_in<false>(c, c.out.at(0)->dtype, [](auto x, auto y) { return expr; }); }, \
             check_arith};
#define ARITH_IN(name, types, check, expr)                                                        \
  t[name] = {[](KernelCall& c) { binary_in<false, types>(c, c.out.at(0)->dtype, [](auto x, auto y) { return expr; }); }, \
             check};
// Comparisons: computed in the promoted input dtype, bool out.
#define COMPARE(name, expr)                                                                     \
  t[name] = {[](KernelCall& c) {                                                               \
               binary_in<true>(c, promote(c.in.at(0)->dtype, c.in.at(1)->dtype), [](auto x, auto y) { return expr; }); \
             },                                                                                \
             check_compare};

template <class T>
T floordiv_of(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    if (b == 0) return a / b;
    T mod = std::fmod(a, b);
    T div = (a - mod) / b;
    if (mod != 0 && ((b < 0) != (mod < 0))) div -= T(1);
    if (div == 0) return std::copysign(T(0), a / b);
    T fl = std::floor(div);
    if (div - fl > T(0.5)) fl += T(1);
    return fl;
  } else if constexpr (std::is_same_v<T, bool>) {
    return b ? a : false;
  } else {
    if (b == 0) return T(0);
    if constexpr (std::is_signed_v<T>) {
      if (a == std::numeric_limits<T>::min() && b == T(-1)) return a;
      T q = a / b;
      if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
      return q;
    } else {
      return a / b;
    }
  }
}

template <class T>
T mod_of(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    if (b == 0) return std::fmod(a, b);
    T m = std::fmod(a, b);
    if (m != 0) {
      if ((b < 0) != (m < 0)) m += b;
    } else {
      m = std::copysign(T(0), b);
    }
    return m;
  } else if constexpr (std::is_same_v<T, bool>) {
    return false;
  } else {
    if (b == 0) return T(0);
    if constexpr (std::is_signed_v<T>) {
      if (b == T(-1)) return T(0);
      T m = a % b;
      if (m != 0 && ((m < 0) != (b < 0))) m += b;
      return m;
    } else {
      return a % b;
    }
  }
}

template <class T>
T pow_of(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    return std::pow(a, b);
  } else if constexpr (std::is_same_v<T, bool>) {
    return a || !b;
  } else {
    if constexpr (std::is_signed_v<T>) {
      if (b < 0) fail(kKernelError, "integers to negative integer powers are not allowed");
    }
    T r = 1;
    T base = a;
    auto e = b;
    while (e) {  // wraps on overflow, as NumPy does
      if (e & 1) r = static_cast<T>(static_cast<std::make_unsigned_t<T>>(r) * static_cast<std::make_unsigned_t<T>>(base));
      base = static_cast<T>(static_cast<std::make_unsigned_t<T>>(base) * static_cast<std::make_unsigned_t<T>>(base));
      e >>= 1;
    }
    return r;
  }
}

template <class T>
T wrap_add(T a, T b) {
  if constexpr (std::is_same_v<T, bool>) return a || b;
  else if constexpr (std::is_integral_v<T>) return static_cast<T>(static_cast<std::make_unsigned_t<T>>(a) + static_cast<std::make_unsigned_t<T>>(b));
  else return a + b;
}

template <class T>
T wrap_sub(T a, T b) {
  if constexpr (std::is_same_v<T, bool>) return a != b;
  else if constexpr (std::is_integral_v<T>) return static_cast<T>(static_cast<std::make_unsigned_t<T>>(a) - static_cast<std::make_unsigned_t<T>>(b));
  else return a - b;
}

template <class T>
T wrap_mul(T a, T b) {
  if constexpr (std::is_same_v<T, bool>) return a && b;
  else if constexpr (std::is_integral_v<T>) return static_cast<T>(static_cast<std::make_unsigned_t<T>>(a) * static_cast<std::make_unsigned_t<T>>(b));
  else return a * b;
}

template <class T>
T max_of(T a, T b) { return (a > b || a != a) ? a : b; }
template <class T>
T min_of(T a, T b) { return (a < b || a != a) ? a : b; }

template <class T>
T bits(T a, T b, int op) {
  if constexpr (std::is_floating_point_v<T>) {
    fail(kKernelError, "bitwise operation on floats");
  } else if constexpr (std::is_same_v<T, bool>) {
    return op == 0 ? (a && b) : op == 1 ? (a || b) : (a != b);
  } else {
    return static_cast<T>(op == 0 ? (a & b) : op == 1 ? (a | b) : (a ^ b));
  }
}

template <class T>
T shift(T a, T b, bool left) {
  if constexpr (std::is_floating_point_v<T> || std::is_same_v<T, bool>) {
    fail(kKernelError, "shift of a non-integer");
  } else {
    using U = std::make_unsigned_t<T>;
    if (b < 0 || b >= static_cast<T>(sizeof(T) * 8)) return left ? T(0) : (a < 0 ? T(-1) : T(0));
    return left ? static_cast<T>(static_cast<U>(a) << b) : static_cast<T>(a >> b);
  }
}

template <class T>
bool truthy(T v) { return v != T(0); }

}  // namespace

void register_binary(KernelTable& t) {
  ARITH("add", wrap_add(x, y))
  ARITH("sub", wrap_sub(x, y))
  ARITH("mul", wrap_mul(x, y))
  ARITH_IN("div", kFloatTypes, check_float_out, x / y)
  ARITH("floordiv", floordiv_of(x, y))
  ARITH("mod", mod_of(x, y))
  ARITH("pow", pow_of(x, y))
  ARITH("maximum", max_of(x, y))
  ARITH("minimum", min_of(x, y))
  ARITH("fmax", (x != x ? y : (y != y ? x : max_of(x, y))))
  ARITH("fmin", (x != x ? y : (y != y ? x : min_of(x, y))))
  ARITH_IN("atan2", kFloatTypes, check_float_out, std::atan2(x, y))
  ARITH_IN("hypot", kFloatTypes, check_float_out, std::hypot(x, y))
  ARITH_IN("bitwise_and", kIntegerTypes, check_integer_out, bits(x, y, 0))
  ARITH_IN("bitwise_or", kIntegerTypes, check_integer_out, bits(x, y, 1))
  ARITH_IN("bitwise_xor", kIntegerTypes, check_integer_out, bits(x, y, 2))
  ARITH_IN("left_shift", kIntegerTypes, check_integer_out, shift(x, y, true))
  ARITH_IN("right_shift", kIntegerTypes, check_integer_out, shift(x, y, false))
  COMPARE("equal", x == y)
  COMPARE("not_equal", x != y)
  COMPARE("less", x < y)
  COMPARE("less_equal", x <= y)
  COMPARE("greater", x > y)
  COMPARE("greater_equal", x >= y)
  COMPARE("logical_and", truthy(x) && truthy(y))
  COMPARE("logical_or", truthy(x) || truthy(y))
  COMPARE("logical_xor", truthy(x) != truthy(y))
}
#undef ARITH
#undef ARITH_IN
#undef COMPARE


}  // namespace castml
