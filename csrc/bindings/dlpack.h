// Reading torch CPU tensors handed over as DLPack capsules (torch.utils.dlpack.to_dlpack: ~0.3 us
// each, against ~1-2 us for Tensor.detach().numpy()), for the binding fast paths of the CPU kernels.
//
// The Python side passes capsules and keeps them alive for the call; they are read, never consumed:
// each keeps its tensor alive and frees its DLManagedTensor when Python drops it, after the call.
// The structs are the DLPack ABI (dlpack.h, "dltensor" capsules). A fast entry point answers None
// when any input is not already in kernel form, and the caller then takes its general (NumPy) path,
// which converts or raises the exact error.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>

namespace mtrl {
namespace dlpack {

struct DlDevice {
  int32_t device_type;  // 1 = kDLCPU
  int32_t device_id;
};
struct DlDataType {
  uint8_t code;  // 2 = kDLFloat
  uint8_t bits;
  uint16_t lanes;
};
struct DlTensor {
  void* data;
  DlDevice device;
  int32_t ndim;
  DlDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; nullptr = compact row-major
  uint64_t byte_offset;
};
struct DlManagedTensor {
  DlTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DlManagedTensor*);
};

// The tensor of an unconsumed "dltensor" capsule, or nullptr when obj is anything else.
inline const DlTensor* DlView(pybind11::handle obj) {
  if (!PyCapsule_IsValid(obj.ptr(), "dltensor")) return nullptr;
  auto* managed = static_cast<DlManagedTensor*>(PyCapsule_GetPointer(obj.ptr(), "dltensor"));
  return managed == nullptr ? nullptr : &managed->dl_tensor;
}

// Data of a dense row-major CPU tensor of T with exactly `shape`; nullptr when t is absent or
// differs in any of these (the caller then takes the general path, which converts or explains).
template <typename T>
inline T* DenseCpu(const DlTensor* t, std::initializer_list<int64_t> shape) {
  if (t == nullptr || t->device.device_type != 1 || t->dtype.code != 2 ||
      t->dtype.bits != 8 * sizeof(T) || t->dtype.lanes != 1 ||
      t->ndim != static_cast<int32_t>(shape.size())) {
    return nullptr;
  }
  int64_t expected_stride = 1;
  for (int32_t i = t->ndim - 1; i >= 0; --i) {
    const int64_t size = shape.begin()[i];
    if (t->shape[i] != size) return nullptr;
    if (t->strides != nullptr && size > 1 && t->strides[i] != expected_stride) return nullptr;
    expected_stride *= size;
  }
  char* base = static_cast<char*>(t->data) + t->byte_offset;
  if (reinterpret_cast<uintptr_t>(base) % alignof(T) != 0) return nullptr;
  return reinterpret_cast<T*>(base);
}

}  // namespace dlpack
}  // namespace mtrl
