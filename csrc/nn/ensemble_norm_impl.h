// Row kernels of the fused critic layer (ensemble_norm.h), included by ensemble_norm.cc (baseline
// x86-64 or any other target), ensemble_norm_avx2.cc and ensemble_norm_avx512.cc; everything has
// internal linkage, so each file gets its own build for its instruction set (as
// kernels/td_target_cpu_impl.h).
//
// The row loops use explicit vector types (kernels/row_ops.h: kW lanes, FV) rather than the
// auto-vectoriser, which left the masked loads of the backward scalar and kept lane sums on the
// stack. Forward, kForwardRows rows at a time (independent dependency chains): z = y + b and its
// sum, the sum of squares about the mean (two passes over rows still in L1: no cancellation when
// |mean| >> std), then the affine and the epilogue. Backward, row by row: a first pass gives xhat,
// the ReLU-masked grad, dxhat and the two row means, a second pass dz and the row's terms of the
// parameter-gradient sums of its chunk. Both prefetch the rows they will work on next.
//
// What limits them at the critic's shapes (W = 512, a few hundred rows per thread, data in L2) is
// the L1 <-> L2 traffic more than the arithmetic: tried and measured slower were longer row groups
// in the backward (sums kept in registers over 2-8 rows: their scratch rows pushed the streamed
// rows out of L1), 8 forward rows at a time, and no prefetching.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/parallel.h"
#include "kernels/row_ops.h"
#include "nn/bf16.h"
#include "nn/ensemble_norm.h"

namespace mtrl {
namespace {

// Rows of one chunk of the parameter-gradient sums: fixed and independent of num_threads, so the
// sums (chunks added in a fixed order) are too. 64 rows give 8 chunks at B = 256, E = 2.
constexpr int64_t kRowsPerGradChunk = 64;
// The backward with parameter gradients prefetches the row this many rows ahead (BackwardRow).
constexpr int64_t kRowsAhead = 1;

inline float HSum(FV v) { return Horizontal(v, AddV); }

// A 64-byte aligned block of at least n floats owned by the calling thread (grown, never shrunk:
// no allocation per call once warm).
inline float* ThreadScratch(std::vector<float>& buf, int64_t n) {
  const size_t need = static_cast<size_t>(n) + 16;
  if (buf.size() < need) buf.resize(need);
  const auto p = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<float*>((p + 63) & ~uintptr_t{63});
}

// Row loads of the matmul output y: float32, or bf16 (the bf16 path's bmm output).
inline FV LoadY(const float* p) { return LoadV(p); }
inline FV LoadY(const uint16_t* p) { return LoadBf16(p); }
inline float ScalarY(float x) { return x; }
inline float ScalarY(uint16_t x) { return Bf16ToFloat(x); }

// kRows consecutive rows of one member (stride w): out = epilogue((y + b - mean) * rstd * g + be).
// Several rows at a time: each row is a chain of dependent steps (sum -> mean -> sum of squares ->
// rstd -> output), and interleaving independent rows hides those latencies. Passes 2 and 3 work on
// L1 data only, so they prefetch the next next_rows rows' y (read) and out (write) into L1, and
// pass 1 the residual rows that pass 3 reads: the loads and store misses of the next rows then
// overlap this group's arithmetic (~10% at W = 512, more with the residual). The same expression
// order for xhat and xhat * g + be as in the backward, so its ReLU mask is exactly the forward's.
// Y = uint16_t (bf16 path): y is read as bf16 and the output is also written, rounded to bf16, to
// out_bf (the next layer's matmul input), in pass 3 while the row is in registers.
template <NormEpilogue kEpilogue, int kRows, typename Y>
inline void ForwardRows(const Y* __restrict y, const float* __restrict b,
                        const float* __restrict g, const float* __restrict be,
                        const float* __restrict res, float eps, int64_t w, float* __restrict out,
                        uint16_t* __restrict out_bf, float* mean_out, float* rstd_out,
                        int64_t next_rows) {
  constexpr bool kBf16 = std::is_same_v<Y, uint16_t>;
  const int64_t full = w - w % kW;
  // Pass 1: z = y + b, kept in out (the rows stay in L1 for the next passes), and its sum.
  FV s[kRows] = {};
  for (int64_t j = 0; j < full; j += kW) {
    const FV bv = LoadV(b + j);
    for (int i = 0; i < kRows; ++i) {
      const FV z = LoadY(y + i * w + j) + bv;
      StoreV(out + i * w + j, z);
      s[i] += z;
      if (kEpilogue == NormEpilogue::kResidual) __builtin_prefetch(res + i * w + j);  // pass 3
    }
  }
  float mean[kRows];
  for (int i = 0; i < kRows; ++i) {
    float tail = 0.0f;
    for (int64_t j = full; j < w; ++j) {
      out[i * w + j] = ScalarY(y[i * w + j]) + b[j];
      tail += out[i * w + j];
    }
    mean[i] = (HSum(s[i]) + tail) / static_cast<float>(w);
  }
  // Pass 2: sum of squares about the mean (two passes: no cancellation when |mean| >> std).
  FV q[kRows] = {};
  for (int64_t j = 0; j < full; j += kW) {
    for (int i = 0; i < kRows; ++i) {
      const FV d = LoadV(out + i * w + j) - mean[i];
      q[i] += d * d;
    }
    for (int64_t i = 0; i < next_rows; ++i) __builtin_prefetch(y + (kRows + i) * w + j);
  }
  float rstd[kRows];
  for (int i = 0; i < kRows; ++i) {
    float tail = 0.0f;
    for (int64_t j = full; j < w; ++j) tail += (out[i * w + j] - mean[i]) * (out[i * w + j] - mean[i]);
    rstd[i] = 1.0f / std::sqrt((HSum(q[i]) + tail) / static_cast<float>(w) + eps);
  }
  // Pass 3: affine and epilogue.
  for (int64_t j = 0; j < full; j += kW) {
    const FV gv = LoadV(g + j), bev = LoadV(be + j);
    for (int i = 0; i < kRows; ++i) {
      const FV xhat = (LoadV(out + i * w + j) - mean[i]) * rstd[i];
      FV v = xhat * gv + bev;
      if (kEpilogue == NormEpilogue::kRelu) v = MaxOrSecond(FV{}, v);  // v < 0 ? 0 : v, NaN kept
      if (kEpilogue == NormEpilogue::kResidual) v = LoadV(res + i * w + j) + v;
      StoreV(out + i * w + j, v);
      if (kBf16) StoreBf16(out_bf + i * w + j, v);
    }
    for (int64_t i = 0; i < next_rows; ++i) __builtin_prefetch(out + (kRows + i) * w + j, 1);
  }
  for (int i = 0; i < kRows; ++i) {
    for (int64_t j = full; j < w; ++j) {
      const float xhat = (out[i * w + j] - mean[i]) * rstd[i];
      float v = xhat * g[j] + be[j];
      if (kEpilogue == NormEpilogue::kRelu) v = v < 0.0f ? 0.0f : v;  // NaN kept, as F.relu
      if (kEpilogue == NormEpilogue::kResidual) v = res[i * w + j] + v;
      out[i * w + j] = v;
      if (kBf16) out_bf[i * w + j] = FloatToBf16(v);
    }
    mean_out[i] = mean[i];
    rstd_out[i] = rstd[i];
  }
}

struct ForwardCtx {
  EnsembleNormShape shape;
  const float *y, *bias, *gamma, *beta, *residual;
  NormEpilogue epilogue;
  float eps;
  float *out, *mean, *rstd;
  const uint16_t* y_bf = nullptr;  // bf16 path: y as bf16 (y above unused) ...
  uint16_t* out_bf = nullptr;      // ... and the bf16 copy of out
};

inline const float* YOf(const ForwardCtx& c, float) { return c.y; }
inline const uint16_t* YOf(const ForwardCtx& c, uint16_t) { return c.y_bf; }

// Rows interleaved per step of the forward (see ForwardRows).
constexpr int kForwardRows = 4;

template <NormEpilogue kEpilogue, typename Y>
void ForwardRange(const ForwardCtx& c, int64_t begin, int64_t end) {
  const int64_t w = c.shape.width, rows = c.shape.rows_per_member;
  const Y* y = YOf(c, Y{});
  auto out_bf = [&](int64_t r) { return c.out_bf == nullptr ? nullptr : c.out_bf + r * w; };
  // bf16 path without a float32 out (a layer whose output only feeds the next matmul): the rows
  // go through a scratch block that stays in L1 instead.
  float* scratch = nullptr;
  if constexpr (std::is_same_v<Y, uint16_t>) {
    thread_local std::vector<float> buf;
    if (c.out == nullptr) scratch = ThreadScratch(buf, kForwardRows * w);
  }
  auto out = [&](int64_t r) { return scratch != nullptr ? scratch : c.out + r * w; };
  for (int64_t r = begin; r < end;) {
    const int64_t e = r / rows;
    const int64_t stop = std::min(end, (e + 1) * rows);  // this member's rows
    const float *b = c.bias + e * w, *g = c.gamma + e * w, *be = c.beta + e * w;
    auto res = [&] { return kEpilogue == NormEpilogue::kResidual ? c.residual + r * w : nullptr; };
    for (; r + kForwardRows <= stop; r += kForwardRows) {
      ForwardRows<kEpilogue, kForwardRows>(y + r * w, b, g, be, res(), c.eps, w, out(r),
                                           out_bf(r), c.mean + r, c.rstd + r,
                                           std::min<int64_t>(kForwardRows, end - r - kForwardRows));
    }
    for (; r < stop; ++r) {
      ForwardRows<kEpilogue, 1>(y + r * w, b, g, be, res(), c.eps, w, out(r), out_bf(r),
                                c.mean + r, c.rstd + r, std::min<int64_t>(1, end - r - 1));
    }
  }
}

template <typename Y>
void ForwardChunk(void* raw, int64_t begin, int64_t end) {
  const auto& c = *static_cast<const ForwardCtx*>(raw);
  switch (c.epilogue) {
    case NormEpilogue::kRelu:
      return ForwardRange<NormEpilogue::kRelu, Y>(c, begin, end);
    case NormEpilogue::kResidual:
      return ForwardRange<NormEpilogue::kResidual, Y>(c, begin, end);
    default:
      return ForwardRange<NormEpilogue::kNone, Y>(c, begin, end);
  }
}

// Backward of one row, first pass: xhat -> xs; dxhat = d * g -> gy (the second pass turns it into
// dz in place), where d is grad_out masked by the forward's ReLU (kRelu), also kept in ds when
// kStoreD (for the parameter gradients). Prefetches the row `prefetch` floats further on (y,
// grad_out, grad_y) unless prefetch == 0. Returns the row's a = mean(dxhat) and
// c = mean(dxhat * xhat), with which dz = (dxhat - (xhat * c + a)) * rstd: the difference first,
// so that it cancels exactly where it should (a constant row, W = 1) before the large rstd.
template <bool kRelu, bool kStoreD, typename Y>
inline void BackwardFirstPass(const float* __restrict go, const Y* __restrict y,
                              const float* __restrict b, const float* __restrict g,
                              const float* __restrict be, float mean, float rstd, int64_t w,
                              float* __restrict xs, float* __restrict ds, float* __restrict gy,
                              int64_t prefetch, float* a_out, float* c_out) {
  const int64_t full = w - w % kW;
  const FV vm = Splat(mean), vr = Splat(rstd);
  FV a0{}, a1{}, c0{}, c1{};
  auto step = [&](int64_t j, FV& acc_a, FV& acc_c) {
    if (prefetch != 0) {
      __builtin_prefetch(y + prefetch + j);
      __builtin_prefetch(go + prefetch + j);
      __builtin_prefetch(gy + prefetch + j, 1);
    }
    const FV gv = LoadV(g + j);
    const FV xhat = (LoadY(y + j) + LoadV(b + j) - vm) * vr;
    FV d = LoadV(go + j);
    if (kRelu) d = Select(xhat * gv + LoadV(be + j) > FV{}, d, FV{});
    const FV dxhat = d * gv;
    StoreV(xs + j, xhat);
    if (kStoreD) StoreV(ds + j, d);
    StoreV(gy + j, dxhat);
    acc_a += dxhat;
    acc_c += dxhat * xhat;
  };
  int64_t j = 0;
  for (; j + 2 * kW <= full; j += 2 * kW) {
    step(j, a0, c0);
    step(j + kW, a1, c1);
  }
  if (j < full) step(j, a0, c0);
  float tail_a = 0.0f, tail_c = 0.0f;
  for (j = full; j < w; ++j) {
    const float xhat = (ScalarY(y[j]) + b[j] - mean) * rstd;
    float d = go[j];
    if (kRelu) d = xhat * g[j] + be[j] > 0.0f ? d : 0.0f;
    const float dxhat = d * g[j];
    xs[j] = xhat;
    if (kStoreD) ds[j] = d;
    gy[j] = dxhat;
    tail_a += dxhat;
    tail_c += dxhat * xhat;
  }
  const float inv_w = 1.0f / static_cast<float>(w);
  *a_out = (HSum(a0 + a1) + tail_a) * inv_w;
  *c_out = (HSum(c0 + c1) + tail_c) * inv_w;
}

struct BackwardCtx {
  EnsembleNormShape shape;
  const float *grad_out, *y, *bias, *gamma, *beta, *mean, *rstd;
  const float* grad_add;  // added into grad_out (through grad_sum) before each row, or null
  float* grad_sum;        // grad_out, writable (set with grad_add)
  bool relu;
  float* grad_y;
  float* partial;  // (num_chunks, 3, W) sums d beta, d gamma, d bias per chunk, or null
  int64_t chunks_per_member;
  // bf16 path (grad_out, y, grad_y above unused): grad_out and y as bf16, grad_y written as bf16;
  // grad_sum, when not null, receives the float32 grad_out (+ grad_add) (a separate buffer here).
  // grad_out_bf null: the float32 gradient is grad_add alone (then not null).
  const uint16_t *grad_out_bf = nullptr, *y_bf = nullptr;
  uint16_t* grad_y_bf = nullptr;
};

inline const float* YOf(const BackwardCtx& c, float) { return c.y; }
inline const uint16_t* YOf(const BackwardCtx& c, uint16_t) { return c.y_bf; }

// Row r of the backward: the first pass, then dz = (dxhat - (xhat * c + a)) * rstd in place in
// grad_y and (kSums) the row's terms of d beta (d), d gamma (d * xhat) and d bias (dz) added to
// sums (3, W). Meanwhile y, grad_out (read) and grad_y (write) of row `ahead` are prefetched into
// L1 when ahead >= 0: with the sums in the second pass (arithmetic on L1 data; without the
// prefetch the next row's loads from L2 and its store misses wait until it starts: ~1.6x slower),
// without them in the first pass (the second is too short to hide anything: ~8% here).
// Y = uint16_t (bf16 path): go is the row's float32 grad_out made by BackwardRange, dz is built
// in the scratch row gs and written to grad_y as bf16 (its float32 value feeds d bias), and the
// prefetches are BackwardRange's.
template <bool kRelu, bool kSums, typename Y>
inline void BackwardRow(const BackwardCtx& c, int64_t r, int64_t ahead, const float* __restrict go,
                        float* __restrict xs, float* __restrict ds, float* __restrict gs,
                        float* __restrict sums) {
  constexpr bool kBf16 = std::is_same_v<Y, uint16_t>;
  const int64_t w = c.shape.width, full = w - w % kW, e = r / c.shape.rows_per_member;
  float* __restrict gy = kBf16 ? gs : c.grad_y + r * w;
  uint16_t* __restrict gy_bf = kBf16 ? c.grad_y_bf + r * w : nullptr;
  float a, k;
  BackwardFirstPass<kRelu, kRelu && kSums>(go, YOf(c, Y{}) + r * w, c.bias + e * w,
                                            c.gamma + e * w, c.beta + e * w, c.mean[r], c.rstd[r],
                                            w, xs, ds, gy,
                                            !kBf16 && !kSums && ahead >= 0 ? (ahead - r) * w : 0,
                                            &a, &k);
  const float rstd = c.rstd[r];
  float* __restrict s_beta = sums;
  float* __restrict s_gamma = kSums ? sums + w : nullptr;
  float* __restrict s_bias = kSums ? sums + 2 * w : nullptr;
  for (int64_t j = 0; j < full; j += kW) {
    const FV xhat = LoadV(xs + j);
    const FV dz = (LoadV(gy + j) - (xhat * k + a)) * rstd;
    if (kBf16) {
      StoreBf16(gy_bf + j, dz);
    } else {
      StoreV(gy + j, dz);
    }
    if (kSums) {
      const FV d = kRelu ? LoadV(ds + j) : LoadV(go + j);
      StoreV(s_beta + j, LoadV(s_beta + j) + d);
      StoreV(s_gamma + j, LoadV(s_gamma + j) + d * xhat);
      StoreV(s_bias + j, LoadV(s_bias + j) + dz);
    }
    if (!kBf16 && kSums && ahead >= 0) {
      __builtin_prefetch(c.y + ahead * w + j);
      __builtin_prefetch(c.grad_out + ahead * w + j);
      __builtin_prefetch(c.grad_y + ahead * w + j, 1);
    }
  }
  for (int64_t j = full; j < w; ++j) {
    const float dz = (gy[j] - (xs[j] * k + a)) * rstd;
    if (kBf16) {
      gy_bf[j] = FloatToBf16(dz);
    } else {
      gy[j] = dz;
    }
    if (kSums) {
      const float d = kRelu ? ds[j] : go[j];
      s_beta[j] += d;
      s_gamma[j] += d * xs[j];
      s_bias[j] += dz;
    }
  }
}

// Rows [begin, end), in order, adding into sums (kSums); each row prefetches the one kRowsAhead
// rows later (inside the range: never another thread's rows).
// bf16 path: each row first gets its float32 grad_out (+ grad_add) in L1, in grad_sum when given
// (the caller keeps it: the residual gradient of a block, see mtrl/fused_bronet.py) or in a
// scratch row, and that pass prefetches the next row's bf16 inputs (half a line per vector).
// Without a bf16 grad_out (the layer under the float32 head) grad_add is the gradient: read in
// place, or copied to grad_sum when given.
template <bool kRelu, bool kSums, typename Y>
void BackwardRange(const BackwardCtx& c, int64_t begin, int64_t end, float* sums) {
  constexpr bool kBf16 = std::is_same_v<Y, uint16_t>;
  const int64_t ws = (c.shape.width + 15) / 16 * 16;  // 64-byte aligned scratch rows
  thread_local std::vector<float> buf;
  float* xs = ThreadScratch(buf, (kBf16 ? 4 : 2) * ws);
  const int64_t w = c.shape.width, full = w - w % kW;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t ahead = r + kRowsAhead < end ? r + kRowsAhead : -1;
    const float* go = kBf16 ? nullptr : c.grad_out + r * w;  // (bf16: set below; no grad_out)
    if (kBf16) {
      float* __restrict dst = c.grad_sum != nullptr ? c.grad_sum + r * w : xs + 3 * ws;
      const float* __restrict add = c.grad_add == nullptr ? nullptr : c.grad_add + r * w;
      const int64_t next = ahead >= 0 ? (ahead - r) * w : 0;
      if (c.grad_out_bf == nullptr) {  // the float32 gradient is grad_add alone (float32 head)
        if (next != 0) {
          for (int64_t j = 0; j < full; j += kW) {
            __builtin_prefetch(c.y_bf + r * w + next + j);
            __builtin_prefetch(add + next + j);
          }
        }
        if (c.grad_sum == nullptr) {
          go = add;  // read in place
        } else {
          std::memcpy(dst, add, static_cast<size_t>(w) * sizeof(float));
          go = dst;
        }
      } else {
        const uint16_t* __restrict src = c.grad_out_bf + r * w;
        int64_t j = 0;
        for (; j < full; j += kW) {
          if (next != 0) {
            __builtin_prefetch(src + next + j);
            __builtin_prefetch(c.y_bf + r * w + next + j);
            if (add != nullptr) __builtin_prefetch(add + next + j);
          }
          StoreV(dst + j,
                 add == nullptr ? LoadBf16(src + j) : LoadBf16(src + j) + LoadV(add + j));
        }
        for (; j < w; ++j) {
          dst[j] = add == nullptr ? Bf16ToFloat(src[j]) : Bf16ToFloat(src[j]) + add[j];
        }
        go = dst;
      }
    } else if (c.grad_add != nullptr) {  // grad_out += grad_add for this row (then read from L1)
      float* __restrict dst = c.grad_sum + r * w;
      const float* __restrict src = c.grad_add + r * w;
      int64_t j = 0;
      for (; j < full; j += kW) StoreV(dst + j, LoadV(dst + j) + LoadV(src + j));
      for (; j < w; ++j) dst[j] += src[j];
    }
    BackwardRow<kRelu, kSums, Y>(c, r, ahead, go, xs, xs + ws, xs + 2 * ws, sums);
  }
}

template <typename Y>
void BackwardChunks(void* raw, int64_t begin, int64_t end) {
  const auto& c = *static_cast<const BackwardCtx*>(raw);
  if (c.partial == nullptr) {  // [begin, end) are rows
    return c.relu ? BackwardRange<true, false, Y>(c, begin, end, nullptr)
                  : BackwardRange<false, false, Y>(c, begin, end, nullptr);
  }
  // [begin, end) are gradient chunks: chunk i of member e covers a fixed range of its rows.
  const int64_t w = c.shape.width, rows = c.shape.rows_per_member;
  for (int64_t chunk = begin; chunk < end; ++chunk) {
    const int64_t e = chunk / c.chunks_per_member, i = chunk % c.chunks_per_member;
    const int64_t first = e * rows + rows * i / c.chunks_per_member;
    const int64_t last = e * rows + rows * (i + 1) / c.chunks_per_member;
    float* sums = c.partial + chunk * 3 * w;
    for (int64_t k = 0; k < 3 * w; ++k) sums[k] = 0.0f;
    if (c.relu) {
      BackwardRange<true, true, Y>(c, first, last, sums);
    } else {
      BackwardRange<false, true, Y>(c, first, last, sums);
    }
  }
}

inline void EnsembleNormForwardImpl(const EnsembleNormShape& shape, const float* y,
                                    const float* bias, const float* gamma, const float* beta,
                                    const float* residual, NormEpilogue epilogue, float eps,
                                    float* out, float* mean, float* rstd, int num_threads) {
  ForwardCtx ctx{shape, y, bias, gamma, beta, residual, epilogue, eps, out, mean, rstd};
  ParallelFor(shape.members * shape.rows_per_member, num_threads, 64, ForwardChunk<float>, &ctx);
}

inline void EnsembleNormForwardBf16Impl(const EnsembleNormShape& shape, const uint16_t* y,
                                        const float* bias, const float* gamma, const float* beta,
                                        const float* residual, NormEpilogue epilogue, float eps,
                                        float* out, uint16_t* out_bf, float* mean, float* rstd,
                                        int num_threads) {
  ForwardCtx ctx{shape, nullptr, bias, gamma, beta, residual, epilogue, eps, out, mean, rstd,
                 y, out_bf};
  ParallelFor(shape.members * shape.rows_per_member, num_threads, 64, ForwardChunk<uint16_t>,
              &ctx);
}

// The rows, then (grad_bias not null) the chunk sums of the parameter gradients, for a context
// whose parameter-gradient fields are still unset.
template <typename Y>
inline void RunBackward(BackwardCtx& ctx, float* grad_bias, float* grad_gamma, float* grad_beta,
                        int num_threads) {
  const EnsembleNormShape& shape = ctx.shape;
  const int64_t w = shape.width;
  if (grad_bias == nullptr) {
    ParallelFor(shape.members * shape.rows_per_member, num_threads, 64, BackwardChunks<Y>, &ctx);
    return;
  }
  const int64_t per_member =
      std::max<int64_t>(1, (shape.rows_per_member + kRowsPerGradChunk - 1) / kRowsPerGradChunk);
  const int64_t num_chunks = shape.members * per_member;
  thread_local std::vector<float> partial_buf;  // the caller's: workers only write their chunks
  ctx.partial = ThreadScratch(partial_buf, num_chunks * 3 * w);
  ctx.chunks_per_member = per_member;
  ParallelFor(num_chunks, num_threads, 1, BackwardChunks<Y>, &ctx);
  // Chunks are summed in a fixed order: the result does not depend on num_threads.
  float* outs[3] = {grad_beta, grad_gamma, grad_bias};
  for (int64_t e = 0; e < shape.members; ++e) {
    for (int p = 0; p < 3; ++p) {
      const float* first = ctx.partial + (e * per_member * 3 + p) * w;
      float* dst = outs[p] + e * w;
      int64_t k = 0;
      for (; k + kW <= w; k += kW) {
        FV s = LoadV(first + k);
        for (int64_t i = 1; i < per_member; ++i) s += LoadV(first + i * 3 * w + k);
        StoreV(dst + k, s);
      }
      for (; k < w; ++k) {
        float s = first[k];
        for (int64_t i = 1; i < per_member; ++i) s += first[i * 3 * w + k];
        dst[k] = s;
      }
    }
  }
}

inline void EnsembleNormBackwardImpl(const EnsembleNormShape& shape, const float* grad_out,
                                     const float* grad_add, const float* y, const float* bias,
                                     const float* gamma, const float* beta, const float* mean,
                                     const float* rstd, bool relu, float* grad_y,
                                     float* grad_bias, float* grad_gamma, float* grad_beta,
                                     int num_threads) {
  // grad_out is the caller's writable buffer when grad_add is given (see ensemble_norm.h).
  float* grad_sum = grad_add == nullptr ? nullptr : const_cast<float*>(grad_out);
  BackwardCtx ctx{shape, grad_out, y,    bias,   gamma,   beta, mean, rstd,
                  grad_add, grad_sum, relu, grad_y, nullptr, 0};
  RunBackward<float>(ctx, grad_bias, grad_gamma, grad_beta, num_threads);
}

inline void EnsembleNormBackwardBf16Impl(const EnsembleNormShape& shape, const uint16_t* grad_out,
                                         const float* grad_add, float* grad_sum, const uint16_t* y,
                                         const float* bias, const float* gamma, const float* beta,
                                         const float* mean, const float* rstd, bool relu,
                                         uint16_t* grad_y, float* grad_bias, float* grad_gamma,
                                         float* grad_beta, int num_threads) {
  BackwardCtx ctx{shape,    nullptr,  nullptr, bias,    gamma,   beta, mean, rstd,
                  grad_add, grad_sum, relu,    nullptr, nullptr, 0,    grad_out, y, grad_y};
  RunBackward<uint16_t>(ctx, grad_bias, grad_gamma, grad_beta, num_threads);
}

}  // namespace
}  // namespace mtrl
