#include <cuda_runtime.h>

#include "common/cuda_device.h"

namespace mtrl {

int CudaDeviceCount() {
  int count = 0;
  // With no driver this returns an error (e.g. cudaErrorInsufficientDriver):
  // that simply means no usable device.
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error state
    return 0;
  }
  return count;
}

}  // namespace mtrl
