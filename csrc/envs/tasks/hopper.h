// Hopper, ported from dm_control/suite/hopper.py (tasks: stand, hop).
#pragma once

#include "envs/rewards.h"
#include "envs/task.h"
#include "envs/tasks/common.h"

namespace mtrl::tasks {

class Hopper : public Task {
 public:
  static constexpr double kStandHeight = 0.6;  // _STAND_HEIGHT, m
  static constexpr double kHopSpeed = 2;       // _HOP_SPEED, m/s

  Hopper(const Physics& p, bool hopping)
      : hopping_(hopping), torso_(p.BodyId("torso")), foot_(p.BodyId("foot")),
        speed_adr_(p.SensorAdr("torso_subtreelinvel")), toe_adr_(p.SensorAdr("touch_toe")),
        heel_adr_(p.SensorAdr("touch_heel")) {}

  void InitializeEpisode(Physics& p, Rng& rng) override { RandomizeLimitedAndRotationalJoints(p, rng); }
  void Observe(const Physics& p, ObsWriter& out) const override {
    out.Put(p.d->qpos + 1, p.m->nq - 1);  // position
    out.Put(p.d->qvel, p.m->nv);          // velocity
    out.Put(std::log1p(p.d->sensordata[toe_adr_]));  // touch
    out.Put(std::log1p(p.d->sensordata[heel_adr_]));
  }
  double Reward(const Physics& p) const override {
    const double height = p.d->xipos[3 * torso_ + 2] - p.d->xipos[3 * foot_ + 2];
    const double standing = Tolerance(height, kStandHeight, 2);
    if (hopping_) {
      return standing * Tolerance(p.d->sensordata[speed_adr_], kHopSpeed, INFINITY, kHopSpeed / 2,
                                  Sigmoid::kLinear, 0.5);
    }
    return standing * (SmallControlMean(p) + 4) / 5;
  }

 private:
  bool hopping_;
  int torso_, foot_, speed_adr_, toe_adr_, heel_adr_;
};

inline void AddHopperTasks(std::vector<TaskDef>& defs) {
  // _CONTROL_TIMESTEP = 0.02, _DEFAULT_TIME_LIMIT = 20.
  for (auto [task, hopping] : {std::pair{"stand", false}, {"hop", true}}) {
    defs.push_back({std::string("hopper-") + task, "hopper.xml", 0.02, 20.0, false,
                    [hopping = hopping](const Physics& p) -> std::unique_ptr<Task> {
                      return std::make_unique<Hopper>(p, hopping);
                    }});
  }
}

}  // namespace mtrl::tasks
