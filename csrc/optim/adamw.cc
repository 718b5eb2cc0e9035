#include "optim/adamw.h"

#include <cmath>
#include <vector>

#include "kernels/parallel.h"

// The element loop is plain C++ that GCC/Clang vectorise; it is compiled for AVX-512, AVX2 and
// baseline x86-64 and the best one is picked when the module loads (sqrt and division per element
// make the narrow builds compute-bound at ~2M parameters).
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define MTRL_OPTIM_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MTRL_OPTIM_CLONES
#endif

namespace mtrl {
namespace {

// Elements per chunk of the concatenated parameters: big enough to amortise a chunk's dispatch,
// small enough to balance two threads over a few large and many small tensors.
constexpr int64_t kChunk = 16384;

struct StepJob {
  const AdamWSpan* spans;
  const int64_t* starts;  // first global element of each span; starts[count] = total
  int64_t count;
  AdamWStepConstants c;
};

template <bool kPolyak>
MTRL_OPTIM_CLONES void StepRange(const AdamWSpan& s, int64_t begin, int64_t end,
                                 const AdamWStepConstants& c) {
  float* __restrict p = s.param;
  const float* __restrict g = s.grad;
  float* __restrict m = s.exp_avg;
  float* __restrict v = s.exp_avg_sq;
  float* __restrict t = s.target;
  // Constants in locals: read through the reference, the compiler could not rule out that the
  // stores below change them, and the loop would stay scalar.
  const float beta1 = c.beta1, beta2 = c.beta2, one_minus_beta1 = c.one_minus_beta1,
              one_minus_beta2 = c.one_minus_beta2, lr_weight_decay = c.lr_weight_decay,
              step_size = c.step_size, bias_correction2_sqrt = c.bias_correction2_sqrt,
              eps = c.eps, tau = c.tau;
  for (int64_t i = begin; i < end; ++i) {
    const float gi = g[i];
    const float mi = m[i] * beta1 + gi * one_minus_beta1;
    const float vi = v[i] * beta2 + gi * gi * one_minus_beta2;
    const float denom = std::sqrt(vi) / bias_correction2_sqrt + eps;
    // Decay as p - (lr wd) p, not p (1 - lr wd): 1 - lr wd rounds to ~6e-8 relative in float.
    const float decayed = p[i] - lr_weight_decay * p[i];
    const float pi = decayed - step_size * (mi / denom);
    m[i] = mi;
    v[i] = vi;
    p[i] = pi;
    if (kPolyak) t[i] = t[i] + tau * (pi - t[i]);
  }
}

void StepChunks(void* raw, int64_t chunk_begin, int64_t chunk_end) {
  const auto& job = *static_cast<const StepJob*>(raw);
  const int64_t total = job.starts[job.count];
  const int64_t first = chunk_begin * kChunk;
  const int64_t last = chunk_end * kChunk < total ? chunk_end * kChunk : total;
  int64_t k = 0;
  while (job.starts[k + 1] <= first) ++k;  // the span holding `first`
  for (int64_t at = first; at < last; ++k) {
    const AdamWSpan& s = job.spans[k];
    const int64_t end = job.starts[k + 1] < last ? job.starts[k + 1] : last;
    if (s.target != nullptr) {
      StepRange<true>(s, at - job.starts[k], end - job.starts[k], job.c);
    } else {
      StepRange<false>(s, at - job.starts[k], end - job.starts[k], job.c);
    }
    at = end;
  }
}

}  // namespace

void AdamWStepUnchecked(const AdamWSpan* spans, int64_t count, const AdamWStepConstants& c,
                        int num_threads) {
  std::vector<int64_t> starts(count + 1, 0);
  for (int64_t k = 0; k < count; ++k) starts[k + 1] = starts[k] + spans[k].size;
  const int64_t chunks = (starts[count] + kChunk - 1) / kChunk;
  if (chunks == 0) return;
  StepJob job{spans, starts.data(), count, c};
  ParallelFor(chunks, num_threads, 1, &StepChunks, &job);
}

}  // namespace mtrl
