// Fused categorical TD target (C51 projection or HL-Gauss) and categorical cross-entropy with its
// gradient, on the CPU. Semantics: brc-spec §2.2 (critic update), §3.2 (projection), §3.3 (read-out);
// the executable reference is mtrl/ops/reference.py. The CUDA versions are in td_target_cuda.h.
//
// Layouts are dense row-major: logits [E, B, K] (E ensemble members, B batch, K atoms), per-sample
// vectors [B], target [B, K]. The atoms are z_j = v_min + j * (v_max - v_min) / (K - 1).
//
// Thread safety: the functions are pure apart from their outputs; concurrent calls on disjoint
// outputs are safe (they share the kernel worker pool, see parallel.h).
// Memory: no heap allocation per call; each thread keeps a few rows of kMaxAtoms values on its
// stack (about 215 KB for float, 315 KB for double).
#pragma once

#include <cstdint>

namespace mtrl {

enum class Combine : int {
  kMean = 0,  // mean of the members' softmax probabilities (BRC, spec §2.2)
  kMin = 1,   // per sample, the member whose distribution has the lowest expected value
};

enum class Projection : int {
  kC51 = 0,      // shift every atom, clip, split its mass between the two neighbours (spec §3.2)
  kHlGauss = 1,  // Gaussian histogram around the clamped scalar target (Farebrother et al. 2024)
};

// Largest supported number of atoms (the kernels keep a few rows of K values on the stack).
constexpr int64_t kMaxAtoms = 4096;
// Largest |v_min|, |v_max| (mtrl.ops.SUPPORT_LIMIT).
constexpr double kSupportLimit = 1e38;
// Smallest atom spacing (v_max - v_min) / (K - 1), relative to max(|v_min|, |v_max|): 2^-20, eight
// float32 ulps, so the atoms are distinct float32 values with room for the projection's rounding
// (a narrower support once lost probability mass; mtrl.ops.MIN_ATOM_SPACING).
constexpr double kMinAtomSpacing = 0x1p-20;
// HL-Gauss sigma range: 1 / (sigma sqrt 2) stays finite and normal in float32 (mtrl.ops.SIGMA_RANGE).
constexpr double kMinSigma = 1e-30;
constexpr double kMaxSigma = 1e30;

template <typename T>
struct TdTargetArgs {
  const T* target_logits = nullptr;  // [E, B, K]
  const T* reward = nullptr;         // [B]
  const T* mask = nullptr;           // [B] bootstrap mask
  const T* discount = nullptr;       // [B], or nullptr to use discount_value for every sample
  double discount_value = 0.99;
  const T* entropy = nullptr;  // [B] alpha * log pi(a'|s'), or nullptr for none
  int64_t num_members = 0;     // E
  int64_t batch_size = 0;      // B
  int64_t num_atoms = 0;       // K
  double v_min = -10.0;
  double v_max = 10.0;
  Combine combine = Combine::kMean;
  Projection projection = Projection::kC51;
  double sigma = 0.0;  // HL-Gauss standard deviation (ignored for C51)
  T* target = nullptr;          // out [B, K]
  T* expected_value = nullptr;  // out [B]: sum_j z_j * target_j
};

template <typename T>
struct CrossEntropyArgs {
  const T* online_logits = nullptr;  // [E, B, K]
  const T* target = nullptr;         // [B, K]
  const T* weight = nullptr;         // [B] importance weights, or nullptr for all ones
  int64_t num_members = 0;
  int64_t batch_size = 0;
  int64_t num_atoms = 0;
  T* td_error = nullptr;  // out [B]: sum over members of the per-sample cross-entropy (unweighted)
  T* grad = nullptr;      // out [E, B, K] d loss / d online_logits, or nullptr to skip it
};

// Throws std::invalid_argument naming the first bad size or support parameter.
void CheckTdTargetSizes(int64_t num_members, int64_t batch_size, int64_t num_atoms, double v_min,
                        double v_max, double sigma);

// Computes the target distribution and its expected value for every sample. Rows whose inputs are
// not finite (NaN/Inf logits, reward, mask, discount or entropy) are filled with NaN and counted;
// the return value is that count (0 on success). Sizes must already be checked. Threads: up to
// num_threads workers over the batch; the result does not depend on num_threads. max_isa caps the
// build of the float kernel: 0 baseline x86-64, 1 AVX2 + FMA, 2 AVX-512 (default: the best the CPU
// runs; tests hold every build to the reference).
template <typename T>
int64_t TdTargetCpuUnchecked(const TdTargetArgs<T>& args, int num_threads, int max_isa = 2);

// Loss = sum_e mean_b weight_b * CE(target_b, softmax(online_logits[e, b])), written to *loss; the
// per-sample sum over members of CE goes to td_error, and when grad is set the gradient
// d loss / d logits = weight_b / B * (softmax * sum(target_b) - target_b) is written in the same
// pass. Returns the number of rows with non-finite logits, targets or weights (their td_error is NaN).
template <typename T>
int64_t CrossEntropyCpuUnchecked(const CrossEntropyArgs<T>& args, int num_threads, double* loss,
                                 int max_isa = 2);

// dst = src * factor over n elements (the backward of the fused loss: the saved gradient times the
// incoming scalar gradient), on up to num_threads threads.
template <typename T>
void ScaleCpuUnchecked(const T* src, T factor, T* dst, int64_t n, int num_threads);

}  // namespace mtrl
