#include "replay/npy_io.h"

#include <cerrno>
#include <cstring>
#include <sys/types.h>
#include <stdexcept>

namespace mtrl {
namespace {

size_t ItemSize(const std::string& descr) {
  if (descr == "|b1" || descr == "|u1") return 1;
  if (descr == "<i4" || descr == "<f4") return 4;
  if (descr == "<i8" || descr == "<f8" || descr == "<u8") return 8;
  throw std::logic_error("npy_io: unsupported descr " + descr);
}

size_t Count(const std::vector<int64_t>& shape) {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

// Value of `'key': <value>` in the header dict, up to the next top-level ',' or '}'.
std::string HeaderField(const std::string& header, const std::string& key) {
  const std::string pattern = "'" + key + "':";
  const size_t at = header.find(pattern);
  if (at == std::string::npos) return "";
  size_t i = at + pattern.size();
  int depth = 0;
  std::string value;
  for (; i < header.size(); ++i) {
    const char c = header[i];
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if (depth == 0 && (c == ',' || c == '}')) break;
    if (c != ' ' && c != '\'') value += c;
  }
  return value;
}

}  // namespace

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    s += std::to_string(shape[i]);
    if (i + 1 < shape.size() || shape.size() == 1) s += ", ";
  }
  if (shape.size() == 1) s.pop_back();
  return s + ")";
}

NpyWriter::NpyWriter(const std::string& path, const std::string& descr,
                     const std::vector<int64_t>& shape)
    : path_(path), expected_(Count(shape) * ItemSize(descr)) {
  file_ = std::fopen(path.c_str(), "wb");
  if (file_ == nullptr) {
    throw std::runtime_error("cannot write " + path + ": " + std::strerror(errno));
  }
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " +
                     ShapeString(shape) + ", }";
  // Pad so that magic(6) + version(2) + length(2) + header is a multiple of 64, '\n'-ended.
  const size_t unpadded = 10 + dict.size() + 1;
  dict.append((64 - unpadded % 64) % 64, ' ');
  dict += '\n';
  const uint16_t len = static_cast<uint16_t>(dict.size());
  const unsigned char preamble[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                                      static_cast<unsigned char>(len & 0xff),
                                      static_cast<unsigned char>(len >> 8)};
  if (std::fwrite(preamble, 1, 10, file_) != 10 ||
      std::fwrite(dict.data(), 1, dict.size(), file_) != dict.size()) {
    throw std::runtime_error("cannot write " + path + ": " + std::strerror(errno));
  }
}

NpyWriter::~NpyWriter() {
  if (file_ != nullptr) std::fclose(file_);
}

void NpyWriter::Write(const void* data, size_t nbytes) {
  if (nbytes == 0) return;
  if (std::fwrite(data, 1, nbytes, file_) != nbytes) {
    throw std::runtime_error("cannot write " + path_ + ": " + std::strerror(errno));
  }
  written_ += nbytes;
}

void NpyWriter::Close() {
  if (written_ != expected_) {
    throw std::logic_error("npy_io: wrote " + std::to_string(written_) + " bytes to " + path_ +
                           ", expected " + std::to_string(expected_));
  }
  const int rc = std::fclose(file_);
  file_ = nullptr;
  if (rc != 0) throw std::runtime_error("cannot write " + path_ + ": " + std::strerror(errno));
}

NpyReader::NpyReader(const std::string& path, const std::string& descr,
                     std::vector<int64_t> shape)
    : path_(path) {
  file_ = std::fopen(path.c_str(), "rb");
  if (file_ == nullptr) {
    const int err = errno;
    if (err == ENOENT) throw std::invalid_argument(path + " is missing");
    throw std::runtime_error("cannot read " + path + ": " + std::strerror(err));
  }
  unsigned char pre[8];
  if (std::fread(pre, 1, 8, file_) != 8 || std::memcmp(pre, "\x93NUMPY", 6) != 0) {
    throw std::invalid_argument(path + " is not a .npy file");
  }
  size_t header_len = 0;
  unsigned char len_bytes[4] = {0, 0, 0, 0};
  const size_t len_size = pre[6] == 1 ? 2 : 4;
  if (std::fread(len_bytes, 1, len_size, file_) != len_size) {
    throw std::invalid_argument(path + " has a truncated header");
  }
  for (size_t i = 0; i < len_size; ++i) header_len |= static_cast<size_t>(len_bytes[i]) << (8 * i);
  if (header_len > (1u << 20)) throw std::invalid_argument(path + " has a corrupt header");
  std::string header(header_len, '\0');
  if (std::fread(header.data(), 1, header_len, file_) != header_len) {
    throw std::invalid_argument(path + " has a truncated header");
  }
  const std::string got_descr = HeaderField(header, "descr");
  if (got_descr != descr) {
    throw std::invalid_argument(path + " has dtype '" + got_descr + "', expected '" + descr + "'");
  }
  if (HeaderField(header, "fortran_order") != "False") {
    throw std::invalid_argument(path + " is in Fortran order, expected C order");
  }
  std::string shape_text = HeaderField(header, "shape");
  std::vector<int64_t> got;
  for (size_t i = 0; i < shape_text.size();) {
    if (shape_text[i] >= '0' && shape_text[i] <= '9') {
      size_t end = i;
      while (end < shape_text.size() && shape_text[end] >= '0' && shape_text[end] <= '9') ++end;
      got.push_back(std::stoll(shape_text.substr(i, end - i)));
      i = end;
    } else {
      ++i;
    }
  }
  bool ok = got.size() == shape.size();
  for (size_t i = 0; ok && i < shape.size(); ++i) {
    if (shape[i] == -1) shape[i] = got[i];
    ok = got[i] == shape[i];
  }
  if (!ok) {
    throw std::invalid_argument(path + " has shape " + ShapeString(got) + ", expected " +
                                ShapeString(shape));
  }
  shape_ = shape;
  // The data must be exactly what the header's shape says: fewer bytes is a truncated file,
  // more is not a file NpyWriter wrote (checked here, before any caller allocates or reads).
  const off_t data_start = ftello(file_);
  if (data_start < 0 || fseeko(file_, 0, SEEK_END) != 0) {
    throw std::runtime_error("cannot read " + path + ": " + std::strerror(errno));
  }
  const off_t file_end = ftello(file_);
  if (file_end < 0 || fseeko(file_, data_start, SEEK_SET) != 0) {
    throw std::runtime_error("cannot read " + path + ": " + std::strerror(errno));
  }
  const uint64_t have = static_cast<uint64_t>(file_end - data_start);
  const uint64_t need = static_cast<uint64_t>(Count(shape)) * ItemSize(descr);
  if (have < need) {
    throw std::invalid_argument(path + " is truncated: " + std::to_string(have) +
                                " bytes of data, its shape " + ShapeString(shape) + " needs " +
                                std::to_string(need));
  }
  if (have > need) {
    throw std::invalid_argument(path + " has " + std::to_string(have) + " bytes of data, but its "
                                "shape " + ShapeString(shape) + " needs " + std::to_string(need) +
                                " (trailing bytes)");
  }
}

NpyReader::~NpyReader() {
  if (file_ != nullptr) std::fclose(file_);
}

void NpyReader::Read(void* data, size_t nbytes) {
  if (nbytes == 0) return;
  if (std::fread(data, 1, nbytes, file_) != nbytes) {
    throw std::invalid_argument(path_ + " is truncated");
  }
}

}  // namespace mtrl
