// Row primitives of the CPU TD-target kernels: max, exp-and-sum, dot and sum over the K atoms of
// one row, for float (explicit vector types) and double (plain loops). Internal linkage only, like
// fast_math.h: the including file is compiled once per instruction set.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/fast_math.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace mtrl {
namespace {

// Row reductions. The float versions use GCC/Clang vector types explicitly (8 lanes with AVX, 4
// with the baseline SSE2; two accumulators; pairwise lane combine) and finish a row with one
// overlapping full-width load whose already-counted lanes are masked off. Auto-vectorised lane
// arrays were kept on the stack, and their final combine and scalar tails hit store-forwarding
// stalls that cost more than the loops themselves.
#if defined(__AVX512F__)
constexpr int kW = 16;
typedef float FV __attribute__((vector_size(64)));
typedef int32_t IV __attribute__((vector_size(64)));
#define MTRL_IOTA {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
#elif defined(__AVX__)
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
inline FV Select(IV mask, FV a, FV b) { return mask ? a : b; }
// a > b ? a : b (b when a is NaN): one vmaxps with AVX-512 (its second operand is returned on ties
// and NaN, so it is exactly the ternary, which otherwise compiles to compare + blend).
inline FV MaxOrSecond(FV a, FV b) {
#if defined(__AVX512F__)
  return __builtin_bit_cast(FV, _mm512_max_ps(__builtin_bit_cast(__m512, a), __builtin_bit_cast(__m512, b)));
#elif defined(__AVX2__)  // the same for vmaxps on 8 lanes (GCC emitted compare + blend here too)
  return __builtin_bit_cast(FV, _mm256_max_ps(__builtin_bit_cast(__m256, a), __builtin_bit_cast(__m256, b)));
#else
  return a > b ? a : b;
#endif
}
// a * b - c with one rounding (one vfmsub: y * coef is shared by the two rows of a pair, and
// contracting a * b - y * coef the other way costs a multiplication per row).
inline FV FusedMulSub(FV a, FV b, FV c) {
#if defined(__AVX512F__)
  return __builtin_bit_cast(FV, _mm512_fmsub_ps(__builtin_bit_cast(__m512, a),
                                                __builtin_bit_cast(__m512, b),
                                                __builtin_bit_cast(__m512, c)));
#else
  return a * b - c;
#endif
}
// (a0 / b0, a1 / b1) in one 4-lane vector division (same IEEE results as two scalar ones).
inline void Div2(float a0, float a1, float b0, float b1, float* q0, float* q1) {
  typedef float F4 __attribute__((vector_size(16)));
  const F4 q = F4{a0, a1, 1.0f, 1.0f} / F4{b0, b1, 1.0f, 1.0f};
  *q0 = q[0];
  *q1 = q[1];
}

// min(|d|, 1) (d not NaN): one vrangeps with AVX-512DQ instead of a mask and a max; 1 - min(|d|, 1)
// is bitwise max(1 - |d|, 0) (equal below 1, both +0 from 1 on).
inline FV MinAbsOne(FV d) {
#if defined(__AVX512DQ__)
  // imm 0b1010: the operand of smaller magnitude, sign bit cleared.
  return __builtin_bit_cast(FV, _mm512_range_ps(__builtin_bit_cast(__m512, d),
                                                _mm512_set1_ps(1.0f), 0b1010));
#else
  const FV a = __builtin_bit_cast(FV, __builtin_bit_cast(IV, d) & 0x7fffffff);
  return a < 1.0f ? a : Splat(1.0f);
#endif
}
// b > a ? b : a: NaN in b is skipped.
inline FV MaxV(FV a, FV b) { return MaxOrSecond(b, a); }

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
#if defined(__AVX512F__)
  v = op(v, MTRL_SHUFFLE(v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
  v = op(v, MTRL_SHUFFLE(v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11));
  v = op(v, MTRL_SHUFFLE(v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13));
  v = op(v, MTRL_SHUFFLE(v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14));
#elif defined(__AVX__)
  v = op(v, MTRL_SHUFFLE(v, 4, 5, 6, 7, 0, 1, 2, 3));
  v = op(v, MTRL_SHUFFLE(v, 2, 3, 0, 1, 6, 7, 4, 5));
  v = op(v, MTRL_SHUFFLE(v, 1, 0, 3, 2, 5, 4, 7, 6));
#else
  v = op(v, MTRL_SHUFFLE(v, 2, 3, 0, 1));
  v = op(v, MTRL_SHUFFLE(v, 1, 0, 3, 2));
#endif
  return v[0];
}
#if defined(__AVX512F__)
// x[i] op x[i + 8] in lanes 0-7, the same of y in lanes 8-15 (Horizontal's first step on both).
template <typename Op>
__attribute__((always_inline)) inline FV FoldHalves(FV x, FV y, Op op) {
  const __m512 vx = __builtin_bit_cast(__m512, x), vy = __builtin_bit_cast(__m512, y);
  return op(__builtin_bit_cast(FV, _mm512_shuffle_f32x4(vx, vy, _MM_SHUFFLE(1, 0, 1, 0))),
            __builtin_bit_cast(FV, _mm512_shuffle_f32x4(vx, vy, _MM_SHUFFLE(3, 2, 3, 2))));
}
#endif

// Horizontal of four vectors at once, sharing the shuffles: every lane meets the same partner in
// the same operand order as in Horizontal (bitwise the same results); 13 vector operations and
// three extracts instead of 32.
template <typename Op>
__attribute__((always_inline)) inline void Horizontal4(FV a, FV b, FV c, FV d, Op op, float* ra,
                                                       float* rb, float* rc, float* rd) {
#if defined(__AVX512F__)
  const __m512 ab = __builtin_bit_cast(__m512, FoldHalves(a, b, op));
  const __m512 cd = __builtin_bit_cast(__m512, FoldHalves(c, d, op));
  // Lanes 4q .. 4q + 3 of the q-th vector: its partial lanes i op i + 4.
  FV v = op(__builtin_bit_cast(FV, _mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(2, 0, 2, 0))),
            __builtin_bit_cast(FV, _mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(3, 1, 3, 1))));
  v = op(v, MTRL_SHUFFLE(v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13));
  v = op(v, MTRL_SHUFFLE(v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14));
  *ra = v[0];
  *rb = v[4];
  *rc = v[8];
  *rd = v[12];
#else
  *ra = Horizontal(a, op);
  *rb = Horizontal(b, op);
  *rc = Horizontal(c, op);
  *rd = Horizontal(d, op);
#endif
}
#undef MTRL_SHUFFLE
// 0, 1, ..., kW - 1 as floats.
inline FV LaneIndex() {
  const IV i = MTRL_IOTA;
  return __builtin_convertvector(i, FV);
}
#undef MTRL_IOTA
inline FV AddV(FV a, FV b) { return a + b; }

// e^r for |r| <= ln2 / 2: FastExp's degree-5 polynomial (fast_math.h), on kW lanes.
inline FV ExpPolynomial(FV r) {
  FV p = Splat(8.291716687e-3f);
  p = p * r + 4.191502929e-2f;
  p = p * r + 1.666766256e-1f;
  p = p * r + 4.999890030e-1f;
  p = p * r + 9.999996424e-1f;
  return p * r + 1.000000119f;
}

// exp of kW lanes (the vector form of FastExp in fast_math.h; same constants).
#if defined(__AVX512F__)
// AVX-512: round with the shift trick, build 2^n with vscalefps, and reduce with one ln2 constant
// (its rounding, 1.9e-9, times |n| <= 125 adds <= 2.4e-7 relative error at the clamp, ~5e-8 for
// x >= -20): 10 operations per 16 lanes instead of 12, same polynomial.
inline FV FastExpV(FV x) {
  // max(lo, x) with lo first is exactly x < lo ? lo : x (NaN passes through) in one vmaxps; the
  // compiler emits a compare and a blend for the ternary.
  x = __builtin_bit_cast(FV, _mm512_max_ps(_mm512_set1_ps(-86.5f), __builtin_bit_cast(__m512, x)));
  // n = round(x / ln2) by the shift trick in one fma and one subtraction (vrndscaleps is two
  // operations on one port): 1.5 * 2^23 + x / ln2 lies in [2^23, 2^24), whose spacing is 1.
  const __m512 shift = _mm512_set1_ps(12582912.0f);
  const FV n = __builtin_bit_cast(
      FV, _mm512_sub_ps(_mm512_fmadd_ps(__builtin_bit_cast(__m512, x),
                                        _mm512_set1_ps(1.44269504088896341f), shift),
                        shift));
  const FV r = x - n * 0.693147180559945309f;
  const FV p = ExpPolynomial(r);
  return __builtin_bit_cast(FV, _mm512_scalef_ps(__builtin_bit_cast(__m512, p), __builtin_bit_cast(__m512, n)));
}
#elif defined(__AVX2__)
// AVX2 + FMA: the AVX-512 version's reduction (one ln2 constant, one FMA instead of two: 12
// operations per 8 lanes instead of 13; 1-4% of each kernel on Zen 3) with 2^n built by the
// shift below. Same n, r and polynomial as the AVX-512 exp (n may differ only where x / ln2 is
// exactly halfway between integers: the two shift constants round such ties to different
// neighbours, both valid).
inline FV FastExpV(FV x) {
  x = MaxOrSecond(Splat(-86.5f), x);  // x < -86.5 ? -86.5 : x in one vmaxps; NaN passes through
  const FV shift = Splat(12582912.0f + 127.0f);
  const FV t = x * 1.44269504088896341f + shift;
  const FV n = t - shift;
  const FV r = x - n * 0.693147180559945309f;
  const FV p = ExpPolynomial(r);
  const IV bits = __builtin_bit_cast(IV, t) << 23;  // (n + 127) << 23 = 2^n
  return p * __builtin_bit_cast(FV, bits);
}
#else
inline FV FastExpV(FV x) {
  const FV lo = Splat(-86.5f);
  x = x < lo ? lo : x;  // NaN passes through
  const FV shift = Splat(12582912.0f + 127.0f);
  const FV t = x * 1.44269504088896341f + shift;
  const FV n = t - shift;
  const FV r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  const FV p = ExpPolynomial(r);
  const IV bits = __builtin_bit_cast(IV, t) << 23;  // (n + 127) << 23 = 2^n
  return p * __builtin_bit_cast(FV, bits);
}
#endif

inline float RowMax(const float* x, int64_t k) {
  const float ninf = -__builtin_inff();
  FV a = Splat(ninf), b = Splat(ninf);
  int64_t j = 0;
  for (; j + 2 * kW <= k; j += 2 * kW) {
    a = MaxV(a, LoadV(x + j));
    b = MaxV(b, LoadV(x + j + kW));
  }
  if (j + kW <= k) a = MaxV(a, LoadV(x + j)), j += kW;
  // The tail as the last full vector, unmasked: max is exact and idempotent, so lanes counted
  // twice change nothing, and one horizontal reduction ends the (latency-bound) row.
  if (j < k && k >= kW) b = MaxV(b, LoadV(x + k - kW)), j = k;
  float m = Horizontal(MaxV(a, b), MaxV);
  for (; j < k; ++j) m = x[j] > m ? x[j] : m;
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

// Two independent rows at once. One row's max -> exp -> sum chain is latency-bound (each step
// waits for the previous reduction); interleaving two rows fills the pipeline. Per row, the
// arithmetic and its order are exactly those of the one-row functions above (same results).
inline void RowMax2(const float* x0, const float* x1, int64_t k, float* m0, float* m1) {
  if (k < kW) {
    *m0 = RowMax(x0, k);
    *m1 = RowMax(x1, k);
    return;
  }
  const float ninf = -__builtin_inff();
  FV a0 = Splat(ninf), b0 = Splat(ninf), a1 = Splat(ninf), b1 = Splat(ninf);
  int64_t j = 0;
  for (; j + 2 * kW <= k; j += 2 * kW) {
    a0 = MaxV(a0, LoadV(x0 + j));
    b0 = MaxV(b0, LoadV(x0 + j + kW));
    a1 = MaxV(a1, LoadV(x1 + j));
    b1 = MaxV(b1, LoadV(x1 + j + kW));
  }
  if (j + kW <= k) {
    a0 = MaxV(a0, LoadV(x0 + j));
    a1 = MaxV(a1, LoadV(x1 + j));
    j += kW;
  }
  if (j < k) {  // unmasked last full vector (see RowMax)
    b0 = MaxV(b0, LoadV(x0 + k - kW));
    b1 = MaxV(b1, LoadV(x1 + k - kW));
  }
  *m0 = Horizontal(MaxV(a0, b0), MaxV);
  *m1 = Horizontal(MaxV(a1, b1), MaxV);
}

// out0_j = exp(x0_j - m0), out1_j = exp(x1_j - m1); the sums go to *s0, *s1.
inline void ExpSum2(const float* x0, const float* x1, int64_t k, float m0, float m1, float* out0,
                    float* out1, float* s0, float* s1) {
  if (k < kW) {
    *s0 = ExpSum(x0, k, m0, out0);
    *s1 = ExpSum(x1, k, m1, out1);
    return;
  }
  FV a0 = Splat(0.0f), b0 = Splat(0.0f), a1 = Splat(0.0f), b1 = Splat(0.0f);
  int64_t j = 0;
  for (; j + 2 * kW <= k; j += 2 * kW) {
    const FV e0 = FastExpV(LoadV(x0 + j) - m0), e1 = FastExpV(LoadV(x0 + j + kW) - m0);
    const FV f0 = FastExpV(LoadV(x1 + j) - m1), f1 = FastExpV(LoadV(x1 + j + kW) - m1);
    StoreV(out0 + j, e0);
    StoreV(out0 + j + kW, e1);
    StoreV(out1 + j, f0);
    StoreV(out1 + j + kW, f1);
    a0 += e0;
    b0 += e1;
    a1 += f0;
    b1 += f1;
  }
  if (j + kW <= k) {
    const FV e = FastExpV(LoadV(x0 + j) - m0), f = FastExpV(LoadV(x1 + j) - m1);
    StoreV(out0 + j, e);
    StoreV(out1 + j, f);
    a0 += e;
    a1 += f;
    j += kW;
  }
  if (j < k) {  // recomputes the overlapping lanes bit-identically
    const FV e = FastExpV(LoadV(x0 + k - kW) - m0), f = FastExpV(LoadV(x1 + k - kW) - m1);
    StoreV(out0 + k - kW, e);
    StoreV(out1 + k - kW, f);
    const IV tail = TailMask(k, j);
    b0 += Select(tail, e, Splat(0.0f));
    b1 += Select(tail, f, Splat(0.0f));
  }
  *s0 = Horizontal(a0 + b0, AddV);
  *s1 = Horizontal(a1 + b1, AddV);
}

// The common end of ExpSumRegs2 and its fused variants below: the exps e, f of a row pair of NV
// vectors (kW (NV - 1) < k <= kW NV) summed in ExpSum2's order (bitwise the same sums), then
// after(s0, s1) once and emit(j, e, f) for every vector (j = its first atom; the last vector
// overlaps the previous one when kW does not divide k).
template <int NV, typename After, typename Emit>
__attribute__((always_inline)) inline void SumEmitRegs2(const FV (&e)[NV], const FV (&f)[NV],
                                                       int64_t k, float* s0, float* s1,
                                                       After after, Emit emit) {
  const int64_t full = k / kW;
  FV a0 = Splat(0.0f), b0 = Splat(0.0f), a1 = Splat(0.0f), b1 = Splat(0.0f);
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) {
    if (v >= full) {  // the tail: only its lanes not yet counted
      const IV tail = TailMask(k, full * kW);
      b0 += Select(tail, e[v], Splat(0.0f));
      b1 += Select(tail, f[v], Splat(0.0f));
    } else if (v % 2 == 0) {
      a0 += e[v];
      a1 += f[v];
    } else {
      b0 += e[v];
      b1 += f[v];
    }
  }
  *s0 = Horizontal(a0 + b0, AddV);
  *s1 = Horizontal(a1 + b1, AddV);
  after(*s0, *s1);
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) emit(v < full ? v * kW : k - kW, e[v], f[v]);
}

// ExpSum2 with the exps kept in registers, for rows of NV vectors (kW (NV - 1) < k <= kW NV):
// the exps of both rows, then SumEmitRegs2. The caller consumes the exps (loss gradient, member
// mix) without storing and reloading the exp rows in between.
template <int NV, typename After, typename Emit>
__attribute__((always_inline)) inline void ExpSumRegs2(const float* x0, const float* x1,
                                                      int64_t k, float m0, float m1, float* s0,
                                                      float* s1, After after, Emit emit) {
  FV e[NV], f[NV];
  const int64_t full = k / kW;
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) {
    const int64_t j = v < full ? v * kW : k - kW;
    e[v] = FastExpV(LoadV(x0 + j) - m0);
    f[v] = FastExpV(LoadV(x1 + j) - m1);
  }
  SumEmitRegs2<NV>(e, f, k, s0, s1, after, emit);
}

// RowMax2 followed by ExpSumRegs2 with the rows loaded once: the maxima come from the vectors
// already in registers (max is exact, so the order of the comparisons changes no result), and
// the exps are computed from them in place. Same results as the two calls.
template <int NV, typename After, typename Emit>
__attribute__((always_inline)) inline void MaxExpSumRegs2(const float* x0, const float* x1,
                                                         int64_t k, float* m0, float* m1,
                                                         float* s0, float* s1, After after,
                                                         Emit emit) {
  FV e[NV], f[NV];
  const int64_t full = k / kW;
  const float ninf = -__builtin_inff();
  FV ma0 = Splat(ninf), mb0 = Splat(ninf), ma1 = Splat(ninf), mb1 = Splat(ninf);
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) {
    const int64_t j = v < full ? v * kW : k - kW;
    e[v] = LoadV(x0 + j);
    f[v] = LoadV(x1 + j);
    if (v % 2 == 0) {
      ma0 = MaxV(ma0, e[v]);
      ma1 = MaxV(ma1, f[v]);
    } else {
      mb0 = MaxV(mb0, e[v]);
      mb1 = MaxV(mb1, f[v]);
    }
  }
  *m0 = Horizontal(MaxV(ma0, mb0), MaxV);
  *m1 = Horizontal(MaxV(ma1, mb1), MaxV);
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) {
    if constexpr (kW == 8) {
      // AVX2: the rows are loaded again (a load is cheap) rather than kept from the max sweep: with
      // 8 lanes a pair's vectors do not fit the registers and would be spilled (a store and a load).
      const int64_t j = v < full ? v * kW : k - kW;
      e[v] = FastExpV(LoadV(x0 + j) - *m0);
      f[v] = FastExpV(LoadV(x1 + j) - *m1);
    } else {
      e[v] = FastExpV(e[v] - *m0);
      f[v] = FastExpV(f[v] - *m1);
    }
  }
  SumEmitRegs2<NV>(e, f, k, s0, s1, after, emit);
}

// MaxDotSum2 followed by ExpSumRegs2 with the logit rows loaded once (the loss's row pair): the
// accumulators, their order and the tails are those of MaxDotSum2 (bitwise the same m, d, sum(y)),
// the exps are computed in place from the loaded vectors. after(s0, s1) may read *sum_y.
template <int NV, typename After, typename Emit>
__attribute__((always_inline)) inline void MaxDotExpSumRegs2(const float* x0, const float* x1,
                                                            const float* y, int64_t k,
                                                            float* m0, float* m1, float* d0,
                                                            float* d1, float* sum_y, float* s0,
                                                            float* s1, After after, Emit emit) {
  FV e[NV], f[NV];
  const int64_t full = k / kW;
  const float ninf = -__builtin_inff();
  FV ma0 = Splat(ninf), mb0 = Splat(ninf), ma1 = Splat(ninf), mb1 = Splat(ninf);
  FV da0 = Splat(0.0f), db0 = Splat(0.0f), da1 = Splat(0.0f), db1 = Splat(0.0f);
  FV sa = Splat(0.0f), sb = Splat(0.0f);
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) {
    const int64_t j = v < full ? v * kW : k - kW;
    e[v] = LoadV(x0 + j);
    f[v] = LoadV(x1 + j);
    if (v >= full) {  // the tail (see MaxDotSum2): max unmasked, y masked to the new lanes
      const FV yl = Select(TailMask(k, full * kW), LoadV(y + j), Splat(0.0f));
      mb0 = MaxV(mb0, e[v]);
      mb1 = MaxV(mb1, f[v]);
      db0 += yl * e[v];
      db1 += yl * f[v];
      sb += yl;
    } else if (v % 2 == 0) {
      const FV yv = LoadV(y + j);
      ma0 = MaxV(ma0, e[v]);
      ma1 = MaxV(ma1, f[v]);
      da0 += yv * e[v];
      da1 += yv * f[v];
      sa += yv;
    } else {
      const FV yv = LoadV(y + j);
      mb0 = MaxV(mb0, e[v]);
      mb1 = MaxV(mb1, f[v]);
      db0 += yv * e[v];
      db1 += yv * f[v];
      sb += yv;
    }
  }
  *m0 = Horizontal(MaxV(ma0, mb0), MaxV);
  *m1 = Horizontal(MaxV(ma1, mb1), MaxV);
  *d0 = Horizontal(da0 + db0, AddV);
  *d1 = Horizontal(da1 + db1, AddV);
  *sum_y = Horizontal(sa + sb, AddV);
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) {
    e[v] = FastExpV(e[v] - *m0);
    f[v] = FastExpV(f[v] - *m1);
  }
  SumEmitRegs2<NV>(e, f, k, s0, s1, after, emit);
}

// Rows short enough for ExpSumRegs2 and the loops built on it: the AVX-512 float build with
// kW < k <= 8 kW, the AVX2 build with kW < k <= 16 kW (K <= 128 both; a pair of 8-lane rows
// then holds up to 32 vectors, more than the 16 registers: GCC keeps some of them on the stack,
// each stored once and read back from an aligned slot, which still beat the separate
// max / exp-and-store / mix loops on AMD Zen 3).
#if defined(__AVX512F__)
constexpr int kMaxRowVectors = 8;
#define MTRL_WIDE_ROW_CASES(CASE)
#else
constexpr int kMaxRowVectors = 16;
#define MTRL_WIDE_ROW_CASES(CASE) CASE(8) CASE(9) CASE(10) CASE(11) CASE(12) CASE(13) CASE(14) CASE(15)
#endif
inline bool RegisterRows(int64_t k) { return kW >= 8 && k > kW && k <= kMaxRowVectors * kW; }
// The loss's row pairs in registers (the gradient written from the exps still in registers) only
// where they fit, i.e. the AVX-512 build: with 8 lanes the spilled pair measured 2-7% slower on
// Zen 3 than storing the exps into the gradient rows and rescaling them there.
inline bool LossRegisterRows(int64_t k) { return kW == 16 && RegisterRows(k); }

// ExpSumRegs2 with NV picked from k (RegisterRows(k) must hold).
template <typename After, typename Emit>
inline void ExpSumRegs(const float* x0, const float* x1, int64_t k, float m0, float m1, float* s0,
                       float* s1, After after, Emit emit) {
  switch ((k + kW - 1) / kW) {
    case 2: return ExpSumRegs2<2>(x0, x1, k, m0, m1, s0, s1, after, emit);
    case 3: return ExpSumRegs2<3>(x0, x1, k, m0, m1, s0, s1, after, emit);
    case 4: return ExpSumRegs2<4>(x0, x1, k, m0, m1, s0, s1, after, emit);
    case 5: return ExpSumRegs2<5>(x0, x1, k, m0, m1, s0, s1, after, emit);
    case 6: return ExpSumRegs2<6>(x0, x1, k, m0, m1, s0, s1, after, emit);
    case 7: return ExpSumRegs2<7>(x0, x1, k, m0, m1, s0, s1, after, emit);
#define MTRL_CASE(n) case n: return ExpSumRegs2<n>(x0, x1, k, m0, m1, s0, s1, after, emit);
    MTRL_WIDE_ROW_CASES(MTRL_CASE)
#undef MTRL_CASE
    default: return ExpSumRegs2<kMaxRowVectors>(x0, x1, k, m0, m1, s0, s1, after, emit);
  }
}

// (y . x0, y . x1).
inline void Dot2(const float* y, const float* x0, const float* x1, int64_t k, float* d0,
                 float* d1) {
  if (k < kW) {
    *d0 = Dot(y, x0, k);
    *d1 = Dot(y, x1, k);
    return;
  }
  FV a0 = Splat(0.0f), b0 = Splat(0.0f), a1 = Splat(0.0f), b1 = Splat(0.0f);
  int64_t j = 0;
  for (; j + 2 * kW <= k; j += 2 * kW) {
    const FV ya = LoadV(y + j), yb = LoadV(y + j + kW);
    a0 += ya * LoadV(x0 + j);
    b0 += yb * LoadV(x0 + j + kW);
    a1 += ya * LoadV(x1 + j);
    b1 += yb * LoadV(x1 + j + kW);
  }
  if (j + kW <= k) {
    const FV ya = LoadV(y + j);
    a0 += ya * LoadV(x0 + j);
    a1 += ya * LoadV(x1 + j);
    j += kW;
  }
  if (j < k) {
    const FV yl = LoadLast(y, k, j, 0.0f);
    b0 += yl * LoadV(x0 + k - kW);
    b1 += yl * LoadV(x1 + k - kW);
  }
  *d0 = Horizontal(a0 + b0, AddV);
  *d1 = Horizontal(a1 + b1, AddV);
}

// The first pass of a loss row pair: RowMax2(x0, x1), Dot2(y, x0, x1) and Sum(y) in one sweep
// (x0, x1 and y are loaded once instead of three times). Per quantity the accumulators, their
// order and the tails are exactly those of the separate functions (bitwise the same results).
// Always inlined: as a call its five results went through memory on the way to the exps.
__attribute__((always_inline)) inline void MaxDotSum2(const float* x0, const float* x1,
                                                      const float* y, int64_t k, float* m0,
                                                      float* m1, float* d0, float* d1,
                                                      float* sum_y) {
  if (k < kW) {
    RowMax2(x0, x1, k, m0, m1);
    Dot2(y, x0, x1, k, d0, d1);
    *sum_y = Sum(y, k);
    return;
  }
  const float ninf = -__builtin_inff();
  FV ma0 = Splat(ninf), mb0 = Splat(ninf), ma1 = Splat(ninf), mb1 = Splat(ninf);
  FV da0 = Splat(0.0f), db0 = Splat(0.0f), da1 = Splat(0.0f), db1 = Splat(0.0f);
  FV sa = Splat(0.0f), sb = Splat(0.0f);
  int64_t j = 0;
  for (; j + 2 * kW <= k; j += 2 * kW) {
    const FV ya = LoadV(y + j), yb = LoadV(y + j + kW);
    const FV xa0 = LoadV(x0 + j), xb0 = LoadV(x0 + j + kW);
    const FV xa1 = LoadV(x1 + j), xb1 = LoadV(x1 + j + kW);
    ma0 = MaxV(ma0, xa0);
    mb0 = MaxV(mb0, xb0);
    ma1 = MaxV(ma1, xa1);
    mb1 = MaxV(mb1, xb1);
    da0 += ya * xa0;
    db0 += yb * xb0;
    da1 += ya * xa1;
    db1 += yb * xb1;
    sa += ya;
    sb += yb;
  }
  if (j + kW <= k) {
    const FV ya = LoadV(y + j), xa0 = LoadV(x0 + j), xa1 = LoadV(x1 + j);
    ma0 = MaxV(ma0, xa0);
    ma1 = MaxV(ma1, xa1);
    da0 += ya * xa0;
    da1 += ya * xa1;
    sa += ya;
    j += kW;
  }
  if (j < k) {
    // The last rows' vectors are loaded once per use: named copies used twice were kept on the
    // stack by GCC (a store and two reloads each on the max chain).
    const IV tail = TailMask(k, j);
    mb0 = MaxV(mb0, LoadV(x0 + k - kW));  // unmasked (see RowMax)
    mb1 = MaxV(mb1, LoadV(x1 + k - kW));
    const FV yl = Select(tail, LoadV(y + k - kW), Splat(0.0f));
    db0 += yl * LoadV(x0 + k - kW);
    db1 += yl * LoadV(x1 + k - kW);
    sb += yl;
  }
  *m0 = Horizontal(MaxV(ma0, mb0), MaxV);
  *m1 = Horizontal(MaxV(ma1, mb1), MaxV);
  *d0 = Horizontal(da0 + db0, AddV);
  *d1 = Horizontal(da1 + db1, AddV);
  *sum_y = Horizontal(sa + sb, AddV);
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
inline void RowMax2(const double* x0, const double* x1, int64_t k, double* m0, double* m1) {
  *m0 = RowMax(x0, k);
  *m1 = RowMax(x1, k);
}
inline void ExpSum2(const double* x0, const double* x1, int64_t k, double m0, double m1,
                    double* out0, double* out1, double* s0, double* s1) {
  *s0 = ExpSum(x0, k, m0, out0);
  *s1 = ExpSum(x1, k, m1, out1);
}
inline void Dot2(const double* y, const double* x0, const double* x1, int64_t k, double* d0,
                 double* d1) {
  *d0 = Dot(y, x0, k);
  *d1 = Dot(y, x1, k);
}
inline void MaxDotSum2(const double* x0, const double* x1, const double* y, int64_t k,
                       double* m0, double* m1, double* d0, double* d1, double* sum_y) {
  RowMax2(x0, x1, k, m0, m1);
  Dot2(y, x0, x1, k, d0, d1);
  *sum_y = Sum(y, k);
}

}  // namespace
}  // namespace mtrl
