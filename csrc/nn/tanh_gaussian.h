// The actor's tanh-Gaussian head (brc-spec §2.3) in one pass each way: from the network output
// [mean | raw log-std] and standard-normal noise to the action and its log-probability, and the
// gradient back to the network output.
//
// Per row b and action dimension j (A dims; head row = [mean_0..mean_{A-1}, raw_0..raw_{A-1}]):
//   log_std = -10 + 6 (1 + tanh(raw))                  (in [-10, 2])
//   pre     = mean + std_scale exp(log_std) noise
//   action  = tanh(pre)
//   z       = (pre - mean) exp(-log_std) = std_scale noise (used in this exact form: the
//             difference pre - mean cancels badly in float32 when sigma is small)
//   log_prob_b = sum_j  -z^2 / 2 - log_std - log(2 pi) / 2 - 2 (log 2 - pre - softplus(-2 pre))
// which is mtrl.math's squash_log_std + tanh_gaussian_log_prob (up to that cancellation). The backward treats the noise as a
// constant (the reparameterisation): with u = std_scale exp(log_std) noise,
//   d pre = d action (1 - action^2) + d log_prob 2 action,  d mean = d pre,
//   d raw = (d pre u - d log_prob) 6 (1 - tanh(raw)^2).
// (Autograd on the composed formula gets the same values up to rounding: the z terms' gradients
// cancel analytically.) The forward stores action, tanh(raw) and u in `saved` (3, B, A) for the
// backward. Float32, row-major; no input checks (the binding does them); single-threaded (a few
// thousand elements).
#pragma once

#include <cstdint>

namespace mtrl {

void TanhGaussianForward(const float* head, const float* noise, int64_t batch, int64_t action_dim,
                         float std_scale, float* action, float* log_prob, float* saved);

// grad_action (B, A) and grad_log_prob (B,) may each be null (zero gradient).
void TanhGaussianBackward(const float* saved, const float* grad_action,
                          const float* grad_log_prob, int64_t batch, int64_t action_dim,
                          float* grad_head);

}  // namespace mtrl
