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

// Whether t is a CPU tensor of scalar type T (one lane).
template <typename T>
inline bool CpuOf(const DlTensor* t) {
  return t != nullptr && t->device.device_type == 1 && t->dtype.code == 2 &&
         t->dtype.bits == 8 * sizeof(T) && t->dtype.lanes == 1;
}

// Data of t when it is row-major dense (strides of size-1 dims are ignored) and aligned for T.
template <typename T>
inline T* DenseData(const DlTensor* t) {
  int64_t expected_stride = 1;
  for (int32_t i = t->ndim - 1; i >= 0; --i) {
    if (t->strides != nullptr && t->shape[i] > 1 && t->strides[i] != expected_stride) return nullptr;
    expected_stride *= t->shape[i];
  }
  char* base = static_cast<char*>(t->data) + t->byte_offset;
  if (reinterpret_cast<uintptr_t>(base) % alignof(T) != 0) return nullptr;
  return reinterpret_cast<T*>(base);
}

// Data of a dense row-major CPU tensor of T with exactly `shape`; nullptr when t is absent or
// differs in any of these (the caller then takes the general path, which converts or explains).
template <typename T>
inline T* DenseCpu(const DlTensor* t, std::initializer_list<int64_t> shape) {
  if (!CpuOf<T>(t) || t->ndim != static_cast<int32_t>(shape.size())) return nullptr;
  for (int32_t i = 0; i < t->ndim; ++i) {
    if (t->shape[i] != shape.begin()[i]) return nullptr;
  }
  return DenseData<T>(t);
}

// Data of a dense row-major CPU tensor of T of any shape, its element count in *size; nullptr
// when t is absent or not one.
template <typename T>
inline T* DenseCpuAnyShape(const DlTensor* t, int64_t* size) {
  if (!CpuOf<T>(t)) return nullptr;
  *size = 1;
  for (int32_t i = 0; i < t->ndim; ++i) *size *= t->shape[i];
  return DenseData<T>(t);
}

}  // namespace dlpack
}  // namespace mtrl
