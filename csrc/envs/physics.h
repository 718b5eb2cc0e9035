// Physics: one mjModel/mjData pair with dm_control's stepping and reset conventions
// (dm_control/mujoco/engine.py: Physics.step with legacy_step=True, reset, after_reset),
// plus name lookups used by the task headers.
#pragma once

#include <mujoco/mujoco.h>

#include <string>

namespace mtrl {

class Physics {
 public:
  // Does not own `model` or `data`. `private_model`: this env owns its model copy, so
  // model-wide flags may be toggled (see ForwardWithoutActuation).
  Physics(mjModel* model, mjData* data, bool private_model)
      : m(model), d(data), private_model_(private_model) {}

  // dm_control Physics.step(nstep) with legacy_step: finish the current step with mj_step2
  // (mj_step1 already ran for this state), take nstep - 1 full steps, then mj_step1 so that
  // position/velocity-dependent fields match qpos/qvel. RK4 models use plain mj_step.
  void Step(int nstep);

  // dm_control Physics.after_reset / reset: mj_forward with actuation disabled. The flag is only
  // toggled on a private model; a shared model is used only when its actuators produce no force
  // at ctrl = 0 with no activation (then both forwards are identical).
  void ForwardWithoutActuation();

  // mj_resetData followed by ForwardWithoutActuation (dm_control Physics.reset).
  void Reset();

  // Name lookups; throw std::runtime_error naming the missing element.
  int Id(mjtObj type, const char* name) const;
  int BodyId(const char* name) const { return Id(mjOBJ_BODY, name); }
  int GeomId(const char* name) const { return Id(mjOBJ_GEOM, name); }
  int SiteId(const char* name) const { return Id(mjOBJ_SITE, name); }
  int JointQposAdr(const char* name) const { return m->jnt_qposadr[Id(mjOBJ_JOINT, name)]; }
  int JointDofAdr(const char* name) const { return m->jnt_dofadr[Id(mjOBJ_JOINT, name)]; }
  int SensorAdr(const char* name) const { return m->sensor_adr[Id(mjOBJ_SENSOR, name)]; }
  int SensorDim(const char* name) const { return m->sensor_dim[Id(mjOBJ_SENSOR, name)]; }

  // Whether a shared model's plain mj_forward equals a forward with actuation disabled.
  static bool ActuationFreeAtZeroControl(const mjModel* m);

  // MuJoCo reads its stage timers (mjData.timer) through the process-wide `mjcb_time` callback,
  // which the mujoco Python package sets on import to a steady-clock reader: each mj_step then
  // makes ~20 clock calls, about 15% of a DeepMind Control step on the 2-core sandbox. The
  // engine never reads mjData.timer, so InstallTimerHook() replaces the callback with one that
  // returns 0 on a thread inside a TimerOff scope and otherwise calls the callback it replaced:
  // other MuJoCo users in the process (other threads, code outside the engine's steps) keep
  // their timers. Idempotent; a callback set later (mujoco.set_mjcb_time) replaces the hook
  // and the engine then simply pays for the clock again. Thread-safety: call while no other
  // thread changes mjcb_time (pool construction, with the GIL held).
  static void InstallTimerHook();
  // RAII: MuJoCo's stage timers read 0 on this thread while the scope is alive (nestable).
  class TimerOff {
   public:
    TimerOff();
    ~TimerOff();
    TimerOff(const TimerOff&) = delete;
    TimerOff& operator=(const TimerOff&) = delete;

   private:
    bool saved_;
  };

  mjModel* m;
  mjData* d;

 private:
  bool private_model_;
};

}  // namespace mtrl
