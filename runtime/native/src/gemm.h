// Row-major GEMM, C = A·B + beta·C, for float32/float64: OpenBLAS (the scipy-openblas32 wheel,
// symbols prefixed `scipy_`) when the build found it, else a cache-blocked loop nest of our own.
#pragma once

#include <cstdint>

namespace castml {

template <class T>
void gemm(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c,
          int64_t ldc);

// Threads of the BLAS (process-wide); no effect with the built-in GEMM.
void set_gemm_threads(int n);

// "openblas <version>" or "builtin" (what castml_blas() reports).
const char* blas_name();

}  // namespace castml
