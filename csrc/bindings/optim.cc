// Binding of the fused AdamW + Polyak step (csrc/optim). Tensors arrive as DLPack capsules of torch
// CPU tensors; mtrl/optim.py builds them and falls back to torch's AdamW when this answers None.
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings/dlpack.h"
#include "bindings/registrars.h"
#include "optim/adamw.h"

namespace py = pybind11;

namespace mtrl {
namespace {

using dlpack::DenseCpuAnyShape;
using dlpack::DlView;

py::object AdamWStepFast(const py::list& params, const py::list& grads, const py::list& exp_avgs,
                         const py::list& exp_avg_sqs, py::handle targets, double lr,
                         double beta1, double beta2, double weight_decay, double eps, double step,
                         double tau, int num_threads) {
  const size_t count = params.size();
  const bool polyak = !targets.is_none();
  if (grads.size() != count || exp_avgs.size() != count || exp_avg_sqs.size() != count ||
      (polyak && py::len(targets) != count)) {
    throw std::invalid_argument("params, grads, exp_avgs, exp_avg_sqs (and targets) must have "
                                "the same length");
  }
  if (!(step >= 1.0) || !(beta1 >= 0.0 && beta1 < 1.0) || !(beta2 >= 0.0 && beta2 < 1.0) ||
      !(eps > 0.0) || !std::isfinite(lr) || !std::isfinite(weight_decay) || !std::isfinite(tau)) {
    return py::none();  // torch's AdamW explains
  }
  std::vector<AdamWSpan> spans(count);
  const py::list target_list =
      polyak ? py::list(py::reinterpret_borrow<py::object>(targets)) : py::list();
  for (size_t k = 0; k < count; ++k) {
    AdamWSpan& s = spans[k];
    int64_t size = -1, g_size = -1, m_size = -1, v_size = -1, t_size = -1;
    s.param = DenseCpuAnyShape<float>(DlView(params[k]), &size);
    s.grad = DenseCpuAnyShape<float>(DlView(grads[k]), &g_size);
    s.exp_avg = DenseCpuAnyShape<float>(DlView(exp_avgs[k]), &m_size);
    s.exp_avg_sq = DenseCpuAnyShape<float>(DlView(exp_avg_sqs[k]), &v_size);
    s.target = polyak ? DenseCpuAnyShape<float>(DlView(target_list[k]), &t_size) : nullptr;
    s.size = size;
    if (s.param == nullptr || s.grad == nullptr || s.exp_avg == nullptr ||
        s.exp_avg_sq == nullptr || (polyak && s.target == nullptr) || g_size != size ||
        m_size != size || v_size != size || (polyak && t_size != size)) {
      return py::none();
    }
  }
  const AdamWStepConstants c{
      static_cast<float>(lr * weight_decay),
      static_cast<float>(beta1),
      static_cast<float>(beta2),
      static_cast<float>(1.0 - beta1),
      static_cast<float>(1.0 - beta2),
      static_cast<float>(lr / (1.0 - std::pow(beta1, step))),
      static_cast<float>(std::sqrt(1.0 - std::pow(beta2, step))),
      static_cast<float>(eps),
      static_cast<float>(tau)};
  {
    // The capsules (held by the caller) keep every buffer alive.
    py::gil_scoped_release release;
    AdamWStepUnchecked(spans.data(), static_cast<int64_t>(count), c, num_threads);
  }
  return py::bool_(true);
}

}  // namespace

void RegisterOptim(py::module_& m) {
  m.def("_adamw_step_fast", &AdamWStepFast, py::arg("params"), py::arg("grads"),
        py::arg("exp_avgs"), py::arg("exp_avg_sqs"), py::arg("targets"), py::arg("lr"),
        py::arg("beta1"), py::arg("beta2"), py::arg("weight_decay"), py::arg("eps"),
        py::arg("step"), py::arg("tau"), py::arg("num_threads"),
        "One AdamW step (decoupled weight decay, bias-corrected, step = the new step count) over "
        "lists of DLPack capsules, in place; with targets (or None), also target += tau * "
        "(param - target) with the new params, in the same pass. True when done; None (nothing "
        "changed) when a tensor is not dense float32 CPU of its parameter's size or a "
        "hyper-parameter is out of range. ValueError when the lists differ in length.");
}

}  // namespace mtrl
