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
// Per row: softmax of each member (K <= 256 with the row in registers, KPL logits per lane;
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
// HL-Gauss is a group-parallel erf histogram.
// Two more layouts, a thread per row (TdTargetRowKernel) and two (TdTargetRowPairKernel; both
// K <= 128), are built but only taken when asked for (`row_lanes` 1 or 2): a block stages its
// rows' logits in shared memory with coalesced loads, and each thread then runs its row (or half
// of it) serially: no plan, no shuffles beyond a pair's; the C51 projection is one pass over the
// atoms in bin order, for any g. From their SASS loop bodies, a row at K = 101, E = 2 costs ~170
// (one thread) or ~190 (two) warp instructions, against ~500 in the 8-lane layout (2016 per warp
// of four rows), at an eighth (a quarter) of its warps; whether that is faster is for a GPU to say
// (benchmarks/gpu_td_target.py times them beside the others). Cross-entropy: a warp per sample, all members, with
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

// Launches the target kernel of layout G, KPL (DispatchTarget picks them) on `stream`.
template <typename T>
struct CudaTargetLauncher {
  const T* logits;
  const TargetLaunch& launch;
  cudaStream_t stream;

  template <int G, int KPL>
  void Run() const {
    TargetKernel<T, G, KPL>()<<<static_cast<unsigned>(launch.blocks), launch.threads,
                                launch.shared_bytes, stream>>>(logits, launch.params);
  }
};

// Launches the cross-entropy kernel that DispatchCrossEntropy picks on `stream`.
template <typename T>
struct CudaLossLauncher {
  const T* logits;
  T* grad;
  const LossParams& params;
  unsigned blocks;
  cudaStream_t stream;

  template <int KPL>
  void Run() const {
    if constexpr (KPL > 0) {
      CrossEntropyRegKernel<T, KPL><<<blocks, kLossThreads, 0, stream>>>(logits, grad, params);
    } else {
      CrossEntropyKernel<T><<<blocks, kLossThreads, 0, stream>>>(logits, grad, params);
    }
  }
};

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
  const unsigned blocks = LossBlocks(args.batch_size);
  const int k = p.num_atoms;
  if (args.dtype == CudaDType::kBFloat16) {
    DispatchCrossEntropy(k, CudaLossLauncher<__nv_bfloat16>{
        static_cast<const __nv_bfloat16*>(args.online_logits),
        static_cast<__nv_bfloat16*>(args.grad), p, blocks, stream});
  } else {
    DispatchCrossEntropy(k, CudaLossLauncher<float>{static_cast<const float*>(args.online_logits),
                                                    static_cast<float*>(args.grad), p, blocks,
                                                    stream});
  }
  Check(cudaGetLastError(), "CrossEntropyKernel launch");
  LossReduceKernel<<<1, kReduceThreads, 0, stream>>>(args.td_error, args.weight, args.batch_size,
                                                     args.loss, args.nonfinite_count);
  Check(cudaGetLastError(), "LossReduceKernel launch");
}

}  // namespace mtrl
