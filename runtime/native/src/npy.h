// .npy reading and writing, and .npz (an uncompressed zip of .npy files) writing, for the
// castml-run executable: enough of NumPy's format (versions 1-3, little-endian, C order).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "common.h"

namespace castml {

struct NpyArray {
  DType dtype = kInvalid;
  Shape shape;
  std::vector<uint8_t> data;
};

// Throws castml::Error (kInputError) with the path and the reason.
NpyArray read_npy(const std::string& path);

// The bytes of a .npy file holding `t`.
std::string npy_bytes(const Tensor& t);

// Writes an uncompressed .npz holding (name, tensor) pairs ("name" becomes "name.npy").
void write_npz(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& arrays);

}  // namespace castml
