// Storage for the observations that end an episode (or otherwise do not equal the next stored
// observation of the same env stream), so the replay buffer stores each other observation once.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace mtrl {

// A pool of obs_dim-float rows addressed by a stable row id, grown on demand in chunks of
// kChunkRows rows and never shrunk; freed rows are reused first. The buffer frees a row when
// the transition owning it is overwritten, so live rows <= live transitions: the pool never
// wraps and never hands out a row that is still referenced. Growth checks MemAvailable and
// throws OutOfMemoryError. Not thread-safe: the owning buffer locks.
class FinalObsPool {
 public:
  static constexpr int64_t kChunkRows = 1024;

  FinalObsPool() = default;
  explicit FinalObsPool(int64_t obs_dim) : obs_dim_(obs_dim) {}

  // Ensures at least n free rows (may allocate chunks). Call before a run of Allocate().
  void Reserve(int64_t n);
  // Pops a free row; Reserve() must have made one available.
  int64_t Allocate();
  void Free(int64_t row) { free_.push_back(row); }

  float* Row(int64_t row) { return chunks_[row / kChunkRows].get() + (row % kChunkRows) * obs_dim_; }
  const float* Row(int64_t row) const {
    return chunks_[row / kChunkRows].get() + (row % kChunkRows) * obs_dim_;
  }
  int64_t rows() const { return static_cast<int64_t>(chunks_.size()) * kChunkRows; }
  int64_t used() const { return rows() - static_cast<int64_t>(free_.size()); }
  uint64_t nbytes() const {
    return static_cast<uint64_t>(rows()) * obs_dim_ * sizeof(float) + free_.capacity() * 8;
  }
  static uint64_t ChunkBytes(int64_t obs_dim) {
    return static_cast<uint64_t>(kChunkRows) * obs_dim * sizeof(float) + kChunkRows * 8;
  }

  // (rows(),) 1 for a row in use, 0 for a free one.
  std::vector<uint8_t> InUse() const;

  // Restores a saved pool: `rows` rows (rounded up to whole chunks), contents copied by the
  // caller through Row(); rows with in_use[row] == 0 become free.
  void ResetForLoad(int64_t rows);
  void RebuildFreeList(const std::vector<uint8_t>& in_use);

 private:
  void AddChunk();

  int64_t obs_dim_ = 0;
  std::vector<std::unique_ptr<float[]>> chunks_;
  std::vector<int64_t> free_;  // a stack; lowest ids on top after a rebuild
};

}  // namespace mtrl
