// Ball in cup, ported from dm_control/suite/ball_in_cup.py (task: catch).
#pragma once

#include "envs/task.h"
#include "envs/tasks/common.h"

namespace mtrl::tasks {

class BallInCup : public Task {
 public:
  explicit BallInCup(const Physics& p)
      : ball_x_(p.JointQposAdr("ball_x")), ball_z_(p.JointQposAdr("ball_z")), target_(p.SiteId("target")),
        ball_(p.BodyId("ball")), ball_geom_(p.GeomId("ball")) {}

  void InitializeEpisode(Physics& p, Rng& rng) override {
    do {  // find a ball position that does not penetrate the cup
      p.d->qpos[ball_x_] = rng.Uniform(-0.2, 0.2);
      p.d->qpos[ball_z_] = rng.Uniform(0.2, 0.5);
      p.ForwardWithoutActuation();
    } while (p.d->ncon > 0);
  }
  void Observe(const Physics& p, ObsWriter& out) const override {
    out.Put(p.d->qpos, p.m->nq);  // position
    out.Put(p.d->qvel, p.m->nv);  // velocity
  }
  double Reward(const Physics& p) const override {  // in_target
    const double ball_size = p.m->geom_size[3 * ball_geom_];
    for (int axis : {0, 2}) {
      const double to_target = p.d->site_xpos[3 * target_ + axis] - p.d->xpos[3 * ball_ + axis];
      if (!(std::abs(to_target) < p.m->site_size[3 * target_ + axis] - ball_size)) return 0.0;
    }
    return 1.0;
  }

 private:
  int ball_x_, ball_z_, target_, ball_, ball_geom_;
};

inline void AddBallInCupTasks(std::vector<TaskDef>& defs) {
  // _CONTROL_TIMESTEP = 0.02, _DEFAULT_TIME_LIMIT = 20.
  defs.push_back({"ball_in_cup-catch", "ball_in_cup.xml", 0.02, 20.0, false,
                  [](const Physics& p) -> std::unique_ptr<Task> { return std::make_unique<BallInCup>(p); }});
}

}  // namespace mtrl::tasks
