// Row kernels of the CPU TD target and cross-entropy, included by td_target_cpu.cc (baseline ISA),
// td_target_cpu_avx2.cc (AVX2 + FMA) and td_target_cpu_avx512.cc. Everything has internal linkage;
// see fast_math.h for why.
//
// Reductions over the K atoms use explicit vector types (row_ops.h: max, exp-and-sum, dots), two
// independent rows at a time where there are two (members of one sample); the element-wise loops
// (member mix, C51 bins and masses, gradient) are left to the auto-vectoriser. In the AVX-512 build
// the C51 projection is one shifted row when gamma * mask is close to 1 (ProjectC51Shift) and a
// vector gather over output bins otherwise (ProjectC51Gather); other builds scatter (ProjectC51).
// The common shapes (two members, K <= 128) run in loops of their own (TdTargetPairRows,
// CrossEntropyPairRows) whose per-sample values stay in registers.
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "kernels/fast_math.h"
#include "kernels/parallel.h"
#include "kernels/row_ops.h"
#include "kernels/td_target.h"

namespace mtrl {
namespace {

inline float Log(float x) { return FastLog(x); }
inline double Log(double x) { return __builtin_log(x); }
inline void Log2(float x0, float x1, float* l0, float* l1) { FastLog2(x0, x1, l0, l1); }
inline void Log2(double x0, double x1, double* l0, double* l1) {
  *l0 = __builtin_log(x0);
  *l1 = __builtin_log(x1);
}
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
// Padding around the rows the C51 gather reads (ProjectC51Gather): at least one vector width.
constexpr int64_t kPad = 48;
// Zero padding on both sides of the row T of ProjectC51Shift: the output reads T up to K + 1 + 2 kW
// atoms before its start and after its end.
constexpr int64_t kShiftPad = kMaxAtoms + 64;

// The padded rows of ProjectC51Shift (float): the row T (AVX-512), or its three weight rows (AVX2,
// see there), kShiftRowStride floats apart.
constexpr int64_t kShiftRowStride = kMaxAtoms + 2 * kShiftPad;
#if defined(__AVX2__) && !defined(__AVX512F__)
constexpr int64_t kShiftRows = 3;
#else
constexpr int64_t kShiftRows = 1;
#endif

template <typename T>
struct Scratch {
  T atoms[kMaxAtoms];
  alignas(64) T pad0[kMaxAtoms + 2 * kPad];  // buf0 and buf1 (the member mix p): zero padding
  T pad1[kMaxAtoms + 2 * kPad];
  T bpos_pad[kMaxAtoms + 2 * kPad];  // C51 gather: fractional bins (padding: far sentinel)
  // C51 shift (float only): the row T (AVX2: three weight rows) with its zero padding.
  alignas(64) T t_pad[sizeof(T) == sizeof(float) ? kShiftRows * kShiftRowStride : 1];
  T* buf0 = pad0 + kPad;  // 64-byte aligned (kPad floats are three cache lines)
  T* t = sizeof(T) == sizeof(float) ? t_pad + kShiftPad : t_pad;
  T* buf1 = pad1 + kPad;
  T* bpos = bpos_pad + kPad;
  T buf2[kMaxAtoms];
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

// Per-chunk state of ProjectC51Gather: the window length for the last g seen (g = gamma * mask
// takes few values, so the double division and span arithmetic run once per distinct g), and
// the split of the clipped masses at the bins of v_min and v_max (the same for every sample).
struct GatherPlan {
  GatherPlan(float v_min, float v_max, float inv_dz, int64_t k) {
    const float last = static_cast<float>(k - 1), ends[2] = {v_min, v_max};
    for (int i = 0; i < 2; ++i) {
      float bj = (ends[i] - v_min) * inv_dz;
      bj = bj > 0.0f ? bj : 0.0f;
      bj = bj < last ? bj : last;
      bin[i] = static_cast<int64_t>(bj);
      frac[i] = bj - static_cast<float>(bin[i]);
    }
    // ProjectC51Shift: the shares of the clipped masses on the output vectors at 0, at
    // kW (K / kW - 1) and at K - kW (the only ones that hold bins 0, 1, K - 2 or K - 1).
    const int64_t starts[3] = {0, kW * (k / kW - 1), k - kW};
    for (int v = 0; v < 3; ++v) {
      for (int lane = 0; lane < kW; ++lane) {
        const int64_t i = starts[v] + lane;
        float share[2];
        for (int e = 0; e < 2; ++e) {
          share[e] = i == bin[e] ? 1.0f - frac[e] : (i == bin[e] + 1 && i < k ? frac[e] : 0.0f);
        }
        clip_share[v][0][lane] = share[0];
        clip_share[v][1][lane] = share[1];
      }
    }
  }
  // [vector][end][lane]: share of the mass clipped at v_min (end 0) or v_max (1) on that bin.
  alignas(64) float clip_share[3][2][kW];
  float g = 0.0f;  // g of the cached window length (0: none yet; gathered samples have g > 0)
  float shift_g = 0.0f;  // g of the cached 1 / g of PlanShift (0: none yet)
  double shift_inv_g = 0.0;
  double shift_spread = 0.0;  // (g - 1) (K - 1) for shift_g
  double inv_g = 0.0;
  int64_t taps = 0;
  int64_t bin[2];  // clipped atoms at v_min (0) and v_max (1): lower bin and fraction
  float frac[2];
};

// The output vectors of ProjectC51Gather (see there), `taps` window atoms each, the window of
// vector v starting at atom jbs[v]; kTaps > 0 fixes that count at compile time (the tap loop then
// unrolls), kTaps = 0 reads it from `taps`. Two output vectors at a time (independent
// accumulators: their add chains interleave); the last vector overlaps the previous one when kW
// does not divide K (same values; its lanes already stored are left out of the expected value).
// Returns the expected value's two accumulators (even / odd vectors) summed.
template <int kTaps>
inline FV GatherOutputs(const float* p, const float* atoms, const float* bpos, const int32_t* jbs,
                        int64_t k, int64_t taps, float* y) {
  const int64_t nt = kTaps > 0 ? kTaps : taps;
  const FV zero = Splat(0.0f), one = Splat(1.0f), iota = LaneIndex();
  auto tap = [&](int64_t jb, FV bins_i, FV acc) {
    const FV d = LoadV(bpos + jb) - bins_i;
    const FV w = one - MinAbsOne(d);  // max(0, 1 - |d|)
    return acc + LoadV(p + jb) * w;
  };
  auto first = [&](int64_t v) { return v * kW + kW > k ? k - kW : v * kW; };
  FV ev_a = zero, ev_b = zero;
  auto store = [&](int64_t v, int64_t i0, FV acc, FV& ev) {
    StoreV(y + i0, acc);
    const FV z = LoadV(atoms + i0) * acc;
    ev += i0 == v * kW ? z : Select(iota + static_cast<float>(i0) >= static_cast<float>(v * kW),
                                     z, zero);
  };
  const int64_t num_vectors = (k + kW - 1) / kW;
  int64_t v = 0;
  for (; v + 2 <= num_vectors; v += 2) {
    const int64_t i0 = first(v), i1 = first(v + 1), jb0 = jbs[v], jb1 = jbs[v + 1];
    const FV bins0 = iota + static_cast<float>(i0), bins1 = iota + static_cast<float>(i1);
    FV acc0 = zero, acc1 = zero;
#pragma GCC unroll 8
    for (int64_t t = 0; t < nt; ++t) {
      acc0 = tap(jb0 + t, bins0, acc0);
      acc1 = tap(jb1 + t, bins1, acc1);
    }
    store(v, i0, acc0, ev_a);
    store(v + 1, i1, acc1, ev_b);
  }
  if (v < num_vectors) {
    const int64_t i0 = first(v), jb0 = jbs[v];
    const FV bins0 = iota + static_cast<float>(i0);
    FV acc0 = zero;
#pragma GCC unroll 8
    for (int64_t t = 0; t < nt; ++t) acc0 = tap(jb0 + t, bins0, acc0);
    store(v, i0, acc0, ev_a);
  }
  return ev_a + ev_b;
}

// The end of a float C51 projection: the clipped atoms all sit at the bin of v_min (0) or of v_max
// (K - 1 up to rounding), so their total masses (the lanes of m_lo, m_hi) are split there as one
// atom each, exactly as the scatter splits every one. Returns the expected value: the lanes of
// ev_v (sum_i z_i y_i over the projected outputs) plus the clipped shares.
inline float AddClipped(FV ev_v, FV m_lo, FV m_hi, const float* atoms, int64_t k,
                        const GatherPlan& plan, float* y) {
  float ev, lo_mass, hi_mass, unused;
  Horizontal4(ev_v, m_lo, m_hi, m_hi, AddV, &ev, &lo_mass, &hi_mass, &unused);
  auto add_clipped = [&](int end, float mass) {
    const int64_t l = plan.bin[end];
    const float frac = plan.frac[end];
    const float lo_share = mass * (1.0f - frac);
    y[l] += lo_share;
    ev += atoms[l] * lo_share;
    if (l + 1 < k) {
      const float hi_share = mass * frac;
      y[l + 1] += hi_share;
      ev += atoms[l + 1] * hi_share;
    }
  };
  add_clipped(0, lo_mass);
  add_clipped(1, hi_mass);
  return ev;
}

// C51 projection as a gather (float): output bin i collects sum_j p_j max(0, 1 - |b_j - i|)
// over the few atoms j whose fractional bin b_j lies within one bin of i. This is the floor/ceil
// split of spec §3.2 written per output bin (the lower share is the same 1 - frac; the upper one is
// 1 - (l + 1 - b_j), equal to frac up to one rounding), computed kW bins at a time with no
// scatter. Applies when gamma * mask = g > 0, so the bins are non-decreasing in j (every step of
// b_j is monotone): atoms clipped to v_min / v_max form a prefix / suffix whose masses are split
// once at the bins of v_min / v_max, and for the others b_j = c + g j up to rounding, so the atoms near the bins
// [i0, i0 + kW) are a window [jb + lane, jb + lane + T) located from c and g (with a margin: atoms
// outside the hat get weight exactly 0, so a wider window changes nothing, not even the rounding).
// Returns false, writing nothing, when it does not apply (K < kW, or g so far from 1 that the
// windows get long); the caller then scatters. On success *expected_value = sum_i z_i y_i, summed
// from the output vectors still in registers and the clipped shares (reading y back right after
// its overlapping stores and scalar updates would stall on store forwarding).
inline bool ProjectC51Gather(const float* p, const float* atoms, int64_t k, float r, float g,
                             float ent, float v_min, float v_max, float inv_dz, float* bpos,
                             float* y, float* expected_value, GatherPlan* plan) {
  // With 8 lanes (AVX2) or 4 (SSE2) the windows cost more than the scatter they replace (measured:
  // ~1.15x slower at K = 101 with AVX2); with 16 (AVX-512) bins + projection take ~1.3x less time.
  if (kW < 16 || k < kW || !(g > 0.0f)) return false;
  const double gd = g, w1 = kW - 1;
  // Lane L (bin i0 + L) needs the atoms j in ((i0 + L - 1 - c) / g, (i0 + L + 1 - c) / g). In lane
  // coordinates u = j - L both bounds are affine in L, so over a vector the window is
  // [u_lo, u_hi] with u_lo from L = 0 (g <= 1) or L = kW - 1 (g > 1), u_hi from the other end,
  // plus a margin of 0.05 atoms (b_j deviates from c + g j by float rounding only, ~1e-5 bins).
  // Its length does not depend on i0: every vector runs the same `taps` iterations (a fixed trip
  // count; surplus atoms get weight exactly 0, and adding those +0 terms changes no bit).
  if (g != plan->g) {
    const double inv = 1.0 / gd;
    const double span = (gd <= 1.0 ? (w1 + 2.0) * inv - w1 : (2.0 - w1) * inv + w1) + 0.1;
    // The window starts at the first whole atom at or above its lower end (ceil below), so it
    // holds at most floor(span) + 1 atoms: ceil(u) + floor(span) >= floor(u + span) for any u.
    plan->g = g;
    plan->inv_g = inv;
    plan->taps = static_cast<int64_t>(span) + 1;
  }
  const double inv_g = plan->inv_g;
  const int64_t taps = plan->taps;
  if (taps > kPad - kW) return false;  // g far from 1: long windows, the scatter is cheaper
  const float last = static_cast<float>(k - 1);
  const FV zero = Splat(0.0f), vlast = Splat(last), sentinel = Splat(-4.0f);
  FV m_lo = zero, m_hi = zero;  // masses of the clipped atoms
  // b_j for kW atoms starting at j; adds the clipped masses of the lanes selected by `fresh`.
  // Unclipped lanes have v_min < z < v_max, so (z - v_min) / dz > 0 needs only the upper clamp;
  // clipped lanes store the sentinel (their masses are split below), as before.
  auto bins = [&](int64_t j, IV fresh) {
    const FV z = r + g * (LoadV(atoms + j) - ent);  // spec §2.2: r + gamma * m * (z - alpha log pi)
    const IV low = z <= v_min, high = z >= v_max;  // clipped (NaN-free: the row is finite)
    FV bj = (z - v_min) * inv_dz;
    bj = bj < vlast ? bj : vlast;
    const FV pj = LoadV(p + j);
    m_lo += Select(low & fresh, pj, zero);
    m_hi += Select(high & fresh, pj, zero);
    StoreV(bpos + j, Select(low | high, sentinel, bj));  // clipped: weight 0 in the windows
  };
  const IV all = IV{} == 0;
  int64_t j = 0;
  for (; j + kW <= k; j += kW) bins(j, all);
  if (j < k) bins(k - kW, TailMask(k, j));  // overlapping last vector: same b_j, counted once
  // b_j = c + g j, c = (r + g (v_min - ent) - v_min) / dz (double: the window position only).
  const double c = (static_cast<double>(r) + gd * (static_cast<double>(v_min) - ent) - v_min) *
                   static_cast<double>(inv_dz);
  const double u0 = (gd <= 1.0 ? (-1.0 - c) * inv_g : (w1 - 1.0 - c) * inv_g - w1) - 0.05;
  // Window starts of every output vector (bins [i0, i0 + kW), the last one at K - kW), clamped
  // so that the windows stay inside the padded rows; clipped atoms and the padding weigh 0
  // wherever they fall.
  const double jb_min = -(kW - 1), jb_max = static_cast<double>(k - 1);
  const int64_t num_vectors = (k + kW - 1) / kW;
  int32_t jbs[kMaxAtoms / kW + 8];
#if defined(__AVX512F__)
  // Eight at a time in double vectors: the same fma, ceil and clamps as the scalar loop below,
  // which spends ~10 scalar double operations (two conversions, a rounding) per vector.
  {
    const __m512d step = _mm512_set_pd(7 * kW, 6 * kW, 5 * kW, 4 * kW, 3 * kW, 2 * kW, kW, 0);
    const __m512d last_first = _mm512_set1_pd(static_cast<double>(k - kW));
    const __m512d vu0 = _mm512_set1_pd(u0), vinv_g = _mm512_set1_pd(inv_g);
    const __m512d vjb_min = _mm512_set1_pd(jb_min), vjb_max = _mm512_set1_pd(jb_max);
    for (int64_t v = 0; v < num_vectors; v += 8) {
      __m512d i0 = _mm512_add_pd(_mm512_set1_pd(static_cast<double>(v * kW)), step);
      i0 = _mm512_min_pd(i0, last_first);
      __m512d jb = _mm512_roundscale_pd(_mm512_fmadd_pd(i0, vinv_g, vu0),
                                        _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC);
      jb = _mm512_min_pd(_mm512_max_pd(jb, vjb_min), vjb_max);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(jbs + v), _mm512_cvttpd_epi32(jb));
    }
  }
#else
  for (int64_t v = 0; v < num_vectors; ++v) {
    const int64_t i0 = v * kW + kW > k ? k - kW : v * kW;
    double jb = __builtin_ceil(u0 + static_cast<double>(i0) * inv_g);
    jb = jb < jb_min ? jb_min : jb;
    jbs[v] = static_cast<int32_t>(jb > jb_max ? jb_max : jb);
  }
#endif
  FV ev_v;
  switch (taps) {
    case 2: ev_v = GatherOutputs<2>(p, atoms, bpos, jbs, k, taps, y); break;
    case 3: ev_v = GatherOutputs<3>(p, atoms, bpos, jbs, k, taps, y); break;
    case 4: ev_v = GatherOutputs<4>(p, atoms, bpos, jbs, k, taps, y); break;
    default: ev_v = GatherOutputs<0>(p, atoms, bpos, jbs, k, taps, y); break;
  }
  *expected_value = AddClipped(ev_v, m_lo, m_hi, atoms, k, *plan, y);
  return true;
}
inline bool ProjectC51Gather(const double*, const double*, int64_t, double, double, double, double,
                             double, double, double*, double*, double*, GatherPlan*) {
  return false;  // float64 (validation path): the scatter
}

// C51 projection by a shifted row (float, AVX-512; g = gamma * mask close to 1, as with the usual
// gamma = 0.99 and mask 1). The fractional bins are affine in the atom index, b_j = c + g j (up to
// float rounding, as in ProjectC51Gather), so with one integer d per sample the offsets
// u_j = b_j - j - d = (c - d) + (g - 1) j stay in [-1, 1] over the unclipped atoms whenever
// |g - 1| (K - 1) is below about 2. Atom j then puts its mass on the bins j + d - 1, j + d and
// j + d + 1 only, with the hat weights max(0, 1 - |u_j - s|) of spec §3.2's floor/ceil split
// (s = -1, 0, 1: p max(0, -u), p (1 - |u|), p max(0, u)). Per kW atoms (aligned vectors q), the
// three weight vectors are formed and combined by two lane rotations (valignd) into T_q, lane L of
// which is the whole unclipped mass that lands on bin 16 q + L + d; T is stored at atom positions.
// Output bins [i0, i0 + kW) are then T[i0 - d + L]: two aligned loads and one two-source permute.
// Every load of a row written in the same sample reads back exactly one earlier aligned store
// (an unaligned read of freshly stored vectors cannot be forwarded and waits for the stores to
// retire, which serialises consecutive samples). The clipped atoms, j <= t_lo at v_min and
// j >= t_hi at v_max (from the same affine form; an atom within rounding of a clip boundary gets
// the same result either way: the projection is continuous in b_j there), get no weight; their
// total masses are split at the bins of v_min and v_max as in the gather (AddClipped there; here
// GatherPlan::clip_share, added inside the output vectors that hold those bins).
struct ShiftRow {
  int64_t d = 0;
  // c - d, g - 1; atoms j <= t_lo are clipped at v_min, atoms j >= t_hi at v_max.
  float cf = 0.0f, gm1 = 0.0f, t_lo = 0.0f, t_hi = 0.0f;
};

// The per-sample constants of ProjectC51Shift (depend on r, g, ent only, so they are formed before
// the member softmax and their latency overlaps it); false when the shift does not apply
// (K < kW, g <= 0 or g > 2, or the unclipped u_j do not fit one d). Up to g = 2,
// |c - d| = |u_j - (g - 1) j| <= 1 + |g - 1| (K - 1) <= K for an unclipped atom j, which the clamp
// below relies on; larger g (a discount or mask above 1, never in BRC) leaves at most one or two
// atoms unclipped, and those rows scatter.
inline bool PlanShift(int64_t k, float r, float g, float ent, float v_min, float inv_dz,
                      GatherPlan* plan, ShiftRow* row) {
  if (kW < 8 || k < kW || !(g > 0.0f && g <= 2.0f)) return false;  // AVX-512 and AVX2 builds only
  const double gd = g, kd = static_cast<double>(k);
  if (g != plan->shift_g) {  // g takes few values: one division per distinct g
    plan->shift_g = g;
    plan->shift_inv_g = 1.0 / gd;
    plan->shift_spread = (gd - 1.0) * (kd - 1.0);  // u_{K-1} - u_0
  }
  const double inv_g = plan->shift_inv_g, spread = plan->shift_spread;
  // b_j = c + g j (double: the clip ranges and d only; see ProjectC51Gather).
  const double c = (static_cast<double>(r) + gd * (static_cast<double>(v_min) - ent) - v_min) *
                   static_cast<double>(inv_dz);
  // Clipped at v_min: b_j <= 0, i.e. j <= -c / g; at v_max: b_j >= K - 1, i.e. j >= (K - 1 - c) / g
  // (bins rise with j). Clamped to [-1, K] (a row with NaN inputs is not projected).
  // maxsd / minsd where there is SSE2: the ternaries compiled to branches, and which side a
  // clamp takes follows the sign of the reward (mispredicted about half the time).
  auto clamp = [kd](double t) {
#if defined(__SSE2__)
    const __m128d lo = _mm_max_sd(_mm_set_sd(t), _mm_set_sd(-1.0));  // NaN -> -1
    return _mm_cvtsd_f64(_mm_min_sd(lo, _mm_set_sd(kd)));
#else
    return t < -1.0 ? -1.0 : (t > kd ? kd : t);
#endif
  };
  const double t_lo = clamp(-c * inv_g), t_hi = clamp((kd - 1.0 - c) * inv_g);
  double d = 0.0;
  if (spread >= -1.0 && spread <= 1.0) {
    // u_j = c - d + (g - 1) j spans at most 1 over the whole row: rounding its midpoint fits every
    // atom in [-1, 1]. For |c| > K every atom is clipped (|g - 1| (K - 1) <= 1) and d stays 0,
    // which keeps |d| <= K + 1 (the output reads rely on it).
    if (c >= -kd && c <= kd) d = __builtin_floor(c + 0.5 * spread + 0.5);
  } else {
    // Wider spread: fit d to the unclipped atoms [j_lo, j_hi) only.
    const double j_lo = __builtin_floor(t_lo) + 1.0 < kd ? __builtin_floor(t_lo) + 1.0 : kd;
    double j_hi = __builtin_ceil(t_hi);
    j_hi = j_hi < j_lo ? j_lo : j_hi;
    if (j_lo < j_hi) {
      const double ua = c + (gd - 1.0) * j_lo, ub = c + (gd - 1.0) * (j_hi - 1.0);
      const double lo = ua < ub ? ua : ub, hi = ua < ub ? ub : ua;
      d = __builtin_floor(0.5 * (lo + hi) + 0.5);
      if (!(lo - d >= -1.0 && hi - d <= 1.0)) return false;  // g too far from 1
    }
  }
  row->d = static_cast<int64_t>(d);
  // c - d within [-K - 2, K + 2]: for a row with unclipped atoms it is within K (g <= 2, above);
  // for a row whose atoms are all clipped its value is unused, but |r| beyond ~1e37 made it
  // overflow float to inf, and inf * 0 weights turned the row NaN.
  const double cf = c - d;
  row->cf = static_cast<float>(cf < -kd - 2.0 ? -kd - 2.0 : (cf > kd + 2.0 ? kd + 2.0 : cf));
  row->gm1 = static_cast<float>(gd - 1.0);
  row->t_lo = static_cast<float>(t_lo);
  row->t_hi = static_cast<float>(t_hi);
  return true;
}

// The projection itself (see above), for a row planned by PlanShift. p: the member mix as written
// by CombineMembers (aligned vectors and the last one at K - kW) divided by `scale`; t: a 64-byte
// aligned row with K + 64 zeros on both sides (the vectors at -kW and at the end of the row are
// rewritten per sample, the rest of the padding stays zero).
#if defined(__AVX512F__)
// The first half of ProjectC51Shift: the weights of kW atoms at a time (Step, in order of q), the
// row T stored as it forms, and the clipped masses.
struct ShiftWeights {
  __attribute__((always_inline)) ShiftWeights(const ShiftRow& row, float* t_row)
      : t_lo(_mm512_set1_ps(row.t_lo)), t_hi(_mm512_set1_ps(row.t_hi)),
        gm1(_mm512_set1_ps(row.gm1)), cf(_mm512_set1_ps(row.cf)),
        jv(__builtin_bit_cast(__m512, LaneIndex())), t(t_row) {}

  static __m512 ShiftW1(__m512 cur, __m512 prev) {  // lane L: lane L - 1 of (prev, cur)
    return __builtin_bit_cast(__m512, _mm512_alignr_epi32(__builtin_bit_cast(__m512i, cur),
                                                          __builtin_bit_cast(__m512i, prev), 15));
  }
  static __m512 ShiftWm1(__m512 next, __m512 cur) {  // lane L: lane L + 1 of (cur, next)
    return __builtin_bit_cast(__m512, _mm512_alignr_epi32(__builtin_bit_cast(__m512i, next),
                                                          __builtin_bit_cast(__m512i, cur), 1));
  }

  // Atoms [kW q, kW q + kW) with masses pj; stores T_{q-1}.
  __attribute__((always_inline)) void Step(int64_t q, __m512 pj) {
    const __m512 zero = _mm512_setzero_ps();
    const __mmask16 low = _mm512_cmp_ps_mask(jv, t_lo, _CMP_LE_OQ);
    const __mmask16 high = _mm512_cmp_ps_mask(jv, t_hi, _CMP_GE_OQ);
    const __mmask16 mid = static_cast<__mmask16>(~(low | high));
    const __m512 u = _mm512_fmadd_ps(jv, gm1, cf);  // b_j - j - d, in [-1, 1] where mid
    jv = _mm512_add_ps(jv, _mm512_set1_ps(static_cast<float>(kW)));
    const __m512 pu = _mm512_maskz_mul_ps(mid, pj, u);  // clipped atoms: no weight
    const __m512 w1 = _mm512_max_ps(pu, zero);           // p max(0, u): to bin j + d + 1
    const __m512 apu = _mm512_abs_ps(pu);
    const __m512 w0 = _mm512_maskz_sub_ps(mid, pj, apu);  // p (1 - |u|): to bin j + d
    const __m512 wm1 = _mm512_sub_ps(w1, pu);             // p max(0, -u): to bin j + d - 1
    m_lo = _mm512_mask_add_ps(m_lo, low, m_lo, pj);
    m_hi = _mm512_mask_add_ps(m_hi, high, m_hi, pj);
    // T_{q-1}: lane L collects W_0 of atom 16 (q - 1) + L, W_1 of the atom before, W_-1 of the
    // atom after.
    _mm512_store_ps(t + (q - 1) * kW,
                    _mm512_add_ps(_mm512_add_ps(w0_prev, ShiftW1(w1_prev, w1_prev2)),
                                  ShiftWm1(wm1, wm1_prev)));
    w0_prev = w0;
    w1_prev2 = w1_prev;
    w1_prev = w1;
    wm1_prev = wm1;
  }
  // The atoms [kW full, K) from the last vector of the row (atoms K - kW .. K - 1), K % kW != 0.
  __attribute__((always_inline)) void Last(int64_t k, __m512 p_last) {
    const int64_t full = k / kW, rem = k - full * kW;
    const __m512i iota_i = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i idx = _mm512_add_epi32(iota_i, _mm512_set1_epi32(static_cast<int>(kW - rem)));
    Step(full, _mm512_maskz_permutexvar_ps(static_cast<__mmask16>((1u << rem) - 1u), idx, p_last));
  }
  // After the last Step: T_{nq - 1} (no atoms above) and T_nq (W_1 of the last atom only).
  __attribute__((always_inline)) void Finish(int64_t nq) {
    const __m512 zero = _mm512_setzero_ps();
    _mm512_store_ps(t + (nq - 1) * kW,
                    _mm512_add_ps(_mm512_add_ps(w0_prev, ShiftW1(w1_prev, w1_prev2)),
                                  ShiftWm1(zero, wm1_prev)));
    _mm512_store_ps(t + nq * kW, ShiftW1(zero, w1_prev));
  }

  __m512 t_lo, t_hi, gm1, cf;
  __m512 jv;  // atom indices of the next vector
  __m512 m_lo = _mm512_setzero_ps(), m_hi = _mm512_setzero_ps();  // clipped masses
  // W_0, W_1 of vector q - 1, W_1 of q - 2 and W_-1 of q - 1, carried from Step to Step.
  __m512 w0_prev = _mm512_setzero_ps(), w1_prev = _mm512_setzero_ps();
  __m512 w1_prev2 = _mm512_setzero_ps(), wm1_prev = _mm512_setzero_ps();
  float* t;
};

// The second half of ProjectC51Shift: output bins [i0, i0 + kW) = scale T[i0 - d .. i0 - d + kW),
// read from the vectors of T at base and base + kW (base = i0 - d rounded down to a vector), lanes
// from o = i0 - d - base on. |d| <= K + 1 (some atom is unclipped, or d = 0), so the reads stay
// inside the padding of t. The clipped masses are added to their bins (GatherPlan::clip_share)
// before each vector's expected-value terms.
template <int kFull>
__attribute__((always_inline)) inline void ShiftOutputs(const ShiftWeights& w, float scale,
                                                        const float* atoms, int64_t k,
                                                        const ShiftRow& row, const float* t,
                                                        float* y, float* expected_value,
                                                        const GatherPlan& plan) {
  const int64_t full = kFull > 0 ? kFull : k / kW, nq = (k + kW - 1) / kW;
  const __m512 zero = _mm512_setzero_ps(), vscale = _mm512_set1_ps(scale);
  const __m512i iota_i = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  // The clipped masses (times scale) in every lane, added to the bins of v_min and v_max in the
  // output vectors that hold them (GatherPlan::clip_share), before their expected-value terms.
  auto all_lanes_sum = [](__m512 v) {
    v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
    v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
    v = _mm512_add_ps(v, _mm512_permute_ps(v, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm512_add_ps(v, _mm512_permute_ps(v, _MM_SHUFFLE(2, 3, 0, 1)));
  };
  const __m512 mass_lo = _mm512_mul_ps(all_lanes_sum(w.m_lo), vscale);
  const __m512 mass_hi = _mm512_mul_ps(all_lanes_sum(w.m_hi), vscale);
  __m512 ev_a = zero, ev_b = zero;
  auto out = [&](int64_t i0, int64_t base, __m512i idx, __m512& ev, __mmask16 keep, int clip) {
    __m512 acc = _mm512_mul_ps(
        _mm512_permutex2var_ps(_mm512_load_ps(t + base), idx, _mm512_load_ps(t + base + kW)),
        vscale);
    if (clip >= 0) {
      acc = _mm512_fmadd_ps(_mm512_load_ps(plan.clip_share[clip][0]), mass_lo, acc);
      acc = _mm512_fmadd_ps(_mm512_load_ps(plan.clip_share[clip][1]), mass_hi, acc);
    }
    _mm512_storeu_ps(y + i0, acc);
    ev = _mm512_mask3_fmadd_ps(_mm512_loadu_ps(atoms + i0), acc, ev, keep);
  };
  const int64_t base0 = (-row.d) & ~static_cast<int64_t>(kW - 1);  // floor(-d / kW) kW
  const __m512i idx0 =
      _mm512_add_epi32(iota_i, _mm512_set1_epi32(static_cast<int>(-row.d - base0)));
  // Vector 0 and vector full - 1 hold shares (clip_share 0 and 1; the same vector when full = 1).
  auto clip_of = [&](int64_t v) { return v == full - 1 ? 1 : (v == 0 ? 0 : -1); };
  int64_t v = 0;
#pragma GCC unroll 4
  for (; v + 2 <= full; v += 2) {
    out(v * kW, base0 + v * kW, idx0, ev_a, 0xffff, clip_of(v));
    out(v * kW + kW, base0 + v * kW + kW, idx0, ev_b, 0xffff, clip_of(v + 1));
  }
  if (v < full) out(v * kW, base0 + v * kW, idx0, ev_a, 0xffff, clip_of(v));
  if (full < nq) {  // the last vector overlaps the previous one: its new lanes only
    const int64_t src = k - kW - row.d, base = src & ~static_cast<int64_t>(kW - 1);
    out(k - kW, base, _mm512_add_epi32(iota_i, _mm512_set1_epi32(static_cast<int>(src - base))),
        ev_b, static_cast<__mmask16>(0xffffu << (kW - (k - full * kW))), 2);
  }
  *expected_value = _mm512_cvtss_f32(all_lanes_sum(_mm512_add_ps(ev_a, ev_b)));
}

// kFull > 0: K / kW fixed at compile time (the vector loops unroll and the carried vectors stay in
// registers without copies); 0: read from k.
template <int kFull>
__attribute__((always_inline)) inline void ProjectC51ShiftRows(const float* p, float scale,
                                                               const float* atoms, int64_t k,
                                                               const ShiftRow& row, float* t,
                                                               float* y, float* expected_value,
                                                               const GatherPlan& plan) {
  const int64_t full = kFull > 0 ? kFull : k / kW, nq = (k + kW - 1) / kW;
  ShiftWeights w(row, t);
#pragma GCC unroll 8
  for (int64_t q = 0; q < full; ++q) w.Step(q, _mm512_load_ps(p + q * kW));
  if (full < nq) w.Last(k, _mm512_loadu_ps(p + k - kW));
  w.Finish(nq);
  ShiftOutputs<kFull>(w, scale, atoms, k, row, t, y, expected_value, plan);
}
__attribute__((noinline)) void ProjectC51Shift(const float* p, float scale, const float* atoms,
                                               int64_t k, const ShiftRow& row, float* t, float* y,
                                               float* expected_value, const GatherPlan& plan) {
  switch (k / kW) {
#define MTRL_SHIFT_CASE(n) \
  case n: return ProjectC51ShiftRows<n>(p, scale, atoms, k, row, t, y, expected_value, plan);
    MTRL_SHIFT_CASE(1) MTRL_SHIFT_CASE(2) MTRL_SHIFT_CASE(3) MTRL_SHIFT_CASE(4)
    MTRL_SHIFT_CASE(5) MTRL_SHIFT_CASE(6) MTRL_SHIFT_CASE(7) MTRL_SHIFT_CASE(8)
#undef MTRL_SHIFT_CASE
    default: return ProjectC51ShiftRows<0>(p, scale, atoms, k, row, t, y, expected_value, plan);
  }
}
#elif defined(__AVX2__)
// The AVX2 + FMA form of the same projection (8 lanes): the same weights, and per bin the same
// sum in the same order, as the AVX-512 code above (bitwise the same bins; the clipped masses and
// the expected value are reduced over 8 lanes instead of 16, so their rounding differs). Instead of
// forming T in registers (a one-lane rotation across two vectors is two shuffles with AVX2), the
// weights W_0, W_1, W_-1 of every atom are stored in three rows at atom positions (t, t + S,
// t + 2 S with S = kShiftRowStride, zero-padded like T) and an output vector reads
// T[i - d + L] = (W_0[i - d + L] + W_1[i - d + L - 1]) + W_-1[i - d + L + 1] with three unaligned
// loads. Those loads span vectors just stored and cannot be store-forwarded; on AMD Zen 3 that
// cost less than the shuffles (4 per vector for T's rotations, 3 per output vector to align T).
struct ShiftWeights {
  __attribute__((always_inline)) ShiftWeights(const ShiftRow& row, float* t_row)
      : t_lo(_mm256_set1_ps(row.t_lo)), t_hi(_mm256_set1_ps(row.t_hi)),
        gm1(_mm256_set1_ps(row.gm1)), cf(_mm256_set1_ps(row.cf)),
        jv(__builtin_bit_cast(__m256, LaneIndex())), t(t_row) {}

  // Atoms [kW q, kW q + kW) with masses pj: their weights to the rows.
  __attribute__((always_inline)) void Step(int64_t q, __m256 pj) {
    const __m256 zero = _mm256_setzero_ps();
    const __m256 low = _mm256_cmp_ps(jv, t_lo, _CMP_LE_OQ);
    const __m256 high = _mm256_cmp_ps(jv, t_hi, _CMP_GE_OQ);
    const __m256 clipped = _mm256_or_ps(low, high);
    const __m256 u = _mm256_fmadd_ps(jv, gm1, cf);  // b_j - j - d, in [-1, 1] where not clipped
    jv = _mm256_add_ps(jv, _mm256_set1_ps(static_cast<float>(kW)));
    // Clipped atoms get no weight: their p is zeroed once (the AVX-512 code masks pu and w0; the
    // weights are the same, +0 in clipped lanes: u is finite, 0 u = -0 at worst and every weight
    // formed from it below is +0).
    const __m256 pm = _mm256_andnot_ps(clipped, pj);
    const __m256 pu = _mm256_mul_ps(pm, u);
    const __m256 w1 = _mm256_max_ps(pu, zero);  // to bin j + d + 1
    const __m256 apu = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), pu);
    const __m256 w0 = _mm256_sub_ps(pm, apu);  // to bin j + d
    const __m256 wm1 = _mm256_sub_ps(w1, pu);  // to bin j + d - 1
    m_lo = _mm256_add_ps(m_lo, _mm256_and_ps(low, pj));
    m_hi = _mm256_add_ps(m_hi, _mm256_and_ps(high, pj));
    _mm256_store_ps(t + q * kW, w0);
    _mm256_store_ps(t + kShiftRowStride + q * kW, w1);
    _mm256_store_ps(t + 2 * kShiftRowStride + q * kW, wm1);
  }
  // The atoms [kW full, K) from the last vector of the row (atoms K - kW .. K - 1), K % kW != 0.
  __attribute__((always_inline)) void Last(int64_t k, __m256 p_last) {
    const int64_t full = k / kW, rem = k - full * kW;
    const __m256i iota_i = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i idx = _mm256_add_epi32(iota_i, _mm256_set1_epi32(static_cast<int>(kW - rem)));
    const __m256 keep = _mm256_castsi256_ps(
        _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(rem)), iota_i));
    Step(full, _mm256_and_ps(keep, _mm256_permutevar8x32_ps(p_last, idx)));
  }
  __attribute__((always_inline)) void Finish(int64_t) {}  // the rows are complete

  __m256 t_lo, t_hi, gm1, cf;
  __m256 jv;  // atom indices of the next vector
  __m256 m_lo = _mm256_setzero_ps(), m_hi = _mm256_setzero_ps();  // clipped masses
  float* t;
};

// The sum of the 8 lanes in every lane.
__attribute__((always_inline)) inline __m256 AllLanesSum8(__m256 v) {
  v = _mm256_add_ps(v, _mm256_permute2f128_ps(v, v, 0x01));
  v = _mm256_add_ps(v, _mm256_permute_ps(v, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm256_add_ps(v, _mm256_permute_ps(v, _MM_SHUFFLE(2, 3, 0, 1)));
}

// Output bins [i0, i0 + kW) = scale T[i0 - d .. i0 - d + kW) (see the AVX-512 ShiftOutputs), T
// summed from the three weight rows (see ShiftWeights). |d| <= K + 1 keeps the reads inside the
// rows' padding.
template <int kFull>
__attribute__((always_inline)) inline void ShiftOutputs(const ShiftWeights& w, float scale,
                                                        const float* atoms, int64_t k,
                                                        const ShiftRow& row, const float* t,
                                                        float* y, float* expected_value,
                                                        const GatherPlan& plan) {
  const int64_t full = kFull > 0 ? kFull : k / kW, nq = (k + kW - 1) / kW;
  const __m256 zero = _mm256_setzero_ps(), vscale = _mm256_set1_ps(scale);
  const __m256 mass_lo = _mm256_mul_ps(AllLanesSum8(w.m_lo), vscale);
  const __m256 mass_hi = _mm256_mul_ps(AllLanesSum8(w.m_hi), vscale);
  // Bin i of the output: W_0[i - d], W_1[i - d - 1], W_-1[i - d + 1].
  const float* w0 = t - row.d;
  const float* w1 = t + kShiftRowStride - row.d - 1;
  const float* wm1 = t + 2 * kShiftRowStride - row.d + 1;
  __m256 ev_a = zero, ev_b = zero;
  // keep: nullptr for a whole new vector, else the lanes that enter the expected value.
  auto out = [&](int64_t i0, __m256& ev, const __m256* keep, int clip)
                 __attribute__((always_inline)) {
    const __m256 tv = _mm256_add_ps(
        _mm256_add_ps(_mm256_loadu_ps(w0 + i0), _mm256_loadu_ps(w1 + i0)),
        _mm256_loadu_ps(wm1 + i0));
    __m256 acc = _mm256_mul_ps(tv, vscale);
    if (clip >= 0) {
      acc = _mm256_fmadd_ps(_mm256_load_ps(plan.clip_share[clip][0]), mass_lo, acc);
      acc = _mm256_fmadd_ps(_mm256_load_ps(plan.clip_share[clip][1]), mass_hi, acc);
    }
    _mm256_storeu_ps(y + i0, acc);
    const __m256 sum = _mm256_fmadd_ps(_mm256_loadu_ps(atoms + i0), acc, ev);
    ev = keep == nullptr ? sum : _mm256_blendv_ps(ev, sum, *keep);
  };
  auto clip_of = [&](int64_t v) { return v == full - 1 ? 1 : (v == 0 ? 0 : -1); };
  int64_t v = 0;
#pragma GCC unroll 8
  for (; v + 2 <= full; v += 2) {
    out(v * kW, ev_a, nullptr, clip_of(v));
    out(v * kW + kW, ev_b, nullptr, clip_of(v + 1));
  }
  if (v < full) out(v * kW, ev_a, nullptr, clip_of(v));
  if (full < nq) {  // the last vector overlaps the previous one: its new lanes only
    const __m256i iota_i = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
        iota_i, _mm256_set1_epi32(static_cast<int>(kW - (k - full * kW)) - 1)));
    out(k - kW, ev_b, &keep, 2);
  }
  *expected_value = _mm256_cvtss_f32(AllLanesSum8(_mm256_add_ps(ev_a, ev_b)));
}

template <int kFull>
__attribute__((always_inline)) inline void ProjectC51ShiftRows(const float* p, float scale,
                                                               const float* atoms, int64_t k,
                                                               const ShiftRow& row, float* t,
                                                               float* y, float* expected_value,
                                                               const GatherPlan& plan) {
  const int64_t full = kFull > 0 ? kFull : k / kW, nq = (k + kW - 1) / kW;
  ShiftWeights w(row, t);
#pragma GCC unroll 16
  for (int64_t q = 0; q < full; ++q) w.Step(q, _mm256_load_ps(p + q * kW));
  if (full < nq) w.Last(k, _mm256_loadu_ps(p + k - kW));
  w.Finish(nq);
  ShiftOutputs<kFull>(w, scale, atoms, k, row, t, y, expected_value, plan);
}
__attribute__((noinline)) void ProjectC51Shift(const float* p, float scale, const float* atoms,
                                               int64_t k, const ShiftRow& row, float* t, float* y,
                                               float* expected_value, const GatherPlan& plan) {
  switch (k / kW) {
#define MTRL_SHIFT_CASE(n) \
  case n: return ProjectC51ShiftRows<n>(p, scale, atoms, k, row, t, y, expected_value, plan);
    MTRL_SHIFT_CASE(1) MTRL_SHIFT_CASE(2) MTRL_SHIFT_CASE(3) MTRL_SHIFT_CASE(4)
    MTRL_SHIFT_CASE(5) MTRL_SHIFT_CASE(6) MTRL_SHIFT_CASE(7) MTRL_SHIFT_CASE(8)
    MTRL_SHIFT_CASE(9) MTRL_SHIFT_CASE(10) MTRL_SHIFT_CASE(11) MTRL_SHIFT_CASE(12)
    MTRL_SHIFT_CASE(13) MTRL_SHIFT_CASE(14) MTRL_SHIFT_CASE(15) MTRL_SHIFT_CASE(16)
#undef MTRL_SHIFT_CASE
    default: return ProjectC51ShiftRows<0>(p, scale, atoms, k, row, t, y, expected_value, plan);
  }
}
#else
void ProjectC51Shift(const float*, float, const float*, int64_t, const ShiftRow&, float*, float*,
                     float*, const GatherPlan&) {}  // never called: PlanShift declines below 8 lanes
#endif

// Mixed next-state distribution p (combine over members) for sample b; false if not finite.
// With `deferred` set, the E = 2 register path may write p / scale instead of p and set *deferred
// to scale (the normalising division then runs beside the projection instead of before it; the
// caller multiplies the projected row by scale); otherwise *deferred = 1.
// The after / emit callbacks of the register-row helpers (row_ops.h: ExpSumRegs2 and its fused
// variants) for the target's two-member mean: after(s0, s1) forms the mix coefficients
// 1 / (2 s0), 1 / (2 s1), or, with `deferred`, s1 and s0 with the division 1 / (2 s0 s1) left in
// *deferred for the projection; emit(j, e0, e1) stores one vector of the mixed row p. Passed as
// std::ref(sink) for both callbacks, so the coefficients after() forms are the ones emit() uses.
struct MemberMixSink {
  float* p;
  float* deferred;  // nullptr: divide in after()
  FV c0{}, c1{};
  void operator()(float t0, float t1) {
    if (deferred != nullptr) {  // p = (e0 s1 + e1 s0) / (2 s0 s1)
      c0 = Splat(t1);
      c1 = Splat(t0);
      *deferred = 1.0f / (2.0f * t0 * t1);
      return;
    }
    float q0, q1;
    Div2(1.0f, 1.0f, t0 * 2.0f, t1 * 2.0f, &q0, &q1);
    c0 = Splat(q0);
    c1 = Splat(q1);
  }
  void operator()(int64_t j, FV e0, FV e1) { StoreV(p + j, e0 * c0 + e1 * c1); }
};

// The same callbacks for the loss gradient of a member pair, w / B (softmax sum(y) - y) written
// from the exps in registers into g0, g1; *sum_y is read when after() runs (the fused helpers
// compute it first).
struct PairGradientSink {
  const float* y;
  float coef;  // w / B
  const float* sum_y;
  float* g0;
  float* g1;
  FV c0{}, c1{};
  void operator()(float t0, float t1) {
    float q0, q1;
    Div2(*sum_y, *sum_y, t0, t1, &q0, &q1);
    c0 = Splat(q0 * coef);
    c1 = Splat(q1 * coef);
  }
  void operator()(int64_t j, FV e0, FV e1) {
    const FV yc = LoadV(y + j) * coef;
    StoreV(g0 + j, FusedMulSub(e0, c0, yc));
    StoreV(g1 + j, FusedMulSub(e1, c1, yc));
  }
};

template <typename T>
inline bool CombineMembers(const TdTargetArgs<T>& a, int64_t b, Scratch<T>& s, const T** p_out,
                           T* deferred = nullptr) {
  if (deferred != nullptr) *deferred = T(1);
  const int64_t e_count = a.num_members, k = a.num_atoms;
  bool ok = true;
  if (a.combine == Combine::kMean) {
    // p = sum_e softmax_e / E, members two at a time (ExpSum2: the two rows' chains interleave).
    T* p = s.buf0;
    int64_t e = 0;
    for (; e + 2 <= e_count; e += 2) {
      const T* x0 = a.target_logits + (e * a.batch_size + b) * k;
      const T* x1 = x0 + a.batch_size * k;
      T* ex0 = e == 0 ? p : s.buf1;
      T m0, m1, sum0, sum1;
      RowMax2(x0, x1, k, &m0, &m1);
      if constexpr (sizeof(T) == sizeof(float)) {
        if (e_count == 2 && RegisterRows(k)) {  // exps in registers up to the member mix
          MemberMixSink mix{p, deferred};
          ExpSumRegs(x0, x1, k, m0, m1, &sum0, &sum1, std::ref(mix), std::ref(mix));
          ok = ok && Finite(m0) && Finite(sum0) && Finite(m1) && Finite(sum1);
          *p_out = p;
          return ok;
        }
      }
      ExpSum2(x0, x1, k, m0, m1, ex0, s.buf2, &sum0, &sum1);
      ok = ok && Finite(m0) && Finite(sum0) && Finite(m1) && Finite(sum1);
      const T scale0 = T(1) / (sum0 * static_cast<T>(e_count));
      const T scale1 = T(1) / (sum1 * static_cast<T>(e_count));
      if (e == 0) {
        for (int64_t j = 0; j < k; ++j) p[j] = p[j] * scale0 + s.buf2[j] * scale1;
      } else {
        for (int64_t j = 0; j < k; ++j) p[j] = (p[j] + ex0[j] * scale0) + s.buf2[j] * scale1;
      }
    }
    if (e < e_count) {
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

// Per-chunk constants of the TD-target rows.
template <typename T>
struct RowConsts {
  explicit RowConsts(const TdTargetArgs<T>& a)
      : k(a.num_atoms),
        v_min(static_cast<T>(a.v_min)),
        v_max(static_cast<T>(a.v_max)),
        dz(static_cast<T>((a.v_max - a.v_min) / static_cast<double>(k - 1))),
        inv_dz(static_cast<T>(static_cast<double>(k - 1) / (a.v_max - a.v_min))),
        last(static_cast<T>(k - 1)) {}
  int64_t k;
  T v_min, v_max, dz, inv_dz, last;
};

// The projection of sample b's mix p (finite inputs) other than the shifted one: terminal
// samples (gamma * mask = 0), the C51 gather or scatter, HL-Gauss; writes the target row and the
// expected value.
template <typename T>
__attribute__((noinline)) void ProjectRow(const TdTargetArgs<T>& a, int64_t b, const T* p, T r,
                                          T g, T ent, const RowConsts<T>& c, Scratch<T>& s,
                                          GatherPlan& plan) {
  const int64_t k = c.k;
  const T v_min = c.v_min, v_max = c.v_max, dz = c.dz, inv_dz = c.inv_dz, last = c.last;
  T* y = a.target + b * k;
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
  } else if (a.projection == Projection::kC51 &&
             ProjectC51Gather(p, s.atoms, k, r, g, ent, v_min, v_max, inv_dz, s.bpos, y,
                              &a.expected_value[b], &plan)) {
    return;  // gathered, expected value included
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

// TdTargetChunk's rows for two members (mean), the C51 projection and K in RegisterRows (NV
// vectors): the same arithmetic as its general loop (CombineMembers' register path, then the
// projection), in a loop of their own whose per-sample values stay in registers. Returns the count
// of bad rows.
template <int NV>
__attribute__((noinline)) int64_t TdTargetPairRows(const TdTargetArgs<float>& a, int64_t begin,
                                                   int64_t end, const RowConsts<float>& c,
                                                   Scratch<float>& s, GatherPlan& plan) {
  const int64_t k = c.k, member = a.batch_size * k;
  float* p = s.buf0;
  int64_t bad = 0;
  for (int64_t b = begin; b < end; ++b) {
    const float r = a.reward[b];
    const float gamma =
        a.discount != nullptr ? a.discount[b] : static_cast<float>(a.discount_value);
    const float g = gamma * a.mask[b];
    const float ent = a.entropy != nullptr ? a.entropy[b] : 0.0f;
    ShiftRow shift;
    const bool shifted = PlanShift(k, r, g, ent, c.v_min, c.inv_dz, &plan, &shift);
    const float* x0 = a.target_logits + b * k;
    const float* x1 = x0 + member;
    float m0, m1, sum0, sum1, scale = 1.0f;
    // Shifted rows: the mix's division comes after the projection (scale).
    MemberMixSink mix{p, shifted ? &scale : nullptr};
    MaxExpSumRegs2<NV>(x0, x1, k, &m0, &m1, &sum0, &sum1, std::ref(mix), std::ref(mix));
    const bool ok = Finite(m0) && Finite(sum0) && Finite(m1) && Finite(sum1) && Finite(r) &&
                    Finite(g) && Finite(ent);
    if (!ok) {
      float* y = a.target + b * k;
      for (int64_t j = 0; j < k; ++j) y[j] = NaN<float>();
      a.expected_value[b] = NaN<float>();
      ++bad;
      continue;
    }
    if (shifted) {
      ProjectC51Shift(p, scale, s.atoms, k, shift, s.t, a.target + b * k, &a.expected_value[b],
                      plan);
    } else {
      ProjectRow(a, b, p, r, g, ent, c, s, plan);
    }
  }
  return bad;
}

template <typename T>
void TdTargetChunk(void* ctx, int64_t begin, int64_t end) {
  auto* job = static_cast<TdTargetJob<T>*>(ctx);
  const TdTargetArgs<T>& a = *job->args;
  const RowConsts<T> c(a);
  const int64_t k = c.k;
  const T v_min = c.v_min, inv_dz = c.inv_dz;
  Scratch<T> s;
  for (int64_t j = 0; j < k; ++j) s.atoms[j] = v_min + static_cast<T>(j) * c.dz;
  for (int64_t j = 0; j < kPad; ++j) {  // zeros around p, a far sentinel around the bins
    s.buf0[-1 - j] = s.buf0[k + j] = s.buf1[-1 - j] = s.buf1[k + j] = T(0);
    s.bpos[-1 - j] = s.bpos[k + j] = T(-4);
  }
  GatherPlan plan(static_cast<float>(v_min), static_cast<float>(c.v_max),
                  static_cast<float>(inv_dz), k);
  int64_t bad = 0;
  if constexpr (sizeof(T) == sizeof(float)) {
    for (int64_t j = 0; j < k + 64; ++j) s.t[-1 - j] = s.t[k + j] = T(0);
    for (int64_t row = 1; row < kShiftRows; ++row) {  // AVX2: the rows of W_1 and W_-1
      T* t = s.t + row * kShiftRowStride;
      for (int64_t j = 0; j < k + 64; ++j) t[-1 - j] = t[k + j] = T(0);
    }
    if (a.num_members == 2 && a.combine == Combine::kMean &&
        a.projection == Projection::kC51 && RegisterRows(k)) {
      switch ((k + kW - 1) / kW) {
        case 2: bad = TdTargetPairRows<2>(a, begin, end, c, s, plan); break;
        case 3: bad = TdTargetPairRows<3>(a, begin, end, c, s, plan); break;
        case 4: bad = TdTargetPairRows<4>(a, begin, end, c, s, plan); break;
        case 5: bad = TdTargetPairRows<5>(a, begin, end, c, s, plan); break;
        case 6: bad = TdTargetPairRows<6>(a, begin, end, c, s, plan); break;
        case 7: bad = TdTargetPairRows<7>(a, begin, end, c, s, plan); break;
#define MTRL_CASE(n) case n: bad = TdTargetPairRows<n>(a, begin, end, c, s, plan); break;
        MTRL_WIDE_ROW_CASES(MTRL_CASE)
#undef MTRL_CASE
        default: bad = TdTargetPairRows<kMaxRowVectors>(a, begin, end, c, s, plan); break;
      }
      if (bad != 0) __atomic_fetch_add(&job->bad_rows, bad, __ATOMIC_RELAXED);
      return;
    }
  }
  for (int64_t b = begin; b < end; ++b) {
    T* y = a.target + b * k;
    const T r = a.reward[b];
    const T gamma = a.discount != nullptr ? a.discount[b] : static_cast<T>(a.discount_value);
    const T g = gamma * a.mask[b];
    const T ent = a.entropy != nullptr ? a.entropy[b] : T(0);
    ShiftRow shift;
    bool shifted = false;
    if constexpr (sizeof(T) == sizeof(float)) {
      shifted = a.projection == Projection::kC51 &&
                PlanShift(k, r, g, ent, v_min, inv_dz, &plan, &shift);
    }
    const T* p = nullptr;
    T scale = T(1);
    bool ok = CombineMembers(a, b, s, &p, shifted ? &scale : nullptr);
    ok = ok && Finite(r) && Finite(g) && Finite(ent);
    if (!ok) {
      for (int64_t j = 0; j < k; ++j) y[j] = NaN<T>();
      a.expected_value[b] = NaN<T>();
      ++bad;
      continue;
    }
    if (shifted) {
      if constexpr (sizeof(T) == sizeof(float)) {
        ProjectC51Shift(p, scale, s.atoms, k, shift, s.t, y, &a.expected_value[b], plan);
      }
    } else {
      ProjectRow(a, b, p, r, g, ent, c, s, plan);
    }
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

// CrossEntropyChunk's rows for exactly two members with the gradient, K in RegisterRows (NV
// vectors): the same operations in the same order as its general loop (bitwise the same results),
// in a loop of their own whose per-sample scalars never leave registers (in the general loop the
// non-inlined calls of its other paths keep them on the stack). Returns the count of bad rows.
template <int NV>
__attribute__((noinline)) int64_t CrossEntropyPairRows(const CrossEntropyArgs<float>& a,
                                                       int64_t begin, int64_t end) {
  const int64_t k = a.num_atoms, member = a.batch_size * k;
  const float batch = static_cast<float>(a.batch_size), unit_coef = 1.0f / batch;
  int64_t bad = 0;
  for (int64_t b = begin; b < end; ++b) {
    const float* y = a.target + b * k;
    const float w = a.weight != nullptr ? a.weight[b] : 1.0f;
    const float coef = a.weight != nullptr ? w / batch : unit_coef;
    const float* x0 = a.online_logits + b * k;
    const float* x1 = x0 + member;
    float* g0 = a.grad + b * k;
    float* g1 = g0 + member;
    float m0, m1, d0, d1, sum_y, s0, s1;
    PairGradientSink grad{y, coef, &sum_y, g0, g1};
    MaxDotExpSumRegs2<NV>(x0, x1, y, k, &m0, &m1, &d0, &d1, &sum_y, &s0, &s1, std::ref(grad),
                          std::ref(grad));
    float log0, log1;
    Log2(s0, s1, &log0, &log1);
    const float ce0 = (m0 + log0) * sum_y - d0, ce1 = (m1 + log1) * sum_y - d1;
    const bool ok = Finite(w) && Finite(m0) && Finite(s0) && Finite(ce0) && Finite(m1) &&
                    Finite(s1) && Finite(ce1) && Finite(sum_y);
    float td = 0.0f;
    td += ce0;
    td += ce1;
    if (!ok) {
      td = NaN<float>();
      ++bad;
    }
    a.td_error[b] = td;
  }
  return bad;
}

// CrossEntropyChunk's rows for exactly two members with the gradient in the builds whose row
// pairs do not stay in registers (AVX2 and baseline; LossRegisterRows is false there): the
// general loop's operations, in its order per sample (bitwise the same results), except that a
// sample's exps are rescaled into its gradient only after the next sample's exps are stored
// (software pipelining by one sample). The rescale waits for the sample's sums, log and
// division, a dependency chain of ~100 cycles; issued right after them it filled the reorder
// buffer and held up the next sample's independent loads and exps (measured on Zen 3).
__attribute__((noinline)) int64_t CrossEntropyPairRowsStored(const CrossEntropyArgs<float>& a,
                                                             int64_t begin, int64_t end) {
  const int64_t k = a.num_atoms, member = a.batch_size * k;
  const float batch = static_cast<float>(a.batch_size), unit_coef = 1.0f / batch;
  int64_t bad = 0;
  // The sample whose rescale is pending: its gradient rows (holding its exps), target row and
  // per-row factors sum(y) / s_e * w / B.
  float* p0 = nullptr;
  float* p1 = nullptr;
  const float* py = nullptr;
  float pscale0 = 0.0f, pscale1 = 0.0f, pcoef = 0.0f;
  auto rescale = [&]() {
    for (int64_t j = 0; j < k; ++j) {
      const float yc = py[j] * pcoef;
      p0[j] = p0[j] * pscale0 - yc;
      p1[j] = p1[j] * pscale1 - yc;
    }
  };
  for (int64_t b = begin; b < end; ++b) {
    const float* y = a.target + b * k;
    const float w = a.weight != nullptr ? a.weight[b] : 1.0f;
    const float coef = a.weight != nullptr ? w / batch : unit_coef;
    const float* x0 = a.online_logits + b * k;
    const float* x1 = x0 + member;
    float* g0 = a.grad + b * k;
    float* g1 = g0 + member;
    float m0, m1, d0, d1, sum_y, s0, s1;
    MaxDotSum2(x0, x1, y, k, &m0, &m1, &d0, &d1, &sum_y);
    ExpSum2(x0, x1, k, m0, m1, g0, g1, &s0, &s1);
    if (p0 != nullptr) rescale();
    float log0, log1;
    Log2(s0, s1, &log0, &log1);
    const float ce0 = (m0 + log0) * sum_y - d0, ce1 = (m1 + log1) * sum_y - d1;
    const bool ok = Finite(w) && Finite(m0) && Finite(s0) && Finite(ce0) && Finite(m1) &&
                    Finite(s1) && Finite(ce1) && Finite(sum_y);
    float td = 0.0f;
    td += ce0;
    td += ce1;
    if (!ok) {
      td = NaN<float>();
      ++bad;
    }
    a.td_error[b] = td;
    p0 = g0, p1 = g1, py = y, pcoef = coef;
    pscale0 = sum_y / s0 * coef;
    pscale1 = sum_y / s1 * coef;
  }
  if (p0 != nullptr) rescale();
  return bad;
}

template <typename T>
void CrossEntropyChunk(void* ctx, int64_t begin, int64_t end) {
  auto* job = static_cast<CrossEntropyJob<T>*>(ctx);
  const CrossEntropyArgs<T>& a = *job->args;
  const int64_t k = a.num_atoms;
  if constexpr (sizeof(T) == sizeof(float)) {
    if (kW < 16 && a.num_members == 2 && a.grad != nullptr) {  // AVX2 and baseline builds
      const int64_t bad = CrossEntropyPairRowsStored(a, begin, end);
      if (bad != 0) __atomic_fetch_add(&job->bad_rows, bad, __ATOMIC_RELAXED);
      return;
    }
    if (a.num_members == 2 && a.grad != nullptr && LossRegisterRows(k)) {
      int64_t bad = 0;
      switch ((k + kW - 1) / kW) {
        case 2: bad = CrossEntropyPairRows<2>(a, begin, end); break;
        case 3: bad = CrossEntropyPairRows<3>(a, begin, end); break;
        case 4: bad = CrossEntropyPairRows<4>(a, begin, end); break;
        case 5: bad = CrossEntropyPairRows<5>(a, begin, end); break;
        case 6: bad = CrossEntropyPairRows<6>(a, begin, end); break;
        case 7: bad = CrossEntropyPairRows<7>(a, begin, end); break;
#define MTRL_CASE(n) case n: bad = CrossEntropyPairRows<n>(a, begin, end); break;
        MTRL_WIDE_ROW_CASES(MTRL_CASE)
#undef MTRL_CASE
        default: bad = CrossEntropyPairRows<kMaxRowVectors>(a, begin, end); break;
      }
      if (bad != 0) __atomic_fetch_add(&job->bad_rows, bad, __ATOMIC_RELAXED);
      return;
    }
  }
  T scratch[kMaxAtoms];
  T scratch1[kMaxAtoms];
  const T batch = static_cast<T>(a.batch_size), unit_coef = T(1) / batch;  // w / B for w = 1
  int64_t bad = 0;
  for (int64_t b = begin; b < end; ++b) {
    const T* y = a.target + b * k;
    const T w = a.weight != nullptr ? a.weight[b] : T(1);
    // sum(y) comes with the first member pair's max/dot sweep (MaxDotSum2) when there is one.
    T sum_y = a.num_members >= 2 ? T(0) : Sum(y, k);
    const T coef = a.weight != nullptr ? w / batch : unit_coef;
    bool ok = Finite(w);
    T td = 0;
    int64_t e = 0;
    for (; e + 2 <= a.num_members; e += 2) {  // two members at a time (see ExpSum2)
      const int64_t row = (e * a.batch_size + b) * k, row1 = row + a.batch_size * k;
      const T* x0 = a.online_logits + row;
      const T* x1 = a.online_logits + row1;
      T* ex0 = a.grad != nullptr ? a.grad + row : scratch;
      T* ex1 = a.grad != nullptr ? a.grad + row1 : scratch1;
      T m0, m1, s0, s1, d0, d1;
      if (e == 0) {
        MaxDotSum2(x0, x1, y, k, &m0, &m1, &d0, &d1, &sum_y);
      } else {
        RowMax2(x0, x1, k, &m0, &m1);
        Dot2(y, x0, x1, k, &d0, &d1);
      }
      bool grad_done = false;
      if constexpr (sizeof(T) == sizeof(float)) {
        if (a.grad != nullptr && LossRegisterRows(k)) {  // exps in registers up to the gradient
          PairGradientSink grad{y, coef, &sum_y, ex0, ex1};
          ExpSumRegs(x0, x1, k, m0, m1, &s0, &s1, std::ref(grad), std::ref(grad));
          grad_done = true;
        }
      }
      if (!grad_done) {
        ExpSum2(x0, x1, k, m0, m1, ex0, ex1, &s0, &s1);
      }
      T log0, log1;
      Log2(s0, s1, &log0, &log1);
      const T ce0 = (m0 + log0) * sum_y - d0, ce1 = (m1 + log1) * sum_y - d1;
      ok = ok && Finite(m0) && Finite(s0) && Finite(ce0) && Finite(m1) && Finite(s1) &&
           Finite(ce1);
      td += ce0;
      td += ce1;
      if (a.grad != nullptr && !grad_done) {
        const T scale0 = sum_y / s0 * coef, scale1 = sum_y / s1 * coef;
        for (int64_t j = 0; j < k; ++j) {
          const T yc = y[j] * coef;
          ex0[j] = ex0[j] * scale0 - yc;
          ex1[j] = ex1[j] * scale1 - yc;
        }
      }
    }
    for (; e < a.num_members; ++e) {
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
    if (!ok || !Finite(sum_y)) {
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
