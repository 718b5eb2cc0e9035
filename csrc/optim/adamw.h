// One AdamW step (decoupled weight decay, brc-spec §2.2 / §11.1) over many parameter tensors in a
// single pass, optionally followed, element by element in the same pass, by the Polyak update of
// a target copy: target <- target + tau (param - target) (§2.2 step 2). Float32, CPU, threads over
// the concatenated elements. mtrl/optim.py is the Python face (a torch.optim.AdamW).
#pragma once

#include <cstdint>

namespace mtrl {

// One parameter tensor and its state, all `size` dense float32 elements; target may be null.
struct AdamWSpan {
  float* param;
  const float* grad;
  float* exp_avg;
  float* exp_avg_sq;
  float* target;
  int64_t size;
};

// Per-step constants, computed by the caller from the step count t (double precision):
// lr_weight_decay = lr * weight_decay, step_size = lr / (1 - beta1^t),
// bias_correction2_sqrt = sqrt(1 - beta2^t).
struct AdamWStepConstants {
  float lr_weight_decay;
  float beta1;
  float beta2;
  float one_minus_beta1;  // from double: 1 - float(0.999) would be off by 1.3e-5 relative
  float one_minus_beta2;
  float step_size;
  float bias_correction2_sqrt;
  float eps;
  float tau;  // used where a span has a target
};

// For every element: p -= lr_weight_decay p; m = beta1 m + (1 - beta1) g; v = beta2 v + (1 - beta2) g^2;
// p -= step_size m / (sqrt(v) / bias_correction2_sqrt + eps); then target += tau (p - target).
// No input checks (the binding does them); spans must not overlap.
void AdamWStepUnchecked(const AdamWSpan* spans, int64_t count, const AdamWStepConstants& c,
                        int num_threads);

}  // namespace mtrl
