// CPU TD target and cross-entropy: size checks, instruction-set dispatch and the float64 build.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "kernels/td_target.h"
#include "kernels/td_target_cpu_impl.h"
#ifdef MTRL_KERNELS_AVX2
#include "kernels/td_target_cpu_avx2.h"
#endif
#ifdef MTRL_KERNELS_AVX512
#include "kernels/td_target_cpu_avx512.h"
#endif

namespace mtrl {
#ifdef MTRL_KERNELS_AVX2
namespace {

bool CpuHasAvx2() {
  static const bool kSupported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return kSupported;
}
#ifdef MTRL_KERNELS_AVX512
bool CpuHasAvx512() {  // libgcc also checks that the OS saves the AVX-512 state
  static const bool kSupported = CpuHasAvx2() && __builtin_cpu_supports("avx512f") &&
                                 __builtin_cpu_supports("avx512vl") &&
                                 __builtin_cpu_supports("avx512bw") &&
                                 __builtin_cpu_supports("avx512dq");
  return kSupported;
}
#endif

}  // namespace
#endif

void CheckTdTargetSizes(int64_t num_members, int64_t batch_size, int64_t num_atoms, double v_min,
                        double v_max, double sigma) {
  if (num_members < 1) {
    throw std::invalid_argument("number of ensemble members E must be >= 1, got " +
                                std::to_string(num_members));
  }
  if (batch_size < 1) {
    throw std::invalid_argument("batch size B must be >= 1, got " + std::to_string(batch_size));
  }
  if (num_atoms < 2 || num_atoms > kMaxAtoms) {
    throw std::invalid_argument("number of atoms K must be in [2, " + std::to_string(kMaxAtoms) +
                                "], got " + std::to_string(num_atoms));
  }
  // |v| <= kSupportLimit keeps the atoms and their spacing finite in float32 (no NaN targets).
  if (!(std::fabs(v_min) <= kSupportLimit) || !(std::fabs(v_max) <= kSupportLimit) ||
      !(v_min < v_max)) {
    char got[96];
    std::snprintf(got, sizeof(got), "v_min=%g, v_max=%g", v_min, v_max);
    throw std::invalid_argument(
        std::string("support needs finite v_min < v_max with |v| <= 1e+38, got ") + got);
  }
  const double spacing = (v_max - v_min) / static_cast<double>(num_atoms - 1);
  if (!(spacing >= kMinAtomSpacing * std::max(std::fabs(v_min), std::fabs(v_max)))) {
    char got[128];
    std::snprintf(got, sizeof(got), "v_min=%.9g, v_max=%.9g, K=%lld", v_min, v_max,
                  static_cast<long long>(num_atoms));
    throw std::invalid_argument(
        std::string("support too narrow for float32 atoms: (v_max - v_min) / (K - 1) must be >= "
                    "2^-20 max(|v_min|, |v_max|), got ") + got);
  }
  // 0: no HL-Gauss (the C51 projection ignores sigma).
  if (!std::isfinite(sigma) || sigma < 0.0 || (sigma != 0.0 && !(sigma >= kMinSigma &&
                                                                 sigma <= kMaxSigma))) {
    char got[48];
    std::snprintf(got, sizeof(got), "%g", sigma);
    throw std::invalid_argument(std::string("sigma must be in [1e-30, 1e30] (or 0 when unused), "
                                            "got ") + got);
  }
}

template <>
int64_t TdTargetCpuUnchecked<float>(const TdTargetArgs<float>& args, int num_threads,
                                    int max_isa) {
#ifdef MTRL_KERNELS_AVX512
  if (max_isa >= 2 && CpuHasAvx512()) return TdTargetCpuAvx512(args, num_threads);
#endif
#ifdef MTRL_KERNELS_AVX2
  if (max_isa >= 1 && CpuHasAvx2()) return TdTargetCpuAvx2(args, num_threads);
#endif
  (void)max_isa;
  return TdTargetImpl<float>(args, num_threads);
}

template <>
int64_t TdTargetCpuUnchecked<double>(const TdTargetArgs<double>& args, int num_threads, int) {
  return TdTargetImpl<double>(args, num_threads);
}

template <>
int64_t CrossEntropyCpuUnchecked<float>(const CrossEntropyArgs<float>& args, int num_threads,
                                        double* loss, int max_isa) {
#ifdef MTRL_KERNELS_AVX512
  if (max_isa >= 2 && CpuHasAvx512()) return CrossEntropyCpuAvx512(args, num_threads, loss);
#endif
#ifdef MTRL_KERNELS_AVX2
  if (max_isa >= 1 && CpuHasAvx2()) return CrossEntropyCpuAvx2(args, num_threads, loss);
#endif
  (void)max_isa;
  return CrossEntropyImpl<float>(args, num_threads, loss);
}

template <>
int64_t CrossEntropyCpuUnchecked<double>(const CrossEntropyArgs<double>& args, int num_threads,
                                         double* loss, int) {
  return CrossEntropyImpl<double>(args, num_threads, loss);
}

template <>
void ScaleCpuUnchecked<float>(const float* src, float factor, float* dst, int64_t n,
                              int num_threads) {
  ScaleImpl<float>(src, factor, dst, n, num_threads);
}

template <>
void ScaleCpuUnchecked<double>(const double* src, double factor, double* dst, int64_t n,
                               int num_threads) {
  ScaleImpl<double>(src, factor, dst, n, num_threads);
}

}  // namespace mtrl
