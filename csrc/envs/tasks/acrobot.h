// Acrobot, ported from dm_control/suite/acrobot.py (tasks: swingup, swingup_sparse).
#pragma once

#include "envs/rewards.h"
#include "envs/task.h"
#include "envs/tasks/common.h"

namespace mtrl::tasks {

class Acrobot : public Task {
 public:
  Acrobot(const Physics& p, bool sparse)
      : sparse_(sparse), upper_(p.BodyId("upper_arm")), lower_(p.BodyId("lower_arm")),
        shoulder_(p.JointQposAdr("shoulder")), elbow_(p.JointQposAdr("elbow")),
        target_(p.SiteId("target")), tip_(p.SiteId("tip")) {}

  void InitializeEpisode(Physics& p, Rng& rng) override {
    p.d->qpos[shoulder_] = rng.Uniform(-M_PI, M_PI);
    p.d->qpos[elbow_] = rng.Uniform(-M_PI, M_PI);
  }
  void Observe(const Physics& p, ObsWriter& out) const override {
    out.Put(XMat(p, upper_, 0, 2));  // orientations: horizontal (xz) then vertical (zz)
    out.Put(XMat(p, lower_, 0, 2));
    out.Put(XMat(p, upper_, 2, 2));
    out.Put(XMat(p, lower_, 2, 2));
    out.Put(p.d->qvel, p.m->nv);  // velocity
  }
  double Reward(const Physics& p) const override {
    double delta[3];
    mju_sub3(delta, p.d->site_xpos + 3 * target_, p.d->site_xpos + 3 * tip_);
    const double target_radius = p.m->site_size[3 * target_];
    return Tolerance(mju_norm3(delta), 0, target_radius, sparse_ ? 0.0 : 1.0);
  }

 private:
  bool sparse_;
  int upper_, lower_, shoulder_, elbow_, target_, tip_;
};

inline void AddAcrobotTasks(std::vector<TaskDef>& defs) {
  for (auto [task, sparse] : {std::pair{"swingup", false}, {"swingup_sparse", true}}) {
    defs.push_back({std::string("acrobot-") + task, "acrobot.xml", 0.0, 10.0, false,
                    [sparse = sparse](const Physics& p) -> std::unique_ptr<Task> {
                      return std::make_unique<Acrobot>(p, sparse);
                    }});
  }
}

}  // namespace mtrl::tasks
