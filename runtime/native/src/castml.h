/* castml native runtime: the C API.
 *
 * Load a .castml model (memory-mapped; validated like the Python loader), run an entry on flat
 * input tensors, read the outputs. No function lets a C++ exception escape: failures return
 * NULL or a negative code, and castml_last_error() / castml_last_error_kind() (per thread) say
 * why. A loaded model may be run from many threads at once.
 *
 *   castml_model* m = castml_load("mlp.castml");
 *   if (!m) { fprintf(stderr, "%s\n", castml_last_error()); return 1; }
 *   castml_tensor x = {CASTML_FLOAT32, 2, shape, data};
 *   castml_result* r = castml_run(m, "main", 1, &x);
 *   castml_tensor y; castml_result_get(r, 0, &y);   // y.data valid until castml_result_free(r)
 *   castml_result_free(r); castml_free(m);
 */
#ifndef CASTML_H_
#define CASTML_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define CASTML_API __attribute__((visibility("default")))
#else
#define CASTML_API
#endif

/* Element types: the codes of the DType enum in castml.fbs. */
enum {
  CASTML_BOOL = 1, CASTML_INT8 = 2, CASTML_INT16 = 3, CASTML_INT32 = 4, CASTML_INT64 = 5,
  CASTML_UINT8 = 6, CASTML_UINT16 = 7, CASTML_UINT32 = 8, CASTML_UINT64 = 9,
  CASTML_FLOAT16 = 10, CASTML_FLOAT32 = 11, CASTML_FLOAT64 = 12
};

/* Error kinds (castml_last_error_kind). */
enum {
  CASTML_OK = 0,
  CASTML_ERR_FORMAT = 1,      /* malformed file: ModelFormatError */
  CASTML_ERR_UNSUPPORTED = 2, /* valid file, but an op/dtype this runtime has no kernel for */
  CASTML_ERR_INPUT = 3,       /* wrong inputs: RuntimeInputError */
  CASTML_ERR_KERNEL = 4,      /* a kernel failed while running */
  CASTML_ERR_IO = 5           /* the file could not be opened or mapped */
};

typedef struct castml_model castml_model;
typedef struct castml_result castml_result;

/* A dense, C-contiguous tensor; the caller owns shape and data for inputs. */
typedef struct {
  int32_t dtype;
  int32_t rank;
  const int64_t* shape;
  void* data;
} castml_tensor;

/* Loading. NULL on failure. */
CASTML_API castml_model* castml_load(const char* path);
CASTML_API castml_model* castml_load_buffer(const void* data, size_t size); /* copies the bytes */
CASTML_API void castml_free(castml_model* model);

/* The model's entries as JSON: {"main": {"inputs": [{"name":..,"dtype":..,"shape":[..]}],
 * "outputs": [...], "in_tree": "...", "out_tree": "...", "arg_names": [...],
 * "metadata": {...}}, ...}. Owned by the model. */
CASTML_API const char* castml_describe(const castml_model* model);

/* Number of inputs (output == 0) or outputs (output != 0) of an entry (NULL: "main"), and the
 * dotted leaf name of one of them; -1 / NULL when the entry or index does not exist. */
CASTML_API int castml_io_count(const castml_model* model, const char* entry, int output);
CASTML_API const char* castml_io_name(const castml_model* model, const char* entry, int output, int i);

/* Running. `entry` NULL means "main". NULL on failure. */
CASTML_API castml_result* castml_run(const castml_model* model, const char* entry, int n_inputs,
                                     const castml_tensor* inputs);
/* The memory plan of an entry (NULL: "main") for values of its input symbols (names[i] =
 * values[i]; every symbol of the inputs' shapes must be given) as JSON: {"arena_bytes": ..,
 * "output_bytes": .., "lower_bound_bytes": .., "arena": [[value, offset, bytes, first step,
 * last step], ...], "unknown": [value, ...]} (Program::memory_report in program.h). Valid until
 * the next call on this thread; NULL on failure. */
CASTML_API const char* castml_memory_plan(const castml_model* model, const char* entry, int n_symbols,
                                          const char* const* names, const int64_t* values);
CASTML_API int castml_result_count(const castml_result* result);
/* Fills *out with output i (data owned by the result); 0 on success, -1 when out of range. */
CASTML_API int castml_result_get(const castml_result* result, int i, castml_tensor* out);
CASTML_API void castml_result_free(castml_result* result);

/* The last error of this thread ("" when none) and its kind. */
CASTML_API const char* castml_last_error(void);
CASTML_API int castml_last_error_kind(void);

/* Resource limits for untrusted files: the fields, meanings, defaults and messages of
 * runtime/limits.py. Load time (CASTML_ERR_FORMAT): max_file_bytes, max_rank, max_ops,
 * max_region_depth. Run time (CASTML_ERR_INPUT, checked before allocating): max_tensor_bytes
 * (one value), max_intermediate_bytes (values alive at once), max_loop_iterations (trips of
 * one `loop` op). Process-wide; initialised from the environment variables CASTML_MAX_<FIELD>
 * (e.g. CASTML_MAX_TENSOR_BYTES=1_000_000) on first use, like the Python runtime. A load reads
 * the limits in force when it starts, a run those in force when it starts. */
typedef struct {
  uint64_t max_rank;
  uint64_t max_ops;
  uint64_t max_region_depth;
  uint64_t max_file_bytes;
  uint64_t max_tensor_bytes;
  uint64_t max_intermediate_bytes;
  uint64_t max_loop_iterations;
} castml_limits;

/* Fills *out with the limits in force (the defaults while a CASTML_MAX_* variable is malformed:
 * loads and runs then fail, saying which). */
CASTML_API void castml_get_limits(castml_limits* out);
/* Replaces the limits in force (a malformed variable is forgotten); 0 on success, -1 (and
 * castml_last_error) for a NULL argument. */
CASTML_API int castml_set_limits(const castml_limits* limits);

/* Threads of the GEMM (OpenBLAS; process-wide); no effect with the built-in GEMM. */
CASTML_API void castml_set_num_threads(int n);

/* The op kinds this runtime has kernels for, comma-separated and sorted. */
CASTML_API const char* castml_kernel_names(void);

/* "openblas" or "builtin": the GEMM this build uses. */
CASTML_API const char* castml_blas(void);

#ifdef __cplusplus
}
#endif

#endif /* CASTML_H_ */
