// Entry points of the AVX2 + FMA and AVX-512 builds of the fused critic-layer kernels
// (ensemble_norm_avx2.cc, ensemble_norm_avx512.cc: 8- and 16-lane rows). Only compiled on x86-64
// with GCC or Clang (MTRL_NN_AVX2 / MTRL_NN_AVX512 are then defined); ensemble_norm.cc calls them
// only after checking the CPU. Same contracts as ensemble_norm.h.
#pragma once

#include "nn/ensemble_norm.h"

namespace mtrl {

void EnsembleNormForwardAvx2(const EnsembleNormShape& shape, const float* y, const float* bias,
                             const float* gamma, const float* beta, const float* residual,
                             NormEpilogue epilogue, float eps, float* out, float* mean, float* rstd,
                             int num_threads);
void EnsembleNormBackwardAvx2(const EnsembleNormShape& shape, const float* grad_out,
                              const float* grad_add, const float* y,
                              const float* bias, const float* gamma, const float* beta,
                              const float* mean, const float* rstd, bool relu, float* grad_y,
                              float* grad_bias, float* grad_gamma, float* grad_beta,
                              int num_threads);
void EnsembleNormForwardAvx512(const EnsembleNormShape& shape, const float* y, const float* bias,
                               const float* gamma, const float* beta, const float* residual,
                               NormEpilogue epilogue, float eps, float* out, float* mean,
                               float* rstd, int num_threads);
void EnsembleNormBackwardAvx512(const EnsembleNormShape& shape, const float* grad_out,
                                const float* grad_add, const float* y, const float* bias,
                                const float* gamma, const float* beta, const float* mean,
                                const float* rstd, bool relu, float* grad_y, float* grad_bias,
                                float* grad_gamma, float* grad_beta, int num_threads);

void EnsembleNormForwardBf16Avx2(const EnsembleNormShape& shape, const uint16_t* y,
                                 const float* bias, const float* gamma, const float* beta,
                                 const float* residual, NormEpilogue epilogue, float eps,
                                 float* out, uint16_t* out_bf, float* mean, float* rstd,
                                 int num_threads);
void EnsembleNormBackwardBf16Avx2(const EnsembleNormShape& shape, const uint16_t* grad_out,
                                  const float* grad_add, float* grad_sum, const uint16_t* y,
                                  const float* bias, const float* gamma, const float* beta,
                                  const float* mean, const float* rstd, bool relu, uint16_t* grad_y,
                                  float* grad_bias, float* grad_gamma, float* grad_beta,
                                  int num_threads);
void EnsembleNormForwardBf16Avx512(const EnsembleNormShape& shape, const uint16_t* y,
                                   const float* bias, const float* gamma, const float* beta,
                                   const float* residual, NormEpilogue epilogue, float eps,
                                   float* out, uint16_t* out_bf, float* mean, float* rstd,
                                   int num_threads);
void EnsembleNormBackwardBf16Avx512(const EnsembleNormShape& shape, const uint16_t* grad_out,
                                    const float* grad_add, float* grad_sum, const uint16_t* y,
                                    const float* bias, const float* gamma, const float* beta,
                                    const float* mean, const float* rstd, bool relu,
                                    uint16_t* grad_y, float* grad_bias, float* grad_gamma,
                                    float* grad_beta, int num_threads);

}  // namespace mtrl
