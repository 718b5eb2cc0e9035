// Dog, ported from dm_control/suite/dog.py (tasks: stand, walk, trot, run; fetch is not ported).
#pragma once

#include <string>
#include <vector>

#include "envs/rewards.h"
#include "envs/task.h"
#include "envs/tasks/common.h"
#include "envs/tasks/spec_edit.h"

namespace mtrl::tasks {

class Dog : public Task {
 public:
  static constexpr double kMaxUprightAngleDeg = 30;   // _MAX_UPRIGHT_ANGLE
  static constexpr double kStandHeightFraction = 0.9;  // _STAND_HEIGHT_FRACTION

  Dog(const Physics& p, double move_speed)
      : move_speed_(move_speed), root_(p.JointQposAdr("root")), torso_(p.BodyId("torso")),
        pelvis_(p.BodyId("pelvis")), skull_(p.BodyId("skull")), torso_linvel_(p.SensorAdr("torso_linvel")) {
    for (int j = 0; j < p.m->njnt; ++j) {
      if (p.m->jnt_type[j] == mjJNT_HINGE) {
        hinge_qpos_.push_back(p.m->jnt_qposadr[j]);
        hinge_dof_.push_back(p.m->jnt_dofadr[j]);
      }
    }
    for (const char* s : {"accelerometer", "velocimeter", "gyro"}) inertial_.push_back(Sensor(p, s));
    for (const char* s : {"foot_L", "foot_R", "hand_L", "hand_R"}) foot_forces_.push_back(Sensor(p, s));
    for (const char* s : {"palm_L", "palm_R", "sole_L", "sole_R"}) touch_.push_back(Sensor(p, s));
    // Stand heights and weight from the reset pose (dm_control computes them in
    // initialize_episode after physics.reset(); they are the same every episode).
    mj_resetData(p.m, p.d);
    mj_forward(p.m, p.d);
    stand_height_[0] = p.d->xpos[3 * torso_ + 2] * kStandHeightFraction;
    stand_height_[1] = p.d->xpos[3 * pelvis_ + 2] * kStandHeightFraction;
    body_weight_ = -p.m->opt.gravity[2] * p.m->body_subtreemass[torso_];
  }

  void InitializeEpisode(Physics& p, Rng& rng) override {
    p.Reset();
    const double azimuth = rng.Uniform(0, 2 * M_PI);
    double* quat = p.d->qpos + root_ + 3;
    quat[0] = std::cos(azimuth / 2);
    quat[1] = quat[2] = 0;
    quat[3] = std::sin(azimuth / 2);
    p.d->qvel[0] = 2 * rng.Normal();
    p.d->qvel[1] = 2 * rng.Normal();
    p.d->qvel[5] = 2 * rng.Normal();
    for (int i = 0; i < p.m->nu; ++i) {
      p.d->act[i] = rng.Uniform(p.m->actuator_ctrlrange[2 * i], p.m->actuator_ctrlrange[2 * i + 1]);
    }
  }
  void Observe(const Physics& p, ObsWriter& out) const override {
    for (int a : hinge_qpos_) out.Put(p.d->qpos[a]);  // joint_angles
    for (int a : hinge_dof_) out.Put(p.d->qvel[a]);   // joint_velocites (sic, dm_control's key)
    out.Put(p.d->xpos[3 * torso_ + 2]);               // torso_pelvis_height
    out.Put(p.d->xpos[3 * pelvis_ + 2]);
    for (int b : {skull_, torso_, pelvis_}) out.Put(p.d->xmat + 9 * b + 6, 3);  // z_projection
    double v[3];
    TorsoComVelocity(p, v);
    out.Put(v, 3);  // torso_com_velocity
    for (const auto& s : inertial_) out.Put(p.d->sensordata + s.first, s.second);     // inertial_sensors
    for (const auto& s : foot_forces_) out.Put(p.d->sensordata + s.first, s.second);  // foot_forces
    for (const auto& s : touch_) out.Put(p.d->sensordata + s.first, s.second);        // touch_sensors
    out.Put(p.d->act, p.m->na);  // actuator_state
  }
  double Reward(const Physics& p) const override {
    const double min_upright_cosine = std::cos(kMaxUprightAngleDeg * M_PI / 180.0);
    double r = Tolerance(p.d->xpos[3 * torso_ + 2], stand_height_[0], INFINITY, stand_height_[0]);
    r *= Tolerance(p.d->xpos[3 * pelvis_ + 2], stand_height_[1], INFINITY, stand_height_[1]);
    for (int b : {skull_, torso_, pelvis_}) {
      r *= Tolerance(XMat(p, b, 2, 2), min_upright_cosine, INFINITY, min_upright_cosine + 1,
                     Sigmoid::kLinear, 0.0);
    }
    double touch = 0;
    for (const auto& s : touch_) touch += p.d->sensordata[s.first];
    r *= Tolerance(touch, body_weight_, INFINITY, body_weight_, Sigmoid::kLinear, 0.9);
    if (move_speed_ == 0) return r;
    double v[3];
    TorsoComVelocity(p, v);
    const double forward = Tolerance(v[0], move_speed_, 2 * move_speed_, std::max(1.0, move_speed_),
                                     Sigmoid::kLinear, 0.0);
    return r * (4 * forward + 1) / 5;
  }

 private:
  static std::pair<int, int> Sensor(const Physics& p, const char* name) {
    return {p.SensorAdr(name), p.SensorDim(name)};
  }
  void TorsoComVelocity(const Physics& p, double* out) const {
    mju_mulMatTVec3(out, p.d->xmat + 9 * torso_, p.d->sensordata + torso_linvel_);
  }
  double move_speed_;
  int root_, torso_, pelvis_, skull_, torso_linvel_;
  std::vector<int> hinge_qpos_, hinge_dof_;
  std::vector<std::pair<int, int>> inertial_, foot_forces_, touch_;  // (sensordata address, dim)
  double stand_height_[2];
  double body_weight_;
};

inline void AddDogTasks(std::vector<TaskDef>& defs) {
  // _CONTROL_TIMESTEP = 0.015, _DEFAULT_TIME_LIMIT = 15; speeds _WALK_SPEED 1, _TROT_SPEED 3,
  // _RUN_SPEED 9; floor size = speed * time limit (stand uses the walk floor); no ball.
  struct V { const char* task; double speed, floor; };
  for (V v : {V{"stand", 0, 15}, V{"walk", 1, 15}, V{"trot", 3, 45}, V{"run", 9, 135}}) {
    TaskDef def{std::string("dog-") + v.task, "dog.xml", 0.015, 15.0, false,
                [v](const Physics& p) -> std::unique_ptr<Task> { return std::make_unique<Dog>(p, v.speed); }};
    def.variant = "floor" + std::to_string(static_cast<int>(v.floor)) + "-noball";
    def.edit = [v](mjSpec* spec) {  // dog.make_model(floor_size, remove_ball=True)
      SetGeomSize(spec, "floor", v.floor, v.floor, 0.1);
      Remove(spec, mjOBJ_BODY, "ball");
      Remove(spec, mjOBJ_GEOM, "target");
      Remove(spec, mjOBJ_CAMERA, "ball");
      Remove(spec, mjOBJ_CAMERA, "head");
      for (const char* w : {"wall_px", "wall_nx", "wall_py", "wall_ny"}) Remove(spec, mjOBJ_GEOM, w);
    };
    defs.push_back(def);
  }
}

}  // namespace mtrl::tasks
