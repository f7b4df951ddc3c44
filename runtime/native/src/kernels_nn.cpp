// NN kernels with ONNX semantics (as runtime/kernels/nn.py and conv.py): softmax and
// log_softmax (shifted by the row max), layer/batch/instance norm (statistics in double), and
// 1-D/2-D max/avg pooling with pads, strides, dilations (max) and ceil_mode, plus global pools.
// float32 softmax (contiguous rows) and layer_norm rows run vecmath.h's AVX-512 builds.
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>

#include "kernel.h"
#include "loops.h"
#include "vecmath.h"

namespace castml {
namespace {

// One softmax row of n elements at stride st; St is int64_t, or the constant 1 so contiguous
// rows get their own instantiation, which vectorizes.
template <bool kLog, class T, class St>
void softmax_row(const T* p, T* q, int64_t n, St st) {
  T m = -std::numeric_limits<T>::infinity();
  bool nan = false;
  for (int64_t j = 0; j < n; ++j) {
    T v = p[j * st];
    nan |= v != v;
    m = v > m ? v : m;
  }
  if (nan) m = std::numeric_limits<T>::quiet_NaN();
  double sum = 0;
  if (kLog) {
    for (int64_t j = 0; j < n; ++j) sum += fast_exp(static_cast<T>(p[j * st] - m));
    T ls = static_cast<T>(std::log(sum));
    for (int64_t j = 0; j < n; ++j) q[j * st] = p[j * st] - m - ls;
  } else {
    for (int64_t j = 0; j < n; ++j) q[j * st] = fast_exp(static_cast<T>(p[j * st] - m));
    sum = lane_sum(q, n, st);
    T inv = static_cast<T>(1.0 / sum);
    for (int64_t j = 0; j < n; ++j) q[j * st] *= inv;
  }
}

template <bool kLog>
void softmax_kernel(KernelCall& c) {
  const Tensor& x = *c.in.at(0);
  c.expect_shape(0, x.shape);
  c.expect_dtype(x.dtype, 1);
  int axis = norm_axis(c.i("axis", -1), x.rank());
  int64_t outer, n, inner;
  split_axis(x.shape, axis, &outer, &n, &inner);
  dispatch_float(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.ptr<T>();
    T* yp = c.out.at(0)->ptr<T>();
    if constexpr (std::is_same_v<T, float> && !kLog) {
      if (inner == 1) {
        for (int64_t o = 0; o < outer; ++o) vec_softmax_row(xp + o * n, yp + o * n, n);
        return;
      }
    }
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t i = 0; i < inner; ++i)
        if (inner == 1)
          softmax_row<kLog>(xp + o * n, yp + o * n, n, std::integral_constant<int64_t, 1>());
        else
          softmax_row<kLog>(xp + o * n * inner + i, yp + o * n * inner + i, n, inner);
  });
}

// Mean and 1/sqrt(var + eps) of a row (two-pass, biased variance).
template <class T>
void row_stats(const T* p, int64_t n, double eps, double* mean, double* inv) {
  double s = 0;
  for (int64_t j = 0; j < n; ++j) s += p[j];
  double m = n ? s / n : 0.0;
  double v = 0;
  for (int64_t j = 0; j < n; ++j) {
    double d = p[j] - m;
    v += d * d;
  }
  *mean = m;
  *inv = 1.0 / std::sqrt((n ? v / n : 0.0) + eps);
}

void layer_norm_kernel(KernelCall& c) {
  const Tensor& x = *c.in.at(0);
  c.expect_shape(0, x.shape);
  c.expect_dtype(x.dtype, 1);
  int axis = x.rank() ? norm_axis(c.i("axis", -1), x.rank()) : 0;
  double eps = c.f("epsilon", 1e-5);
  int64_t rows = 1, cols = 1;
  for (int d = 0; d < x.rank(); ++d) (d < axis ? rows : cols) *= x.shape[d];
  Shape norm_shape(x.shape.begin() + axis, x.shape.end());
  dispatch_float(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    // scale and bias broadcast to the normalized shape, once per call
    std::vector<T> scale(cols, T(1)), bias(cols, T(0));
    for (size_t k = 1; k < c.in.size() && k < 3; ++k) {
      std::vector<uint8_t> scratch;
      Tensor src = *c.in.at(k);
      src.data = const_cast<void*>(as_dtype(*c.in.at(k), x.dtype, scratch));
      src.dtype = x.dtype;
      if (src.rank() > static_cast<int>(norm_shape.size()) || broadcast_shape(src.shape, norm_shape) != norm_shape)
        fail(kKernelError, "layer_norm: " + shape_str(src.shape) + " does not broadcast to " + shape_str(norm_shape));
      Tensor dst{x.dtype, norm_shape, (k == 1 ? scale : bias).data()};
      broadcast_copy(src, dst);
    }
    const T* xp = x.ptr<T>();
    T* yp = c.out.at(0)->ptr<T>();
    for (int64_t r = 0; r < rows; ++r) {
      const T* p = xp + r * cols;
      T* q = yp + r * cols;
      if constexpr (std::is_same_v<T, float>) {
        vec_layer_norm_row(p, q, cols, eps, scale.data(), bias.data());
        continue;
      }
      double mean, inv;
      row_stats(p, cols, eps, &mean, &inv);
      T tm = static_cast<T>(mean), ti = static_cast<T>(inv);
      for (int64_t j = 0; j < cols; ++j) q[j] = (p[j] - tm) * ti * scale[j] + bias[j];
    }
  });
}

void batch_norm_kernel(KernelCall& c) {
  const Tensor& x = *c.in.at(0);
  c.expect_shape(0, x.shape);
  c.expect_dtype(x.dtype, 1);
  if (x.rank() < 2) fail(kKernelError, "batch_norm: input needs rank >= 2");
  double eps = c.f("epsilon", 1e-5);
  int64_t n = x.shape[0], ch = x.shape[1], spatial = x.size() / std::max<int64_t>(n * ch, 1);
  std::vector<double> p[4];
  for (int k = 0; k < 4; ++k) {
    if (c.in.at(k + 1)->size() != ch) fail(kKernelError, "batch_norm: parameters need one value per channel");
    p[k].resize(ch);
    convert(c.in.at(k + 1)->data, c.in.at(k + 1)->dtype, p[k].data(), kFloat64, ch);
  }
  dispatch_float(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.ptr<T>();
    T* yp = c.out.at(0)->ptr<T>();
    for (int64_t ci = 0; ci < ch; ++ci) {
      double a = p[0][ci] / std::sqrt(p[3][ci] + eps);
      T ta = static_cast<T>(a), tc = static_cast<T>(p[1][ci] - p[2][ci] * a);
      for (int64_t b = 0; b < n; ++b) {
        const T* src = xp + (b * ch + ci) * spatial;
        T* dst = yp + (b * ch + ci) * spatial;
        for (int64_t s = 0; s < spatial; ++s) dst[s] = src[s] * ta + tc;
      }
    }
  });
}

void instance_norm_kernel(KernelCall& c) {
  const Tensor& x = *c.in.at(0);
  c.expect_shape(0, x.shape);
  c.expect_dtype(x.dtype, 1);
  if (x.rank() < 3) fail(kKernelError, "instance_norm: input needs rank >= 3");
  double eps = c.f("epsilon", 1e-5);
  int64_t n = x.shape[0], ch = x.shape[1], spatial = x.size() / std::max<int64_t>(n * ch, 1);
  std::vector<double> scale(ch), bias(ch);
  if (c.in.at(1)->size() != ch || c.in.at(2)->size() != ch) fail(kKernelError, "instance_norm: one scale/bias per channel");
  convert(c.in.at(1)->data, c.in.at(1)->dtype, scale.data(), kFloat64, ch);
  convert(c.in.at(2)->data, c.in.at(2)->dtype, bias.data(), kFloat64, ch);
  dispatch_float(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.ptr<T>();
    T* yp = c.out.at(0)->ptr<T>();
    for (int64_t b = 0; b < n; ++b)
      for (int64_t ci = 0; ci < ch; ++ci) {
        const T* src = xp + (b * ch + ci) * spatial;
        T* dst = yp + (b * ch + ci) * spatial;
        double mean, inv;
        row_stats(src, spatial, eps, &mean, &inv);
        double a = inv * scale[ci];
        T ta = static_cast<T>(a), tc = static_cast<T>(bias[ci] - mean * a);
        for (int64_t s = 0; s < spatial; ++s) dst[s] = src[s] * ta + tc;
      }
  });
}

// ---- pooling -------------------------------------------------------------------------------------

struct PoolAxis {
  int64_t size, k, s, pb, pe, d, out;
};

template <bool kMax>
void pool_kernel(KernelCall& c) {
  const Tensor& x = *c.in.at(0);
  int nd = x.rank() - 2;
  if (nd < 1 || nd > 2) fail(kKernelError, "native pooling handles 1-D and 2-D only");
  std::vector<int64_t> kernel = c.ints("kernel_shape");
  std::vector<int64_t> strides = c.ints_or("strides", std::vector<int64_t>(nd, 1));
  std::vector<int64_t> pads = c.ints_or("pads", std::vector<int64_t>(2 * nd, 0));
  std::vector<int64_t> dil = kMax ? c.ints_or("dilations", std::vector<int64_t>(nd, 1)) : std::vector<int64_t>(nd, 1);
  bool ceil_mode = c.i("ceil_mode", 0) != 0;
  bool include_pad = c.i("count_include_pad", 0) != 0;
  if (static_cast<int>(kernel.size()) != nd || static_cast<int>(strides.size()) != nd ||
      static_cast<int>(pads.size()) != 2 * nd || static_cast<int>(dil.size()) != nd)
    fail(kKernelError, "pool: kernel/strides/pads/dilations do not match the spatial rank");
  PoolAxis ax[2];
  ax[0] = {1, 1, 1, 0, 0, 1, 1};
  for (int i = 0; i < nd; ++i) {
    PoolAxis& a = ax[2 - nd + i];
    a = {x.shape[2 + i], kernel[i], strides[i], pads[i], pads[nd + i], dil[i], 0};
    if (a.k < 1 || a.s < 1 || a.d < 1) fail(kKernelError, "pool: kernel, strides and dilations must be >= 1");
    a.out = window_out_len(a.size, a.k, a.s, a.pb, a.pe, a.d, ceil_mode);
    if (a.out < 1) fail(kKernelError, "pool: the window does not fit the input");
  }
  Shape out = {x.shape[0], x.shape[1]};
  for (int i = 0; i < nd; ++i) out.push_back(ax[2 - nd + i].out);
  c.expect_shape(0, out);
  c.expect_dtype(x.dtype, 1);
  int64_t planes = x.shape[0] * x.shape[1];
  const PoolAxis &h = ax[0], &w = ax[1];
  auto count = [&](const PoolAxis& a, int64_t o) {
    int64_t start = o * a.s - a.pb;
    return include_pad ? std::min(start + a.k, a.size + a.pe) - start
                       : std::min(start + a.k, a.size) - std::max<int64_t>(start, 0);
  };
  // valid taps of each output position along each axis, computed once: the inner loops then
  // run without bounds checks
  auto taps = [](const PoolAxis& a, std::vector<int64_t>* lo, std::vector<int64_t>* hi) {
    lo->resize(a.out);
    hi->resize(a.out);
    for (int64_t o = 0; o < a.out; ++o) {
      int64_t start = o * a.s - a.pb, t0 = 0, t1 = a.k;
      while (t0 < a.k && start + t0 * a.d < 0) ++t0;
      while (t1 > t0 && start + (t1 - 1) * a.d >= a.size) --t1;
      (*lo)[o] = t0;
      (*hi)[o] = t1;
    }
  };
  std::vector<int64_t> hlo, hhi, wlo, whi;
  taps(h, &hlo, &hhi);
  taps(w, &wlo, &whi);
  std::vector<double> inv_count(static_cast<size_t>(h.out * w.out));
  for (int64_t oi = 0; oi < h.out; ++oi)
    for (int64_t oj = 0; oj < w.out; ++oj)
      inv_count[oi * w.out + oj] = 1.0 / static_cast<double>(count(h, oi) * count(w, oj));
  dispatch_number(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.ptr<T>();
    T* yp = c.out.at(0)->ptr<T>();
    T lowest = std::numeric_limits<T>::has_infinity ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::lowest();
    bool full = true;  // every window lies inside the input: whole output rows at a time
    for (int64_t o = 0; o < h.out; ++o) full &= hlo[o] == 0 && hhi[o] == h.k;
    for (int64_t o = 0; o < w.out; ++o) full &= wlo[o] == 0 && whi[o] == w.k;
    for (int64_t p = 0; full && p < planes; ++p) {
      const T* plane = xp + p * h.size * w.size;
      for (int64_t oi = 0; oi < h.out; ++oi) {
        T* d = yp + (p * h.out + oi) * w.out;
        bool first = true;
        for (int64_t ti = 0; ti < h.k; ++ti) {
          const T* row = plane + (oi * h.s - h.pb + ti * h.d) * w.size - w.pb;
          for (int64_t tj = 0; tj < w.k; ++tj) {
            const T* r = row + tj * w.d;
            if (first) {
              for (int64_t oj = 0; oj < w.out; ++oj) d[oj] = r[oj * w.s];
              first = false;
            } else if (kMax) {
              for (int64_t oj = 0; oj < w.out; ++oj) {
                T v = r[oj * w.s];
                d[oj] = (v > d[oj] || v != v) ? v : d[oj];
              }
            } else {
              for (int64_t oj = 0; oj < w.out; ++oj) d[oj] += r[oj * w.s];
            }
          }
        }
        if (!kMax)
          for (int64_t oj = 0; oj < w.out; ++oj) d[oj] = static_cast<T>(d[oj] * inv_count[oi * w.out + oj]);
      }
    }
    if (kMax && !full) {
      // each plane copied into a buffer bordered with the lowest value (neutral for max): every
      // window then lies inside it and whole output rows run without bounds checks
      // (pads and strides come from the file: the size is bounded before allocating, in 128 bits)
      auto extent = [](const PoolAxis& a) {
        return std::max<__int128>(static_cast<__int128>(a.pb) + a.size,
                                  static_cast<__int128>(a.out - 1) * a.s + static_cast<__int128>(a.k - 1) * a.d + 1);
      };
      const __int128 bytes = extent(h) * extent(w) * static_cast<__int128>(sizeof(T));
      if (bytes > static_cast<__int128>(current_limits().max_tensor_bytes))
        fail_too_big("max_pool", "the padded input plane would take", static_cast<unsigned __int128>(bytes));
      const int64_t hp = static_cast<int64_t>(extent(h)), wp = static_cast<int64_t>(extent(w));
      std::unique_ptr<T[]> buf(new T[static_cast<size_t>(hp * wp)]);
      T* padded = buf.get();
      std::fill(padded, padded + hp * wp, lowest);
      for (int64_t p = 0; p < planes; ++p) {
        const T* plane = xp + p * h.size * w.size;
        for (int64_t i = 0; i < h.size; ++i)
          std::memcpy(padded + (h.pb + i) * wp + w.pb, plane + i * w.size, w.size * sizeof(T));
        for (int64_t oi = 0; oi < h.out; ++oi) {
          T* __restrict d = yp + (p * h.out + oi) * w.out;
          for (int64_t ti = 0; ti < h.k; ++ti) {
            const T* row = padded + (oi * h.s + ti * h.d) * wp;
            for (int64_t tj = 0; tj < w.k; ++tj) {
              const T* __restrict r = row + tj * w.d;
              if (ti == 0 && tj == 0) {
                for (int64_t oj = 0; oj < w.out; ++oj) d[oj] = r[oj * w.s];
              } else {
                for (int64_t oj = 0; oj < w.out; ++oj) {
                  T v = r[oj * w.s];
                  d[oj] = (v > d[oj] || v != v) ? v : d[oj];
                }
              }
            }
          }
        }
      }
      return;
    }
    for (int64_t p = 0; !full && p < planes; ++p) {
      const T* plane = xp + p * h.size * w.size;
      T* dst = yp + p * h.out * w.out;
      for (int64_t oi = 0; oi < h.out; ++oi) {
        int64_t i0 = oi * h.s - h.pb;
        for (int64_t oj = 0; oj < w.out; ++oj) {
          int64_t j0 = oj * w.s - w.pb;
          T best = lowest;
          double sum = 0;
          for (int64_t ti = hlo[oi]; ti < hhi[oi]; ++ti) {
            const T* row = plane + (i0 + ti * h.d) * w.size + j0;
            for (int64_t tj = wlo[oj]; tj < whi[oj]; ++tj) {
              T v = row[tj * w.d];
              if (kMax) {
                if (best == best && (v != v || v > best)) best = v;
              } else {
                sum += static_cast<double>(v);
              }
            }
          }
          if (kMax) dst[oi * w.out + oj] = best;
          else dst[oi * w.out + oj] = static_cast<T>(sum * inv_count[oi * w.out + oj]);
        }
      }
    }
  });
}

template <bool kMax>
void global_pool_kernel(KernelCall& c) {
  const Tensor& x = *c.in.at(0);
  if (x.rank() < 3) fail(kKernelError, "global pooling needs rank >= 3");
  Shape out = {x.shape[0], x.shape[1]};
  out.resize(x.rank(), 1);
  c.expect_shape(0, out);
  c.expect_dtype(x.dtype, 1);
  int64_t planes = x.shape[0] * x.shape[1], spatial = x.size() / std::max<int64_t>(planes, 1);
  dispatch_number(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.ptr<T>();
    T* yp = c.out.at(0)->ptr<T>();
    for (int64_t p = 0; p < planes; ++p) {
      const T* src = xp + p * spatial;
      if (kMax) {
        if (spatial == 0) fail(kKernelError, "global_max_pool of an empty input");
        T best = src[0];
        for (int64_t s = 1; s < spatial && best == best; ++s) best = (src[s] > best || src[s] != src[s]) ? src[s] : best;
        yp[p] = best;
      } else {
        double sum = 0;
        for (int64_t s = 0; s < spatial; ++s) sum += src[s];
        yp[p] = static_cast<T>(sum / static_cast<double>(spatial));
      }
    }
  });
}

void check_pool(const OpDef& op, const GraphDef& g) {
  require_no_f16(op, g);
  size_t rank = g.values[op.inputs.at(0)].shape.size();
  if (op.kind.find("global") == std::string::npos && rank != 3 && rank != 4)
    fail(kUnsupportedError, "native pooling handles 1-D and 2-D only");
  if (op.kind == "avg_pool" || op.kind == "global_avg_pool") require_float(op, g);
}

}  // namespace

void register_nn(KernelTable& t) {
  t["softmax"] = {softmax_kernel<false>, require_float};
  t["log_softmax"] = {softmax_kernel<true>, require_float};
  t["layer_norm"] = {layer_norm_kernel, require_float};
  t["batch_norm"] = {batch_norm_kernel, require_float};
  t["instance_norm"] = {instance_norm_kernel, require_float};
  t["max_pool"] = {pool_kernel<true>, check_pool};
  t["avg_pool"] = {pool_kernel<false>, check_pool};
  t["global_avg_pool"] = {global_pool_kernel<false>, check_pool};
  t["global_max_pool"] = {global_pool_kernel<true>, check_pool};
}

}  // namespace castml
