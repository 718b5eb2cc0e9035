// Implementation of Env (see env.h). Episode logic follows dm_control/rl/control.py
// Environment.reset/step: the time limit is checked before termination and ends the episode
// as a truncation (discount 1).
#include "envs/env.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

namespace mtrl {
namespace {

// dm_control.rl.control.compute_n_steps.
int ComputeNSteps(double control_timestep, double physics_timestep) {
  if (control_timestep <= 0) return 1;
  if (control_timestep < physics_timestep) {
    throw std::runtime_error("control timestep is smaller than the physics timestep");
  }
  const double n = control_timestep / physics_timestep;
  const double rounded = std::round(n);
  if (std::abs(n - rounded) > 1e-8) {
    throw std::runtime_error("control timestep is not a multiple of the physics timestep");
  }
  return static_cast<int>(rounded);
}

}  // namespace

Env::Env(const TaskDef& def, const mjModel* shared_model, uint64_t seed,
         int64_t max_episode_steps)
    : def_(def),
      model_(nullptr),
      owns_model_(def.mutates_model || !Physics::ActuationFreeAtZeroControl(shared_model)),
      data_(nullptr),
      physics_(nullptr, nullptr, false),
      rng_(seed) {
  model_ = owns_model_ ? mj_copyModel(nullptr, shared_model) : const_cast<mjModel*>(shared_model);
  if (model_ == nullptr) throw std::runtime_error("mj_copyModel failed for " + def.name);
  data_ = mj_makeData(model_);
  if (data_ == nullptr) {
    if (owns_model_) mj_deleteModel(model_);
    throw std::runtime_error("mj_makeData failed for " + def.name);
  }
  physics_ = Physics(model_, data_, owns_model_);
  task_ = def.make(physics_);
  n_sub_steps_ = ComputeNSteps(def.control_timestep, model_->opt.timestep);
  // dm_control: step_limit = time_limit / (timestep * n_sub_steps), compared as a float.
  step_limit_ = max_episode_steps > 0 ? static_cast<double>(max_episode_steps)
                                      : def.time_limit / (model_->opt.timestep * n_sub_steps_);
  for (int i = 0; i < model_->nu; ++i) {
    const double lo = model_->actuator_ctrlrange[2 * i], hi = model_->actuator_ctrlrange[2 * i + 1];
    if (model_->actuator_ctrllimited[i] && (lo != -1.0 || hi != 1.0)) {
      ctrl_low_.assign(model_->nu, -1.0);
      ctrl_half_range_.assign(model_->nu, 1.0);
      break;
    }
  }
  for (int i = 0; i < static_cast<int>(ctrl_low_.size()); ++i) {
    if (!model_->actuator_ctrllimited[i]) continue;
    ctrl_low_[i] = model_->actuator_ctrlrange[2 * i];
    ctrl_half_range_[i] = (model_->actuator_ctrlrange[2 * i + 1] - ctrl_low_[i]) / 2.0;
  }
  ObsWriter counter(nullptr, 0);
  task_->Observe(physics_, counter);
  obs_dim_ = counter.size();
}

Env::~Env() {
  mj_deleteData(data_);
  if (owns_model_) mj_deleteModel(model_);
}

void Env::SilenceFirstWarnings() {
  // mj_warning prints (through a process-wide handler) only when a warning's count is 0. Starting
  // every count at 2 keeps worker threads from printing or calling into Python's handler. A new
  // warning changes a count: it increments it, or, for the bad-state warnings, MuJoCo's auto-reset
  // zeroes all counts and sets that one to 1 (see PhysicsDiverged).
  for (int i = 0; i < mjNWARNING; ++i) {
    if (data_->warning[i].number < 2) data_->warning[i].number = 2;
    warnings_[i] = data_->warning[i].number;
  }
}

bool Env::PhysicsDiverged() const {
  for (int i = 0; i < mjNWARNING; ++i) {
    if (data_->warning[i].number != warnings_[i]) return true;
  }
  for (int i = 0; i < model_->nq; ++i) {
    if (!std::isfinite(data_->qpos[i])) return true;
  }
  for (int i = 0; i < model_->nv; ++i) {
    if (!std::isfinite(data_->qvel[i])) return true;
  }
  return false;
}

void Env::Observe(float* obs, int obs_stride) const {
  ObsWriter writer(obs, obs_dim_);
  task_->Observe(physics_, writer);
  std::memset(obs + obs_dim_, 0, sizeof(float) * (obs_stride - obs_dim_));
}

void Env::Reset(float* obs, int obs_stride) {
  physics_.Reset();
  SilenceFirstWarnings();
  task_->InitializeEpisode(physics_, rng_);
  physics_.ForwardWithoutActuation();
  SilenceFirstWarnings();
  step_count_ = 0;
  Observe(obs, obs_stride);
}

void Env::Step(const float* action, const StepRow& row, int obs_stride) {
  if (ctrl_low_.empty()) {
    for (int i = 0; i < model_->nu; ++i) data_->ctrl[i] = action[i];
  } else {
    for (int i = 0; i < model_->nu; ++i) {
      data_->ctrl[i] = ctrl_low_[i] + (static_cast<double>(action[i]) + 1.0) * ctrl_half_range_[i];
    }
  }
  physics_.Step(n_sub_steps_);
  ++step_count_;
  bool diverged = PhysicsDiverged();
  double reward = 0.0;
  if (!diverged) {
    reward = task_->Reward(physics_);
    Observe(row.final_obs, obs_stride);
    for (int i = 0; i < obs_dim_ && !diverged; ++i) diverged = !std::isfinite(row.final_obs[i]);
    diverged = diverged || !std::isfinite(reward);
  }
  if (diverged) {
    // The state is unusable: report a zero final observation and reward, cut the episode.
    std::memset(row.final_obs, 0, sizeof(float) * obs_stride);
    reward = 0.0;
  }
  const bool truncated = diverged || static_cast<double>(step_count_) >= step_limit_;
  const bool terminated = !truncated && task_->ShouldTerminate(physics_);
  *row.reward = static_cast<float>(reward);
  *row.terminated = terminated;
  *row.truncated = truncated;
  *row.diverged = diverged;
  if (terminated || truncated) {
    Reset(row.obs, obs_stride);
  } else {
    std::memcpy(row.obs, row.final_obs, sizeof(float) * obs_stride);
  }
}

EnvState Env::GetState() const {
  EnvState s;
  s.physics.resize(mj_stateSize(model_, mjSTATE_INTEGRATION));
  mj_getState(model_, data_, s.physics.data(), mjSTATE_INTEGRATION);
  s.rng = rng_.state();
  s.step_count = step_count_;
  s.task = task_->EpisodeState(physics_);
  return s;
}

uint64_t Env::nbytes() const {
  return static_cast<uint64_t>(data_->nbuffer) + data_->narena +
         (owns_model_ ? static_cast<uint64_t>(model_->nbuffer) : 0);
}

void Env::CheckState(const EnvState& s) const {
  const size_t n = mj_stateSize(model_, mjSTATE_INTEGRATION);
  if (s.physics.size() != n) {
    throw std::invalid_argument("physics state of " + def_.name + " must have " +
                                std::to_string(n) + " values, got " +
                                std::to_string(s.physics.size()));
  }
  // SetEpisodeState ignores a task state of another size, so it would be dropped silently; an
  // empty one keeps the current episode's task edits (mtrl/envs/fidelity.py relies on that).
  const size_t task_n = task_->EpisodeState(physics_).size();
  if (!s.task.empty() && s.task.size() != task_n) {
    throw std::invalid_argument("task state of " + def_.name + " must have " +
                                std::to_string(task_n) + " values (or none), got " +
                                std::to_string(s.task.size()));
  }
  // Bounded as make()'s max_episode_steps: near INT64_MAX the count's increment overflowed
  // (undefined behaviour; the time limit never fired).
  constexpr int64_t kMaxStepCount = int64_t{1} << 62;
  if (s.step_count < 0 || s.step_count > kMaxStepCount) {
    throw std::invalid_argument("step count of " + def_.name + " must be in [0, 2**62], got " +
                                std::to_string(s.step_count));
  }
  if (s.rng[0] == 0 && s.rng[1] == 0 && s.rng[2] == 0 && s.rng[3] == 0) {
    throw std::invalid_argument("RNG state of " + def_.name + " must not be all zeros");
  }
}

void Env::SetState(const EnvState& s) {
  mj_setState(model_, data_, s.physics.data(), mjSTATE_INTEGRATION);
  task_->SetEpisodeState(physics_, s.task);
  rng_.set_state(s.rng);
  step_count_ = s.step_count;
  // Baseline first: a restored state that MuJoCo flags as bad is reported by the next Step.
  SilenceFirstWarnings();
  // Recompute derived quantities as mj_step1 left them after the last step (legacy stepping).
  mj_step1(model_, data_);
}

}  // namespace mtrl
