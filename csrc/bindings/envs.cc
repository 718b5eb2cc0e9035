// Python binding of the environment engine (mtrl._core.EnginePool); wrapped by mtrl/envs/engine.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "bindings/registrars.h"
#include "envs/actions.h"
#include "envs/pool.h"
#include "envs/registry.h"
#include "envs/tasks/spline_zoom.h"

namespace py = pybind11;

namespace mtrl {
namespace {

// Checks that `a` is a C-contiguous array of dtype T with the given shape; returns its data.
template <typename T>
T* CheckedData(py::array& a, const char* name, std::initializer_list<py::ssize_t> shape,
               bool writable) {
  if (!a.dtype().is(py::dtype::of<T>())) {
    throw std::invalid_argument(std::string("`") + name + "` must have dtype " +
                                std::string(py::str(py::dtype::of<T>())) + ", got " +
                                std::string(py::str(a.dtype())));
  }
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  int i = 0;
  for (py::ssize_t s : shape) ok = ok && a.shape(i++) == s;
  if (!ok) {  // messages are built only here: this check runs on every step
    auto fmt = [](const std::vector<py::ssize_t>& dims) {
      std::string out = "(";
      for (size_t j = 0; j < dims.size(); ++j) {
        out += std::to_string(dims[j]) + (dims.size() == 1 ? ",)" : j + 1 < dims.size() ? ", " : ")");
      }
      return dims.empty() ? std::string("()") : out;
    };
    throw std::invalid_argument(std::string("`") + name + "` must have shape " + fmt(shape) +
                                ", got " + fmt({a.shape(), a.shape() + a.ndim()}));
  }
  if (!(a.flags() & py::array::c_style)) {
    throw std::invalid_argument(std::string("`") + name + "` must be C-contiguous");
  }
  if (writable && !a.writeable()) throw std::invalid_argument(std::string("`") + name + "` must be writable");
  // An input is only read: a read-only array (a memmap, np.broadcast_to, a frozen buffer) is
  // fine, and mutable_data() would refuse it.
  return static_cast<T*>(writable ? a.mutable_data() : const_cast<void*>(a.data()));
}

py::list GetState(const EnvPool& pool) {
  std::vector<EnvState> states;
  {
    py::gil_scoped_release release;  // reads only this pool's C++ state
    states = pool.GetState();
  }
  py::list out;
  for (const EnvState& s : states) {
    py::array_t<uint64_t> rng(4);
    std::copy(s.rng.begin(), s.rng.end(), rng.mutable_data());
    out.append(py::make_tuple(py::array_t<double>(s.physics.size(), s.physics.data()), rng,
                              s.step_count, py::array_t<double>(s.task.size(), s.task.data())));
  }
  return out;
}

void SetState(EnvPool& pool, const py::list& states) {
  std::vector<EnvState> parsed;
  for (const py::handle& h : states) {
    const std::string where = "env " + std::to_string(parsed.size()) + "'s state: ";
    EnvState s;
    try {
      if (!py::isinstance<py::tuple>(h) || py::len(h) != 4) {
        throw std::invalid_argument("must be a 4-tuple (physics, rng, step_count, task)");
      }
      auto t = h.cast<py::tuple>();
      s.physics = t[0].cast<std::vector<double>>();
      auto rng = t[1].cast<std::vector<uint64_t>>();
      if (rng.size() != 4) throw std::invalid_argument("the RNG state must have 4 words");
      std::copy(rng.begin(), rng.end(), s.rng.begin());
      s.step_count = t[2].cast<int64_t>();
      s.task = t[3].cast<std::vector<double>>();
    } catch (const py::cast_error& e) {  // pybind's message names no field
      throw std::invalid_argument(where + "a field has the wrong type (" + e.what() + ")");
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(where + e.what());
    }
    parsed.push_back(std::move(s));
  }
  pool.SetState(parsed);
}

}  // namespace

void RegisterEnvs(py::module_& m) {
  // Its own MemoryError subclass: a pool too large for the machine is not a replay problem.
  py::register_exception<EnvMemoryError>(m, "EnvMemoryError", PyExc_MemoryError);
  m.def("engine_tasks", [] {
    std::vector<std::string> names;
    for (const TaskDef& d : AllTasks()) names.push_back(d.name);
    return names;
  }, "Names of the DeepMind Control tasks the C++ engine implements (sorted).");

  m.def("_spline_zoom", [](py::array a, int out_rows, int out_cols) {
    if (a.ndim() != 2 || a.shape(0) < 1 || a.shape(1) < 1) {
      throw std::invalid_argument("`a` must be a non-empty 2-D array");
    }
    if (out_rows < 1 || out_cols < 1) throw std::invalid_argument("output sizes must be >= 1");
    const int rows = static_cast<int>(a.shape(0)), cols = static_cast<int>(a.shape(1));
    const double* p = CheckedData<double>(a, "a", {rows, cols}, false);
    std::vector<double> out = tasks::SplineZoom2D({p, p + size_t(rows) * cols}, rows, cols, out_rows, out_cols);
    py::array_t<double> result({out_rows, out_cols});
    std::copy(out.begin(), out.end(), result.mutable_data());
    return result;
  }, py::arg("a"), py::arg("out_rows"), py::arg("out_cols"),
     "scipy.ndimage.zoom(order=3) port used by quadruped-escape (exposed for tests).");

  m.def("_clip_actions", [](py::array actions, py::array used, py::array out) {
    if (actions.ndim() != 2) throw std::invalid_argument("`actions` must be 2-D");
    const py::ssize_t n = actions.shape(0), dim = actions.shape(1);
    const float* a = CheckedData<float>(actions, "actions", {n, dim}, false);
    const int64_t* u = CheckedData<int64_t>(used, "used", {n}, false);
    float* o = CheckedData<float>(out, "out", {n, dim}, true);
    const std::vector<int> bad = ClipActions(a, n, dim, u, o);
    if (!bad.empty()) {
      std::string envs = "[";
      for (size_t i = 0; i < bad.size() && i < 10; ++i) envs += (i ? ", " : "") + std::to_string(bad[i]);
      throw std::invalid_argument("actions contain NaN or inf for envs " + envs + "]" +
                                  (bad.size() > 10 ? " ..." : ""));
    }
  }, py::arg("actions"), py::arg("used"), py::arg("out"),
     "TaskPool.check_actions' rule: out = actions clipped to [-1, 1] (NaN/inf padding past used[k] "
     "entries -> 0); ValueError naming the envs with NaN/inf in a used entry.");

  py::class_<EnvPool>(m, "EnginePool", "Batched multi-task MuJoCo env pool (see csrc/envs/pool.h).")
      .def(py::init<const std::vector<std::string>&, const std::vector<uint64_t>&, const std::string&, int,
                    int64_t>(),
           py::arg("env_tasks"), py::arg("seeds"), py::arg("suite_dir"), py::arg("num_threads"),
           py::arg("max_episode_steps"))
      .def_property_readonly("num_envs", &EnvPool::num_envs)
      .def_property_readonly("obs_dim", &EnvPool::obs_dim)
      .def_property_readonly("action_dim", &EnvPool::action_dim)
      .def("env_info", [](const EnvPool& p, int k) {
        if (k < 0 || k >= p.num_envs()) throw std::out_of_range("env index " + std::to_string(k) + " out of range");
        const Env& e = p.env(k);
        return py::make_tuple(e.obs_dim(), e.action_dim(), e.n_sub_steps(), e.step_limit());
      }, py::arg("k"), "(obs_dim, action_dim, n_sub_steps, step_limit) of env k.")
      .def("_reset", [](EnvPool& p, py::array obs) {
        float* o = CheckedData<float>(obs, "obs", {p.num_envs(), p.obs_dim()}, true);
        py::gil_scoped_release release;  // only plain buffers captured above are touched
        p.ResetUnchecked(o);
      }, py::arg("obs"))
      .def("_step", [](EnvPool& p, py::array actions, py::array obs, py::array final_obs, py::array reward,
                       py::array terminated, py::array truncated, py::array diverged) {
        const py::ssize_t n = p.num_envs();
        const float* a = CheckedData<float>(actions, "actions", {n, p.action_dim()}, false);
        float* o = CheckedData<float>(obs, "obs", {n, p.obs_dim()}, true);
        float* f = CheckedData<float>(final_obs, "final_obs", {n, p.obs_dim()}, true);
        float* r = CheckedData<float>(reward, "reward", {n}, true);
        auto* te = reinterpret_cast<uint8_t*>(CheckedData<bool>(terminated, "terminated", {n}, true));
        auto* tr = reinterpret_cast<uint8_t*>(CheckedData<bool>(truncated, "truncated", {n}, true));
        auto* dv = reinterpret_cast<uint8_t*>(CheckedData<bool>(diverged, "diverged", {n}, true));
        py::gil_scoped_release release;  // only plain buffers captured above are touched
        p.StepUnchecked(a, o, f, r, te, tr, dv);
      }, py::arg("actions"), py::arg("obs"), py::arg("final_obs"), py::arg("reward"),
         py::arg("terminated"), py::arg("truncated"), py::arg("diverged"))
      .def("seed", &EnvPool::Seed, py::arg("seeds"))
      .def("_get_state", &GetState)
      .def("_set_state", &SetState, py::arg("states"));
}

}  // namespace mtrl
