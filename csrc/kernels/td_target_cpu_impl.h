// Row kernels of the CPU TD target and cross-entropy, included by td_target_cpu.cc (baseline ISA)
// and td_target_cpu_avx2.cc (AVX2 + FMA). Everything has internal linkage; see fast_math.h for why.
//
// Reductions over the K atoms use explicit vector types (row_ops.h: max, exp-and-sum, dots); the
// element-wise loops (member mix, C51 bins and masses, gradient) are left to the auto-vectoriser.
// Only the C51 mass scatter is scalar (see ProjectC51).
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/fast_math.h"
#include "kernels/parallel.h"
#include "kernels/row_ops.h"
#include "kernels/td_target.h"

namespace mtrl {
namespace {

inline float Log(float x) { return __builtin_logf(x); }
inline double Log(double x) { return __builtin_log(x); }
inline float Sqrt(float x) { return __builtin_sqrtf(x); }
inline double Sqrt(double x) { return __builtin_sqrt(x); }
template <typename T>
inline bool Finite(T x) {
  return __builtin_isfinite(x);
}
template <typename T>
inline T NaN() {
  return static_cast<T>(__builtin_nan(""));
}

// Per-thread scratch rows, on the stack of the chunk function (no heap use per call).
template <typename T>
struct Scratch {
  T atoms[kMaxAtoms];
  T buf0[kMaxAtoms];
  T buf1[kMaxAtoms];
  T frac[kMaxAtoms + 1];  // HL-Gauss: erf at the K + 1 bin edges
  T mass_lo[kMaxAtoms];   // C51: p_j (1 - frac_j), to bin low_j
  T mass_hi[kMaxAtoms];   // C51: p_j frac_j, to bin low_j + 1
  T y_hi[kMaxAtoms];
  int32_t low[kMaxAtoms];
};

// C51 mass split (spec §3.2): the mass at fractional bin b_j = low_j + frac_j goes p (1 - frac)
// to low_j and p frac to low_j + 1 (frac = 0 on an exact hit, so the whole mass stays on low_j).
// Two branch-free scatter-adds into separate rows (lower and upper shares), then one shifted add:
// consecutive atoms mostly hit different bins, so the read-modify-writes rarely wait on each other.
// Works for bins in any order (any sign of gamma * mask).
template <typename T>
inline void ProjectC51(const int32_t* low, const T* mass_lo, const T* mass_hi, int64_t k, T* y,
                       T* y_hi) {
  std::memset(y, 0, sizeof(T) * k);
  std::memset(y_hi, 0, sizeof(T) * k);
  for (int64_t j = 0; j < k; ++j) {
    y[low[j]] += mass_lo[j];
    y_hi[low[j]] += mass_hi[j];  // belongs to bin low_j + 1 (0 when low_j = K - 1)
  }
  for (int64_t i = 1; i < k; ++i) y[i] += y_hi[i - 1];
}

// Mixed next-state distribution p (combine over members) for sample b; false if not finite.
template <typename T>
inline bool CombineMembers(const TdTargetArgs<T>& a, int64_t b, Scratch<T>& s, const T** p_out) {
  const int64_t e_count = a.num_members, k = a.num_atoms;
  bool ok = true;
  if (a.combine == Combine::kMean) {
    T* p = s.buf0;
    for (int64_t e = 0; e < e_count; ++e) {
      const T* x = a.target_logits + (e * a.batch_size + b) * k;
      const T m = RowMax(x, k);
      T* dst = e == 0 ? p : s.buf1;
      const T sum = ExpSum(x, k, m, dst);
      ok = ok && Finite(m) && Finite(sum);
      const T scale = T(1) / (sum * static_cast<T>(e_count));
      if (e == 0) {
        for (int64_t j = 0; j < k; ++j) p[j] *= scale;
      } else {
        for (int64_t j = 0; j < k; ++j) p[j] += dst[j] * scale;
      }
    }
    *p_out = p;
    return ok;
  }
  // Min: keep the member with the lowest expected value (first one on ties).
  T* best = s.buf0;
  T* cand = s.buf1;
  T best_value = 0, best_sum = 1;
  for (int64_t e = 0; e < e_count; ++e) {
    const T* x = a.target_logits + (e * a.batch_size + b) * k;
    const T m = RowMax(x, k);
    const T sum = ExpSum(x, k, m, e == 0 ? best : cand);
    ok = ok && Finite(m) && Finite(sum);
    if (e == 0) {
      best_value = Dot(s.atoms, best, k) / sum;
      best_sum = sum;
      continue;
    }
    const T value = Dot(s.atoms, cand, k) / sum;
    if (value < best_value) {
      T* tmp = best;
      best = cand;
      cand = tmp;
      best_value = value;
      best_sum = sum;
    }
  }
  const T scale = T(1) / best_sum;
  for (int64_t j = 0; j < k; ++j) best[j] *= scale;
  *p_out = best;
  return ok;
}

template <typename T>
struct TdTargetJob {
  const TdTargetArgs<T>* args;
  int64_t bad_rows;
};

template <typename T>
void TdTargetChunk(void* ctx, int64_t begin, int64_t end) {
  auto* job = static_cast<TdTargetJob<T>*>(ctx);
  const TdTargetArgs<T>& a = *job->args;
  const int64_t k = a.num_atoms;
  const T v_min = static_cast<T>(a.v_min), v_max = static_cast<T>(a.v_max);
  const T dz = static_cast<T>((a.v_max - a.v_min) / static_cast<double>(k - 1));
  const T inv_dz = static_cast<T>(static_cast<double>(k - 1) / (a.v_max - a.v_min));
  const T last = static_cast<T>(k - 1);
  Scratch<T> s;
  for (int64_t j = 0; j < k; ++j) s.atoms[j] = v_min + static_cast<T>(j) * dz;
  int64_t bad = 0;
  for (int64_t b = begin; b < end; ++b) {
    T* y = a.target + b * k;
    const T* p = nullptr;
    bool ok = CombineMembers(a, b, s, &p);
    const T r = a.reward[b];
    const T gamma = a.discount != nullptr ? a.discount[b] : static_cast<T>(a.discount_value);
    const T g = gamma * a.mask[b];
    const T ent = a.entropy != nullptr ? a.entropy[b] : T(0);
    ok = ok && Finite(r) && Finite(g) && Finite(ent);
    if (!ok) {
      for (int64_t j = 0; j < k; ++j) y[j] = NaN<T>();
      a.expected_value[b] = NaN<T>();
      ++bad;
      continue;
    }
    if (a.projection == Projection::kC51 && g == 0) {
      // gamma * mask = 0 (terminal): every atom lands on clip(r); split the total mass once
      // instead of scatter-adding K times into the same two bins.
      T zh = r < v_min ? v_min : (r > v_max ? v_max : r);
      T bj = (zh - v_min) * inv_dz;
      bj = bj > 0 ? bj : T(0);
      bj = bj < last ? bj : last;
      const int32_t l = static_cast<int32_t>(bj);
      const T frac = bj - static_cast<T>(l), total = Sum(p, k);
      std::memset(y, 0, sizeof(T) * k);
      y[l] = total * (1 - frac);
      if (l + 1 < k) y[l + 1] = total * frac;
    } else if (a.projection == Projection::kC51) {
      for (int64_t j = 0; j < k; ++j) {
        T zh = r + g * (s.atoms[j] - ent);  // spec §2.2: z_hat = r + gamma * m * (z - alpha log pi)
        zh = zh < v_min ? v_min : zh;
        zh = zh > v_max ? v_max : zh;
        T bj = (zh - v_min) * inv_dz;
        bj = bj > 0 ? bj : T(0);  // also maps NaN to 0: indices stay in range whatever happens
        bj = bj < last ? bj : last;
        const int32_t l = static_cast<int32_t>(bj);
        const T frac = bj - static_cast<T>(l);
        s.low[j] = l;
        s.mass_lo[j] = p[j] * (1 - frac);
        s.mass_hi[j] = p[j] * frac;
      }
      ProjectC51(s.low, s.mass_lo, s.mass_hi, k, y, s.y_hi);
    } else {
      const T value = Dot(s.atoms, p, k);
      T t = r + g * (value - ent);
      t = t < v_min ? v_min : t;  // clamp first: far outside, erf differences are 0/0
      t = t > v_max ? v_max : t;
      const T inv = T(1) / (static_cast<T>(a.sigma) * Sqrt(T(2)));
      const T edge0 = v_min - dz / 2;
      for (int64_t i = 0; i <= k; ++i) s.frac[i] = FastErf((edge0 + static_cast<T>(i) * dz - t) * inv);
      const T norm = T(1) / (s.frac[k] - s.frac[0]);
      for (int64_t i = 0; i < k; ++i) y[i] = (s.frac[i + 1] - s.frac[i]) * norm;
    }
    a.expected_value[b] = Dot(s.atoms, y, k);
  }
  if (bad != 0) __atomic_fetch_add(&job->bad_rows, bad, __ATOMIC_RELAXED);
}

// Rows per chunk so that one chunk is worth waking a worker for (~16k logits).
inline int64_t MinRowsPerChunk(int64_t members, int64_t atoms) {
  const int64_t per_row = members * atoms;
  return per_row >= 16384 ? 1 : 16384 / per_row;
}

template <typename T>
int64_t TdTargetImpl(const TdTargetArgs<T>& args, int num_threads) {
  TdTargetJob<T> job{&args, 0};
  ParallelFor(args.batch_size, num_threads, MinRowsPerChunk(args.num_members, args.num_atoms),
              &TdTargetChunk<T>, &job);
  return job.bad_rows;
}

template <typename T>
struct CrossEntropyJob {
  const CrossEntropyArgs<T>* args;
  int64_t bad_rows;
};

template <typename T>
void CrossEntropyChunk(void* ctx, int64_t begin, int64_t end) {
  auto* job = static_cast<CrossEntropyJob<T>*>(ctx);
  const CrossEntropyArgs<T>& a = *job->args;
  const int64_t k = a.num_atoms;
  T scratch[kMaxAtoms];
  int64_t bad = 0;
  for (int64_t b = begin; b < end; ++b) {
    const T* y = a.target + b * k;
    const T w = a.weight != nullptr ? a.weight[b] : T(1);
    const T sum_y = Sum(y, k);
    const T coef = w / static_cast<T>(a.batch_size);
    bool ok = Finite(w) && Finite(sum_y);
    T td = 0;
    for (int64_t e = 0; e < a.num_members; ++e) {
      const int64_t row = (e * a.batch_size + b) * k;
      const T* x = a.online_logits + row;
      T* ex = a.grad != nullptr ? a.grad + row : scratch;
      const T m = RowMax(x, k);
      const T s = ExpSum(x, k, m, ex);
      // CE = -sum_j y_j (x_j - m - log s) = (m + log s) * sum(y) - y . x
      const T ce = (m + Log(s)) * sum_y - Dot(y, x, k);
      ok = ok && Finite(m) && Finite(s) && Finite(ce);
      td += ce;
      if (a.grad != nullptr) {
        // d/dx_j [w/B * CE] = w/B * (softmax_j * sum(y) - y_j), written over the exp values.
        const T scale = sum_y / s * coef;
        for (int64_t j = 0; j < k; ++j) ex[j] = ex[j] * scale - y[j] * coef;
      }
    }
    if (!ok) {
      td = NaN<T>();
      ++bad;
    }
    a.td_error[b] = td;
  }
  if (bad != 0) __atomic_fetch_add(&job->bad_rows, bad, __ATOMIC_RELAXED);
}

template <typename T>
int64_t CrossEntropyImpl(const CrossEntropyArgs<T>& args, int num_threads, double* loss) {
  CrossEntropyJob<T> job{&args, 0};
  ParallelFor(args.batch_size, num_threads, MinRowsPerChunk(args.num_members, args.num_atoms),
              &CrossEntropyChunk<T>, &job);
  // Serial reduction in a fixed order: the loss does not depend on the thread count.
  double total = 0.0;
  for (int64_t b = 0; b < args.batch_size; ++b) {
    const double w = args.weight != nullptr ? static_cast<double>(args.weight[b]) : 1.0;
    total += w * static_cast<double>(args.td_error[b]);
  }
  *loss = total / static_cast<double>(args.batch_size);
  return job.bad_rows;
}

template <typename T>
struct ScaleJob {
  const T* src;
  T factor;
  T* dst;
};

template <typename T>
void ScaleChunk(void* ctx, int64_t begin, int64_t end) {
  const auto* job = static_cast<const ScaleJob<T>*>(ctx);
  for (int64_t i = begin; i < end; ++i) job->dst[i] = job->src[i] * job->factor;
}

template <typename T>
void ScaleImpl(const T* src, T factor, T* dst, int64_t n, int num_threads) {
  ScaleJob<T> job{src, factor, dst};
  ParallelFor(n, num_threads, 65536, &ScaleChunk<T>, &job);
}

}  // namespace
}  // namespace mtrl
