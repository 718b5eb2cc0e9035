// The CUDA TD target and cross-entropy kernels (csrc/kernels/td_target_cuda_kernels.cuh) run on a
// CPU: the launches that TdTargetCuda and CrossEntropyCuda would make (PlanTargetLaunch,
// DispatchTarget, LossBlocks, DispatchCrossEntropy), their blocks one after another, each block's
// threads as std::threads (simt.h). Built and called by tests/test_td_target_cuda_emulated.py
// through ctypes: a check of the kernels' logic (layouts, paths, collectives) without a GPU. Float
// results differ from a GPU's in the last bits: exp2f and std::exp stand for the approximate
// ex2.approx and __expf, and nvcc contracts a * b + c into FMAs where this host build does not.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <iterator>
#include <limits>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

#include "kernels/td_target_cuda_kernels.cuh"

namespace mtrl {
namespace {

// Runs kernel() as `blocks` blocks of `threads` threads, one block at a time. A block that does not
// finish within a minute ends the process with a message: a collective that some lane of its warp
// never reaches (a shuffle in a branch the lanes take differently) leaves the others waiting
// forever, and a hang would stall the whole test run.
template <typename Kernel>
void RunBlocks(int64_t blocks, unsigned threads, const Kernel& kernel) {
  for (int64_t block = 0; block < blocks; ++block) {
    // Shared memory starts as NaN, as if a block before had left garbage: a read of a slot this
    // block never wrote shows in the outputs.
    std::fill(std::begin(simt::dynamic_shared_floats), std::end(simt::dynamic_shared_floats),
              std::numeric_limits<float>::quiet_NaN());
    std::vector<simt::Warp> warps(threads / simt::kWarpSize);
    std::barrier<> block_barrier(threads);
    std::atomic<unsigned> finished{0};
    std::mutex mutex;
    std::condition_variable all_finished;
    std::vector<std::thread> team;
    team.reserve(threads);
    for (unsigned t = 0; t < threads; ++t) {
      team.emplace_back([&, t] {
        threadIdx.x = t;
        blockIdx.x = static_cast<unsigned>(block);
        blockDim.x = threads;
        simt::this_warp = &warps[t / simt::kWarpSize];
        simt::this_lane = static_cast<int>(t % simt::kWarpSize);
        simt::this_block = &block_barrier;
        kernel();
        if (++finished == threads) {
          std::lock_guard<std::mutex> lock(mutex);
          all_finished.notify_one();
        }
      });
    }
    {
      std::unique_lock<std::mutex> lock(mutex);
      if (!all_finished.wait_for(lock, std::chrono::minutes(1),
                                 [&] { return finished == threads; })) {
        std::fprintf(stderr, "cuda emulation: block %lld still running after a minute (%u of %u "
                     "threads done): a collective that not every lane reaches?\n",
                     static_cast<long long>(block), finished.load(), threads);
        std::_Exit(3);
      }
    }
    for (auto& thread : team) thread.join();
  }
}

template <typename T>
struct EmulatedTargetLauncher {
  const T* logits;
  const TargetLaunch& launch;

  template <int G, int KPL>
  void Run() const {
    RunBlocks(launch.blocks, launch.threads,
              [&] { TargetKernel<T, G, KPL>()(logits, launch.params); });
  }
};

template <typename T>
struct EmulatedLossLauncher {
  const T* logits;
  T* grad;
  const LossParams& params;

  template <int KPL>
  void Run() const {
    RunBlocks(LossBlocks(params.batch_size), kLossThreads, [&] {
      if constexpr (KPL > 0) {
        CrossEntropyRegKernel<T, KPL>(logits, grad, params);
      } else {
        CrossEntropyKernel<T>(logits, grad, params);
      }
    });
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
  if (launch.shared_bytes > sizeof(simt::dynamic_shared_floats)) return -1;
  if (nonfinite_count != nullptr) *nonfinite_count = 0;
  const int k = static_cast<int>(num_atoms);
  if (args.dtype == CudaDType::kBFloat16) {
    DispatchTarget(launch.lanes, k, EmulatedTargetLauncher<__nv_bfloat16>{
        static_cast<const __nv_bfloat16*>(logits), launch});
  } else {
    DispatchTarget(launch.lanes, k,
                   EmulatedTargetLauncher<float>{static_cast<const float*>(logits), launch});
  }
  return launch.lanes;
}

// Same arguments as the CUDA binding (_core._cross_entropy_cuda), host pointers: the
// cross-entropy kernel, then the one-block loss reduction.
extern "C" void emulate_cross_entropy(const void* logits, int dtype, int64_t num_members,
                                      int64_t batch_size, int64_t num_atoms, const float* target,
                                      const float* weight, float* td_error, void* grad,
                                      float* loss, int32_t* nonfinite_count) {
  using namespace mtrl;
  const LossParams p{target, weight, num_members, batch_size, static_cast<int>(num_atoms),
                     td_error};
  const int k = static_cast<int>(num_atoms);
  if (dtype == static_cast<int>(CudaDType::kBFloat16)) {
    DispatchCrossEntropy(k, EmulatedLossLauncher<__nv_bfloat16>{
        static_cast<const __nv_bfloat16*>(logits), static_cast<__nv_bfloat16*>(grad), p});
  } else {
    DispatchCrossEntropy(k, EmulatedLossLauncher<float>{static_cast<const float*>(logits),
                                                        static_cast<float*>(grad), p});
  }
  RunBlocks(1, kReduceThreads, [&] {
    LossReduceKernel(td_error, weight, batch_size, loss, nonfinite_count);
  });
}

// LossReduceKernel alone (loss = sum_b weight_b td_error_b / B in double; the non-finite count).
extern "C" void emulate_loss_reduce(const float* td_error, const float* weight, int64_t batch_size,
                                    float* loss, int32_t* nonfinite_count) {
  using namespace mtrl;
  RunBlocks(1, kReduceThreads, [&] {
    LossReduceKernel(td_error, weight, batch_size, loss, nonfinite_count);
  });
}

#ifdef MTRL_EMULATION_RACE_CHECK
// A program for ThreadSanitizer (tests/test_td_target_cuda_emulated.py builds it with
// -fsanitize=thread): every kernel on every path, small batches. A race between lanes on shared
// memory (a missing __syncwarp / __syncthreads) is reported; an ordering a GPU gets only from
// __syncwarp but the emulation also gets from its shuffle barriers is not (see simt.h).
#include <cmath>

int main() {
  uint32_t state = 12345;
  auto uniform = [&state] {  // in [0, 1)
    state = state * 1664525u + 1013904223u;
    return static_cast<float>(state >> 8) / 16777216.0f;
  };
  const float discounts[] = {0.99f, 1.0f, 0.9f, 0.5f, 0.0f, -0.5f};
  const int64_t b = 24;
  for (int64_t k : {64, 300}) {  // rows in registers (filling 8 or 32 lanes exactly), in shared
    std::vector<float> logits(2 * b * k), reward(b), mask(b), discount(b), entropy(b);
    for (float& x : logits) x = 6.0f * uniform() - 3.0f;
    for (int64_t i = 0; i < b; ++i) {
      reward[i] = 40.0f * uniform() - 20.0f;
      mask[i] = uniform() > 0.3f ? 1.0f : 0.0f;
      discount[i] = discounts[i % 6];
      entropy[i] = uniform() - 0.5f;
    }
    std::vector<float> target(b * k), value(b), td(b), grad(2 * b * k), loss(1);
    int32_t bad = 0;
    for (int lanes : {1, 2, 8, 32}) {
      for (int projection : {0, 1}) {
        emulate_td_target(logits.data(), 0, 2, b, k, reward.data(), mask.data(), discount.data(),
                          0.0f, entropy.data(), target.data(), value.data(), &bad, -10.0f, 10.0f,
                          0, projection, 0.2f, lanes, 1);
      }
    }
    emulate_cross_entropy(logits.data(), 0, 2, b, k, target.data(), nullptr, td.data(),
                          grad.data(), loss.data(), &bad);
    if (!std::isfinite(loss[0])) return 2;
  }
  return 0;
}
#endif
