// Finger, ported from dm_control/suite/finger.py (tasks: spin, turn_easy, turn_hard).
#pragma once

#include <stdexcept>

#include "envs/task.h"
#include "envs/tasks/common.h"

namespace mtrl::tasks {

class Finger : public Task {
 public:
  static constexpr double kSpinVelocity = 15.0;  // _SPIN_VELOCITY, rad/s
  static constexpr double kSpinDamping = 0.03;   // Spin sets dof_damping['hinge']

  // target_radius <= 0: the spin task.
  Finger(const Physics& p, double target_radius)
      : target_radius_(target_radius), hinge_jnt_(p.Id(mjOBJ_JOINT, "hinge")),
        hinge_dof_(p.JointDofAdr("hinge")), cap1_(p.GeomId("cap1")), target_site_(p.SiteId("target")),
        proximal_(p.SensorAdr("proximal")), distal_(p.SensorAdr("distal")),
        proximal_vel_(p.SensorAdr("proximal_velocity")), distal_vel_(p.SensorAdr("distal_velocity")),
        hinge_vel_(p.SensorAdr("hinge_velocity")), tip_(p.SensorAdr("tip")), target_(p.SensorAdr("target")),
        spinner_(p.SensorAdr("spinner")), touchtop_(p.SensorAdr("touchtop")),
        touchbottom_(p.SensorAdr("touchbottom")) {}

  void InitializeEpisode(Physics& p, Rng& rng) override {
    if (target_radius_ <= 0) {
      p.m->dof_damping[hinge_dof_] = kSpinDamping;
    } else {
      const double target_angle = rng.Uniform(-M_PI, M_PI);
      const double hinge_x = p.d->xanchor[3 * hinge_jnt_], hinge_z = p.d->xanchor[3 * hinge_jnt_ + 2];
      const double* s = p.m->geom_size + 3 * cap1_;
      const double radius = s[0] + s[1] + s[2];
      p.m->site_pos[3 * target_site_] = hinge_x + radius * std::sin(target_angle);
      p.m->site_pos[3 * target_site_ + 2] = hinge_z + radius * std::cos(target_angle);
      p.m->site_size[3 * target_site_] = target_radius_;
    }
    // _set_random_joint_angles: resample until collision-free (max 1000 attempts).
    for (int attempt = 0; attempt < 1000; ++attempt) {
      RandomizeLimitedAndRotationalJoints(p, rng);
      p.ForwardWithoutActuation();
      if (p.d->ncon == 0) return;
    }
    throw std::runtime_error("finger: could not find a collision-free state after 1000 attempts");
  }
  void Observe(const Physics& p, ObsWriter& out) const override {
    const double* sd = p.d->sensordata;
    out.Put(sd[proximal_]);  // position: joint angles, then tip relative to the spinner (x, z)
    out.Put(sd[distal_]);
    out.Put(sd[tip_] - sd[spinner_]);
    out.Put(sd[tip_ + 2] - sd[spinner_ + 2]);
    out.Put(sd[proximal_vel_]);  // velocity
    out.Put(sd[distal_vel_]);
    out.Put(sd[hinge_vel_]);
    out.Put(std::log1p(sd[touchtop_]));  // touch
    out.Put(std::log1p(sd[touchbottom_]));
    if (target_radius_ > 0) {
      out.Put(sd[target_] - sd[spinner_]);  // target_position
      out.Put(sd[target_ + 2] - sd[spinner_ + 2]);
      out.Put(DistToTarget(p));  // dist_to_target
    }
  }
  double Reward(const Physics& p) const override {
    if (target_radius_ <= 0) return p.d->sensordata[hinge_vel_] <= -kSpinVelocity ? 1.0 : 0.0;
    return DistToTarget(p) <= 0 ? 1.0 : 0.0;
  }
  std::vector<double> EpisodeState(const Physics& p) const override {
    return {p.m->site_pos[3 * target_site_], p.m->site_pos[3 * target_site_ + 2]};
  }
  void SetEpisodeState(Physics& p, const std::vector<double>& s) override {
    if (target_radius_ <= 0) {
      p.m->dof_damping[hinge_dof_] = kSpinDamping;
    } else if (s.size() == 2) {
      p.m->site_pos[3 * target_site_] = s[0];
      p.m->site_pos[3 * target_site_ + 2] = s[1];
      p.m->site_size[3 * target_site_] = target_radius_;
    }
  }

 private:
  double DistToTarget(const Physics& p) const {
    const double* sd = p.d->sensordata;
    const double dx = (sd[target_] - sd[spinner_]) - (sd[tip_] - sd[spinner_]);
    const double dz = (sd[target_ + 2] - sd[spinner_ + 2]) - (sd[tip_ + 2] - sd[spinner_ + 2]);
    return std::sqrt(dx * dx + dz * dz) - p.m->site_size[3 * target_site_];
  }
  double target_radius_;
  int hinge_jnt_, hinge_dof_, cap1_, target_site_;
  int proximal_, distal_, proximal_vel_, distal_vel_, hinge_vel_, tip_, target_, spinner_, touchtop_,
      touchbottom_;
};

inline void AddFingerTasks(std::vector<TaskDef>& defs) {
  // _CONTROL_TIMESTEP = 0.02, _DEFAULT_TIME_LIMIT = 20; _EASY_TARGET_SIZE 0.07, _HARD_TARGET_SIZE 0.03.
  for (auto [task, radius] : {std::pair{"spin", 0.0}, {"turn_easy", 0.07}, {"turn_hard", 0.03}}) {
    defs.push_back({std::string("finger-") + task, "finger.xml", 0.02, 20.0, true,
                    [radius = radius](const Physics& p) -> std::unique_ptr<Task> {
                      return std::make_unique<Finger>(p, radius);
                    }});
  }
}

}  // namespace mtrl::tasks
