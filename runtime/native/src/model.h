// The decoded model: what the loader (model.cpp) builds from a verified `.castml` buffer and
// what the program builder (program.cpp) lowers to steps. Plain structs; tensor data stays in
// the memory-mapped file (`MappedFile`), never copied.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common.h"
#include "dims.h"

namespace castml {

// A read-only view of the model bytes: an mmap of a path, or an owned copy of a buffer.
class MappedFile {
 public:
  static std::shared_ptr<MappedFile> open(const std::string& path);
  static std::shared_ptr<MappedFile> copy_of(const void* data, size_t size);
  ~MappedFile();
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool mapped_ = false;
  std::vector<uint8_t> owned_;
};

enum AttrKind : int { kAttrInt = 1, kAttrFloat = 2, kAttrBool = 3, kAttrStr = 4, kAttrDType = 5,
                      kAttrInts = 6, kAttrFloats = 7, kAttrDims = 8, kAttrTensor = 9 };

struct Attr {
  AttrKind kind = kAttrInt;
  int64_t i = 0;
  double f = 0;
  std::string s;
  DType dtype = kInvalid;
  std::vector<int64_t> ints;
  std::vector<double> floats;
  std::vector<Dim> dims;
  int tensor = -1;  // index into Model::tensors
};

struct ValueDef {
  std::string name;
  DType dtype = kInvalid;
  std::vector<Dim> shape;
};

struct OpDef {
  std::string kind;
  std::vector<uint32_t> inputs, outputs, regions;
  std::map<std::string, Attr> attrs;
  std::string loc;
};

struct RegionDef {
  std::vector<uint32_t> inputs;
  std::vector<OpDef> ops;
  std::vector<uint32_t> outputs;
};

struct GraphDef {
  std::vector<ValueDef> values;
  std::vector<RegionDef> regions;
  std::string in_tree, out_tree;  // JSON, validated
  std::vector<std::string> arg_names, input_names, output_names;
  std::vector<std::pair<std::string, std::string>> metadata;
};

struct ConstTensor {
  DType dtype;
  Shape shape;
  const void* data;  // inside the mapped file
};

struct ModelDef {
  std::shared_ptr<MappedFile> file;
  uint32_t format_version = 0;
  std::string producer;
  std::vector<std::pair<std::string, GraphDef>> entries;  // in file order (sorted by name)
  std::vector<ConstTensor> tensors;
};

// The resource limits of runtime/limits.py (same fields, defaults, environment variables and
// messages). Process-wide: read from CASTML_MAX_<FIELD> on first use, replaced by set_limits
// (the Python backend pushes its own limits before every load and run).
struct Limits {
  uint64_t max_rank = 8;
  uint64_t max_ops = 1000000;
  uint64_t max_region_depth = 16;
  uint64_t max_file_bytes = uint64_t{256} << 30;
  uint64_t max_tensor_bytes = uint64_t{16} << 30;
  uint64_t max_intermediate_bytes = uint64_t{64} << 30;
  uint64_t max_loop_iterations = 100000000;
};

// The limits in force (a copy); throws castml::Error (kInputError) when a CASTML_MAX_* variable
// is malformed.
Limits current_limits();
void set_limits(const Limits& limits);
// Bumped by every set_limits, so callers can cache checks made under one set of limits.
uint64_t limits_generation();
// The hint every limit error ends with, as runtime.limits.how_to_raise:
// "raise it with runtime.limits.set_limits(max_rank=...) or CASTML_MAX_RANK".
std::string how_to_raise(const std::string& name);
// Throws castml::Error (kInputError) "<label>: <what> <bytes> bytes, more than max_tensor_bytes =
// <limit> (<hint>)", as runtime.limits._too_big; 2**64 bytes and more print as "over 2**64".
[[noreturn]] void fail_too_big(const std::string& label, const std::string& what, unsigned __int128 bytes);

// Verifies and decodes a buffer under the limits in force; throws castml::Error (kFormatError)
// naming the field.
ModelDef decode_model(std::shared_ptr<MappedFile> file);

// The printed form of an op for error messages: "%3: f32[batch,512] = matmul(%x, %2)  # model.py:4".
std::string op_label(const GraphDef& g, const OpDef& op);

}  // namespace castml
