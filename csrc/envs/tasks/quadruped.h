// Quadruped, ported from dm_control/suite/quadruped.py (tasks: walk, run, escape, fetch).
#pragma once

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "envs/rewards.h"
#include "envs/task.h"
#include "envs/tasks/common.h"
#include "envs/tasks/spec_edit.h"
#include "envs/tasks/spline_zoom.h"

namespace mtrl::tasks {

class Quadruped : public Task {
 public:
  enum class Kind { kMove, kEscape, kFetch };
  static constexpr double kTerrainSmoothness = 0.15;  // _TERRAIN_SMOOTHNESS
  static constexpr double kTerrainBumpScale = 2;      // _TERRAIN_BUMP_SCALE
  static constexpr double kEscapeUprightDeg = 20;     // Escape's upright deviation angle

  // kMove runs at desired_speed; kFetch needs the model with walls and ball; kEscape the model
  // with terrain and rangefinders.
  Quadruped(const Physics& p, double desired_speed, Kind kind = Kind::kMove)
      : desired_speed_(desired_speed), fetch_(kind == Kind::kFetch), escape_(kind == Kind::kEscape),
        root_(p.JointQposAdr("root")),
        root_dof_(p.JointDofAdr("root")), torso_(p.BodyId("torso")),
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
      if (type == mjSENS_RANGEFINDER) rangefinders_.push_back(sensor);
    }
    if (escape_) workspace_ = p.SiteId("workspace");
    if (fetch_) {
      ball_ = p.BodyId("ball");
      ball_geom_ = p.GeomId("ball");
      ball_qpos_ = p.JointQposAdr("ball_root");
      ball_dof_ = p.JointDofAdr("ball_root");
      floor_ = p.GeomId("floor");
      target_ = p.SiteId("target");
      workspace_ = p.SiteId("workspace");
    }
  }

  void InitializeEpisode(Physics& p, Rng& rng) override {
    double orientation[4];
    if (escape_) RandomizeTerrain(p, rng);
    if (!fetch_) {
      for (double& q : orientation) q = rng.Normal();
      mju_normalize4(orientation);
      FindNonContactingHeight(p, orientation, 0, 0);
      return;
    }
    // Fetch: random heading and position, then the ball dropped from 2 m with a random push.
    const double azimuth = rng.Uniform(0, 2 * M_PI);
    orientation[0] = std::cos(azimuth / 2);
    orientation[1] = orientation[2] = 0;
    orientation[3] = std::sin(azimuth / 2);
    const double spawn_radius = 0.9 * p.m->geom_size[3 * floor_];
    const double x = rng.Uniform(-spawn_radius, spawn_radius);
    const double y = rng.Uniform(-spawn_radius, spawn_radius);
    FindNonContactingHeight(p, orientation, x, y);
    p.d->qpos[ball_qpos_] = rng.Uniform(-spawn_radius, spawn_radius);
    p.d->qpos[ball_qpos_ + 1] = rng.Uniform(-spawn_radius, spawn_radius);
    p.d->qpos[ball_qpos_ + 2] = 2;
    p.d->qvel[ball_dof_] = 5 * rng.Normal();
    p.d->qvel[ball_dof_ + 1] = 5 * rng.Normal();
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
    const double* frame = p.d->xmat + 9 * torso_;
    if (escape_) {
      double origin[3];
      mju_mulMatTVec3(origin, frame, p.d->xpos + 3 * torso_);  // origin: -torso_pos . torso_frame
      for (double v : origin) out.Put(-v);
      for (const auto& s : rangefinders_) {  // rangefinder: 1 where nothing is hit, else tanh
        for (int i = 0; i < s.second; ++i) {
          const double r = p.d->sensordata[s.first + i];
          out.Put(r == -1.0 ? 1.0 : std::tanh(r));
        }
      }
    }
    if (!fetch_) return;
    double rel[3], local[3];
    mju_sub3(rel, p.d->xpos + 3 * ball_, p.d->xpos + 3 * torso_);  // ball_state: position,
    mju_mulMatTVec3(local, frame, rel);
    out.Put(local, 3);
    mju_sub3(rel, p.d->qvel + ball_dof_, p.d->qvel + root_dof_);  // linear velocity,
    mju_mulMatTVec3(local, frame, rel);
    out.Put(local, 3);
    mju_mulMatTVec3(local, frame, p.d->qvel + ball_dof_ + 3);  // angular velocity
    out.Put(local, 3);
    mju_sub3(rel, p.d->site_xpos + 3 * target_, p.d->xpos + 3 * torso_);  // target_position
    mju_mulMatTVec3(local, frame, rel);
    out.Put(local, 3);
  }
  double Reward(const Physics& p) const override {
    // _upright_reward(deviation_angle=0): cos(0) = 1.
    if (escape_) {
      const double deviation = std::cos(kEscapeUprightDeg * M_PI / 180.0);
      const double upright = Tolerance(XMat(p, torso_, 2, 2), deviation, INFINITY, 1 + deviation,
                                       Sigmoid::kLinear, 0.0);
      const double terrain_size = p.m->hfield_size[0];
      const double escape = Tolerance(mju_norm3(p.d->site_xpos + 3 * workspace_), terrain_size, INFINITY,
                                      terrain_size, Sigmoid::kLinear, 0.0);
      return upright * escape;
    }
    const double upright = Tolerance(XMat(p, torso_, 2, 2), 1, INFINITY, 2, Sigmoid::kLinear, 0.0);
    if (fetch_) return upright * ReachThenFetch(p);
    const double move = Tolerance(p.d->sensordata[velocimeter_], desired_speed_, INFINITY, desired_speed_,
                                  Sigmoid::kLinear, 0.5);
    return upright * move;
  }

  std::vector<double> EpisodeState(const Physics& p) const override {
    if (!escape_) return {};
    const float* h = p.m->hfield_data + p.m->hfield_adr[0];
    return {h, h + p.m->hfield_nrow[0] * p.m->hfield_ncol[0]};
  }
  void SetEpisodeState(Physics& p, const std::vector<double>& s) override {
    if (!escape_ || static_cast<int>(s.size()) != p.m->hfield_nrow[0] * p.m->hfield_ncol[0]) return;
    std::copy(s.begin(), s.end(), p.m->hfield_data + p.m->hfield_adr[0]);
  }

 private:
  // Escape.initialize_episode: a bowl times smoothed random bumps (scipy.ndimage.zoom, order 3).
  static void RandomizeTerrain(Physics& p, Rng& rng) {
    const int res = p.m->hfield_nrow[0];
    const double terrain_size = 2 * p.m->hfield_size[0];
    const int bump_res = static_cast<int>(terrain_size / kTerrainBumpScale);
    std::vector<double> bumps(static_cast<size_t>(bump_res) * bump_res);
    for (double& b : bumps) b = rng.Uniform(kTerrainSmoothness, 1);
    const std::vector<double> smooth = SplineZoom2D(bumps, bump_res, bump_res, res, res);
    float* h = p.m->hfield_data + p.m->hfield_adr[0];
    for (int r = 0; r < res; ++r) {
      for (int c = 0; c < res; ++c) {
        const double row = res > 1 ? -1 + 2.0 * r / (res - 1) : -1;  // np.ogrid[-1:1:res*1j]
        const double col = res > 1 ? -1 + 2.0 * c / (res - 1) : -1;
        const double radius = std::clamp(std::sqrt(col * col + row * row), 0.04, 1.0);
        const double bowl = 0.5 - std::cos(2 * M_PI * radius) / 2;
        h[r * res + c] = static_cast<float>(bowl * smooth[static_cast<size_t>(r) * res + c]);
      }
    }
  }

  // _find_non_contacting_height: raise the body in 1 cm steps until nothing touches.
  void FindNonContactingHeight(Physics& p, const double* orientation, double x, double y) const {
    double z = 0;
    for (int attempt = 0; attempt <= 10000; ++attempt) {
      p.Reset();
      p.d->qpos[root_] = x;
      p.d->qpos[root_ + 1] = y;
      p.d->qpos[root_ + 2] = z;
      mju_copy4(p.d->qpos + root_ + 3, orientation);
      p.ForwardWithoutActuation();
      if (p.d->ncon == 0) return;
      z += 0.01;
    }
    throw std::runtime_error("quadruped: failed to find a non-contacting configuration");
  }
  // Fetch.get_reward without the upright factor.
  double ReachThenFetch(const Physics& p) const {
    const double arena_radius = p.m->geom_size[3 * floor_] * std::sqrt(2.0);
    const double workspace_radius = p.m->site_size[3 * workspace_];
    const double ball_radius = p.m->geom_size[3 * ball_geom_];
    const double* ball = p.d->xpos + 3 * ball_;
    auto dist2d = [](const double* a, const double* b) { return std::hypot(a[0] - b[0], a[1] - b[1]); };
    const double reach = Tolerance(dist2d(p.d->site_xpos + 3 * workspace_, ball), 0,
                                   workspace_radius + ball_radius, arena_radius, Sigmoid::kLinear, 0.0);
    const double fetch = Tolerance(dist2d(p.d->site_xpos + 3 * target_, ball), 0,
                                   p.m->site_size[3 * target_], arena_radius, Sigmoid::kLinear, 0.0);
    return reach * (0.5 + 0.5 * fetch);
  }

  double desired_speed_;
  bool fetch_, escape_;
  int root_, root_dof_, torso_, velocimeter_;
  int ball_ = -1, ball_geom_ = -1, ball_qpos_ = -1, ball_dof_ = -1, floor_ = -1, target_ = -1,
      workspace_ = -1;
  std::vector<int> hinge_qpos_, hinge_dof_;
  std::vector<std::pair<int, int>> imu_, force_torque_, rangefinders_;  // (sensordata adr, dim)
};

// quadruped.make_model(floor_size, terrain, rangefinders, walls_and_ball); floor_size <= 0 keeps
// the XML's floor.
inline void EditQuadrupedModel(mjSpec* spec, double floor_size, bool terrain, bool rangefinders,
                               bool walls_and_ball) {
  if (floor_size > 0) SetGeomSize(spec, "floor", floor_size, floor_size, 0.5);
  if (!walls_and_ball) {
    for (const char* w : {"wall_px", "wall_py", "wall_nx", "wall_ny"}) Remove(spec, mjOBJ_GEOM, w);
    Remove(spec, mjOBJ_BODY, "ball");
    Remove(spec, mjOBJ_SITE, "target");
  }
  if (!terrain) Remove(spec, mjOBJ_GEOM, "terrain");
  if (rangefinders) return;
  std::vector<mjsElement*> rangefinders_found;
  for (mjsElement* el = mjs_firstElement(spec, mjOBJ_SENSOR); el; el = mjs_nextElement(spec, el)) {
    if (mjs_asSensor(el)->type == mjSENS_RANGEFINDER) rangefinders_found.push_back(el);
  }
  for (mjsElement* el : rangefinders_found) mjs_delete(spec, el);
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
    def.edit = [speed = speed](mjSpec* spec) { EditQuadrupedModel(spec, 20.0 * speed, false, false, false); };
    defs.push_back(def);
  }
  TaskDef escape{"quadruped-escape", "quadruped.xml", 0.02, 20.0, true,
                 [](const Physics& p) -> std::unique_ptr<Task> {
                   return std::make_unique<Quadruped>(p, 0.0, Quadruped::Kind::kEscape);
                 }};
  escape.variant = "escape";
  escape.edit = [](mjSpec* spec) { EditQuadrupedModel(spec, 40.0, true, true, false); };
  defs.push_back(escape);
  TaskDef fetch{"quadruped-fetch", "quadruped.xml", 0.02, 20.0, false,
                [](const Physics& p) -> std::unique_ptr<Task> {
                  return std::make_unique<Quadruped>(p, 0.0, Quadruped::Kind::kFetch);
                }};
  fetch.variant = "fetch";
  fetch.edit = [](mjSpec* spec) { EditQuadrupedModel(spec, 0.0, false, false, true); };
  defs.push_back(fetch);
}

}  // namespace mtrl::tasks
