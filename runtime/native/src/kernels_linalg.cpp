// Matrix products and convolution, all through one GEMM (gemm.h):
// - matmul with NumPy semantics (1-D operands, broadcast batch dims); a batch of A against one
//   B folds into a single tall GEMM, which is what makes batch-1 and batch-64 MLPs fast;
// - gemm = act(a @ b + c): c is written into the output first and the GEMM accumulates (beta 1);
// - conv / fused_conv (ONNX Conv, 1-D and 2-D): im2col per image and group, then GEMM; a 1x1,
//   stride-1, unpadded conv multiplies the input directly (no copy).
#include <cmath>
#include <type_traits>

#include "gemm.h"
#include "kernel.h"
#include "loops.h"
#include "vecmath.h"

namespace castml {
namespace {

// Batched C = A @ B (+ C when accumulate) in T, NumPy matmul shapes.
template <class T>
void matmul_t(const Tensor& a, const Tensor& b, Tensor& y, bool accumulate) {
  Shape as = a.shape, bs = b.shape;
  bool a_vec = as.size() == 1, b_vec = bs.size() == 1;
  if (a_vec) as.insert(as.begin(), 1);
  if (b_vec) bs.push_back(1);
  if (as.size() < 2 || bs.size() < 2) fail(kKernelError, "matmul of a 0-d array");
  int64_t m = as[as.size() - 2], k = as.back(), n = bs.back();
  if (bs[bs.size() - 2] != k)
    fail(kKernelError, "matmul: shapes " + shape_str(a.shape) + " and " + shape_str(b.shape) + " do not align");
  Shape abatch(as.begin(), as.end() - 2), bbatch(bs.begin(), bs.end() - 2);
  Shape batch = broadcast_shape(abatch, bbatch);
  Shape out = batch;
  if (!a_vec) out.push_back(m);
  if (!b_vec) out.push_back(n);
  if (y.shape != out)
    fail(kKernelError, "computed output shape " + shape_str(out) + " does not match the declared " + shape_str(y.shape));
  const T* ap = a.ptr<T>();
  const T* bp = b.ptr<T>();
  T* yp = y.ptr<T>();
  T beta = accumulate ? T(1) : T(0);
  auto mm = [&](const T* A, const T* B, T* C, int64_t rows) {
    if constexpr (std::is_floating_point_v<T>) {
      gemm<T>(rows, n, k, A, k, B, n, beta, C, n);
    } else {
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < n; ++j) {
          T acc = accumulate ? C[i * n + j] : T(0);
          for (int64_t p = 0; p < k; ++p) acc = static_cast<T>(acc + A[i * k + p] * B[p * n + j]);
          C[i * n + j] = acc;
        }
    }
  };
  int64_t nbatch = numel(batch);
  if (nbatch == 0) return;
  if (numel(bbatch) == 1 && abatch == batch) {  // one B for every A: a single tall GEMM
    mm(ap, bp, yp, nbatch * m);
    return;
  }
  std::vector<int64_t> sa = broadcast_strides(abatch, batch), sb = broadcast_strides(bbatch, batch);
  std::vector<int64_t> idx(batch.size(), 0);
  for (int64_t t = 0; t < nbatch; ++t) {
    int64_t oa = 0, ob = 0, rem = t;
    for (int d = static_cast<int>(batch.size()) - 1; d >= 0; --d) {
      int64_t i = rem % batch[d];
      rem /= batch[d];
      oa += i * sa[d];
      ob += i * sb[d];
    }
    mm(ap + oa * m * k, bp + ob * k * n, yp + t * m * n, m);
  }
}

void check_matmul(const OpDef& op, const GraphDef& g) {
  require_no_f16(op, g);
  DType t = value_dtype(g, op.outputs.at(0));
  for (uint32_t v : op.inputs)
    if (value_dtype(g, v) != t) fail(kUnsupportedError, "native matmul needs operands of the output dtype");
  if (t == kBool) fail(kUnsupportedError, "native matmul has no bool kernel");
}

void matmul_kernel(KernelCall& c) {
  c.expect_dtype(c.out.at(0)->dtype, 2);
  dispatch_number(c.out.at(0)->dtype, [&](auto tag) { matmul_t<decltype(tag)>(*c.in.at(0), *c.in.at(1), *c.out.at(0), false); });
}

// In-place activation of the fused ops (names of runtime/kernels/fused.py ACTIVATIONS).
template <class T>
void activate(T* y, int64_t n, const std::string& act) {
  if (act == "none") return;
  if (act == "relu") {
    for (int64_t i = 0; i < n; ++i) y[i] = (y[i] > T(0) || y[i] != y[i]) ? y[i] : T(0);
  } else if (act == "sigmoid") {
    for (int64_t i = 0; i < n; ++i) {
      T e = fast_exp(-std::abs(y[i]));
      y[i] = (y[i] >= 0 ? T(1) : e) / (T(1) + e);
    }
  } else if (act == "tanh") {
    for (int64_t i = 0; i < n; ++i) y[i] = std::tanh(y[i]);
  } else if (act == "gelu") {
    for (int64_t i = 0; i < n; ++i) {
      if constexpr (std::is_same_v<T, float>) y[i] = 0.5f * y[i] * fast_erfc(-y[i] * static_cast<float>(M_SQRT1_2));
      else y[i] = 0.5 * y[i] * std::erfc(-y[i] * M_SQRT1_2);
    }
  } else if (act == "gelu_tanh") {
    const double kk = std::sqrt(2.0 / M_PI);
    for (int64_t i = 0; i < n; ++i) {
      double v = y[i];
      y[i] = static_cast<T>(0.5 * v * (1.0 + std::tanh(kk * (v + 0.044715 * v * v * v))));
    }
  } else {
    fail(kKernelError, "unknown activation '" + act + "'");
  }
}

void check_fused(const OpDef& op, const GraphDef& g) {
  require_float(op, g);
  auto it = op.attrs.find("activation");
  if (it != op.attrs.end()) {
    const std::string& a = it->second.s;
    if (a != "none" && a != "relu" && a != "sigmoid" && a != "tanh" && a != "gelu" && a != "gelu_tanh")
      fail(kUnsupportedError, "native fused op has no activation '" + a + "'");
  }
}

void gemm_kernel(KernelCall& c) {
  Tensor& y = *c.out.at(0);
  c.expect_dtype(y.dtype, 3);
  std::string act = c.s("activation", "none");
  bool bias = c.in.size() > 2;
  if (bias) {
    const Tensor& bt = *c.in.at(2);
    if (broadcast_shape(y.shape, bt.shape) != y.shape)
      fail(kKernelError, "gemm: bias " + shape_str(bt.shape) + " does not broadcast to " + shape_str(y.shape));
    broadcast_copy(bt, y);
  }
  dispatch_float(y.dtype, [&](auto tag) {
    using T = decltype(tag);
    matmul_t<T>(*c.in.at(0), *c.in.at(1), y, bias);
    activate(y.ptr<T>(), y.size(), act);
  });
}

// ---- convolution --------------------------------------------------------------------------------

struct ConvGeom {
  int64_t n, c, h, w, m, cg, kh, kw, oh, ow, sh, sw, ph0, pw0, dh, dw, group;
};

ConvGeom conv_geometry(KernelCall& c) {
  const Tensor& x = *c.in.at(0);
  const Tensor& w = *c.in.at(1);
  c.expect_dtype(c.out.at(0)->dtype, 3);
  int nd = x.rank() - 2;
  if (nd < 1 || nd > 2 || w.rank() != x.rank()) fail(kKernelError, "native conv handles 1-D and 2-D only");
  std::vector<int64_t> strides = c.ints_or("strides", std::vector<int64_t>(nd, 1));
  std::vector<int64_t> pads = c.ints_or("pads", std::vector<int64_t>(2 * nd, 0));
  std::vector<int64_t> dil = c.ints_or("dilations", std::vector<int64_t>(nd, 1));
  if (static_cast<int>(strides.size()) != nd || static_cast<int>(pads.size()) != 2 * nd ||
      static_cast<int>(dil.size()) != nd)
    fail(kKernelError, "conv: strides/pads/dilations do not match the spatial rank");
  ConvGeom g{};
  g.group = c.i("group", 1);
  g.n = x.shape[0];
  g.c = x.shape[1];
  g.m = w.shape[0];
  g.cg = w.shape[1];
  if (nd == 2) {
    g.h = x.shape[2], g.w = x.shape[3], g.kh = w.shape[2], g.kw = w.shape[3];
    g.sh = strides[0], g.sw = strides[1], g.dh = dil[0], g.dw = dil[1], g.ph0 = pads[0], g.pw0 = pads[1];
    int64_t ph1 = pads[2], pw1 = pads[3];
    g.oh = window_out_len(g.h, g.kh, g.sh, g.ph0, ph1, g.dh, false);
    g.ow = window_out_len(g.w, g.kw, g.sw, g.pw0, pw1, g.dw, false);
  } else {
    g.h = 1, g.w = x.shape[2], g.kh = 1, g.kw = w.shape[2];
    g.sh = 1, g.sw = strides[0], g.dh = 1, g.dw = dil[0], g.ph0 = 0, g.pw0 = pads[0];
    g.oh = 1;
    g.ow = window_out_len(g.w, g.kw, g.sw, g.pw0, pads[1], g.dw, false);
  }
  if (g.group < 1 || g.c != g.cg * g.group || g.m % g.group)
    fail(kKernelError, "conv: input channels " + std::to_string(g.c) + " and weight " + shape_str(w.shape) +
                           " do not fit group=" + std::to_string(g.group));
  if (g.sh < 1 || g.sw < 1 || g.dh < 1 || g.dw < 1) fail(kKernelError, "conv: strides and dilations must be >= 1");
  if (g.oh < 1 || g.ow < 1) fail(kKernelError, "conv: the kernel is larger than the padded input");
  Shape out = {g.n, g.m};
  if (nd == 2) out.push_back(g.oh);
  out.push_back(g.ow);
  c.expect_shape(0, out);
  return g;
}

// im2col of one image and group into `col` (kdim rows of `ld` columns, this image's block at
// column `offset`).
template <class T>
void im2col(const T* xg, const ConvGeom& g, T* col, int64_t ld, int64_t offset) {
  int64_t row = 0;
  for (int64_t ci = 0; ci < g.cg; ++ci)
    for (int64_t ki = 0; ki < g.kh; ++ki)
      for (int64_t kj = 0; kj < g.kw; ++kj, ++row) {
        const T* plane = xg + ci * g.h * g.w;
        T* cp = col + row * ld + offset;
        for (int64_t oi = 0; oi < g.oh; ++oi) {
          int64_t ii = oi * g.sh - g.ph0 + ki * g.dh;
          if (ii < 0 || ii >= g.h) {
            std::fill(cp, cp + g.ow, T(0));
            cp += g.ow;
            continue;
          }
          const T* src = plane + ii * g.w;
          int64_t base = kj * g.dw - g.pw0;
          if (g.sw == 1 && base >= 0 && base + g.ow <= g.w) {  // a row inside the input: one copy
            std::memcpy(cp, src + base, g.ow * sizeof(T));
            cp += g.ow;
            continue;
          }
          for (int64_t oj = 0; oj < g.ow; ++oj) {
            int64_t jj = base + oj * g.sw;
            *cp++ = (jj >= 0 && jj < g.w) ? src[jj] : T(0);
          }
        }
      }
}

// Images are processed in chunks: the columns of a chunk sit side by side, so one GEMM serves
// the whole chunk (many small per-image GEMMs are what makes batched CNNs slow), then the result
// is scattered to NCHW. A 1x1, stride-1, unpadded conv multiplies each image directly.
template <class T>
void conv_t(KernelCall& c, const ConvGeom& g) {
  const T* x = c.in.at(0)->ptr<T>();
  const T* w = c.in.at(1)->ptr<T>();
  T* y = c.out.at(0)->ptr<T>();
  int64_t kdim = g.cg * g.kh * g.kw, spatial = g.oh * g.ow, mg = g.m / g.group;
  bool direct = g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph0 == 0 && g.pw0 == 0 && g.oh == g.h &&
                g.ow == g.w;
  constexpr int64_t kChunkBytes = 16 << 20;
  int64_t chunk = direct ? 1 : std::max<int64_t>(1, std::min<int64_t>(g.n, kChunkBytes / std::max<int64_t>(
                                                                                 1, kdim * spatial * sizeof(T))));
  std::vector<T> col(direct ? 0 : static_cast<size_t>(kdim * spatial * chunk));
  std::vector<T> tmp(chunk > 1 ? static_cast<size_t>(mg * spatial * chunk) : 0);
  for (int64_t gr = 0; gr < g.group; ++gr) {
    const T* wg = w + gr * mg * kdim;
    for (int64_t b0 = 0; b0 < g.n; b0 += chunk) {
      int64_t nb = std::min(chunk, g.n - b0), ld = nb * spatial;
      if (direct) {
        gemm<T>(mg, spatial, kdim, wg, kdim, x + (b0 * g.c + gr * g.cg) * g.h * g.w, spatial, T(0),
                y + (b0 * g.m + gr * mg) * spatial, spatial);
        continue;
      }
      for (int64_t bi = 0; bi < nb; ++bi)
        im2col(x + ((b0 + bi) * g.c + gr * g.cg) * g.h * g.w, g, col.data(), ld, bi * spatial);
      if (nb == 1) {
        gemm<T>(mg, spatial, kdim, wg, kdim, col.data(), spatial, T(0), y + (b0 * g.m + gr * mg) * spatial, spatial);
        continue;
      }
      gemm<T>(mg, ld, kdim, wg, kdim, col.data(), ld, T(0), tmp.data(), ld);
      for (int64_t bi = 0; bi < nb; ++bi)
        for (int64_t mi = 0; mi < mg; ++mi)
          std::memcpy(y + ((b0 + bi) * g.m + gr * mg + mi) * spatial, tmp.data() + mi * ld + bi * spatial,
                      spatial * sizeof(T));
    }
  }
  if (c.in.size() > 2) {
    const T* b = c.in.at(2)->ptr<T>();
    if (c.in.at(2)->size() != g.m) fail(kKernelError, "conv: bias needs " + std::to_string(g.m) + " values");
    for (int64_t n = 0; n < g.n; ++n)
      for (int64_t mi = 0; mi < g.m; ++mi) {
        T* p = y + (n * g.m + mi) * spatial;
        for (int64_t s = 0; s < spatial; ++s) p[s] += b[mi];
      }
  }
}

void conv_kernel(KernelCall& c) {
  ConvGeom g = conv_geometry(c);
  dispatch_float(c.out.at(0)->dtype, [&](auto tag) { conv_t<decltype(tag)>(c, g); });
}

void fused_conv_kernel(KernelCall& c) {
  ConvGeom g = conv_geometry(c);
  std::string act = c.s("activation", "none");
  dispatch_float(c.out.at(0)->dtype, [&](auto tag) {
    using T = decltype(tag);
    conv_t<T>(c, g);
    activate(c.out.at(0)->ptr<T>(), c.out.at(0)->size(), act);
  });
}

void check_conv(const OpDef& op, const GraphDef& g) {
  require_float(op, g);
  size_t rank = g.values[op.inputs.at(0)].shape.size();
  if (rank != 3 && rank != 4) fail(kUnsupportedError, "native conv handles 1-D and 2-D convolutions only");
}

}  // namespace

void register_linalg(KernelTable& t) {
  t["matmul"] = {matmul_kernel, check_matmul};
  t["gemm"] = {gemm_kernel, check_fused};
  t["conv"] = {conv_kernel, check_conv};
  t["fused_conv"] = {fused_conv_kernel, [](const OpDef& op, const GraphDef& g) {
                       check_fused(op, g);
                       check_conv(op, g);
                     }};
}

}  // namespace castml
