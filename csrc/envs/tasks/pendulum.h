// Pendulum, ported from dm_control/suite/pendulum.py (task: swingup).
#pragma once

#include "envs/rewards.h"
#include "envs/task.h"
#include "envs/tasks/common.h"

namespace mtrl::tasks {

class Pendulum : public Task {
 public:
  static constexpr double kAngleBoundDeg = 8;  // _ANGLE_BOUND

  explicit Pendulum(const Physics& p)
      : pole_(p.BodyId("pole")), hinge_qpos_(p.JointQposAdr("hinge")), hinge_dof_(p.JointDofAdr("hinge")) {}

  void InitializeEpisode(Physics& p, Rng& rng) override { p.d->qpos[hinge_qpos_] = rng.Uniform(-M_PI, M_PI); }
  void Observe(const Physics& p, ObsWriter& out) const override {
    out.Put(XMat(p, pole_, 2, 2));  // orientation: xmat['pole', ['zz', 'xz']]
    out.Put(XMat(p, pole_, 0, 2));
    out.Put(p.d->qvel[hinge_dof_]);  // velocity
  }
  double Reward(const Physics& p) const override {
    const double cosine_bound = std::cos(kAngleBoundDeg * M_PI / 180.0);  // _COSINE_BOUND
    return Tolerance(XMat(p, pole_, 2, 2), cosine_bound, 1);
  }

 private:
  int pole_, hinge_qpos_, hinge_dof_;
};

inline void AddPendulumTasks(std::vector<TaskDef>& defs) {
  defs.push_back({"pendulum-swingup", "pendulum.xml", 0.0, 20.0, false,
                  [](const Physics& p) -> std::unique_ptr<Task> { return std::make_unique<Pendulum>(p); }});
}

}  // namespace mtrl::tasks
