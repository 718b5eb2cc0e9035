// Planar walker, ported from dm_control/suite/walker.py (tasks: stand, walk, run).
#pragma once

#include "envs/rewards.h"
#include "envs/task.h"
#include "envs/tasks/common.h"

namespace mtrl::tasks {

class Walker : public Task {
 public:
  static constexpr double kStandHeight = 1.2;  // _STAND_HEIGHT, m

  Walker(const Physics& p, double move_speed)
      : move_speed_(move_speed), torso_(p.BodyId("torso")),
        speed_adr_(p.SensorAdr("torso_subtreelinvel")) {}

  void InitializeEpisode(Physics& p, Rng& rng) override { RandomizeLimitedAndRotationalJoints(p, rng); }
  void Observe(const Physics& p, ObsWriter& out) const override {
    for (int b = 1; b < p.m->nbody; ++b) {  // orientations: xmat[1:, ['xx', 'xz']]
      out.Put(XMat(p, b, 0, 0));
      out.Put(XMat(p, b, 0, 2));
    }
    out.Put(p.d->xpos[3 * torso_ + 2]);  // height
    out.Put(p.d->qvel, p.m->nv);          // velocity
  }
  double Reward(const Physics& p) const override {
    const double standing = Tolerance(p.d->xpos[3 * torso_ + 2], kStandHeight, INFINITY, kStandHeight / 2);
    const double upright = (1 + XMat(p, torso_, 2, 2)) / 2;
    const double stand_reward = (3 * standing + upright) / 4;
    if (move_speed_ == 0) return stand_reward;
    const double move_reward = Tolerance(p.d->sensordata[speed_adr_], move_speed_, INFINITY,
                                         move_speed_ / 2, Sigmoid::kLinear, 0.5);
    return stand_reward * (5 * move_reward + 1) / 6;
  }

 private:
  double move_speed_;
  int torso_, speed_adr_;
};

inline void AddWalkerTasks(std::vector<TaskDef>& defs) {
  // _CONTROL_TIMESTEP = 0.025, _DEFAULT_TIME_LIMIT = 25; speeds: stand 0, _WALK_SPEED 1, _RUN_SPEED 8.
  for (auto [task, speed] : {std::pair{"stand", 0.0}, {"walk", 1.0}, {"run", 8.0}}) {
    defs.push_back({std::string("walker-") + task, "walker.xml", 0.025, 25.0, false,
                    [speed = speed](const Physics& p) -> std::unique_ptr<Task> {
                      return std::make_unique<Walker>(p, speed);
                    }});
  }
}

}  // namespace mtrl::tasks
