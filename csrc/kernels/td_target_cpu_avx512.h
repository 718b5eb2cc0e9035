// Entry points of the AVX-512 build of the float CPU kernels (td_target_cpu_avx512.cc: 16-lane
// rows, the C51 projection as a vector gather). Only compiled on x86-64 with GCC or Clang
// (MTRL_KERNELS_AVX512 is then defined); call only when the CPU has AVX-512 F/VL/BW/DQ, AVX2 and
// FMA (td_target_cpu.cc checks with __builtin_cpu_supports).
#pragma once

#include <cstdint>

#include "kernels/td_target.h"

namespace mtrl {

int64_t TdTargetCpuAvx512(const TdTargetArgs<float>& args, int num_threads);
int64_t CrossEntropyCpuAvx512(const CrossEntropyArgs<float>& args, int num_threads, double* loss);

}  // namespace mtrl
