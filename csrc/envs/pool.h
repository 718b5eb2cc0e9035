// EnvPool: N env instances of any mix of tasks, stepped together on an owned thread pool.
#pragma once

#include <mujoco/mujoco.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "envs/env.h"
#include "envs/thread_pool.h"

namespace mtrl {

// Thrown when the envs of a pool cannot fit in this machine's memory (-> mtrl.envs.EnvMemoryError).
class EnvMemoryError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class EnvPool {
 public:
  // `env_tasks`: the task name of each env ("cheetah-run"), `seeds`: each env's RNG seed,
  // `suite_dir`: the directory holding dm_control's suite XMLs. Each distinct task's XML is loaded
  // once and its model shared by that task's envs. `num_threads` >= 1.
  // Throws std::invalid_argument (unknown task, bad sizes), std::runtime_error (XML errors) or
  // EnvMemoryError (the envs would not fit in MemAvailable).
  EnvPool(const std::vector<std::string>& env_tasks, const std::vector<uint64_t>& seeds,
          const std::string& suite_dir,
          int num_threads, int64_t max_episode_steps);
  ~EnvPool();
  EnvPool(const EnvPool&) = delete;
  EnvPool& operator=(const EnvPool&) = delete;

  int num_envs() const { return static_cast<int>(envs_.size()); }
  int obs_dim() const { return obs_dim_; }
  int action_dim() const { return action_dim_; }
  const Env& env(int k) const { return *envs_[k]; }

  // Resets every env; obs is [N, obs_dim]. Thread-safety: one caller at a time (all methods).
  void ResetUnchecked(float* obs);
  // Steps every env with its row of actions [N, action_dim]; writes obs and final_obs
  // [N, obs_dim], reward [N], terminated/truncated/diverged [N]. Pointers are assumed valid.
  void StepUnchecked(const float* actions, float* obs, float* final_obs, float* reward,
                     uint8_t* terminated, uint8_t* truncated, uint8_t* diverged);
  // Reseeds env k with seeds[k] (takes effect at the next reset).
  void Seed(const std::vector<uint64_t>& seeds);

  std::vector<EnvState> GetState() const;
  void SetState(const std::vector<EnvState>& states);

 private:
  std::vector<mjModel*> models_;  // one per distinct task, owned
  std::vector<std::unique_ptr<Env>> envs_;
  // Recomputes owner_ when a fresh longest-processing-time-first split of the measured costs
  // beats the current split's predicted finishing time by kRebalanceGain; then lays out each
  // thread's envs by decreasing cost in jobs_/offsets_ (owners start with their costliest env,
  // thieves take the cheapest).
  void Schedule();
  int steps_since_schedule_ = 0;  // 0: schedule at the next step

  std::vector<double> cost_;  // moving average of each env's step time (seconds)
  std::vector<uint8_t> measured_;  // cost_[k] holds a measurement, not the initial guess
  std::vector<int> owner_;    // thread that steps env k (sticky: its data stays in that core's caches)
  std::vector<int> jobs_, offsets_;  // per-thread lists of envs handed to ThreadPool::Run
  int obs_dim_ = 0;
  int action_dim_ = 0;
  std::unique_ptr<ThreadPool> threads_;
};

}  // namespace mtrl
