// Counter-based random ops and einsum (see runtime/kernels/*.py for the semantics).
//
// random_bits / random_uniform / random_normal reproduce runtime/kernels/random.py exactly: the
// same key derivation from (seed, stream), the same lowbias32 hash of the flat element index in
// wrapping uint32 arithmetic, the same exact float conversion of the top mantissa bits, and
// Box-Muller computed in the output dtype in the same order of operations (so normals differ
// from NumPy's only where the libm's log/cos/sqrt do, by an ulp). float16 is refused at load
// (no native float16), so `backend="auto"` runs those on NumPy.
//
// einsum takes any equation np.einsum accepts: repeated indices (diagonals), '...' (right-aligned
// and broadcast across operands), size-1 broadcasting, implicit output ('ij,jk' -> sorted
// indices seen once). Operands are contracted two at a time, each time the pair whose result is
// smallest (NumPy's greedy path). A float32/float64 pair shaped as a (batched) matrix product
// (summed indices in both operands, kept ones in one or both) runs as batched GEMM in its own
// dtype, as NumPy's tensordot/einsum(optimize=True) does: operands read in place when their
// strides allow, else packed (transposed, converted), C written in place or as C^T, or permuted
// afterwards. Every other pair runs one loop nest whose innermost loop is the index with the most
// unit strides (inputs read in place, each element converted as it is used); there floats
// accumulate in double (unit-stride sums and dots vectorized, AVX-512 where the CPU has it),
// integers in wrapping uint64 (truncated at the end, which equals NumPy's wrapping in the narrow
// type), bool as "any product true".
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "gemm.h"
#include "kernel.h"
#include "loops.h"

namespace castml {

namespace {

// ---- counter-based random numbers ------------------------------------------------------------

constexpr uint32_t kGolden = 0x9E3779B9u;      // spreads stream numbers apart
constexpr uint32_t kNormalSalt = 0x68E31DA4u;  // derives the second Box-Muller key

// Chris Wellons' lowbias32 (random.py's mix32), wrapping uint32 arithmetic.
inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

// random.py's seed_key: the seed wrapped to 64 bits, its halves mixed with the stream constant.
uint32_t seed_key(uint64_t seed, int64_t stream) {
  uint32_t stream_constant = mix32(static_cast<uint32_t>(static_cast<uint64_t>(stream) * kGolden));
  uint32_t lo = static_cast<uint32_t>(seed), hi = static_cast<uint32_t>(seed >> 32);
  return mix32(lo ^ mix32(hi ^ stream_constant));
}

// counter_bits for flat index i (NumPy's arange(n, dtype=uint32)).
inline uint32_t counter_bits(uint32_t key, int64_t i) {
  return mix32(mix32(static_cast<uint32_t>(i) ^ key) + key);
}

// The 0-d integer seed as uint64 (signed seeds sign-extended first, as NumPy's astype(uint64)).
uint64_t read_seed(const Tensor& seed) {
  if (!is_int(seed.dtype) || seed.rank() != 0)
    fail(kInputError, std::string("random ops take a 0-d integer seed, got ") + dtype_name(seed.dtype) +
                          " of shape " + shape_str(seed.shape));
  return dispatch_integer(seed.dtype, [&](auto tag) -> uint64_t {
    using S = decltype(tag);
    S v = *seed.ptr<S>();
    if constexpr (std::is_signed_v<S>) return static_cast<uint64_t>(static_cast<int64_t>(v));
    return static_cast<uint64_t>(v);
  });
}

// Output 0's shape from the `shape` attribute (checked against the declared one) and the key.
uint32_t random_setup(KernelCall& c) {
  c.expect_shape(0, c.ints("shape"));
  return seed_key(read_seed(*c.in.at(0)), c.i("stream", 0));
}

void random_bits_kernel(KernelCall& c) {
  uint32_t key = random_setup(c);
  c.expect_dtype(kUInt32);
  uint32_t* y = c.out.at(0)->ptr<uint32_t>();
  int64_t n = c.out.at(0)->size();
  for (int64_t i = 0; i < n; ++i) y[i] = counter_bits(key, i);
}

// The top mantissa bits as an exact float: 24 of them for float32, all 32 for float64.
template <class T>
inline T unit(uint32_t bits, bool plus_one) {
  if constexpr (std::is_same_v<T, float>) {
    float u = static_cast<float>(bits >> 8);
    if (plus_one) u = u + 1.0f;
    return u * 0x1p-24f;
  } else {
    double u = static_cast<double>(bits);
    if (plus_one) u = u + 1.0;
    return u * 0x1p-32;
  }
}

void random_uniform_kernel(KernelCall& c) {
  uint32_t key = random_setup(c);
  Tensor& y = *c.out.at(0);
  dispatch_float(y.dtype, [&](auto tag) {
    using T = decltype(tag);
    T* out = y.ptr<T>();
    int64_t n = y.size();
    for (int64_t i = 0; i < n; ++i) out[i] = unit<T>(counter_bits(key, i), false);
  });
}

void random_normal_kernel(KernelCall& c) {
  uint32_t key = random_setup(c);
  uint32_t key2 = mix32(key ^ kNormalSalt);
  Tensor& y = *c.out.at(0);
  dispatch_float(y.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T two_pi = static_cast<T>(6.283185307179586);  // work.type(2 * np.pi)
    T* out = y.ptr<T>();
    int64_t n = y.size();
    for (int64_t i = 0; i < n; ++i) {
      T u1 = unit<T>(counter_bits(key, i), true);  // (0, 1]: log is finite
      T u2 = unit<T>(counter_bits(key2, i), false);
      T radius = std::sqrt(static_cast<T>(-2) * std::log(u1));
      out[i] = radius * std::cos(two_pi * u2);
    }
  });
}

void check_seed(const OpDef& op, const GraphDef& g) {
  if (op.inputs.size() != 1 || op.outputs.size() != 1)
    fail(kUnsupportedError, "native '" + op.kind + "' expects one seed input and one output");
  DType s = value_dtype(g, op.inputs[0]);
  if (!is_int(s)) fail(kUnsupportedError, "native '" + op.kind + "' takes an integer seed, got " + dtype_name(s));
}

void check_random_bits(const OpDef& op, const GraphDef& g) {
  check_seed(op, g);
  DType t = value_dtype(g, op.outputs[0]);
  if (t != kUInt32) fail(kUnsupportedError, "native 'random_bits' writes uint32, the output is " + std::string(dtype_name(t)));
}

void check_random_float(const OpDef& op, const GraphDef& g) {
  check_seed(op, g);
  DType t = value_dtype(g, op.outputs[0]);
  if (t != kFloat32 && t != kFloat64)
    fail(kUnsupportedError, "native '" + op.kind + "' runs float32/float64 only, got " + dtype_name(t));
  auto it = op.attrs.find("dtype");
  if (it != op.attrs.end() && it->second.dtype != t)
    fail(kUnsupportedError, "native '" + op.kind + "': attribute dtype " + dtype_name(it->second.dtype) +
                                " differs from the output's " + dtype_name(t));
}

// ---- einsum: parsing -------------------------------------------------------------------------

// Labels: 'A'..'Z' -> 0..25, 'a'..'z' -> 26..51 (ASCII order, so implicit output sorts as NumPy
// does), the dims under '...' -> kEllipsis0 + k (right-aligned across operands).
constexpr int kEllipsis0 = 52;

struct EinsumSpec {
  std::vector<std::vector<int>> in;  // per operand, one label per dim (repeats = diagonals)
  std::vector<int> out;              // distinct labels
  int nlabels = kEllipsis0;          // label ids are < nlabels
};

int letter_label(char ch) { return ch >= 'A' && ch <= 'Z' ? ch - 'A' : ch - 'a' + 26; }
char label_char(int l) { return l < 26 ? static_cast<char>('A' + l) : static_cast<char>('a' + l - 26); }

// One term's letters (labels) and where its '...' is (-1: none); throws on any other character.
void parse_term(const std::string& eq, const std::string& term, std::vector<int>* letters, int* ellipsis_at) {
  *ellipsis_at = -1;
  for (size_t p = 0; p < term.size(); ++p) {
    char ch = term[p];
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')) {
      letters->push_back(letter_label(ch));
    } else if (ch == '.' && term.compare(p, 3, "...") == 0 && *ellipsis_at < 0) {
      *ellipsis_at = static_cast<int>(letters->size());
      p += 2;
    } else {
      fail(kKernelError, "einsum equation '" + eq + "': unexpected '" + std::string(1, ch) + "' in term '" + term + "'");
    }
  }
}

// NumPy's reading of `equation` for operands of these ranks; throws (kKernelError) where
// np.einsum would raise.
EinsumSpec parse_einsum(const std::string& equation, const std::vector<int>& ranks) {
  std::string eq;
  for (char ch : equation)
    if (ch != ' ') eq += ch;
  size_t arrow = eq.find("->");
  bool explicit_out = arrow != std::string::npos;
  std::string lhs = explicit_out ? eq.substr(0, arrow) : eq;
  std::string rhs = explicit_out ? eq.substr(arrow + 2) : "";
  if (lhs.find_first_of("->") != std::string::npos || rhs.find_first_of("->") != std::string::npos)
    fail(kKernelError, "einsum equation '" + equation + "': misplaced '-' or '>'");
  std::vector<std::string> terms(1);
  for (char ch : lhs) {
    if (ch == ',') terms.emplace_back();
    else terms.back() += ch;
  }
  if (terms.size() != ranks.size())
    fail(kKernelError, "einsum equation '" + equation + "' names " + std::to_string(terms.size()) + " operands, got " +
                           std::to_string(ranks.size()));
  EinsumSpec spec;
  std::vector<std::vector<int>> letters(terms.size());
  std::vector<int> at(terms.size()), ell(terms.size(), 0);
  int k_ell = 0;
  for (size_t k = 0; k < terms.size(); ++k) {
    parse_term(equation, terms[k], &letters[k], &at[k]);
    int nl = static_cast<int>(letters[k].size());
    if (at[k] < 0 ? nl != ranks[k] : nl > ranks[k])
      fail(kKernelError, "einsum equation '" + equation + "': term '" + terms[k] + "' does not fit operand " +
                             std::to_string(k) + " of rank " + std::to_string(ranks[k]));
    ell[k] = at[k] < 0 ? 0 : ranks[k] - nl;
    k_ell = std::max(k_ell, ell[k]);
  }
  spec.nlabels = kEllipsis0 + k_ell;
  for (size_t k = 0; k < terms.size(); ++k) {
    std::vector<int>& labels = spec.in.emplace_back();
    for (int p = 0; p < static_cast<int>(letters[k].size()); ++p) {
      if (p == at[k])
        for (int e = k_ell - ell[k]; e < k_ell; ++e) labels.push_back(kEllipsis0 + e);
      labels.push_back(letters[k][p]);
    }
    if (at[k] == static_cast<int>(letters[k].size()))
      for (int e = k_ell - ell[k]; e < k_ell; ++e) labels.push_back(kEllipsis0 + e);
  }
  std::vector<int> count(spec.nlabels, 0);
  for (const auto& labels : spec.in)
    for (int l : labels) ++count[l];
  if (explicit_out) {
    std::vector<int> out_letters;
    int out_at;
    parse_term(equation, rhs, &out_letters, &out_at);
    if (out_at < 0 && k_ell > 0)
      fail(kKernelError, "einsum equation '" + equation + "': the operands have '...' dims but the output has no '...'");
    for (int p = 0; p <= static_cast<int>(out_letters.size()); ++p) {
      if (p == out_at)
        for (int e = 0; e < k_ell; ++e) spec.out.push_back(kEllipsis0 + e);
      if (p == static_cast<int>(out_letters.size())) break;
      int l = out_letters[p];
      if (count[l] == 0)
        fail(kKernelError, "einsum equation '" + equation + "': output index '" + std::string(1, label_char(l)) +
                               "' is not in any operand");
      if (std::find(spec.out.begin(), spec.out.end(), l) != spec.out.end())
        fail(kKernelError, "einsum equation '" + equation + "': output index '" + std::string(1, label_char(l)) +
                               "' repeats");
      spec.out.push_back(l);
    }
  } else {  // implicit: the '...' dims, then the letters seen once, sorted
    for (int e = 0; e < k_ell; ++e) spec.out.push_back(kEllipsis0 + e);
    for (int l = 0; l < kEllipsis0; ++l)
      if (count[l] == 1) spec.out.push_back(l);
  }
  return spec;
}

// ---- einsum: double-accumulating row sums, compiled for baseline x86-64 and for AVX-512 -------

#if defined(__x86_64__) && defined(__GNUC__) && !defined(CASTML_NO_AVX512)  // the latter: test the portable path
#define CASTML_EINSUM_AVX512 __attribute__((target(CASTML_AVX512_TARGET)))
#endif

// sum_j a[j] (Dot: sum_j a[j]*b[j]) in double over 32 partial sums (GCC vector extensions: four
// vectors of 8 doubles, held in registers); float products are exact in double.
template <class S, bool Dot>
[[gnu::always_inline]] inline double row_sum_body(const S* __restrict a, const S* __restrict b, int64_t n) {
  typedef double D8 __attribute__((vector_size(64)));
  typedef S S8 __attribute__((vector_size(8 * sizeof(S))));
  constexpr int kV = 4;
  D8 acc0 = {}, acc1 = {}, acc2 = {}, acc3 = {};
  auto add = [&](D8& acc, int64_t j) {  // by reference: no vector crosses a call (ABI)
    S8 x;
    std::memcpy(&x, a + j, sizeof x);
    D8 t = __builtin_convertvector(x, D8);
    if constexpr (Dot) {
      std::memcpy(&x, b + j, sizeof x);
      t *= __builtin_convertvector(x, D8);
    }
    acc += t;
  };
  int64_t j = 0;
  for (; j + 8 * kV <= n; j += 8 * kV) {
    add(acc0, j);
    add(acc1, j + 8);
    add(acc2, j + 16);
    add(acc3, j + 24);
  }
  for (; j + 8 <= n; j += 8) add(acc0, j);
  D8 v = (acc0 + acc1) + (acc2 + acc3);
  double s = ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
  for (; j < n; ++j) {
    if constexpr (Dot) s += static_cast<double>(a[j]) * static_cast<double>(b[j]);
    else s += static_cast<double>(a[j]);
  }
  return s;
}

template <class S, bool Dot>
double row_sum_base(const S* a, const S* b, int64_t n) {
  return row_sum_body<S, Dot>(a, b, n);
}

#ifdef CASTML_EINSUM_AVX512
template <class S, bool Dot>
CASTML_EINSUM_AVX512 double row_sum_avx512(const S* a, const S* b, int64_t n) {
  return row_sum_body<S, Dot>(a, b, n);
}

#endif

template <class S, bool Dot>
double row_sum(const S* a, const S* b, int64_t n) {
#ifdef CASTML_EINSUM_AVX512
  if (cpu_has_avx512()) return row_sum_avx512<S, Dot>(a, b, n);
#endif
  return row_sum_base<S, Dot>(a, b, n);
}

// ---- einsum: contraction ---------------------------------------------------------------------

struct Operand {
  const void* data = nullptr;   // elements of type T (raw: an input, or a GEMM result) or A (a loop's)
  bool raw = true;              // read as T (else as the accumulator type A)
  std::vector<int> labels;      // distinct labels it has (in any order)
  std::vector<int64_t> stride;  // per label id (0: absent or broadcast)
};

// y[j*so] += a[j*sa] * b[j*sb] for j < n (b absent: K == 1), read in A; unit-stride forms
// spelled out so the compiler vectorizes them (float sums and dots: row_sum).
template <class A, size_t K, class TA, class TB>
inline void inner_row(const TA* a, const TB* b, A* y, int64_t n, int64_t sa, int64_t sb, int64_t so) {
  auto rd = [](auto v) { return static_cast<A>(v); };
  if (so == 0) {
    constexpr bool kFloatRow = std::is_same_v<A, double> && std::is_floating_point_v<TA>;
    if constexpr (kFloatRow && K == 2 && std::is_same_v<TA, TB>) {
      if (sa == 1 && sb == 1) {
        *y += row_sum<TA, true>(a, b, n);
        return;
      }
    }
    if constexpr (kFloatRow && K == 1) {
      if (sa == 1) {
        *y += row_sum<TA, false>(a, nullptr, n);
        return;
      }
    }
    A acc[4] = {0, 0, 0, 0};  // four partial sums (as NumPy's unrolled sum-of-products)
    int64_t j = 0;
    if constexpr (K == 2) {
      if (sa == 1 && sb == 1) {
        for (; j + 4 <= n; j += 4)
          for (int u = 0; u < 4; ++u) acc[u] += rd(a[j + u]) * rd(b[j + u]);
      }
      for (; j < n; ++j) acc[0] += rd(a[j * sa]) * rd(b[j * sb]);
    } else {
      if (sa == 1) {
        for (; j + 4 <= n; j += 4)
          for (int u = 0; u < 4; ++u) acc[u] += rd(a[j + u]);
      }
      for (; j < n; ++j) acc[0] += rd(a[j * sa]);
    }
    *y += (acc[0] + acc[1]) + (acc[2] + acc[3]);
    return;
  }
  if constexpr (K == 2) {
    if (so == 1 && sa == 0 && sb == 1) {
      A av = rd(a[0]);
      for (int64_t j = 0; j < n; ++j) y[j] += av * rd(b[j]);
    } else if (so == 1 && sa == 1 && sb == 0) {
      A bv = rd(b[0]);
      for (int64_t j = 0; j < n; ++j) y[j] += rd(a[j]) * bv;
    } else if (so == 1 && sa == 1 && sb == 1) {
      for (int64_t j = 0; j < n; ++j) y[j] += rd(a[j]) * rd(b[j]);
    } else {
      for (int64_t j = 0; j < n; ++j) y[j * so] += rd(a[j * sa]) * rd(b[j * sb]);
    }
  } else {
    if (so == 1 && sa == 1) {
      for (int64_t j = 0; j < n; ++j) y[j] += rd(a[j]);
    } else {
      for (int64_t j = 0; j < n; ++j) y[j * so] += rd(a[j * sa]);
    }
  }
}

// out (zeroed; strides out_stride per label id) += sum over the labels not in out of the product
// of the operands (one or two, of element types TA, TB), every label of `labels` looped over
// sizes[label].
template <class A, size_t K, class TA, class TB>
void contract_loop(const std::array<const Operand*, K>& ops, const std::vector<int>& labels,
                   const std::vector<int64_t>& sizes, const std::vector<int64_t>& out_stride, A* out) {
  // loop order: the innermost label has the most unit strides (then the largest size)
  std::vector<int> order;
  for (int l : labels) {
    if (sizes[l] == 0) return;  // nothing to add
    if (sizes[l] > 1) order.push_back(l);
  }
  auto score = [&](int l) {
    int s = out_stride[l] == 1;
    for (const Operand* op : ops) s += op->stride[l] == 1;
    return s;
  };
  auto inner_it = std::max_element(order.begin(), order.end(), [&](int a, int b) {
    return score(a) != score(b) ? score(a) < score(b) : sizes[a] < sizes[b];
  });
  if (inner_it != order.end()) std::rotate(inner_it, inner_it + 1, order.end());
  std::stable_partition(order.begin(), order.empty() ? order.end() : order.end() - 1,
                        [&](int l) { return out_stride[l] != 0; });  // kept labels outermost
  int r = static_cast<int>(order.size());
  const TA* a0 = static_cast<const TA*>(ops[0]->data);
  const TB* b0 = static_cast<const TB*>(ops[K - 1]->data);
  if (r == 0) {
    inner_row<A, K>(a0, b0, out, 1, 0, 0, 0);
    return;
  }
  std::vector<std::array<int64_t, K + 1>> st(r);
  __int128 outer = 1;
  for (int d = 0; d < r; ++d) {
    for (size_t k = 0; k < K; ++k) st[d][k] = ops[k]->stride[order[d]];
    st[d][K] = out_stride[order[d]];
    if (d < r - 1) outer *= sizes[order[d]];
  }
  int64_t n_outer = checked_int64(outer);
  int64_t n = sizes[order[r - 1]], so = st[r - 1][K], sa = st[r - 1][0], sb = st[r - 1][K - 1];
  std::array<int64_t, K + 1> off{};
  std::vector<int64_t> idx(r, 0);
  for (int64_t o = 0; o < n_outer; ++o) {
    inner_row<A, K>(a0 + off[0], b0 + off[K - 1], out + off[K], n, sa, sb, so);
    for (int d = r - 2; d >= 0; --d) {  // advance the outer counter
      ++idx[d];
      for (size_t k = 0; k <= K; ++k) off[k] += st[d][k];
      if (idx[d] < sizes[order[d]]) break;
      for (size_t k = 0; k <= K; ++k) off[k] -= st[d][k] * sizes[order[d]];
      idx[d] = 0;
    }
  }
}

// contract_loop with each operand read as T (an input) or A (an intermediate).
template <class A, class T>
void contract_pair(const Operand& p, const Operand& q, const std::vector<int>& labels,
                   const std::vector<int64_t>& sizes, const std::vector<int64_t>& out_stride, A* out) {
  if (p.raw && q.raw) contract_loop<A, 2, T, T>({&p, &q}, labels, sizes, out_stride, out);
  else if (p.raw) contract_loop<A, 2, T, A>({&p, &q}, labels, sizes, out_stride, out);
  else if (q.raw) contract_loop<A, 2, A, T>({&p, &q}, labels, sizes, out_stride, out);
  else contract_loop<A, 2, A, A>({&p, &q}, labels, sizes, out_stride, out);
}

// ---- einsum: pairwise contractions as batched GEMM (float32/float64) --------------------------

// Contractions smaller than this (m*n*k per GEMM call), with m and n both below kGemmMinSide, or
// matrix x vector ones (n == 1 once C's layout picked the roles) stay on the loop path.
constexpr int64_t kGemmMinWork = 4096;
constexpr int64_t kGemmMinSide = 8;

int64_t size_of(const std::vector<int>& labels, const std::vector<int64_t>& sizes) {
  __int128 n = 1;
  for (int l : labels) n *= sizes[l];
  return checked_int64(n);
}

// Strides of a C-contiguous layout over `labels` (0 for size-1 labels and labels not listed).
std::vector<int64_t> contiguous_strides(const std::vector<int>& labels, const std::vector<int64_t>& sizes) {
  std::vector<int64_t> st(sizes.size(), 0);
  int64_t s = 1;
  for (size_t i = labels.size(); i-- > 0;) {
    st[labels[i]] = sizes[labels[i]] == 1 ? 0 : s;
    s *= sizes[labels[i]];
  }
  return st;
}

// Whether `labels`, in this order, address memory as one dim: each label's stride is the next
// one's times the next one's size. *inner: the last label's stride (1 for no labels).
bool collapses(const std::vector<int>& labels, const std::vector<int64_t>& stride, const std::vector<int64_t>& sizes,
               int64_t* inner) {
  for (size_t i = 0; i + 1 < labels.size(); ++i)
    if (stride[labels[i]] != stride[labels[i + 1]] * sizes[labels[i + 1]]) return false;
  *inner = labels.empty() ? 1 : stride[labels.back()];
  return true;
}

// `labels` by decreasing stride (ties kept in order): the order memory lays them out.
std::vector<int> by_stride(std::vector<int> labels, const std::vector<int64_t>& stride) {
  std::stable_sort(labels.begin(), labels.end(), [&](int x, int y) { return stride[x] > stride[y]; });
  return labels;
}

// dst[...] = src[...] converted to D, over every index of `labels` (outermost first; the last is
// the inner loop), each side addressed by its own strides per label.
template <class S, class D>
void copy_strided(const S* src, const std::vector<int64_t>& ss, D* dst, const std::vector<int64_t>& ds,
                  const std::vector<int>& labels, const std::vector<int64_t>& sizes) {
  int r = static_cast<int>(labels.size());
  if (r == 0) {
    dst[0] = static_cast<D>(src[0]);
    return;
  }
  int inner = labels[r - 1];
  int64_t n = sizes[inner], s_in = ss[inner], d_in = ds[inner];
  int64_t n_outer = size_of(std::vector<int>(labels.begin(), labels.end() - 1), sizes);
  std::vector<int64_t> idx(r, 0);
  int64_t so = 0, dof = 0;
  for (int64_t o = 0; o < n_outer; ++o) {
    const S* s = src + so;
    D* t = dst + dof;
    if (s_in == 1 && d_in == 1) {
      for (int64_t j = 0; j < n; ++j) t[j] = static_cast<D>(s[j]);
    } else {
      for (int64_t j = 0; j < n; ++j) t[j * d_in] = static_cast<D>(s[j * s_in]);
    }
    for (int d = r - 2; d >= 0; --d) {
      int l = labels[d];
      so += ss[l], dof += ds[l];
      if (++idx[d] < sizes[l]) break;
      so -= ss[l] * sizes[l], dof -= ds[l] * sizes[l];
      idx[d] = 0;
    }
  }
}

// One pairwise contraction read as C[batch][m][n] = sum_k A[batch][m][k] · B[batch][k][n]:
// batch = labels kept with both operands (or broadcast in both), m / n = labels kept with only
// the A / B operand, k = labels summed over (in both). A is p and B is q, or the other way round
// (C^T = B^T A^T) when only that lets C be written in place.
struct GemmPlan {
  bool zero = false;                   // a size-0 label: the output is empty or all zeros
  const Operand* a = nullptr;          // the operand read as [batch] x m x k
  const Operand* b = nullptr;          // [batch] x k x n
  std::vector<int> batch, m, n, k;     // labels of size > 1; m and n in C's order
  std::vector<int> keep;               // the output's labels, in layout order
  int64_t M = 1, N = 1, Kn = 1;
  bool view_a = false, view_b = false, view_c = false;  // read/written in place (else packed)
  int64_t lda = 0, ldb = 0, ldc = 0;
};

// Whether operand `o` (read as T) is m x k with row stride *ld and unit stride along k.
template <class A, class T>
bool as_matrix(const Operand& o, const std::vector<int>& rows, const std::vector<int>& cols,
               const std::vector<int64_t>& sizes, int64_t n_cols, int64_t* ld) {
  if (!o.raw && !std::is_same_v<A, T>) return false;  // an intermediate in A: converted by packing
  int64_t inner_rows, inner_cols;
  if (!collapses(rows, o.stride, sizes, &inner_rows) || !collapses(cols, o.stride, sizes, &inner_cols)) return false;
  if (!cols.empty() && inner_cols != 1) return false;
  *ld = rows.empty() ? std::max<int64_t>(n_cols, 1) : inner_rows;
  return *ld >= std::max<int64_t>(n_cols, 1);  // as the BLAS requires
}

// Plans p x q -> `keep` (reordered when `reorder`: an intermediate's layout is ours to choose);
// false when the contraction is not GEMM-shaped or too small (then the loop path runs).
template <class A, class T>
bool plan_gemm(const Operand& p, const Operand& q, std::vector<int> keep, bool reorder,
               const std::vector<int64_t>& sizes, GemmPlan* plan) {
  std::vector<int> all = p.labels;
  for (int l : q.labels)
    if (std::find(all.begin(), all.end(), l) == all.end()) all.push_back(l);
  plan->keep = keep;
  for (int l : all)
    if (sizes[l] == 0) {
      plan->zero = true;
      return true;
    }
  std::vector<int> m, n;
  for (int l : all) {
    if (sizes[l] == 1) continue;
    bool kept = std::find(keep.begin(), keep.end(), l) != keep.end();
    bool in_p = p.stride[l] != 0, in_q = q.stride[l] != 0;
    if (kept) (in_p == in_q ? plan->batch : in_p ? m : n).push_back(l);
    else if (in_p && in_q) plan->k.push_back(l);
    else return false;  // summed over in one operand only: the loop path
  }
  if (plan->k.empty()) return false;
  int64_t M = size_of(m, sizes), N = size_of(n, sizes), Kn = size_of(plan->k, sizes);
  if (std::max(M, N) < kGemmMinSide || static_cast<__int128>(M) * N * Kn < kGemmMinWork) return false;
  if (reorder) {  // batch, then m and n as p and q lay them out: C is written in place
    m = by_stride(m, p.stride);
    n = by_stride(n, q.stride);
    keep.clear();
    for (const auto* group : {&plan->batch, &m, &n}) keep.insert(keep.end(), group->begin(), group->end());
    for (int l : plan->keep)
      if (sizes[l] == 1) keep.push_back(l);
    plan->keep = keep;
  }
  std::vector<int64_t> cst = contiguous_strides(plan->keep, sizes);
  auto in_c_order = [&](std::vector<int> ls) {
    std::sort(ls.begin(), ls.end(), [&](int x, int y) {
      return std::find(keep.begin(), keep.end(), x) < std::find(keep.begin(), keep.end(), y);
    });
    return ls;
  };
  m = in_c_order(m);
  n = in_c_order(n);
  // roles: p as A (C is [batch] m x n), else q as A (C^T); C in place when one of them allows it
  plan->a = &p, plan->b = &q, plan->m = m, plan->n = n, plan->M = M, plan->N = N;
  for (int swap = 0; swap < 2; ++swap) {
    const std::vector<int>& rows = swap ? n : m;
    const std::vector<int>& cols = swap ? m : n;
    int64_t ldc;
    Operand c_view;
    c_view.stride = cst;
    if (as_matrix<T, T>(c_view, rows, cols, sizes, swap ? M : N, &ldc)) {
      if (swap) plan->a = &q, plan->b = &p, plan->m = n, plan->n = m, plan->M = N, plan->N = M;
      plan->view_c = true, plan->ldc = ldc;
      break;
    }
  }
  if (!plan->view_c) plan->ldc = std::max<int64_t>(plan->N, 1);
  if (plan->N == 1) return false;  // matrix x vector: the loop path's double dot rows are as fast
  // k in the order A lays it out, or B does: whichever leaves less to pack
  plan->Kn = Kn;
  int64_t best_cost = -1;
  for (const Operand* o : {plan->a, plan->b}) {
    std::vector<int> k = by_stride(plan->k, o->stride);
    int64_t lda = 0, ldb = 0;
    bool va = as_matrix<A, T>(*plan->a, plan->m, k, sizes, Kn, &lda);
    bool vb = as_matrix<A, T>(*plan->b, k, plan->n, sizes, plan->N, &ldb);
    int64_t cost = (va ? 0 : plan->M * Kn) + (vb ? 0 : Kn * plan->N);
    if (best_cost < 0 || cost < best_cost) {
      best_cost = cost;
      plan->k = k, plan->view_a = va, plan->view_b = vb, plan->lda = lda, plan->ldb = ldb;
    }
  }
  return true;
}

// The elements of operand o as a const pointer to S (its own type: T when raw, else A).
template <class S>
const S* data_as(const Operand& o) {
  return static_cast<const S*>(o.data);
}

// Operand o packed C-contiguous over [its batch labels] + rows + cols, converted to T; returns the
// packed strides per label through *st.
template <class A, class T>
std::vector<T> pack(const Operand& o, const std::vector<int>& batch, const std::vector<int>& rows,
                    const std::vector<int>& cols, const std::vector<int64_t>& sizes, std::vector<int64_t>* st) {
  std::vector<int> order;
  for (int l : batch)
    if (o.stride[l] != 0) order.push_back(l);  // broadcast along the others: stride 0 stays
  order.insert(order.end(), rows.begin(), rows.end());
  order.insert(order.end(), cols.begin(), cols.end());
  *st = contiguous_strides(order, sizes);
  std::vector<T> buf(static_cast<size_t>(size_of(order, sizes)));
  if (o.raw) copy_strided(data_as<T>(o), o.stride, buf.data(), *st, order, sizes);
  else copy_strided(data_as<A>(o), o.stride, buf.data(), *st, order, sizes);
  return buf;
}

// Runs a plan into dst (T, C-contiguous over plan.keep).
template <class A, class T>
void run_gemm(const GemmPlan& plan, const std::vector<int64_t>& sizes, T* dst) {
  std::vector<int64_t> cst = contiguous_strides(plan.keep, sizes);
  int64_t n_out = size_of(plan.keep, sizes);
  if (plan.zero) {
    std::fill(dst, dst + n_out, T(0));
    return;
  }
  std::vector<T> a_buf, b_buf, c_buf;
  std::vector<int64_t> ast = plan.a->stride, bst = plan.b->stride, pst = cst;
  const T* a = plan.view_a ? data_as<T>(*plan.a) : nullptr;
  const T* b = plan.view_b ? data_as<T>(*plan.b) : nullptr;
  T* c = dst;
  if (!plan.view_a) a_buf = pack<A, T>(*plan.a, plan.batch, plan.m, plan.k, sizes, &ast), a = a_buf.data();
  if (!plan.view_b) b_buf = pack<A, T>(*plan.b, plan.batch, plan.k, plan.n, sizes, &bst), b = b_buf.data();
  int64_t lda = plan.view_a ? plan.lda : plan.Kn, ldb = plan.view_b ? plan.ldb : plan.N;
  if (!plan.view_c) {  // [batch] m n, permuted into dst afterwards
    std::vector<int> order = plan.batch;
    order.insert(order.end(), plan.m.begin(), plan.m.end());
    order.insert(order.end(), plan.n.begin(), plan.n.end());
    pst = contiguous_strides(order, sizes);
    c_buf.resize(static_cast<size_t>(n_out));
    c = c_buf.data();
  }
  int r = static_cast<int>(plan.batch.size());
  int64_t n_batch = size_of(plan.batch, sizes);
  std::vector<int64_t> idx(r, 0);
  int64_t oa = 0, ob = 0, oc = 0;
  for (int64_t t = 0; t < n_batch; ++t) {
    gemm<T>(plan.M, plan.N, plan.Kn, a + oa, lda, b + ob, ldb, T(0), c + oc, plan.ldc);
    for (int d = r - 1; d >= 0; --d) {
      int l = plan.batch[d];
      oa += ast[l], ob += bst[l], oc += pst[l];
      if (++idx[d] < sizes[l]) break;
      oa -= ast[l] * sizes[l], ob -= bst[l] * sizes[l], oc -= pst[l] * sizes[l];
      idx[d] = 0;
    }
  }
  if (!plan.view_c) {
    std::vector<int> order;  // dst's order, so that the writes are the unit-stride side
    for (int l : plan.keep)
      if (sizes[l] > 1) order.push_back(l);
    copy_strided(c, pst, dst, cst, order, sizes);
  }
}

// ---- einsum: the contraction path ------------------------------------------------------------

// The operands contracted into y (n_out elements, C-contiguous over spec.out), two at a time:
// float32/float64 pairs shaped as a (batched) matrix product through GEMM (in T, as NumPy's
// tensordot), the others by the loop nest (in A, converted to T at the end).
template <class A, class T>
void contract_all(std::vector<Operand> ops, const EinsumSpec& spec, const std::vector<int64_t>& sizes,
                  bool boolean, T* y, int64_t n_out) {
  std::vector<A> own;  // the loop path's final accumulator when A is not T
  auto result = [&]() -> A* {
    if constexpr (std::is_same_v<A, T>) {
      std::fill(y, y + n_out, A(0));
      return y;
    } else {
      own.assign(static_cast<size_t>(n_out), A(0));
      return own.data();
    }
  };
  auto finish = [&]() {  // the loop path's result into y
    if constexpr (!std::is_same_v<A, T>) {
      for (int64_t i = 0; i < n_out; ++i) {
        if constexpr (std::is_same_v<T, bool>) y[i] = own[i] != 0;
        else y[i] = static_cast<T>(own[i]);  // wraps as NumPy's narrow integer arithmetic
      }
    }
  };
  auto union_of = [&](const Operand& p, const Operand* q) {
    std::vector<int> u = p.labels;
    if (q)
      for (int l : q->labels)
        if (std::find(u.begin(), u.end(), l) == u.end()) u.push_back(l);
    return u;
  };
  if (ops.size() == 1) {
    A* out = result();
    contract_loop<A, 1, T, T>({&ops[0]}, union_of(ops[0], nullptr), sizes, contiguous_strides(spec.out, sizes), out);
    finish();
    return;
  }
  std::vector<std::vector<A>> buffers;  // the intermediates (kept alive while operands point in)
  std::vector<std::vector<T>> t_buffers;  // GEMM results (float32/float64 only)
  uint64_t max_bytes = current_limits().max_tensor_bytes;
  while (ops.size() >= 2) {
    bool last = ops.size() == 2;
    size_t bp = 0, bq = 1;
    std::vector<int> best_keep;
    __int128 best_size = -1;
    for (size_t p = 0; p < ops.size() && !last; ++p) {
      for (size_t q = p + 1; q < ops.size(); ++q) {  // NumPy's greedy path: the smallest result
        std::vector<int> keep;
        for (int l : union_of(ops[p], &ops[q])) {
          bool needed = std::find(spec.out.begin(), spec.out.end(), l) != spec.out.end();
          for (size_t o = 0; o < ops.size() && !needed; ++o)
            needed = o != p && o != q && std::find(ops[o].labels.begin(), ops[o].labels.end(), l) != ops[o].labels.end();
          if (needed) keep.push_back(l);
        }
        __int128 size = 1;
        for (int l : keep) size *= sizes[l];
        if (best_size < 0 || size < best_size) best_size = size, bp = p, bq = q, best_keep = keep;
      }
    }
    if (!last && static_cast<unsigned __int128>(best_size) * sizeof(A) > max_bytes)
      fail(kKernelError, "einsum: an intermediate of " + std::to_string(static_cast<uint64_t>(best_size)) +
                             " elements exceeds max_tensor_bytes = " + std::to_string(max_bytes));
    Operand merged;
    bool gemm_done = false;
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      GemmPlan plan;
      if (plan_gemm<A, T>(ops[bp], ops[bq], last ? spec.out : best_keep, !last, sizes, &plan)) {
        merged.raw = true;  // GEMM results are in T
        merged.labels = plan.keep;
        T* dst = last ? y : t_buffers.emplace_back(static_cast<size_t>(best_size)).data();
        run_gemm<A, T>(plan, sizes, dst);
        merged.data = dst;
        gemm_done = true;
      }
    }
    if (!gemm_done) {
      merged.raw = false;
      merged.labels = last ? spec.out : best_keep;
      A* dst = last ? result() : buffers.emplace_back(static_cast<size_t>(best_size), A(0)).data();
      contract_pair<A, T>(ops[bp], ops[bq], union_of(ops[bp], &ops[bq]), sizes,
                          contiguous_strides(merged.labels, sizes), dst);
      if (boolean && !last) {  // keep "any product true" as 0/1 so later products cannot wrap to 0
        for (A& v : buffers.back()) v = v != 0;
      }
      if (last) finish();
      merged.data = dst;
    }
    merged.stride = contiguous_strides(merged.labels, sizes);
    ops.erase(ops.begin() + static_cast<std::ptrdiff_t>(bq));
    ops.erase(ops.begin() + static_cast<std::ptrdiff_t>(bp));
    ops.push_back(std::move(merged));
  }
}

void einsum_kernel(KernelCall& c) {
  std::vector<int> ranks;
  for (const Tensor* t : c.in) ranks.push_back(t->rank());
  EinsumSpec spec = parse_einsum(c.s("equation", ""), ranks);
  Tensor& y = *c.out.at(0);
  c.expect_dtype(y.dtype, c.in.size());
  // index sizes: equal within an operand (diagonals), broadcast (size 1) across operands
  std::vector<int64_t> sizes(spec.nlabels, -1);
  std::vector<std::vector<int64_t>> own(c.in.size(), std::vector<int64_t>(spec.nlabels, -1));
  for (size_t k = 0; k < c.in.size(); ++k) {
    const Shape& shape = c.in[k]->shape;
    for (size_t d = 0; d < shape.size(); ++d) {
      int l = spec.in[k][d];
      int64_t& mine = own[k][l];
      if (mine >= 0 && mine != shape[d])
        fail(kKernelError, "einsum: operand " + std::to_string(k) + " of shape " + shape_str(shape) +
                               " has index '" + (l < kEllipsis0 ? std::string(1, label_char(l)) : std::string("...")) +
                               "' twice with different sizes");
      mine = shape[d];
      int64_t& all = sizes[l];
      if (all < 0 || all == 1) {
        all = shape[d];
      } else if (shape[d] != 1 && shape[d] != all) {
        fail(kKernelError, "einsum: index '" + (l < kEllipsis0 ? std::string(1, label_char(l)) : std::string("...")) +
                               "' is " + std::to_string(all) + " in one operand and " + std::to_string(shape[d]) +
                               " in operand " + std::to_string(k) + " of shape " + shape_str(shape));
      }
    }
  }
  Shape out_shape;
  for (int l : spec.out) out_shape.push_back(sizes[l]);
  c.expect_shape(0, out_shape);
  int64_t n_out = y.size();
  dispatch_all(y.dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = std::conditional_t<std::is_floating_point_v<T>, double, uint64_t>;
    std::vector<Operand> ops(c.in.size());
    for (size_t k = 0; k < c.in.size(); ++k) {
      const Tensor& t = *c.in[k];
      Operand& op = ops[k];
      op.data = t.data;  // read as T, converted to A element by element
      op.stride.assign(spec.nlabels, 0);
      int64_t s = 1;
      for (size_t d = t.shape.size(); d-- > 0;) {
        int l = spec.in[k][d];
        if (t.shape[d] != 1) op.stride[l] += s;  // a repeated label walks the diagonal
        s *= t.shape[d];
        if (std::find(op.labels.begin(), op.labels.end(), l) == op.labels.end()) op.labels.push_back(l);
      }
    }
    contract_all<A, T>(std::move(ops), spec, sizes, std::is_same_v<T, bool>, y.ptr<T>(), n_out);
  });
}

void check_einsum(const OpDef& op, const GraphDef& g) {
  if (op.outputs.size() != 1 || op.inputs.empty())
    fail(kUnsupportedError, "native 'einsum' expects one or more inputs and one output");
  DType t = value_dtype(g, op.outputs[0]);
  if (t == kFloat16) fail(kUnsupportedError, "native 'einsum' has no float16 kernel");
  if (!dtype_valid(t)) fail(kUnsupportedError, "native 'einsum': invalid output dtype");
  for (uint32_t v : op.inputs)
    if (value_dtype(g, v) != t)
      fail(kUnsupportedError, std::string("native 'einsum' expects every input in the output's dtype ") +
                                  dtype_name(t) + ", got " + dtype_name(value_dtype(g, v)));
  auto it = op.attrs.find("equation");
  if (it == op.attrs.end() || it->second.kind != kAttrStr)
    fail(kUnsupportedError, "native 'einsum' needs a string attribute 'equation'");
  std::vector<int> ranks;
  for (uint32_t v : op.inputs) ranks.push_back(static_cast<int>(g.values[v].shape.size()));
  EinsumSpec spec = parse_einsum(it->second.s, ranks);  // a malformed equation is left to NumPy
  if (spec.out.size() != g.values[op.outputs[0]].shape.size())
    fail(kUnsupportedError, "native 'einsum': the equation gives rank " + std::to_string(spec.out.size()) +
                                ", the output is declared with rank " +
                                std::to_string(g.values[op.outputs[0]].shape.size()));
}

}  // namespace

void register_random(KernelTable& t) {
  t["random_bits"] = {random_bits_kernel, check_random_bits};
  t["random_uniform"] = {random_uniform_kernel, check_random_float};
  t["random_normal"] = {random_normal_kernel, check_random_float};
  t["einsum"] = {einsum_kernel, check_einsum};
}

}  // namespace castml
