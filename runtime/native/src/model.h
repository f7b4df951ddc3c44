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

// Verifies and decodes a buffer; throws castml::Error (kFormatError) naming the field.
ModelDef decode_model(std::shared_ptr<MappedFile> file);

// The printed form of an op for error messages: "%3: f32[batch,512] = matmul(%x, %2)  # model.py:4".
std::string op_label(const GraphDef& g, const OpDef& op);

}  // namespace castml
