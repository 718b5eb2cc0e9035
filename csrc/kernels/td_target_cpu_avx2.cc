// The float CPU kernels compiled for AVX2 + FMA (8-wide exp, max and dot loops). This file gets
// -mavx2 -mfma (csrc/kernels/CMakeLists.txt); td_target_cpu.cc calls in only after checking the CPU.
#include "kernels/td_target_cpu_avx2.h"

#include "kernels/td_target_cpu_impl.h"

namespace mtrl {

int64_t TdTargetCpuAvx2(const TdTargetArgs<float>& args, int num_threads) {
  return TdTargetImpl<float>(args, num_threads);
}

int64_t CrossEntropyCpuAvx2(const CrossEntropyArgs<float>& args, int num_threads, double* loss) {
  return CrossEntropyImpl<float>(args, num_threads, loss);
}

}  // namespace mtrl
