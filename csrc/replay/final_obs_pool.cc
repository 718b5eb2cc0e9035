#include "replay/final_obs_pool.h"

#include "replay/memory.h"

namespace mtrl {

void FinalObsPool::AddChunk() {
  CheckFitsInMemory(ChunkBytes(obs_dim_), "growing the final-observation store");
  const int64_t first = rows();
  chunks_.emplace_back(new float[static_cast<size_t>(kChunkRows * obs_dim_)]());
  // Push in reverse so the lowest new id is handed out first.
  for (int64_t r = first + kChunkRows - 1; r >= first; --r) free_.push_back(r);
}

void FinalObsPool::Reserve(int64_t n) {
  while (static_cast<int64_t>(free_.size()) < n) AddChunk();
}

int64_t FinalObsPool::Allocate() {
  const int64_t row = free_.back();
  free_.pop_back();
  return row;
}

std::vector<uint8_t> FinalObsPool::InUse() const {
  std::vector<uint8_t> in_use(static_cast<size_t>(rows()), 1);
  for (int64_t r : free_) in_use[r] = 0;
  return in_use;
}

void FinalObsPool::ResetForLoad(int64_t rows) {
  chunks_.clear();
  free_.clear();
  const int64_t chunks = (rows + kChunkRows - 1) / kChunkRows;
  for (int64_t c = 0; c < chunks; ++c) {
    chunks_.emplace_back(new float[static_cast<size_t>(kChunkRows * obs_dim_)]());
  }
}

void FinalObsPool::RebuildFreeList(const std::vector<uint8_t>& in_use) {
  free_.clear();
  for (int64_t r = rows() - 1; r >= 0; --r) {
    if (r >= static_cast<int64_t>(in_use.size()) || !in_use[r]) free_.push_back(r);
  }
}

}  // namespace mtrl
