// Implementation of EnvPool (see pool.h).
#include "envs/pool.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <numeric>
#include <stdexcept>

#include "envs/registry.h"
#include "replay/memory.h"  // CheckFitsInMemory (MemAvailable), shared with the replay buffer

namespace mtrl {
namespace {

// A new split of envs over threads replaces the current one only when its predicted step time is
// this much shorter: small cost fluctuations must not move envs between cores every step.
constexpr double kRebalanceGain = 0.05;
// Steps between two looks at the split (and re-sorts of the per-thread lists): costs drift slowly.
constexpr int kScheduleEvery = 8;
// A step time above this multiple of an env's average (the thread was preempted on a busy
// machine) enters the average at that multiple, so one preemption does not move envs around.
constexpr double kCostClamp = 3.0;

// Longest-processing-time-first: envs by decreasing cost, each to the least-loaded thread.
std::vector<int> SplitByCost(const std::vector<double>& cost, int threads) {
  std::vector<int> order(cost.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return cost[a] > cost[b]; });
  std::vector<double> load(threads, 0.0);
  std::vector<int> owner(cost.size(), 0);
  for (int k : order) {
    const int t = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    owner[k] = t;
    load[t] += cost[k];
  }
  return owner;
}

double Makespan(const std::vector<double>& cost, const std::vector<int>& owner, int threads) {
  std::vector<double> load(threads, 0.0);
  for (size_t k = 0; k < cost.size(); ++k) load[owner[k]] += cost[k];
  return *std::max_element(load.begin(), load.end());
}

// The engine never renders: every texture becomes a 1x1 flat colour. dm_control's skybox alone is
// 800x800x6 RGB (11.5 MB in every model, generated with random marks at each load); physics
// reads no texture data, so observations and rewards are unchanged (the fidelity tests compare
// them against dm_control's full models).
void DropTextures(mjSpec* spec) {
  for (mjsElement* el = mjs_firstElement(spec, mjOBJ_TEXTURE); el != nullptr;
       el = mjs_nextElement(spec, el)) {
    mjsTexture* t = mjs_asTexture(el);
    t->builtin = mjBUILTIN_FLAT;
    t->mark = mjMARK_NONE;
    t->width = 1;
    t->height = 1;
    t->gridsize[0] = t->gridsize[1] = 1;
    mjs_setString(t->file, "");
    mjs_setStringVec(t->cubefiles, "");
  }
}

// Loads def.xml from the suite directory (its <include>s and assets resolve relative to it),
// applying def.edit to the parsed spec when the task uses an edited model, without textures.
mjModel* LoadModel(const TaskDef& def, const std::string& suite_dir) {
  const std::string path = suite_dir + "/" + def.xml;
  char error[1024] = "";
  mjSpec* spec = mj_parseXML(path.c_str(), nullptr, error, sizeof(error));
  if (spec == nullptr) throw std::runtime_error("cannot load MuJoCo model " + path + ": " + error);
  try {
    if (def.edit) def.edit(spec);
    DropTextures(spec);
  } catch (...) {
    mj_deleteSpec(spec);
    throw;
  }
  mjModel* m = mj_compile(spec, nullptr);
  const std::string compile_error = m == nullptr ? mjs_getError(spec) : "";
  mj_deleteSpec(spec);
  if (m == nullptr) {
    throw std::runtime_error("cannot compile model " + path +
                             (def.variant.empty() ? "" : " (" + def.variant + ")") + ": " +
                             compile_error);
  }
  return m;
}

}  // namespace

EnvPool::EnvPool(const std::vector<std::string>& env_tasks, const std::vector<uint64_t>& seeds,
                 const std::string& suite_dir, int num_threads, int64_t max_episode_steps) {
  if (env_tasks.empty()) throw std::invalid_argument("the pool needs at least one env");
  if (seeds.size() != env_tasks.size()) {
    throw std::invalid_argument("seeds must have one entry per env (" +
                                std::to_string(env_tasks.size()) + "), got " +
                                std::to_string(seeds.size()));
  }
  if (num_threads < 1) {
    throw std::invalid_argument("num_threads must be >= 1, got " + std::to_string(num_threads));
  }
  Physics::InstallTimerHook();
  std::map<std::string, mjModel*> loaded;
  std::map<std::string, int64_t> envs_of_task;
  for (const std::string& name : env_tasks) ++envs_of_task[name];
  // From the first env of each task, the bytes of all its envs: a pool that cannot fit is a
  // EnvMemoryError before the rest are built, not minutes of allocation and the OOM killer.
  uint64_t planned = 0;
  try {
    for (size_t k = 0; k < env_tasks.size(); ++k) {
      const TaskDef& def = FindTask(env_tasks[k]);
      const std::string key = def.xml + "#" + def.variant;
      auto it = loaded.find(key);
      if (it == loaded.end()) {
        models_.push_back(LoadModel(def, suite_dir));
        it = loaded.emplace(key, models_.back()).first;
      }
      envs_.push_back(std::make_unique<Env>(def, it->second, seeds[k], max_episode_steps));
      auto count = envs_of_task.find(env_tasks[k]);
      if (count->second > 0) {  // the first env of this task
        planned += envs_.back()->nbytes() * static_cast<uint64_t>(count->second);
        count->second = 0;
        CheckFitsInMemory<EnvMemoryError>(
            planned, "the env pool (" + std::to_string(env_tasks.size()) + " envs)");
      }
      obs_dim_ = std::max(obs_dim_, envs_.back()->obs_dim());
      action_dim_ = std::max(action_dim_, envs_.back()->action_dim());
    }
  } catch (...) {
    envs_.clear();
    for (mjModel* m : models_) mj_deleteModel(m);
    throw;
  }
  cost_.resize(envs_.size());
  measured_.assign(envs_.size(), 0);
  for (size_t k = 0; k < envs_.size(); ++k) {
    // Initial guess until measured: physics steps per control step times model size.
    const Env& e = *envs_[k];
    cost_[k] = 1e-9 * e.n_sub_steps() * (1 + e.action_dim());
  }
  threads_ = std::make_unique<ThreadPool>(std::min<int>(num_threads, envs_.size()));
  owner_ = SplitByCost(cost_, threads_->num_threads());
}

EnvPool::~EnvPool() {
  ThreadPool::Abandon(std::move(threads_));  // join the workers before the envs go
  envs_.clear();
  for (mjModel* m : models_) mj_deleteModel(m);
}

void EnvPool::ResetUnchecked(float* obs) {
  threads_->Run(num_envs(), [&](int k) {
    Physics::TimerOff timer_off;
    envs_[k]->Reset(obs + size_t(k) * obs_dim_, obs_dim_);
  });
}

void EnvPool::Schedule() {
  if (steps_since_schedule_ > 0 && steps_since_schedule_ < kScheduleEvery) {
    ++steps_since_schedule_;
    return;
  }
  steps_since_schedule_ = 1;
  const int threads = threads_->num_threads();
  if (threads > 1) {
    std::vector<int> split = SplitByCost(cost_, threads);
    if (Makespan(cost_, split, threads) < (1.0 - kRebalanceGain) * Makespan(cost_, owner_, threads)) {
      owner_ = std::move(split);
    }
  }
  jobs_.resize(envs_.size());
  std::iota(jobs_.begin(), jobs_.end(), 0);
  std::stable_sort(jobs_.begin(), jobs_.end(), [&](int a, int b) {
    return owner_[a] != owner_[b] ? owner_[a] < owner_[b] : cost_[a] > cost_[b];
  });
  offsets_.assign(threads + 1, 0);
  for (int k : jobs_) ++offsets_[owner_[k] + 1];
  for (int t = 0; t < threads; ++t) offsets_[t + 1] += offsets_[t];
}

void EnvPool::StepUnchecked(const float* actions, float* obs, float* final_obs, float* reward,
                            uint8_t* terminated, uint8_t* truncated, uint8_t* diverged) {
  Schedule();
  threads_->Run(jobs_, offsets_, [&](int k) {
    Physics::TimerOff timer_off;
    const auto start = std::chrono::steady_clock::now();
    const size_t o = size_t(k) * obs_dim_;
    StepRow row{obs + o, final_obs + o, reward + k, terminated + k, truncated + k, diverged + k};
    envs_[k]->Step(actions + size_t(k) * action_dim_, row, obs_dim_);
    const double dt =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    // Only env k's job writes cost_[k] and measured_[k]; the first measurement replaces the guess.
    cost_[k] = measured_[k] ? 0.9 * cost_[k] + 0.1 * std::min(dt, kCostClamp * cost_[k]) : dt;
    measured_[k] = 1;
  });
}

void EnvPool::Seed(const std::vector<uint64_t>& seeds) {
  if (seeds.size() != envs_.size()) {
    throw std::invalid_argument("seeds must have one entry per env (" +
                                std::to_string(envs_.size()) + "), got " +
                                std::to_string(seeds.size()));
  }
  for (size_t k = 0; k < envs_.size(); ++k) envs_[k]->Reseed(seeds[k]);
}

std::vector<EnvState> EnvPool::GetState() const {
  std::vector<EnvState> states;
  for (const auto& e : envs_) states.push_back(e->GetState());
  return states;
}

void EnvPool::SetState(const std::vector<EnvState>& states) {
  if (states.size() != envs_.size()) {
    throw std::invalid_argument("state holds " + std::to_string(states.size()) +
                                " envs, the pool has " + std::to_string(envs_.size()));
  }
  for (size_t k = 0; k < envs_.size(); ++k) envs_[k]->CheckState(states[k]);  // all or nothing
  for (size_t k = 0; k < envs_.size(); ++k) envs_[k]->SetState(states[k]);
}

}  // namespace mtrl
