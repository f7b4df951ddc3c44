// float16 in the native runtime: IEEE binary16 conversions and how float16 ops are lowered.
//
// Why most float16 ops reuse the float32 kernels: NumPy computes float16 ufuncs in float32 and
// rounds each op's result to float16 (its half loops convert, call the float function, convert
// back), its float16 matmul accumulates in float32 and rounds once, and the Python runtime's
// conv, pooling and normalization kernels compute float16 in float32 and round once too. So an
// op on that list runs its float32 kernel on float32 copies of its float16 inputs and rounds
// its float16 outputs (round to nearest even, F16C instructions where the CPU has them). Ops
// that only move bits (reshape, slice, concat, ...) and casts run their own kernels directly
// (`convert` handles float16 through the functions below). cumsum keeps NumPy's per-step
// float16 rounding in a kernel of its own. Any other op touching float16 is left to its own
// kernel's check (which refuses float16 unless the kernel handles it, as the random ops do: their
// float16 draws are defined on float16 bits); one without a check is refused.
#pragma once

#include <cstdint>

#include "kernel.h"

namespace castml {

// One value: binary16 bits <-> float/double, round to nearest even, overflow to +-inf, NaN
// stays NaN (quieted), as NumPy's npy_float_to_half / npy_double_to_half.
float half_to_float(uint16_t h);
uint16_t float_to_half(float f);
uint16_t double_to_half(double d);

// n values (F16C where the CPU has it, the bit code above otherwise; the same results).
void half_to_float(const uint16_t* src, float* dst, int64_t n);
void float_to_half(const float* src, uint16_t* dst, int64_t n);
void double_to_half(const double* src, uint16_t* dst, int64_t n);

// convert() (loops.h) for a pair with float16 on either side (from != to): float16 -> T through
// float32 (exact), float64 -> float16 directly, any other T -> float16 through float32, which is
// what NumPy's casts do.
void convert_f16(const void* src, DType from, void* dst, DType to, int64_t n);

// Whether any input or output of `op` is float16.
bool touches_f16(const OpDef& op, const GraphDef& g);

// The kernel a step of `op` runs, after the load-time checks: the table's kernel `k` with its
// check for ops without float16 values; for float16 ops, `k` itself (bit-moving ops and casts),
// a wrapper running `k` in float32, or the float16 cumsum. Throws castml::Error
// (kUnsupportedError) for an op it does not cover; the caller appends the op's label.
const KernelDef* checked_kernel(const OpDef& op, const GraphDef& g, const KernelDef& k);

}  // namespace castml
