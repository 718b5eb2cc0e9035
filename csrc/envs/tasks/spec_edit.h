// Helpers for dm_control's make_model variants, applied to a parsed mjSpec (see TaskDef::edit).
#pragma once

#include <mujoco/mujoco.h>

#include <stdexcept>
#include <string>

namespace mtrl::tasks {

inline mjsElement* FindOrThrow(mjSpec* spec, mjtObj type, const std::string& name) {
  mjsElement* el = mjs_findElement(spec, type, name.c_str());
  if (el == nullptr) {
    throw std::runtime_error("model edit: no " + std::string(mju_type2Str(type)) + " named '" + name + "'");
  }
  return el;
}

// Removes a named element (a body with its subtree), like dm_control's xml_tools removals.
inline void Remove(mjSpec* spec, mjtObj type, const std::string& name) {
  if (mjs_delete(spec, FindOrThrow(spec, type, name)) != 0) {
    throw std::runtime_error("model edit: cannot delete '" + name + "': " + mjs_getError(spec));
  }
}

// Sets a geom's size, e.g. the floor's "<s> <s> .1".
inline void SetGeomSize(mjSpec* spec, const std::string& name, double x, double y, double z) {
  mjsGeom* g = mjs_asGeom(FindOrThrow(spec, mjOBJ_GEOM, name));
  g->size[0] = x;
  g->size[1] = y;
  g->size[2] = z;
}

}  // namespace mtrl::tasks
