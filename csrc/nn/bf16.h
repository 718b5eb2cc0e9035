// bfloat16 <-> float32 for the bf16 critic path (mtrl/fused_bronet.py), scalar and in row_ops.h's
// vectors (kW lanes). Internal linkage, like row_ops.h: the including file is compiled once per
// instruction set.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/row_ops.h"

namespace mtrl {
namespace {

// bf16 is the upper 16 bits of a float32.
// Widening is exact (a shift). Narrowing rounds to nearest, ties to even, in integer arithmetic:
// bitwise c10::BFloat16's round_to_nearest_even and ATen's vectorised cast, i.e. torch's
// .to(torch.bfloat16), for every non-NaN value, subnormals included (NaN becomes the quiet NaN
// 0x7FC0, as torch's scalar cast). Not AVX512-BF16's vcvtneps2bf16: that instruction flushes
// subnormal inputs to zero (checked on this machine: 0x00012345 gives 0x0000, torch 0x0001), so it
// would not be torch's cast bit for bit; the integer form is five vector operations per 16
// values, next to nothing beside the row's memory traffic.
typedef uint16_t HV __attribute__((vector_size(kW * 2)));
typedef uint32_t UV __attribute__((vector_size(kW * 4)));

inline float Bf16ToFloat(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
inline uint16_t FloatToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if (f != f) return 0x7FC0;
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
inline FV LoadBf16(const uint16_t* p) {
  HV h;
  std::memcpy(&h, p, sizeof(h));
  const UV u = __builtin_convertvector(h, UV) << 16;
  return __builtin_bit_cast(FV, u);
}
inline void StoreBf16(uint16_t* p, FV v) {
  const UV u = __builtin_bit_cast(UV, v);
  UV r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  r = v != v ? UV{} + 0x7FC0u : r;
  const HV h = __builtin_convertvector(r, HV);
  std::memcpy(p, &h, sizeof(h));
}

}  // namespace
}  // namespace mtrl
