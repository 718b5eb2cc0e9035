// The fused critic-layer kernels: instruction-set dispatch and the baseline build (row kernels in
// ensemble_norm_impl.h).
#include "nn/ensemble_norm.h"

#include "nn/ensemble_norm_impl.h"
#if defined(MTRL_NN_AVX2) || defined(MTRL_NN_AVX512)
#include "nn/ensemble_norm_isa.h"
#endif

namespace mtrl {
namespace {

#if defined(MTRL_NN_AVX2)
bool CpuHasAvx2() {
  static const bool kSupported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return kSupported;
}
#endif
#if defined(MTRL_NN_AVX512)
bool CpuHasAvx512() {  // libgcc also checks that the OS saves the AVX-512 state
  static const bool kSupported =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  return kSupported;
}
#endif

}  // namespace

void EnsembleNormForwardUnchecked(const EnsembleNormShape& shape, const float* y, const float* bias,
                                  const float* gamma, const float* beta, const float* residual,
                                  NormEpilogue epilogue, float eps, float* out, float* mean,
                                  float* rstd, int num_threads, int max_isa) {
#if defined(MTRL_NN_AVX512)
  if (max_isa >= 2 && CpuHasAvx512()) {
    return EnsembleNormForwardAvx512(shape, y, bias, gamma, beta, residual, epilogue, eps, out,
                                     mean, rstd, num_threads);
  }
#endif
#if defined(MTRL_NN_AVX2)
  if (max_isa >= 1 && CpuHasAvx2()) {
    return EnsembleNormForwardAvx2(shape, y, bias, gamma, beta, residual, epilogue, eps, out, mean,
                                   rstd, num_threads);
  }
#endif
  (void)max_isa;
  EnsembleNormForwardImpl(shape, y, bias, gamma, beta, residual, epilogue, eps, out, mean, rstd,
                          num_threads);
}

void EnsembleNormBackwardUnchecked(const EnsembleNormShape& shape, const float* grad_out,
                                   const float* grad_add,
                                   const float* y, const float* bias, const float* gamma,
                                   const float* beta, const float* mean, const float* rstd,
                                   bool relu, float* grad_y, float* grad_bias, float* grad_gamma,
                                   float* grad_beta, int num_threads, int max_isa) {
#if defined(MTRL_NN_AVX512)
  if (max_isa >= 2 && CpuHasAvx512()) {
    return EnsembleNormBackwardAvx512(shape, grad_out, grad_add, y, bias, gamma, beta, mean, rstd,
                                      relu, grad_y, grad_bias, grad_gamma, grad_beta, num_threads);
  }
#endif
#if defined(MTRL_NN_AVX2)
  if (max_isa >= 1 && CpuHasAvx2()) {
    return EnsembleNormBackwardAvx2(shape, grad_out, grad_add, y, bias, gamma, beta, mean, rstd,
                                    relu, grad_y, grad_bias, grad_gamma, grad_beta, num_threads);
  }
#endif
  (void)max_isa;
  EnsembleNormBackwardImpl(shape, grad_out, grad_add, y, bias, gamma, beta, mean, rstd, relu,
                           grad_y, grad_bias, grad_gamma, grad_beta, num_threads);
}

void EnsembleNormForwardBf16Unchecked(const EnsembleNormShape& shape, const uint16_t* y,
                                      const float* bias, const float* gamma, const float* beta,
                                      const float* residual, NormEpilogue epilogue, float eps,
                                      float* out, uint16_t* out_bf, float* mean, float* rstd,
                                      int num_threads, int max_isa) {
#if defined(MTRL_NN_AVX512)
  if (max_isa >= 2 && CpuHasAvx512()) {
    return EnsembleNormForwardBf16Avx512(shape, y, bias, gamma, beta, residual, epilogue, eps, out,
                                         out_bf, mean, rstd, num_threads);
  }
#endif
#if defined(MTRL_NN_AVX2)
  if (max_isa >= 1 && CpuHasAvx2()) {
    return EnsembleNormForwardBf16Avx2(shape, y, bias, gamma, beta, residual, epilogue, eps, out,
                                       out_bf, mean, rstd, num_threads);
  }
#endif
  (void)max_isa;
  EnsembleNormForwardBf16Impl(shape, y, bias, gamma, beta, residual, epilogue, eps, out, out_bf,
                              mean, rstd, num_threads);
}

void EnsembleNormBackwardBf16Unchecked(const EnsembleNormShape& shape, const uint16_t* grad_out,
                                       const float* grad_add, float* grad_sum, const uint16_t* y,
                                       const float* bias, const float* gamma, const float* beta,
                                       const float* mean, const float* rstd, bool relu,
                                       uint16_t* grad_y, float* grad_bias, float* grad_gamma,
                                       float* grad_beta, int num_threads, int max_isa) {
#if defined(MTRL_NN_AVX512)
  if (max_isa >= 2 && CpuHasAvx512()) {
    return EnsembleNormBackwardBf16Avx512(shape, grad_out, grad_add, grad_sum, y, bias, gamma, beta,
                                          mean, rstd, relu, grad_y, grad_bias, grad_gamma,
                                          grad_beta, num_threads);
  }
#endif
#if defined(MTRL_NN_AVX2)
  if (max_isa >= 1 && CpuHasAvx2()) {
    return EnsembleNormBackwardBf16Avx2(shape, grad_out, grad_add, grad_sum, y, bias, gamma, beta,
                                        mean, rstd, relu, grad_y, grad_bias, grad_gamma, grad_beta,
                                        num_threads);
  }
#endif
  (void)max_isa;
  EnsembleNormBackwardBf16Impl(shape, grad_out, grad_add, grad_sum, y, bias, gamma, beta, mean,
                               rstd, relu, grad_y, grad_bias, grad_gamma, grad_beta, num_threads);
}

}  // namespace mtrl
