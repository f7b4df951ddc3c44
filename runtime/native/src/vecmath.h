// exp for float32 that the compiler can vectorize: no library call in the loop body.
//
// Why: a loop calling std::exp runs one element at a time, 5-10x slower than NumPy's SIMD exp,
// and softmax/sigmoid spend most of their time there. This is the Cephes expf scheme (as in
// sse_mathfun): n = round(x / ln 2), exp(r) of the remainder by a degree-6 polynomial, times
// 2**n built in the exponent bits; about 1 ulp, well inside the float32 tolerance. Results
// below ~2e-38 flush to zero; nan stays nan; overflow gives inf.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

namespace castml {

inline float fast_exp(float x) {
  // plain compares and the 1.5 * 2**23 rounding trick: floor/fmin would be libm calls on
  // baseline x86-64 (no SSE4.1) and stop the loop from vectorizing
  float v = x > -87.0f ? x : -87.0f;  // NaN clamps to -87 here (no float->int UB below), and is
  v = v < 88.72283f ? v : 88.72283f;  // returned as NaN at the end
  float n = (v * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = v - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float z = r * r;
  float y = ((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r +
             1.6666665459e-1f) * r + 5.0000001201e-1f;
  y = y * z + r + 1.0f;
  // 2**n as 2**(n-1) * 2, so n = 128 (x just below the overflow bound) stays finite
  int32_t bits = static_cast<int32_t>(static_cast<uint32_t>(static_cast<int32_t>(n) + 126) << 23);
  float p;
  std::memcpy(&p, &bits, sizeof p);
  float out = y * p * 2.0f;
  out = x > 88.72283f ? INFINITY : out;
  out = x < -87.0f ? 0.0f : out;
  return x != x ? x : out;
}

// Sum of n floats at stride st, in 8 float lanes combined in double (vectorizes; error ~ n/8 ulp).
template <class St>
double lane_sum(const float* p, int64_t n, St st) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int k = 0; k < 8; ++k) acc[k] += p[(j + k) * st];
  double total = 0;
  for (int k = 0; k < 8; ++k) total += acc[k];
  for (; j < n; ++j) total += p[j * st];
  return total;
}

template <class St>
double lane_sum(const double* p, int64_t n, St st) {
  double total = 0;
  for (int64_t j = 0; j < n; ++j) total += p[j * st];
  return total;
}

inline double fast_exp(double x) { return std::exp(x); }

// erfc for float32 without library calls (vectorizes): the Chebyshev fit of Numerical Recipes'
// erfcc, fractional error below 1.2e-7 everywhere, with fast_exp for the Gaussian factor.
inline float fast_erfc(float x) {
  float z = x < 0 ? -x : x;
  float t = 1.0f / (1.0f + 0.5f * z);
  float poly = -1.26551223f + t * (1.00002368f + t * (0.37409196f + t * (0.09678418f + t * (-0.18628806f +
               t * (0.27886807f + t * (-1.13520398f + t * (1.48851587f + t * (-0.82215223f + t * 0.17087277f))))))));
  float ans = t * fast_exp(-z * z + poly);
  return x >= 0 ? ans : 2.0f - ans;
}

// ---- float32 loops built twice (AVX-512 and baseline x86-64), picked at run time ----------------
//
// Why: the library is compiled for baseline x86-64 (SSE2), where these loops run 4 lanes wide at
// best; the activation after a GEMM (GELU over a 128x1024 FFN output), softmax and layer_norm
// rows were a third of a transformer layer's time. The AVX-512 builds run the same code 16 lanes
// wide (defined in kernels_elementwise.cpp). Results are the same expressions in the same order
// per element; sums over a row use more lanes (a different, not a less accurate, rounding).

// The fused ops' activations (runtime/kernels/fused.py ACTIVATIONS).
enum Activation { kActNone, kActRelu, kActSigmoid, kActTanh, kActGelu, kActGeluTanh };
// The code of an activation name; throws a kernel error for an unknown one.
Activation activation_code(const std::string& name);
// y = act(y) over n contiguous floats.
void vec_activate(float* y, int64_t n, Activation act);
// One softmax row (shifted by its max; a NaN anywhere makes the row NaN), n contiguous floats.
void vec_softmax_row(const float* p, float* q, int64_t n);
// One layer_norm row: q = (p - mean) / sqrt(var + eps) * scale + bias, statistics in double.
void vec_layer_norm_row(const float* p, float* q, int64_t n, double eps, const float* scale, const float* bias);

}  // namespace castml
