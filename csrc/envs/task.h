// The Task interface: what a DeepMind Control task adds to its physics (one header per domain in
// tasks/), and TaskDef, the registry entry that says how to build and time it.
#pragma once

#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "envs/physics.h"
#include "common/rng.h"

namespace mtrl {

// Appends observation values (computed in double, stored as float32). With a null buffer it only
// counts, which is how an env learns its observation size.
class ObsWriter {
 public:
  ObsWriter(float* out, int capacity) : out_(out), capacity_(capacity) {}
  void Put(double v) {
    if (out_ != nullptr) {
      if (n_ >= capacity_) throw std::logic_error("task wrote more observations than it declared");
      out_[n_] = static_cast<float>(v);
    }
    ++n_;
  }
  void Put(const double* v, int k) {
    for (int i = 0; i < k; ++i) Put(v[i]);
  }
  int size() const { return n_; }

 private:
  float* out_;
  int capacity_;
  int n_ = 0;
};

// Hooks of one task instance (one per env: tasks may keep per-episode state).
// Thread-safety: an instance is used by one worker thread at a time.
class Task {
 public:
  virtual ~Task() = default;
  // dm_control Task.initialize_episode: called after Physics::Reset(); may set qpos/qvel, edit a
  // private model, or step the physics. The env runs ForwardWithoutActuation() afterwards.
  virtual void InitializeEpisode(Physics& p, Rng& rng) = 0;
  // dm_control Task.get_observation, flattened in dm_control's key order.
  virtual void Observe(const Physics& p, ObsWriter& out) const = 0;
  // dm_control Task.get_reward.
  virtual double Reward(const Physics& p) const = 0;
  // dm_control Task.get_termination returning 0 (a terminal state).
  virtual bool ShouldTerminate(const Physics& /*p*/) const { return false; }
  // Episode state kept outside mjData (model edits, targets), for checkpoints.
  virtual std::vector<double> EpisodeState(const Physics& /*p*/) const { return {}; }
  virtual void SetEpisodeState(Physics& /*p*/, const std::vector<double>& /*s*/) {}
};

// A registered task: "cheetah-run" built from dm_control/suite/cheetah.xml.
struct TaskDef {
  std::string name;         // "<domain>-<task>", dm_control's names
  std::string xml;          // file under the dm_control suite directory
  double control_timestep;  // seconds; 0: one physics step per control step
  double time_limit;        // seconds (dm_control _DEFAULT_TIME_LIMIT)
  bool mutates_model;       // InitializeEpisode edits the model: each env gets its own copy
  std::function<std::unique_ptr<Task>(const Physics&)> make;
  // Optional model edits applied to the parsed XML before compiling (dm_control's make_model
  // variants); `variant` names the edited model so tasks with the same edits share it.
  std::string variant = "";
  std::function<void(mjSpec*)> edit = nullptr;
};

}  // namespace mtrl
