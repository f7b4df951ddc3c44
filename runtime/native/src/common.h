// Shared vocabulary of the native runtime: dtypes, shapes, tensors and the one error type.
//
// Why one exception type with a category: every failure inside the library (a malformed file,
// an op this runtime lacks, a bad input, a kernel error) becomes a `castml::Error`; the C API
// catches it at the boundary and turns it into an error code plus message, so no C++
// exception ever crosses into C or Python.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace castml {

// Same codes as the DType enum of castml.fbs (and the C API).
enum DType : int {
  kInvalid = 0, kBool = 1, kInt8 = 2, kInt16 = 3, kInt32 = 4, kInt64 = 5, kUInt8 = 6, kUInt16 = 7,
  kUInt32 = 8, kUInt64 = 9, kFloat16 = 10, kFloat32 = 11, kFloat64 = 12,
};

// Same codes as castml.h's CASTML_ERR_*.
enum ErrorKind : int {
  kFormatError = 1,       // the file is malformed (ModelFormatError)
  kUnsupportedError = 2,  // a valid file using an op or dtype this runtime has no kernel for
  kInputError = 3,        // wrong inputs at run (RuntimeInputError)
  kKernelError = 4,       // a kernel failed while running (KernelError)
  kIOError = 5,           // the file could not be opened or mapped
};

struct Error {
  ErrorKind kind;
  std::string message;
};

[[noreturn]] inline void fail(ErrorKind kind, const std::string& message) { throw Error{kind, message}; }

bool dtype_valid(int code);
size_t dtype_size(DType t);
const char* dtype_name(DType t);  // NumPy's name: "float32", "bool", ...
const char* dtype_short(DType t);  // the IR's: "f32", "i1", ...
inline bool is_float(DType t) { return t == kFloat16 || t == kFloat32 || t == kFloat64; }
inline bool is_signed_int(DType t) { return t >= kInt8 && t <= kInt64; }
inline bool is_unsigned_int(DType t) { return t >= kUInt8 && t <= kUInt64; }
inline bool is_int(DType t) { return is_signed_int(t) || is_unsigned_int(t); }

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& s);  // "(2, 3)" as NumPy prints it
int64_t numel(const Shape& s);

// A tensor as kernels see it: dtype, shape and C-contiguous data it does not own.
struct Tensor {
  DType dtype = kInvalid;
  Shape shape;
  void* data = nullptr;

  int64_t size() const { return numel(shape); }
  int rank() const { return static_cast<int>(shape.size()); }
  size_t nbytes() const { return static_cast<size_t>(size()) * dtype_size(dtype); }
  template <class T> T* ptr() const { return static_cast<T*>(data); }
};

// Calls `f(T{})` with the C++ type of `t` (float16 and invalid dtypes are refused).
#define CASTML_DISPATCH_CASE(code, type) \
  case code: return f(type{});
template <class F>
auto dispatch_all(DType t, F&& f) {
  switch (t) {
    CASTML_DISPATCH_CASE(kBool, bool)
    CASTML_DISPATCH_CASE(kInt8, int8_t)
    CASTML_DISPATCH_CASE(kInt16, int16_t)
    CASTML_DISPATCH_CASE(kInt32, int32_t)
    CASTML_DISPATCH_CASE(kInt64, int64_t)
    CASTML_DISPATCH_CASE(kUInt8, uint8_t)
    CASTML_DISPATCH_CASE(kUInt16, uint16_t)
    CASTML_DISPATCH_CASE(kUInt32, uint32_t)
    CASTML_DISPATCH_CASE(kUInt64, uint64_t)
    CASTML_DISPATCH_CASE(kFloat32, float)
    CASTML_DISPATCH_CASE(kFloat64, double)
    default: fail(kUnsupportedError, std::string("no native kernel for dtype ") + dtype_name(t));
  }
}

template <class F>
auto dispatch_float(DType t, F&& f) {
  switch (t) {
    CASTML_DISPATCH_CASE(kFloat32, float)
    CASTML_DISPATCH_CASE(kFloat64, double)
    default: fail(kUnsupportedError, std::string("expected float32 or float64, got ") + dtype_name(t));
  }
}

// Integers and bool: bitwise operations.
template <class F>
auto dispatch_integer(DType t, F&& f) {
  switch (t) {
    CASTML_DISPATCH_CASE(kBool, bool)
    CASTML_DISPATCH_CASE(kInt8, int8_t)
    CASTML_DISPATCH_CASE(kInt16, int16_t)
    CASTML_DISPATCH_CASE(kInt32, int32_t)
    CASTML_DISPATCH_CASE(kInt64, int64_t)
    CASTML_DISPATCH_CASE(kUInt8, uint8_t)
    CASTML_DISPATCH_CASE(kUInt16, uint16_t)
    CASTML_DISPATCH_CASE(kUInt32, uint32_t)
    CASTML_DISPATCH_CASE(kUInt64, uint64_t)
    default: fail(kUnsupportedError, std::string("expected an integer or bool dtype, got ") + dtype_name(t));
  }
}

// Numbers only (no bool): arithmetic that NumPy refuses or redefines for bool.
template <class F>
auto dispatch_number(DType t, F&& f) {
  if (t == kBool) fail(kUnsupportedError, "no native kernel for bool arithmetic");
  return dispatch_all(t, f);
}
#undef CASTML_DISPATCH_CASE

}  // namespace castml
