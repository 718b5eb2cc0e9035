// cpuid / xgetbv reads for cpu_bf16.h (Intel SDM vol. 2A, CPUID leaf 07H; vol. 1 §13.3, XCR0).
#include "nn/cpu_bf16.h"

#include <cstdint>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define MTRL_CPU_BF16_X86 1
#endif

namespace mtrl {
namespace {

#if defined(MTRL_CPU_BF16_X86)
uint64_t ReadXcr0() {
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

CpuBf16Features Detect() {
  CpuBf16Features f;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return f;  // OSXSAVE: xgetbv usable
  const uint64_t xcr0 = ReadXcr0();
  // XCR0 bits 1, 2 (SSE, AVX) and 5-7 (opmask, ZMM upper halves, ZMM16-31): AVX-512 state;
  // bits 17-18 (XTILECFG, XTILEDATA): AMX tile state.
  const bool os_avx512 = (xcr0 & 0xE6) == 0xE6;
  const bool os_amx = (xcr0 & 0x60000) == 0x60000;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
  const bool avx512f = b & (1u << 16);
  const bool amx_bf16 = d & (1u << 22), amx_tile = d & (1u << 24);
  const unsigned max_subleaf = a;
  bool avx512_bf16 = false;
  if (max_subleaf >= 1 && __get_cpuid_count(7, 1, &a, &b, &c, &d)) avx512_bf16 = a & (1u << 5);
  f.avx512_bf16 = avx512_bf16 && avx512f && os_avx512;
  f.amx_bf16 = amx_bf16 && amx_tile && os_amx;
  return f;
}
#else
CpuBf16Features Detect() { return CpuBf16Features{}; }  // not x86-64: no AMX / AVX512-BF16
#endif

}  // namespace

CpuBf16Features DetectCpuBf16Features() {
  static const CpuBf16Features kFeatures = Detect();
  return kFeatures;
}

}  // namespace mtrl
