// Row-major GEMM, C = A·B + beta·C, for float32/float64.
//
// float32 on x86-64 CPUs with AVX-512 (one GEMM thread): our own packed GEMM (8x32 register
// tiles, KC x NC panels of B and MC x KC blocks of A packed into thread-local buffers), which
// also applies a bias/ReLU epilogue to each tile while it is in registers. Otherwise OpenBLAS
// (the scipy-openblas32 wheel, symbols prefixed `scipy_`) when the build found it, else a
// cache-blocked loop nest of our own. `CASTML_NATIVE_GEMM=blas` in the environment (read once)
// sends every float32 GEMM to the BLAS, for comparisons.
#pragma once

#include <cstdint>

namespace castml {

template <class T>
void gemm(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c,
          int64_t ldc);

// What a float32 GEMM applies to every element of C once its k-sum is complete:
// c[i][j] = relu?(((a·b + beta·c) + row_bias[i] + col_bias[j]) + add[i*ldadd + j]) (null
// pointers are skipped; each + rounds, as the unfused ops would).
struct GemmEpilogue {
  const float* row_bias = nullptr;  // m values (a conv's per-output-channel bias)
  const float* col_bias = nullptr;  // n values (a dense layer's bias)
  const float* add = nullptr;       // an m x n matrix (row stride ldadd): a residual connection
  int64_t ldadd = 0;
  bool relu = false;                // max(x, 0), NaN kept
};

// gemm<float> with an epilogue (fused in the tile store of the AVX-512 GEMM; a second pass over
// C with the BLAS or the blocked loop).
void sgemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
           float* c, int64_t ldc, const GemmEpilogue& epi);

// Operands packed ahead of the GEMM, read only by the AVX-512 GEMM: callers check
// sgemm_packed_available() (false on other CPUs, with CASTML_NATIVE_GEMM=blas, or with more than
// one GEMM thread) and use sgemm otherwise.
// - packed B (an im2col writing straight into GEMM order; constant weights packed once): the
//   k x n matrix in blocks of kPackKC rows, each block in strips of kPackNR columns (zero-padded),
//   row-major within a strip;
// - packed A (constant conv weights packed once): the m x k matrix in the same kPackKC blocks,
//   each in strips of kPackMR rows, column-major within a strip.
constexpr int kPackMR = 8;
constexpr int kPackNR = 32;
constexpr int64_t kPackKC = 256;
bool sgemm_packed_available();
int64_t packed_b_size(int64_t k, int64_t n);  // floats, padding included
int64_t packed_a_size(int64_t m, int64_t k);
// Where element (p, j) of a packed B lives; the elements (p, j..) up to the end of j's strip follow.
int64_t packed_b_index(int64_t k, int64_t n, int64_t p, int64_t j);
// Packs row-major B (k x n, row stride ldb) / A (m x k, row stride lda) into `out`.
void pack_b_full(const float* b, int64_t ldb, int64_t k, int64_t n, float* out);
void pack_a_full(const float* a, int64_t lda, int64_t m, int64_t k, float* out);
// Packs the k x n matrix B[p][j] = src[row_off[p] + col_off[j]] (an im2col without the column
// buffer: row p is a kernel tap's offset into the input, column j an output position's), padding
// zeroed; consecutive col_off values are copied as vector runs.
void pack_b_gather(const float* src, const int64_t* row_off, int64_t k, const int64_t* col_off, int64_t n,
                   float* packed);
// Rows of a conv's zero-padded, stride-split input copy: for t in [0, count), row dst + dst_off[t]
// gets dst[c] = src[src_off[t] + c * step] for c in [lo, hi) and 0 for the other c in [0, n).
// The source is read only for c in [lo, hi).
void gather_rows_padded(float* dst, const int64_t* dst_off, const float* src, const int64_t* src_off, int64_t count,
                        int64_t n, int64_t step, int64_t lo, int64_t hi);
// C[0:m, 0:n] = A·B (+ the epilogue), A packed (m <= 128 keeps it in L2), B[p][j] =
// src[row_off[p] + col_off[j]] never written out: the GEMM reads a strip of 32 columns straight
// from the source rows when its 32 col_off values are consecutive, and packs the other strips.
// Needs sgemm_packed_available() and k > 0.
void sgemm_gather(int64_t m, int64_t n, int64_t k, const float* packed_a, const float* src, const int64_t* row_off,
                  const int64_t* col_off, float* c, int64_t ldc, const GemmEpilogue& epi);
// sgemm where A and/or B may come packed (packed_a / packed_b non-null; a/lda, b/ldb unused then).
void sgemm_packed(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* packed_a, const float* b,
                  int64_t ldb, const float* packed_b, float beta, float* c, int64_t ldc, const GemmEpilogue& epi);

// Threads of the BLAS (process-wide); with more than one, float32 GEMMs go to OpenBLAS (which
// threads them) instead of the single-threaded AVX-512 GEMM. No effect with the built-in GEMM.
void set_gemm_threads(int n);

// "openblas" or "builtin": the BLAS the library was built with (what castml_blas() reports).
const char* blas_name();

}  // namespace castml
