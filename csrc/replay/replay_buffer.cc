// Construction, insertion and priority updates of the replay buffer.
#include "replay/replay_buffer.h"

#include <pthread.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <unordered_set>

namespace mtrl {
namespace {

// %g, not std::to_string's %f (which prints 1e308 as a 309-digit number).
std::string Num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

void CheckRange(const char* name, int64_t value, int64_t lo, int64_t hi) {
  if (value < lo || value > hi) {
    throw std::invalid_argument(std::string("`") + name + "` must be in [" + std::to_string(lo) +
                                ", " + std::to_string(hi) + "], got " + std::to_string(value));
  }
}

// p^alpha for p >= 0 as exp(alpha * log p): glibc's pow takes a slow path for p near 1, which
// is where most priorities are (about 4x slower here); the error stays within a few ulp.
double PowAlpha(double p, double alpha) {
  if (alpha == 0.0) return 1.0;
  if (alpha == 1.0) return p;
  if (p == 0.0) return 0.0;
  return std::exp(alpha * std::log(p));
}

bool NonFiniteBits(uint32_t bits) { return (bits & 0x7f800000u) == 0x7f800000u; }

// Index of the first NaN/inf among p[0..n), or -1. Tests the exponent bits (so it holds under
// any floating-point flags); the first pass is a branch-free OR reduction that the compiler
// vectorises (all-ones lanes, unrolled: ~1.6x faster than OR-ing 0/1 here), and only an array
// that fails it is scanned again for the position.
int64_t FirstNonFinite(const float* p, int64_t n) {
  uint32_t bad = 0;
#pragma GCC unroll 4
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, p + i, sizeof(bits));
    bad |= NonFiniteBits(bits) ? ~0u : 0u;
  }
  if (bad == 0) return -1;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, p + i, sizeof(bits));
    if (NonFiniteBits(bits)) return i;
  }
  return -1;
}

// Throws std::invalid_argument naming the first non-finite entry of a (rows, cols) field, e.g.
// "obs[3, 5] = inf is not finite (env 3)" or "reward[3] = nan is not finite".
void CheckFinite(const char* name, const float* p, int64_t rows, int64_t cols, bool matrix) {
  const int64_t i = FirstNonFinite(p, rows * cols);
  if (i < 0) return;
  uint32_t bits;
  std::memcpy(&bits, p + i, sizeof(bits));
  const char* value = (bits & 0x007fffffu) != 0 ? "nan" : (bits >> 31 ? "-inf" : "inf");
  const std::string row = std::to_string(i / cols);
  throw std::invalid_argument(
      std::string(name) + "[" + row + (matrix ? ", " + std::to_string(i % cols) : "") + "] = " +
      value + " is not finite" + (matrix ? " (env " + row + ")" : ""));
}

}  // namespace

void ReplayConfig::Validate() const {
  CheckRange("num_tasks", num_tasks, 1, int64_t{1} << 20);
  CheckRange("capacity_per_task", capacity_per_task, 1, int64_t{1} << 36);
  CheckRange("obs_dim", obs_dim, 1, int64_t{1} << 24);
  CheckRange("action_dim", action_dim, 1, int64_t{1} << 24);
  CheckRange("num_envs", num_envs, 1, ReplayBuffer::kMaxEnvs);
  if (!std::isfinite(alpha) || alpha < 0.0) {
    throw std::invalid_argument("`alpha` must be finite and >= 0, got " + std::to_string(alpha));
  }
  // Guard every product used for sizes against overflow (2^62 bytes is far beyond any machine).
  const double rows = static_cast<double>(num_tasks) * static_cast<double>(capacity_per_task);
  const double row_bytes = 4.0 * static_cast<double>(obs_dim + action_dim) + 32.0;
  if (rows > 0x1.0p40 || rows * row_bytes > 0x1.0p62) {
    throw std::invalid_argument("num_tasks * capacity_per_task (" + std::to_string(rows) +
                                " transitions) is too large");
  }
}

int64_t ReplayBuffer::RecordBytes(int64_t action_dim) {
  const int64_t bytes = static_cast<int64_t>(sizeof(Slot)) + action_dim * 4;
  return bytes <= 64 ? 64 : (bytes + 15) / 16 * 16;
}

uint64_t ReplayBuffer::EstimateBytes(const ReplayConfig& c) {
  c.Validate();
  const uint64_t rows = static_cast<uint64_t>(c.num_tasks) * c.capacity_per_task;
  return rows * (c.obs_dim * sizeof(float) + RecordBytes(c.action_dim)) +
         PriorityTrees::Bytes(c.num_tasks, c.capacity_per_task) +
         static_cast<uint64_t>(c.num_envs) * (c.obs_dim * sizeof(float) + sizeof(int64_t)) +
         static_cast<uint64_t>(c.num_tasks) * 2 * sizeof(int64_t);
}

namespace {

// Every live buffer's mutex, so that fork() never copies one locked by another thread (the
// child, which has only the forking thread, would wait on it forever): the prepare handler takes
// them all (waiting for a running call to finish), the parent and child handlers release them.
// No thread takes the registry lock while it holds a buffer's lock, so this cannot deadlock.
std::mutex& ForkRegistryLock() {
  static std::mutex* lock = new std::mutex;  // never destroyed: fork may run during exit
  return *lock;
}
std::unordered_set<std::mutex*>& ForkRegistry() {
  static auto* registry = new std::unordered_set<std::mutex*>;
  return *registry;
}
void LockAllForFork() {
  ForkRegistryLock().lock();
  for (std::mutex* m : ForkRegistry()) m->lock();
}
void UnlockAllAfterFork() {
  for (std::mutex* m : ForkRegistry()) m->unlock();
  ForkRegistryLock().unlock();
}

void RegisterForFork(std::mutex* m) {
  static std::once_flag installed;
  std::call_once(installed, [] {
    if (pthread_atfork(LockAllForFork, UnlockAllAfterFork, UnlockAllAfterFork) != 0) {
      throw std::runtime_error("pthread_atfork failed");
    }
  });
  std::lock_guard<std::mutex> lock(ForkRegistryLock());
  ForkRegistry().insert(m);
}

}  // namespace

ReplayBuffer::ReplayBuffer(const ReplayConfig& config) : config_(config) {
  CheckFitsInMemory(EstimateBytes(config_), "the replay buffer");
  total_slots_ = config_.num_tasks * config_.capacity_per_task;
  record_bytes_ = RecordBytes(config_.action_dim);
  s_ = MakeStorage();
  s_.rng.Seed(config_.seed);
  touched_.assign(config_.num_tasks, 0);
  RegisterForFork(&mu_);
}

ReplayBuffer::~ReplayBuffer() {
  std::lock_guard<std::mutex> lock(ForkRegistryLock());
  ForkRegistry().erase(&mu_);
}

ReplayBuffer::Storage ReplayBuffer::MakeStorage() const {
  const ReplayConfig& c = config_;
  Storage s;
  s.obs = PageBuffer(static_cast<size_t>(total_slots_ * c.obs_dim) * sizeof(float));
  s.records = PageBuffer(static_cast<size_t>(total_slots_ * record_bytes_));
  s.pending_obs.assign(c.num_envs * c.obs_dim, 0.0f);
  s.last_slot.assign(c.num_envs, -1);
  s.finals = FinalObsPool(c.obs_dim);
  s.trees = PriorityTrees(c.num_tasks, c.capacity_per_task);
  s.size.assign(c.num_tasks, 0);
  s.position.assign(c.num_tasks, 0);
  return s;
}

uint64_t ReplayBuffer::nbytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return s_.obs.nbytes() + s_.records.nbytes() +
         PriorityTrees::Bytes(config_.num_tasks, config_.capacity_per_task) +
         s_.pending_obs.size() * sizeof(float) + s_.last_slot.size() * sizeof(int64_t) +
         s_.finals.nbytes() + 2 * s_.size.size() * sizeof(int64_t);
}

int64_t ReplayBuffer::Size(int64_t task) const {
  if (task < 0 || task >= config_.num_tasks) {
    throw std::out_of_range("task " + std::to_string(task) + " is out of range [0, " +
                            std::to_string(config_.num_tasks) + ")");
  }
  std::lock_guard<std::mutex> lock(mu_);
  return s_.size[task];
}

int64_t ReplayBuffer::TotalSize() const {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t total = 0;
  for (int64_t n : s_.size) total += n;
  return total;
}

std::vector<int64_t> ReplayBuffer::Sizes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return s_.size;
}

double ReplayBuffer::max_priority() const {
  std::lock_guard<std::mutex> lock(mu_);
  return s_.max_priority;
}

int64_t ReplayBuffer::final_rows_in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return s_.finals.used();
}

void ReplayBuffer::Evict(int64_t g) {
  const Slot& slot = SlotAt(g);
  if (slot.next <= -2) {
    s_.finals.Free(-2 - slot.next);
  } else if (slot.next == kPending) {
    const int64_t env = slot.env_flags >> 8;
    if (s_.last_slot[env] == g) s_.last_slot[env] = -1;
  }
}

void ReplayBuffer::Add(const StepView& step) {
  const ReplayConfig& c = config_;
  for (int64_t k = 0; k < c.num_envs; ++k) {
    if (step.task_id[k] < 0 || step.task_id[k] >= c.num_tasks) {
      throw std::out_of_range("task_id[" + std::to_string(k) + "] = " +
                              std::to_string(step.task_id[k]) + " is out of range [0, " +
                              std::to_string(c.num_tasks) + ")");
    }
  }
  // Nothing non-finite may be stored (it would poison every sample that touches it).
  CheckFinite("obs", step.obs, c.num_envs, c.obs_dim, true);
  CheckFinite("action", step.action, c.num_envs, c.action_dim, true);
  CheckFinite("reward", step.reward, c.num_envs, 1, false);
  CheckFinite("next_obs", step.next_obs, c.num_envs, c.obs_dim, true);
  std::lock_guard<std::mutex> lock(mu_);
  // At most two pool rows per env per call (its previous stream break + its own episode end);
  // reserving first means nothing below can fail half-way.
  s_.finals.Reserve(2 * c.num_envs);
  const double new_leaf = PowAlpha(s_.max_priority, c.alpha);
  const size_t obs_bytes = c.obs_dim * sizeof(float);
  for (int64_t k = 0; k < c.num_envs; ++k) {
    const int64_t t = step.task_id[k];
    const int64_t local = s_.position[t];
    const int64_t g = t * c.capacity_per_task + local;
    if (s_.size[t] == c.capacity_per_task) Evict(g);
    const float* obs = step.obs + k * c.obs_dim;
    // Close env k's previous transition: link it to this one when this obs is exactly its
    // next_obs (same task ring, so FIFO keeps the link live); otherwise keep a copy.
    const int64_t p = s_.last_slot[k];
    if (p >= 0) {
      const float* pending = s_.pending_obs.data() + k * c.obs_dim;
      if (p / c.capacity_per_task == t && std::memcmp(pending, obs, obs_bytes) == 0) {
        SlotAt(p).next = g;
      } else {
        const int64_t f = s_.finals.Allocate();
        std::memcpy(s_.finals.Row(f), pending, obs_bytes);
        SlotAt(p).next = -2 - f;
      }
      s_.last_slot[k] = -1;
    }
    std::memcpy(ObsRow(g), obs, obs_bytes);
    std::memcpy(ActionRow(g), step.action + k * c.action_dim, c.action_dim * sizeof(float));
    const uint32_t flags = (step.terminated[k] != 0 ? kTerminated : 0u) |
                           (step.truncated[k] != 0 ? kTruncated : 0u);
    Slot& slot = SlotAt(g);
    slot.reward = step.reward[k];
    slot.env_flags = static_cast<uint32_t>(k) << 8 | flags;
    const float* next_obs = step.next_obs + k * c.obs_dim;
    if (flags != 0) {  // episode end: the final observation goes to the pool
      const int64_t f = s_.finals.Allocate();
      std::memcpy(s_.finals.Row(f), next_obs, obs_bytes);
      slot.next = -2 - f;
    } else {
      std::memcpy(s_.pending_obs.data() + k * c.obs_dim, next_obs, obs_bytes);
      slot.next = kPending;
      s_.last_slot[k] = g;
    }
    s_.trees.Set(t, local, new_leaf);
    touched_[t] = 1;
    s_.position[t] = local + 1 == c.capacity_per_task ? 0 : local + 1;
    if (s_.size[t] < c.capacity_per_task) ++s_.size[t];
  }
  for (int64_t k = 0; k < c.num_envs; ++k) {
    const int64_t t = step.task_id[k];
    if (touched_[t]) {
      s_.trees.SyncTop(t);
      touched_[t] = 0;
    }
  }
}

void ReplayBuffer::UpdatePriorities(const int64_t* index, const double* priority, int64_t n) {
  const ReplayConfig& c = config_;
  std::lock_guard<std::mutex> lock(mu_);
  scratch_i64_.resize(2 * static_cast<size_t>(n));
  scratch_f64_.resize(static_cast<size_t>(n));
  int64_t* tree = scratch_i64_.data();
  int64_t* leaf = tree + n;
  double max_p = s_.max_priority;
  const double max_leaf = std::numeric_limits<double>::max() / static_cast<double>(total_slots_);
  // Validate everything before changing anything.
  for (int64_t k = 0; k < n; ++k) {
    const int64_t g = index[k];
    if (g < 0 || g >= total_slots_) {
      throw std::out_of_range("index[" + std::to_string(k) + "] = " + std::to_string(g) +
                              " is out of range [0, " + std::to_string(total_slots_) + ")");
    }
    const int64_t t = g / c.capacity_per_task;
    tree[k] = t;
    leaf[k] = g - t * c.capacity_per_task;
    if (leaf[k] >= s_.size[t]) {
      throw std::out_of_range("index[" + std::to_string(k) + "] = " + std::to_string(g) +
                              " holds no transition (task " + std::to_string(t) + " holds " +
                              std::to_string(s_.size[t]) + ")");
    }
    const double p = priority[k];
    if (!std::isfinite(p) || p < 0.0) {
      throw std::invalid_argument("priority[" + std::to_string(k) + "] = " + Num(p) +
                                  " must be finite and >= 0");
    }
    // Bounding each leaf by DBL_MAX / (T * C) keeps every tree sum finite.
    scratch_f64_[k] = PowAlpha(p, c.alpha);
    if (!(scratch_f64_[k] <= max_leaf)) {
      throw std::invalid_argument("priority[" + std::to_string(k) + "] = " + Num(p) +
                                  " is too large: priority ** alpha must be <= " +
                                  Num(max_leaf));
    }
    max_p = std::max(max_p, p);
  }
  s_.trees.SetBatch(tree, leaf, scratch_f64_.data(), n);
  s_.max_priority = max_p;
}

namespace {

std::vector<std::vector<double>> Levels(const double* tree, const KaryLayout& l) {
  std::vector<std::vector<double>> levels;
  for (size_t j = 0; j < l.count.size(); ++j) {
    const int64_t padded = (l.count[j] + 7) / 8 * 8;
    levels.emplace_back(tree + l.offset[j], tree + l.offset[j] + padded);
  }
  return levels;
}

}  // namespace

std::vector<std::vector<double>> ReplayBuffer::TreeLevels(int64_t task) const {
  if (task < 0 || task >= config_.num_tasks) {
    throw std::out_of_range("task " + std::to_string(task) + " is out of range [0, " +
                            std::to_string(config_.num_tasks) + ")");
  }
  std::lock_guard<std::mutex> lock(mu_);
  return Levels(s_.trees.tree_nodes(task), s_.trees.layout());
}

std::vector<std::vector<double>> ReplayBuffer::TopLevels() const {
  std::lock_guard<std::mutex> lock(mu_);
  return Levels(s_.trees.top_nodes().data(), s_.trees.top_layout());
}

}  // namespace mtrl
