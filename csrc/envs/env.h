// Env: one instance of a task (its mjData, task hooks, RNG and step counter), stepped with
// dm_control.rl.control.Environment's semantics and replay-friendly episode ends.
#pragma once

#include <mujoco/mujoco.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "envs/physics.h"
#include "common/rng.h"
#include "envs/task.h"

namespace mtrl {

// Per-env results of one step, written by Env::Step.
struct StepRow {
  float* obs;        // [obs_stride] observation to act on (reset obs where an episode ended)
  float* final_obs;  // [obs_stride] observation that followed the action
  float* reward;
  uint8_t* terminated;
  uint8_t* truncated;
  uint8_t* diverged;
};

// Checkpointable state of an env.
struct EnvState {
  std::vector<double> physics;  // mj_getState(mjSTATE_INTEGRATION)
  Rng::State rng;
  int64_t step_count;
  std::vector<double> task;  // Task::EpisodeState
};

class Env {
 public:
  // `shared_model` is used as is when the task neither edits its model nor needs a private one
  // for actuation-free forwards; otherwise the env copies it. `max_episode_steps` <= 0 keeps the
  // dm_control time limit. Throws std::runtime_error when MuJoCo cannot allocate.
  Env(const TaskDef& def, const mjModel* shared_model, uint64_t seed, int64_t max_episode_steps);
  ~Env();
  Env(const Env&) = delete;
  Env& operator=(const Env&) = delete;

  int obs_dim() const { return obs_dim_; }
  int action_dim() const { return model_->nu; }
  int n_sub_steps() const { return n_sub_steps_; }
  double step_limit() const { return step_limit_; }
  // Bytes this env holds beyond the shared model: its mjData (buffer and arena) and, where it
  // has one, its private model copy.
  uint64_t nbytes() const;

  // Starts a new episode; writes the first observation into obs[0, obs_stride) (zero-padded).
  void Reset(float* obs, int obs_stride);
  // Applies `action` ([action_dim] in [-1, 1], mapped onto the actuator ctrlrange), advances
  // n_sub_steps physics steps and writes one row of outputs. Never throws on diverged physics:
  // the env is reset and `diverged` and `truncated` are set.
  void Step(const float* action, const StepRow& row, int obs_stride);

  void Reseed(uint64_t seed) { rng_.Seed(seed); }
  EnvState GetState() const;
  // Throws std::invalid_argument when the state sizes do not match this env.
  void CheckState(const EnvState& state) const;
  // Assumes CheckState passed.
  void SetState(const EnvState& state);

 private:
  void Observe(float* obs, int obs_stride) const;
  bool PhysicsDiverged() const;
  void SilenceFirstWarnings();

  const TaskDef& def_;
  mjModel* model_;
  bool owns_model_;
  mjData* data_;
  Physics physics_;
  std::unique_ptr<Task> task_;
  Rng rng_;
  int n_sub_steps_;
  double step_limit_;
  int64_t step_count_ = 0;
  int obs_dim_ = 0;
  std::vector<double> ctrl_low_, ctrl_half_range_;  // empty: ctrlrange is [-1, 1]
  int warnings_[mjNWARNING] = {};
};

}  // namespace mtrl
