// Quadruped, ported from dm_control/suite/quadruped.py (tasks: walk, run; escape and fetch are
// not ported).
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include "envs/rewards.h"
#include "envs/task.h"
#include "envs/tasks/common.h"
#include "envs/tasks/spec_edit.h"

namespace mtrl::tasks {

class Quadruped : public Task {
 public:
  explicit Quadruped(const Physics& p, double desired_speed)
      : desired_speed_(desired_speed), root_(p.JointQposAdr("root")), torso_(p.BodyId("torso")),
        velocimeter_(p.SensorAdr("velocimeter")) {
    for (int j = 0; j < p.m->njnt; ++j) {
      if (p.m->jnt_type[j] == mjJNT_HINGE) {
        hinge_qpos_.push_back(p.m->jnt_qposadr[j]);
        hinge_dof_.push_back(p.m->jnt_dofadr[j]);
      }
    }
    for (int s = 0; s < p.m->nsensor; ++s) {  // sensors by type, in id order (_get_sensor_names)
      const int type = p.m->sensor_type[s];
      std::pair<int, int> sensor{p.m->sensor_adr[s], p.m->sensor_dim[s]};
      if (type == mjSENS_GYRO || type == mjSENS_ACCELEROMETER) imu_.push_back(sensor);
      if (type == mjSENS_FORCE || type == mjSENS_TORQUE) force_torque_.push_back(sensor);
    }
  }

  void InitializeEpisode(Physics& p, Rng& rng) override {
    double orientation[4];
    for (double& q : orientation) q = rng.Normal();
    mju_normalize4(orientation);
    // _find_non_contacting_height: raise the body in 1 cm steps until nothing touches.
    double z = 0;
    for (int attempt = 0; attempt <= 10000; ++attempt) {
      p.Reset();
      p.d->qpos[root_] = 0;
      p.d->qpos[root_ + 1] = 0;
      p.d->qpos[root_ + 2] = z;
      mju_copy4(p.d->qpos + root_ + 3, orientation);
      p.ForwardWithoutActuation();
      if (p.d->ncon == 0) return;
      z += 0.01;
    }
    throw std::runtime_error("quadruped: failed to find a non-contacting configuration");
  }
  void Observe(const Physics& p, ObsWriter& out) const override {
    for (int a : hinge_qpos_) out.Put(p.d->qpos[a]);  // egocentric_state
    for (int a : hinge_dof_) out.Put(p.d->qvel[a]);
    out.Put(p.d->act, p.m->na);
    out.Put(p.d->sensordata + velocimeter_, 3);  // torso_velocity
    out.Put(XMat(p, torso_, 2, 2));              // torso_upright
    for (const auto& s : imu_) out.Put(p.d->sensordata + s.first, s.second);  // imu
    for (const auto& s : force_torque_) {                                      // force_torque
      for (int i = 0; i < s.second; ++i) out.Put(std::asinh(p.d->sensordata[s.first + i]));
    }
  }
  double Reward(const Physics& p) const override {
    // _upright_reward(deviation_angle=0): cos(0) = 1.
    const double upright = Tolerance(XMat(p, torso_, 2, 2), 1, INFINITY, 2, Sigmoid::kLinear, 0.0);
    const double move = Tolerance(p.d->sensordata[velocimeter_], desired_speed_, INFINITY, desired_speed_,
                                  Sigmoid::kLinear, 0.5);
    return upright * move;
  }

 private:
  double desired_speed_;
  int root_, torso_, velocimeter_;
  std::vector<int> hinge_qpos_, hinge_dof_;
  std::vector<std::pair<int, int>> imu_, force_torque_;  // (sensordata address, dim)
};

// quadruped.make_model(floor_size) with no terrain, rangefinders, walls or ball.
inline void EditQuadrupedMoveModel(mjSpec* spec, double floor_size) {
  SetGeomSize(spec, "floor", floor_size, floor_size, 0.5);
  for (const char* w : {"wall_px", "wall_py", "wall_nx", "wall_ny"}) Remove(spec, mjOBJ_GEOM, w);
  Remove(spec, mjOBJ_BODY, "ball");
  Remove(spec, mjOBJ_SITE, "target");
  Remove(spec, mjOBJ_GEOM, "terrain");
  std::vector<mjsElement*> rangefinders;
  for (mjsElement* el = mjs_firstElement(spec, mjOBJ_SENSOR); el; el = mjs_nextElement(spec, el)) {
    if (mjs_asSensor(el)->type == mjSENS_RANGEFINDER) rangefinders.push_back(el);
  }
  for (mjsElement* el : rangefinders) mjs_delete(spec, el);
}

inline void AddQuadrupedTasks(std::vector<TaskDef>& defs) {
  // _CONTROL_TIMESTEP = 0.02, _DEFAULT_TIME_LIMIT = 20; _WALK_SPEED 0.5, _RUN_SPEED 5;
  // floor size = time limit * speed.
  for (auto [task, speed] : {std::pair{"walk", 0.5}, {"run", 5.0}}) {
    TaskDef def{std::string("quadruped-") + task, "quadruped.xml", 0.02, 20.0, false,
                [speed = speed](const Physics& p) -> std::unique_ptr<Task> {
                  return std::make_unique<Quadruped>(p, speed);
                }};
    def.variant = std::string("move-") + task;
    def.edit = [speed = speed](mjSpec* spec) { EditQuadrupedMoveModel(spec, 20.0 * speed); };
    defs.push_back(def);
  }
}

}  // namespace mtrl::tasks
