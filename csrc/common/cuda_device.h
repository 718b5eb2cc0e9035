// Whether CUDA kernels were compiled in, and how many devices the runtime sees.
#pragma once

namespace mtrl {

// True when the module was built with the CUDA kernels.
bool CudaBuilt();

// Number of usable CUDA devices; 0 when built without CUDA or when no
// driver/device is present (cudaGetDeviceCount's error is treated as 0).
int CudaDeviceCount();

}  // namespace mtrl
