// GEMM through OpenBLAS when available (CASTML_HAVE_OPENBLAS), else a blocked fallback.
//
// The fallback keeps a KC x NC panel of B and an MC-row block of A hot in cache and runs an
// i-k-j inner loop the compiler vectorizes over j; about a third of OpenBLAS's speed on one
// core, used only where the wheel is missing (and for dims beyond 32-bit BLAS indices).
#include "gemm.h"

#include <algorithm>
#include <climits>

#ifdef CASTML_HAVE_OPENBLAS
#include <cblas.h>
#endif

namespace castml {

namespace {

template <class T>
void gemm_blocked(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c,
                  int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    T* row = c + i * ldc;
    if (beta == T(0)) std::fill(row, row + n, T(0));
    else if (beta != T(1)) for (int64_t j = 0; j < n; ++j) row[j] *= beta;
  }
  constexpr int64_t kMC = 64, kKC = 256, kNC = 1024;
  for (int64_t j0 = 0; j0 < n; j0 += kNC) {
    int64_t j1 = std::min(n, j0 + kNC);
    for (int64_t p0 = 0; p0 < k; p0 += kKC) {
      int64_t p1 = std::min(k, p0 + kKC);
      for (int64_t i0 = 0; i0 < m; i0 += kMC) {
        int64_t i1 = std::min(m, i0 + kMC);
        for (int64_t i = i0; i < i1; ++i) {
          T* __restrict crow = c + i * ldc;
          const T* arow = a + i * lda;
          for (int64_t p = p0; p < p1; ++p) {
            const T av = arow[p];
            if (av == T(0)) continue;
            const T* __restrict brow = b + p * ldb;
            for (int64_t j = j0; j < j1; ++j) crow[j] += av * brow[j];
          }
        }
      }
    }
  }
}

#ifdef CASTML_HAVE_OPENBLAS
bool fits_int(int64_t x) { return x >= 0 && x <= INT_MAX; }
#endif

}  // namespace

template <>
void gemm<float>(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                 float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
#ifdef CASTML_HAVE_OPENBLAS
  if (fits_int(m) && fits_int(n) && fits_int(k) && fits_int(lda) && fits_int(ldb) && fits_int(ldc) && k > 0) {
    // OpenBLAS's GEMM is slow for a single row or column: those are matrix-vector products
    if (m == 1) {
      scipy_cblas_sgemv(CblasRowMajor, CblasTrans, static_cast<int>(k), static_cast<int>(n), 1.0f, b,
                        static_cast<int>(ldb), a, 1, beta, c, 1);
      return;
    }
    if (n == 1) {
      scipy_cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(m), static_cast<int>(k), 1.0f, a,
                        static_cast<int>(lda), b, static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
      return;
    }
    scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
                      static_cast<int>(k), 1.0f, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta, c,
                      static_cast<int>(ldc));
    return;
  }
#endif
  gemm_blocked(m, n, k, a, lda, b, ldb, beta, c, ldc);
}

template <>
void gemm<double>(int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b, int64_t ldb,
                  double beta, double* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
#ifdef CASTML_HAVE_OPENBLAS
  if (fits_int(m) && fits_int(n) && fits_int(k) && fits_int(lda) && fits_int(ldb) && fits_int(ldc) && k > 0) {
    // OpenBLAS's GEMM is slow for a single row or column: those are matrix-vector products
    if (m == 1) {
      scipy_cblas_dgemv(CblasRowMajor, CblasTrans, static_cast<int>(k), static_cast<int>(n), 1.0, b,
                        static_cast<int>(ldb), a, 1, beta, c, 1);
      return;
    }
    if (n == 1) {
      scipy_cblas_dgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(m), static_cast<int>(k), 1.0, a,
                        static_cast<int>(lda), b, static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
      return;
    }
    scipy_cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
                      static_cast<int>(k), 1.0, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta, c,
                      static_cast<int>(ldc));
    return;
  }
#endif
  gemm_blocked(m, n, k, a, lda, b, ldb, beta, c, ldc);
}

void set_gemm_threads(int n) {
#ifdef CASTML_HAVE_OPENBLAS
  if (n >= 1) scipy_openblas_set_num_threads(n);
#else
  (void)n;
#endif
}

const char* blas_name() {
#ifdef CASTML_HAVE_OPENBLAS
  return "openblas";
#else
  return "builtin";
#endif
}

}  // namespace castml
