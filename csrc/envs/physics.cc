// Implementation of Physics (see physics.h); mirrors dm_control/mujoco/engine.py.
#include "envs/physics.h"

#include <stdexcept>

namespace mtrl {

void Physics::Step(int nstep) {
  if (m->opt.integrator != mjINT_RK4) {
    mj_step2(m, d);
    for (int i = 1; i < nstep; ++i) mj_step(m, d);
  } else {
    for (int i = 0; i < nstep; ++i) mj_step(m, d);
  }
  mj_step1(m, d);
}

void Physics::ForwardWithoutActuation() {
  if (!private_model_) {
    mj_forward(m, d);
    return;
  }
  const int saved = m->opt.disableflags;
  m->opt.disableflags |= mjDSBL_ACTUATION;
  mj_forward(m, d);
  m->opt.disableflags = saved;
}

void Physics::Reset() {
  mj_resetData(m, d);
  ForwardWithoutActuation();
}

int Physics::Id(mjtObj type, const char* name) const {
  const int id = mj_name2id(m, type, name);
  if (id < 0) {
    throw std::runtime_error(std::string("model has no ") + mju_type2Str(type) + " named '" +
                             name + "'");
  }
  return id;
}

bool Physics::ActuationFreeAtZeroControl(const mjModel* m) {
  for (int i = 0; i < m->nu; ++i) {
    if (m->actuator_biastype[i] != mjBIAS_NONE || m->actuator_dyntype[i] != mjDYN_NONE ||
        m->actuator_actadr[i] >= 0) {
      return false;
    }
  }
  return m->na == 0;
}

}  // namespace mtrl
