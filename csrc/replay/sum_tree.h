// Sum trees for proportional prioritized replay: one tree per task plus a task-level tree.
#pragma once

#include <cstdint>
#include <vector>

#include "replay/memory.h"

namespace mtrl {

// `num_trees` binary sum trees of `capacity` leaves each, stored contiguously (tree t's nodes
// at [t * 2L, (t + 1) * 2L), L = the power of two >= capacity, node 1 the root, leaf i at node
// L + i), plus a top tree whose leaf t holds tree t's root. Every internal node is recomputed as
// fl(left + right) (never updated by a delta), so sums never drift and the invariant
// node == left + right holds exactly. Leaves must be finite and >= 0 (callers check).
// Lookups are batched and walk one tree level at a time for the whole batch, which overlaps
// the cache misses of independent samples. Not thread-safe: the owning buffer locks.
class PriorityTrees {
 public:
  PriorityTrees() = default;
  PriorityTrees(int64_t num_trees, int64_t capacity);

  static uint64_t Bytes(int64_t num_trees, int64_t capacity);

  int64_t num_trees() const { return num_trees_; }
  int64_t leaves() const { return leaves_; }
  double Total() const { return top_[1]; }
  double TreeTotal(int64_t t) const { return nodes_[t * 2 * leaves_ + 1]; }
  double Leaf(int64_t t, int64_t i) const { return nodes_[t * 2 * leaves_ + leaves_ + i]; }
  const double* tree_nodes(int64_t t) const { return nodes_ + t * 2 * leaves_; }
  const std::vector<double>& top_nodes() const { return top_; }

  // Sets leaf i of tree t and its ancestors; call SyncTop(t) after a run of changes.
  void Set(int64_t t, int64_t i, double value);
  // Sets n leaves (tree[k], leaf[k]) = value[k], then their ancestors level by level and the
  // top tree. Duplicated leaves are fine (the last value wins).
  void SetBatch(const int64_t* tree, const int64_t* leaf, const double* value, int64_t n);
  // Copies tree t's root into the top tree.
  void SyncTop(int64_t t);
  // Zeroes every leaf of tree t (and its sums).
  void ClearTree(int64_t t);
  // Direct leaf access for bulk loading; call Rebuild(t) afterwards.
  double* mutable_leaves(int64_t t) { return nodes_ + t * 2 * leaves_ + leaves_; }
  // Recomputes every internal node of tree t from its leaves, then syncs the top tree.
  void Rebuild(int64_t t);

  // Top level: for each u[k] in [0, Total()), the tree whose prefix range holds it; u[k] is
  // replaced by the offset inside that tree, in [0, TreeTotal(tree)).
  void FindTrees(double* u, int64_t n, int64_t* tree_out) const;
  // For each k, the leaf of tree[k] whose prefix range holds u[k] in [0, TreeTotal(tree[k])).
  // Only leaves with a value > 0 are ever returned (if the tree total is > 0).
  void FindLeaves(const int64_t* tree, const double* u, int64_t n, int64_t* leaf_out) const;

 private:
  int64_t num_trees_ = 0;
  int64_t leaves_ = 1;
  int depth_ = 0;
  PageBuffer storage_;
  double* nodes_ = nullptr;
  int64_t top_leaves_ = 1;
  int top_depth_ = 0;
  std::vector<double> top_;
  mutable std::vector<int64_t> scratch_;
  std::vector<uint8_t> mark_;
};

}  // namespace mtrl
