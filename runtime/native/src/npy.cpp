// .npy/.npz IO (see npy.h). The header is a Python dict literal; only the three keys NumPy
// writes are read, so a hand-edited header with other spacing still parses.
#include "npy.h"

#include <cstdio>
#include <fstream>
#include <sstream>

namespace castml {
namespace {

[[noreturn]] void bad(const std::string& path, const std::string& what) { fail(kInputError, path + ": " + what); }

struct Descr {
  const char* text;
  DType dtype;
};
const Descr kDescrs[] = {
    {"|b1", kBool},   {"|i1", kInt8},    {"<i2", kInt16},   {"<i4", kInt32},   {"<i8", kInt64},
    {"|u1", kUInt8},  {"<u2", kUInt16},  {"<u4", kUInt32},  {"<u8", kUInt64},  {"<f2", kFloat16},
    {"<f4", kFloat32}, {"<f8", kFloat64}, {"<i1", kInt8},    {"<u1", kUInt8},   {"<b1", kBool},
};

std::string descr_of(DType t) {
  for (const Descr& d : kDescrs)
    if (d.dtype == t) return d.text;
  return "";
}

// The value text after `'key':` in the header dict.
std::string header_value(const std::string& header, const std::string& key, const std::string& path) {
  size_t k = header.find("'" + key + "'");
  if (k == std::string::npos) bad(path, "the .npy header has no '" + key + "'");
  size_t colon = header.find(':', k);
  if (colon == std::string::npos) bad(path, "malformed .npy header");
  size_t start = header.find_first_not_of(' ', colon + 1);
  if (start == std::string::npos) bad(path, "malformed .npy header");
  if (header[start] == '(') return header.substr(start, header.find(')', start) - start + 1);
  size_t end = header.find_first_of(",}", start);
  return header.substr(start, end - start);
}

uint32_t crc32(const std::string& data) {
  static uint32_t table[256];
  static bool ready = [] {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
    return true;
  }();
  (void)ready;
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char ch : data) c = table[(c ^ ch) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

void put16(std::string& s, uint32_t v) {
  s += static_cast<char>(v & 0xFF);
  s += static_cast<char>((v >> 8) & 0xFF);
}

void put32(std::string& s, uint32_t v) {
  put16(s, v & 0xFFFF);
  put16(s, v >> 16);
}

}  // namespace

NpyArray read_npy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) bad(path, "cannot open");
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) bad(path, "not a .npy file");
  int major = static_cast<unsigned char>(bytes[6]);
  size_t hlen, hstart;
  if (major == 1) {
    hlen = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
    hstart = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) bad(path, "truncated .npy header");
    hlen = 0;
    for (int k = 3; k >= 0; --k) hlen = (hlen << 8) | static_cast<unsigned char>(bytes[8 + k]);
    hstart = 12;
  } else {
    bad(path, "unsupported .npy version " + std::to_string(major));
  }
  if (hstart + hlen > bytes.size()) bad(path, "truncated .npy header");
  std::string header = bytes.substr(hstart, hlen);
  NpyArray a;
  std::string descr = header_value(header, "descr", path);
  if (descr.size() >= 2) descr = descr.substr(1, descr.size() - 2);  // strip quotes
  for (const Descr& d : kDescrs)
    if (descr == d.text) a.dtype = d.dtype;
  if (a.dtype == kInvalid) bad(path, "unsupported dtype '" + descr + "' (little-endian numbers and bool only)");
  if (header_value(header, "fortran_order", path) != "False") bad(path, "Fortran-ordered arrays are not supported");
  std::string shape = header_value(header, "shape", path);
  std::stringstream ss(shape.substr(1, shape.size() - 2));
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t p = item.find_first_not_of(' ');
    if (p == std::string::npos) continue;
    try {
      long long d = std::stoll(item.substr(p));
      if (d < 0) bad(path, "negative dim in the shape");
      a.shape.push_back(d);
    } catch (const std::logic_error&) {
      bad(path, "malformed shape " + shape);
    }
  }
  if (a.shape.size() > 8) bad(path, "rank above 8");
  int64_t count = 1;
  for (int64_t d : a.shape)
    if (__builtin_mul_overflow(count, d, &count)) bad(path, "shape too large");
  size_t need = static_cast<size_t>(count) * dtype_size(a.dtype);
  if (bytes.size() - hstart - hlen < need) bad(path, "the data is shorter than the shape says");
  a.data.assign(bytes.begin() + static_cast<long>(hstart + hlen), bytes.begin() + static_cast<long>(hstart + hlen + need));
  return a;
}

std::string npy_bytes(const Tensor& t) {
  std::string shape = "(";
  for (size_t i = 0; i < t.shape.size(); ++i) shape += std::to_string(t.shape[i]) + (t.shape.size() == 1 ? "," : (i + 1 < t.shape.size() ? ", " : ""));
  shape += ")";
  std::string header = "{'descr': '" + descr_of(t.dtype) + "', 'fortran_order': False, 'shape': " + shape + ", }";
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::string out("\x93NUMPY\x01\x00", 8);
  put16(out, static_cast<uint32_t>(header.size()));
  out += header;
  out.append(static_cast<const char*>(t.data), t.nbytes());
  return out;
}

void write_npz(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& arrays) {
  std::string zip, central;
  uint16_t count = 0;
  for (const auto& [name, t] : arrays) {
    std::string file = name + ".npy";
    std::string body = npy_bytes(t);
    if (body.size() >= 0xFFFFFFFFu || zip.size() >= 0xFFFFFFFFu) fail(kInputError, path + ": output too large for a zip");
    uint32_t crc = crc32(body), offset = static_cast<uint32_t>(zip.size());
    std::string common;
    put16(common, 20);  // version needed
    put16(common, 0);   // flags
    put16(common, 0);   // stored
    put16(common, 0);   // time
    put16(common, 0x21);  // date 1980-01-01
    put32(common, crc);
    put32(common, static_cast<uint32_t>(body.size()));
    put32(common, static_cast<uint32_t>(body.size()));
    put16(common, static_cast<uint32_t>(file.size()));
    put16(common, 0);  // extra length
    put32(zip, 0x04034b50);
    zip += common + file + body;
    put32(central, 0x02014b50);
    put16(central, 20);  // version made by
    central += common;
    put16(central, 0);  // comment
    put16(central, 0);  // disk
    put16(central, 0);  // internal attributes
    put32(central, 0);  // external attributes
    put32(central, offset);
    central += file;
    ++count;
  }
  uint32_t cd_offset = static_cast<uint32_t>(zip.size());
  zip += central;
  put32(zip, 0x06054b50);
  put16(zip, 0);
  put16(zip, 0);
  put16(zip, count);
  put16(zip, count);
  put32(zip, static_cast<uint32_t>(central.size()));
  put32(zip, cd_offset);
  put16(zip, 0);
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) fail(kInputError, path + ": cannot write");
    f.write(zip.data(), static_cast<std::streamsize>(zip.size()));
    if (!f) fail(kInputError, path + ": write failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail(kInputError, path + ": cannot rename the temporary file");
}

}  // namespace castml
