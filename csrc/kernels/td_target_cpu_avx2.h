// Entry points of the AVX2 + FMA build of the float CPU kernels (td_target_cpu_avx2.cc).
// Only compiled on x86-64 (MTRL_KERNELS_AVX2 is then defined); call only when the CPU has AVX2 and
// FMA (td_target_cpu.cc checks with __builtin_cpu_supports).
#pragma once

#include <cstdint>

#include "kernels/td_target.h"

namespace mtrl {

int64_t TdTargetCpuAvx2(const TdTargetArgs<float>& args, int num_threads);
int64_t CrossEntropyCpuAvx2(const CrossEntropyArgs<float>& args, int num_threads, double* loss);

}  // namespace mtrl
