// Humanoid, ported from dm_control/suite/humanoid.py (tasks: stand, walk, run, run_pure_state).
#pragma once

#include "envs/rewards.h"
#include "envs/task.h"
#include "envs/tasks/common.h"

namespace mtrl::tasks {

class Humanoid : public Task {
 public:
  static constexpr double kStandHeight = 1.4;  // _STAND_HEIGHT, m (head height)

  Humanoid(const Physics& p, double move_speed, bool pure_state)
      : move_speed_(move_speed), pure_state_(pure_state), torso_(p.BodyId("torso")), head_(p.BodyId("head")),
        limbs_{p.BodyId("left_hand"), p.BodyId("left_foot"), p.BodyId("right_hand"), p.BodyId("right_foot")},
        com_vel_(p.SensorAdr("torso_subtreelinvel")) {}

  void InitializeEpisode(Physics& p, Rng& rng) override {
    do {  // random joint configuration without self-penetration
      RandomizeLimitedAndRotationalJoints(p, rng);
      p.ForwardWithoutActuation();
    } while (p.d->ncon > 0);
  }
  void Observe(const Physics& p, ObsWriter& out) const override {
    if (pure_state_) {
      out.Put(p.d->qpos, p.m->nq);
      out.Put(p.d->qvel, p.m->nv);
      return;
    }
    out.Put(p.d->qpos + 7, p.m->nq - 7);  // joint_angles
    out.Put(p.d->xpos[3 * head_ + 2]);    // head_height
    for (int limb : limbs_) {             // extremities: limb positions in the torso frame
      double rel[3], local[3];
      mju_sub3(rel, p.d->xpos + 3 * limb, p.d->xpos + 3 * torso_);
      mju_mulMatTVec3(local, p.d->xmat + 9 * torso_, rel);
      out.Put(local, 3);
    }
    out.Put(p.d->xmat + 9 * torso_ + 6, 3);  // torso_vertical: xmat['torso', ['zx', 'zy', 'zz']]
    out.Put(p.d->sensordata + com_vel_, 3);  // com_velocity
    out.Put(p.d->qvel, p.m->nv);             // velocity
  }
  double Reward(const Physics& p) const override {
    const double standing = Tolerance(p.d->xpos[3 * head_ + 2], kStandHeight, INFINITY, kStandHeight / 4);
    const double upright = Tolerance(XMat(p, torso_, 2, 2), 0.9, INFINITY, 1.9, Sigmoid::kLinear, 0.0);
    const double stand_reward = standing * upright;
    const double small_control = (4 + SmallControlMean(p)) / 5;
    const double* v = p.d->sensordata + com_vel_;
    if (move_speed_ == 0) {
      const double dont_move = (Tolerance(v[0], 0, 0, 2) + Tolerance(v[1], 0, 0, 2)) / 2;
      return small_control * stand_reward * dont_move;
    }
    const double speed = std::sqrt(v[0] * v[0] + v[1] * v[1]);
    double move = Tolerance(speed, move_speed_, INFINITY, move_speed_, Sigmoid::kLinear, 0.0);
    move = (5 * move + 1) / 6;
    return small_control * stand_reward * move;
  }

 private:
  double move_speed_;
  bool pure_state_;
  int torso_, head_, limbs_[4], com_vel_;
};

inline void AddHumanoidTasks(std::vector<TaskDef>& defs) {
  // _CONTROL_TIMESTEP = 0.025, _DEFAULT_TIME_LIMIT = 25; _WALK_SPEED 1, _RUN_SPEED 10.
  struct V { const char* task; double speed; bool pure; };
  for (V v : {V{"stand", 0, false}, V{"walk", 1, false}, V{"run", 10, false}, V{"run_pure_state", 10, true}}) {
    defs.push_back({std::string("humanoid-") + v.task, "humanoid.xml", 0.025, 25.0, false,
                    [v](const Physics& p) -> std::unique_ptr<Task> {
                      return std::make_unique<Humanoid>(p, v.speed, v.pure);
                    }});
  }
}

}  // namespace mtrl::tasks
