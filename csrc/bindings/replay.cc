// Binding of the replay buffer (csrc/replay/) as mtrl._core._ReplayBuffer; mtrl/replay.py is
// the public face. Arrays must already have the exact dtype, shape and C order: anything else
// raises TypeError (wrong dtype/layout, which the Python face converts and retries) or
// ValueError (wrong shape), before the GIL is released around the C++ work.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <iterator>
#include <string>

#include "bindings/registrars.h"
#include "replay/memory.h"
#include "replay/replay_buffer.h"

namespace py = pybind11;

namespace mtrl {
namespace {

std::string ShapeOf(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    s += std::to_string(a.shape(i)) + (a.ndim() == 1 ? ",": (i + 1 < a.ndim() ? ", " : ""));
  }
  return s + ")";
}

constexpr bool kLittleEndian = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;

// Checks `h` is a C-contiguous, aligned ndarray of T in native byte order with the given shape;
// returns its data.
template <typename T>
T* View(py::handle h, const char* name, int64_t d0, int64_t d1 = -1, bool writable = false) {
  static const int kNum = py::dtype::of<T>().num();
  static const std::string kName = py::str(py::dtype::of<T>()).cast<std::string>();
  if (!py::isinstance<py::array>(h)) {
    throw py::type_error(std::string("`") + name + "` must be a numpy array of " + kName +
                         ", got " + py::str(py::type::of(h).attr("__name__")).cast<std::string>());
  }
  auto a = py::reinterpret_borrow<py::array>(h);
  const int flags = a.flags();
  // The dtype number is the same for both byte orders: a big-endian float32 array would be read
  // as raw native bytes. NumPy marks a native order '=' ('|' where there is none, as for bool).
  const char order = a.dtype().byteorder();
  const bool native = order == '=' || order == '|' || order == (kLittleEndian ? '<' : '>');
  if (a.dtype().num() != kNum || !native || !(flags & py::array::c_style) ||
      !(flags & py::detail::npy_api::NPY_ARRAY_ALIGNED_)) {
    throw py::type_error(std::string("`") + name + "` must be a C-contiguous " + kName +
                         " array in native byte order, got " +
                         py::str(a.dtype()).cast<std::string>() +
                         (native ? "" : " (non-native byte order)") +
                         (flags & py::array::c_style ? "" : " (not C-contiguous)"));
  }
  const int ndim = d1 < 0 ? 1 : 2;
  if (a.ndim() != ndim || a.shape(0) != d0 || (ndim == 2 && a.shape(1) != d1)) {
    throw py::value_error(std::string("`") + name + "` must have shape (" + std::to_string(d0) +
                          (ndim == 2 ? ", " + std::to_string(d1) : std::string(",")) +
                          "), got " + ShapeOf(a));
  }
  if (writable && !a.writeable()) {
    throw py::value_error(std::string("`") + name + "` must be writable");
  }
  return static_cast<T*>(const_cast<void*>(a.data()));
}

// A bool array's bytes, read as NumPy reads them (any nonzero byte is true: a view of uint8 data
// as bool may hold 2 or 255, which is not a valid C++ bool).
const uint8_t* Flags(py::handle h, const char* name, int64_t n) {
  return reinterpret_cast<const uint8_t*>(View<bool>(h, name, n));
}

int64_t Length(py::handle h, const char* name) {
  if (!py::isinstance<py::array>(h)) {
    throw py::type_error(std::string("`") + name + "` must be a numpy array");
  }
  auto a = py::reinterpret_borrow<py::array>(h);
  if (a.ndim() != 1) throw py::value_error(std::string("`") + name + "` must be 1-D");
  return a.shape(0);
}

void Add(ReplayBuffer& buf, py::handle task_id, py::handle obs, py::handle action,
         py::handle reward, py::handle terminated, py::handle truncated, py::handle next_obs) {
  const ReplayConfig& c = buf.config();
  const int64_t n = c.num_envs;
  StepView step{View<int64_t>(task_id, "task_id", n),    View<float>(obs, "obs", n, c.obs_dim),
                View<float>(action, "action", n, c.action_dim), View<float>(reward, "reward", n),
                Flags(terminated, "terminated", n), Flags(truncated, "truncated", n),
                View<float>(next_obs, "next_obs", n, c.obs_dim)};
  py::gil_scoped_release release;  // only plain pointers into arrays the caller keeps alive
  buf.Add(step);
}

// Checked writable views of the caller's (b, ...) output arrays, one per batch field.
BatchView OutputViews(const ReplayConfig& c, int64_t b, py::handle obs, py::handle action,
                      py::handle reward, py::handle next_obs, py::handle mask,
                      py::handle discount, py::handle task_id, py::handle index,
                      py::handle weight) {
  BatchView out{View<float>(obs, "obs", b, c.obs_dim, true),
                View<float>(action, "action", b, c.action_dim, true),
                View<float>(reward, "reward", b, -1, true),
                View<float>(next_obs, "next_obs", b, c.obs_dim, true),
                View<float>(mask, "mask", b, -1, true),
                View<float>(discount, "discount", b, -1, true),
                View<int64_t>(task_id, "task_id", b, -1, true),
                View<int64_t>(index, "index", b, -1, true),
                View<float>(weight, "weight", b, -1, true)};
  // Outputs that share memory would be filled one over the other without a word.
  struct Span {
    const char* name;
    const void* data;
    int64_t bytes;
  };
  const Span spans[] = {{"obs", out.obs, b * c.obs_dim * 4},
                        {"action", out.action, b * c.action_dim * 4},
                        {"reward", out.reward, b * 4},
                        {"next_obs", out.next_obs, b * c.obs_dim * 4},
                        {"mask", out.mask, b * 4},
                        {"discount", out.discount, b * 4},
                        {"task_id", out.task_id, b * 8},
                        {"index", out.index, b * 8},
                        {"weight", out.weight, b * 4}};
  for (size_t i = 0; i < std::size(spans); ++i) {
    for (size_t j = i + 1; j < std::size(spans); ++j) {
      const auto a = reinterpret_cast<uintptr_t>(spans[i].data);
      const auto z = reinterpret_cast<uintptr_t>(spans[j].data);
      if (a < z + spans[j].bytes && z < a + spans[i].bytes) {
        throw py::value_error(std::string("`") + spans[i].name + "` and `" + spans[j].name +
                              "` overlap (each output must be an array of its own)");
      }
    }
  }
  return out;
}

void Sample(ReplayBuffer& buf, int64_t batch_size, bool stratified, bool prioritized,
            double beta, int64_t n_step, double gamma, py::handle obs, py::handle action,
            py::handle reward, py::handle next_obs, py::handle mask, py::handle discount,
            py::handle task_id, py::handle index, py::handle weight) {
  const ReplayConfig& c = buf.config();
  if (batch_size < 1 || batch_size > ReplayBuffer::kMaxBatchSize) {
    throw py::value_error("`batch_size` must be in [1, " +
                          std::to_string(ReplayBuffer::kMaxBatchSize) + "], got " +
                          std::to_string(batch_size));
  }
  const int64_t b = batch_size;
  BatchView out = OutputViews(c, b, obs, action, reward, next_obs, mask, discount, task_id, index,
                              weight);
  SampleRequest request{batch_size, stratified, prioritized, beta, n_step, gamma};
  py::gil_scoped_release release;  // only plain pointers into arrays the caller keeps alive
  buf.Sample(request, out);
}

void Fetch(ReplayBuffer& buf, py::handle indices, int64_t n_step, double gamma, py::handle obs,
           py::handle action, py::handle reward, py::handle next_obs, py::handle mask,
           py::handle discount, py::handle task_id, py::handle index, py::handle weight) {
  const ReplayConfig& c = buf.config();
  const int64_t b = Length(indices, "index");
  const int64_t* idx = View<int64_t>(indices, "index", b);
  BatchView out = OutputViews(c, b, obs, action, reward, next_obs, mask, discount, task_id, index,
                              weight);
  py::gil_scoped_release release;  // only plain pointers into arrays the caller keeps alive
  buf.Fetch(idx, b, n_step, gamma, out);
}

void UpdatePriorities(ReplayBuffer& buf, py::handle index, py::handle priority) {
  const int64_t n = Length(index, "index");
  const int64_t* idx = View<int64_t>(index, "index", n);
  const double* p = View<double>(priority, "priority", n);
  py::gil_scoped_release release;  // only plain pointers into arrays the caller keeps alive
  buf.UpdatePriorities(idx, p, n);
}

py::array_t<double> ToArray(const std::vector<double>& v) {
  py::array_t<double> a(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

py::list ToArrays(const std::vector<std::vector<double>>& levels) {
  py::list out;
  for (const auto& v : levels) out.append(ToArray(v));
  return out;
}

ReplayConfig MakeConfig(int64_t num_tasks, int64_t capacity_per_task, int64_t obs_dim,
                        int64_t action_dim, int64_t num_envs, double alpha, uint64_t seed) {
  ReplayConfig c{num_tasks, capacity_per_task, obs_dim, action_dim, num_envs, alpha, seed};
  c.Validate();
  return c;
}

}  // namespace

void RegisterReplay(py::module_& m) {
  py::register_exception<OutOfMemoryError>(m, "ReplayMemoryError", PyExc_MemoryError);
  // The rule the buffer's own check uses (a zero MemAvailable reads as unknown), for the
  // training loop's check of the networks' size.
  m.def("_available_memory_bytes", &AvailableMemoryBytes,
        "Bytes available to allocate (MemAvailable; 2**64 - 1 when unknown).");
  py::class_<ReplayBuffer>(m, "_ReplayBuffer",
                           "Raw prioritized multi-task replay buffer; use mtrl.replay.ReplayBuffer.")
      .def(py::init([](int64_t t, int64_t c, int64_t o, int64_t a, int64_t n, double alpha,
                       uint64_t seed) {
             const ReplayConfig config = MakeConfig(t, c, o, a, n, alpha, seed);
             py::gil_scoped_release release;  // large allocation, touches no Python object
             return new ReplayBuffer(config);
           }),
           py::kw_only(), py::arg("num_tasks"), py::arg("capacity_per_task"), py::arg("obs_dim"),
           py::arg("action_dim"), py::arg("num_envs"), py::arg("alpha"), py::arg("seed"))
      .def_static(
          "estimate_nbytes",
          [](int64_t t, int64_t c, int64_t o, int64_t a, int64_t n) {
            return ReplayBuffer::EstimateBytes(MakeConfig(t, c, o, a, n, 0.6, 0));
          },
          py::kw_only(), py::arg("num_tasks"), py::arg("capacity_per_task"), py::arg("obs_dim"),
          py::arg("action_dim"), py::arg("num_envs"))
      .def_readonly_static("max_batch_size", &ReplayBuffer::kMaxBatchSize)
      .def_readonly_static("max_n_step", &ReplayBuffer::kMaxNStep)
      .def("add", &Add)
      .def("sample", &Sample)
      .def("fetch", &Fetch)
      .def("update_priorities", &UpdatePriorities)
      // Accessors wait on the buffer's mutex, which a long save/sample may hold: release the
      // GIL while waiting so other Python threads keep running (they touch no Python object).
      .def("size", &ReplayBuffer::Size, py::call_guard<py::gil_scoped_release>())
      .def("sizes",
           [](const ReplayBuffer& b) {
             std::vector<int64_t> sizes;
             {
               py::gil_scoped_release release;  // plain C++ state only
               sizes = b.Sizes();
             }
             return py::array(py::cast(sizes));
           })
      .def("total_size", &ReplayBuffer::TotalSize, py::call_guard<py::gil_scoped_release>())
      .def("nbytes", &ReplayBuffer::nbytes, py::call_guard<py::gil_scoped_release>())
      .def("max_priority", &ReplayBuffer::max_priority,
           py::call_guard<py::gil_scoped_release>())
      .def("final_rows_in_use", &ReplayBuffer::final_rows_in_use,
           py::call_guard<py::gil_scoped_release>())
      .def("tree_levels",
           [](const ReplayBuffer& b, int64_t t) {
             std::vector<std::vector<double>> levels;
             {
               py::gil_scoped_release release;  // plain C++ state only
               levels = b.TreeLevels(t);
             }
             return ToArrays(levels);
           })
      .def("top_levels", [](const ReplayBuffer& b) { return ToArrays(b.TopLevels()); })
      .def("save",
           [](const ReplayBuffer& b, const std::string& dir, int64_t version) {
             ReplayScalars s;
             {
               py::gil_scoped_release release;  // file I/O on plain C++ state
               s = b.Save(dir, version);
             }
             py::dict d;
             d["size"] = s.size;
             d["position"] = s.position;
             d["max_priority"] = s.max_priority;
             d["rng_state"] = std::vector<uint64_t>(s.rng_state.begin(), s.rng_state.end());
             d["final_rows"] = s.final_rows;
             return d;
           },
           py::arg("directory"), py::arg("version"))
      .def("load",
           [](ReplayBuffer& b, const std::string& dir, std::vector<int64_t> size,
              std::vector<int64_t> position, double max_priority, std::vector<uint64_t> rng,
              int64_t final_rows, int64_t version) {
             if (rng.size() != 4) throw py::value_error("`rng_state` must have 4 entries");
             if (final_rows < 0) throw py::value_error("`final_rows` must be >= 0");
             ReplayScalars s{std::move(size), std::move(position), max_priority,
                             {rng[0], rng[1], rng[2], rng[3]}, final_rows};
             py::gil_scoped_release release;  // file I/O on plain C++ state
             b.Load(dir, s, version);
           });
}

}  // namespace mtrl
