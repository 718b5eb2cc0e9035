// CUDA fused categorical TD target and cross-entropy (see td_target_cuda.h; semantics td_target.h).
//
// TD target: one block handles R consecutive rows (R <= 32, as many as fit two [R, K] float tiles
// in 48 KB of shared memory). Phase 1, a warp per row: coalesced loads of each member's logits,
// warp-shuffle max/sum, softmax combined into P (mean, or the min-expected-value member). Phase 2,
// a thread per row: the C51 mass scatter, done serially per row so the result is deterministic
// (no float atomics) and streamed through registers for monotone bins as on the CPU. Phase 3, a
// warp per row: expected value and a coalesced store. HL-Gauss replaces phase 2 by a warp-parallel
// erf histogram. Cross-entropy: a warp per sample, all members; the gradient is written in the
// same pass; the loss is reduced by a second one-block kernel in a fixed order.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "kernels/td_target_cuda.h"

namespace mtrl {
namespace {

constexpr int kWarp = 32;
constexpr int kTargetThreads = 128;
constexpr int kLossThreads = 256;
constexpr int kSharedBytes = 48 * 1024;

__device__ __forceinline__ float Load(const float* p, int64_t i) { return __ldg(p + i); }
__device__ __forceinline__ float Load(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(p[i]);
}
__device__ __forceinline__ void Store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void Store(__nv_bfloat16* p, int64_t i, float v) {
  p[i] = __float2bfloat16(v);
}

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float WarpMax(float v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

struct TargetParams {
  const float* reward;
  const float* mask;
  const float* discount;
  float discount_value;
  const float* entropy;
  int64_t num_members, batch_size;
  int num_atoms, rows_per_block, row_stride;
  float v_min, v_max, dz, sigma;
  Combine combine;
  Projection projection;
  float* target;
  float* expected_value;
  int32_t* nonfinite_count;
};

// Mass p_j at fractional bin b_j = low_j + frac_j, split between low_j and low_j + 1 (spec §3.2).
// Non-decreasing bins (g >= 0): finished bins are stored once, from registers.
__device__ void ScatterRow(const float* p, float r, float g, float ent, const TargetParams& a,
                           float* y) {
  const int k = a.num_atoms;
  const float last = static_cast<float>(k - 1);
  int cur = -1;
  float lo = 0.0f, hi = 0.0f;
  for (int j = 0; j < k; ++j) {
    float zh = r + g * (a.v_min + static_cast<float>(j) * a.dz - ent);
    zh = fminf(fmaxf(zh, a.v_min), a.v_max);
    float b = (zh - a.v_min) / a.dz;
    b = b > 0.0f ? b : 0.0f;  // also maps NaN to 0
    b = b < last ? b : last;
    const int l = static_cast<int>(b);
    const float frac = b - static_cast<float>(l);
    const float m_lo = p[j] * (1.0f - frac), m_hi = p[j] * frac;
    if (g < 0.0f) {  // bins in any order: shared-memory read-modify-write
      y[l] += m_lo;
      y[l + 1 < k ? l + 1 : l] += m_hi;
      continue;
    }
    if (l != cur) {
      if (cur >= 0) {
        y[cur] = lo;
        if (l == cur + 1) {
          lo = hi;
        } else {
          if (cur + 1 < k) y[cur + 1] = hi;
          lo = 0.0f;
        }
      }
      hi = 0.0f;
      cur = l;
    }
    lo += m_lo;
    hi += m_hi;
  }
  if (g >= 0.0f && cur >= 0) {
    y[cur] = lo;
    if (cur + 1 < k) y[cur + 1] = hi;
  }
}

template <typename T>
__global__ void TdTargetKernel(const T* __restrict__ logits, TargetParams a) {
  extern __shared__ float smem[];
  const int rows = a.rows_per_block, stride = a.row_stride, k = a.num_atoms;
  float* tile_a = smem;                 // exp values, then the C51 target
  float* tile_p = smem + rows * stride; // combined distribution, then the HL-Gauss target
  int* bad = reinterpret_cast<int*>(smem + 2 * rows * stride);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int warps = blockDim.x / kWarp;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * rows;

  // Phase 1: a warp per row.
  for (int r = warp; r < rows; r += warps) {
    const int64_t b = row0 + r;
    if (b >= a.batch_size) continue;
    float* ex = tile_a + r * stride;
    float* p = tile_p + r * stride;
    bool ok = true;
    float best_value = 0.0f;
    for (int64_t e = 0; e < a.num_members; ++e) {
      const T* x = logits + (e * a.batch_size + b) * k;
      float m = -INFINITY;
      for (int j = lane; j < k; j += kWarp) {
        const float v = Load(x, j);
        ex[j] = v;
        m = fmaxf(m, v);
      }
      m = WarpMax(m);
      float s = 0.0f, zs = 0.0f;
      for (int j = lane; j < k; j += kWarp) {
        const float v = __expf(ex[j] - m);
        ex[j] = v;
        s += v;
        zs += v * (a.v_min + static_cast<float>(j) * a.dz);
      }
      s = WarpSum(s);
      ok = ok && isfinite(m) && isfinite(s);
      if (a.combine == Combine::kMean) {
        const float scale = 1.0f / (s * static_cast<float>(a.num_members));
        for (int j = lane; j < k; j += kWarp) p[j] = (e == 0 ? 0.0f : p[j]) + ex[j] * scale;
      } else {
        const float value = WarpSum(zs) / s;  // warp-uniform
        if (e == 0 || value < best_value) {
          best_value = value;
          const float scale = 1.0f / s;
          for (int j = lane; j < k; j += kWarp) p[j] = ex[j] * scale;
        }
      }
    }
    const float rew = a.reward[b];
    const float g = (a.discount != nullptr ? a.discount[b] : a.discount_value) * a.mask[b];
    const float ent = a.entropy != nullptr ? a.entropy[b] : 0.0f;
    ok = ok && isfinite(rew) && isfinite(g) && isfinite(ent);
    if (a.projection == Projection::kHlGauss) {
      float v = 0.0f;
      for (int j = lane; j < k; j += kWarp) v += p[j] * (a.v_min + static_cast<float>(j) * a.dz);
      v = WarpSum(v);
      const float t = fminf(fmaxf(rew + g * (v - ent), a.v_min), a.v_max);  // clamp first
      const float inv = 1.0f / (a.sigma * 1.41421356237f);
      for (int i = lane; i <= k; i += kWarp) {
        ex[i] = erff((a.v_min - 0.5f * a.dz + static_cast<float>(i) * a.dz - t) * inv);
      }
      __syncwarp();
      const float norm = 1.0f / (ex[k] - ex[0]);
      for (int i = lane; i < k; i += kWarp) p[i] = (ex[i + 1] - ex[i]) * norm;
    } else {
      for (int j = lane; j < k; j += kWarp) ex[j] = 0.0f;
    }
    if (lane == 0) bad[r] = ok ? 0 : 1;
  }
  __syncthreads();

  // Phase 2 (C51): a thread per row, deterministic serial scatter in shared memory.
  if (a.projection == Projection::kC51 && threadIdx.x < rows) {
    const int r = threadIdx.x;
    const int64_t b = row0 + r;
    if (b < a.batch_size && !bad[r]) {
      const float g = (a.discount != nullptr ? a.discount[b] : a.discount_value) * a.mask[b];
      const float ent = a.entropy != nullptr ? a.entropy[b] : 0.0f;
      ScatterRow(tile_p + r * stride, a.reward[b], g, ent, a, tile_a + r * stride);
    }
  }
  __syncthreads();

  // Phase 3: a warp per row, expected value and coalesced store.
  const float* result = a.projection == Projection::kC51 ? tile_a : tile_p;
  for (int r = warp; r < rows; r += warps) {
    const int64_t b = row0 + r;
    if (b >= a.batch_size) continue;
    float* out = a.target + b * k;
    if (bad[r]) {
      for (int j = lane; j < k; j += kWarp) out[j] = NAN;
      if (lane == 0) {
        a.expected_value[b] = NAN;
        atomicAdd(a.nonfinite_count, 1);
      }
      continue;
    }
    const float* y = result + r * stride;
    float v = 0.0f;
    for (int j = lane; j < k; j += kWarp) {
      out[j] = y[j];
      v += y[j] * (a.v_min + static_cast<float>(j) * a.dz);
    }
    v = WarpSum(v);
    if (lane == 0) a.expected_value[b] = v;
  }
}

struct LossParams {
  const float* target;
  const float* weight;
  int64_t num_members, batch_size;
  int num_atoms;
  float* td_error;
  int32_t* nonfinite_count;
};

// A warp per sample: CE of every member and, when grad != nullptr, the gradient in the same pass.
template <typename T>
__global__ void CrossEntropyKernel(const T* __restrict__ logits, T* __restrict__ grad,
                                   LossParams a) {
  const int lane = threadIdx.x % kWarp;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (b >= a.batch_size) return;
  const int k = a.num_atoms;
  const float* y = a.target + b * k;
  const float w = a.weight != nullptr ? a.weight[b] : 1.0f;
  float sum_y = 0.0f;
  for (int j = lane; j < k; j += kWarp) sum_y += __ldg(y + j);
  sum_y = WarpSum(sum_y);
  const float coef = w / static_cast<float>(a.batch_size);
  bool ok = isfinite(w) && isfinite(sum_y);
  float td = 0.0f;
  for (int64_t e = 0; e < a.num_members; ++e) {
    const int64_t row = (e * a.batch_size + b) * k;
    float m = -INFINITY;
    for (int j = lane; j < k; j += kWarp) m = fmaxf(m, Load(logits + row, j));
    m = WarpMax(m);
    float s = 0.0f, yx = 0.0f;
    for (int j = lane; j < k; j += kWarp) {
      const float x = Load(logits + row, j);
      s += __expf(x - m);
      yx += __ldg(y + j) * x;
    }
    s = WarpSum(s);
    yx = WarpSum(yx);
    const float ce = (m + __logf(s)) * sum_y - yx;  // -sum_j y_j log softmax_j
    ok = ok && isfinite(m) && isfinite(s) && isfinite(ce);
    td += ce;
    if (grad != nullptr) {
      const float scale = sum_y / s * coef;
      for (int j = lane; j < k; j += kWarp) {
        Store(grad + row, j, __expf(Load(logits + row, j) - m) * scale - __ldg(y + j) * coef);
      }
    }
  }
  if (lane == 0) {
    a.td_error[b] = ok ? td : NAN;
    if (!ok) atomicAdd(a.nonfinite_count, 1);
  }
}

// loss = sum_b weight_b * td_error_b / B, one block, fixed reduction order (deterministic).
__global__ void LossReduceKernel(const float* td_error, const float* weight, int64_t batch,
                                 float* loss) {
  __shared__ double partial[1024];
  double acc = 0.0;
  for (int64_t b = threadIdx.x; b < batch; b += blockDim.x) {
    acc += static_cast<double>(td_error[b]) * (weight != nullptr ? weight[b] : 1.0f);
  }
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int n = blockDim.x / 2; n > 0; n /= 2) {
    if (threadIdx.x < n) partial[threadIdx.x] += partial[threadIdx.x + n];
    __syncthreads();
  }
  if (threadIdx.x == 0) *loss = static_cast<float>(partial[0] / static_cast<double>(batch));
}

void Check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear a non-sticky error so later calls are not blamed for it
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
  }
}

// Makes `device` current for the launch and restores the caller's device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    Check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) Check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

}  // namespace

void TdTargetCuda(const TdTargetCudaArgs& args) {
  DeviceGuard guard(args.device);
  auto stream = static_cast<cudaStream_t>(args.stream);
  TargetParams p;
  p.reward = args.reward;
  p.mask = args.mask;
  p.discount = args.discount;
  p.discount_value = args.discount_value;
  p.entropy = args.entropy;
  p.num_members = args.num_members;
  p.batch_size = args.batch_size;
  p.num_atoms = static_cast<int>(args.num_atoms);
  p.row_stride = (p.num_atoms + 1) | 1;  // odd: thread-per-row accesses avoid bank conflicts
  const int per_row = 2 * p.row_stride * static_cast<int>(sizeof(float)) + static_cast<int>(sizeof(int));
  p.rows_per_block = kSharedBytes / per_row < kWarp ? kSharedBytes / per_row : kWarp;
  p.v_min = args.v_min;
  p.v_max = args.v_max;
  p.dz = (args.v_max - args.v_min) / static_cast<float>(args.num_atoms - 1);
  p.sigma = args.sigma;
  p.combine = args.combine;
  p.projection = args.projection;
  p.target = args.target;
  p.expected_value = args.expected_value;
  p.nonfinite_count = args.nonfinite_count;
  Check(cudaMemsetAsync(args.nonfinite_count, 0, sizeof(int32_t), stream), "cudaMemsetAsync");
  const int64_t blocks = (args.batch_size + p.rows_per_block - 1) / p.rows_per_block;
  const size_t shared = static_cast<size_t>(per_row) * p.rows_per_block;
  if (args.dtype == CudaDType::kBFloat16) {
    TdTargetKernel<__nv_bfloat16><<<static_cast<unsigned>(blocks), kTargetThreads, shared, stream>>>(
        static_cast<const __nv_bfloat16*>(args.target_logits), p);
  } else {
    TdTargetKernel<float><<<static_cast<unsigned>(blocks), kTargetThreads, shared, stream>>>(
        static_cast<const float*>(args.target_logits), p);
  }
  Check(cudaGetLastError(), "TdTargetKernel launch");
}

void CrossEntropyCuda(const CrossEntropyCudaArgs& args) {
  DeviceGuard guard(args.device);
  auto stream = static_cast<cudaStream_t>(args.stream);
  LossParams p{args.target, args.weight, args.num_members, args.batch_size,
               static_cast<int>(args.num_atoms), args.td_error, args.nonfinite_count};
  Check(cudaMemsetAsync(args.nonfinite_count, 0, sizeof(int32_t), stream), "cudaMemsetAsync");
  const int rows_per_block = kLossThreads / kWarp;
  const auto blocks = static_cast<unsigned>((args.batch_size + rows_per_block - 1) / rows_per_block);
  if (args.dtype == CudaDType::kBFloat16) {
    CrossEntropyKernel<__nv_bfloat16><<<blocks, kLossThreads, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(args.online_logits),
        static_cast<__nv_bfloat16*>(args.grad), p);
  } else {
    CrossEntropyKernel<float><<<blocks, kLossThreads, 0, stream>>>(
        static_cast<const float*>(args.online_logits), static_cast<float*>(args.grad), p);
  }
  Check(cudaGetLastError(), "CrossEntropyKernel launch");
  LossReduceKernel<<<1, 1024, 0, stream>>>(args.td_error, args.weight, args.batch_size, args.loss);
  Check(cudaGetLastError(), "LossReduceKernel launch");
}

}  // namespace mtrl
