// Cheetah, ported from dm_control/suite/cheetah.py (task: run).
#pragma once

#include "envs/rewards.h"
#include "envs/task.h"

namespace mtrl::tasks {

class Cheetah : public Task {
 public:
  static constexpr double kRunSpeed = 10;  // _RUN_SPEED, m/s

  explicit Cheetah(const Physics& p) : speed_adr_(p.SensorAdr("torso_subtreelinvel")) {}

  void InitializeEpisode(Physics& p, Rng& rng) override {
    // Limited joints uniformly in range, then 200 physics steps to settle; time restarts at 0.
    for (int j = 0; j < p.m->njnt; ++j) {
      if (p.m->jnt_limited[j] == 1) {
        p.d->qpos[p.m->jnt_qposadr[j]] = rng.Uniform(p.m->jnt_range[2 * j], p.m->jnt_range[2 * j + 1]);
      }
    }
    p.Step(200);
    p.d->time = 0;
  }
  void Observe(const Physics& p, ObsWriter& out) const override {
    out.Put(p.d->qpos + 1, p.m->nq - 1);  // position (without the root x)
    out.Put(p.d->qvel, p.m->nv);          // velocity
  }
  double Reward(const Physics& p) const override {
    return Tolerance(p.d->sensordata[speed_adr_], kRunSpeed, INFINITY, kRunSpeed, Sigmoid::kLinear,
                     0.0);
  }

 private:
  int speed_adr_;
};

inline void AddCheetahTasks(std::vector<TaskDef>& defs) {
  auto make = [](const Physics& p) -> std::unique_ptr<Task> { return std::make_unique<Cheetah>(p); };
  defs.push_back({"cheetah-run", "cheetah.xml", 0.0, 10.0, false, make});
}

}  // namespace mtrl::tasks
