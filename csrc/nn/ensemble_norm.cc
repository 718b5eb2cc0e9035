#include "nn/ensemble_norm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/parallel.h"

// The row loops are plain C++ that GCC/Clang vectorise; the chunk functions are compiled for
// AVX-512, AVX2 and baseline x86-64 and the best one is picked when the module loads.
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define MTRL_NN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MTRL_NN_CLONES
#endif
#define MTRL_NN_INLINE inline __attribute__((always_inline))

namespace mtrl {
namespace {

constexpr int kLanes = 16;               // independent partial sums (vectorisable reductions)
constexpr int64_t kRowsPerGradChunk = 128;  // fixed chunking of the parameter-gradient sums

MTRL_NN_INLINE float Reduce(const float* acc, float tail) {
  float s = 0.0f;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  return s + tail;
}

// One row: out = epilogue((y + b - mean) * rstd * g + be).
MTRL_NN_INLINE void ForwardRow(const float* __restrict y, const float* __restrict b,
                               const float* __restrict g, const float* __restrict be,
                               const float* __restrict res, NormEpilogue epilogue, float eps,
                               int64_t w, float* __restrict out, float* mean_out, float* rstd_out) {
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= w; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const float z = y[j + l] + b[j + l];
      out[j + l] = z;  // the row stays in L1 for the next passes
      acc[l] += z;
    }
  }
  float tail = 0.0f;
  for (; j < w; ++j) {
    out[j] = y[j] + b[j];
    tail += out[j];
  }
  const float mean = Reduce(acc, tail) / static_cast<float>(w);
  float sq[kLanes] = {};
  for (j = 0; j + kLanes <= w; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const float d = out[j + l] - mean;
      sq[l] += d * d;
    }
  }
  tail = 0.0f;
  for (; j < w; ++j) tail += (out[j] - mean) * (out[j] - mean);
  const float rstd = 1.0f / std::sqrt(Reduce(sq, tail) / static_cast<float>(w) + eps);
  if (epilogue == NormEpilogue::kRelu) {
    for (j = 0; j < w; ++j) {
      const float v = (out[j] - mean) * rstd * g[j] + be[j];
      out[j] = v > 0.0f ? v : 0.0f;
    }
  } else if (epilogue == NormEpilogue::kResidual) {
    for (j = 0; j < w; ++j) out[j] = res[j] + ((out[j] - mean) * rstd * g[j] + be[j]);
  } else {
    for (j = 0; j < w; ++j) out[j] = (out[j] - mean) * rstd * g[j] + be[j];
  }
  *mean_out = mean;
  *rstd_out = rstd;
}

// One row of the backward; kSums: also accumulate d beta, d gamma, d bias into s_beta, s_gamma,
// s_bias (W each). Pointers are __restrict so that the loops vectorise without alias checks.
template <bool kRelu, bool kSums>
MTRL_NN_INLINE void BackwardRow(const float* __restrict go, const float* __restrict y,
                                const float* __restrict b, const float* __restrict g,
                                const float* __restrict be, float mean, float rstd, int64_t w,
                                float* __restrict gy, float* __restrict s_beta,
                                float* __restrict s_gamma, float* __restrict s_bias) {
  // Pass 1: dxhat = dout * mask * gamma (kept in gy), and the two row reductions.
  float acc_a[kLanes] = {}, acc_c[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= w; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const int64_t k = j + l;
      const float xhat = (y[k] + b[k] - mean) * rstd;
      const float d = (!kRelu || xhat * g[k] + be[k] > 0.0f) ? go[k] : 0.0f;
      const float dxhat = d * g[k];
      gy[k] = dxhat;
      acc_a[l] += dxhat;
      acc_c[l] += dxhat * xhat;
      if (kSums) {
        s_beta[k] += d;
        s_gamma[k] += d * xhat;
      }
    }
  }
  float tail_a = 0.0f, tail_c = 0.0f;
  for (; j < w; ++j) {
    const float xhat = (y[j] + b[j] - mean) * rstd;
    const float d = (!kRelu || xhat * g[j] + be[j] > 0.0f) ? go[j] : 0.0f;
    const float dxhat = d * g[j];
    gy[j] = dxhat;
    tail_a += dxhat;
    tail_c += dxhat * xhat;
    if (kSums) {
      s_beta[j] += d;
      s_gamma[j] += d * xhat;
    }
  }
  const float inv_w = 1.0f / static_cast<float>(w);
  const float mean_a = Reduce(acc_a, tail_a) * inv_w;
  const float mean_c = Reduce(acc_c, tail_c) * inv_w;
  // Pass 2: dz = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)); d bias = sum dz.
  for (j = 0; j < w; ++j) {
    const float xhat = (y[j] + b[j] - mean) * rstd;
    const float dz = rstd * (gy[j] - mean_a - xhat * mean_c);
    gy[j] = dz;
    if (kSums) s_bias[j] += dz;
  }
}

struct ForwardCtx {
  EnsembleNormShape shape;
  const float *y, *bias, *gamma, *beta, *residual;
  NormEpilogue epilogue;
  float eps;
  float *out, *mean, *rstd;
};

MTRL_NN_CLONES void ForwardChunk(void* raw, int64_t begin, int64_t end) {
  const auto& c = *static_cast<const ForwardCtx*>(raw);
  const int64_t w = c.shape.width;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t e = r / c.shape.rows_per_member;
    const float* res = c.residual == nullptr ? nullptr : c.residual + r * w;
    ForwardRow(c.y + r * w, c.bias + e * w, c.gamma + e * w, c.beta + e * w, res, c.epilogue,
               c.eps, w, c.out + r * w, c.mean + r, c.rstd + r);
  }
}

struct BackwardCtx {
  EnsembleNormShape shape;
  const float *grad_out, *y, *bias, *gamma, *beta, *mean, *rstd;
  bool relu;
  float* grad_y;
  float* partial;  // (num_chunks, 3, W) parameter-gradient sums, or null
  int64_t chunks_per_member;
};

// "Rows" of this ParallelFor are gradient chunks: chunk i of member e covers a fixed row range.
MTRL_NN_CLONES void BackwardChunks(void* raw, int64_t begin, int64_t end) {
  const auto& c = *static_cast<const BackwardCtx*>(raw);
  const int64_t w = c.shape.width, rows = c.shape.rows_per_member;
  for (int64_t chunk = begin; chunk < end; ++chunk) {
    const int64_t e = chunk / c.chunks_per_member, i = chunk % c.chunks_per_member;
    const int64_t first = e * rows + rows * i / c.chunks_per_member;
    const int64_t last = e * rows + rows * (i + 1) / c.chunks_per_member;
    float* sums = c.partial == nullptr ? nullptr : c.partial + chunk * 3 * w;
    if (sums != nullptr) {
      for (int64_t k = 0; k < 3 * w; ++k) sums[k] = 0.0f;
    }
    for (int64_t r = first; r < last; ++r) {
      const float *go = c.grad_out + r * w, *y = c.y + r * w, *b = c.bias + e * w;
      const float *g = c.gamma + e * w, *be = c.beta + e * w;
      float* gy = c.grad_y + r * w;
      if (sums == nullptr && c.relu) {
        BackwardRow<true, false>(go, y, b, g, be, c.mean[r], c.rstd[r], w, gy, nullptr, nullptr, nullptr);
      } else if (sums == nullptr) {
        BackwardRow<false, false>(go, y, b, g, be, c.mean[r], c.rstd[r], w, gy, nullptr, nullptr, nullptr);
      } else if (c.relu) {
        BackwardRow<true, true>(go, y, b, g, be, c.mean[r], c.rstd[r], w, gy, sums, sums + w, sums + 2 * w);
      } else {
        BackwardRow<false, true>(go, y, b, g, be, c.mean[r], c.rstd[r], w, gy, sums, sums + w, sums + 2 * w);
      }
    }
  }
}

}  // namespace

void EnsembleNormForwardUnchecked(const EnsembleNormShape& shape, const float* y, const float* bias,
                                  const float* gamma, const float* beta, const float* residual,
                                  NormEpilogue epilogue, float eps, float* out, float* mean,
                                  float* rstd, int num_threads) {
  ForwardCtx ctx{shape, y, bias, gamma, beta, residual, epilogue, eps, out, mean, rstd};
  ParallelFor(shape.members * shape.rows_per_member, num_threads, 64, ForwardChunk, &ctx);
}

void EnsembleNormBackwardUnchecked(const EnsembleNormShape& shape, const float* grad_out,
                                   const float* y, const float* bias, const float* gamma,
                                   const float* beta, const float* mean, const float* rstd,
                                   bool relu, float* grad_y, float* grad_bias, float* grad_gamma,
                                   float* grad_beta, int num_threads) {
  const int64_t w = shape.width;
  const int64_t per_member =
      std::max<int64_t>(1, (shape.rows_per_member + kRowsPerGradChunk - 1) / kRowsPerGradChunk);
  const int64_t num_chunks = shape.members * per_member;
  std::vector<float> partial(grad_bias != nullptr ? num_chunks * 3 * w : 0);
  BackwardCtx ctx{shape, grad_out, y, bias, gamma, beta, mean, rstd, relu, grad_y,
                  grad_bias != nullptr ? partial.data() : nullptr, per_member};
  ParallelFor(num_chunks, num_threads, 1, BackwardChunks, &ctx);
  if (grad_bias == nullptr) return;
  // Chunks are summed in a fixed order: the result does not depend on num_threads.
  for (int64_t e = 0; e < shape.members; ++e) {
    for (int64_t k = 0; k < w; ++k) {
      float d_beta = 0.0f, d_gamma = 0.0f, d_bias = 0.0f;
      for (int64_t i = 0; i < per_member; ++i) {
        const float* sums = partial.data() + (e * per_member + i) * 3 * w;
        d_beta += sums[k];
        d_gamma += sums[w + k];
        d_bias += sums[2 * w + k];
      }
      grad_beta[e * w + k] = d_beta;
      grad_gamma[e * w + k] = d_gamma;
      grad_bias[e * w + k] = d_bias;
    }
  }
}

}  // namespace mtrl
