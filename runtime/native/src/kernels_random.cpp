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
// smallest (NumPy's greedy path), by one loop nest whose innermost loop is the index with the
// most unit strides (inputs read in place, each element converted as it is used). Floats
// accumulate in double, integers in wrapping uint64 (truncated at the end, which equals NumPy's
// wrapping in the narrow type), bool as "any product true".
#include <algorithm>
#include <array>
#include <cmath>
#include <type_traits>

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

// ---- einsum: contraction ---------------------------------------------------------------------

struct Operand {
  const void* data = nullptr;   // an input (its own dtype) or an intermediate (the accumulator's)
  bool raw = true;              // an input of the op
  std::vector<int> labels;      // distinct labels it has (in any order)
  std::vector<int64_t> stride;  // per label id (0: absent or broadcast)
};

// y[j*so] += a[j*sa] * b[j*sb] for j < n (b absent: K == 1), read in A; unit-stride forms
// spelled out so the compiler vectorizes them.
template <class A, size_t K, class TA, class TB>
inline void inner_row(const TA* a, const TB* b, A* y, int64_t n, int64_t sa, int64_t sb, int64_t so) {
  auto rd = [](auto v) { return static_cast<A>(v); };
  if (so == 0) {
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

// The operands contracted into `result` (laid out C-contiguous over spec.out), two at a time.
template <class A, class T>
void contract_all(std::vector<Operand> ops, const EinsumSpec& spec, const std::vector<int64_t>& sizes,
                  bool boolean, A* result, int64_t result_size) {
  auto contiguous = [&](const std::vector<int>& keep) {
    std::vector<int64_t> st(spec.nlabels, 0);
    int64_t s = 1;
    for (size_t i = keep.size(); i-- > 0;) {
      st[keep[i]] = sizes[keep[i]] == 1 ? 0 : s;
      s *= sizes[keep[i]];
    }
    return st;
  };
  auto union_of = [&](const Operand& p, const Operand* q) {
    std::vector<int> u = p.labels;
    if (q)
      for (int l : q->labels)
        if (std::find(u.begin(), u.end(), l) == u.end()) u.push_back(l);
    return u;
  };
  std::fill(result, result + result_size, A(0));
  if (ops.size() == 1) {
    contract_loop<A, 1, T, T>({&ops[0]}, union_of(ops[0], nullptr), sizes, contiguous(spec.out), result);
  }
  std::vector<std::vector<A>> buffers;  // the intermediates (kept alive while operands point in)
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
    Operand merged;
    merged.raw = false;
    A* dst = result;
    if (last) {
      merged.labels = spec.out;
    } else {
      if (static_cast<unsigned __int128>(best_size) * sizeof(A) > max_bytes)
        fail(kKernelError, "einsum: an intermediate of " + std::to_string(static_cast<uint64_t>(best_size)) +
                               " elements exceeds max_tensor_bytes = " + std::to_string(max_bytes));
      merged.labels = best_keep;
      dst = buffers.emplace_back(static_cast<size_t>(best_size), A(0)).data();
    }
    merged.stride = contiguous(merged.labels);
    contract_pair<A, T>(ops[bp], ops[bq], union_of(ops[bp], &ops[bq]), sizes, merged.stride, dst);
    if (boolean && !last) {  // keep "any product true" as 0/1 so later products cannot wrap to 0
      for (A& v : buffers.back()) v = v != 0;
    }
    merged.data = dst;
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
    if constexpr (std::is_same_v<T, A>) {
      contract_all<A, T>(std::move(ops), spec, sizes, false, reinterpret_cast<A*>(y.data), n_out);
    } else {
      std::vector<A> result(static_cast<size_t>(n_out));
      contract_all<A, T>(std::move(ops), spec, sizes, std::is_same_v<T, bool>, result.data(), n_out);
      T* out = y.ptr<T>();
      for (int64_t i = 0; i < n_out; ++i) {
        if constexpr (std::is_same_v<T, bool>) out[i] = result[i] != 0;
        else out[i] = static_cast<T>(result[i]);  // wraps as NumPy's narrow integer arithmetic
      }
    }
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
