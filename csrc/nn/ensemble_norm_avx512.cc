// The fused critic-layer kernels compiled for AVX-512 (this file gets -mavx512f/vl/bw/dq, -mavx2 and -mfma: see
// csrc/nn/CMakeLists.txt); ensemble_norm.cc calls in only after checking the CPU.
#include "nn/ensemble_norm_impl.h"
#include "nn/ensemble_norm_isa.h"

namespace mtrl {

void EnsembleNormForwardAvx512(const EnsembleNormShape& shape, const float* y, const float* bias,
                             const float* gamma, const float* beta, const float* residual,
                             NormEpilogue epilogue, float eps, float* out, float* mean, float* rstd,
                             int num_threads) {
  EnsembleNormForwardImpl(shape, y, bias, gamma, beta, residual, epilogue, eps, out, mean, rstd,
                          num_threads);
}

void EnsembleNormBackwardAvx512(const EnsembleNormShape& shape, const float* grad_out,
                                const float* grad_add, const float* y, const float* bias,
                                const float* gamma, const float* beta, const float* mean,
                                const float* rstd, bool relu, float* grad_y, float* grad_bias,
                                float* grad_gamma, float* grad_beta, int num_threads) {
  EnsembleNormBackwardImpl(shape, grad_out, grad_add, y, bias, gamma, beta, mean, rstd, relu,
                           grad_y, grad_bias, grad_gamma, grad_beta, num_threads);
}

void EnsembleNormForwardBf16Avx512(const EnsembleNormShape& shape, const uint16_t* y,
                                   const float* bias, const float* gamma, const float* beta,
                                   const float* residual, NormEpilogue epilogue, float eps,
                                   float* out, uint16_t* out_bf, float* mean, float* rstd,
                                   int num_threads) {
  EnsembleNormForwardBf16Impl(shape, y, bias, gamma, beta, residual, epilogue, eps, out, out_bf,
                              mean, rstd, num_threads);
}

void EnsembleNormBackwardBf16Avx512(const EnsembleNormShape& shape, const uint16_t* grad_out,
                                    const float* grad_add, float* grad_sum, const uint16_t* y,
                                    const float* bias, const float* gamma, const float* beta,
                                    const float* mean, const float* rstd, bool relu,
                                    uint16_t* grad_y, float* grad_bias, float* grad_gamma,
                                    float* grad_beta, int num_threads) {
  EnsembleNormBackwardBf16Impl(shape, grad_out, grad_add, grad_sum, y, bias, gamma, beta, mean,
                               rstd, relu, grad_y, grad_bias, grad_gamma, grad_beta, num_threads);
}

}  // namespace mtrl
