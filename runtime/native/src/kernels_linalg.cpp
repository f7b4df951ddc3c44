// Matrix products and convolution, all through one GEMM (gemm.h):
// - matmul with NumPy semantics (1-D operands, broadcast batch dims); a batch of A against one
//   B folds into a single tall GEMM, which is what makes batch-1 and batch-64 MLPs fast;
// - gemm = act(a @ b + c): a bias along the last axis and ReLU are applied in the GEMM's tile
//   store (float32), other activations in one vectorized pass after; any other bias shape is
//   written into the output first and the GEMM accumulates (beta 1);
// - conv / fused_conv (ONNX Conv, 1-D and 2-D): float32 on the AVX-512 GEMM packs the im2col
//   matrix straight into the GEMM's operand layout (from a zero-bordered, stride-phase-split copy
//   of the input, so every row is a run of contiguous floats), with bias and ReLU in the tile
//   store; otherwise im2col into a reused thread-local buffer, then GEMM. A 1x1, stride-1,
//   unpadded conv multiplies the input directly (no copy).
// Constant weights (the B of a dense layer, a conv's W) are packed once per step into its
// StepCache (kernel.h) when the AVX-512 GEMM runs.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>

#include "gemm.h"
#include "kernel.h"
#include "loops.h"
#include "vecmath.h"

namespace castml {
namespace {

// Batched C = A @ B (+ C when accumulate) in T, NumPy matmul shapes; float32 products apply
// `epi` (a bias along the last output axis, ReLU) as they store C. `b_cache`: B is a constant of
// the file and this step's cache may keep it packed for the GEMM (float32, one B for all rows).
template <class T>
void matmul_t(const Tensor& a, const Tensor& b, Tensor& y, bool accumulate, const GemmEpilogue& epi = {},
              StepCache* b_cache = nullptr) {
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
    if constexpr (std::is_same_v<T, float>) {
      sgemm(rows, n, k, A, k, B, n, beta, C, n, epi);
    } else if constexpr (std::is_floating_point_v<T>) {
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
    if constexpr (std::is_same_v<T, float>) {
      // constant weights packed once; a single row is a matrix-vector product, which reads B as is
      if (b_cache && nbatch * m > 1 && !b_vec && sgemm_packed_available()) {
        const float* packed = b_cache->get({reinterpret_cast<int64_t>(bp), k, n}, packed_b_size(k, n),
                                           [&](float* out) { pack_b_full(bp, n, k, n, out); });
        if (packed) {
          sgemm_packed(nbatch * m, n, k, ap, k, nullptr, nullptr, 0, packed, beta, yp, n, epi);
          return;
        }
      }
    }
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
  StepCache* cache = c.is_constant(1) ? c.cache : nullptr;
  dispatch_number(c.out.at(0)->dtype,
                  [&](auto tag) { matmul_t<decltype(tag)>(*c.in.at(0), *c.in.at(1), *c.out.at(0), false, {}, cache); });
}

// In-place activation of the fused ops (names of runtime/kernels/fused.py ACTIVATIONS).
template <class T>
void activate(T* y, int64_t n, const std::string& act) {
  if constexpr (std::is_same_v<T, float>) {
    vec_activate(y, n, activation_code(act));  // 16 lanes on AVX-512 CPUs
    return;
  }
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

// Whether `bias` is a vector along the last axis of `y` (shape (1, ..., 1, n), rank <= y's),
// which the float32 GEMM adds in its epilogue instead of a broadcast copy beforehand.
bool is_row_vector_bias(const Tensor& bias, const Tensor& y, const Tensor& b) {
  if (y.dtype != kFloat32 || b.rank() < 2 || y.rank() < 1 || bias.rank() > y.rank() || bias.rank() < 1) return false;
  if (bias.shape.back() != y.shape.back()) return false;
  for (int d = 0; d + 1 < bias.rank(); ++d)
    if (bias.shape[d] != 1) return false;
  return true;
}

void gemm_kernel(KernelCall& c) {
  Tensor& y = *c.out.at(0);
  c.expect_dtype(y.dtype, 3);
  std::string act = c.s("activation", "none");
  bool bias = c.in.size() > 2;
  if (y.dtype == kFloat32 && (!bias || is_row_vector_bias(*c.in.at(2), y, *c.in.at(1)))) {
    GemmEpilogue epi;
    epi.col_bias = bias ? c.in.at(2)->ptr<float>() : nullptr;
    epi.relu = act == "relu";
    matmul_t<float>(*c.in.at(0), *c.in.at(1), y, false, epi, c.is_constant(1) ? c.cache : nullptr);
    if (!epi.relu) activate(y.ptr<float>(), y.size(), act);
    return;
  }
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
  if (g.group < 1 || g.c % g.group || g.c / g.group != g.cg || g.m % g.group)  // (no cg * group: it can overflow)
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
// column `offset`). Per kernel tap, the output columns that read inside the input form one range
// [lo, hi): zeros around it, one copy (stride 1) or a strided gather inside it, no bounds checks.
template <class T>
void im2col(const T* xg, const ConvGeom& g, T* col, int64_t ld, int64_t offset) {
  int64_t row = 0;
  for (int64_t ci = 0; ci < g.cg; ++ci)
    for (int64_t ki = 0; ki < g.kh; ++ki)
      for (int64_t kj = 0; kj < g.kw; ++kj, ++row) {
        const T* plane = xg + ci * g.h * g.w;
        T* cp = col + row * ld + offset;
        const int64_t base = kj * g.dw - g.pw0;  // input column of output column 0
        const int64_t lo = base >= 0 ? 0 : std::min(g.ow, (-base + g.sw - 1) / g.sw);
        const int64_t hi = base >= g.w ? lo : std::max(lo, std::min(g.ow, (g.w - 1 - base) / g.sw + 1));
        for (int64_t oi = 0; oi < g.oh; ++oi, cp += g.ow) {
          int64_t ii = oi * g.sh - g.ph0 + ki * g.dh;
          if (ii < 0 || ii >= g.h) {
            std::fill(cp, cp + g.ow, T(0));
            continue;
          }
          const T* src = plane + ii * g.w + base;
          std::fill(cp, cp + lo, T(0));
          if (g.sw == 1) {
            std::memcpy(cp + lo, src + lo, (hi - lo) * sizeof(T));
          } else {
            for (int64_t oj = lo; oj < hi; ++oj) cp[oj] = src[oj * g.sw];
          }
          std::fill(cp + hi, cp + g.ow, T(0));
        }
      }
}

// 64-byte aligned (the packed GEMM operand is read a cache line per row).
template <class T>
T* thread_scratch(int slot, size_t n) {
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<T, Free> buf[3];
  thread_local size_t cap[3] = {0, 0, 0};
  if (n > cap[slot]) {
    buf[slot].reset();
    cap[slot] = 0;
    T* p = static_cast<T*>(std::aligned_alloc(64, (std::max<size_t>(n, 1) * sizeof(T) + 63) / 64 * 64));
    if (!p) fail(kKernelError, "out of memory allocating " + std::to_string(n * sizeof(T)) + " bytes of conv scratch");
    buf[slot].reset(p);
    cap[slot] = n;
  }
  return buf[slot].get();
}

// The im2col matrix of `nb` images (one group: `x` points at its first channel of the first
// image, images g.c*h*w apart) as B[p][j] = src[row_off[p] + col_off[j]], which the GEMM reads
// in place or packs (gemm.h sgemm_gather, pack_b_gather); the offsets live until the next call
// on this thread. The images are first copied into a buffer, zero-bordered when the conv pads
// (every kernel tap then reads inside it) and split into sw column phases when it strides
// (phase q holds columns q, q+sw, ...: the taps of consecutive output columns are then
// consecutive floats), so that an output row is one contiguous run of the buffer. Stride 1
// without padding reads x itself.
struct ConvSource {
  const float* src;
  const int64_t* row_off;  // kdim offsets
  const int64_t* col_off;  // nb * spatial offsets
};

ConvSource conv_source(const float* x, const ConvGeom& g, int64_t nb) {
  const int64_t ph1 = (g.oh - 1) * g.sh + (g.kh - 1) * g.dh + 1 - g.h - g.ph0;  // rows read below the input
  const int64_t pw1 = (g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1 - g.w - g.pw0;
  const bool pad = g.ph0 > 0 || g.pw0 > 0 || ph1 > 0 || pw1 > 0;
  const bool copy = pad || g.sw > 1;
  const int64_t hp = pad ? g.ph0 + g.h + std::max<int64_t>(ph1, 0) : g.h;
  const int64_t wp = pad ? g.pw0 + g.w + std::max<int64_t>(pw1, 0) : g.w;
  const int64_t sw = g.sw, wq = (wp + sw - 1) / sw;  // phase width (columns of each phase)
  const int64_t plane = copy ? sw * hp * wq : g.h * g.w;  // one channel in the buffer
  const float* src = x;
  int64_t image_stride = g.c * g.h * g.w;
  if (copy) {
    // only the rows and phases some tap reads are written (a 1x1 stride-2 conv reads a quarter):
    // the rows inside the input (their offsets in a phase and in a channel of x) and the rest (zero)
    thread_local std::vector<uint8_t> row_used, phase_used;
    thread_local std::vector<int64_t> dst_rows, src_rows, zero_rows;
    row_used.assign(static_cast<size_t>(hp), 0);
    phase_used.assign(static_cast<size_t>(sw), 0);
    for (int64_t oi = 0; oi < g.oh; ++oi)
      for (int64_t ki = 0; ki < g.kh; ++ki) row_used[oi * g.sh + ki * g.dh] = 1;
    for (int64_t kj = 0; kj < g.kw; ++kj) phase_used[(kj * g.dw) % sw] = 1;
    dst_rows.clear(), src_rows.clear(), zero_rows.clear();
    for (int64_t r = 0; r < hp; ++r) {
      if (!row_used[r]) continue;
      const int64_t i = r - g.ph0;
      if (i < 0 || i >= g.h) {
        zero_rows.push_back(r * wq);
      } else {
        dst_rows.push_back(r * wq);
        src_rows.push_back(i * g.w);
      }
    }
    float* buf = thread_scratch<float>(2, static_cast<size_t>(nb * g.cg * plane));
    for (int64_t bi = 0; bi < nb; ++bi)
      for (int64_t ci = 0; ci < g.cg; ++ci) {
        const float* in = x + bi * image_stride + ci * g.h * g.w;
        float* outp = buf + (bi * g.cg + ci) * plane;
        for (int64_t q = 0; q < sw; ++q) {
          if (!phase_used[q]) continue;
          // phase column c holds padded column c*sw + q, input column c*sw + q - pw0: inside for c in [lo, hi)
          const int64_t lo = std::min(wq, std::max<int64_t>(0, (g.pw0 - q + sw - 1) / sw));
          const int64_t hi = std::max(lo, std::min(wq, (g.w + g.pw0 - q + sw - 1) / sw));
          float* phase = outp + q * hp * wq;
          for (int64_t r : zero_rows) std::fill(phase + r, phase + r + wq, 0.0f);
          gather_rows_padded(phase, dst_rows.data(), in + q - g.pw0, src_rows.data(),
                             static_cast<int64_t>(dst_rows.size()), wq, sw, lo, hi);
        }
      }
    src = buf;
    image_stride = g.cg * plane;
  }
  // tap (ki, kj) of output (oi, oj) reads buffer row oi*sh + ki*dh, padded column
  // oj*sw + kj*dw = sw*(oj + kj*dw / sw) + (kj*dw % sw): phase kj*dw % sw, column oj + kj*dw / sw
  const int64_t row_w = copy ? wq : g.w, rows = copy ? hp : g.h;
  const int64_t kdim = g.cg * g.kh * g.kw, spatial = g.oh * g.ow;
  thread_local std::vector<int64_t> row_off, col_off;
  row_off.resize(static_cast<size_t>(kdim));
  col_off.resize(static_cast<size_t>(nb * spatial));
  int64_t p = 0;
  for (int64_t ci = 0; ci < g.cg; ++ci)
    for (int64_t ki = 0; ki < g.kh; ++ki)
      for (int64_t kj = 0; kj < g.kw; ++kj) {
        const int64_t t = kj * g.dw;
        row_off[p++] = ci * plane + (copy ? (t % sw) * rows * row_w + t / sw : t) + ki * g.dh * row_w;
      }
  const int64_t col_step = copy ? 1 : sw;  // sw == 1 whenever the input is read in place
  int64_t j = 0;
  for (int64_t bi = 0; bi < nb; ++bi)
    for (int64_t oi = 0; oi < g.oh; ++oi)
      for (int64_t oj = 0; oj < g.ow; ++oj) col_off[j++] = bi * image_stride + oi * g.sh * row_w + oj * col_step;
  return {src, row_off.data(), col_off.data()};
}

// Y[mg, cols] = W[mg, kdim] · B[kdim, cols] for group `gr`: float32 adds the bias (rows are output
// channels), a residual `add` (laid out as Y) and applies ReLU in the GEMM's tile store; float64
// leaves the bias to conv_t's tail (and has no residual or ReLU here).
template <class T>
void conv_gemm(int64_t mg, int64_t cols, int64_t kdim, const T* w, const T* b, int64_t ldb, T* y, int64_t ldy,
               const T* bias, bool relu, const T* add) {
  if constexpr (std::is_same_v<T, float>) {
    GemmEpilogue epi;
    epi.row_bias = bias;
    epi.add = add;
    epi.ldadd = ldy;
    epi.relu = relu;
    sgemm(mg, cols, kdim, w, kdim, b, ldb, 0.0f, y, ldy, epi);
  } else {
    gemm<T>(mg, cols, kdim, w, kdim, b, ldb, T(0), y, ldy);
  }
}

// Images are processed one at a time (the im2col buffer of one image stays in cache) unless
// their outputs are small (< 64 positions): then the columns of a chunk of images sit side by
// side, so one GEMM serves the whole chunk (many tiny per-image GEMMs are what makes batched
// CNNs slow), and the result is scattered to NCHW. A 1x1, stride-1, unpadded conv multiplies
// each image directly. float32: the bias, a fused residual (c.residual, added to the output)
// and `relu` are applied in the GEMM's tile store (after it, for chunked GEMMs); float64: the
// bias is added after (and the caller applies the activation).
template <class T>
void conv_t(KernelCall& c, const ConvGeom& g, bool relu) {
  const T* x = c.in.at(0)->ptr<T>();
  const T* w = c.in.at(1)->ptr<T>();
  T* y = c.out.at(0)->ptr<T>();
  const T* bias = nullptr;
  if (c.in.size() > 2) {
    if (c.in.at(2)->size() != g.m) fail(kKernelError, "conv: bias needs " + std::to_string(g.m) + " values");
    bias = c.in.at(2)->ptr<T>();
  }
  constexpr bool fused = std::is_same_v<T, float>;
  int64_t kdim = g.cg * g.kh * g.kw, spatial = g.oh * g.ow, mg = g.m / g.group;
  bool direct = g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph0 == 0 && g.pw0 == 0 && g.oh == g.h &&
                g.ow == g.w;
  constexpr int64_t kChunkBytes = 16 << 20;
  int64_t chunk = direct || spatial >= 64
                      ? 1
                      : std::max<int64_t>(1, std::min<int64_t>(g.n, kChunkBytes / std::max<int64_t>(
                                                                           1, kdim * spatial * sizeof(T))));
  const T* res = nullptr;
  if (c.residual) {
    const Tensor& r = *c.residual;
    if (!fused || r.dtype != c.out.at(0)->dtype || r.shape != c.out.at(0)->shape)
      fail(kKernelError, "conv: the fused residual " + std::string(dtype_name(r.dtype)) + shape_str(r.shape) +
                             " does not match the output " + dtype_name(c.out.at(0)->dtype) +
                             shape_str(c.out.at(0)->shape));
    res = r.ptr<T>();
  }
  // a chunk's GEMM writes a scratch matrix laid out unlike the residual: add it (then ReLU) after
  const bool res_in_gemm = res && chunk == 1;
  const bool relu_in_gemm = fused && relu && (!res || res_in_gemm);
  bool packed = false;
  if constexpr (fused) packed = !direct && g.ph0 >= 0 && g.pw0 >= 0 && sgemm_packed_available();
  // constant weights: every group's W packed once for the GEMM (its A operand)
  const float* wpacked = nullptr;
  int64_t wgroup = 0;
  if constexpr (fused) {
    if (c.is_constant(1) && c.cache && sgemm_packed_available()) {
      wgroup = packed_a_size(mg, kdim);
      wpacked = c.cache->get({reinterpret_cast<int64_t>(w), g.m, kdim, g.group}, static_cast<size_t>(wgroup * g.group),
                             [&](float* out) {
                               for (int64_t gr = 0; gr < g.group; ++gr)
                                 pack_a_full(w + gr * mg * kdim, kdim, mg, kdim, out + gr * wgroup);
                             });
    }
  }
  // packed W with few rows (it stays in L2): the GEMM reads the im2col from its source, no matrix
  const bool in_place = packed && wpacked && mg <= 128 && kdim > 0;
  T* col = direct || in_place ? nullptr
                              : thread_scratch<T>(0, static_cast<size_t>(packed ? packed_b_size(kdim, spatial * chunk)
                                                                                 : kdim * spatial * chunk));
  T* tmp = chunk > 1 ? thread_scratch<T>(1, static_cast<size_t>(mg * spatial * chunk)) : nullptr;
  for (int64_t gr = 0; gr < g.group; ++gr) {
    const T* wg = w + gr * mg * kdim;
    const T* bg = fused && bias ? bias + gr * mg : nullptr;
    for (int64_t b0 = 0; b0 < g.n; b0 += chunk) {
      int64_t nb = std::min(chunk, g.n - b0), ld = nb * spatial;
      T* yb = y + (b0 * g.m + gr * mg) * spatial;
      const T* rb = res_in_gemm ? res + (b0 * g.m + gr * mg) * spatial : nullptr;  // laid out as yb
      if (direct) {
        const T* xb = x + (b0 * g.c + gr * g.cg) * g.h * g.w;
        if constexpr (fused) {
          if (wpacked) {
            GemmEpilogue epi;
            epi.row_bias = bg;
            epi.add = rb;
            epi.ldadd = spatial;
            epi.relu = relu_in_gemm;
            sgemm_packed(mg, spatial, kdim, nullptr, 0, wpacked + gr * wgroup, xb, spatial, nullptr, 0.0f, yb, spatial,
                         epi);
            continue;
          }
        }
        conv_gemm<T>(mg, spatial, kdim, wg, xb, spatial, yb, spatial, bg, relu_in_gemm, rb);
        continue;
      }
      if constexpr (fused) {
        if (packed) {
          const ConvSource cs = conv_source(x + b0 * g.c * g.h * g.w + gr * g.cg * g.h * g.w, g, nb);
          T* out = nb == 1 ? yb : tmp;
          GemmEpilogue epi;
          epi.row_bias = bg;
          epi.add = rb;  // null unless nb == 1
          epi.ldadd = spatial;
          epi.relu = relu_in_gemm;
          if (in_place) {
            sgemm_gather(mg, ld, kdim, wpacked + gr * wgroup, cs.src, cs.row_off, cs.col_off, out,
                         nb == 1 ? spatial : ld, epi);
          } else {
            pack_b_gather(cs.src, cs.row_off, kdim, cs.col_off, ld, col);
            sgemm_packed(mg, ld, kdim, wg, kdim, wpacked ? wpacked + gr * wgroup : nullptr, nullptr, 0, col, 0.0f, out,
                         nb == 1 ? spatial : ld, epi);
          }
          for (int64_t bi = 0; nb > 1 && bi < nb; ++bi)
            for (int64_t mi = 0; mi < mg; ++mi)
              std::memcpy(y + ((b0 + bi) * g.m + gr * mg + mi) * spatial, tmp + mi * ld + bi * spatial,
                          spatial * sizeof(T));
          continue;
        }
      }
      for (int64_t bi = 0; bi < nb; ++bi)
        im2col(x + ((b0 + bi) * g.c + gr * g.cg) * g.h * g.w, g, col, ld, bi * spatial);
      if (nb == 1) {
        conv_gemm<T>(mg, spatial, kdim, wg, col, spatial, yb, spatial, bg, relu_in_gemm, rb);
        continue;
      }
      conv_gemm<T>(mg, ld, kdim, wg, col, ld, tmp, ld, bg, relu_in_gemm, static_cast<const T*>(nullptr));
      for (int64_t bi = 0; bi < nb; ++bi)
        for (int64_t mi = 0; mi < mg; ++mi)
          std::memcpy(y + ((b0 + bi) * g.m + gr * mg + mi) * spatial, tmp + mi * ld + bi * spatial,
                      spatial * sizeof(T));
    }
  }
  if (!fused && bias) {
    for (int64_t n = 0; n < g.n; ++n)
      for (int64_t mi = 0; mi < g.m; ++mi) {
        T* p = y + (n * g.m + mi) * spatial;
        for (int64_t s = 0; s < spatial; ++s) p[s] += bias[mi];
      }
  }
  if (res && !res_in_gemm) {
    T* __restrict yp = y;
    const T* __restrict rp = res;
    for (int64_t i = 0, n = c.out.at(0)->size(); i < n; ++i) yp[i] += rp[i];
  }
  if (relu && !relu_in_gemm) {
    for (int64_t i = 0, n = c.out.at(0)->size(); i < n; ++i) y[i] = (y[i] > T(0) || y[i] != y[i]) ? y[i] : T(0);
  }
}

void conv_kernel(KernelCall& c) {
  ConvGeom g = conv_geometry(c);
  dispatch_float(c.out.at(0)->dtype, [&](auto tag) { conv_t<decltype(tag)>(c, g, c.fused_relu); });
}

void fused_conv_kernel(KernelCall& c) {
  ConvGeom g = conv_geometry(c);
  std::string act = c.s("activation", "none");
  dispatch_float(c.out.at(0)->dtype, [&](auto tag) {
    using T = decltype(tag);
    bool relu_in_gemm = std::is_same_v<T, float> && (act == "relu" || c.fused_relu);
    conv_t<T>(c, g, relu_in_gemm);
    if (!relu_in_gemm) activate(c.out.at(0)->ptr<T>(), c.out.at(0)->size(), act);
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
