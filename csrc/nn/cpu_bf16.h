// Whether this CPU runs bf16 matrix products natively: the condition for AgentConfig.bf16 on the
// CPU (mtrl/agent.py). oneDNN, behind torch's CPU bf16 bmm, uses AMX-BF16 tiles or AVX512-BF16 dot
// products (vdpbf16ps) when the CPU has them and otherwise emulates bf16 with float32 arithmetic
// plus conversions, which is slower than the float32 matmul itself: a bf16 critic there would be
// a silent slowdown, so the agent refuses it instead.
#pragma once

namespace mtrl {

struct CpuBf16Features {
  bool avx512_bf16 = false;  // AVX512-BF16 (and AVX512F), with the AVX-512 state enabled by the OS
  bool amx_bf16 = false;     // AMX-BF16 and AMX-TILE, with the tile state enabled by the OS
};

// From cpuid and xgetbv (read once). Thread safety: safe to call from any thread.
CpuBf16Features DetectCpuBf16Features();

}  // namespace mtrl
