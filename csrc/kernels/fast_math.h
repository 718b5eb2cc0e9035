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

// exp(x) for float, relative error ~2 ulp on [-87.3, 88] (Cephes expf polynomial, range reduction
// by round-to-nearest via the 1.5 * 2^23 trick, so no floor call blocks vectorisation). Inputs below
// -87.3 return ~1e-38 instead of 0 (negligible next to a softmax sum >= 1). NaN stays NaN.
inline float FastExp(float x) {
  x = x < -87.3f ? -87.3f : x;  // written as compares so NaN passes through
  x = x > 88.0f ? 88.0f : x;
  const float kLog2e = 1.44269504088896341f;
  const float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  const float n = (x * kLog2e + kRound) - kRound;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;  // Cody-Waite ln2 split
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n, n in [-126, 127]
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// erf(x) for float by Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7).
inline float FastErf(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float t = 1.0f / (1.0f + 0.3275911f * ax);
  float poly = 1.061405429f;
  poly = poly * t - 1.453152027f;
  poly = poly * t + 1.421413741f;
  poly = poly * t - 0.284496736f;
  poly = poly * t + 0.254829592f;
  const float y = 1.0f - poly * t * FastExp(-ax * ax);
  return x < 0.0f ? -y : y;
}

// The float64 path (used for gradcheck and validation) calls libm: exactness over speed.
inline double FastExp(double x) { return std::exp(x); }
inline double FastErf(double x) { return std::erf(x); }

}  // namespace
}  // namespace mtrl
