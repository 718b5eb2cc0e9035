// Fish, ported from dm_control/suite/fish.py (tasks: upright, swim).
#pragma once

#include "envs/rewards.h"
#include "envs/task.h"
#include "envs/tasks/common.h"

namespace mtrl::tasks {

class Fish : public Task {
 public:
  Fish(const Physics& p, bool swim)
      : swim_(swim), root_(p.JointQposAdr("root")), torso_(p.BodyId("torso")), mouth_(p.GeomId("mouth")),
        target_(p.GeomId("target")) {
    const char* joints[] = {"tail1", "tail_twist", "tail2", "finright_roll", "finright_pitch",
                            "finleft_roll", "finleft_pitch"};  // _JOINTS
    for (int i = 0; i < 7; ++i) joints_[i] = p.JointQposAdr(joints[i]);
  }

  void InitializeEpisode(Physics& p, Rng& rng) override {
    double* quat = p.d->qpos + root_ + 3;
    for (int i = 0; i < 4; ++i) quat[i] = rng.Normal();
    mju_normalize4(quat);
    for (int adr : joints_) p.d->qpos[adr] = rng.Uniform(-0.2, 0.2);
    if (swim_) {
      p.m->geom_pos[3 * target_] = rng.Uniform(-0.4, 0.4);
      p.m->geom_pos[3 * target_ + 1] = rng.Uniform(-0.4, 0.4);
      p.m->geom_pos[3 * target_ + 2] = rng.Uniform(0.1, 0.3);
    }
  }
  void Observe(const Physics& p, ObsWriter& out) const override {
    for (int adr : joints_) out.Put(p.d->qpos[adr]);  // joint_angles
    out.Put(XMat(p, torso_, 2, 2));                     // upright
    if (swim_) {
      double target[3];
      MouthToTarget(p, target);
      out.Put(target, 3);  // target
    }
    out.Put(p.d->qvel, p.m->nv);  // velocity
  }
  double Reward(const Physics& p) const override {
    if (!swim_) return Tolerance(XMat(p, torso_, 2, 2), 1, 1, 1);
    const double radii = p.m->geom_size[3 * mouth_] + p.m->geom_size[3 * target_];
    double target[3];
    MouthToTarget(p, target);
    const double in_target = Tolerance(mju_norm3(target), 0, radii, 2 * radii);
    const double is_upright = 0.5 * (XMat(p, torso_, 2, 2) + 1);
    return (7 * in_target + is_upright) / 8;
  }
  std::vector<double> EpisodeState(const Physics& p) const override {
    return {p.m->geom_pos + 3 * target_, p.m->geom_pos + 3 * target_ + 3};
  }
  void SetEpisodeState(Physics& p, const std::vector<double>& s) override {
    if (swim_ && s.size() == 3) std::copy(s.begin(), s.end(), p.m->geom_pos + 3 * target_);
  }

 private:
  // (target - mouth) in the mouth geom's frame.
  void MouthToTarget(const Physics& p, double* out) const {
    double rel[3];
    mju_sub3(rel, p.d->geom_xpos + 3 * target_, p.d->geom_xpos + 3 * mouth_);
    mju_mulMatTVec3(out, p.d->geom_xmat + 9 * mouth_, rel);
  }
  bool swim_;
  int root_, torso_, mouth_, target_, joints_[7];
};

inline void AddFishTasks(std::vector<TaskDef>& defs) {
  // _CONTROL_TIMESTEP = 0.04, _DEFAULT_TIME_LIMIT = 40.
  for (auto [task, swim] : {std::pair{"upright", false}, {"swim", true}}) {
    defs.push_back({std::string("fish-") + task, "fish.xml", 0.04, 40.0, swim,
                    [swim = swim](const Physics& p) -> std::unique_ptr<Task> {
                      return std::make_unique<Fish>(p, swim);
                    }});
  }
}

}  // namespace mtrl::tasks
