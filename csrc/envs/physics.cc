// Implementation of Physics (see physics.h); mirrors dm_control/mujoco/engine.py.
#include "envs/physics.h"

#include <atomic>
#include <mutex>
#include <stdexcept>

namespace mtrl {
namespace {

// Default TLS model (a __tls_get_addr call per read, ~0.7% of a step): initial-exec fails to load
// ("cannot allocate memory in static TLS block") once _core is dlopened next to torch.
thread_local bool t_timer_off = false;
std::atomic<mjfTime> g_replaced_timer{nullptr};  // the callback the hook chains to

mjtNum HookedTime() {
  if (t_timer_off) return 0;
  const mjfTime replaced = g_replaced_timer.load(std::memory_order_acquire);
  return replaced != nullptr ? replaced() : 0;
}

}  // namespace

void Physics::InstallTimerHook() {
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  if (mjcb_time == &HookedTime) return;
  g_replaced_timer.store(mjcb_time, std::memory_order_release);
  mjcb_time = &HookedTime;
}

Physics::TimerOff::TimerOff() : saved_(t_timer_off) { t_timer_off = true; }
Physics::TimerOff::~TimerOff() { t_timer_off = saved_; }

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
