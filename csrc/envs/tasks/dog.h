// Dog, ported from dm_control/suite/dog.py (tasks: stand, walk, trot, run, fetch).
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

  // fetch: the ball-fetching task (needs the model with the ball); otherwise Stand/Move.
  Dog(const Physics& p, double move_speed, bool fetch = false)
      : move_speed_(move_speed), fetch_(fetch), root_(p.JointQposAdr("root")), torso_(p.BodyId("torso")),
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
    if (fetch_) {
      ball_qpos_ = p.JointQposAdr("ball_root");
      ball_dof_ = p.JointDofAdr("ball_root");
      ball_ = p.GeomId("ball");
      target_ = p.GeomId("target");
      floor_ = p.GeomId("floor");
      head_ = p.SiteId("head");
      upper_bite_ = p.SiteId("upper_bite");
      lower_bite_ = p.SiteId("lower_bite");
    }
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
    if (fetch_) InitializeBall(p, rng);
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
    if (!fetch_) return;
    // ball_state: ball position and linear velocity relative to the head site, in its frame.
    const double* head_frame = p.d->site_xmat + 9 * head_;
    double rel[3], local[3], head_vel[6], ball_vel[6];
    mju_sub3(rel, p.d->geom_xpos + 3 * ball_, p.d->site_xpos + 3 * head_);
    mju_mulMatTVec3(local, head_frame, rel);
    out.Put(local, 3);
    mj_objectVelocity(p.m, p.d, mjOBJ_SITE, head_, head_vel, 0);  // (angular, linear)
    mj_objectVelocity(p.m, p.d, mjOBJ_GEOM, ball_, ball_vel, 0);
    mju_sub3(rel, ball_vel + 3, head_vel + 3);
    mju_mulMatTVec3(local, head_frame, rel);
    out.Put(local, 3);
    mju_sub3(rel, p.d->geom_xpos + 3 * target_, p.d->site_xpos + 3 * head_);  // target_position
    mju_mulMatTVec3(local, head_frame, rel);
    out.Put(local, 3);
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
    if (fetch_) return r * FetchFactors(p);
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
  // Fetch.initialize_episode: the ball starts on a circle of 0.75 floor sizes, thrown inwards.
  void InitializeBall(Physics& p, Rng& rng) const {
    const double radius = 0.75 * p.m->geom_size[3 * floor_];
    const double azimuth = rng.Uniform(0, 2 * M_PI);
    double* q = p.d->qpos + ball_qpos_;
    q[0] = radius * std::sin(azimuth);
    q[1] = radius * std::cos(azimuth);
    q[2] = 0.05;
    const double vertical_height = rng.Uniform(0, 3);
    const double vertical_velocity = std::sqrt(2 * -p.m->opt.gravity[2] * vertical_height);
    const double horizontal_speed = rng.Uniform(0, 5);
    const double dir_x = -std::sin(azimuth) + 0.05 * rng.Normal();
    const double dir_y = -std::cos(azimuth) + 0.05 * rng.Normal();
    double* v = p.d->qvel + ball_dof_;
    v[0] = horizontal_speed * dir_x;
    v[1] = horizontal_speed * dir_y;
    v[2] = vertical_velocity;
  }
  // Fetch.get_reward_factors beyond standing: reach_ball * fetch_ball.
  double FetchFactors(const Physics& p) const {
    const double* ball = p.d->geom_xpos + 3 * ball_;
    double d[3];
    mju_sub3(d, ball, p.d->site_xpos + 3 * upper_bite_);
    double to_mouth = mju_norm3(d);
    mju_sub3(d, ball, p.d->site_xpos + 3 * lower_bite_);
    to_mouth = 0.5 * (to_mouth + mju_norm3(d));
    const double bite_radius = p.m->site_size[3 * upper_bite_];
    double reach_ball = Tolerance(to_mouth, 0, bite_radius, 2, Sigmoid::kReciprocal);
    reach_ball = (6 * reach_ball + 1) / 7;
    const double target_radius = p.m->geom_size[3 * target_];
    mju_sub3(d, ball, p.d->geom_xpos + 3 * target_);
    const double to_target = mju_norm3(d);
    const double near_target = Tolerance(to_target, 0, target_radius, p.m->geom_size[3 * floor_],
                                         Sigmoid::kReciprocal);
    if (to_target < 2 * target_radius) reach_ball = 1;
    return reach_ball * (near_target + 1) / 2;
  }
  void TorsoComVelocity(const Physics& p, double* out) const {
    mju_mulMatTVec3(out, p.d->xmat + 9 * torso_, p.d->sensordata + torso_linvel_);
  }
  double move_speed_;
  bool fetch_;
  int root_, torso_, pelvis_, skull_, torso_linvel_;
  int ball_qpos_ = -1, ball_dof_ = -1, ball_ = -1, target_ = -1, floor_ = -1, head_ = -1,
      upper_bite_ = -1, lower_bite_ = -1;
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
  // fetch: get_model_and_assets(floor_size=10, remove_ball=False).
  TaskDef fetch{"dog-fetch", "dog.xml", 0.015, 15.0, false,
                [](const Physics& p) -> std::unique_ptr<Task> { return std::make_unique<Dog>(p, 0.0, true); }};
  fetch.variant = "floor10-ball";
  fetch.edit = [](mjSpec* spec) { SetGeomSize(spec, "floor", 10, 10, 0.1); };
  defs.push_back(fetch);
}

}  // namespace mtrl::tasks
