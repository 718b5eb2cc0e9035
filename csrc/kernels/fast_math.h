// Branch-free exp and erf for float that compilers auto-vectorise (no libm calls).
//
// Everything here has internal linkage (anonymous namespace): the CPU kernel source is compiled
// twice with different instruction sets (baseline and AVX2+FMA), and internal linkage keeps the
// two copies from being merged by the linker (an ODR merge could run AVX2 code on a CPU without it).
// Only builtins and plain arithmetic are used for the same reason (no std:: inline templates).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace mtrl {
namespace {

// exp(x) for float x <= 88, relative error <= 2.5e-7 (~2 ulp); about 12 vector operations per 8 or
// 16 lanes. Range reduction x = n ln2 + r by the round-to-nearest trick: adding 1.5 * 2^23 + 127
// rounds x / ln2 to an integer n and leaves n + 127 in the low mantissa bits, so shifting those bits
// left by 23 builds 2^n with no float-int conversion. exp(r) on |r| <= ln2 / 2 is a degree-5
// polynomial fitted for relative error (Chebyshev nodes). Inputs below -86.5 give ~2.7e-38 (a
// normal number, so no denormal slow paths) instead of a smaller value; NaN stays NaN. The kernels
// only pass x - max <= 0.
inline float FastExp(float x) {
  x = x < -86.5f ? -86.5f : x;  // written as a compare so NaN passes through
  const float kShift = 12582912.0f + 127.0f;
  const float t = x * 1.44269504088896341f + kShift;
  const float n = t - kShift;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;  // Cody-Waite ln2 split
  float p = 8.291716687e-3f;
  p = p * r + 4.191502929e-2f;
  p = p * r + 1.666766256e-1f;
  p = p * r + 4.999890030e-1f;
  p = p * r + 9.999996424e-1f;
  p = p * r + 1.000000119f;
  int32_t bits;
  std::memcpy(&bits, &t, sizeof(bits));
  bits = static_cast<int32_t>(static_cast<uint32_t>(bits) << 23);  // (n + 127) << 23 = 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// erf(x) for float: Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7) for |x| >= 0.5, and the
// Maclaurin series through x^11 below (truncation < 2e-8 there, so the error is relative, ~1 ulp).
// HL-Gauss takes differences of erfs at nearby points; with a sigma wide next to the support all
// of them are near 0, where the A&S form's absolute error was large next to the differences (3.4e-5
// on a target at sigma = 50 support widths, found by a fuzzing helper). Branch-free (both forms are
// computed; the select vectorises).
inline float FastErf(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float t = 1.0f / (1.0f + 0.3275911f * ax);
  float poly = 1.061405429f;
  poly = poly * t - 1.453152027f;
  poly = poly * t + 1.421413741f;
  poly = poly * t - 0.284496736f;
  poly = poly * t + 0.254829592f;
  const float y = 1.0f - poly * t * FastExp(-ax * ax);
  const float x2 = x * x;  // 2 / sqrt(pi) sum_n (-1)^n x^(2n+1) / (n! (2n + 1)), n <= 5
  float series = -1.0f / 1320.0f;
  series = series * x2 + 1.0f / 216.0f;
  series = series * x2 - 1.0f / 42.0f;
  series = series * x2 + 0.1f;
  series = series * x2 - 1.0f / 3.0f;
  series = series * x2 + 1.0f;
  const float small = 1.12837916709551257f * x * series;
  return ax < 0.5f ? small : (x < 0.0f ? -y : y);
}

// log(2^e (1 + m)) for m in [sqrt(1/2) - 1, sqrt(2) - 1): Cephes logf's degree-8 polynomial of m
// and ln 2 split in two (error ~1 ulp). Branch-free. V: float, or a float vector type (lane-wise
// the same operations, see FastLog2).
template <typename V>
inline V LogOfSplit(V m, V e) {
  const V z = m * m;
  V y = V{} + 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return (m + y) + 0.693359375f * e;
}

// log(1 + t) for t in [0, 1], branch-free (1 + t in [1, 2] needs no exponent extraction; its
// rounding costs at most ~6e-8 absolute).
inline float Log1pUnit(float t) {
  const float x = 1.0f + t;
  const bool upper = x > 1.41421356237f;
  return LogOfSplit(upper ? 0.5f * x - 1.0f : x - 1.0f, upper ? 1.0f : 0.0f);
}

// Natural log for float (Cephes logf: mantissa in [sqrt(1/2), sqrt(2)), degree-8 polynomial of
// x - 1, ln 2 split in two; error ~1 ulp), inline instead of a libm call (the loss takes two per
// sample). Non-normal, huge, zero, negative or non-finite x go to libm (same special values).
inline float FastLog(float x) {
  if (!(x >= 1e-30f && x <= 1e30f)) return __builtin_logf(x);
  int32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  int32_t e = ((bits >> 23) & 0xff) - 126;  // x = m 2^e with m in [0.5, 1)
  bits = (bits & 0x007fffff) | 0x3f000000;
  float m;
  std::memcpy(&m, &bits, sizeof(m));
  if (m < 0.707106781186547524f) {
    e -= 1;
    m = m + m - 1.0f;
  } else {
    m = m - 1.0f;
  }
  return LogOfSplit(m, static_cast<float>(e));
}

// FastLog of two values at once (the loss takes one per member of a pair): the same operations
// on the lanes of a 4-float vector (LogOfSplit on vectors), so the pair costs about one scalar
// FastLog. Values outside
// FastLog's fast range go to libm as there.
inline void FastLog2(float x0, float x1, float* l0, float* l1) {
  typedef float F4 __attribute__((vector_size(16)));
  typedef int32_t I4 __attribute__((vector_size(16)));
  if (!(x0 >= 1e-30f && x0 <= 1e30f && x1 >= 1e-30f && x1 <= 1e30f)) {
    *l0 = FastLog(x0);
    *l1 = FastLog(x1);
    return;
  }
  const F4 x = {x0, x1, 1.0f, 1.0f};
  I4 bits;
  std::memcpy(&bits, &x, sizeof(bits));
  I4 e = ((bits >> 23) & 0xff) - 126;  // x = m 2^e with m in [0.5, 1)
  bits = (bits & 0x007fffff) | 0x3f000000;
  F4 m;
  std::memcpy(&m, &bits, sizeof(m));
  const I4 small = m < 0.707106781186547524f;
  e += small;  // the comparison is -1 where true
  m = (small ? m + m : m) - 1.0f;
  const F4 r = LogOfSplit(m, __builtin_convertvector(e, F4));
  *l0 = r[0];
  *l1 = r[1];
}

// The float64 path (used for gradcheck and validation) calls libm: exactness over speed.
inline double FastExp(double x) { return std::exp(x); }
inline double FastErf(double x) { return std::erf(x); }

}  // namespace
}  // namespace mtrl
