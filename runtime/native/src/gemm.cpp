// GEMM: our AVX-512 float32 GEMM, OpenBLAS (CASTML_HAVE_OPENBLAS), or a blocked fallback.
//
// The AVX-512 GEMM is the Goto/BLIS scheme: for each KC x NC panel of B (packed into NR-column
// strips, zero-padded) and each MC x KC block of A (packed into MR-row strips), an MR x NR
// register tile of C accumulates over KC with FMAs, the B strip staying in L1 and the A block in
// L2. Tiles at the right and bottom edges are stored with masks, so any m, n, k works; the
// epilogue (bias, ReLU) is applied in the store of the last KC block. Why our own: OpenBLAS
// picks its Haswell (AVX2) kernels on AVX-512 AMD CPUs (or wherever OPENBLAS_CORETYPE=Haswell is
// set), about half the speed there, and its small-matrix paths cost a lot at the sizes of convs
// and batch-1 layers. Packing buffers are thread-local and reused, so steady-state calls do not
// allocate.
//
// The blocked fallback keeps a KC x NC panel of B and an MC-row block of A hot in cache and runs
// an i-k-j inner loop the compiler vectorizes over j; about a third of OpenBLAS's speed on one
// core, used only where neither the AVX-512 GEMM nor the wheel applies.
#include "gemm.h"

#include "common.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <memory>

#ifdef CASTML_HAVE_OPENBLAS
#include <cblas.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(CASTML_NO_AVX512)  // the latter: test the portable path
#define CASTML_AVX512_GEMM 1
#include <immintrin.h>
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

// Epilogue as a separate pass (the BLAS and blocked paths).
void apply_epilogue(float* c, int64_t ldc, int64_t m, int64_t n, const GemmEpilogue& epi) {
  if (!epi.row_bias && !epi.col_bias && !epi.add && !epi.relu) return;
  for (int64_t i = 0; i < m; ++i) {
    float* __restrict row = c + i * ldc;
    if (epi.col_bias) {
      const float* __restrict cb = epi.col_bias;
      for (int64_t j = 0; j < n; ++j) row[j] += cb[j];
    }
    if (epi.row_bias) {
      const float rb = epi.row_bias[i];
      for (int64_t j = 0; j < n; ++j) row[j] += rb;
    }
    if (epi.add) {
      const float* __restrict ar = epi.add + i * epi.ldadd;
      for (int64_t j = 0; j < n; ++j) row[j] += ar[j];
    }
    if (epi.relu)
      for (int64_t j = 0; j < n; ++j) row[j] = (row[j] > 0.0f || row[j] != row[j]) ? row[j] : 0.0f;
  }
}

std::atomic<int> g_threads{1};

#ifdef CASTML_HAVE_OPENBLAS
bool fits_int(int64_t x) { return x >= 0 && x <= INT_MAX; }
#endif

// The float32 GEMM of the BLAS or the blocked loop (no epilogue).
void sgemm_blas(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                float* c, int64_t ldc) {
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

#ifdef CASTML_AVX512_GEMM

#define CASTML_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,fma")))

constexpr int kMR = kPackMR;        // rows of a register tile
constexpr int kNR = kPackNR;        // columns of a register tile (two zmm)
constexpr int64_t kKC = kPackKC;    // depth of a packed panel (a B strip of 32 KiB stays in L1)
constexpr int64_t kMC = 128;        // rows of a packed A block (128 KiB, in L2)
constexpr int64_t kNC = 2048;       // columns of a packed B panel (2 MiB, in L2/L3)

bool use_avx512() {
  static const bool ok = [] {
    const char* forced = std::getenv("CASTML_NATIVE_GEMM");
    if (forced && std::strcmp(forced, "blas") == 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
  }();
  return ok;
}

// A grow-only, 64-byte aligned float buffer per thread (the packed A block and B panel).
struct PackBuffer {
  float* data = nullptr;
  size_t cap = 0;
  float* get(size_t n) {
    if (n > cap) {
      std::free(data);
      data = static_cast<float*>(std::aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64));
      if (!data) {
        cap = 0;
        throw std::bad_alloc();
      }
      cap = n;
    }
    return data;
  }
  ~PackBuffer() { std::free(data); }
};

inline __mmask16 tail_mask(int64_t cols) { return cols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << cols) - 1); }

// A[0:mc, 0:kc] (row stride lda) into MR-row strips: strip s holds a[(s*MR + i), p] at
// [s*kc*MR + p*MR + i], rows past mc zero.
CASTML_AVX512 void pack_a(const float* a, int64_t lda, int64_t mc, int64_t kc, float* out) {
  for (int64_t i0 = 0; i0 < mc; i0 += kMR, out += kc * kMR) {
    int64_t mr = std::min<int64_t>(kMR, mc - i0);
    if (mr == kMR) {
      // 8 rows at a time: 16 columns of each row loaded, then scattered into the interleaved strip
      int64_t p = 0;
      for (; p + 16 <= kc; p += 16) {
        alignas(64) float t[kMR][16];
        for (int i = 0; i < kMR; ++i) _mm512_store_ps(t[i], _mm512_loadu_ps(a + (i0 + i) * lda + p));
        for (int q = 0; q < 16; ++q)
          for (int i = 0; i < kMR; ++i) out[(p + q) * kMR + i] = t[i][q];
      }
      for (; p < kc; ++p)
        for (int i = 0; i < kMR; ++i) out[p * kMR + i] = a[(i0 + i) * lda + p];
    } else {
      for (int64_t p = 0; p < kc; ++p)
        for (int i = 0; i < kMR; ++i) out[p * kMR + i] = i < mr ? a[(i0 + i) * lda + p] : 0.0f;
    }
  }
}

// B[0:kc, 0:nc] (row stride ldb) into NR-column strips: strip s holds b[p, s*NR + j] at
// [s*kc*NR + p*NR + j], columns past nc zero.
CASTML_AVX512 void pack_b(const float* b, int64_t ldb, int64_t kc, int64_t nc, float* out) {
  for (int64_t j0 = 0; j0 < nc; j0 += kNR, out += kc * kNR) {
    int64_t nr = std::min<int64_t>(kNR, nc - j0);
    __mmask16 m0 = tail_mask(nr), m1 = tail_mask(std::max<int64_t>(nr - 16, 0));
    const float* src = b + j0;
    float* dst = out;
    if (nr == kNR) {
      for (int64_t p = 0; p < kc; ++p, src += ldb, dst += kNR) {
        _mm512_store_ps(dst, _mm512_loadu_ps(src));
        _mm512_store_ps(dst + 16, _mm512_loadu_ps(src + 16));
      }
    } else {
      for (int64_t p = 0; p < kc; ++p, src += ldb, dst += kNR) {
        _mm512_store_ps(dst, _mm512_maskz_loadu_ps(m0, src));
        _mm512_store_ps(dst + 16, _mm512_maskz_loadu_ps(m1, src + 16));
      }
    }
  }
}

// Row p of a B strip, 16 columns (v) at a time: from a packed strip, or from the source rows of
// an im2col whose 32 columns are one contiguous run.
struct PackedStrip {
  const float* __restrict b;
  CASTML_AVX512 __m512 operator()(int64_t p, int v) const { return _mm512_loadu_ps(b + p * kNR + 16 * v); }
};
struct SourceRows {
  const float* base;
  const int64_t* off;
  CASTML_AVX512 __m512 operator()(int64_t p, int v) const { return _mm512_loadu_ps(base + off[p] + 16 * v); }
};
// One MR x (16*NV) tile: C[0:mr, 0:nr] (+)= Apanel · Bstrip, then the epilogue when `epi`.
template <int NV, class Strip = PackedStrip>
CASTML_AVX512 void micro_tile(int64_t kc, const float* __restrict a, Strip b, float* c, int64_t ldc, int64_t mr,
                              int64_t nr, bool load_c, const GemmEpilogue* epi, int64_t row0, int64_t col0) {
  __m512 acc[kMR][NV];
  for (int i = 0; i < kMR; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
#pragma GCC unroll 4
  for (int64_t p = 0; p < kc; ++p) {
    __m512 bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = b(p, v);
    for (int i = 0; i < kMR; ++i) {
      __m512 av = _mm512_set1_ps(a[p * kMR + i]);
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(av, bv[v], acc[i][v]);
    }
  }
  __mmask16 mask[NV];
  for (int v = 0; v < NV; ++v) mask[v] = tail_mask(std::max<int64_t>(nr - 16 * v, 0));
  __m512 colb[NV];
  const bool has_col = epi && epi->col_bias, has_row = epi && epi->row_bias, relu = epi && epi->relu;
  const float* add = epi && epi->add ? epi->add + row0 * epi->ldadd + col0 : nullptr;
  for (int v = 0; v < NV; ++v)
    colb[v] = has_col ? _mm512_maskz_loadu_ps(mask[v], epi->col_bias + col0 + 16 * v) : _mm512_setzero_ps();
  const __m512 zero = _mm512_setzero_ps();
  for (int i = 0; i < kMR; ++i) {
    if (i >= mr) break;
    float* crow = c + i * ldc;
    for (int v = 0; v < NV; ++v) {
      __m512 x = acc[i][v];
      if (load_c) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask[v], crow + 16 * v));
      if (epi) {
        if (has_col) x = _mm512_add_ps(x, colb[v]);
        if (has_row) x = _mm512_add_ps(x, _mm512_set1_ps(epi->row_bias[row0 + i]));
        if (add) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask[v], add + i * epi->ldadd + 16 * v));
        if (relu) x = _mm512_maskz_max_ps(__mmask16(0xFFFF), zero, x);  // max(0, NaN) is the NaN
      }
      _mm512_mask_storeu_ps(crow + 16 * v, mask[v], x);
    }
  }
}

// Columns [j0, j0 + 16*NB) (fewer at the right edge: masked) of y = beta*y + x · B, then the
// epilogue. Rows are prefetched a few ahead: B streams from L2/L3 once per call.
template <int NB>
CASTML_AVX512 void sgemv_block(int64_t n, int64_t k, const float* x, const float* b, int64_t ldb, float beta,
                               float* y, const GemmEpilogue& epi, int64_t j0) {
  constexpr int64_t kAhead = 4;
  const int64_t nb = std::min<int64_t>(16 * NB, n - j0);
  __mmask16 mask[NB];
  for (int v = 0; v < NB; ++v) mask[v] = tail_mask(std::max<int64_t>(nb - 16 * v, 0));
  __m512 acc[NB];
  for (int v = 0; v < NB; ++v) acc[v] = _mm512_setzero_ps();
  const float* bp = b + j0;
  if (nb == 16 * NB) {
    for (int64_t p = 0; p < k; ++p, bp += ldb) {
      if (p + kAhead < k)
        for (int v = 0; v < NB; v += 4)
          _mm_prefetch(reinterpret_cast<const char*>(bp + kAhead * ldb + 16 * v), _MM_HINT_T0);
      __m512 xv = _mm512_set1_ps(x[p]);
      for (int v = 0; v < NB; ++v) acc[v] = _mm512_fmadd_ps(xv, _mm512_loadu_ps(bp + 16 * v), acc[v]);
    }
  } else {
    for (int64_t p = 0; p < k; ++p, bp += ldb) {
      __m512 xv = _mm512_set1_ps(x[p]);
      for (int v = 0; v < NB; ++v)
        if (mask[v]) acc[v] = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(mask[v], bp + 16 * v), acc[v]);
    }
  }
  const __m512 zero = _mm512_setzero_ps();
  for (int v = 0; v < NB; ++v) {
    if (!mask[v]) break;
    float* yp = y + j0 + 16 * v;
    __m512 r = acc[v];
    if (beta != 0.0f) r = _mm512_fmadd_ps(_mm512_set1_ps(beta), _mm512_maskz_loadu_ps(mask[v], yp), r);
    if (epi.col_bias) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(mask[v], epi.col_bias + j0 + 16 * v));
    if (epi.row_bias) r = _mm512_add_ps(r, _mm512_set1_ps(epi.row_bias[0]));
    if (epi.add) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(mask[v], epi.add + j0 + 16 * v));
    if (epi.relu) r = _mm512_maskz_max_ps(__mmask16(0xFFFF), zero, r);  // max(0, NaN) is the NaN
    _mm512_mask_storeu_ps(yp, mask[v], r);
  }
}

// y[0:n] = beta*y + x[0:k] · B[0:k, 0:n] (m == 1): 256 columns at a time (16 accumulators, a
// whole KiB of each B row per pass), the rest 128 at a time.
void sgemv_rows(int64_t n, int64_t k, const float* x, const float* b, int64_t ldb, float beta, float* y,
                const GemmEpilogue& epi) {
  int64_t j0 = 0;
  for (; j0 + 256 <= n; j0 += 256) sgemv_block<16>(n, k, x, b, ldb, beta, y, epi, j0);
  for (; j0 < n; j0 += 128) sgemv_block<8>(n, k, x, b, ldb, beta, y, epi, j0);
}

// `prepacked` / `prepacked_a`: B / A already in the packed layouts of gemm.h (b/ldb, a/lda
// unused then), else packed here block by block.
void sgemm_avx512(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                  float beta, float* c, int64_t ldc, const GemmEpilogue& epi, const float* prepacked = nullptr,
                  const float* prepacked_a = nullptr) {
  if (m == 1 && !prepacked && !prepacked_a) {
    sgemv_rows(n, k, a, b, ldb, beta, c, epi);
    return;
  }
  if (beta != 0.0f && beta != 1.0f)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] *= beta;
  if (k == 0) {  // C = beta·C (+ epilogue): nothing to multiply
    if (beta == 0.0f)
      for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
    apply_epilogue(c, ldc, m, n, epi);
    return;
  }
  thread_local PackBuffer abuf, bbuf;
  const int64_t npad = (n + kNR - 1) / kNR * kNR;
  const int64_t nc_max = std::min<int64_t>(kNC, npad);
  const int64_t kc_max = std::min<int64_t>(kKC, k);
  float* pb = prepacked ? nullptr : bbuf.get(static_cast<size_t>(kc_max * nc_max));
  const int64_t mpad = (m + kMR - 1) / kMR * kMR;
  float* pa = prepacked_a ? nullptr : abuf.get(static_cast<size_t>(kc_max * std::min<int64_t>(kMC, mpad)));
  for (int64_t jc = 0; jc < n; jc += kNC) {
    int64_t nc = std::min(kNC, n - jc);
    for (int64_t pc = 0; pc < k; pc += kKC) {
      int64_t kc = std::min(kKC, k - pc);
      bool load_c = pc > 0 || beta != 0.0f;
      const GemmEpilogue* last = pc + kc == k ? &epi : nullptr;
      // strip j of this panel: packed here, or at column jc + j of the prepacked KC block pc
      const float* panel = prepacked ? prepacked + pc * npad + jc * kc : pb;
      if (!prepacked) pack_b(b + pc * ldb + jc, ldb, kc, nc, pb);
      for (int64_t ic = 0; ic < m; ic += kMC) {
        int64_t mc = std::min(kMC, m - ic);
        const float* ablock = prepacked_a ? prepacked_a + pc * mpad + ic * kc : pa;
        if (!prepacked_a) pack_a(a + ic * lda + pc, lda, mc, kc, pa);
        for (int64_t jr = 0; jr < nc; jr += kNR) {
          int64_t nr = std::min<int64_t>(kNR, nc - jr);
          const float* bs = panel + jr * kc;
          for (int64_t ir = 0; ir < mc; ir += kMR) {
            int64_t mr = std::min<int64_t>(kMR, mc - ir);
            float* ct = c + (ic + ir) * ldc + jc + jr;
            if (nr > 16)
              micro_tile<2>(kc, ablock + ir * kc, PackedStrip{bs}, ct, ldc, mr, nr, load_c, last, ic + ir, jc + jr);
            else
              micro_tile<1>(kc, ablock + ir * kc, PackedStrip{bs}, ct, ldc, mr, nr, load_c, last, ic + ir, jc + jr);
          }
        }
      }
    }
  }
}

// pack_b_gather (see gemm.h): per strip, the runs of consecutive source columns are found once,
// then every row is copied run by run with masked vector loads and stores.
CASTML_AVX512 void pack_b_gather_avx512(const float* src, const int64_t* row_off, int64_t k, const int64_t* col_off,
                                        int64_t n, float* packed) {
  const int64_t npad = (n + kNR - 1) / kNR * kNR;
  for (int64_t j0 = 0; j0 < n; j0 += kNR) {
    int64_t nr = std::min<int64_t>(kNR, n - j0);
    int64_t run_start[kNR], run_len[kNR], run_src[kNR];
    int runs = 0;
    for (int64_t j = 0; j < nr;) {
      int64_t len = 1;
      while (j + len < nr && col_off[j0 + j + len] == col_off[j0 + j] + len) ++len;
      run_start[runs] = j, run_len[runs] = len, run_src[runs] = col_off[j0 + j];
      ++runs;
      j += len;
    }
    for (int64_t pc = 0; pc < k; pc += kKC) {
      const int64_t kc = std::min(kKC, k - pc);
      float* dst = packed + pc * npad + j0 * kc;
      if (runs == 1 && nr == kNR) {  // the common case: one contiguous source run per row
        for (int64_t p = 0; p < kc; ++p, dst += kNR) {
          const float* s = src + row_off[pc + p] + run_src[0];
          _mm512_storeu_ps(dst, _mm512_loadu_ps(s));
          _mm512_storeu_ps(dst + 16, _mm512_loadu_ps(s + 16));
        }
        continue;
      }
      for (int64_t p = 0; p < kc; ++p, dst += kNR) {
        const float* row = src + row_off[pc + p];
        for (int r = 0; r < runs; ++r) {
          const float* s = row + run_src[r];
          float* d = dst + run_start[r];
          int64_t len = run_len[r];
          if (len == 1) {
            *d = *s;
            continue;
          }
          __mmask16 m0 = tail_mask(len);
          _mm512_mask_storeu_ps(d, m0, _mm512_maskz_loadu_ps(m0, s));
          if (len > 16) {
            __mmask16 m1 = tail_mask(len - 16);
            _mm512_mask_storeu_ps(d + 16, m1, _mm512_maskz_loadu_ps(m1, s + 16));
          }
        }
        for (int64_t j = nr; j < kNR; ++j) dst[j] = 0.0f;
      }
    }
  }
}

// sgemm_gather (see gemm.h). Per KC block of A and strip of 32 columns: the strip's source rows
// when its 32 columns are one run of the source, else the strip packed into an L1-sized buffer.
CASTML_AVX512 void sgemm_gather_avx512(int64_t m, int64_t n, int64_t k, const float* packed_a, const float* src,
                                       const int64_t* row_off, const int64_t* col_off, float* c, int64_t ldc,
                                       const GemmEpilogue& epi) {
  thread_local PackBuffer sbuf;
  float* strip = sbuf.get(static_cast<size_t>(kKC * kNR));
  const int64_t mpad = (m + kMR - 1) / kMR * kMR;
  for (int64_t pc = 0; pc < k; pc += kKC) {
    const int64_t kc = std::min(kKC, k - pc);
    const GemmEpilogue* last = pc + kc == k ? &epi : nullptr;
    const float* ablock = packed_a + pc * mpad;
    for (int64_t j0 = 0; j0 < n; j0 += kNR) {
      const int64_t nr = std::min<int64_t>(kNR, n - j0);
      bool run = nr == kNR;
      for (int64_t t = 1; t < nr && run; ++t) run = col_off[j0 + t] == col_off[j0] + t;
      const SourceRows rows{src + col_off[j0], row_off + pc};
      if (!run) pack_b_gather_avx512(src, row_off + pc, kc, col_off + j0, nr, strip);
      for (int64_t ir = 0; ir < m; ir += kMR) {
        const int64_t mr = std::min<int64_t>(kMR, m - ir);
        float* ct = c + ir * ldc + j0;
        if (run)
          micro_tile<2>(kc, ablock + ir * kc, rows, ct, ldc, mr, nr, pc > 0, last, ir, j0);
        else if (nr > 16)
          micro_tile<2>(kc, ablock + ir * kc, PackedStrip{strip}, ct, ldc, mr, nr, pc > 0, last, ir, j0);
        else
          micro_tile<1>(kc, ablock + ir * kc, PackedStrip{strip}, ct, ldc, mr, nr, pc > 0, last, ir, j0);
      }
    }
  }
}

// gather_rows_padded (see gemm.h), 16 output columns at a time, with the masks of up to 32 such
// blocks computed once for all rows: lanes outside [lo, hi) are masked off the loads (so never
// read) and come out 0. Step 2 loads 32 consecutive floats (odd lanes masked off too) and keeps
// the even ones; other steps gather.
CASTML_AVX512 void gather_rows_padded_avx512(float* dst, const int64_t* dst_off, const float* src,
                                             const int64_t* src_off, int64_t count, int64_t n, int64_t step,
                                             int64_t lo, int64_t hi) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i lanes = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32(static_cast<int>(step)));
  auto spread_even = [](unsigned m) {  // bit t of an 8-bit mask to bit 2t
    m = (m | (m << 4)) & 0x0F0Fu;
    m = (m | (m << 2)) & 0x3333u;
    return __mmask16((m | (m << 1)) & 0x5555u);
  };
  constexpr int kBlocks = 32;
  for (int64_t cb = 0; cb < n; cb += 16 * kBlocks) {
    const int blocks = static_cast<int>(std::min<int64_t>(kBlocks, (n - cb + 15) / 16));
    __mmask16 in[kBlocks], out[kBlocks], in0[kBlocks], in1[kBlocks];
    for (int k = 0; k < blocks; ++k) {
      const int64_t c0 = cb + 16 * k;
      const int64_t a = std::clamp<int64_t>(lo - c0, 0, 16), b = std::clamp<int64_t>(hi - c0, 0, 16);
      in[k] = b > a ? __mmask16(tail_mask(b) & ~tail_mask(a)) : __mmask16(0);
      out[k] = tail_mask(n - c0);
      in0[k] = spread_even(in[k] & 0xFFu);
      in1[k] = spread_even(unsigned(in[k]) >> 8);
    }
    for (int64_t t = 0; t < count; ++t) {
      float* d = dst + dst_off[t] + cb;
      const float* s = src + src_off[t] + cb * step;
      if (step == 1) {
        for (int k = 0; k < blocks; ++k)
          _mm512_mask_storeu_ps(d + 16 * k, out[k], _mm512_maskz_loadu_ps(in[k], s + 16 * k));
      } else if (step == 2) {
        for (int k = 0; k < blocks; ++k) {
          const __m512 x0 = _mm512_maskz_loadu_ps(in0[k], s + 32 * k), x1 = _mm512_maskz_loadu_ps(in1[k], s + 32 * k + 16);
          _mm512_mask_storeu_ps(d + 16 * k, out[k], _mm512_permutex2var_ps(x0, even, x1));
        }
      } else {
        for (int k = 0; k < blocks; ++k)
          _mm512_mask_storeu_ps(d + 16 * k, out[k],
                                _mm512_mask_i32gather_ps(_mm512_setzero_ps(), in[k], lanes, s + 16 * k * step, 4));
      }
    }
  }
}

#endif  // CASTML_AVX512_GEMM

}  // namespace

void sgemm_gather(int64_t m, int64_t n, int64_t k, const float* packed_a, const float* src, const int64_t* row_off,
                  const int64_t* col_off, float* c, int64_t ldc, const GemmEpilogue& epi) {
  if (m == 0 || n == 0) return;
#ifdef CASTML_AVX512_GEMM
  if (use_avx512() && k > 0) {
    sgemm_gather_avx512(m, n, k, packed_a, src, row_off, col_off, c, ldc, epi);
    return;
  }
#endif
  fail(kKernelError, "sgemm_gather without the AVX-512 GEMM (sgemm_packed_available() is false) or with k = 0");
}

void gather_rows_padded(float* dst, const int64_t* dst_off, const float* src, const int64_t* src_off, int64_t count,
                        int64_t n, int64_t step, int64_t lo, int64_t hi) {
#ifdef CASTML_AVX512_GEMM
  if (use_avx512()) {
    gather_rows_padded_avx512(dst, dst_off, src, src_off, count, n, step, lo, hi);
    return;
  }
#endif
  for (int64_t t = 0; t < count; ++t)
    for (int64_t c = 0; c < n; ++c) dst[dst_off[t] + c] = c >= lo && c < hi ? src[src_off[t] + c * step] : 0.0f;
}

void pack_b_gather(const float* src, const int64_t* row_off, int64_t k, const int64_t* col_off, int64_t n,
                   float* packed) {
#ifdef CASTML_AVX512_GEMM
  if (use_avx512()) {
    pack_b_gather_avx512(src, row_off, k, col_off, n, packed);
    return;
  }
#endif
  const int64_t npad = (n + kPackNR - 1) / kPackNR * kPackNR;
  for (int64_t p = 0; p < k; ++p)
    for (int64_t j = 0; j < npad; ++j)
      packed[packed_b_index(k, n, p, j)] = j < n ? src[row_off[p] + col_off[j]] : 0.0f;
}

bool sgemm_packed_available() {
#ifdef CASTML_AVX512_GEMM
#ifdef CASTML_HAVE_OPENBLAS
  return use_avx512() && g_threads.load(std::memory_order_relaxed) == 1;
#else
  return use_avx512();
#endif
#else
  return false;
#endif
}

int64_t packed_b_size(int64_t k, int64_t n) { return k * ((n + kPackNR - 1) / kPackNR * kPackNR); }

int64_t packed_a_size(int64_t m, int64_t k) { return k * ((m + kPackMR - 1) / kPackMR * kPackMR); }

int64_t packed_b_index(int64_t k, int64_t n, int64_t p, int64_t j) {
  const int64_t npad = (n + kPackNR - 1) / kPackNR * kPackNR;
  const int64_t pc = p / kPackKC * kPackKC, kc = std::min(kPackKC, k - pc);
  return pc * npad + (j / kPackNR) * kc * kPackNR + (p - pc) * kPackNR + j % kPackNR;
}

void pack_b_full(const float* b, int64_t ldb, int64_t k, int64_t n, float* out) {
  const int64_t npad = (n + kPackNR - 1) / kPackNR * kPackNR;
  for (int64_t pc = 0; pc < k; pc += kPackKC) {
    const int64_t kc = std::min(kPackKC, k - pc);
#ifdef CASTML_AVX512_GEMM
    if (use_avx512()) {
      pack_b(b + pc * ldb, ldb, kc, n, out + pc * npad);
      continue;
    }
#endif
    for (int64_t p = 0; p < kc; ++p)
      for (int64_t j = 0; j < npad; ++j)
        out[packed_b_index(k, n, pc + p, j)] = j < n ? b[(pc + p) * ldb + j] : 0.0f;
  }
}

void pack_a_full(const float* a, int64_t lda, int64_t m, int64_t k, float* out) {
  const int64_t mpad = (m + kPackMR - 1) / kPackMR * kPackMR;
  for (int64_t pc = 0; pc < k; pc += kPackKC) {
    const int64_t kc = std::min(kPackKC, k - pc);
    float* block = out + pc * mpad;
#ifdef CASTML_AVX512_GEMM
    if (use_avx512()) {
      pack_a(a + pc, lda, m, kc, block);
      continue;
    }
#endif
    for (int64_t i = 0; i < mpad; ++i)
      for (int64_t p = 0; p < kc; ++p)
        block[(i / kPackMR) * kc * kPackMR + p * kPackMR + i % kPackMR] = i < m ? a[i * lda + pc + p] : 0.0f;
  }
}

void sgemm_packed(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* packed_a, const float* b,
                  int64_t ldb, const float* packed_b, float beta, float* c, int64_t ldc, const GemmEpilogue& epi) {
  if (m == 0 || n == 0) return;
#ifdef CASTML_AVX512_GEMM
  if (use_avx512()) {  // not sgemm_packed_available(): the thread count may change under a caller
    sgemm_avx512(m, n, k, a, lda, b, ldb, beta, c, ldc, epi, packed_b, packed_a);
    return;
  }
#endif
  if (!packed_a && !packed_b) {
    sgemm(m, n, k, a, lda, b, ldb, beta, c, ldc, epi);
    return;
  }
  fail(kKernelError, "a GEMM on packed operands without the AVX-512 GEMM (sgemm_packed_available() is false)");
}

void sgemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
           float* c, int64_t ldc, const GemmEpilogue& epi) {
  if (m == 0 || n == 0) return;
#ifdef CASTML_AVX512_GEMM
  if (sgemm_packed_available()) {
    sgemm_avx512(m, n, k, a, lda, b, ldb, beta, c, ldc, epi);
    return;
  }
#endif
  sgemm_blas(m, n, k, a, lda, b, ldb, beta, c, ldc);
  apply_epilogue(c, ldc, m, n, epi);
}

template <>
void gemm<float>(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                 float* c, int64_t ldc) {
  sgemm(m, n, k, a, lda, b, ldb, beta, c, ldc, GemmEpilogue{});
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
  if (n >= 1) g_threads.store(n, std::memory_order_relaxed);
#ifdef CASTML_HAVE_OPENBLAS
  if (n >= 1) scipy_openblas_set_num_threads(n);
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
