// mtrl._core: the compiled core. Each component registers itself here.
#include <pybind11/pybind11.h>

#include "bindings/registrars.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "mtrl compiled core (replay buffer, TD-target kernels, environment engine)";
  mtrl::RegisterBuildInfo(m);
  mtrl::RegisterReplay(m);
  mtrl::RegisterEnvs(m);
  mtrl::RegisterKernels(m);
  mtrl::RegisterNn(m);
  mtrl::RegisterOptim(m);
}
