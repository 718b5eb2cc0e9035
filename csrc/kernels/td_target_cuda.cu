// CUDA fused categorical TD target and cross-entropy (see td_target_cuda.h; semantics td_target.h).
//
// TD target: each row is owned, start to finish, by one group of G lanes of a warp: for large
// batches G = 8 for K <= 128 (BRC's 101 atoms: 13 per lane, four rows per warp) and 16 for
// K <= 256; the whole warp (G = 32) above, and for batches of at most 24 rows per multiprocessor.
// Small groups keep a row's atoms in a lane's registers (13 independent loads in flight per member
// instead of 4), fill 104 of their slots instead of 128 at K = 101, and share every per-row step
// (the reductions, 3 shuffle levels instead of 5, and the projection's plan) among four rows per
// instruction: fewer instructions per row, but a longer chain per warp, which small batches (too
// few rows to fill the GPU) wait for. The warp stays converged: its rows may need different
// projections, so no row-dependent branch holds a shuffle (RowLanes).
// Per row: softmax of each member (for K <= 16 G with the row in registers, KPL logits per lane;
// above that through shared memory with 4 loads in flight per lane), combined (mean, or the
// min-expected-value member) into the row p (in registers, or in shared memory); then the C51
// projection, deterministic and without atomics, by one of two group-parallel paths:
//  - direct, for shift rows (g = discount * mask > 0 and close to 1, as BRC's 0.99 with mask 1):
//    the bins are affine in the atom index, b_j = c + g j, so with one integer d per row every
//    unclipped atom j lands on bins j + d - 1, j + d, j + d + 1 only. A row in registers gives each
//    atom's three shares once and bin i takes the sum C_{i-d} of the shares that land on it
//    (ProjectC51Shifted); a row in shared memory gathers bin i from the three atoms i - d - 1,
//    i - d, i - d + 1 with the hat weights max(0, 1 - |b_j - i|) (ProjectC51Direct). The masses
//    of the atoms clipped at v_min / v_max (group sums) go to bins 0 / K - 1. No scans, no
//    division per atom, the same cost whatever the clipping. For
//    K >= 16 the same rows take this path as take the CPU kernel's ProjectC51Shift
//    (td_target_cpu_impl.h, PlanShift; the CPU declines K < 16 for its vector width, the GPU does
//    not). Terminal rows (g = 0, mask 0) take it too, as rows whose atoms are all clipped: their
//    total goes to the two bins around clip(r);
//  - scan (every other g >= 0: discounts far from 1): the bins low_j are non-decreasing in
//    j, so G source atoms at a time a segmented group scan sums each run of atoms sharing a bin
//    and one lane adds it. It runs for a whole warp when any of its rows needs it.
// HL-Gauss is a group-parallel erf histogram. Cross-entropy: a warp per sample, all members, with
// the sample's target and logits held in registers for K <= 256; the gradient is written in the
// same pass, and the loss is reduced by a second one-block kernel in a fixed order.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "kernels/td_target_cuda.h"
#include "kernels/td_target_cuda_kernels.cuh"

namespace mtrl {
namespace {

struct LossParams {
  const float* target;
  const float* weight;
  int64_t num_members, batch_size;
  int num_atoms;
  float* td_error;
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
  if (lane == 0) a.td_error[b] = ok ? td : NAN;  // counted by LossReduceKernel
}

// The same for K <= 32 * KPL, with the sample's target and each member's logits held in registers:
// every input is read from global memory once (the generic kernel above reads logits three times).
template <typename T, int KPL>
__global__ void CrossEntropyRegKernel(const T* __restrict__ logits, T* __restrict__ grad,
                                      LossParams a) {
  const int lane = threadIdx.x % kWarp;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (b >= a.batch_size) return;
  const int k = a.num_atoms;
  const float* y = a.target + b * k;
  float yv[KPL];
  float sum_y = 0.0f;
#pragma unroll
  for (int u = 0; u < KPL; ++u) {
    const int j = u * kWarp + lane;
    yv[u] = j < k ? __ldg(y + j) : 0.0f;
    sum_y += yv[u];
  }
  sum_y = WarpSum(sum_y);
  const float w = a.weight != nullptr ? a.weight[b] : 1.0f;
  const float coef = w / static_cast<float>(a.batch_size);
  bool ok = isfinite(w) && isfinite(sum_y);
  float td = 0.0f;
  for (int64_t e = 0; e < a.num_members; ++e) {
    const int64_t row = (e * a.batch_size + b) * k;
    float xv[KPL];
    float m = -INFINITY;
#pragma unroll
    for (int u = 0; u < KPL; ++u) {
      const int j = u * kWarp + lane;
      xv[u] = j < k ? Load(logits + row, j) : -INFINITY;
      m = fmaxf(m, xv[u]);
    }
    m = WarpMax(m);
    float s = 0.0f, yx = 0.0f;
#pragma unroll
    for (int u = 0; u < KPL; ++u) {
      if (u * kWarp + lane < k) {
        yx += yv[u] * xv[u];
        xv[u] = __expf(xv[u] - m);
        s += xv[u];
      }
    }
    s = WarpSum(s);
    yx = WarpSum(yx);
    const float ce = (m + __logf(s)) * sum_y - yx;  // -sum_j y_j log softmax_j
    ok = ok && isfinite(m) && isfinite(s) && isfinite(ce);
    td += ce;
    if (grad != nullptr) {
      const float scale = sum_y / s * coef;
#pragma unroll
      for (int u = 0; u < KPL; ++u) {
        const int j = u * kWarp + lane;
        if (j < k) Store(grad + row, j, xv[u] * scale - yv[u] * coef);
      }
    }
  }
  if (lane == 0) a.td_error[b] = ok ? td : NAN;  // counted by LossReduceKernel
}

// loss = sum_b weight_b * td_error_b / B, one block, fixed reduction order (deterministic); also
// the number of non-finite rows (their td_error is NaN), so no counter needs zeroing beforehand.
// Each thread sums b = tid, tid + 1024, ... with kReduceLoads loads in flight (they hit L2 right
// after the loss kernel), then warp shuffles and one warp combine the partial sums: 2.6 us at
// B = 16384 on an H200, against 5.4 us for a shared-memory tree over one load at a time.
constexpr int kReduceThreads = 1024;
constexpr int kReduceLoads = 4;
static_assert(kReduceThreads / kWarp == kWarp, "one warp combines the per-warp sums");

__global__ void __launch_bounds__(kReduceThreads) LossReduceKernel(
    const float* td_error, const float* weight, int64_t batch, float* loss,
    int32_t* nonfinite_count) {
  __shared__ double partial[kReduceThreads / kWarp];
  __shared__ int bad[kReduceThreads / kWarp];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  double acc = 0.0;
  int nonfinite = 0;
  for (int64_t b0 = threadIdx.x; b0 < batch; b0 += kReduceLoads * kReduceThreads) {
    float td[kReduceLoads], w[kReduceLoads];
#pragma unroll
    for (int u = 0; u < kReduceLoads; ++u) {
      const int64_t b = b0 + u * kReduceThreads;
      td[u] = b < batch ? td_error[b] : 0.0f;
      w[u] = b < batch && weight != nullptr ? weight[b] : 1.0f;
    }
#pragma unroll
    for (int u = 0; u < kReduceLoads; ++u) {
      nonfinite += isfinite(td[u]) ? 0 : 1;
      acc += static_cast<double>(td[u]) * w[u];
    }
  }
  for (int o = kWarp / 2; o > 0; o /= 2) {
    acc += __shfl_xor_sync(0xffffffffu, acc, o);
    nonfinite += __shfl_xor_sync(0xffffffffu, nonfinite, o);
  }
  if (lane == 0) {
    partial[warp] = acc;
    bad[warp] = nonfinite;
  }
  __syncthreads();
  if (warp != 0) return;
  acc = partial[lane];
  nonfinite = bad[lane];
  for (int o = kWarp / 2; o > 0; o /= 2) {
    acc += __shfl_xor_sync(0xffffffffu, acc, o);
    nonfinite += __shfl_xor_sync(0xffffffffu, nonfinite, o);
  }
  if (lane == 0) {
    *loss = static_cast<float>(acc / static_cast<double>(batch));
    *nonfinite_count = nonfinite;
  }
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

// Launches TdTargetKernel<T, G, KPL> (DispatchTarget picks G and KPL) on `stream`.
template <typename T>
struct CudaTargetLauncher {
  const T* logits;
  const TargetLaunch& launch;
  cudaStream_t stream;

  template <int G, int KPL>
  void Run() const {
    if (launch.shared_bytes > static_cast<size_t>(kSharedBytes)) {  // large K: opt in
      Check(cudaFuncSetAttribute(TdTargetKernel<T, G, KPL>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(launch.shared_bytes)),
            "cudaFuncSetAttribute(TdTargetKernel)");
    }
    TdTargetKernel<T, G, KPL><<<static_cast<unsigned>(launch.blocks), launch.threads,
                                launch.shared_bytes, stream>>>(logits, launch.params);
  }
};

// Register-cached kernel for K <= 256 (BRC's 101 atoms: 4 per lane), the generic one above that.
template <typename T>
void LaunchCrossEntropy(const T* logits, T* grad, const LossParams& p, unsigned blocks,
                        cudaStream_t stream) {
  if (p.num_atoms <= 2 * kWarp) {
    CrossEntropyRegKernel<T, 2><<<blocks, kLossThreads, 0, stream>>>(logits, grad, p);
  } else if (p.num_atoms <= 4 * kWarp) {
    CrossEntropyRegKernel<T, 4><<<blocks, kLossThreads, 0, stream>>>(logits, grad, p);
  } else if (p.num_atoms <= 8 * kWarp) {
    CrossEntropyRegKernel<T, 8><<<blocks, kLossThreads, 0, stream>>>(logits, grad, p);
  } else {
    CrossEntropyKernel<T><<<blocks, kLossThreads, 0, stream>>>(logits, grad, p);
  }
}

}  // namespace

void TdTargetCuda(const TdTargetCudaArgs& args) {
  DeviceGuard guard(args.device);
  auto stream = static_cast<cudaStream_t>(args.stream);
  int multiprocessors = 0;
  Check(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, args.device),
        "cudaDeviceGetAttribute(MultiProcessorCount)");
  const TargetLaunch launch = PlanTargetLaunch(args, multiprocessors);
  if (args.nonfinite_count != nullptr) {  // no memset node when nobody reads the count
    Check(cudaMemsetAsync(args.nonfinite_count, 0, sizeof(int32_t), stream), "cudaMemsetAsync");
  }
  const int k = launch.params.num_atoms;
  if (args.dtype == CudaDType::kBFloat16) {
    DispatchTarget(launch.lanes, k, CudaTargetLauncher<__nv_bfloat16>{
        static_cast<const __nv_bfloat16*>(args.target_logits), launch, stream});
  } else {
    DispatchTarget(launch.lanes, k, CudaTargetLauncher<float>{
        static_cast<const float*>(args.target_logits), launch, stream});
  }
  Check(cudaGetLastError(), "TdTargetKernel launch");
}

void CrossEntropyCuda(const CrossEntropyCudaArgs& args) {
  DeviceGuard guard(args.device);
  auto stream = static_cast<cudaStream_t>(args.stream);
  LossParams p{args.target, args.weight, args.num_members, args.batch_size,
               static_cast<int>(args.num_atoms), args.td_error};
  const int rows_per_block = kLossThreads / kWarp;
  const auto blocks = static_cast<unsigned>((args.batch_size + rows_per_block - 1) / rows_per_block);
  if (args.dtype == CudaDType::kBFloat16) {
    LaunchCrossEntropy<__nv_bfloat16>(static_cast<const __nv_bfloat16*>(args.online_logits),
                                      static_cast<__nv_bfloat16*>(args.grad), p, blocks, stream);
  } else {
    LaunchCrossEntropy<float>(static_cast<const float*>(args.online_logits),
                              static_cast<float*>(args.grad), p, blocks, stream);
  }
  Check(cudaGetLastError(), "CrossEntropyKernel launch");
  LossReduceKernel<<<1, kReduceThreads, 0, stream>>>(args.td_error, args.weight, args.batch_size,
                                                     args.loss, args.nonfinite_count);
  Check(cudaGetLastError(), "LossReduceKernel launch");
}

}  // namespace mtrl
