// Minimal .npy (NumPy format 1.0, C order, little-endian) streaming writer and reader, so the
// replay buffer saves arrays that `numpy.load` reads, without going through Python.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace mtrl {

// Writes header then exactly prod(shape) * itemsize bytes through Write(); Close() checks the
// count. Throws std::runtime_error on I/O errors.
class NpyWriter {
 public:
  NpyWriter(const std::string& path, const std::string& descr, const std::vector<int64_t>& shape);
  ~NpyWriter();
  NpyWriter(const NpyWriter&) = delete;
  NpyWriter& operator=(const NpyWriter&) = delete;
  void Write(const void* data, size_t nbytes);
  void Close();

 private:
  std::string path_;
  FILE* file_ = nullptr;
  size_t expected_ = 0;
  size_t written_ = 0;
};

// Opens a .npy file and checks its dtype, shape and data length. A wrong dtype or shape, or data
// shorter (truncated) or longer than the shape says, throws std::invalid_argument naming the
// file, and so does a missing file; an unreadable one throws std::runtime_error.
// If `shape` has a -1 entry that dimension is accepted as is (see shape()).
class NpyReader {
 public:
  NpyReader(const std::string& path, const std::string& descr, std::vector<int64_t> shape);
  ~NpyReader();
  NpyReader(const NpyReader&) = delete;
  NpyReader& operator=(const NpyReader&) = delete;
  const std::vector<int64_t>& shape() const { return shape_; }
  void Read(void* data, size_t nbytes);

 private:
  std::string path_;
  FILE* file_ = nullptr;
  std::vector<int64_t> shape_;
};

std::string ShapeString(const std::vector<int64_t>& shape);

}  // namespace mtrl
