// CUDA versions of the fused categorical TD target and cross-entropy (semantics as td_target.h).
// Compiled only when a CUDA toolkit is found (MTRL_WITH_CUDA); the header has no CUDA includes so
// the binding can include it either way. Pointers are device pointers; per-sample vectors and the
// target are float32, logits float32 or bfloat16 (accumulation is always float32). Kernels are
// enqueued on `stream` (a cudaStream_t) of `device` and never synchronise, so they can be captured
// in CUDA graphs; the number of non-finite rows is written to *nonfinite_count (the target op may
// pass nullptr when the count will not be read: then no memset node is enqueued).
#pragma once

#include <cstdint>

#include "kernels/td_target.h"

namespace mtrl {

enum class CudaDType : int { kFloat32 = 0, kBFloat16 = 1 };

struct TdTargetCudaArgs {
  const void* target_logits = nullptr;  // [E, B, K] of `dtype`
  CudaDType dtype = CudaDType::kFloat32;
  const float* reward = nullptr;    // [B]
  const float* mask = nullptr;      // [B]
  const float* discount = nullptr;  // [B] or nullptr (discount_value)
  float discount_value = 0.99f;
  const float* entropy = nullptr;  // [B] or nullptr
  int64_t num_members = 0, batch_size = 0, num_atoms = 0;
  float v_min = -10.0f, v_max = 10.0f;
  Combine combine = Combine::kMean;
  Projection projection = Projection::kC51;
  float sigma = 0.0f;
  float* target = nullptr;            // out [B, K]
  float* expected_value = nullptr;    // out [B]
  int32_t* nonfinite_count = nullptr; // out [1], or nullptr: not counted (no memset, no atomics)
  // Lanes per row of the kernel: 0 chooses (a warp for small batches and K > 256, else 8 for
  // K <= 128 and 16 for K <= 256); 8 or 16 force that group where K <= 16 * lanes, 32 a warp per
  // row. The same results up to float rounding of sums.
  int row_lanes = 0;
  int device = 0;
  void* stream = nullptr;  // cudaStream_t
};

struct CrossEntropyCudaArgs {
  const void* online_logits = nullptr;  // [E, B, K] of `dtype`
  CudaDType dtype = CudaDType::kFloat32;
  const float* target = nullptr;  // [B, K]
  const float* weight = nullptr;  // [B] or nullptr
  int64_t num_members = 0, batch_size = 0, num_atoms = 0;
  float* td_error = nullptr;          // out [B]
  void* grad = nullptr;               // out [E, B, K] of `dtype`, or nullptr
  float* loss = nullptr;              // out [1]
  int32_t* nonfinite_count = nullptr; // out [1]
  int device = 0;
  void* stream = nullptr;
};

// Enqueue the kernels; throw std::runtime_error with the CUDA error string on a launch failure.
void TdTargetCuda(const TdTargetCudaArgs& args);
void CrossEntropyCuda(const CrossEntropyCudaArgs& args);

}  // namespace mtrl
