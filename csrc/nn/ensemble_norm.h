// Fused "bias + LayerNorm + per-member affine + epilogue" for the critic ensemble (brc-spec §3.1).
//
// The BroNet critic applies, after every hidden matmul y = x W (one batched matmul for the E
// ensemble members), z = y + bias, LayerNorm over the width with a per-member scale and shift,
// then either ReLU (input layer, first half of a residual block) or the residual sum (second half
// of a block). Done with separate PyTorch ops that is 4-6 passes over an (E, B, W) activation in the
// forward and 6-8 in the backward; here each row is read once from memory and processed in L1.
//
// Layout: y, out, residual, grad_out and grad_y are C-contiguous (E, B, W); bias, gamma, beta and
// their gradients are (E, W); mean and rstd are (E, B). LayerNorm uses the biased variance and
// rstd = 1 / sqrt(var + eps), as torch.nn.functional.layer_norm.
//
// Threading: rows are split across at most num_threads threads (the kernels' worker pool). The
// per-member parameter-gradient sums use a fixed chunking that depends only on B, so every result
// is bitwise identical for any num_threads (for a given instruction-set build, see max_isa). Thread safety: the functions only touch the buffers
// passed in; concurrent calls on disjoint outputs are safe.
#pragma once

#include <cstdint>

namespace mtrl {

enum class NormEpilogue : int { kNone = 0, kRelu = 1, kResidual = 2 };

struct EnsembleNormShape {
  int64_t members;          // E
  int64_t rows_per_member;  // B
  int64_t width;            // W
};

// out = epilogue(LayerNorm(y + bias) * gamma + beta); mean/rstd of each row are written for the
// backward. residual is read only for kResidual (out = residual + ...). max_isa caps the build
// that runs (0 baseline, 1 AVX2 + FMA, 2 AVX-512: the best the CPU has); results may differ in the
// last bits between builds (vector widths, FMA), never between thread counts.
void EnsembleNormForwardUnchecked(const EnsembleNormShape& shape, const float* y, const float* bias,
                                  const float* gamma, const float* beta, const float* residual,
                                  NormEpilogue epilogue, float eps, float* out, float* mean,
                                  float* rstd, int num_threads, int max_isa = 2);

// Gradients of the forward above given grad_out (the residual's gradient is grad_out itself).
// relu: the forward's epilogue was kRelu (gradient masked where the output was <= 0).
// grad_bias, grad_gamma and grad_beta are all written, or all skipped when grad_bias is null.
// grad_add (E, B, W), when not null, is first added to grad_out in place, row by row just before
// the row is used (grad_out then holds the sum: it must be writable memory). The residual
// gradient of a BroNet block, h + f(h), is summed this way without a pass of its own.
void EnsembleNormBackwardUnchecked(const EnsembleNormShape& shape, const float* grad_out,
                                   const float* grad_add,
                                   const float* y, const float* bias, const float* gamma,
                                   const float* beta, const float* mean, const float* rstd,
                                   bool relu, float* grad_y, float* grad_bias, float* grad_gamma,
                                   float* grad_beta, int num_threads, int max_isa = 2);

// bf16 path (mtrl/fused_bronet.py with AgentConfig.bf16 on CPU): y is the bf16 output of the
// bf16 matmul (bf16 values as uint16_t bit patterns, the upper half of a float32); the row is
// widened exactly to float32 and everything else is the float32 forward above (same statistics,
// affine, epilogue, float32 out for the residual stream). out_bf receives out rounded to bf16
// (round to nearest even, bitwise torch's .to(torch.bfloat16)): the next matmul's input. out may
// be null (only out_bf is then written: a layer whose output feeds nothing but the next matmul).
void EnsembleNormForwardBf16Unchecked(const EnsembleNormShape& shape, const uint16_t* y,
                                      const float* bias, const float* gamma, const float* beta,
                                      const float* residual, NormEpilogue epilogue, float eps,
                                      float* out, uint16_t* out_bf, float* mean, float* rstd,
                                      int num_threads, int max_isa = 2);

// Backward of the bf16 forward: grad_out (the bf16 output of the next layer's input-gradient
// matmul) is widened to float32 and grad_add (float32, may be null) added to it; grad_out may be
// null when grad_add is not (the layer under the float32 head: the float32 gradient is grad_add
// alone); when grad_sum is not null that float32 sum is also written there (a separate buffer:
// the residual gradient of a block, which the caller passes on). The float32 backward above follows; grad_y is written
// rounded to bf16 (both matmuls of the layer's backward read it), the parameter gradients in
// float32 from the unrounded dz.
void EnsembleNormBackwardBf16Unchecked(const EnsembleNormShape& shape, const uint16_t* grad_out,
                                       const float* grad_add, float* grad_sum, const uint16_t* y,
                                       const float* bias, const float* gamma, const float* beta,
                                       const float* mean, const float* rstd, bool relu,
                                       uint16_t* grad_y, float* grad_bias, float* grad_gamma,
                                       float* grad_beta, int num_threads, int max_isa = 2);

}  // namespace mtrl
