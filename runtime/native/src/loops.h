// Loop helpers shared by the kernels: NumPy broadcasting over up to three operands, dtype
// conversion into scratch buffers, and shape utilities.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "common.h"

namespace castml {

// Strides (in elements) of a C-contiguous `in` broadcast against `out` (0 where broadcast).
inline std::vector<int64_t> broadcast_strides(const Shape& in, const Shape& out) {
  std::vector<int64_t> st(out.size(), 0);
  int64_t stride = 1;
  for (int i = static_cast<int>(in.size()) - 1, j = static_cast<int>(out.size()) - 1; i >= 0; --i, --j) {
    if (in[i] != 1) st[j] = stride;
    stride *= in[i];
  }
  return st;
}

// NumPy broadcast shape of a and b; throws a kernel error when they do not broadcast.
Shape broadcast_shape(const Shape& a, const Shape& b);

// Calls inner(out_offset, in_offsets, n, in_strides) for every run of the last output axis.
template <size_t K, class F>
void for_each_row(const Shape& out, const std::array<const Shape*, K>& ins, F&& inner) {
  int r = static_cast<int>(out.size());
  std::array<int64_t, K> off{}, step{};
  if (r == 0) {
    inner(int64_t{0}, off, int64_t{1}, step);
    return;
  }
  bool same = true;
  for (size_t k = 0; k < K; ++k) same &= (*ins[k] == out);
  int64_t total = numel(out);
  if (total == 0) return;
  if (same) {
    step.fill(1);
    inner(int64_t{0}, off, total, step);
    return;
  }
  std::array<std::vector<int64_t>, K> st;
  for (size_t k = 0; k < K; ++k) {
    st[k] = broadcast_strides(*ins[k], out);
    step[k] = st[k][r - 1];
  }
  int64_t n = out[r - 1];
  std::vector<int64_t> idx(r, 0);
  for (int64_t o = 0; o < total; o += n) {
    inner(o, off, n, step);
    for (int d = r - 2; d >= 0; --d) {  // advance the outer counter
      ++idx[d];
      for (size_t k = 0; k < K; ++k) off[k] += st[k][d];
      if (idx[d] < out[d]) break;
      for (size_t k = 0; k < K; ++k) off[k] -= st[k][d] * out[d];
      idx[d] = 0;
    }
  }
}

// Writes `src` broadcast to dst's shape into dst (same dtype).
void broadcast_copy(const Tensor& src, Tensor& dst);

// Converts n elements from `src` (dtype `from`) into `dst` (dtype `to`), NumPy casting rules.
void convert(const void* src, DType from, void* dst, DType to, int64_t n);

// `t` as dtype `to`: t's own data when it already is, else a converted copy kept in `scratch`.
const void* as_dtype(const Tensor& t, DType to, std::vector<uint8_t>& scratch);

// `v` as int64, or a kernel error: shape arithmetic on attribute values (pads, strides, reps
// straight from the file) is done in 128 bits and checked, never overflowing int64.
inline int64_t checked_int64(__int128 v) {
  if (v > INT64_MAX || v < INT64_MIN) fail(kKernelError, "shape arithmetic overflows int64 (attribute values too large)");
  return static_cast<int64_t>(v);
}

// floor(a / b) for b > 0, in 128 bits.
inline __int128 floor_div128(__int128 a, __int128 b) {
  __int128 q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

// Output length of a sliding window (ONNX conv/pool): floor or ceil mode, checked.
inline int64_t window_out_len(int64_t size, int64_t k, int64_t s, int64_t pb, int64_t pe, int64_t d, bool ceil_mode) {
  if (s < 1 || d < 1 || k < 1) fail(kKernelError, "kernel, strides and dilations must be >= 1");
  __int128 num = static_cast<__int128>(size) + pb + pe - static_cast<__int128>(k - 1) * d - 1;
  checked_int64(static_cast<__int128>(size) + pb + pe);
  checked_int64(static_cast<__int128>(k - 1) * d);
  if (!ceil_mode) return checked_int64(floor_div128(num, s) + 1);
  __int128 out = -floor_div128(-num, s) + 1;
  return checked_int64((out - 1) * s >= static_cast<__int128>(size) + pb ? out - 1 : out);
}

// Splits `shape` around `axis`: outer (product before), n (the axis), inner (product after).
inline void split_axis(const Shape& shape, int axis, int64_t* outer, int64_t* n, int64_t* inner) {
  *outer = 1;
  *inner = 1;
  for (int i = 0; i < axis; ++i) *outer *= shape[i];
  *n = shape.empty() ? 1 : shape[axis];
  for (size_t i = axis + 1; i < shape.size(); ++i) *inner *= shape[i];
}

}  // namespace castml
