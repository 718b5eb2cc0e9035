// Save/load of the replay buffer as .npy arrays (format documented in mtrl/replay.py).
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <stdexcept>

#include "replay/npy_io.h"
#include "replay/replay_buffer.h"

namespace mtrl {
namespace {

constexpr int64_t kBlock = 1 << 16;  // rows per block when converting slot fields

std::string Join(const std::string& dir, const char* name) { return dir + "/" + name; }

std::string Where(int64_t g) { return "slot " + std::to_string(g); }

bool AllFinite(const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i])) return false;
  }
  return true;
}

}  // namespace

// Rows of each task's ring in the per-slot arrays: its live slots 0..size-1 (version 2), or all
// C slots (version 1). Live slots are always 0..size-1: a ring fills 0, 1, ... before it wraps.
std::vector<int64_t> ReplayBuffer::SavedRows(const std::vector<int64_t>& size,
                                             int64_t version) const {
  if (version != 1 && version != 2) {
    throw std::invalid_argument("replay format version " + std::to_string(version) +
                                " is not 1 or 2");
  }
  std::vector<int64_t> rows(config_.num_tasks, config_.capacity_per_task);
  if (version == 2) rows = size;
  return rows;
}

ReplayScalars ReplayBuffer::Save(const std::string& dir, int64_t version) const {
  const ReplayConfig& c = config_;
  const int64_t C = c.capacity_per_task;
  std::lock_guard<std::mutex> lock(mu_);
  const std::vector<int64_t> rows = SavedRows(s_.size, version);
  int64_t n = 0;
  for (int64_t r : rows) n += r;
  // Version 2 keeps only the pool rows in use, renumbered in pool order (links follow);
  // version 1 keeps the whole pool, free rows included.
  const int64_t pool_rows = s_.finals.rows();
  const std::vector<uint8_t> in_use =
      version == 1 ? std::vector<uint8_t>(pool_rows, 1) : s_.finals.InUse();
  std::vector<int64_t> new_row(static_cast<size_t>(pool_rows), -1);
  int64_t final_rows = 0;
  for (int64_t r = 0; r < pool_rows; ++r) {
    if (in_use[r]) new_row[r] = final_rows++;
  }
  {
    NpyWriter w(Join(dir, "obs.npy"), "<f4", {n, c.obs_dim});
    for (int64_t t = 0; t < c.num_tasks; ++t) {
      w.Write(ObsRow(t * C), static_cast<size_t>(rows[t] * c.obs_dim) * sizeof(float));
    }
    w.Close();
  }
  {
    NpyWriter w(Join(dir, "action.npy"), "<f4", {n, c.action_dim});
    for (int64_t t = 0; t < c.num_tasks; ++t) {
      for (int64_t g = t * C; g < t * C + rows[t]; ++g) {
        w.Write(ActionRow(g), c.action_dim * sizeof(float));
      }
    }
    w.Close();
  }
  NpyWriter reward(Join(dir, "reward.npy"), "<f4", {n});
  NpyWriter terminated(Join(dir, "terminated.npy"), "|b1", {n});
  NpyWriter truncated(Join(dir, "truncated.npy"), "|b1", {n});
  NpyWriter env(Join(dir, "env.npy"), "<i4", {n});
  NpyWriter next(Join(dir, "next.npy"), "<i8", {n});
  NpyWriter priority(Join(dir, "priority.npy"), "<f8", {n});
  std::vector<float> f32(kBlock);
  std::vector<uint8_t> term(kBlock), trunc(kBlock);
  std::vector<int32_t> i32(kBlock);
  std::vector<int64_t> i64(kBlock);
  std::vector<double> f64(kBlock);
  for (int64_t t = 0; t < c.num_tasks; ++t) {
    for (int64_t start = 0; start < rows[t]; start += kBlock) {
      const int64_t len = std::min(kBlock, rows[t] - start);
      for (int64_t i = 0; i < len; ++i) {
        const int64_t g = t * C + start + i;
        const Slot& s = SlotAt(g);
        f32[i] = s.reward;
        term[i] = (s.env_flags & kTerminated) ? 1 : 0;
        trunc[i] = (s.env_flags & kTruncated) ? 1 : 0;
        i32[i] = static_cast<int32_t>(s.env_flags >> 8);
        i64[i] = version == 2 && s.next <= -2 ? -2 - new_row[-2 - s.next] : s.next;
        f64[i] = s_.trees.Leaf(t, start + i);
      }
      reward.Write(f32.data(), len * 4);
      terminated.Write(term.data(), len);
      truncated.Write(trunc.data(), len);
      env.Write(i32.data(), len * 4);
      next.Write(i64.data(), len * 8);
      priority.Write(f64.data(), len * 8);
    }
  }
  for (NpyWriter* w : {&reward, &terminated, &truncated, &env, &next, &priority}) w->Close();
  {
    NpyWriter w(Join(dir, "pending_obs.npy"), "<f4", {c.num_envs, c.obs_dim});
    w.Write(s_.pending_obs.data(), s_.pending_obs.size() * sizeof(float));
    w.Close();
    NpyWriter l(Join(dir, "last_slot.npy"), "<i8", {c.num_envs});
    l.Write(s_.last_slot.data(), s_.last_slot.size() * sizeof(int64_t));
    l.Close();
  }
  {
    NpyWriter w(Join(dir, "final_obs.npy"), "<f4", {final_rows, c.obs_dim});
    for (int64_t r = 0; r < pool_rows; ++r) {
      if (in_use[r]) w.Write(s_.finals.Row(r), c.obs_dim * sizeof(float));
    }
    w.Close();
  }
  ReplayScalars out;
  out.size = s_.size;
  out.position = s_.position;
  out.max_priority = s_.max_priority;
  out.rng_state = s_.rng.state();
  out.final_rows = final_rows;
  return out;
}

void ReplayBuffer::Load(const std::string& dir, const ReplayScalars& sc, int64_t version) {
  const ReplayConfig& c = config_;
  const int64_t C = c.capacity_per_task;
  if (static_cast<int64_t>(sc.size.size()) != c.num_tasks ||
      static_cast<int64_t>(sc.position.size()) != c.num_tasks) {
    throw std::invalid_argument("`size` and `position` must have num_tasks (" +
                                std::to_string(c.num_tasks) + ") entries");
  }
  for (int64_t t = 0; t < c.num_tasks; ++t) {
    if (sc.size[t] < 0 || sc.size[t] > C || sc.position[t] < 0 || sc.position[t] >= C ||
        (sc.size[t] < C && sc.position[t] != sc.size[t])) {
      throw std::invalid_argument("task " + std::to_string(t) + " has an impossible size (" +
                                  std::to_string(sc.size[t]) + ") / position (" +
                                  std::to_string(sc.position[t]) + ") for capacity " +
                                  std::to_string(C));
    }
  }
  if (!std::isfinite(sc.max_priority) || sc.max_priority < 0.0 ||
      !(std::pow(sc.max_priority, c.alpha) <=
        std::numeric_limits<double>::max() / static_cast<double>(total_slots_))) {
    throw std::invalid_argument("`max_priority` must be finite, >= 0 and not overflow the trees");
  }
  if (sc.rng_state == std::array<uint64_t, 4>{}) {
    throw std::invalid_argument("`rng_state` must not be all zeros");
  }
  const std::vector<int64_t> rows = SavedRows(sc.size, version);
  int64_t n = 0;
  for (int64_t r : rows) n += r;
  // Every header (dtype, shape, data length) is checked before anything is allocated or read.
  const std::string rows_are =
      version == 1 ? "num_tasks * capacity_per_task"
                   : "the stored transitions, the sum of meta.json's `size`";
  auto open = [&](const char* name, const char* descr, std::vector<int64_t> shape,
                  const std::string& first_dim) {
    try {
      return std::make_unique<NpyReader>(Join(dir, name), descr, std::move(shape));
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(std::string(e.what()) + " (format version " +
                                  std::to_string(version) + ": rows = " + first_dim + ")");
    }
  };
  auto obs = open("obs.npy", "<f4", {n, c.obs_dim}, rows_are);
  auto action = open("action.npy", "<f4", {n, c.action_dim}, rows_are);
  auto reward = open("reward.npy", "<f4", {n}, rows_are);
  auto terminated = open("terminated.npy", "|b1", {n}, rows_are);
  auto truncated = open("truncated.npy", "|b1", {n}, rows_are);
  auto env = open("env.npy", "<i4", {n}, rows_are);
  auto next = open("next.npy", "<i8", {n}, rows_are);
  auto priority = open("priority.npy", "<f8", {n}, rows_are);
  auto pending = open("pending_obs.npy", "<f4", {c.num_envs, c.obs_dim}, "num_envs");
  auto last = open("last_slot.npy", "<i8", {c.num_envs}, "num_envs");
  auto finals = open("final_obs.npy", "<f4", {sc.final_rows, c.obs_dim},
                     "meta.json's `final_rows`");
  CheckFitsInMemory(EstimateBytes(c) + static_cast<uint64_t>(sc.final_rows) * c.obs_dim * 4,
                    "loading the replay buffer (a second copy while loading)");
  Storage s = MakeStorage();
  for (int64_t t = 0; t < c.num_tasks; ++t) {
    obs->Read(s.obs.as<float>() + t * C * c.obs_dim,
              static_cast<size_t>(rows[t] * c.obs_dim) * sizeof(float));
  }
  for (int64_t t = 0; t < c.num_tasks; ++t) {
    for (int64_t g = t * C; g < t * C + rows[t]; ++g) {
      action->Read(ActionRow(s, g), c.action_dim * sizeof(float));
    }
  }
  std::vector<float> f32(kBlock);
  std::vector<uint8_t> term(kBlock), trunc(kBlock);
  std::vector<int32_t> i32(kBlock);
  std::vector<int64_t> links(kBlock);
  for (int64_t t = 0; t < c.num_tasks; ++t) {
    for (int64_t start = 0; start < rows[t]; start += kBlock) {
      const int64_t len = std::min(kBlock, rows[t] - start);
      reward->Read(f32.data(), len * 4);
      terminated->Read(term.data(), len);
      truncated->Read(trunc.data(), len);
      env->Read(i32.data(), len * 4);
      next->Read(links.data(), len * 8);
      for (int64_t i = 0; i < len; ++i) {
        const int64_t g = t * C + start + i;
        Slot& slot = SlotAt(s, g);
        if (i32[i] < 0 || i32[i] >= c.num_envs) {
          if (start + i < sc.size[t]) {
            throw std::invalid_argument("env.npy: " + Where(g) + " has env " +
                                        std::to_string(i32[i]) + " outside [0, num_envs)");
          }
          i32[i] = 0;  // a version-1 row of an unused slot
        }
        slot.reward = f32[i];
        slot.env_flags = static_cast<uint32_t>(i32[i]) << 8 | (term[i] ? kTerminated : 0u) |
                         (trunc[i] ? kTruncated : 0u);
        slot.next = links[i];
      }
    }
    priority->Read(s.trees.mutable_leaves(t), rows[t] * sizeof(double));
  }
  pending->Read(s.pending_obs.data(), s.pending_obs.size() * sizeof(float));
  last->Read(s.last_slot.data(), s.last_slot.size() * sizeof(int64_t));
  s.finals.ResetForLoad(sc.final_rows);
  for (int64_t r = 0; r < sc.final_rows; r += FinalObsPool::kChunkRows) {
    const int64_t len = std::min(FinalObsPool::kChunkRows, sc.final_rows - r);
    finals->Read(s.finals.Row(r), len * c.obs_dim * sizeof(float));
  }
  s.size = sc.size;
  s.position = sc.position;
  s.max_priority = sc.max_priority;
  s.rng.set_state(sc.rng_state);
  ValidateLoaded(s);
  std::lock_guard<std::mutex> lock(mu_);
  s_ = std::move(s);
}

// Checks every invariant Add maintains, so a corrupt directory can never make a later sample
// read a wrong row or the pool free a row twice. Also rebuilds the trees and the free list.
void ReplayBuffer::ValidateLoaded(Storage& s) const {
  const int64_t C = config_.capacity_per_task;
  const int64_t final_rows = s.finals.rows();
  const double max_leaf = std::numeric_limits<double>::max() / static_cast<double>(total_slots_);
  std::vector<uint8_t> in_use(static_cast<size_t>(final_rows), 0);
  for (int64_t t = 0; t < config_.num_tasks; ++t) {
    const int64_t size = s.size[t];
    const int64_t start = size < C ? 0 : s.position[t];  // oldest live slot
    double* leaves = s.trees.mutable_leaves(t);
    for (int64_t local = 0; local < C; ++local) {
      const int64_t g = t * C + local;
      if (local >= size) {
        leaves[local] = 0.0;  // not live: never sampled
        continue;
      }
      if (!(leaves[local] >= 0.0 && leaves[local] <= max_leaf)) {
        throw std::invalid_argument("priority.npy: " + Where(g) + " has a NaN, negative or too "
                                    "large priority (the tree sums must stay finite)");
      }
      const Slot& slot = SlotAt(s, g);
      // Add rejects non-finite values, so a stored one means the files were altered.
      if (!AllFinite(s.obs.as<float>() + g * config_.obs_dim, config_.obs_dim)) {
        throw std::invalid_argument("obs.npy: " + Where(g) + " has a NaN or infinite value");
      }
      if (!AllFinite(ActionRow(s, g), config_.action_dim)) {
        throw std::invalid_argument("action.npy: " + Where(g) + " has a NaN or infinite value");
      }
      if (!std::isfinite(slot.reward)) {
        throw std::invalid_argument("reward.npy: " + Where(g) + " is NaN or infinite");
      }
      const int64_t env = slot.env_flags >> 8;
      const bool done = (slot.env_flags & 0xff) != 0;
      if (slot.next >= 0) {
        const int64_t succ = slot.next - t * C;
        const int64_t age = (local - start + C) % C;
        if (done || succ < 0 || succ >= size || (succ - start + C) % C <= age) {
          throw std::invalid_argument("next.npy: " + Where(g) + " links to slot " +
                                      std::to_string(slot.next) +
                                      ", which is not a later live slot of the same task");
        }
      } else if (slot.next == kPending) {
        if (done || s.last_slot[env] != g) {
          throw std::invalid_argument("next.npy: " + Where(g) + " is marked pending but is not "
                                      "the newest transition of env " + std::to_string(env));
        }
      } else {
        const int64_t f = -2 - slot.next;
        if (f >= final_rows || in_use[f]) {
          throw std::invalid_argument("next.npy: " + Where(g) + " refers to final observation " +
                                      std::to_string(f) + ", which is missing or shared");
        }
        if (!AllFinite(s.finals.Row(f), config_.obs_dim)) {
          throw std::invalid_argument("final_obs.npy: row " + std::to_string(f) +
                                      " has a NaN or infinite value");
        }
        in_use[f] = 1;
      }
    }
    s.trees.Rebuild(t);
  }
  for (int64_t k = 0; k < config_.num_envs; ++k) {
    const int64_t g = s.last_slot[k];
    if (g == -1) continue;
    if (g < 0 || g >= total_slots_ || g % C >= s.size[g / C] ||
        SlotAt(s, g).next != kPending || static_cast<int64_t>(SlotAt(s, g).env_flags >> 8) != k) {
      throw std::invalid_argument("last_slot.npy: env " + std::to_string(k) + " points at slot " +
                                  std::to_string(g) + ", which is not its pending transition");
    }
    if (!AllFinite(s.pending_obs.data() + k * config_.obs_dim, config_.obs_dim)) {
      throw std::invalid_argument("pending_obs.npy: env " + std::to_string(k) +
                                  " has a NaN or infinite value");
    }
  }
  s.finals.RebuildFreeList(in_use);
}

}  // namespace mtrl
