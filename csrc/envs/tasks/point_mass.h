// Point mass, ported from dm_control/suite/point_mass.py (tasks: easy, hard).
#pragma once

#include "envs/rewards.h"
#include "envs/task.h"
#include "envs/tasks/common.h"

namespace mtrl::tasks {

class PointMass : public Task {
 public:
  PointMass(const Physics& p, bool randomize_gains)
      : randomize_gains_(randomize_gains), target_(p.GeomId("target")), mass_(p.GeomId("pointmass")) {}

  void InitializeEpisode(Physics& p, Rng& rng) override {
    RandomizeLimitedAndRotationalJoints(p, rng);
    if (!randomize_gains_) return;
    // Random, non-parallel actuator directions (the "hard" task edits the tendon wrap params).
    double dir1[2] = {rng.Normal(), rng.Normal()}, dir2[2];
    Normalize2(dir1);
    do {
      dir2[0] = rng.Normal();
      dir2[1] = rng.Normal();
      Normalize2(dir2);
    } while (std::abs(dir1[0] * dir2[0] + dir1[1] * dir2[1]) > 0.9);
    p.m->wrap_prm[0] = dir1[0];
    p.m->wrap_prm[1] = dir1[1];
    p.m->wrap_prm[2] = dir2[0];
    p.m->wrap_prm[3] = dir2[1];
  }
  void Observe(const Physics& p, ObsWriter& out) const override {
    out.Put(p.d->qpos, p.m->nq);  // position
    out.Put(p.d->qvel, p.m->nv);  // velocity
  }
  double Reward(const Physics& p) const override {
    const double target_size = p.m->geom_size[3 * target_];
    double delta[3];
    mju_sub3(delta, p.d->geom_xpos + 3 * target_, p.d->geom_xpos + 3 * mass_);
    const double near_target = Tolerance(mju_norm3(delta), 0, target_size, target_size);
    const double small_control = (SmallControlMean(p) + 4) / 5;
    return near_target * small_control;
  }
  std::vector<double> EpisodeState(const Physics& p) const override {
    return {p.m->wrap_prm, p.m->wrap_prm + 4};
  }
  void SetEpisodeState(Physics& p, const std::vector<double>& s) override {
    if (s.size() == 4 && randomize_gains_) std::copy(s.begin(), s.end(), p.m->wrap_prm);
  }

 private:
  static void Normalize2(double* v) {
    const double n = std::sqrt(v[0] * v[0] + v[1] * v[1]);
    v[0] /= n;
    v[1] /= n;
  }
  bool randomize_gains_;
  int target_, mass_;
};

inline void AddPointMassTasks(std::vector<TaskDef>& defs) {
  for (auto [task, hard] : {std::pair{"easy", false}, {"hard", true}}) {
    defs.push_back({std::string("point_mass-") + task, "point_mass.xml", 0.0, 20.0, hard,
                    [hard = hard](const Physics& p) -> std::unique_ptr<Task> {
                      return std::make_unique<PointMass>(p, hard);
                    }});
  }
}

}  // namespace mtrl::tasks
