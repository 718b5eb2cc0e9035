// Prioritized multi-task replay buffer (issue 2 §3; BRC's buffer is brc-spec §5.3).
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "replay/final_obs_pool.h"
#include "replay/memory.h"
#include "common/rng.h"
#include "replay/sum_tree.h"

namespace mtrl {

struct ReplayConfig {
  int64_t num_tasks = 1;
  int64_t capacity_per_task = 1;
  int64_t obs_dim = 1;
  int64_t action_dim = 1;
  int64_t num_envs = 1;
  double alpha = 0.6;  // priority exponent of proportional PER
  uint64_t seed = 0;
  void Validate() const;  // throws std::invalid_argument naming the field
};

// One vector-env step, row k = env k. Pointers to num_envs rows each, C order.
struct StepView {
  const int64_t* task_id;
  const float* obs;       // (N, obs_dim)
  const float* action;    // (N, action_dim)
  const float* reward;    // (N,)
  const uint8_t* terminated;  // (N,) NumPy bool bytes: nonzero is true
  const uint8_t* truncated;
  const float* next_obs;  // (N, obs_dim): the final observation when the episode ended
};

struct SampleRequest {
  int64_t batch_size = 1;
  bool stratified = false;
  bool prioritized = false;
  double beta = 0.4;
  int64_t n_step = 1;
  double gamma = 0.99;
};

// Preallocated outputs, batch_size rows each.
struct BatchView {
  float* obs;       // (B, obs_dim)
  float* action;    // (B, action_dim)
  float* reward;    // (B,)
  float* next_obs;  // (B, obs_dim)
  float* mask;      // (B,)
  float* discount;  // (B,)
  int64_t* task_id; // (B,)
  int64_t* index;   // (B,) global ids task * capacity_per_task + slot
  float* weight;    // (B,)
};

// Scalars that complete the saved arrays (written to meta.json by the Python face).
struct ReplayScalars {
  std::vector<int64_t> size;      // (T,)
  std::vector<int64_t> position;  // (T,) next slot to write
  double max_priority = 1.0;
  std::array<uint64_t, 4> rng_state{};
  int64_t final_rows = 0;
};

// Per-task FIFO rings of capacity C; global index g = task * C + slot. Each slot stores obs,
// action, reward, flags, its env stream and a `next` link:
//   next >= 0   next_obs is obs[next] (the env's following transition, same task ring);
//   next == -1  the newest transition of its env: next_obs is that env's pending row;
//   next <= -2  next_obs is row (-2 - next) of the final-observation pool.
// A link is made only when the following obs is bit-identical to the pending next_obs and of
// the same task, so it can never return a wrong value; because a ring overwrites in insertion
// order, a linked successor is always still live while its predecessor is. Episode ends (and
// any break in a stream) copy next_obs into the pool, whose rows are freed on overwrite.
//
// Thread safety: every public method takes one internal mutex, so Add, Sample,
// UpdatePriorities, Save and Load may be called from different threads; they serialise.
// fork() waits for a running call (at-fork handlers hold every buffer's mutex around it), so a
// forked child can use a copy of the buffer even while another thread of the parent was in one.
// The caller owns the output arrays of Sample and must not read them while it runs.
class ReplayBuffer {
 public:
  static constexpr int64_t kMaxBatchSize = int64_t{1} << 20;
  static constexpr int64_t kMaxNStep = 1000;
  static constexpr int64_t kMaxEnvs = (int64_t{1} << 24) - 1;

  // Bytes allocated at construction (the final-observation pool then grows on demand by
  // FinalObsPool::ChunkBytes, at most one row per live transition).
  static uint64_t EstimateBytes(const ReplayConfig& config);
  // Throws std::invalid_argument for a bad config, OutOfMemoryError if it cannot fit.
  explicit ReplayBuffer(const ReplayConfig& config);
  ~ReplayBuffer();
  ReplayBuffer(const ReplayBuffer&) = delete;
  ReplayBuffer& operator=(const ReplayBuffer&) = delete;

  const ReplayConfig& config() const { return config_; }
  uint64_t nbytes() const;
  int64_t Size(int64_t task) const;
  int64_t TotalSize() const;
  std::vector<int64_t> Sizes() const;
  double max_priority() const;
  int64_t final_rows_in_use() const;

  // Inserts one transition per env. Before changing anything, throws std::out_of_range for a
  // task id outside [0, num_tasks) and std::invalid_argument for a NaN or infinite value in
  // obs, action, reward or next_obs (naming the field, env row and value).
  void Add(const StepView& step);
  // Throws std::invalid_argument for bad options, std::runtime_error when there is nothing to
  // sample from (empty buffer, an empty task when stratified, zero total priority).
  void Sample(const SampleRequest& request, const BatchView& out);
  // Gathers the given global ids (all live) as Sample would, weights 1: for inspection/tests.
  void Fetch(const int64_t* index, int64_t n, int64_t n_step, double gamma, const BatchView& out);
  // priority^alpha becomes the leaf of each index; validates everything before changing
  // anything (std::out_of_range for an index that holds no transition, std::invalid_argument
  // for a NaN, infinite or negative priority).
  void UpdatePriorities(const int64_t* index, const double* priority, int64_t n);

  // Levels of task's 8-ary sum tree (level 0: the leaves priority^alpha, each level padded to a
  // multiple of 8 nodes, last level: the root), and of the task-level tree. For tests.
  std::vector<std::vector<double>> TreeLevels(int64_t task) const;
  std::vector<std::vector<double>> TopLevels() const;

  // Writes the arrays as .npy files into an existing directory (see mtrl/replay.py for the
  // format) and returns the scalars that complete them. Format version 2 writes each task's
  // stored transitions only (rows 0..size-1 of its ring); version 1, the previous format, every
  // slot (num_tasks * capacity_per_task rows, filled or not).
  ReplayScalars Save(const std::string& directory, int64_t version) const;
  // Reads arrays written by Save (format `version`, 1 or 2) for the same config, validates every
  // header, link and value, then replaces the contents (nothing changes if anything is wrong:
  // std::invalid_argument).
  void Load(const std::string& directory, const ReplayScalars& scalars, int64_t version);

 private:
  // A transition's record: this 16-byte header followed by its action floats, padded to a full
  // 64-byte line when it fits in one (action_dim <= 12), so a sample reads one line for them.
  struct Slot {
    int64_t next;
    float reward;
    uint32_t env_flags;  // env << 8 | flags
  };
  static int64_t RecordBytes(int64_t action_dim);
  static constexpr uint32_t kTerminated = 1;
  static constexpr uint32_t kTruncated = 2;
  static constexpr int64_t kPending = -1;

  struct Storage {
    PageBuffer obs, records;  // (T*C, obs_dim) floats; T*C records of record_bytes_
    std::vector<float> pending_obs;    // (N, obs_dim)
    std::vector<int64_t> last_slot;    // (N,) newest slot of each env still pending, or -1
    FinalObsPool finals;
    PriorityTrees trees;
    std::vector<int64_t> size, position;
    double max_priority = 1.0;
    Rng rng;
  };

  Storage MakeStorage() const;
  void Evict(int64_t g);
  const float* NextObsRow(int64_t g) const;
  void ChooseSlots(const SampleRequest& request, int64_t* global, float* weight);
  void Gather(const SampleRequest& request, const int64_t* global, const BatchView& out);
  void ValidateLoaded(Storage& s) const;
  // Rows each task has in the saved per-slot arrays (format `version`, given the task sizes).
  std::vector<int64_t> SavedRows(const std::vector<int64_t>& size, int64_t version) const;

  float* ObsRow(int64_t g) const { return s_.obs.as<float>() + g * config_.obs_dim; }
  Slot& SlotAt(const Storage& s, int64_t g) const {
    return *reinterpret_cast<Slot*>(s.records.as<char>() + g * record_bytes_);
  }
  Slot& SlotAt(int64_t g) const { return SlotAt(s_, g); }
  float* ActionRow(const Storage& s, int64_t g) const {
    return reinterpret_cast<float*>(s.records.as<char>() + g * record_bytes_ + sizeof(Slot));
  }
  float* ActionRow(int64_t g) const { return ActionRow(s_, g); }

  ReplayConfig config_;
  int64_t total_slots_ = 0;
  int64_t record_bytes_ = 0;
  mutable std::mutex mu_;
  Storage s_;
  // Scratch reused across calls (under mu_), so sampling allocates nothing per call.
  std::vector<int64_t> scratch_i64_;
  std::vector<double> scratch_f64_;
  std::vector<const float*> scratch_rows_;
  std::vector<uint8_t> touched_;
};

}  // namespace mtrl
