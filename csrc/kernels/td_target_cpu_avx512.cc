// The float CPU kernels compiled for AVX-512 (16-lane rows; the C51 projection as a gather, see
// ProjectC51Gather). This file gets -mavx512f -mavx512vl -mavx512bw -mavx512dq -mavx2 -mfma
// (csrc/kernels/CMakeLists.txt); td_target_cpu.cc calls in only after checking the CPU.
#include "kernels/td_target_cpu_avx512.h"

#include "kernels/td_target_cpu_impl.h"

namespace mtrl {

int64_t TdTargetCpuAvx512(const TdTargetArgs<float>& args, int num_threads) {
  return TdTargetImpl<float>(args, num_threads);
}

int64_t CrossEntropyCpuAvx512(const CrossEntropyArgs<float>& args, int num_threads, double* loss) {
  return CrossEntropyImpl<float>(args, num_threads, loss);
}

}  // namespace mtrl
