// Row primitives of the CPU TD-target kernels: max, exp-and-sum, dot and sum over the K atoms of
// one row, for float (explicit vector types) and double (plain loops). Internal linkage only, like
// fast_math.h: the including file is compiled once per instruction set.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/fast_math.h"

namespace mtrl {
namespace {

// Row reductions. The float versions use GCC/Clang vector types explicitly (8 lanes with AVX, 4
// with the baseline SSE2; two accumulators; pairwise lane combine) and finish a row with one
// overlapping full-width load whose already-counted lanes are masked off. Auto-vectorised lane
// arrays were kept on the stack, and their final combine and scalar tails hit store-forwarding
// stalls that cost more than the loops themselves.
#if defined(__AVX__)
constexpr int kW = 8;
typedef float FV __attribute__((vector_size(32)));
typedef int32_t IV __attribute__((vector_size(32)));
#define MTRL_IOTA {0, 1, 2, 3, 4, 5, 6, 7}
#else
constexpr int kW = 4;
typedef float FV __attribute__((vector_size(16)));
typedef int32_t IV __attribute__((vector_size(16)));
#define MTRL_IOTA {0, 1, 2, 3}
#endif

inline FV Splat(float x) { return FV{} + x; }
inline FV LoadV(const float* p) {
  FV v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void StoreV(float* p, FV v) { std::memcpy(p, &v, sizeof(v)); }
inline FV MaxV(FV a, FV b) { return b > a ? b : a; }  // NaN in b is skipped
inline FV Select(IV mask, FV a, FV b) { return mask ? a : b; }

// Lanes of the last full vector x[k - kW .. k - 1] whose index is >= j (not yet processed).
inline IV TailMask(int64_t k, int64_t j) {
  const IV iota = MTRL_IOTA;
  return (iota + static_cast<int32_t>(k - kW)) >= static_cast<int32_t>(j);
}
// x[j .. k-1] in the high lanes of the last full vector, `fill` elsewhere (needs k >= kW).
inline FV LoadLast(const float* x, int64_t k, int64_t j, float fill) {
  return Select(TailMask(k, j), LoadV(x + k - kW), Splat(fill));
}

#if defined(__clang__)
#define MTRL_SHUFFLE(v, ...) __builtin_shufflevector(v, v, __VA_ARGS__)
#else
#define MTRL_SHUFFLE(v, ...) __builtin_shuffle(v, IV{__VA_ARGS__})
#endif
template <typename Op>
inline float Horizontal(FV v, Op op) {
#if defined(__AVX__)
  v = op(v, MTRL_SHUFFLE(v, 4, 5, 6, 7, 0, 1, 2, 3));
  v = op(v, MTRL_SHUFFLE(v, 2, 3, 0, 1, 6, 7, 4, 5));
  v = op(v, MTRL_SHUFFLE(v, 1, 0, 3, 2, 5, 4, 7, 6));
#else
  v = op(v, MTRL_SHUFFLE(v, 2, 3, 0, 1));
  v = op(v, MTRL_SHUFFLE(v, 1, 0, 3, 2));
#endif
  return v[0];
}
#undef MTRL_SHUFFLE
#undef MTRL_IOTA
inline FV AddV(FV a, FV b) { return a + b; }

// exp of kW lanes (the vector form of FastExp in fast_math.h; same constants).
inline FV FastExpV(FV x) {
  const FV lo = Splat(-86.5f);
  x = x < lo ? lo : x;  // NaN passes through
  const FV shift = Splat(12582912.0f + 127.0f);
  const FV t = x * 1.44269504088896341f + shift;
  const FV n = t - shift;
  const FV r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  FV p = Splat(8.291716687e-3f);
  p = p * r + 4.191502929e-2f;
  p = p * r + 1.666766256e-1f;
  p = p * r + 4.999890030e-1f;
  p = p * r + 9.999996424e-1f;
  p = p * r + 1.000000119f;
  const IV bits = __builtin_bit_cast(IV, t) << 23;  // (n + 127) << 23 = 2^n
  return p * __builtin_bit_cast(FV, bits);
}

inline float RowMax(const float* x, int64_t k) {
  const float ninf = -__builtin_inff();
  FV a = Splat(ninf), b = Splat(ninf);
  int64_t j = 0;
  for (; j + 2 * kW <= k; j += 2 * kW) {
    a = MaxV(a, LoadV(x + j));
    b = MaxV(b, LoadV(x + j + kW));
  }
  if (j + kW <= k) a = MaxV(a, LoadV(x + j)), j += kW;
  float m = Horizontal(MaxV(a, b), MaxV);
  if (j < k && k >= kW) m = Horizontal(MaxV(Splat(m), LoadLast(x, k, j, ninf)), MaxV);
  for (; j < k && k < kW; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

// out_j = exp(x_j - m); returns sum_j out_j.
inline float ExpSum(const float* x, int64_t k, float m, float* out) {
  FV a = Splat(0.0f), b = Splat(0.0f);
  int64_t j = 0;
  for (; j + 2 * kW <= k; j += 2 * kW) {
    const FV e0 = FastExpV(LoadV(x + j) - m), e1 = FastExpV(LoadV(x + j + kW) - m);
    StoreV(out + j, e0);
    StoreV(out + j + kW, e1);
    a += e0;
    b += e1;
  }
  if (j + kW <= k) {
    const FV e = FastExpV(LoadV(x + j) - m);
    StoreV(out + j, e);
    a += e;
    j += kW;
  }
  if (j < k && k >= kW) {  // recomputes the overlapping lanes bit-identically
    const FV e = FastExpV(LoadV(x + k - kW) - m);
    StoreV(out + k - kW, e);
    b += Select(TailMask(k, j), e, Splat(0.0f));
    j = k;
  }
  float s = Horizontal(a + b, AddV);
  for (; j < k; ++j) {
    out[j] = FastExp(x[j] - m);
    s += out[j];
  }
  return s;
}

inline float Dot(const float* x, const float* y, int64_t k) {
  FV a = Splat(0.0f), b = Splat(0.0f);
  int64_t j = 0;
  for (; j + 2 * kW <= k; j += 2 * kW) {
    a += LoadV(x + j) * LoadV(y + j);
    b += LoadV(x + j + kW) * LoadV(y + j + kW);
  }
  if (j + kW <= k) a += LoadV(x + j) * LoadV(y + j), j += kW;
  if (j < k && k >= kW) b += LoadLast(x, k, j, 0.0f) * LoadV(y + k - kW), j = k;
  float s = Horizontal(a + b, AddV);
  for (; j < k; ++j) s += x[j] * y[j];
  return s;
}

inline float Sum(const float* x, int64_t k) {
  FV a = Splat(0.0f), b = Splat(0.0f);
  int64_t j = 0;
  for (; j + 2 * kW <= k; j += 2 * kW) {
    a += LoadV(x + j);
    b += LoadV(x + j + kW);
  }
  if (j + kW <= k) a += LoadV(x + j), j += kW;
  if (j < k && k >= kW) b += LoadLast(x, k, j, 0.0f), j = k;
  float s = Horizontal(a + b, AddV);
  for (; j < k; ++j) s += x[j];
  return s;
}

// float64 (validation and gradcheck path): plain loops, libm exp.
inline double RowMax(const double* x, int64_t k) {
  double m = -__builtin_inf();
  for (int64_t j = 0; j < k; ++j) m = x[j] > m ? x[j] : m;
  return m;
}
inline double ExpSum(const double* x, int64_t k, double m, double* out) {
  double s = 0.0;
  for (int64_t j = 0; j < k; ++j) {
    out[j] = FastExp(x[j] - m);
    s += out[j];
  }
  return s;
}
inline double Dot(const double* x, const double* y, int64_t k) {
  double s = 0.0;
  for (int64_t j = 0; j < k; ++j) s += x[j] * y[j];
  return s;
}
inline double Sum(const double* x, int64_t k) {
  double s = 0.0;
  for (int64_t j = 0; j < k; ++j) s += x[j];
  return s;
}

}  // namespace
}  // namespace mtrl
