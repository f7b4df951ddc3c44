// Dtype tables and shape helpers shared by the loader, the kernels and the C API.
#include "common.h"

namespace castml {

namespace {
struct DTypeInfo {
  size_t size;
  const char* name;
  const char* short_name;
};
const DTypeInfo kInfo[] = {
    {0, "invalid", "?"},    {1, "bool", "i1"},      {1, "int8", "i8"},      {2, "int16", "i16"},
    {4, "int32", "i32"},    {8, "int64", "i64"},    {1, "uint8", "u8"},     {2, "uint16", "u16"},
    {4, "uint32", "u32"},   {8, "uint64", "u64"},   {2, "float16", "f16"},  {4, "float32", "f32"},
    {8, "float64", "f64"},
};
}  // namespace

bool dtype_valid(int code) { return code >= kBool && code <= kFloat64; }
size_t dtype_size(DType t) { return dtype_valid(t) ? kInfo[t].size : 0; }
const char* dtype_name(DType t) { return dtype_valid(t) ? kInfo[t].name : "invalid"; }
const char* dtype_short(DType t) { return dtype_valid(t) ? kInfo[t].short_name : "?"; }

std::string shape_str(const Shape& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + (s.size() == 1 ? ",)" : ")");
}

int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

}  // namespace castml
