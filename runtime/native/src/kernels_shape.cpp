// Data movement kernels: reshape, transpose, broadcast_to, slice, pad, tile, repeat (one
// per-axis index-map copier serves the last five), concat, split, gather, and creation
// (constant, full, arange, shape_dim).
#include <algorithm>
#include <numeric>

#include "kernel.h"
#include "loops.h"

namespace castml {

namespace {

// Copies out[i0..ir] = in[maps[0][i0], ..., maps[r-1][ir]] (an entry of -1 writes `fill`).
// in and out have the same rank; maps[d] has out.shape[d] entries.
template <size_t S>
void axis_map_copy_t(const char* in, const Shape& in_shape, char* out, const Shape& out_shape,
                     const std::vector<std::vector<int64_t>>& maps, const char* fill) {
  int r = static_cast<int>(out_shape.size());
  int64_t total = numel(out_shape);
  if (total == 0) return;
  if (r == 0) {
    std::memcpy(out, in, S);
    return;
  }
  std::vector<int64_t> stride(r, 1);
  for (int d = r - 2; d >= 0; --d) stride[d] = stride[d + 1] * in_shape[d + 1];
  int64_t n = out_shape[r - 1];
  std::vector<int64_t> idx(r, 0);
  const std::vector<int64_t>& last = maps[r - 1];
  for (int64_t o = 0; o < total; o += n) {
    int64_t base = 0;
    bool filled = false;
    for (int d = 0; d < r - 1; ++d) {
      int64_t m = maps[d][idx[d]];
      if (m < 0) filled = true;
      base += m * stride[d];
    }
    char* dst = out + o * S;
    for (int64_t j = 0; j < n; ++j) {
      int64_t m = last[j];
      std::memcpy(dst + j * S, (filled || m < 0) ? fill : in + (base + m) * S, S);
    }
    for (int d = r - 2; d >= 0; --d) {
      if (++idx[d] < out_shape[d]) break;
      idx[d] = 0;
    }
  }
}

void axis_map_copy(const Tensor& in, Tensor& out, const std::vector<std::vector<int64_t>>& maps,
                   const void* fill = nullptr) {
  static const char zeros[16] = {0};
  const char* f = fill ? static_cast<const char*>(fill) : zeros;
  const char* src = static_cast<const char*>(in.data);
  char* dst = static_cast<char*>(out.data);
  switch (dtype_size(out.dtype)) {
    case 1: return axis_map_copy_t<1>(src, in.shape, dst, out.shape, maps, f);
    case 2: return axis_map_copy_t<2>(src, in.shape, dst, out.shape, maps, f);
    case 4: return axis_map_copy_t<4>(src, in.shape, dst, out.shape, maps, f);
    default: return axis_map_copy_t<8>(src, in.shape, dst, out.shape, maps, f);
  }
}

void reshape_kernel(KernelCall& c) {
  if (c.in.at(0)->size() != c.out.at(0)->size())
    fail(kKernelError, "cannot reshape " + shape_str(c.in.at(0)->shape) + " into " + shape_str(c.out.at(0)->shape));
  if (c.out.at(0)->data != c.in.at(0)->data) std::memcpy(c.out.at(0)->data, c.in.at(0)->data, c.in.at(0)->nbytes());
}

template <size_t S>
void transpose_t(const char* in, char* out, const Shape& out_shape, const std::vector<int64_t>& st) {
  int r = static_cast<int>(out_shape.size());
  int64_t total = numel(out_shape);
  if (total == 0) return;
  if (r == 0) {
    std::memcpy(out, in, S);
    return;
  }
  int64_t n = out_shape[r - 1], inner = st[r - 1];
  std::vector<int64_t> idx(r, 0);
  int64_t base = 0;
  for (int64_t o = 0; o < total; o += n) {
    char* dst = out + o * S;
    const char* src = in + base * S;
    if (inner == 1) {
      std::memcpy(dst, src, n * S);
    } else {
      for (int64_t j = 0; j < n; ++j) std::memcpy(dst + j * S, src + j * inner * S, S);
    }
    for (int d = r - 2; d >= 0; --d) {
      base += st[d];
      if (++idx[d] < out_shape[d]) break;
      base -= st[d] * out_shape[d];
      idx[d] = 0;
    }
  }
}

void transpose_kernel(KernelCall& c) {
  const Tensor& x = *c.in.at(0);
  std::vector<int64_t> perm = c.ints("perm");
  int r = x.rank();
  if (static_cast<int>(perm.size()) != r) fail(kKernelError, "transpose: perm does not match the rank");
  std::vector<int64_t> in_stride(r, 1), st(r);
  for (int d = r - 2; d >= 0; --d) in_stride[d] = in_stride[d + 1] * x.shape[d + 1];
  Shape out(r);
  std::vector<bool> seen(r, false);
  for (int d = 0; d < r; ++d) {
    int p = norm_axis(perm[d], r);
    if (seen[p]) fail(kKernelError, "transpose: perm repeats an axis");
    seen[p] = true;
    out[d] = x.shape[p];
    st[d] = in_stride[p];
  }
  c.expect_shape(0, out);
  const char* in = static_cast<const char*>(x.data);
  char* o = static_cast<char*>(c.out.at(0)->data);
  switch (dtype_size(x.dtype)) {
    case 1: return transpose_t<1>(in, o, out, st);
    case 2: return transpose_t<2>(in, o, out, st);
    case 4: return transpose_t<4>(in, o, out, st);
    default: return transpose_t<8>(in, o, out, st);
  }
}

void broadcast_to_kernel(KernelCall& c) {
  const Tensor& x = *c.in.at(0);
  Tensor& y = *c.out.at(0);
  c.expect_shape(0, c.ints("shape"));
  if (x.rank() > y.rank() || broadcast_shape(x.shape, y.shape) != y.shape)
    fail(kKernelError, "cannot broadcast " + shape_str(x.shape) + " to " + shape_str(y.shape));
  Tensor xin = x;
  xin.shape.insert(xin.shape.begin(), y.rank() - x.rank(), 1);
  std::vector<std::vector<int64_t>> maps(y.rank());
  for (int d = 0; d < y.rank(); ++d) {
    maps[d].resize(y.shape[d]);
    for (int64_t j = 0; j < y.shape[d]; ++j) maps[d][j] = xin.shape[d] == 1 ? 0 : j;
  }
  axis_map_copy(xin, y, maps);
}

void slice_kernel(KernelCall& c) {
  const Tensor& x = *c.in.at(0);
  std::vector<int64_t> starts = c.ints("starts"), stops = c.ints("stops"), steps = c.ints("steps");
  int r = x.rank();
  if (starts.size() > static_cast<size_t>(r) || stops.size() != starts.size() || steps.size() != starts.size())
    fail(kKernelError, "slice: starts/stops/steps do not match the rank");
  std::vector<std::vector<int64_t>> maps(r);
  Shape out(r);
  for (int d = 0; d < r; ++d) {
    int64_t dim = x.shape[d];
    int64_t start = 0, stop = dim, step = 1;
    if (static_cast<size_t>(d) < starts.size()) start = starts[d], stop = stops[d], step = steps[d];
    if (step == 0) fail(kKernelError, "slice step cannot be zero");
    int64_t n;
    if (step > 0) {  // Python slice semantics on normalized, possibly out-of-range bounds
      start = std::clamp<int64_t>(start, 0, dim);
      stop = std::clamp<int64_t>(stop, 0, dim);
      n = stop > start ? checked_int64((static_cast<__int128>(stop) - start + step - 1) / step) : 0;
    } else {
      start = std::clamp<int64_t>(start, -1, dim - 1);
      stop = std::clamp<int64_t>(stop, -1, dim - 1);  // -1: through index 0
      n = start > stop ? checked_int64((static_cast<__int128>(start) - stop - step - 1) / -static_cast<__int128>(step)) : 0;
    }
    out[d] = n;
    maps[d].resize(n);
    for (int64_t j = 0; j < n; ++j) maps[d][j] = start + j * step;
  }
  c.expect_shape(0, out);
  axis_map_copy(x, *c.out.at(0), maps);
}

void pad_kernel(KernelCall& c) {
  const Tensor& x = *c.in.at(0);
  Tensor& y = *c.out.at(0);
  std::string mode = c.s("mode", "constant");
  if (mode != "constant") fail(kKernelError, "native pad supports mode 'constant' only");
  std::vector<int64_t> pads = c.ints("pads");
  int r = x.rank();
  if (static_cast<int>(pads.size()) != 2 * r) fail(kKernelError, "pad: pads needs 2 entries per axis");
  std::vector<std::vector<int64_t>> maps(r);
  Shape out(r);
  for (int d = 0; d < r; ++d) {
    out[d] = checked_int64(static_cast<__int128>(x.shape[d]) + pads[d] + pads[r + d]);
    if (out[d] < 0) fail(kKernelError, "pad: pads crop more than the shape");
  }
  c.expect_shape(0, out);  // before sizing the maps by it
  for (int d = 0; d < r; ++d) {
    maps[d].resize(out[d]);
    for (int64_t j = 0; j < out[d]; ++j) {
      int64_t src = j - pads[d];
      maps[d][j] = (src >= 0 && src < x.shape[d]) ? src : -1;
    }
  }
  double value = c.f("value", 0.0);
  uint8_t fill[16] = {0};
  convert(&value, kFloat64, fill, y.dtype, 1);
  axis_map_copy(x, y, maps, fill);
}

void tile_kernel(KernelCall& c) {
  const Tensor& x = *c.in.at(0);
  std::vector<int64_t> reps = c.ints("reps");
  if (static_cast<int>(reps.size()) != x.rank()) fail(kKernelError, "tile: one rep per axis expected");
  std::vector<std::vector<int64_t>> maps(x.rank());
  Shape out(x.rank());
  for (int d = 0; d < x.rank(); ++d) {
    out[d] = checked_int64(static_cast<__int128>(x.shape[d]) * reps[d]);
    if (out[d] < 0) fail(kKernelError, "tile: negative reps");
  }
  c.expect_shape(0, out);  // before sizing the maps by it
  for (int d = 0; d < x.rank(); ++d) {
    maps[d].resize(out[d]);
    for (int64_t j = 0; j < out[d]; ++j) maps[d][j] = j % x.shape[d];
  }
  axis_map_copy(x, *c.out.at(0), maps);
}

void repeat_kernel(KernelCall& c) {
  const Tensor& x = *c.in.at(0);
  int64_t reps = c.i("repeats", 1);
  int axis = norm_axis(c.i("axis", 0), x.rank());
  std::vector<std::vector<int64_t>> maps(x.rank());
  Shape out = x.shape;
  out[axis] = checked_int64(static_cast<__int128>(out[axis]) * reps);
  if (reps < 0) fail(kKernelError, "repeat: negative repeats");
  c.expect_shape(0, out);  // before sizing the maps by it
  for (int d = 0; d < x.rank(); ++d) {
    maps[d].resize(out[d]);
    for (int64_t j = 0; j < out[d]; ++j) maps[d][j] = d == axis ? j / reps : j;
  }
  axis_map_copy(x, *c.out.at(0), maps);
}

void concat_kernel(KernelCall& c) {
  Tensor& y = *c.out.at(0);
  int r = y.rank();
  int axis = norm_axis(c.i("axis", 0), r);
  int64_t outer, n, inner;
  split_axis(y.shape, axis, &outer, &n, &inner);
  size_t item = dtype_size(y.dtype);
  Shape expect = c.in.at(0)->shape;
  expect[axis] = 0;
  for (const Tensor* t : c.in) {
    if (t->rank() != r || t->dtype != y.dtype) fail(kKernelError, "concat: inputs differ in rank or dtype");
    for (int d = 0; d < r; ++d)
      if (d != axis && t->shape[d] != y.shape[d])
        fail(kKernelError, "concat: input shape " + shape_str(t->shape) + " does not fit " + shape_str(y.shape));
    expect[axis] += t->shape[axis];
  }
  c.expect_shape(0, expect);
  char* dst = static_cast<char*>(y.data);
  int64_t offset = 0;
  for (const Tensor* t : c.in) {
    int64_t block = t->shape[axis] * inner * item;
    const char* src = static_cast<const char*>(t->data);
    for (int64_t o = 0; o < outer; ++o) std::memcpy(dst + (o * n * inner) * item + offset, src + o * block, block);
    offset += block;
  }
}

void split_kernel(KernelCall& c) {
  const Tensor& x = *c.in.at(0);
  int axis = norm_axis(c.i("axis", 0), x.rank());
  int64_t outer, n, inner;
  split_axis(x.shape, axis, &outer, &n, &inner);
  size_t item = dtype_size(x.dtype);
  const char* src = static_cast<const char*>(x.data);
  int64_t offset = 0;
  for (size_t k = 0; k < c.out.size(); ++k) {
    Tensor& y = *c.out.at(k);
    Shape expect = x.shape;
    expect[axis] = y.shape[axis];
    c.expect_shape(k, expect);
    int64_t block = y.shape[axis] * inner * item;
    if (offset / static_cast<int64_t>(inner * item) + y.shape[axis] > n) fail(kKernelError, "split: sizes exceed the axis");
    for (int64_t o = 0; o < outer; ++o)
      std::memcpy(static_cast<char*>(y.data) + o * block, src + (o * n * inner) * item + offset, block);
    offset += block;
  }
}

void gather_kernel(KernelCall& c) {
  const Tensor& x = *c.in.at(0);
  const Tensor& idx = *c.in.at(1);
  int axis = norm_axis(c.i("axis", 0), x.rank());
  int64_t outer, n, inner;
  split_axis(x.shape, axis, &outer, &n, &inner);
  Shape out(x.shape.begin(), x.shape.begin() + axis);
  out.insert(out.end(), idx.shape.begin(), idx.shape.end());
  out.insert(out.end(), x.shape.begin() + axis + 1, x.shape.end());
  c.expect_shape(0, out);
  std::vector<uint8_t> scratch;
  if (!is_int(idx.dtype) && idx.dtype != kBool) fail(kKernelError, "gather: indices must be integers");
  const int64_t* ip = static_cast<const int64_t*>(as_dtype(idx, kInt64, scratch));
  int64_t ni = idx.size();
  size_t block = inner * dtype_size(x.dtype);
  const char* src = static_cast<const char*>(x.data);
  char* dst = static_cast<char*>(c.out.at(0)->data);
  for (int64_t j = 0; j < ni; ++j)
    if (ip[j] < -n || ip[j] >= n)
      fail(kKernelError, "index " + std::to_string(ip[j]) + " is out of bounds for axis " + std::to_string(axis) +
                             " with size " + std::to_string(n));
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t j = 0; j < ni; ++j) {
      int64_t k = ip[j] < 0 ? ip[j] + n : ip[j];
      std::memcpy(dst + (o * ni + j) * block, src + (o * n + k) * block, block);
    }
}

void constant_kernel(KernelCall& c) {
  // the output aliases the mapped tensor (program.cpp); only the shape is checked here
  ConstTensor t = c.tensor("value");
  if (t.dtype != c.out.at(0)->dtype) fail(kKernelError, "constant: stored dtype differs from the declared one");
  c.expect_shape(0, t.shape);
}

void full_kernel(KernelCall& c) {
  Tensor& y = *c.out.at(0);
  c.expect_shape(0, c.ints("shape"));
  ConstTensor v = c.tensor("value");
  if (numel(v.shape) != 1) fail(kKernelError, "full: value must hold one element");
  uint8_t one[16] = {0};
  convert(v.data, v.dtype, one, y.dtype, 1);
  size_t item = dtype_size(y.dtype);
  char* p = static_cast<char*>(y.data);
  for (int64_t i = 0, n = y.size(); i < n; ++i) std::memcpy(p + i * item, one, item);
}

void arange_kernel(KernelCall& c) {
  Tensor& y = *c.out.at(0);
  std::vector<int64_t> n = c.ints("n");
  if (n.size() != 1) fail(kKernelError, "arange: n must hold one dim");
  c.expect_shape(0, {n[0]});
  dispatch_all(y.dtype, [&](auto tag) {
    using T = decltype(tag);
    T* p = y.ptr<T>();
    for (int64_t i = 0; i < n[0]; ++i) p[i] = static_cast<T>(i);
  });
}

void shape_dim_kernel(KernelCall& c) {
  const Tensor& x = *c.in.at(0);
  int axis = norm_axis(c.i("axis", 0), x.rank());
  c.expect_shape(0, {});
  c.expect_dtype(kInt64);
  *c.out.at(0)->ptr<int64_t>() = x.shape[axis];
}

void check_copy(const OpDef& op, const GraphDef& g) {
  for (uint32_t v : op.outputs)
    if (value_dtype(g, v) != value_dtype(g, op.inputs.at(0)))
      fail(kUnsupportedError, "native '" + op.kind + "' expects the output dtype of its input");
}

}  // namespace

void register_shape(KernelTable& t) {
  t["reshape"] = {reshape_kernel, check_copy};
  t["transpose"] = {transpose_kernel, check_copy};
  t["broadcast_to"] = {broadcast_to_kernel, check_copy};
  t["slice"] = {slice_kernel, check_copy};
  t["pad"] = {pad_kernel, [](const OpDef& op, const GraphDef& g) {
                check_copy(op, g);
                auto it = op.attrs.find("mode");
                if (it != op.attrs.end() && it->second.s != "constant")
                  fail(kUnsupportedError, "native pad supports mode 'constant' only");
                require_no_f16(op, g);
              }};
  t["tile"] = {tile_kernel, check_copy};
  t["repeat"] = {repeat_kernel, check_copy};
  t["concat"] = {concat_kernel, check_copy};
  t["split"] = {split_kernel, check_copy};
  t["gather"] = {gather_kernel, check_copy};
  t["constant"] = {constant_kernel, nullptr};
  t["full"] = {full_kernel, require_no_f16};
  t["arange"] = {arange_kernel, require_no_f16};
  t["shape_dim"] = {shape_dim_kernel, nullptr};
}

}  // namespace castml
