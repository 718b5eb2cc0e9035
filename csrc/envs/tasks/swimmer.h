// Swimmer, ported from dm_control/suite/swimmer.py (tasks: swimmer6, swimmer15). The n-link model
// is built like swimmer._make_model: segments appended to the head body of swimmer.xml.
#pragma once

#include <string>

#include "envs/rewards.h"
#include "envs/task.h"
#include "envs/tasks/common.h"
#include "envs/tasks/spec_edit.h"

namespace mtrl::tasks {

class Swimmer : public Task {
 public:
  explicit Swimmer(const Physics& p)
      : target_(p.GeomId("target")), nose_(p.GeomId("nose")), head_(p.BodyId("head")) {}

  void InitializeEpisode(Physics& p, Rng& rng) override {
    RandomizeLimitedAndRotationalJoints(p, rng);
    const bool close_target = rng.Uniform() < 0.2;
    const double target_box = close_target ? 0.3 : 2;
    p.m->geom_pos[3 * target_] = rng.Uniform(-target_box, target_box);
    p.m->geom_pos[3 * target_ + 1] = rng.Uniform(-target_box, target_box);
  }
  void Observe(const Physics& p, ObsWriter& out) const override {
    out.Put(p.d->qpos + 3, p.m->nq - 3);  // joints
    double to_target[3];
    NoseToTarget(p, to_target);
    out.Put(to_target, 2);  // to_target
    // body_velocities: per segment sensor pair (velocimeter, gyro) -> (vx, vy, wz).
    for (int i = 12; i + 6 <= p.m->nsensordata; i += 6) {
      out.Put(p.d->sensordata[i]);
      out.Put(p.d->sensordata[i + 1]);
      out.Put(p.d->sensordata[i + 5]);
    }
  }
  double Reward(const Physics& p) const override {
    const double target_size = p.m->geom_size[3 * target_];
    double v[3];
    NoseToTarget(p, v);
    return Tolerance(std::sqrt(v[0] * v[0] + v[1] * v[1]), 0, target_size, 5 * target_size,
                     Sigmoid::kLongTail);
  }
  std::vector<double> EpisodeState(const Physics& p) const override {
    return {p.m->geom_pos[3 * target_], p.m->geom_pos[3 * target_ + 1]};
  }
  void SetEpisodeState(Physics& p, const std::vector<double>& s) override {
    if (s.size() == 2) {
      p.m->geom_pos[3 * target_] = s[0];
      p.m->geom_pos[3 * target_ + 1] = s[1];
    }
  }

 private:
  void NoseToTarget(const Physics& p, double* out) const {
    double rel[3];
    mju_sub3(rel, p.d->geom_xpos + 3 * target_, p.d->geom_xpos + 3 * nose_);
    mju_mulMatTVec3(out, p.d->xmat + 9 * head_, rel);
  }
  int target_, nose_, head_;
};

// swimmer._make_model(n_bodies): a chain of n_bodies - 1 segments below the head, each with a
// visual and an inertial geom, a site, a limited hinge, a motor, a velocimeter and a gyro.
inline void EditSwimmerModel(mjSpec* spec, int n_bodies) {
  mjsBody* parent = mjs_findBody(spec, "head");
  mjsDefault* swimmer = mjs_findDefault(spec, "swimmer");
  mjsDefault* visual = mjs_findDefault(spec, "visual");
  mjsDefault* inertial = mjs_findDefault(spec, "inertial");
  mjsDefault* main = mjs_findDefault(spec, "main");
  if (!parent || !swimmer || !visual || !inertial || !main) {
    throw std::runtime_error("model edit: swimmer.xml lacks the head body or default classes");
  }
  const double joint_limit = 360.0 / n_bodies;
  for (int i = 0; i < n_bodies - 1; ++i) {
    const std::string k = std::to_string(i);
    mjsBody* child = mjs_addBody(parent, swimmer);
    mjs_setName(child->element, ("segment_" + k).c_str());
    mjs_setString(child->childclass, "swimmer");
    child->pos[0] = 0;
    child->pos[1] = 0.1;
    child->pos[2] = 0;
    mjs_setName(mjs_addGeom(child, visual)->element, ("visual_" + k).c_str());
    mjs_setName(mjs_addGeom(child, inertial)->element, ("inertial_" + k).c_str());
    mjs_setName(mjs_addSite(child, swimmer)->element, ("site_" + k).c_str());
    mjsJoint* joint = mjs_addJoint(child, swimmer);
    mjs_setName(joint->element, ("joint_" + k).c_str());
    joint->range[0] = -joint_limit;
    joint->range[1] = joint_limit;
    mjsActuator* motor = mjs_addActuator(spec, main);
    mjs_setName(motor->element, ("motor_" + k).c_str());
    motor->trntype = mjTRN_JOINT;
    mjs_setString(motor->target, ("joint_" + k).c_str());
    for (auto [type, name] : {std::pair{mjSENS_VELOCIMETER, "velocimeter_"}, {mjSENS_GYRO, "gyro_"}}) {
      mjsSensor* sensor = mjs_addSensor(spec);
      mjs_setName(sensor->element, (name + k).c_str());
      sensor->type = type;
      sensor->objtype = mjOBJ_SITE;
      mjs_setString(sensor->objname, ("site_" + k).c_str());
    }
    parent = child;
  }
}

inline void AddSwimmerTasks(std::vector<TaskDef>& defs) {
  // _CONTROL_TIMESTEP = 0.03, _DEFAULT_TIME_LIMIT = 30.
  for (int n : {6, 15}) {
    TaskDef def{"swimmer-swimmer" + std::to_string(n), "swimmer.xml", 0.03, 30.0, true,
                [](const Physics& p) -> std::unique_ptr<Task> { return std::make_unique<Swimmer>(p); }};
    def.variant = "links" + std::to_string(n);
    def.edit = [n](mjSpec* spec) { EditSwimmerModel(spec, n); };
    defs.push_back(def);
  }
}

}  // namespace mtrl::tasks
