// The CUDA TD target kernel (csrc/kernels/td_target_cuda_kernels.cuh) run on a CPU: the launch that
// TdTargetCuda would make (PlanTargetLaunch, DispatchTarget), its blocks one after another, each
// block's threads as std::threads (simt.h). Built and called by tests/test_td_target_cuda_emulated.py
// through ctypes: a check of the kernel's logic (layouts, paths, collectives) without a GPU. Float
// results differ from a GPU's in the last bits (exp2f for ex2.approx, the host's fma contraction).
#include <thread>
#include <vector>

#include "kernels/td_target_cuda_kernels.cuh"

namespace mtrl {
namespace {

// `extern __shared__ float smem[]` of the kernel: one block runs at a time.
alignas(16) float smem[kSharedBytes / sizeof(float)];

template <typename T>
struct EmulatedLauncher {
  const T* logits;
  const TargetLaunch& launch;

  template <int G, int KPL>
  void Run() const {
    const unsigned threads = launch.threads;
    for (int64_t block = 0; block < launch.blocks; ++block) {
      std::vector<simt::Warp> warps(threads / simt::kWarpSize);
      std::vector<std::thread> team;
      team.reserve(threads);
      for (unsigned t = 0; t < threads; ++t) {
        team.emplace_back([&, t] {
          threadIdx.x = t;
          blockIdx.x = static_cast<unsigned>(block);
          blockDim.x = threads;
          simt::this_warp = &warps[t / simt::kWarpSize];
          simt::this_lane = static_cast<int>(t % simt::kWarpSize);
          TdTargetKernel<T, G, KPL>(logits, launch.params);
        });
      }
      for (auto& thread : team) thread.join();
    }
  }
};

}  // namespace
}  // namespace mtrl

// Same arguments as the CUDA binding (_core._td_target_cuda), host pointers, plus the device's
// multiprocessor count for the layout choice. Returns the lanes per row used, or -1 when the
// block's shared memory would not fit the emulated 48 KB.
extern "C" int emulate_td_target(const void* logits, int dtype, int64_t num_members,
                                 int64_t batch_size, int64_t num_atoms, const float* reward,
                                 const float* mask, const float* discount, float discount_value,
                                 const float* entropy, float* target, float* expected_value,
                                 int32_t* nonfinite_count, float v_min, float v_max, int combine,
                                 int projection, float sigma, int row_lanes, int multiprocessors) {
  using namespace mtrl;
  TdTargetCudaArgs args;
  args.target_logits = logits;
  args.dtype = static_cast<CudaDType>(dtype);
  args.reward = reward;
  args.mask = mask;
  args.discount = discount;
  args.discount_value = discount_value;
  args.entropy = entropy;
  args.num_members = num_members;
  args.batch_size = batch_size;
  args.num_atoms = num_atoms;
  args.v_min = v_min;
  args.v_max = v_max;
  args.combine = static_cast<Combine>(combine);
  args.projection = static_cast<Projection>(projection);
  args.sigma = sigma;
  args.target = target;
  args.expected_value = expected_value;
  args.nonfinite_count = nonfinite_count;
  args.row_lanes = row_lanes;
  const TargetLaunch launch = PlanTargetLaunch(args, multiprocessors);
  if (launch.shared_bytes > sizeof(smem)) return -1;
  if (nonfinite_count != nullptr) *nonfinite_count = 0;
  const int k = static_cast<int>(num_atoms);
  if (args.dtype == CudaDType::kBFloat16) {
    DispatchTarget(launch.lanes, k,
                   EmulatedLauncher<__nv_bfloat16>{static_cast<const __nv_bfloat16*>(logits),
                                                   launch});
  } else {
    DispatchTarget(launch.lanes, k, EmulatedLauncher<float>{static_cast<const float*>(logits),
                                                            launch});
  }
  return launch.lanes;
}
