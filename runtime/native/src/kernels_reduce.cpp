// Reductions (sum, mean, max, min, prod over any set of axes, keepdims), argmax/argmin and
// cumsum. Float sums and means accumulate in double, so long float32 rows stay within the
// tolerance rule of NumPy's pairwise summation; integer sums wrap as NumPy's do.
#include <cmath>
#include <limits>
#include <type_traits>

#include "kernel.h"
#include "loops.h"

namespace castml {
namespace {

enum ReduceOp { kSum, kMean, kMax, kMin, kProd };

// Output shape and, per input axis, the output stride (0 for reduced axes).
void reduce_geometry(const Shape& in, const std::vector<int64_t>& axes_attr, bool keepdims, Shape* out,
                     std::vector<int64_t>* out_stride, int64_t* count) {
  int r = static_cast<int>(in.size());
  std::vector<bool> reduced(r, false);
  for (int64_t a : axes_attr) reduced[norm_axis(a, r)] = true;
  Shape kept(r);
  *count = 1;
  out->clear();
  for (int d = 0; d < r; ++d) {
    kept[d] = reduced[d] ? 1 : in[d];
    if (reduced[d]) *count *= in[d];
    if (!reduced[d] || keepdims) out->push_back(kept[d]);
  }
  out_stride->assign(r, 0);
  int64_t s = 1;
  for (int d = r - 1; d >= 0; --d) {
    (*out_stride)[d] = reduced[d] ? 0 : s;
    s *= kept[d];
  }
}

template <class T, class Acc, class F>
void reduce_loop(const T* x, const Shape& in, const std::vector<int64_t>& ost, Acc* acc, F&& f) {
  int r = static_cast<int>(in.size());
  int64_t total = numel(in);
  if (total == 0) return;
  if (r == 0) {
    acc[0] = f(acc[0], x[0]);
    return;
  }
  int64_t n = in[r - 1], st = ost[r - 1];
  std::vector<int64_t> idx(r, 0);
  int64_t base = 0;
  for (int64_t i = 0; i < total; i += n) {
    const T* row = x + i;
    if (st == 0) {
      Acc a = acc[base];
      for (int64_t j = 0; j < n; ++j) a = f(a, row[j]);
      acc[base] = a;
    } else {
      for (int64_t j = 0; j < n; ++j) acc[base + j * st] = f(acc[base + j * st], row[j]);
    }
    for (int d = r - 2; d >= 0; --d) {
      base += ost[d];
      if (++idx[d] < in[d]) break;
      base -= ost[d] * in[d];
      idx[d] = 0;
    }
  }
}

template <ReduceOp kOp>
void reduce_kernel(KernelCall& c) {
  const Tensor& x = *c.in.at(0);
  Tensor& y = *c.out.at(0);
  Shape out;
  std::vector<int64_t> ost;
  int64_t count;
  reduce_geometry(x.shape, c.ints("axes"), c.i("keepdims", 0) != 0, &out, &ost, &count);
  c.expect_shape(0, out);
  int64_t n = y.size();
  dispatch_all(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.ptr<T>();
    if constexpr (kOp == kMax || kOp == kMin) {
      if (count == 0 && n > 0) fail(kKernelError, "zero-size array to reduction operation which has no identity");
      // each output cell is seeded by the first element it sees; nan wins, as np.max
      struct Cell {
        T v;
        bool set;
      };
      std::vector<Cell> cells(n, Cell{T(0), false});
      reduce_loop(xp, x.shape, ost, cells.data(), [](Cell a, T v) {
        if (!a.set) return Cell{v, true};
        if (a.v != a.v) return a;  // nan sticks
        if (v != v) return Cell{v, true};
        if constexpr (kOp == kMax) return v > a.v ? Cell{v, true} : a;
        else return v < a.v ? Cell{v, true} : a;
      });
      if (y.dtype != x.dtype) fail(kKernelError, "reduce_max/min: output dtype differs from the input's");
      T* yp = y.ptr<T>();
      for (int64_t i = 0; i < n; ++i) yp[i] = cells[i].v;
    } else {
      using Acc = std::conditional_t<std::is_floating_point_v<T>, double,
                                     std::conditional_t<std::is_same_v<T, uint64_t>, uint64_t, int64_t>>;
      std::vector<Acc> acc(n, kOp == kProd ? Acc(1) : Acc(0));
      if constexpr (kOp == kProd) {
        reduce_loop(xp, x.shape, ost, acc.data(), [](Acc a, T v) {
          if constexpr (std::is_integral_v<Acc>)
            return static_cast<Acc>(static_cast<uint64_t>(a) * static_cast<uint64_t>(static_cast<Acc>(v)));
          else
            return a * static_cast<Acc>(v);
        });
      } else {
        reduce_loop(xp, x.shape, ost, acc.data(), [](Acc a, T v) {
          if constexpr (std::is_integral_v<Acc>)
            return static_cast<Acc>(static_cast<uint64_t>(a) + static_cast<uint64_t>(static_cast<Acc>(v)));
          else
            return a + static_cast<Acc>(v);
        });
      }
      if constexpr (kOp == kMean) {
        std::vector<double> mean(n);
        for (int64_t i = 0; i < n; ++i) mean[i] = static_cast<double>(acc[i]) / static_cast<double>(count);
        convert(mean.data(), kFloat64, y.data, y.dtype, n);
      } else {
        DType acc_dtype = std::is_floating_point_v<Acc> ? kFloat64 : (std::is_same_v<Acc, uint64_t> ? kUInt64 : kInt64);
        convert(acc.data(), acc_dtype, y.data, y.dtype, n);
      }
    }
  });
}

template <bool kMaxArg>
void arg_kernel(KernelCall& c) {
  const Tensor& x = *c.in.at(0);
  int axis = norm_axis(c.i("axis", 0), x.rank());
  bool keepdims = c.i("keepdims", 0) != 0;
  int64_t outer, n, inner;
  split_axis(x.shape, axis, &outer, &n, &inner);
  Shape out;
  for (int d = 0; d < x.rank(); ++d)
    if (d != axis) out.push_back(x.shape[d]);
    else if (keepdims) out.push_back(1);
  c.expect_shape(0, out);
  c.expect_dtype(kInt64);
  if (n == 0 && outer * inner > 0) fail(kKernelError, "attempt to get argmax/argmin of an empty sequence");
  int64_t* yp = c.out.at(0)->ptr<int64_t>();
  dispatch_all(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.ptr<T>();
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t i = 0; i < inner; ++i) {
        const T* p = xp + o * n * inner + i;
        int64_t best = 0;
        T bv = p[0];
        for (int64_t j = 1; j < n && bv == bv; ++j) {
          T v = p[j * inner];
          bool better = kMaxArg ? (v > bv) : (v < bv);
          if (better || v != v) {
            best = j;
            bv = v;
          }
        }
        yp[o * inner + i] = best;
      }
  });
}

void cumsum_kernel(KernelCall& c) {
  const Tensor& x = *c.in.at(0);
  int axis = norm_axis(c.i("axis", 0), x.rank());
  c.expect_shape(0, x.shape);
  c.expect_dtype(x.dtype, 1);
  int64_t outer, n, inner;
  split_axis(x.shape, axis, &outer, &n, &inner);
  dispatch_number(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.ptr<T>();
    T* yp = c.out.at(0)->ptr<T>();
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t i = 0; i < inner; ++i) {
        T acc = T(0);
        for (int64_t j = 0; j < n; ++j) {
          int64_t k = (o * n + j) * inner + i;
          acc = j == 0 ? xp[k] : static_cast<T>(acc + xp[k]);  // (as NumPy: the first is a copy, -0.0 kept)
          yp[k] = acc;
        }
      }
  });
}

}  // namespace

void register_reduce(KernelTable& t) {
  t["reduce_sum"] = {reduce_kernel<kSum>, require_no_f16};
  t["reduce_mean"] = {reduce_kernel<kMean>, require_no_f16};
  t["reduce_max"] = {reduce_kernel<kMax>, require_no_f16};
  t["reduce_min"] = {reduce_kernel<kMin>, require_no_f16};
  t["reduce_prod"] = {reduce_kernel<kProd>, require_no_f16};
  t["argmax"] = {arg_kernel<true>, require_no_f16};
  t["argmin"] = {arg_kernel<false>, require_no_f16};
  t["cumsum"] = {cumsum_kernel, require_no_f16};
}

}  // namespace castml
