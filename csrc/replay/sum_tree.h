// Sum trees for proportional prioritized replay: one tree per task plus a task-level tree.
#pragma once

#include <cstdint>
#include <vector>

#include "replay/memory.h"

namespace mtrl {

// Shape of one 8-ary sum tree over n leaves: level 0 holds the leaves, level j + 1 holds the
// sums of consecutive groups of 8 nodes of level j, up to a single root. Every level is padded
// with zeros to a multiple of 8 nodes, so a node's 8 children are one aligned 64-byte line:
// a descent reads one cache line per level (7 levels for 1M leaves instead of 20 binary ones).
struct KaryLayout {
  static constexpr int64_t kFanout = 8;
  KaryLayout() = default;
  explicit KaryLayout(int64_t leaves);
  std::vector<int64_t> count;   // real nodes per level (count.back() == 1)
  std::vector<int64_t> offset;  // start of each level, in doubles, within one tree
  int64_t stride = 8;           // doubles per tree (a multiple of 8)
  int depth() const { return static_cast<int>(count.size()) - 1; }
};

// `num_trees` 8-ary sum trees of `capacity` leaves each, stored contiguously, plus a top tree
// whose leaf t holds tree t's root. Each internal node is recomputed as the sequential sum
// ((c0 + c1) + c2) + ... + c7 of its children (never updated by a delta), so sums never drift
// and the invariant holds exactly. Leaves must be finite and >= 0 (callers check). Lookups walk
// one level at a time for the whole batch, overlapping the cache misses of independent samples,
// and never return a leaf whose value is 0. Not thread-safe: the owning buffer locks.
class PriorityTrees {
 public:
  PriorityTrees() = default;
  PriorityTrees(int64_t num_trees, int64_t capacity);

  static uint64_t Bytes(int64_t num_trees, int64_t capacity);

  int64_t num_trees() const { return num_trees_; }
  double Total() const { return top_[top_layout_.offset.back()]; }
  double TreeTotal(int64_t t) const { return nodes_[t * layout_.stride + layout_.offset.back()]; }
  double Leaf(int64_t t, int64_t i) const { return nodes_[t * layout_.stride + i]; }
  const KaryLayout& layout() const { return layout_; }
  const KaryLayout& top_layout() const { return top_layout_; }
  const double* tree_nodes(int64_t t) const { return nodes_ + t * layout_.stride; }
  const std::vector<double>& top_nodes() const { return top_; }

  // Sets leaf i of tree t and its ancestors; call SyncTop(t) after a run of changes.
  void Set(int64_t t, int64_t i, double value);
  // Sets n leaves (tree[k], leaf[k]) = value[k], then their ancestors level by level and the
  // top tree. Duplicated leaves are fine (the last value wins).
  void SetBatch(const int64_t* tree, const int64_t* leaf, const double* value, int64_t n);
  // Copies tree t's root into the top tree.
  void SyncTop(int64_t t);
  // Direct leaf access for bulk loading; call Rebuild(t) afterwards.
  double* mutable_leaves(int64_t t) { return nodes_ + t * layout_.stride; }
  // Recomputes every internal node of tree t from its leaves, then syncs the top tree.
  void Rebuild(int64_t t);

  // Top level: for each u[k] in [0, Total()), the tree whose prefix range holds it; u[k] is
  // replaced by the offset inside that tree, in [0, TreeTotal(tree)).
  void FindTrees(double* u, int64_t n, int64_t* tree_out) const;
  // For each k, the leaf of tree[k] whose prefix range holds u[k] in [0, TreeTotal(tree[k])).
  void FindLeaves(const int64_t* tree, const double* u, int64_t n, int64_t* leaf_out) const;

 private:
  int64_t num_trees_ = 0;
  KaryLayout layout_;
  PageBuffer storage_;
  double* nodes_ = nullptr;
  KaryLayout top_layout_;
  std::vector<double> top_;
  mutable std::vector<int64_t> scratch_;
  std::vector<uint8_t> mark_;
};

}  // namespace mtrl
