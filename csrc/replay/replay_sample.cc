// Sampling of the replay buffer: choosing (task, slot) pairs and gathering the batch.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "replay/replay_buffer.h"

namespace mtrl {
namespace {

constexpr int64_t kSlotPrefetch = 16;  // rows ahead for the 16-byte slot records
constexpr int64_t kRowPrefetch = 6;    // rows ahead for obs and next_obs rows (flat 3..10)

inline void PrefetchBytes(const void* p, size_t nbytes) {
  const char* c = static_cast<const char*>(p);
  for (size_t off = 0; off < nbytes; off += 64) __builtin_prefetch(c + off);
}

void CheckUnit(const char* name, double v) {
  if (!std::isfinite(v) || v < 0.0 || v > 1.0) {
    throw std::invalid_argument(std::string("`") + name + "` must be in [0, 1], got " +
                                std::to_string(v));
  }
}

}  // namespace

const float* ReplayBuffer::NextObsRow(int64_t g) const {
  const Slot& slot = SlotAt(g);
  if (slot.next >= 0) return ObsRow(slot.next);
  if (slot.next == kPending) {
    return s_.pending_obs.data() + (slot.env_flags >> 8) * config_.obs_dim;
  }
  const int64_t next = slot.next;
  return s_.finals.Row(-2 - next);
}

void ReplayBuffer::Sample(const SampleRequest& r, const BatchView& out) {
  if (r.batch_size < 1 || r.batch_size > kMaxBatchSize) {
    throw std::invalid_argument("`batch_size` must be in [1, " + std::to_string(kMaxBatchSize) +
                                "], got " + std::to_string(r.batch_size));
  }
  if (r.n_step < 1 || r.n_step > kMaxNStep) {
    throw std::invalid_argument("`n_step` must be in [1, " + std::to_string(kMaxNStep) +
                                "], got " + std::to_string(r.n_step));
  }
  CheckUnit("gamma", r.gamma);
  CheckUnit("beta", r.beta);
  std::lock_guard<std::mutex> lock(mu_);
  ChooseSlots(r, out.index, out.weight);
  Gather(r, out.index, out);
}

void ReplayBuffer::Fetch(const int64_t* index, int64_t n, int64_t n_step, double gamma,
                         const BatchView& out) {
  if (n_step < 1 || n_step > kMaxNStep) {
    throw std::invalid_argument("`n_step` must be in [1, " + std::to_string(kMaxNStep) +
                                "], got " + std::to_string(n_step));
  }
  CheckUnit("gamma", gamma);
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t C = config_.capacity_per_task;
  for (int64_t k = 0; k < n; ++k) {
    const int64_t g = index[k];
    if (g < 0 || g >= total_slots_ || g % C >= s_.size[g / C]) {
      throw std::out_of_range("index[" + std::to_string(k) + "] = " + std::to_string(g) +
                              " holds no transition");
    }
  }
  for (int64_t k = 0; k < n; ++k) {
    out.index[k] = index[k];
    out.weight[k] = 1.0f;
  }
  SampleRequest request;
  request.batch_size = n;
  request.n_step = n_step;
  request.gamma = gamma;
  Gather(request, out.index, out);
}

// Draws global slot ids (with replacement) into `global` and IS weights into `weight`.
// Stratified: batch_size / T rows per task, tasks in ascending order; when T does not divide
// batch_size, the batch_size % T extra rows go to distinct tasks drawn uniformly at random.
void ReplayBuffer::ChooseSlots(const SampleRequest& r, int64_t* global, float* weight) {
  const int64_t T = config_.num_tasks;
  const int64_t C = config_.capacity_per_task;
  const int64_t B = r.batch_size;
  int64_t total = 0;
  for (int64_t n : s_.size) total += n;
  if (total == 0) throw std::runtime_error("cannot sample: the replay buffer is empty");

  scratch_i64_.resize(static_cast<size_t>(std::max(B, T + 1)) + T);
  scratch_f64_.resize(static_cast<size_t>(B));
  int64_t* tree = scratch_i64_.data();  // per-row task (prioritized) or prefix sums
  double* u = scratch_f64_.data();
  if (r.stratified) {
    for (int64_t t = 0; t < T; ++t) {
      if (s_.size[t] == 0) {
        throw std::runtime_error("stratified sampling needs data in every task; task " +
                                 std::to_string(t) + " is empty");
      }
      if (r.prioritized && !(s_.trees.TreeTotal(t) > 0.0)) {
        throw std::runtime_error("cannot sample task " + std::to_string(t) +
                                 " by priority: all its priorities are 0");
      }
    }
    // Which tasks get one extra row: a partial Fisher-Yates shuffle of the task ids.
    int64_t* perm = scratch_i64_.data() + std::max(B, T + 1);
    for (int64_t t = 0; t < T; ++t) perm[t] = t;
    const int64_t extra = B % T;
    for (int64_t i = 0; i < extra; ++i) std::swap(perm[i], perm[i + s_.rng.Below(T - i)]);
    for (int64_t t = 0; t < T; ++t) touched_[t] = 0;
    for (int64_t i = 0; i < extra; ++i) touched_[perm[i]] = 1;
    int64_t b = 0;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t n_t = B / T + touched_[t];
      touched_[t] = 0;
      for (int64_t j = 0; j < n_t; ++j, ++b) {
        tree[b] = t;
        if (r.prioritized) {
          u[b] = s_.rng.Uniform() * s_.trees.TreeTotal(t);
        } else {
          global[b] = t * C + static_cast<int64_t>(s_.rng.Below(s_.size[t]));
          weight[b] = 1.0f;
        }
      }
    }
  } else if (!r.prioritized) {
    // Uniform over all stored (task, slot) pairs, as BRC (brc-spec §5.3) when sizes are equal.
    int64_t* prefix = tree;
    prefix[0] = 0;
    for (int64_t t = 0; t < T; ++t) prefix[t + 1] = prefix[t] + s_.size[t];
    for (int64_t b = 0; b < B; ++b) {
      const int64_t x = static_cast<int64_t>(s_.rng.Below(total));
      const int64_t t = std::upper_bound(prefix + 1, prefix + T + 1, x) - (prefix + 1);
      global[b] = t * C + (x - prefix[t]);
      weight[b] = 1.0f;
    }
    return;
  } else {
    const double mass = s_.trees.Total();
    if (!(mass > 0.0)) {
      throw std::runtime_error("cannot sample by priority: every stored priority is 0");
    }
    for (int64_t b = 0; b < B; ++b) u[b] = s_.rng.Uniform() * mass;
    s_.trees.FindTrees(u, B, tree);
  }
  if (!r.prioritized) return;

  // Proportional PER: P(i) = p_i^alpha / sum; w_i = (n * P(i))^-beta / max_batch w, where the
  // sum and n are the whole buffer's, or task t's when stratified (uniform within a task).
  s_.trees.FindLeaves(tree, u, B, global);
  // Computed in log space, w_i / max w = exp(-beta * (log(n P_i) - min_j log(n P_j))), which
  // avoids glibc pow's slow path near 1 (where n * P_i usually is).
  const double mass = s_.trees.Total();
  double min_log = HUGE_VAL;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t t = tree[b];
    const double leaf = s_.trees.Leaf(t, global[b]);
    const double p = r.stratified ? leaf / s_.trees.TreeTotal(t) : leaf / mass;
    const double n = static_cast<double>(r.stratified ? s_.size[t] : total);
    u[b] = std::log(n * p);
    min_log = std::min(min_log, u[b]);
    global[b] += t * C;
  }
  for (int64_t b = 0; b < B; ++b) {
    weight[b] = static_cast<float>(std::exp(-r.beta * (u[b] - min_log)));
  }
}

void ReplayBuffer::Gather(const SampleRequest& r, const int64_t* global, const BatchView& out) {
  const int64_t B = r.batch_size;
  const int64_t C = config_.capacity_per_task;
  const size_t obs_bytes = config_.obs_dim * sizeof(float);
  const size_t act_bytes = config_.action_dim * sizeof(float);
  const char* records = s_.records.as<char>();
  scratch_rows_.resize(static_cast<size_t>(B));
  const float** next_rows = scratch_rows_.data();
  const float gamma_f = static_cast<float>(r.gamma);
  // Pass 1: the records (link, reward, flags and the action, one line for action_dim <= 12),
  // n-step walk, next-obs source.
  for (int64_t b = 0; b < B; ++b) {
    if (b + kSlotPrefetch < B) {
      PrefetchBytes(records + global[b + kSlotPrefetch] * record_bytes_, record_bytes_);
    }
    int64_t cur = global[b];
    out.task_id[b] = cur / C;
    std::memcpy(out.action + b * config_.action_dim, ActionRow(cur), act_bytes);
    if (r.n_step == 1) {
      const Slot& s = SlotAt(cur);
      out.reward[b] = s.reward;
      out.discount[b] = gamma_f;
    } else {
      // n-step: sum rewards along the env's own stream; stop at an episode end (terminal or
      // truncation), at the stream's newest transition, or at a stream break.
      double ret = 0.0;
      double disc = 1.0;
      for (int64_t j = 0;; ++j) {
        const Slot& s = SlotAt(cur);
        ret += disc * s.reward;
        disc *= r.gamma;
        if ((s.env_flags & 0xff) != 0 || j + 1 == r.n_step || s.next < 0) break;
        cur = s.next;
      }
      out.reward[b] = static_cast<float>(ret);
      out.discount[b] = static_cast<float>(disc);
    }
    const uint32_t flags = SlotAt(cur).env_flags & 0xff;
    // brc-spec §5.4: m = 1 - terminal * (1 - truncated).
    out.mask[b] = ((flags & kTerminated) && !(flags & kTruncated)) ? 0.0f : 1.0f;
    next_rows[b] = NextObsRow(cur);
  }
  // Pass 2: the observation rows, prefetched a few rows ahead (random rows are bound by the
  // latency of memory and the number of misses a core keeps in flight).
  for (int64_t b = 0; b < B; ++b) {
    if (b + kRowPrefetch < B) {
      PrefetchBytes(ObsRow(global[b + kRowPrefetch]), obs_bytes);
      PrefetchBytes(next_rows[b + kRowPrefetch], obs_bytes);
    }
    std::memcpy(out.obs + b * config_.obs_dim, ObsRow(global[b]), obs_bytes);
    std::memcpy(out.next_obs + b * config_.obs_dim, next_rows[b], obs_bytes);
  }
}

}  // namespace mtrl
