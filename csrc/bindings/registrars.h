// One registrar per component; module.cc only calls them.
#pragma once

#include <pybind11/pybind11.h>

namespace mtrl {

void RegisterBuildInfo(pybind11::module_& m);
void RegisterReplay(pybind11::module_& m);
void RegisterEnvs(pybind11::module_& m);
void RegisterKernels(pybind11::module_& m);
void RegisterNn(pybind11::module_& m);
void RegisterOptim(pybind11::module_& m);

}  // namespace mtrl
