#include "replay/sum_tree.h"

#include <algorithm>

namespace mtrl {
namespace {

int64_t NextPow2(int64_t n, int* depth) {
  int64_t p = 1;
  int d = 0;
  while (p < n) {
    p <<= 1;
    ++d;
  }
  *depth = d;
  return p;
}

constexpr int64_t kPrefetchAhead = 8;

}  // namespace

PriorityTrees::PriorityTrees(int64_t num_trees, int64_t capacity) : num_trees_(num_trees) {
  leaves_ = NextPow2(capacity, &depth_);
  top_leaves_ = NextPow2(num_trees, &top_depth_);
  storage_ = PageBuffer(static_cast<size_t>(num_trees) * 2 * leaves_ * sizeof(double));
  nodes_ = storage_.as<double>();
  top_.assign(2 * top_leaves_, 0.0);
}

uint64_t PriorityTrees::Bytes(int64_t num_trees, int64_t capacity) {
  int depth = 0;
  int top_depth = 0;
  return static_cast<uint64_t>(num_trees) * 2 * NextPow2(capacity, &depth) * sizeof(double) +
         2 * NextPow2(num_trees, &top_depth) * sizeof(double);
}

void PriorityTrees::Set(int64_t t, int64_t i, double value) {
  double* tree = nodes_ + t * 2 * leaves_;
  int64_t node = leaves_ + i;
  tree[node] = value;
  for (node >>= 1; node >= 1; node >>= 1) tree[node] = tree[2 * node] + tree[2 * node + 1];
}

void PriorityTrees::SyncTop(int64_t t) {
  int64_t node = top_leaves_ + t;
  top_[node] = TreeTotal(t);
  for (node >>= 1; node >= 1; node >>= 1) top_[node] = top_[2 * node] + top_[2 * node + 1];
}

void PriorityTrees::ClearTree(int64_t t) {
  std::fill(nodes_ + t * 2 * leaves_, nodes_ + (t + 1) * 2 * leaves_, 0.0);
  SyncTop(t);
}

void PriorityTrees::Rebuild(int64_t t) {
  double* tree = nodes_ + t * 2 * leaves_;
  for (int64_t node = leaves_ - 1; node >= 1; --node) tree[node] = tree[2 * node] + tree[2 * node + 1];
  SyncTop(t);
}

void PriorityTrees::SetBatch(const int64_t* tree, const int64_t* leaf, const double* value,
                             int64_t n) {
  scratch_.resize(static_cast<size_t>(n));
  int64_t* node = scratch_.data();
  for (int64_t k = 0; k < n; ++k) {
    node[k] = tree[k] * 2 * leaves_ + leaves_ + leaf[k];
    nodes_[node[k]] = value[k];
  }
  // Recompute ancestors one level at a time for the whole batch: independent loads overlap.
  for (int level = depth_; level > 0; --level) {
    for (int64_t k = 0; k < n; ++k) {
      const int64_t base = tree[k] * 2 * leaves_;
      const int64_t parent = (node[k] - base) >> 1;
      node[k] = base + parent;
      nodes_[node[k]] = nodes_[base + 2 * parent] + nodes_[base + 2 * parent + 1];
    }
  }
  // Sync each distinct tree into the top tree once.
  mark_.resize(static_cast<size_t>(num_trees_), 0);
  for (int64_t k = 0; k < n; ++k) {
    if (!mark_[tree[k]]) {
      mark_[tree[k]] = 1;
      SyncTop(tree[k]);
    }
  }
  for (int64_t k = 0; k < n; ++k) mark_[tree[k]] = 0;
}

void PriorityTrees::FindTrees(double* u, int64_t n, int64_t* tree_out) const {
  for (int64_t k = 0; k < n; ++k) {
    int64_t node = 1;
    double x = u[k];
    for (int level = 0; level < top_depth_; ++level) {
      const double left = top_[2 * node];
      const double right = top_[2 * node + 1];
      // Only ever enter a child with a positive sum (rounding can leave x >= left).
      if (x < left || right <= 0.0) {
        node = 2 * node;
      } else {
        x -= left;
        node = 2 * node + 1;
      }
    }
    tree_out[k] = node - top_leaves_;
    u[k] = std::min(x, TreeTotal(tree_out[k]));
  }
}

void PriorityTrees::FindLeaves(const int64_t* tree, const double* u, int64_t n,
                               int64_t* leaf_out) const {
  scratch_.resize(2 * static_cast<size_t>(n));
  int64_t* node = scratch_.data();
  double* x = reinterpret_cast<double*>(scratch_.data() + n);
  for (int64_t k = 0; k < n; ++k) {
    node[k] = tree[k] * 2 * leaves_ + 1;
    x[k] = u[k];
  }
  for (int level = 0; level < depth_; ++level) {
    for (int64_t k = 0; k < n; ++k) {
      if (k + kPrefetchAhead < n) {
        const int64_t a = k + kPrefetchAhead;
        const int64_t base_a = tree[a] * 2 * leaves_;
        __builtin_prefetch(nodes_ + base_a + 2 * (node[a] - base_a));
      }
      const int64_t base = tree[k] * 2 * leaves_;
      const int64_t child = base + 2 * (node[k] - base);
      const double left = nodes_[child];
      const double right = nodes_[child + 1];
      if (x[k] < left || right <= 0.0) {
        node[k] = child;
      } else {
        x[k] -= left;
        node[k] = child + 1;
      }
    }
  }
  for (int64_t k = 0; k < n; ++k) leaf_out[k] = node[k] - tree[k] * 2 * leaves_ - leaves_;
}

}  // namespace mtrl
