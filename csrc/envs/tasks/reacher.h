// Reacher, ported from dm_control/suite/reacher.py (tasks: easy, hard).
#pragma once

#include "envs/rewards.h"
#include "envs/task.h"
#include "envs/tasks/common.h"

namespace mtrl::tasks {

class Reacher : public Task {
 public:
  Reacher(const Physics& p, double target_size)
      : target_size_(target_size), target_(p.GeomId("target")), finger_(p.GeomId("finger")) {}

  void InitializeEpisode(Physics& p, Rng& rng) override {
    p.m->geom_size[3 * target_] = target_size_;
    RandomizeLimitedAndRotationalJoints(p, rng);
    const double angle = rng.Uniform(0, 2 * M_PI);
    const double radius = rng.Uniform(0.05, 0.2);
    p.m->geom_pos[3 * target_] = radius * std::sin(angle);
    p.m->geom_pos[3 * target_ + 1] = radius * std::cos(angle);
  }
  void Observe(const Physics& p, ObsWriter& out) const override {
    out.Put(p.d->qpos, p.m->nq);  // position
    for (int i = 0; i < 2; ++i) {  // to_target: geom_xpos['target', :2] - geom_xpos['finger', :2]
      out.Put(p.d->geom_xpos[3 * target_ + i] - p.d->geom_xpos[3 * finger_ + i]);
    }
    out.Put(p.d->qvel, p.m->nv);  // velocity
  }
  double Reward(const Physics& p) const override {
    const double radii = p.m->geom_size[3 * target_] + p.m->geom_size[3 * finger_];
    const double dx = p.d->geom_xpos[3 * target_] - p.d->geom_xpos[3 * finger_];
    const double dy = p.d->geom_xpos[3 * target_ + 1] - p.d->geom_xpos[3 * finger_ + 1];
    return Tolerance(std::sqrt(dx * dx + dy * dy), 0, radii);
  }
  std::vector<double> EpisodeState(const Physics& p) const override {
    return {p.m->geom_pos[3 * target_], p.m->geom_pos[3 * target_ + 1]};
  }
  void SetEpisodeState(Physics& p, const std::vector<double>& s) override {
    p.m->geom_size[3 * target_] = target_size_;
    if (s.size() == 2) {
      p.m->geom_pos[3 * target_] = s[0];
      p.m->geom_pos[3 * target_ + 1] = s[1];
    }
  }

 private:
  double target_size_;
  int target_, finger_;
};

inline void AddReacherTasks(std::vector<TaskDef>& defs) {
  // _BIG_TARGET = 0.05, _SMALL_TARGET = 0.015; _DEFAULT_TIME_LIMIT = 20.
  for (auto [task, size] : {std::pair{"easy", 0.05}, {"hard", 0.015}}) {
    defs.push_back({std::string("reacher-") + task, "reacher.xml", 0.0, 20.0, true,
                    [size = size](const Physics& p) -> std::unique_ptr<Task> {
                      return std::make_unique<Reacher>(p, size);
                    }});
  }
}

}  // namespace mtrl::tasks
