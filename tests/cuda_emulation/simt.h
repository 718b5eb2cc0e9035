// Host C++ stand-ins for the CUDA features that csrc/kernels/td_target_cuda_kernels.cuh uses, so
// that its kernels run on a CPU, one std::thread per GPU thread, one block at a time:
// threadIdx / blockIdx, shared memory (static `__shared__` arrays become function statics, the
// dynamic one a buffer: both then belong to the one running block), __syncthreads (a barrier per
// block), __syncwarp and the warp shuffles and votes (a barrier per warp and an exchange slot per
// lane), __ldg, atomicAdd, the fast math intrinsics. Semantics follow the CUDA C++ Programming
// Guide for a warp whose 32 lanes execute every collective together (the kernels keep their warps
// converged); masks are ignored. Every emulated collective is a barrier, so it also orders the
// lanes' shared-memory accesses, which on a GPU only __syncwarp / __syncthreads do: a kernel that
// relies on a shuffle for that ordering passes here (and under ThreadSanitizer) but races there.
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>

#define MTRL_SIMT_EMULATION 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

struct dim3 {
  unsigned x = 0, y = 0, z = 0;
};

namespace simt {

constexpr int kWarpSize = 32;

struct Warp {
  std::barrier<> barrier{kWarpSize};
  uint64_t slot[kWarpSize];
};

inline thread_local Warp* this_warp = nullptr;
inline thread_local int this_lane = 0;
inline thread_local std::barrier<>* this_block = nullptr;

// The dynamic shared memory (`extern __shared__`) of the running block.
alignas(16) inline float dynamic_shared_floats[48 * 1024 / sizeof(float)];
template <typename T>
T* DynamicShared() {
  return reinterpret_cast<T*>(dynamic_shared_floats);
}

// Every lane publishes v, then reads lane src's: two barrier phases, so no slot is overwritten
// before all lanes have read it.
template <typename V>
V ValueOfLane(V v, int src) {
  static_assert(sizeof(V) <= sizeof(uint64_t), "one slot per lane");
  Warp& w = *this_warp;
  std::memcpy(&w.slot[this_lane], &v, sizeof(V));
  w.barrier.arrive_and_wait();
  V out;
  std::memcpy(&out, &w.slot[src], sizeof(V));
  w.barrier.arrive_and_wait();
  return out;
}

}  // namespace simt

inline thread_local dim3 threadIdx, blockIdx, blockDim;

inline void __syncwarp(unsigned = 0xffffffffu) { simt::this_warp->barrier.arrive_and_wait(); }
inline void __syncthreads() { simt::this_block->arrive_and_wait(); }

template <typename V>
V __shfl_sync(unsigned, V v, int src, int width = simt::kWarpSize) {
  const int base = simt::this_lane / width * width;
  return simt::ValueOfLane(v, base + (src & (width - 1)));  // width: a power of 2, as on a GPU
}
template <typename V>
V __shfl_xor_sync(unsigned, V v, int lane_mask, int width = simt::kWarpSize) {
  const int lane = simt::this_lane, src = lane ^ lane_mask;
  // A lane of a later segment is not read: the caller keeps its own value.
  return simt::ValueOfLane(v, src / width > lane / width ? lane : src);
}
template <typename V>
V __shfl_up_sync(unsigned, V v, unsigned delta, int width = simt::kWarpSize) {
  const int lane = simt::this_lane, d = static_cast<int>(delta);
  return simt::ValueOfLane(v, lane % width >= d ? lane - d : lane);
}
template <typename V>
V __shfl_down_sync(unsigned, V v, unsigned delta, int width = simt::kWarpSize) {
  const int lane = simt::this_lane, d = static_cast<int>(delta);
  return simt::ValueOfLane(v, lane % width + d < width ? lane + d : lane);
}
inline bool __any_sync(unsigned, bool predicate) {
  simt::Warp& w = *simt::this_warp;
  w.slot[simt::this_lane] = predicate ? 1 : 0;
  w.barrier.arrive_and_wait();
  bool any = false;
  for (uint64_t s : w.slot) any = any || s != 0;
  w.barrier.arrive_and_wait();
  return any;
}

template <typename T>
T __ldg(const T* p) {
  return *p;
}
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
using std::isfinite;
