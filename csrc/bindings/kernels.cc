// Binding of the fused TD-target kernels (csrc/kernels). The CPU entry points take NumPy-compatible
// buffers (torch CPU tensors via .numpy(), zero-copy), so every size, dtype and contiguity is checked
// here; the *_fast CPU entry points take DLPack capsules and check the same (answering None, not an
// error, so the caller can take its general path that converts or explains); the CUDA entry points
// take raw device pointers as integers (the core does not link libtorch) and can only check sizes.
// The Python wrapper mtrl/ops/td_target.py does the friendly validation.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>

#include "bindings/dlpack.h"
#include "bindings/registrars.h"
#include "kernels/td_target.h"
#include "kernels/td_target_cuda.h"

namespace py = pybind11;

namespace mtrl {
namespace {

std::string ShapeString(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// Checks dtype T, C-contiguity and the exact shape; returns the data pointer.
template <typename T>
const T* Input(const py::array& a, const char* name, std::initializer_list<int64_t> shape) {
  if (!a.dtype().is(py::dtype::of<T>())) {
    throw std::invalid_argument(std::string(name) + " must have dtype " +
                                std::string(py::str(py::dtype::of<T>())) + ", got " +
                                std::string(py::str(a.dtype())));
  }
  if (!(a.flags() & py::array::c_style)) {
    throw std::invalid_argument(std::string(name) + " must be C-contiguous");
  }
  bool match = a.ndim() == static_cast<py::ssize_t>(shape.size());
  size_t i = 0;
  for (int64_t d : shape) match = match && a.shape(static_cast<py::ssize_t>(i++)) == d;
  if (!match) {
    std::string want = "(";
    i = 0;
    for (int64_t d : shape) want += (i++ ? ", " : "") + std::to_string(d);
    want += shape.size() == 1 ? ",)" : ")";
    throw std::invalid_argument(std::string(name) + " must have shape " + want + ", got " +
                                ShapeString(a));
  }
  return static_cast<const T*>(a.data());
}

template <typename T>
T* Output(py::array& a, const char* name, std::initializer_list<int64_t> shape) {
  Input<T>(a, name, shape);
  if (!a.writeable()) throw std::invalid_argument(std::string(name) + " must be writeable");
  return static_cast<T*>(a.mutable_data());
}

// ---- DLPack fast path (bindings/dlpack.h) -------------------------------------------------------
using dlpack::DenseCpu;
using dlpack::DlTensor;
using dlpack::DlView;

// Members, batch and atoms of (E, B, K) logits, also set on the kernel's argument struct.
template <typename Args>
std::tuple<int64_t, int64_t, int64_t> SetSizes(const DlTensor* logits, Args* a) {
  a->num_members = logits->shape[0];
  a->batch_size = logits->shape[1];
  a->num_atoms = logits->shape[2];
  return {a->num_members, a->batch_size, a->num_atoms};
}

template <typename T>
py::object TdTargetCpuFastTyped(const DlTensor* logits, py::handle reward, py::handle mask,
                                py::handle discount, double discount_value, py::handle entropy,
                                py::handle target, py::handle expected_value, double v_min,
                                double v_max, int combine, int projection, double sigma,
                                int num_threads) {
  TdTargetArgs<T> a;
  const auto [e, b, k] = SetSizes(logits, &a);
  a.target_logits = DenseCpu<T>(logits, {e, b, k});
  a.reward = DenseCpu<T>(DlView(reward), {b});
  a.mask = DenseCpu<T>(DlView(mask), {b});
  a.discount = discount.is_none() ? nullptr : DenseCpu<T>(DlView(discount), {b});
  a.entropy = entropy.is_none() ? nullptr : DenseCpu<T>(DlView(entropy), {b});
  a.target = DenseCpu<T>(DlView(target), {b, k});
  a.expected_value = DenseCpu<T>(DlView(expected_value), {b});
  if (a.target_logits == nullptr || a.reward == nullptr || a.mask == nullptr ||
      (!discount.is_none() && a.discount == nullptr) || (!entropy.is_none() && a.entropy == nullptr) ||
      a.target == nullptr || a.expected_value == nullptr) {
    return py::none();
  }
  a.discount_value = discount_value;
  a.v_min = v_min;
  a.v_max = v_max;
  a.combine = static_cast<Combine>(combine);
  a.projection = static_cast<Projection>(projection);
  a.sigma = sigma;
  int64_t bad = 0;
  {
    // The capsules (held by the caller) keep every buffer alive.
    py::gil_scoped_release release;
    bad = TdTargetCpuUnchecked<T>(a, num_threads);
  }
  return py::int_(bad);
}

// None unless every input is already in kernel form (CPU, dense, the logits' float dtype, exact
// shapes, valid sizes, support, codes and sigma); otherwise the number of non-finite rows.
py::object TdTargetCpuFast(py::handle logits, py::handle reward, py::handle mask,
                           py::handle discount, double discount_value, py::handle entropy,
                           py::handle target, py::handle expected_value, double v_min,
                           double v_max, int combine, int projection, double sigma,
                           int num_threads) {
  const DlTensor* t = DlView(logits);
  if (t == nullptr || t->ndim != 3 || (combine != 0 && combine != 1) ||
      (projection != 0 && projection != 1) || (projection == 1 && !(sigma > 0.0)) ||
      !std::isfinite(discount_value)) {
    return py::none();
  }
  try {
    CheckTdTargetSizes(t->shape[0], t->shape[1], t->shape[2], v_min, v_max, sigma);
  } catch (const std::invalid_argument&) {
    return py::none();
  }
  if (t->dtype.code == 2 && t->dtype.bits == 64) {
    return TdTargetCpuFastTyped<double>(t, reward, mask, discount, discount_value, entropy, target,
                                        expected_value, v_min, v_max, combine, projection, sigma,
                                        num_threads);
  }
  return TdTargetCpuFastTyped<float>(t, reward, mask, discount, discount_value, entropy, target,
                                     expected_value, v_min, v_max, combine, projection, sigma,
                                     num_threads);
}

template <typename T>
py::object CrossEntropyCpuFastTyped(const DlTensor* logits, py::handle target, py::handle weight,
                                    py::handle td_error, py::handle grad, py::handle loss,
                                    int num_threads) {
  CrossEntropyArgs<T> a;
  const auto [e, b, k] = SetSizes(logits, &a);
  a.online_logits = DenseCpu<T>(logits, {e, b, k});
  a.target = DenseCpu<T>(DlView(target), {b, k});
  a.weight = weight.is_none() ? nullptr : DenseCpu<T>(DlView(weight), {b});
  a.td_error = DenseCpu<T>(DlView(td_error), {b});
  a.grad = grad.is_none() ? nullptr : DenseCpu<T>(DlView(grad), {e, b, k});
  T* loss_out = DenseCpu<T>(DlView(loss), {});
  if (a.online_logits == nullptr || a.target == nullptr ||
      (!weight.is_none() && a.weight == nullptr) || a.td_error == nullptr ||
      (!grad.is_none() && a.grad == nullptr) || loss_out == nullptr) {
    return py::none();
  }
  double total = 0.0;
  int64_t bad = 0;
  {
    // The capsules (held by the caller) keep every buffer alive.
    py::gil_scoped_release release;
    bad = CrossEntropyCpuUnchecked<T>(a, num_threads, &total);
  }
  *loss_out = static_cast<T>(total);
  return py::int_(bad);
}

py::object CrossEntropyCpuFast(py::handle logits, py::handle target, py::handle weight,
                               py::handle td_error, py::handle grad, py::handle loss,
                               int num_threads) {
  const DlTensor* t = DlView(logits);
  if (t == nullptr || t->ndim != 3) return py::none();
  try {
    CheckTdTargetSizes(t->shape[0], t->shape[1], t->shape[2], -1.0, 1.0, 0.0);
  } catch (const std::invalid_argument&) {
    return py::none();
  }
  if (t->dtype.code == 2 && t->dtype.bits == 64) {
    return CrossEntropyCpuFastTyped<double>(t, target, weight, td_error, grad, loss, num_threads);
  }
  return CrossEntropyCpuFastTyped<float>(t, target, weight, td_error, grad, loss, num_threads);
}

template <typename T>
int64_t TdTargetCpuTyped(const py::array& logits, const py::array& reward, const py::array& mask,
                         const std::optional<py::array>& discount, double discount_value,
                         const std::optional<py::array>& entropy, py::array& target,
                         py::array& expected_value, double v_min, double v_max, int combine,
                         int projection, double sigma, int num_threads, int max_isa) {
  TdTargetArgs<T> a;
  a.num_members = logits.shape(0);
  a.batch_size = logits.shape(1);
  a.num_atoms = logits.shape(2);
  CheckTdTargetSizes(a.num_members, a.batch_size, a.num_atoms, v_min, v_max, sigma);
  const int64_t e = a.num_members, b = a.batch_size, k = a.num_atoms;
  a.target_logits = Input<T>(logits, "target_logits", {e, b, k});
  a.reward = Input<T>(reward, "reward", {b});
  a.mask = Input<T>(mask, "mask", {b});
  a.discount = discount ? Input<T>(*discount, "discount", {b}) : nullptr;
  a.discount_value = discount_value;
  a.entropy = entropy ? Input<T>(*entropy, "entropy", {b}) : nullptr;
  a.target = Output<T>(target, "target", {b, k});
  a.expected_value = Output<T>(expected_value, "expected_value", {b});
  a.v_min = v_min;
  a.v_max = v_max;
  if (combine != 0 && combine != 1) throw std::invalid_argument("combine must be 0 (mean) or 1 (min)");
  if (projection != 0 && projection != 1) {
    throw std::invalid_argument("projection must be 0 (c51) or 1 (hl_gauss)");
  }
  if (projection == 1 && !(sigma > 0.0)) throw std::invalid_argument("HL-Gauss needs sigma > 0");
  a.combine = static_cast<Combine>(combine);
  a.projection = static_cast<Projection>(projection);
  a.sigma = sigma;
  // The kernel reads and writes only the buffers above, which the caller keeps alive.
  py::gil_scoped_release release;
  return TdTargetCpuUnchecked<T>(a, num_threads, max_isa);
}

int64_t TdTargetCpu(const py::array& logits, const py::array& reward, const py::array& mask,
                    const std::optional<py::array>& discount, double discount_value,
                    const std::optional<py::array>& entropy, py::array& target,
                    py::array& expected_value, double v_min, double v_max, int combine,
                    int projection, double sigma, int num_threads, int max_isa) {
  if (logits.ndim() != 3) {
    throw std::invalid_argument("target_logits must have shape (E, B, K), got " +
                                ShapeString(logits));
  }
  if (logits.dtype().is(py::dtype::of<double>())) {
    return TdTargetCpuTyped<double>(logits, reward, mask, discount, discount_value, entropy,
                                    target, expected_value, v_min, v_max, combine, projection,
                                    sigma, num_threads, max_isa);
  }
  return TdTargetCpuTyped<float>(logits, reward, mask, discount, discount_value, entropy, target,
                                 expected_value, v_min, v_max, combine, projection, sigma,
                                 num_threads, max_isa);
}

template <typename T>
int64_t CrossEntropyCpuTyped(const py::array& logits, const py::array& target,
                             const std::optional<py::array>& weight, py::array& td_error,
                             std::optional<py::array>& grad, py::array& loss, int num_threads,
                             int max_isa) {
  CrossEntropyArgs<T> a;
  a.num_members = logits.shape(0);
  a.batch_size = logits.shape(1);
  a.num_atoms = logits.shape(2);
  CheckTdTargetSizes(a.num_members, a.batch_size, a.num_atoms, -1.0, 1.0, 0.0);
  const int64_t e = a.num_members, b = a.batch_size, k = a.num_atoms;
  a.online_logits = Input<T>(logits, "online_logits", {e, b, k});
  a.target = Input<T>(target, "target", {b, k});
  a.weight = weight ? Input<T>(*weight, "weight", {b}) : nullptr;
  a.td_error = Output<T>(td_error, "td_error", {b});
  a.grad = grad ? Output<T>(*grad, "grad", {e, b, k}) : nullptr;
  if (loss.size() != 1) throw std::invalid_argument("loss must have exactly one element");
  if (!loss.dtype().is(py::dtype::of<T>()) || !loss.writeable()) {
    throw std::invalid_argument("loss must be a writeable array of the logits' dtype");
  }
  T* loss_out = static_cast<T*>(loss.mutable_data());
  double total = 0.0;
  int64_t bad = 0;
  {
    // The kernel reads and writes only the buffers above, which the caller keeps alive.
    py::gil_scoped_release release;
    bad = CrossEntropyCpuUnchecked<T>(a, num_threads, &total, max_isa);
  }
  *loss_out = static_cast<T>(total);
  return bad;
}

int64_t CrossEntropyCpu(const py::array& logits, const py::array& target,
                        const std::optional<py::array>& weight, py::array& td_error,
                        std::optional<py::array>& grad, py::array& loss, int num_threads,
                        int max_isa) {
  if (logits.ndim() != 3) {
    throw std::invalid_argument("online_logits must have shape (E, B, K), got " +
                                ShapeString(logits));
  }
  if (logits.dtype().is(py::dtype::of<double>())) {
    return CrossEntropyCpuTyped<double>(logits, target, weight, td_error, grad, loss, num_threads,
                                        max_isa);
  }
  return CrossEntropyCpuTyped<float>(logits, target, weight, td_error, grad, loss, num_threads,
                                     max_isa);
}

template <typename T>
void ScaleCpuTyped(const py::array& src, double factor, py::array& dst, int num_threads) {
  if (!(src.flags() & py::array::c_style) || !(dst.flags() & py::array::c_style)) {
    throw std::invalid_argument("src and dst must be C-contiguous");
  }
  if (!dst.dtype().is(py::dtype::of<T>()) || !dst.writeable() || dst.size() != src.size()) {
    throw std::invalid_argument("dst must be a writeable array of src's dtype and size");
  }
  const T* in = static_cast<const T*>(src.data());
  T* out = static_cast<T*>(dst.mutable_data());
  const int64_t n = src.size();
  // Reads src and writes dst only; the caller keeps both alive.
  py::gil_scoped_release release;
  ScaleCpuUnchecked<T>(in, static_cast<T>(factor), out, n, num_threads);
}

void ScaleCpu(const py::array& src, double factor, py::array& dst, int num_threads) {
  if (src.dtype().is(py::dtype::of<double>())) return ScaleCpuTyped<double>(src, factor, dst, num_threads);
  if (src.dtype().is(py::dtype::of<float>())) return ScaleCpuTyped<float>(src, factor, dst, num_threads);
  throw std::invalid_argument("src must be float32 or float64, got " + std::string(py::str(src.dtype())));
}

// CUDA entry points: raw device pointers (integers from tensor.data_ptr()), so only sizes, codes and
// non-null pointers can be checked here; mtrl/ops/td_target.py checks devices, dtypes and layout.
template <typename P>
P* DevicePtr(uintptr_t address, const char* name, bool required = true) {
  if (address == 0 && required) throw std::invalid_argument(std::string(name) + " must not be null");
  return reinterpret_cast<P*>(address);
}

CudaDType CheckDType(int dtype) {
  if (dtype != 0 && dtype != 1) {
    throw std::invalid_argument("dtype must be 0 (float32) or 1 (bfloat16), got " +
                                std::to_string(dtype));
  }
  return static_cast<CudaDType>(dtype);
}

void TdTargetCudaBinding(uintptr_t logits, int dtype, int64_t num_members, int64_t batch_size,
                         int64_t num_atoms, uintptr_t reward, uintptr_t mask, uintptr_t discount,
                         double discount_value, uintptr_t entropy, uintptr_t target,
                         uintptr_t expected_value, uintptr_t nonfinite_count, double v_min,
                         double v_max, int combine, int projection, double sigma, int device,
                         uintptr_t stream, int row_lanes) {
#ifdef MTRL_WITH_CUDA
  CheckTdTargetSizes(num_members, batch_size, num_atoms, v_min, v_max, sigma);
  if (combine != 0 && combine != 1) throw std::invalid_argument("combine must be 0 (mean) or 1 (min)");
  if (projection != 0 && projection != 1) {
    throw std::invalid_argument("projection must be 0 (c51) or 1 (hl_gauss)");
  }
  if (projection == 1 && !(sigma > 0.0)) throw std::invalid_argument("HL-Gauss needs sigma > 0");
  if (row_lanes != 0 && row_lanes != 1 && row_lanes != 2 && row_lanes != 8 && row_lanes != 16 &&
      row_lanes != 32) {
    throw std::invalid_argument("row_lanes must be 0 (auto), 1, 2, 8, 16 or 32, got " +
                                std::to_string(row_lanes));
  }
  TdTargetCudaArgs a;
  a.target_logits = DevicePtr<const void>(logits, "target_logits");
  a.dtype = CheckDType(dtype);
  a.reward = DevicePtr<const float>(reward, "reward");
  a.mask = DevicePtr<const float>(mask, "mask");
  a.discount = DevicePtr<const float>(discount, "discount", false);
  a.discount_value = static_cast<float>(discount_value);
  a.entropy = DevicePtr<const float>(entropy, "entropy", false);
  a.num_members = num_members;
  a.batch_size = batch_size;
  a.num_atoms = num_atoms;
  a.v_min = static_cast<float>(v_min);
  a.v_max = static_cast<float>(v_max);
  a.combine = static_cast<Combine>(combine);
  a.projection = static_cast<Projection>(projection);
  a.sigma = static_cast<float>(sigma);
  a.target = DevicePtr<float>(target, "target");
  a.expected_value = DevicePtr<float>(expected_value, "expected_value");
  a.nonfinite_count = DevicePtr<int32_t>(nonfinite_count, "nonfinite_count", false);  // optional
  a.row_lanes = row_lanes;
  a.device = device;
  a.stream = reinterpret_cast<void*>(stream);
  // Only enqueues work on the stream; touches no Python object.
  py::gil_scoped_release release;
  TdTargetCuda(a);
#else
  (void)logits, (void)dtype, (void)num_members, (void)batch_size, (void)num_atoms, (void)reward;
  (void)mask, (void)discount, (void)discount_value, (void)entropy, (void)target;
  (void)expected_value, (void)nonfinite_count, (void)v_min, (void)v_max, (void)combine;
  (void)projection, (void)sigma, (void)device, (void)stream, (void)row_lanes;
  throw std::runtime_error("mtrl was built without CUDA");
#endif
}

void CrossEntropyCudaBinding(uintptr_t logits, int dtype, int64_t num_members, int64_t batch_size,
                             int64_t num_atoms, uintptr_t target, uintptr_t weight,
                             uintptr_t td_error, uintptr_t grad, uintptr_t loss,
                             uintptr_t nonfinite_count, int device, uintptr_t stream) {
#ifdef MTRL_WITH_CUDA
  CheckTdTargetSizes(num_members, batch_size, num_atoms, -1.0, 1.0, 0.0);
  CrossEntropyCudaArgs a;
  a.online_logits = DevicePtr<const void>(logits, "online_logits");
  a.dtype = CheckDType(dtype);
  a.target = DevicePtr<const float>(target, "target");
  a.weight = DevicePtr<const float>(weight, "weight", false);
  a.num_members = num_members;
  a.batch_size = batch_size;
  a.num_atoms = num_atoms;
  a.td_error = DevicePtr<float>(td_error, "td_error");
  a.grad = DevicePtr<void>(grad, "grad", false);
  a.loss = DevicePtr<float>(loss, "loss");
  a.nonfinite_count = DevicePtr<int32_t>(nonfinite_count, "nonfinite_count");
  a.device = device;
  a.stream = reinterpret_cast<void*>(stream);
  // Only enqueues work on the stream; touches no Python object.
  py::gil_scoped_release release;
  CrossEntropyCuda(a);
#else
  (void)logits, (void)dtype, (void)num_members, (void)batch_size, (void)num_atoms, (void)target;
  (void)weight, (void)td_error, (void)grad, (void)loss, (void)nonfinite_count, (void)device;
  (void)stream;
  throw std::runtime_error("mtrl was built without CUDA");
#endif
}

}  // namespace

void RegisterKernels(py::module_& m) {
  m.def("_td_target_cpu", &TdTargetCpu, py::arg("target_logits"), py::arg("reward"),
        py::arg("mask"), py::arg("discount"), py::arg("discount_value"), py::arg("entropy"),
        py::arg("target"), py::arg("expected_value"), py::arg("v_min"), py::arg("v_max"),
        py::arg("combine"), py::arg("projection"), py::arg("sigma"), py::arg("num_threads"),
        py::arg("max_isa") = 2,
        "Categorical TD target on the CPU into `target` [B, K] and `expected_value` [B] "
        "(float32 or float64 buffers). max_isa caps the float build: 0 baseline, 1 AVX2, 2 "
        "AVX-512 (the best the CPU runs). Returns the number of rows with non-finite inputs.");
  m.def("_cross_entropy_cpu", &CrossEntropyCpu, py::arg("online_logits"), py::arg("target"),
        py::arg("weight"), py::arg("td_error"), py::arg("grad"), py::arg("loss"),
        py::arg("num_threads"), py::arg("max_isa") = 2,
        "Categorical cross-entropy (sum over members of the weighted batch mean) into `loss`, "
        "per-sample td_error [B] and optionally its gradient [E, B, K]. Returns the number of "
        "rows with non-finite inputs.");
  m.def("_td_target_cpu_fast", &TdTargetCpuFast, py::arg("target_logits"), py::arg("reward"),
        py::arg("mask"), py::arg("discount"), py::arg("discount_value"), py::arg("entropy"),
        py::arg("target"), py::arg("expected_value"), py::arg("v_min"), py::arg("v_max"),
        py::arg("combine"), py::arg("projection"), py::arg("sigma"), py::arg("num_threads"),
        "_td_target_cpu on DLPack capsules (torch.utils.dlpack.to_dlpack; optional inputs None). "
        "Returns None, computing nothing, unless every buffer is a dense CPU tensor of the "
        "logits' float dtype with the exact shape and the sizes, support, codes and sigma are "
        "valid; else the number of rows with non-finite inputs.");
  m.def("_cross_entropy_cpu_fast", &CrossEntropyCpuFast, py::arg("online_logits"),
        py::arg("target"), py::arg("weight"), py::arg("td_error"), py::arg("grad"),
        py::arg("loss"), py::arg("num_threads"),
        "_cross_entropy_cpu on DLPack capsules (weight and grad may be None; loss 0-d). Returns "
        "None, computing nothing, unless every buffer is a dense CPU tensor of the logits' float "
        "dtype with the exact shape and the sizes are valid; else the non-finite row count.");
  m.def("_td_target_cuda", &TdTargetCudaBinding, py::arg("target_logits"), py::arg("dtype"),
        py::arg("num_members"), py::arg("batch_size"), py::arg("num_atoms"), py::arg("reward"),
        py::arg("mask"), py::arg("discount"), py::arg("discount_value"), py::arg("entropy"),
        py::arg("target"), py::arg("expected_value"), py::arg("nonfinite_count"), py::arg("v_min"),
        py::arg("v_max"), py::arg("combine"), py::arg("projection"), py::arg("sigma"),
        py::arg("device"), py::arg("stream"), py::arg("row_lanes") = 0,
        "Enqueue the CUDA TD target (device pointers as integers; 0 = absent optional input) on "
        "`stream`. row_lanes: lanes per row of the kernel (0 chooses; 1 or 2 (threads per row, "
        "K <= 128), 8, 16 or 32 force a layout where the row fits; the same results up to float "
        "rounding). "
        "RuntimeError when mtrl was built without CUDA.");
  m.def("_cross_entropy_cuda", &CrossEntropyCudaBinding, py::arg("online_logits"),
        py::arg("dtype"), py::arg("num_members"), py::arg("batch_size"), py::arg("num_atoms"),
        py::arg("target"), py::arg("weight"), py::arg("td_error"), py::arg("grad"),
        py::arg("loss"), py::arg("nonfinite_count"), py::arg("device"), py::arg("stream"),
        "Enqueue the CUDA cross-entropy (+ gradient when grad != 0) on `stream`. RuntimeError "
        "when mtrl was built without CUDA.");
  m.def("_scale_cpu", &ScaleCpu, py::arg("src"), py::arg("factor"), py::arg("dst"),
        py::arg("num_threads"), "dst = src * factor (float32/float64, same size, contiguous).");
}

}  // namespace mtrl
