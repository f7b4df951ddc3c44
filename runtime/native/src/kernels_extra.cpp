// Layout, update, one_hot, prelu, lrn and transposed-convolution kernels (runtime/kernels/*.py
// are the specification: shape.py, nn.py, special.py, conv.py):
// - depth_to_space (DCR/CRD) and space_to_depth: 4-D block moves, any dtype (bytes are copied);
// - slice_update / index_update: a copy of x with a strided slice / the indices along one axis
//   replaced by an update broadcast to that region (duplicate indices: the last write wins, as in
//   NumPy); index_add: the same with the updates added (duplicates accumulate, as np.add.at);
//   boolean_mask: x[mask] when the result length is known before the step runs (a static
//   size or one bound by the inputs) -- a data-dependent length, which is what tracing emits, is
//   refused at load since the Program sizes every buffer before running;
// - one_hot (ONNX OneHot, optional `values` = (off, on)), prelu (slope broadcast to x), lrn
//   (ONNX LRN across channels, sums of squares in double);
// - conv_transpose (ONNX ConvTranspose, 1-3 spatial dims, float32/float64): per image and group
//   one GEMM W_g^T (M/g*K x C/g) . X_g (C/g x L) into columns, then col2im adds every kernel tap's
//   row at its strided, dilated output positions (pads cropped), then the bias.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>
#include <type_traits>
#include <vector>

#include "gemm.h"
#include "kernel.h"
#include "loops.h"

namespace castml {
namespace {

// Calls f(std::integral_constant<size_t, S>()) with S the element size of `t`.
template <class F>
void dispatch_size(DType t, F&& f) {
  switch (dtype_size(t)) {
    case 1: return f(std::integral_constant<size_t, 1>());
    case 2: return f(std::integral_constant<size_t, 2>());
    case 4: return f(std::integral_constant<size_t, 4>());
    case 8: return f(std::integral_constant<size_t, 8>());
    default: fail(kKernelError, std::string("no copy kernel for dtype ") + dtype_name(t));
  }
}

// y = x (same dtype and shape) unless they already share their buffer.
void copy_input(const Tensor& x, Tensor& y) {
  if (y.data != x.data && x.nbytes()) std::memmove(y.data, x.data, x.nbytes());
}

// `upd` broadcast to `target` as a C-contiguous buffer: upd's own data when its shape already is
// `target`, else a copy kept in `scratch`. Throws a kernel error naming `what` when it does not
// broadcast.
const char* broadcast_update(const Tensor& upd, const Shape& target, const char* what, std::vector<uint8_t>& scratch) {
  if (upd.shape == target) return static_cast<const char*>(upd.data);
  if (upd.rank() > static_cast<int>(target.size()) || broadcast_shape(upd.shape, target) != target)
    fail(kKernelError, std::string(what) + ": update of shape " + shape_str(upd.shape) +
                           " does not broadcast to the updated region's shape " + shape_str(target));
  scratch.resize(static_cast<size_t>(numel(target)) * dtype_size(upd.dtype));
  Tensor dst{upd.dtype, target, scratch.data()};
  broadcast_copy(upd, dst);
  return reinterpret_cast<const char*>(scratch.data());
}

// Value `v`'s shape mentions a symbol that no graph input binds (a data-dependent size).
std::string unbound_symbols(const GraphDef& g, uint32_t v) {
  std::set<std::string> bound, used;
  for (uint32_t in : g.regions.at(0).inputs)
    for (const Dim& d : g.values[in].shape)
      if (d.is_symbol()) bound.insert(d.text);
  for (const Dim& d : g.values[v].shape) d.symbols(&used);
  std::string out;
  for (const std::string& s : used)
    if (!bound.count(s)) out += (out.empty() ? "'" : ", '") + s + "'";
  return out;
}

// Every input (the first n_in, all when negative) and output has the dtype of input 0; no float16
// unless `allow_f16` (pure byte copies).
void require_same_dtype(const OpDef& op, const GraphDef& g, int n_in, bool allow_f16) {
  DType t = value_dtype(g, op.inputs.at(0));
  if (t == kFloat16 && !allow_f16) fail(kUnsupportedError, "native '" + op.kind + "' has no float16 kernel");
  for (size_t k = 0; k < op.inputs.size() && (n_in < 0 || static_cast<int>(k) < n_in); ++k)
    if (value_dtype(g, op.inputs[k]) != t)
      fail(kUnsupportedError, "native '" + op.kind + "' expects input " + std::to_string(k) + " to have dtype " +
                                  dtype_name(t) + ", got " + dtype_name(value_dtype(g, op.inputs[k])));
  for (uint32_t v : op.outputs)
    if (value_dtype(g, v) != t)
      fail(kUnsupportedError, "native '" + op.kind + "' expects the output dtype " + dtype_name(t) + ", got " +
                                  dtype_name(value_dtype(g, v)));
}

void require_arity(const OpDef& op, size_t lo, size_t hi) {
  if (op.inputs.size() < lo || op.inputs.size() > hi || op.outputs.size() != 1)
    fail(kUnsupportedError, "native '" + op.kind + "' takes " + std::to_string(lo) +
                                (lo == hi ? "" : "-" + std::to_string(hi)) + " inputs and one output, got " +
                                std::to_string(op.inputs.size()) + " and " + std::to_string(op.outputs.size()));
}

// ---- depth_to_space / space_to_depth ------------------------------------------------------------

int64_t blocksize(KernelCall& c) {
  int64_t b = c.attr("blocksize").i;
  if (b < 1) fail(kKernelError, "blocksize must be >= 1, got " + std::to_string(b));
  return b;
}

void depth_to_space_kernel(KernelCall& c) {
  const Tensor& x = *c.in.at(0);
  Tensor& y = *c.out.at(0);
  if (x.rank() != 4) fail(kKernelError, "depth_to_space needs a 4-D input, got " + shape_str(x.shape));
  const int64_t b = blocksize(c), n = x.shape[0], ch = x.shape[1], h = x.shape[2], w = x.shape[3];
  const std::string mode = c.s("mode", "DCR");
  if (mode != "DCR" && mode != "CRD") fail(kKernelError, "depth_to_space: mode must be 'DCR' or 'CRD', got '" + mode + "'");
  const int64_t bb = checked_int64(static_cast<__int128>(b) * b);
  if (ch % bb)
    fail(kKernelError, "depth_to_space: channels " + std::to_string(ch) + " not divisible by blocksize^2 = " +
                           std::to_string(bb));
  const int64_t co = ch / bb;
  c.expect_shape(0, {n, co, checked_int64(static_cast<__int128>(h) * b), checked_int64(static_cast<__int128>(w) * b)});
  c.expect_dtype(x.dtype, 1);
  const bool crd = mode == "CRD";
  dispatch_size(x.dtype, [&](auto size) {
    constexpr size_t S = decltype(size)::value;
    const char* xp = static_cast<const char*>(x.data);
    char* yp = static_cast<char*>(y.data);
    // output row (img, oc, hy * b + i) takes, for each j, input row (img, channel(i, j), hy) at
    // columns j, j + b, ...
    for (int64_t img = 0; img < n; ++img)
      for (int64_t oc = 0; oc < co; ++oc)
        for (int64_t hy = 0; hy < h; ++hy)
          for (int64_t i = 0; i < b; ++i) {
            char* dst = yp + (((img * co + oc) * h + hy) * b + i) * w * b * S;
            for (int64_t j = 0; j < b; ++j) {
              const int64_t chan = crd ? oc * bb + i * b + j : (i * b + j) * co + oc;
              const char* src = xp + ((img * ch + chan) * h + hy) * w * S;
              for (int64_t wx = 0; wx < w; ++wx) std::memcpy(dst + (wx * b + j) * S, src + wx * S, S);
            }
          }
  });
}

void space_to_depth_kernel(KernelCall& c) {
  const Tensor& x = *c.in.at(0);
  Tensor& y = *c.out.at(0);
  if (x.rank() != 4) fail(kKernelError, "space_to_depth needs a 4-D input, got " + shape_str(x.shape));
  const int64_t b = blocksize(c), n = x.shape[0], ch = x.shape[1], h = x.shape[2], w = x.shape[3];
  if (h % b || w % b)
    fail(kKernelError, "space_to_depth: spatial shape (" + std::to_string(h) + ", " + std::to_string(w) +
                           ") not divisible by blocksize " + std::to_string(b));
  const int64_t ho = h / b, wo = w / b;
  c.expect_shape(0, {n, checked_int64(static_cast<__int128>(ch) * b * b), ho, wo});
  c.expect_dtype(x.dtype, 1);
  dispatch_size(x.dtype, [&](auto size) {
    constexpr size_t S = decltype(size)::value;
    const char* xp = static_cast<const char*>(x.data);
    char* yp = static_cast<char*>(y.data);
    // output channel (i * b + j) * ch + ci, row hy = input (ci, hy * b + i) at columns j, j + b, ...
    for (int64_t img = 0; img < n; ++img)
      for (int64_t i = 0; i < b; ++i)
        for (int64_t j = 0; j < b; ++j)
          for (int64_t ci = 0; ci < ch; ++ci)
            for (int64_t hy = 0; hy < ho; ++hy) {
              char* dst = yp + (((img * b * b + i * b + j) * ch + ci) * ho + hy) * wo * S;
              const char* src = xp + (((img * ch + ci) * h + hy * b + i) * w + j) * S;
              for (int64_t wx = 0; wx < wo; ++wx) std::memcpy(dst + wx * S, src + wx * b * S, S);
            }
  });
}

void check_block(const OpDef& op, const GraphDef& g) {
  require_arity(op, 1, 1);
  require_same_dtype(op, g, -1, true);
  if (g.values[op.inputs[0]].shape.size() != 4)
    fail(kUnsupportedError, "native '" + op.kind + "' needs a 4-D input");
  auto it = op.attrs.find("mode");
  if (it != op.attrs.end() && it->second.s != "DCR" && it->second.s != "CRD")
    fail(kUnsupportedError, "native depth_to_space supports modes 'DCR' and 'CRD', got '" + it->second.s + "'");
}

// ---- slice_update / index_update / boolean_mask -----------------------------------------------

// out[maps[0][i0], ..., maps[r-1][ir]] = src[i0, ..., ir] (src C-contiguous of shape `target`,
// out of shape `out_shape`, same rank).
template <size_t S>
void scatter_axis_map(const char* src, const Shape& target, char* out, const Shape& out_shape,
                      const std::vector<std::vector<int64_t>>& maps) {
  const int r = static_cast<int>(target.size());
  const int64_t total = numel(target);
  if (total == 0) return;
  if (r == 0) {
    std::memcpy(out, src, S);
    return;
  }
  std::vector<int64_t> stride(r, 1);
  for (int d = r - 2; d >= 0; --d) stride[d] = stride[d + 1] * out_shape[d + 1];
  const int64_t n = target[r - 1];
  const std::vector<int64_t>& last = maps[r - 1];
  std::vector<int64_t> idx(r, 0);
  for (int64_t o = 0; o < total; o += n) {
    int64_t base = 0;
    for (int d = 0; d < r - 1; ++d) base += maps[d][idx[d]] * stride[d];
    for (int64_t j = 0; j < n; ++j) std::memcpy(out + (base + last[j]) * S, src + (o + j) * S, S);
    for (int d = r - 2; d >= 0; --d) {
      if (++idx[d] < target[d]) break;
      idx[d] = 0;
    }
  }
}

void slice_update_kernel(KernelCall& c) {
  const Tensor& x = *c.in.at(0);
  const Tensor& upd = *c.in.at(1);
  Tensor& y = *c.out.at(0);
  c.expect_shape(0, x.shape);
  c.expect_dtype(x.dtype, 2);
  std::vector<int64_t> starts = c.ints("starts"), stops = c.ints("stops"), steps = c.ints("steps");
  const int r = x.rank();
  if (starts.size() > static_cast<size_t>(r) || stops.size() != starts.size() || steps.size() != starts.size())
    fail(kKernelError, "slice_update: " + std::to_string(starts.size()) + " starts, " + std::to_string(stops.size()) +
                           " stops and " + std::to_string(steps.size()) + " steps for an input of shape " +
                           shape_str(x.shape));
  std::vector<std::vector<int64_t>> maps(r);
  Shape target(r);
  for (int d = 0; d < r; ++d) {  // the normalized slice of slice_kernel (kernels_shape.cpp)
    const int64_t dim = x.shape[d];
    int64_t start = 0, stop = dim, step = 1;
    if (static_cast<size_t>(d) < starts.size()) start = starts[d], stop = stops[d], step = steps[d];
    if (step == 0) fail(kKernelError, "slice_update: slice step cannot be zero (axis " + std::to_string(d) + ")");
    int64_t cnt;
    if (step > 0) {
      start = std::clamp<int64_t>(start, 0, dim);
      stop = std::clamp<int64_t>(stop, 0, dim);
      cnt = stop > start ? checked_int64((static_cast<__int128>(stop) - start + step - 1) / step) : 0;
    } else {
      start = std::clamp<int64_t>(start, -1, dim - 1);
      stop = std::clamp<int64_t>(stop, -1, dim - 1);  // -1: through index 0
      cnt = start > stop ? checked_int64((static_cast<__int128>(start) - stop - step - 1) / -static_cast<__int128>(step))
                         : 0;
    }
    target[d] = cnt;
    maps[d].resize(cnt);
    for (int64_t j = 0; j < cnt; ++j) maps[d][j] = start + j * step;
  }
  std::vector<uint8_t> scratch;
  const char* src = broadcast_update(upd, target, "slice_update", scratch);
  copy_input(x, y);
  dispatch_size(x.dtype, [&](auto size) {
    scatter_axis_map<decltype(size)::value>(src, target, static_cast<char*>(y.data), y.shape, maps);
  });
}

// index_update (a repeated index keeps its last update) and index_add (updates accumulate, in index
// order, as np.add.at; integers wrap): a copy of x written at the indices along one axis
void index_write(KernelCall& c, const std::string& name, bool accumulate) {
  const Tensor& x = *c.in.at(0);
  const Tensor& idx = *c.in.at(1);
  const Tensor& upd = *c.in.at(2);
  Tensor& y = *c.out.at(0);
  c.expect_shape(0, x.shape);
  if (upd.dtype != x.dtype || y.dtype != x.dtype)
    fail(kKernelError, name + ": x, update and output differ in dtype (" + dtype_name(x.dtype) + ", " +
                           dtype_name(upd.dtype) + ", " + dtype_name(y.dtype) + ")");
  if (!is_int(idx.dtype)) fail(kKernelError, name + ": indices must be integers, got " + dtype_name(idx.dtype));
  const int axis = norm_axis(c.i("axis", 0), x.rank());
  int64_t outer, n, inner;
  split_axis(x.shape, axis, &outer, &n, &inner);
  Shape target(x.shape.begin(), x.shape.begin() + axis);
  target.insert(target.end(), idx.shape.begin(), idx.shape.end());
  target.insert(target.end(), x.shape.begin() + axis + 1, x.shape.end());
  std::vector<uint8_t> iscratch;
  const int64_t* ip = static_cast<const int64_t*>(as_dtype(idx, kInt64, iscratch));
  const int64_t ni = idx.size();
  for (int64_t j = 0; j < ni; ++j)
    if (ip[j] < -n || ip[j] >= n)
      fail(kKernelError, "index " + std::to_string(ip[j]) + " is out of bounds for axis " + std::to_string(axis) +
                             " with size " + std::to_string(n));
  std::vector<uint8_t> scratch;
  const char* src = broadcast_update(upd, target, name.c_str(), scratch);
  copy_input(x, y);
  if (accumulate) {
    dispatch_number(x.dtype, [&](auto zero) {
      using T = decltype(zero);
      T* out = y.ptr<T>();
      const T* in = reinterpret_cast<const T*>(src);
      for (int64_t o = 0; o < outer; ++o)
        for (int64_t j = 0; j < ni; ++j) {
          T* row = out + (o * n + (ip[j] < 0 ? ip[j] + n : ip[j])) * inner;
          const T* u = in + (o * ni + j) * inner;
          for (int64_t e = 0; e < inner; ++e) {
            if constexpr (std::is_same_v<T, bool>)  // (refused by dispatch_number before this runs)
              row[e] = row[e] || u[e];
            else if constexpr (std::is_integral_v<T>)
              row[e] = static_cast<T>(static_cast<std::make_unsigned_t<T>>(row[e]) +
                                      static_cast<std::make_unsigned_t<T>>(u[e]));
            else
              row[e] += u[e];
          }
        }
    });
    return;
  }
  const size_t block = static_cast<size_t>(inner) * dtype_size(x.dtype);
  char* dst = static_cast<char*>(y.data);
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t j = 0; j < ni; ++j) {  // in order: a repeated index keeps its last update
      const int64_t k = ip[j] < 0 ? ip[j] + n : ip[j];
      std::memcpy(dst + (o * n + k) * block, src + (o * ni + j) * block, block);
    }
}

void index_update_kernel(KernelCall& c) { index_write(c, "index_update", false); }
void index_add_kernel(KernelCall& c) { index_write(c, "index_add", true); }

void boolean_mask_kernel(KernelCall& c) {
  const Tensor& x = *c.in.at(0);
  const Tensor& mask = *c.in.at(1);
  if (mask.dtype != kBool) fail(kKernelError, std::string("boolean_mask: the mask must be bool, got ") + dtype_name(mask.dtype));
  if (mask.rank() > x.rank() || !std::equal(mask.shape.begin(), mask.shape.end(), x.shape.begin()))
    fail(kKernelError, "boolean_mask: mask of shape " + shape_str(mask.shape) + " must match the leading dims of " +
                           shape_str(x.shape));
  c.expect_dtype(x.dtype, 1);
  const bool* mp = mask.ptr<bool>();
  const int64_t nm = mask.size();
  int64_t count = 0;
  for (int64_t i = 0; i < nm; ++i) count += mp[i] ? 1 : 0;
  Shape out = {count};
  out.insert(out.end(), x.shape.begin() + mask.rank(), x.shape.end());
  c.expect_shape(0, out);
  int64_t inner = 1;
  for (int d = mask.rank(); d < x.rank(); ++d) inner *= x.shape[d];
  const size_t block = static_cast<size_t>(inner) * dtype_size(x.dtype);
  const char* src = static_cast<const char*>(x.data);
  char* dst = static_cast<char*>(c.out.at(0)->data);
  for (int64_t i = 0, k = 0; i < nm; ++i)
    if (mp[i]) std::memcpy(dst + (k++) * block, src + i * block, block);
}

void check_slice_update(const OpDef& op, const GraphDef& g) {
  require_arity(op, 2, 2);
  require_same_dtype(op, g, -1, true);
}

void check_index_update(const OpDef& op, const GraphDef& g) {
  require_arity(op, 3, 3);
  DType it = value_dtype(g, op.inputs[1]);
  if (!is_int(it)) fail(kUnsupportedError, "native " + op.kind + " needs integer indices, got " + dtype_name(it));
  if (value_dtype(g, op.inputs[2]) != value_dtype(g, op.inputs[0]) || value_dtype(g, op.outputs[0]) != value_dtype(g, op.inputs[0]))
    fail(kUnsupportedError, "native " + op.kind + " expects x, update and output of one dtype");
}

void check_boolean_mask(const OpDef& op, const GraphDef& g) {
  require_arity(op, 2, 2);
  if (value_dtype(g, op.inputs[1]) != kBool)
    fail(kUnsupportedError, std::string("native boolean_mask needs a bool mask, got ") + dtype_name(value_dtype(g, op.inputs[1])));
  if (value_dtype(g, op.outputs[0]) != value_dtype(g, op.inputs[0]))
    fail(kUnsupportedError, "native boolean_mask expects the output dtype of its input");
  std::string fresh = unbound_symbols(g, op.outputs[0]);
  if (!fresh.empty())
    fail(kUnsupportedError, "native boolean_mask: the result length (symbols [" + fresh +
                                "]) depends on the mask's values, and the native runtime sizes every buffer before "
                                "running; backend='auto' runs this graph on NumPy");
}

// ---- one_hot -----------------------------------------------------------------------------------

// The (off, on) values of a `values` attribute (ints or floats, two entries) as `out` bytes.
void one_hot_values(KernelCall& c, DType out, uint8_t off[16], uint8_t on[16]) {
  int64_t io[2] = {0, 1};
  const void* src = io;
  DType from = kInt64;
  if (c.has("values")) {
    const Attr& a = c.attr("values");
    if (a.kind == kAttrInts && a.ints.size() == 2) {
      src = a.ints.data();
    } else if (a.kind == kAttrFloats && a.floats.size() == 2) {
      src = a.floats.data();
      from = kFloat64;
    } else {
      fail(kKernelError, "one_hot: 'values' must hold two numbers (off, on)");
    }
  }
  const size_t item = dtype_size(from);
  convert(src, from, off, out, 1);
  convert(static_cast<const char*>(src) + item, from, on, out, 1);
}

void one_hot_kernel(KernelCall& c) {
  const Tensor& idx = *c.in.at(0);
  Tensor& y = *c.out.at(0);
  if (!is_int(idx.dtype)) fail(kKernelError, std::string("one_hot: indices must be integers, got ") + dtype_name(idx.dtype));
  const int64_t depth = c.attr("depth").i;
  if (depth < 0) fail(kKernelError, "one_hot: depth must be >= 0, got " + std::to_string(depth));
  const int axis = norm_axis(c.i("axis", -1), idx.rank() + 1);
  Shape out(idx.shape.begin(), idx.shape.begin() + axis);
  out.push_back(depth);
  out.insert(out.end(), idx.shape.begin() + axis, idx.shape.end());
  c.expect_shape(0, out);
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < idx.rank(); ++d) (d < axis ? outer : inner) *= idx.shape[d];
  uint8_t off[16] = {0}, on[16] = {0};
  one_hot_values(c, y.dtype, off, on);
  std::vector<uint8_t> scratch;
  const int64_t* ip = static_cast<const int64_t*>(as_dtype(idx, kInt64, scratch));
  dispatch_all(y.dtype, [&](auto tag) {
    using T = decltype(tag);
    T toff, ton;
    std::memcpy(&toff, off, sizeof(T));
    std::memcpy(&ton, on, sizeof(T));
    T* yp = y.ptr<T>();
    std::fill(yp, yp + y.size(), toff);
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t i = 0; i < inner; ++i) {
        int64_t k = ip[o * inner + i];
        if (k < 0) k += depth;  // negative indices count from depth; out of range: an all-off row
        if (k >= 0 && k < depth) yp[(o * depth + k) * inner + i] = ton;
      }
  });
}

void check_one_hot(const OpDef& op, const GraphDef& g) {
  require_arity(op, 1, 1);
  DType it = value_dtype(g, op.inputs[0]), ot = value_dtype(g, op.outputs[0]);
  if (!is_int(it)) fail(kUnsupportedError, std::string("native one_hot needs integer indices, got ") + dtype_name(it));
  if (ot == kFloat16)
    fail(kUnsupportedError, std::string("native one_hot has no kernel for output dtype ") + dtype_name(ot));
  auto v = op.attrs.find("values");
  if (v != op.attrs.end() && !((v->second.kind == kAttrInts && v->second.ints.size() == 2) ||
                               (v->second.kind == kAttrFloats && v->second.floats.size() == 2)))
    fail(kUnsupportedError, "native one_hot takes 'values' as two ints or two floats (off, on)");
}

// ---- prelu / lrn -------------------------------------------------------------------------------

// min(x, 0) * slope + max(x, 0) as the NumPy kernel computes it (NaN in x stays NaN; 0 * inf
// slopes give NaN alike).
template <class T>
inline T prelu_one(T x, T s) {
  if (x != x) return x;
  return (x < 0 ? x : T(0)) * s + (x > 0 ? x : T(0));
}

void prelu_kernel(KernelCall& c) {
  const Tensor& x = *c.in.at(0);
  const Tensor& slope = *c.in.at(1);
  Tensor& y = *c.out.at(0);
  c.expect_shape(0, x.shape);
  c.expect_dtype(x.dtype, 2);
  if (slope.rank() > x.rank() || broadcast_shape(x.shape, slope.shape) != x.shape)
    fail(kKernelError, "prelu: slope of shape " + shape_str(slope.shape) + " does not broadcast to x of shape " +
                           shape_str(x.shape));
  dispatch_float(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.ptr<T>();
    const T* sp = slope.ptr<T>();
    T* yp = y.ptr<T>();
    for_each_row<2>(y.shape, {&x.shape, &slope.shape},
                    [&](int64_t o, std::array<int64_t, 2> off, int64_t n, std::array<int64_t, 2> st) {
                      for (int64_t i = 0; i < n; ++i) yp[o + i] = prelu_one(xp[off[0] + i * st[0]], sp[off[1] + i * st[1]]);
                    });
  });
}

void lrn_kernel(KernelCall& c) {
  const Tensor& x = *c.in.at(0);
  c.expect_shape(0, x.shape);
  c.expect_dtype(x.dtype, 1);
  if (x.rank() < 2) fail(kKernelError, "lrn needs an input of rank >= 2 (N, C, ...), got " + shape_str(x.shape));
  const int64_t size = c.attr("size").i;
  if (size < 1) fail(kKernelError, "lrn: size must be >= 1, got " + std::to_string(size));
  const double alpha = c.f("alpha", 1e-4), beta = c.f("beta", 0.75), bias = c.f("bias", 1.0);
  const int64_t lo = (size - 1) / 2, hi = size - 1 - lo;
  const int64_t n = x.shape[0], ch = x.shape[1], spatial = ch && n ? x.size() / (n * ch) : 0;
  const double scale = alpha / static_cast<double>(size);
  // t^-beta: the common exponents (0.75 is ONNX's default and AlexNet's) without pow, which
  // then dominates the kernel
  auto run = [&](auto tag, auto inv_pow) {
    using T = decltype(tag);
    const T* xp = x.ptr<T>();
    T* yp = c.out.at(0)->ptr<T>();
    std::vector<double> sq(static_cast<size_t>(ch * spatial)), acc(static_cast<size_t>(spatial));
    for (int64_t b = 0; b < n; ++b) {
      const T* xb = xp + b * ch * spatial;
      T* yb = yp + b * ch * spatial;
      for (int64_t i = 0; i < ch * spatial; ++i) sq[i] = static_cast<double>(xb[i]) * xb[i];
      for (int64_t ci = 0; ci < ch; ++ci) {
        std::fill(acc.begin(), acc.end(), 0.0);
        const int64_t c0 = std::max<int64_t>(ci - lo, 0), c1 = std::min<int64_t>(ci + hi, ch - 1);
        for (int64_t cj = c0; cj <= c1; ++cj)
          for (int64_t s = 0; s < spatial; ++s) acc[s] += sq[cj * spatial + s];
        for (int64_t s = 0; s < spatial; ++s)
          yb[ci * spatial + s] = static_cast<T>(static_cast<double>(xb[ci * spatial + s]) * inv_pow(bias + scale * acc[s]));
      }
    }
  };
  auto dispatch_beta = [&](auto tag) {
    if (beta == 0.75) return run(tag, [](double t) { double r = std::sqrt(t); return 1.0 / (r * std::sqrt(r)); });
    if (beta == 0.5) return run(tag, [](double t) { return 1.0 / std::sqrt(t); });
    if (beta == 1.0) return run(tag, [](double t) { return 1.0 / t; });
    return run(tag, [beta](double t) { return std::pow(t, -beta); });
  };
  dispatch_float(x.dtype, dispatch_beta);
}

void check_prelu(const OpDef& op, const GraphDef& g) {
  require_arity(op, 2, 2);
  require_float(op, g);
  require_same_dtype(op, g, -1, false);
}

void check_lrn(const OpDef& op, const GraphDef& g) {
  require_arity(op, 1, 1);
  require_float(op, g);
  require_same_dtype(op, g, -1, false);
  if (g.values[op.inputs[0]].shape.size() < 2) fail(kUnsupportedError, "native lrn needs an input of rank >= 2");
  auto it = op.attrs.find("size");
  if (it == op.attrs.end() || it->second.kind != kAttrInt)
    fail(kUnsupportedError, "native lrn needs an int attribute 'size'");
}

// ---- conv_transpose ----------------------------------------------------------------------------

// One spatial axis of a transposed convolution; leading unused axes are {1, 1, 1, 1, 0, 1}.
struct TAxis {
  int64_t in, k, s, d, pb, out;
};

template <class T>
void conv_transpose_t(KernelCall& c) {
  const Tensor& x = *c.in.at(0);
  const Tensor& w = *c.in.at(1);
  const Tensor* bias = c.in.size() > 2 ? c.in.at(2) : nullptr;
  Tensor& y = *c.out.at(0);
  const int nd = x.rank() - 2;
  if (nd < 1 || nd > 3 || w.rank() != x.rank())
    fail(kKernelError, "native conv_transpose handles 1-3 spatial dims with a weight of the input's rank, got input " +
                           shape_str(x.shape) + " and weight " + shape_str(w.shape));
  std::vector<int64_t> strides = c.ints_or("strides", std::vector<int64_t>(nd, 1));
  std::vector<int64_t> pads = c.ints_or("pads", std::vector<int64_t>(2 * nd, 0));
  std::vector<int64_t> dil = c.ints_or("dilations", std::vector<int64_t>(nd, 1));
  std::vector<int64_t> opad = c.ints_or("output_padding", std::vector<int64_t>(nd, 0));
  if (static_cast<int>(strides.size()) != nd || static_cast<int>(pads.size()) != 2 * nd ||
      static_cast<int>(dil.size()) != nd || static_cast<int>(opad.size()) != nd)
    fail(kKernelError, "conv_transpose: strides/pads/dilations/output_padding do not match " + std::to_string(nd) +
                           " spatial dims");
  const int64_t group = c.i("group", 1), n = x.shape[0], ch = x.shape[1];
  if (group < 1 || w.shape[0] != ch || ch % group)
    fail(kKernelError, "conv_transpose: input " + shape_str(x.shape) + ", weight " + shape_str(w.shape) +
                           " and group=" + std::to_string(group) + " do not fit");
  const int64_t mg = w.shape[1], m = checked_int64(static_cast<__int128>(mg) * group), cg = ch / group;
  bool any_pad = false;
  for (int64_t p : pads) any_pad |= p != 0;
  TAxis ax[3];
  for (int i = 0; i < 3; ++i) ax[i] = {1, 1, 1, 1, 0, 1};
  Shape out = {n, m};
  for (int i = 0; i < nd; ++i) {
    TAxis& a = ax[3 - nd + i];
    a = {x.shape[2 + i], w.shape[2 + i], strides[i], dil[i], pads[i], 0};
    if (a.k < 1 || a.s < 1 || a.d < 1)
      fail(kKernelError, "conv_transpose: kernel, strides and dilations must be >= 1");
    if (opad[i] < 0) fail(kKernelError, "conv_transpose: output_padding must be >= 0, got " + std::to_string(opad[i]));
    if (pads[i] < 0 || pads[nd + i] < 0) fail(kKernelError, "conv_transpose: pads must be >= 0");
    const int64_t full = checked_int64(static_cast<__int128>(a.s) * (a.in - 1) + opad[i] +
                                       static_cast<__int128>(a.k - 1) * a.d + 1);
    a.out = checked_int64(static_cast<__int128>(full) - pads[i] - pads[nd + i]);
    if ((any_pad && a.out < 1) || a.out < 0)
      fail(kKernelError, "conv_transpose: pads leave no output from length " + std::to_string(full) + " (axis " +
                             std::to_string(i) + ")");
    out.push_back(a.out);
  }
  c.expect_shape(0, out);
  c.expect_dtype(y.dtype, bias ? 3 : 2);
  if (bias && bias->size() != m) fail(kKernelError, "conv_transpose: bias needs " + std::to_string(m) + " values, got " + shape_str(bias->shape));
  const int64_t taps = ax[0].k * ax[1].k * ax[2].k, len = ax[0].in * ax[1].in * ax[2].in;
  const int64_t olen = ax[0].out * ax[1].out * ax[2].out, rows = checked_int64(static_cast<__int128>(mg) * taps);
  const T* xp = x.ptr<T>();
  const T* wp = w.ptr<T>();
  T* yp = y.ptr<T>();
  std::fill(yp, yp + y.size(), T(0));
  if (n == 0 || m == 0 || olen == 0) return;
  // W_g^T per group: (rows x cg), the GEMM's A; float32 weights that are constants of the file
  // are transposed once and kept in the step's cache
  auto transpose_w = [&](T* wt) {
    for (int64_t gi = 0; gi < group; ++gi)
      for (int64_t ci = 0; ci < cg; ++ci)
        for (int64_t r = 0; r < rows; ++r) wt[(gi * rows + r) * cg + ci] = wp[(gi * cg + ci) * rows + r];
  };
  const size_t wt_size = static_cast<size_t>(group * rows * cg);
  const T* wtp = nullptr;
  if constexpr (std::is_same_v<T, float>) {
    if (c.cache && c.is_constant(1))
      wtp = c.cache->get({reinterpret_cast<int64_t>(wp), group, rows, cg}, wt_size, transpose_w);
  }
  std::vector<T> wt;
  if (!wtp) {
    wt.resize(wt_size);
    transpose_w(wt.data());
    wtp = wt.data();
  }
  // per tap on the last axis: the input range [lo, hi) whose outputs land inside [0, out)
  const TAxis& a2 = ax[2];
  std::vector<int64_t> lo2(a2.k), hi2(a2.k);
  for (int64_t t = 0; t < a2.k; ++t) {
    const int64_t base = t * a2.d - a2.pb;  // output of input 0
    int64_t lo = base >= 0 ? 0 : (-base + a2.s - 1) / a2.s;
    int64_t hi = a2.out - 1 - base < 0 ? 0 : (a2.out - 1 - base) / a2.s + 1;
    lo = std::min(lo, a2.in);
    hi = std::max(lo, std::min(hi, a2.in));
    lo2[t] = lo;
    hi2[t] = hi;
  }
  std::vector<T> cols(static_cast<size_t>(rows * len));
  for (int64_t b = 0; b < n; ++b)
    for (int64_t gi = 0; gi < group; ++gi) {
      if (cg > 0 && len > 0 && rows > 0)
        gemm<T>(rows, len, cg, wtp + gi * rows * cg, cg, xp + (b * ch + gi * cg) * len, len, T(0), cols.data(), len);
      else
        std::fill(cols.begin(), cols.end(), T(0));
      for (int64_t mo = 0; mo < mg; ++mo) {
        T* plane = yp + (b * m + gi * mg + mo) * olen;
        const T* crow = cols.data() + mo * taps * len;
        for (int64_t t0 = 0; t0 < ax[0].k; ++t0)
          for (int64_t t1 = 0; t1 < ax[1].k; ++t1)
            for (int64_t t2 = 0; t2 < a2.k; ++t2, crow += len) {
              for (int64_t i0 = 0; i0 < ax[0].in; ++i0) {
                const int64_t o0 = i0 * ax[0].s + t0 * ax[0].d - ax[0].pb;
                if (o0 < 0 || o0 >= ax[0].out) continue;
                for (int64_t i1 = 0; i1 < ax[1].in; ++i1) {
                  const int64_t o1 = i1 * ax[1].s + t1 * ax[1].d - ax[1].pb;
                  if (o1 < 0 || o1 >= ax[1].out) continue;
                  T* orow = plane + (o0 * ax[1].out + o1) * a2.out + t2 * a2.d - a2.pb;
                  const T* src = crow + (i0 * ax[1].in + i1) * a2.in;
                  if (a2.s == 1) {
                    for (int64_t i2 = lo2[t2]; i2 < hi2[t2]; ++i2) orow[i2] += src[i2];
                  } else {
                    for (int64_t i2 = lo2[t2]; i2 < hi2[t2]; ++i2) orow[i2 * a2.s] += src[i2];
                  }
                }
              }
            }
      }
    }
  if (bias) {
    std::vector<uint8_t> scratch;
    const T* bp = static_cast<const T*>(as_dtype(*bias, y.dtype, scratch));
    for (int64_t b = 0; b < n; ++b)
      for (int64_t mo = 0; mo < m; ++mo) {
        T* plane = yp + (b * m + mo) * olen;
        for (int64_t s = 0; s < olen; ++s) plane[s] += bp[mo];
      }
  }
}

void conv_transpose_kernel(KernelCall& c) {
  dispatch_float(c.out.at(0)->dtype, [&](auto tag) { conv_transpose_t<decltype(tag)>(c); });
}

void check_conv_transpose(const OpDef& op, const GraphDef& g) {
  require_arity(op, 2, 3);
  require_float(op, g);
  require_same_dtype(op, g, -1, false);
  const size_t rank = g.values[op.inputs[0]].shape.size();
  if (rank < 3 || rank > 5) fail(kUnsupportedError, "native conv_transpose handles 1-D, 2-D and 3-D only");
}

}  // namespace

void register_extra(KernelTable& t) {
  t["depth_to_space"] = {depth_to_space_kernel, check_block};
  t["space_to_depth"] = {space_to_depth_kernel, check_block};
  t["slice_update"] = {slice_update_kernel, check_slice_update};
  t["index_update"] = {index_update_kernel, check_index_update};
  t["index_add"] = {index_add_kernel, check_index_update};
  t["boolean_mask"] = {boolean_mask_kernel, check_boolean_mask};
  t["one_hot"] = {one_hot_kernel, check_one_hot};
  t["prelu"] = {prelu_kernel, check_prelu};
  t["lrn"] = {lrn_kernel, check_lrn};
  t["conv_transpose"] = {conv_transpose_kernel, check_conv_transpose};
}

}  // namespace castml
