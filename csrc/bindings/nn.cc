// Binding of the fused critic-layer kernels (csrc/nn). Tensors arrive as NumPy views of torch CPU
// tensors (zero-copy), so every dtype, layout and size is checked here; mtrl/ensemble_norm.py is the
// friendly Python face.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings/dlpack.h"
#include "bindings/registrars.h"
#include "nn/cpu_bf16.h"
#include "nn/ensemble_norm.h"
#include "nn/tanh_gaussian.h"

namespace py = pybind11;

namespace mtrl {
namespace {

std::string Shape(const std::vector<int64_t>& dims) {
  std::string s = "(";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + (dims.size() == 1 ? ",)" : ")");
}

// float32, C-contiguous, exactly `shape`; returns the data pointer.
float* Buffer(const py::array& a, const char* name, const std::vector<int64_t>& shape,
              bool writeable) {
  if (!a.dtype().is(py::dtype::of<float>())) {
    throw std::invalid_argument(std::string(name) + " must be float32, got " +
                                std::string(py::str(a.dtype())));
  }
  if (!(a.flags() & py::array::c_style)) {
    throw std::invalid_argument(std::string(name) + " must be C-contiguous");
  }
  std::vector<int64_t> got(a.shape(), a.shape() + a.ndim());
  if (got != shape) {
    throw std::invalid_argument(std::string(name) + " must have shape " + Shape(shape) +
                                ", got " + Shape(got));
  }
  if (writeable && !a.writeable()) throw std::invalid_argument(std::string(name) + " must be writeable");
  return static_cast<float*>(const_cast<void*>(a.data()));
}

EnsembleNormShape ShapeOf(const py::array& y) {
  if (y.ndim() != 3) {
    throw std::invalid_argument("y must have shape (E, B, W), got " +
                                Shape(std::vector<int64_t>(y.shape(), y.shape() + y.ndim())));
  }
  EnsembleNormShape s{y.shape(0), y.shape(1), y.shape(2)};
  if (s.members < 1 || s.rows_per_member < 1 || s.width < 1) {
    throw std::invalid_argument("y must have E, B, W >= 1, got " +
                                Shape({s.members, s.rows_per_member, s.width}));
  }
  return s;
}

void Forward(const py::array& y, const py::array& bias, const py::array& gamma,
             const py::array& beta, const std::optional<py::array>& residual, int epilogue,
             double eps, py::array& out, py::array& mean, py::array& rstd, int num_threads,
             int max_isa) {
  const EnsembleNormShape s = ShapeOf(y);
  const std::vector<int64_t> act{s.members, s.rows_per_member, s.width}, param{s.members, s.width},
      row{s.members, s.rows_per_member};
  if (epilogue < 0 || epilogue > 2) {
    throw std::invalid_argument("epilogue must be 0 (none), 1 (relu) or 2 (residual), got " +
                                std::to_string(epilogue));
  }
  if (epilogue == 2 && !residual) throw std::invalid_argument("epilogue 2 (residual) needs residual");
  if (!(eps > 0.0)) throw std::invalid_argument("eps must be > 0, got " + std::to_string(eps));
  const float* py_y = Buffer(y, "y", act, false);
  const float* p_bias = Buffer(bias, "bias", param, false);
  const float* p_gamma = Buffer(gamma, "gamma", param, false);
  const float* p_beta = Buffer(beta, "beta", param, false);
  const float* p_res = epilogue == 2 ? Buffer(*residual, "residual", act, false) : nullptr;
  float* p_out = Buffer(out, "out", act, true);
  float* p_mean = Buffer(mean, "mean", row, true);
  float* p_rstd = Buffer(rstd, "rstd", row, true);
  // Safe without the GIL: the kernel touches only these buffers, which the caller keeps alive.
  py::gil_scoped_release release;
  EnsembleNormForwardUnchecked(s, py_y, p_bias, p_gamma, p_beta, p_res,
                               static_cast<NormEpilogue>(epilogue), static_cast<float>(eps), p_out,
                               p_mean, p_rstd, num_threads, max_isa);
}

void Backward(const py::array& grad_out, const py::array& y, const py::array& bias,
              const py::array& gamma, const py::array& beta, const py::array& mean,
              const py::array& rstd, bool relu, py::array& grad_y,
              std::optional<py::array>& grad_bias, std::optional<py::array>& grad_gamma,
              std::optional<py::array>& grad_beta, int num_threads, int max_isa) {
  const EnsembleNormShape s = ShapeOf(y);
  const std::vector<int64_t> act{s.members, s.rows_per_member, s.width}, param{s.members, s.width},
      row{s.members, s.rows_per_member};
  if (bool(grad_bias) != bool(grad_gamma) || bool(grad_bias) != bool(grad_beta)) {
    throw std::invalid_argument("grad_bias, grad_gamma and grad_beta must be given together");
  }
  const float* p_go = Buffer(grad_out, "grad_out", act, false);
  const float* p_y = Buffer(y, "y", act, false);
  const float* p_bias = Buffer(bias, "bias", param, false);
  const float* p_gamma = Buffer(gamma, "gamma", param, false);
  const float* p_beta = Buffer(beta, "beta", param, false);
  const float* p_mean = Buffer(mean, "mean", row, false);
  const float* p_rstd = Buffer(rstd, "rstd", row, false);
  float* p_gy = Buffer(grad_y, "grad_y", act, true);
  float* p_gbias = grad_bias ? Buffer(*grad_bias, "grad_bias", param, true) : nullptr;
  float* p_ggamma = grad_gamma ? Buffer(*grad_gamma, "grad_gamma", param, true) : nullptr;
  float* p_gbeta = grad_beta ? Buffer(*grad_beta, "grad_beta", param, true) : nullptr;
  // Safe without the GIL: the kernel touches only these buffers, which the caller keeps alive.
  py::gil_scoped_release release;
  EnsembleNormBackwardUnchecked(s, p_go, nullptr, p_y, p_bias, p_gamma, p_beta, p_mean, p_rstd,
                                relu, p_gy, p_gbias, p_ggamma, p_gbeta, num_threads, max_isa);
}

// ---- DLPack fast path: the eager training path (mtrl/ensemble_norm.py) passes capsules; None
// when any input is not already in kernel form (float32, dense, exact shapes), and the caller then
// takes the NumPy entry points above, which explain. Parameters come as (E, 1, W); stats is the
// forward's (2, E, B) mean and rstd.
using dlpack::DenseCpu;
using dlpack::DlTensor;
using dlpack::DlView;

bool ShapeFromDl(const DlTensor* y, EnsembleNormShape* s) {
  if (y == nullptr || y->ndim != 3) return false;
  *s = EnsembleNormShape{y->shape[0], y->shape[1], y->shape[2]};
  return s->members >= 1 && s->rows_per_member >= 1 && s->width >= 1;
}

py::object ForwardFast(py::handle y, py::handle bias, py::handle gamma, py::handle beta,
                       py::handle residual, int epilogue, double eps, py::handle out,
                       py::handle stats, int num_threads) {
  EnsembleNormShape s;
  if (!ShapeFromDl(DlView(y), &s) || epilogue < 0 || epilogue > 2 || !(eps > 0.0)) return py::none();
  const int64_t e = s.members, b = s.rows_per_member, w = s.width;
  const float* p_y = DenseCpu<float>(DlView(y), {e, b, w});
  const float* p_bias = DenseCpu<float>(DlView(bias), {e, 1, w});
  const float* p_gamma = DenseCpu<float>(DlView(gamma), {e, 1, w});
  const float* p_beta = DenseCpu<float>(DlView(beta), {e, 1, w});
  const float* p_res = epilogue == 2 ? DenseCpu<float>(DlView(residual), {e, b, w}) : nullptr;
  float* p_out = DenseCpu<float>(DlView(out), {e, b, w});
  float* p_stats = DenseCpu<float>(DlView(stats), {2, e, b});
  if (p_y == nullptr || p_bias == nullptr || p_gamma == nullptr || p_beta == nullptr ||
      (epilogue == 2 && p_res == nullptr) || p_out == nullptr || p_stats == nullptr) {
    return py::none();
  }
  {
    // The capsules (held by the caller) keep every buffer alive.
    py::gil_scoped_release release;
    EnsembleNormForwardUnchecked(s, p_y, p_bias, p_gamma, p_beta, p_res,
                                 static_cast<NormEpilogue>(epilogue), static_cast<float>(eps), p_out,
                                 p_stats, p_stats + e * b, num_threads);
  }
  return py::bool_(true);
}

py::object BackwardFast(py::handle grad_out, py::handle y, py::handle bias, py::handle gamma,
                        py::handle beta, py::handle stats, bool relu, py::handle grad_y,
                        py::handle grad_params, int num_threads, py::handle grad_add) {
  EnsembleNormShape s;
  if (!ShapeFromDl(DlView(y), &s)) return py::none();
  const int64_t e = s.members, b = s.rows_per_member, w = s.width;
  const float* p_go = DenseCpu<float>(DlView(grad_out), {e, b, w});
  const float* p_y = DenseCpu<float>(DlView(y), {e, b, w});
  const float* p_bias = DenseCpu<float>(DlView(bias), {e, 1, w});
  const float* p_gamma = DenseCpu<float>(DlView(gamma), {e, 1, w});
  const float* p_beta = DenseCpu<float>(DlView(beta), {e, 1, w});
  const float* p_stats = DenseCpu<float>(DlView(stats), {2, e, b});
  float* p_gy = DenseCpu<float>(DlView(grad_y), {e, b, w});
  float* p_gp = grad_params.is_none() ? nullptr : DenseCpu<float>(DlView(grad_params), {3, e, 1, w});
  const float* p_add = grad_add.is_none() ? nullptr : DenseCpu<float>(DlView(grad_add), {e, b, w});
  if (p_go == nullptr || p_y == nullptr || p_bias == nullptr || p_gamma == nullptr ||
      p_beta == nullptr || p_stats == nullptr || p_gy == nullptr ||
      (!grad_params.is_none() && p_gp == nullptr) || (!grad_add.is_none() && p_add == nullptr)) {
    return py::none();
  }
  {
    py::gil_scoped_release release;
    // grad_params rows: d bias, d gamma, d beta.
    EnsembleNormBackwardUnchecked(s, p_go, p_add, p_y, p_bias, p_gamma, p_beta, p_stats,
                                  p_stats + e * b, relu, p_gy, p_gp,
                                  p_gp == nullptr ? nullptr : p_gp + e * w,
                                  p_gp == nullptr ? nullptr : p_gp + 2 * e * w, num_threads);
  }
  return py::bool_(true);
}

// ---- bf16 path (mtrl/fused_bronet.py): no NumPy fallback exists for bf16 (NumPy has no such
// dtype), so these check every capsule and raise, naming the argument; mtrl/ensemble_norm.py
// passes them in kernel form.
template <typename T>
T* Required(py::handle obj, const char* name, std::initializer_list<int64_t> shape) {
  const DlTensor* t = DlView(obj);
  // DLPack type codes: 2 float, 4 bfloat.
  const uint8_t code = sizeof(T) == 2 ? 4 : 2;
  T* p = nullptr;
  if (t != nullptr && t->device.device_type == 1 && t->dtype.code == code &&
      t->dtype.bits == 8 * sizeof(T) && t->dtype.lanes == 1 &&
      t->ndim == static_cast<int32_t>(shape.size())) {
    bool same = true;
    for (int32_t i = 0; i < t->ndim; ++i) same = same && t->shape[i] == shape.begin()[i];
    if (same) p = dlpack::DenseData<T>(t);
  }
  if (p == nullptr) {
    throw std::invalid_argument(std::string(name) + " must be a dense CPU " +
                                (sizeof(T) == 2 ? "bfloat16" : "float32") + " tensor of shape " +
                                Shape(std::vector<int64_t>(shape)));
  }
  return p;
}

// One buffer of a bf16 entry point call, for CheckNoOverlap.
struct Span {
  const char* name;
  const void* data;  // nullptr: not given
  int64_t bytes;
  bool written;
};

// Raises unless every buffer the kernel writes is disjoint from all the others: the row loops
// use restrict pointers and passes (the forward writes out before it reads residual), so an
// aliased output would give wrong values silently rather than an in-place result.
void CheckNoOverlap(std::initializer_list<Span> spans) {
  for (const Span& w : spans) {
    if (!w.written || w.data == nullptr) continue;
    const auto w0 = reinterpret_cast<uintptr_t>(w.data);
    for (const Span& o : spans) {
      if (&o == &w || o.data == nullptr) continue;
      const auto o0 = reinterpret_cast<uintptr_t>(o.data);
      if (w0 < o0 + static_cast<uintptr_t>(o.bytes) && o0 < w0 + static_cast<uintptr_t>(w.bytes)) {
        throw std::invalid_argument(std::string(w.name) + " overlaps " + o.name +
                                    ": the bf16 kernels do not work in place");
      }
    }
  }
}

EnsembleNormShape Bf16ShapeOf(py::handle y) {
  EnsembleNormShape s;
  if (!ShapeFromDl(DlView(y), &s)) {
    throw std::invalid_argument("y must be a DLPack capsule of an (E, B, W) tensor, E, B, W >= 1");
  }
  return s;
}

void ForwardBf16(py::handle y, py::handle bias, py::handle gamma, py::handle beta,
                 py::handle residual, int epilogue, double eps, py::handle out, py::handle out_bf,
                 py::handle stats, int num_threads, int max_isa) {
  const EnsembleNormShape s = Bf16ShapeOf(y);
  if (epilogue < 0 || epilogue > 2) {
    throw std::invalid_argument("epilogue must be 0 (none), 1 (relu) or 2 (residual), got " +
                                std::to_string(epilogue));
  }
  if (!(eps > 0.0)) throw std::invalid_argument("eps must be > 0, got " + std::to_string(eps));
  const int64_t e = s.members, b = s.rows_per_member, w = s.width;
  const uint16_t* p_y = Required<uint16_t>(y, "y", {e, b, w});
  const float* p_bias = Required<float>(bias, "bias", {e, 1, w});
  const float* p_gamma = Required<float>(gamma, "gamma", {e, 1, w});
  const float* p_beta = Required<float>(beta, "beta", {e, 1, w});
  const float* p_res = epilogue == 2 ? Required<float>(residual, "residual", {e, b, w}) : nullptr;
  float* p_out = out.is_none() ? nullptr : Required<float>(out, "out", {e, b, w});
  uint16_t* p_out_bf = Required<uint16_t>(out_bf, "out_bf", {e, b, w});
  float* p_stats = Required<float>(stats, "stats", {2, e, b});
  const int64_t act = e * b * w, param = e * w;
  CheckNoOverlap({{"y", p_y, 2 * act, false},
                  {"bias", p_bias, 4 * param, false},
                  {"gamma", p_gamma, 4 * param, false},
                  {"beta", p_beta, 4 * param, false},
                  {"residual", p_res, 4 * act, false},
                  {"out", p_out, 4 * act, true},
                  {"out_bf", p_out_bf, 2 * act, true},
                  {"stats", p_stats, 4 * 2 * e * b, true}});
  // The capsules (held by the caller) keep every buffer alive.
  py::gil_scoped_release release;
  EnsembleNormForwardBf16Unchecked(s, p_y, p_bias, p_gamma, p_beta, p_res,
                                   static_cast<NormEpilogue>(epilogue), static_cast<float>(eps),
                                   p_out, p_out_bf, p_stats, p_stats + e * b, num_threads, max_isa);
}

void BackwardBf16(py::handle grad_out, py::handle grad_add, py::handle grad_sum, py::handle y,
                  py::handle bias, py::handle gamma, py::handle beta, py::handle stats, bool relu,
                  py::handle grad_y, py::handle grad_params, int num_threads, int max_isa) {
  const EnsembleNormShape s = Bf16ShapeOf(y);
  const int64_t e = s.members, b = s.rows_per_member, w = s.width;
  if (grad_out.is_none() && grad_add.is_none()) {
    throw std::invalid_argument("grad_out and grad_add cannot both be None: no gradient given");
  }
  const uint16_t* p_go =
      grad_out.is_none() ? nullptr : Required<uint16_t>(grad_out, "grad_out", {e, b, w});
  const float* p_add =
      grad_add.is_none() ? nullptr : Required<float>(grad_add, "grad_add", {e, b, w});
  float* p_sum = grad_sum.is_none() ? nullptr : Required<float>(grad_sum, "grad_sum", {e, b, w});
  const uint16_t* p_y = Required<uint16_t>(y, "y", {e, b, w});
  const float* p_bias = Required<float>(bias, "bias", {e, 1, w});
  const float* p_gamma = Required<float>(gamma, "gamma", {e, 1, w});
  const float* p_beta = Required<float>(beta, "beta", {e, 1, w});
  const float* p_stats = Required<float>(stats, "stats", {2, e, b});
  uint16_t* p_gy = Required<uint16_t>(grad_y, "grad_y", {e, b, w});
  float* p_gp =
      grad_params.is_none() ? nullptr : Required<float>(grad_params, "grad_params", {3, e, 1, w});
  const int64_t act = e * b * w, param = e * w;
  CheckNoOverlap({{"grad_out", p_go, 2 * act, false},
                  {"grad_add", p_add, 4 * act, false},
                  {"y", p_y, 2 * act, false},
                  {"bias", p_bias, 4 * param, false},
                  {"gamma", p_gamma, 4 * param, false},
                  {"beta", p_beta, 4 * param, false},
                  {"stats", p_stats, 4 * 2 * e * b, false},
                  {"grad_sum", p_sum, 4 * act, true},
                  {"grad_y", p_gy, 2 * act, true},
                  {"grad_params", p_gp, 4 * 3 * param, true}});
  py::gil_scoped_release release;  // the capsules keep every buffer alive
  // grad_params rows: d bias, d gamma, d beta.
  EnsembleNormBackwardBf16Unchecked(s, p_go, p_add, p_sum, p_y, p_bias, p_gamma, p_beta, p_stats,
                                    p_stats + e * b, relu, p_gy, p_gp,
                                    p_gp == nullptr ? nullptr : p_gp + e * w,
                                    p_gp == nullptr ? nullptr : p_gp + 2 * e * w, num_threads,
                                    max_isa);
}

py::dict CpuBf16FeaturesDict() {
  const CpuBf16Features f = DetectCpuBf16Features();
  py::dict d;
  d["avx512_bf16"] = f.avx512_bf16;
  d["amx_bf16"] = f.amx_bf16;
  return d;
}

// ---- tanh-Gaussian actor head (nn/tanh_gaussian.h): DLPack capsules, None when an input is not
// float32 dense of the expected shape (mtrl/tanh_gaussian.py then takes the PyTorch formula).
py::object TanhGaussianForwardFast(py::handle head, py::handle noise, double std_scale,
                                   py::handle action, py::handle log_prob, py::handle saved) {
  const DlTensor* noise_t = DlView(noise);
  if (noise_t == nullptr || noise_t->ndim != 2 || !std::isfinite(std_scale)) return py::none();
  const int64_t b = noise_t->shape[0], a = noise_t->shape[1];
  const float* p_head = DenseCpu<float>(DlView(head), {b, 2 * a});
  const float* p_noise = DenseCpu<float>(noise_t, {b, a});
  float* p_action = DenseCpu<float>(DlView(action), {b, a});
  float* p_log_prob = DenseCpu<float>(DlView(log_prob), {b});
  float* p_saved = DenseCpu<float>(DlView(saved), {3, b, a});
  if (p_head == nullptr || p_noise == nullptr || p_action == nullptr || p_log_prob == nullptr ||
      p_saved == nullptr) {
    return py::none();
  }
  py::gil_scoped_release release;
  TanhGaussianForward(p_head, p_noise, b, a, static_cast<float>(std_scale), p_action, p_log_prob,
                      p_saved);
  return py::bool_(true);
}

py::object TanhGaussianBackwardFast(py::handle saved, py::handle grad_action,
                                    py::handle grad_log_prob, py::handle grad_head) {
  const DlTensor* saved_t = DlView(saved);
  if (saved_t == nullptr || saved_t->ndim != 3) return py::none();
  const int64_t b = saved_t->shape[1], a = saved_t->shape[2];
  const float* p_saved = DenseCpu<float>(saved_t, {3, b, a});
  const float* p_ga = grad_action.is_none() ? nullptr : DenseCpu<float>(DlView(grad_action), {b, a});
  const float* p_glp =
      grad_log_prob.is_none() ? nullptr : DenseCpu<float>(DlView(grad_log_prob), {b});
  float* p_gh = DenseCpu<float>(DlView(grad_head), {b, 2 * a});
  if (p_saved == nullptr || (!grad_action.is_none() && p_ga == nullptr) ||
      (!grad_log_prob.is_none() && p_glp == nullptr) || p_gh == nullptr) {
    return py::none();
  }
  py::gil_scoped_release release;
  TanhGaussianBackward(p_saved, p_ga, p_glp, b, a, p_gh);
  return py::bool_(true);
}

}  // namespace

void RegisterNn(py::module_& m) {
  m.def("_ensemble_norm_forward_bf16", &ForwardBf16, py::arg("y"), py::arg("bias"),
        py::arg("gamma"), py::arg("beta"), py::arg("residual"), py::arg("epilogue"), py::arg("eps"),
        py::arg("out"), py::arg("out_bf"), py::arg("stats"), py::arg("num_threads"),
        py::arg("max_isa") = 2,
        "_ensemble_norm_forward_fast for a bf16 y (E, B, W) on DLPack capsules: out float32 (or "
        "None: not written) and out_bf = out rounded to bf16 (nearest even). Raises ValueError "
        "naming an argument not in kernel form or an output that overlaps another buffer. max_isa "
        "caps the build: 0 baseline, 1 AVX2, 2 AVX-512 (the best the CPU runs).");
  m.def("_ensemble_norm_backward_bf16", &BackwardBf16, py::arg("grad_out"), py::arg("grad_add"),
        py::arg("grad_sum"), py::arg("y"), py::arg("bias"), py::arg("gamma"), py::arg("beta"),
        py::arg("stats"), py::arg("relu"), py::arg("grad_y"), py::arg("grad_params"),
        py::arg("num_threads"), py::arg("max_isa") = 2,
        "Backward of _ensemble_norm_forward_bf16 on DLPack capsules: grad_out bf16 (E, B, W) or "
        "None plus grad_add float32 or None, not both None (the sum also written to grad_sum, "
        "float32, unless None); "
        "grad_y written as bf16, grad_params (3, E, 1, W) = d bias, d gamma, d beta float32 or "
        "None. Raises ValueError naming an argument not in kernel form or an output that "
        "overlaps another buffer. max_isa as in _ensemble_norm_forward_bf16.");
  m.def("_cpu_bf16_features", &CpuBf16FeaturesDict,
        "{'avx512_bf16': bool, 'amx_bf16': bool}: native bf16 matmul support of this CPU (cpuid, "
        "with the register state enabled by the OS).");
  m.def("_tanh_gaussian_forward_fast", &TanhGaussianForwardFast, py::arg("head"),
        py::arg("noise"), py::arg("std_scale"), py::arg("action"), py::arg("log_prob"),
        py::arg("saved"),
        "Tanh-Gaussian sample and log-probability from head (B, 2A) = [mean | raw log-std] and "
        "noise (B, A), on DLPack capsules; writes action (B, A), log_prob (B,), saved (3, B, A). "
        "True when done; None when an input is not float32 dense with the expected shape.");
  m.def("_tanh_gaussian_backward_fast", &TanhGaussianBackwardFast, py::arg("saved"),
        py::arg("grad_action"), py::arg("grad_log_prob"), py::arg("grad_head"),
        "Gradient of _tanh_gaussian_forward_fast w.r.t. head (noise constant); grad_action (B, A) "
        "and grad_log_prob (B,) may be None. True when done; None when not in kernel form.");
  m.def("_ensemble_norm_forward_fast", &ForwardFast, py::arg("y"), py::arg("bias"),
        py::arg("gamma"), py::arg("beta"), py::arg("residual"), py::arg("epilogue"), py::arg("eps"),
        py::arg("out"), py::arg("stats"), py::arg("num_threads"),
        "_ensemble_norm_forward on DLPack capsules (parameters (E, 1, W), stats (2, E, B) = mean, "
        "rstd). True when done; None when an input is not float32 dense with the exact shape.");
  m.def("_ensemble_norm_backward_fast", &BackwardFast, py::arg("grad_out"), py::arg("y"),
        py::arg("bias"), py::arg("gamma"), py::arg("beta"), py::arg("stats"), py::arg("relu"),
        py::arg("grad_y"), py::arg("grad_params"), py::arg("num_threads"),
        py::arg("grad_add") = py::none(),
        "_ensemble_norm_backward on DLPack capsules; grad_params (3, E, 1, W) = d bias, d gamma, "
        "d beta, or None; grad_add (E, B, W) or None: first grad_out += grad_add in place (the "
        "gradient used is the sum). True when done; None (nothing changed) when an input is not "
        "in kernel form.");
  m.def("_ensemble_norm_forward", &Forward, py::arg("y"), py::arg("bias"), py::arg("gamma"),
        py::arg("beta"), py::arg("residual"), py::arg("epilogue"), py::arg("eps"), py::arg("out"),
        py::arg("mean"), py::arg("rstd"), py::arg("num_threads"), py::arg("max_isa") = 2,
        "out = epilogue(LayerNorm(y + bias) * gamma + beta) for (E, B, W) float32 y; writes "
        "out (E, B, W), mean and rstd (E, B). epilogue: 0 none, 1 relu, 2 + residual. max_isa "
        "caps the build: 0 baseline, 1 AVX2, 2 AVX-512 (the best the CPU runs).");
  m.def("_ensemble_norm_backward", &Backward, py::arg("grad_out"), py::arg("y"), py::arg("bias"),
        py::arg("gamma"), py::arg("beta"), py::arg("mean"), py::arg("rstd"), py::arg("relu"),
        py::arg("grad_y"), py::arg("grad_bias"), py::arg("grad_gamma"), py::arg("grad_beta"),
        py::arg("num_threads"), py::arg("max_isa") = 2,
        "Gradients of _ensemble_norm_forward: grad_y (E, B, W) and, when given, the (E, W) "
        "parameter gradients (summed in a fixed order, independent of num_threads). max_isa as "
        "for _ensemble_norm_forward.");
}

}  // namespace mtrl
