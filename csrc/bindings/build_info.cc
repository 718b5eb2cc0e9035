// Build facts exposed to Python: compiled CUDA kernels and device count.
#include <pybind11/pybind11.h>

#include "bindings/registrars.h"
#include "common/cuda_device.h"

namespace py = pybind11;

namespace mtrl {

bool CudaBuilt() {
#ifdef MTRL_WITH_CUDA
  return true;
#else
  return false;
#endif
}

#ifndef MTRL_WITH_CUDA
int CudaDeviceCount() { return 0; }
#endif

void RegisterBuildInfo(py::module_& m) {
  m.def("cuda_built", &CudaBuilt, "True when the CUDA kernels were compiled into mtrl._core.");
  m.def("cuda_device_count", &CudaDeviceCount,
        "Number of CUDA devices the runtime can use (0 without a driver or without CUDA).");
}

}  // namespace mtrl
