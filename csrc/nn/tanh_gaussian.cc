#include "nn/tanh_gaussian.h"

#include <algorithm>

#include "kernels/fast_math.h"

namespace mtrl {
namespace {

constexpr float kLogStdMin = -10.0f;
constexpr float kHalfLogStdRange = 6.0f;  // (2 - (-10)) / 2
constexpr float kHalfLog2Pi = 0.918938533204672742f;
constexpr float kLog2 = 0.693147180559945309f;
// Elements per block: the block's inputs and terms sit in stack arrays (no heap use per call) in a
// layout the element loop can vectorise (the head interleaves mean and raw log-std per row).
constexpr int64_t kBlock = 1024;

// tanh(x) from e = exp(-2|x|) (in (0, 1]): sign(x) (1 - e) / (1 + e). Absolute error ~1e-7 (the
// relative error grows as x -> 0, where tanh(x) ~ x is small).
inline float TanhFromExp(float x, float e) {
  const float t = (1.0f - e) / (1.0f + e);
  return x < 0.0f ? -t : t;
}

}  // namespace

// Compiled for AVX-512, AVX2 and baseline x86-64; the best one is picked when the module loads.
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
void TanhGaussianForward(const float* head, const float* noise, int64_t batch, int64_t action_dim,
                         float std_scale, float* action, float* log_prob, float* saved) {
  const int64_t a_count = action_dim, plane = batch * action_dim;
  const int64_t rows_per_block = std::max<int64_t>(1, kBlock / a_count);
  float mean[kBlock + 64], raw[kBlock + 64], terms[kBlock + 64];
  for (int64_t b0 = 0; b0 < batch; b0 += rows_per_block) {
    const int64_t rows = std::min(rows_per_block, batch - b0);
    // A row longer than kBlock (A > 1024) is done in pieces of one row's columns.
    for (int64_t c0 = 0; c0 < a_count; c0 += kBlock) {
      const int64_t cols = std::min(kBlock, a_count - c0);
      const int64_t n = rows == 1 ? cols : rows * a_count;
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t j = 0; j < cols; ++j) {
          mean[r * cols + j] = head[(b0 + r) * 2 * a_count + c0 + j];
          raw[r * cols + j] = head[(b0 + r) * 2 * a_count + a_count + c0 + j];
        }
      }
      const int64_t first = b0 * a_count + c0;  // rows > 1 implies cols == a_count
      const float* eps = noise + first;
      float* act = action + first;
      float* s_act = saved + first;
      float* s_tanh_raw = saved + plane + first;
      float* s_step = saved + 2 * plane + first;
      for (int64_t i = 0; i < n; ++i) {
        const float tanh_raw = TanhFromExp(raw[i], FastExp(-2.0f * __builtin_fabsf(raw[i])));
        const float log_std = kLogStdMin + kHalfLogStdRange * (1.0f + tanh_raw);
        const float step = std_scale * FastExp(log_std) * eps[i];
        const float pre = mean[i] + step;
        const float abs2 = 2.0f * __builtin_fabsf(pre);
        const float e = FastExp(-abs2);  // exp(-2 |pre|)
        const float a = TanhFromExp(pre, e);
        // (pre - mean) / sigma is std_scale * noise exactly; computed from pre - mean it would
        // lose ~|pre| / step of its precision to cancellation (sigma = e^-10 at the floor).
        const float z = std_scale * eps[i];
        // softplus(-2 pre) = max(-2 pre, 0) + log(1 + exp(-2 |pre|))
        const float softplus = (pre < 0 ? abs2 : 0.0f) + Log1pUnit(e);
        terms[i] = (-0.5f * z * z - log_std - kHalfLog2Pi) - 2.0f * (kLog2 - pre - softplus);
        act[i] = a;
        s_act[i] = a;
        s_tanh_raw[i] = tanh_raw;
        s_step[i] = step;
      }
      for (int64_t r = 0; r < rows; ++r) {
        float total = c0 == 0 ? 0.0f : log_prob[b0 + r];
        for (int64_t j = 0; j < cols; ++j) total += terms[r * cols + j];
        log_prob[b0 + r] = total;
      }
    }
  }
}

void TanhGaussianBackward(const float* saved, const float* grad_action,
                          const float* grad_log_prob, int64_t batch, int64_t action_dim,
                          float* grad_head) {
  const int64_t a_count = action_dim, plane = batch * action_dim;
  for (int64_t b = 0; b < batch; ++b) {
    const float g_lp = grad_log_prob != nullptr ? grad_log_prob[b] : 0.0f;
    float* g_mean = grad_head + b * 2 * a_count;
    float* g_raw = g_mean + a_count;
    for (int64_t j = 0; j < a_count; ++j) {
      const int64_t k = b * a_count + j;
      const float act = saved[k], tanh_raw = saved[plane + k], step = saved[2 * plane + k];
      const float g_act = grad_action != nullptr ? grad_action[k] : 0.0f;
      const float g_pre = g_act * (1.0f - act * act) + g_lp * 2.0f * act;
      g_mean[j] = g_pre;
      g_raw[j] = (g_pre * step - g_lp) * kHalfLogStdRange * (1.0f - tanh_raw * tanh_raw);
    }
  }
}

}  // namespace mtrl
