#include "replay/sum_tree.h"

#include <algorithm>
#include <cmath>

namespace mtrl {
namespace {

constexpr int64_t kFan = KaryLayout::kFanout;
constexpr int64_t kPrefetchAhead = 16;  // samples ahead; flat between 8 and 48 here

int64_t RoundUp8(int64_t n) { return (n + kFan - 1) / kFan * kFan; }

// Sequential sum of the 8 children starting at c (the one summation order used everywhere).
inline double SumChildren(const double* c) {
  double s = c[0];
  for (int m = 1; m < kFan; ++m) s += c[m];
  return s;
}

// Picks the child of the 8 at c whose prefix range holds x (0 <= x < their sum), and leaves x
// as the offset inside it. Branch-free halving over pair sums (3 dependent steps instead of an
// 8-long add chain, no mispredicted branches); a side is entered only if its sum is positive,
// so a child of value 0 is never returned. Rounding can leave x >= the child: clamp below it.
inline int64_t PickChild(const double* c, double* x) {
  // Selections are done by indexing and by multiplying with 0/1 (exact), which compiles to
  // straight-line code; a ?: on doubles tends to become a data-dependent branch.
  const double pairs[4] = {c[0] + c[1], c[2] + c[3], c[4] + c[5], c[6] + c[7]};
  const double halves[2] = {pairs[0] + pairs[1], pairs[2] + pairs[3]};
  double y = *x;
  const int64_t r4 = (y >= halves[0]) & (halves[1] > 0.0);
  y -= halves[0] * static_cast<double>(r4);
  const int64_t r2 = (y >= pairs[2 * r4]) & (pairs[2 * r4 + 1] > 0.0);
  y -= pairs[2 * r4] * static_cast<double>(r2);
  const int64_t pair = 4 * r4 + 2 * r2;
  const int64_t r1 = (y >= c[pair]) & (c[pair + 1] > 0.0);
  y -= c[pair] * static_cast<double>(r1);
  const int64_t k = pair + r1;
  if (__builtin_expect(!(y < c[k]), 0)) y = std::nextafter(c[k], 0.0);
  *x = y < 0.0 ? 0.0 : y;
  return k;
}

void UpdatePath(double* tree, const KaryLayout& l, int64_t i) {
  for (int j = 1; j <= l.depth(); ++j) {
    i /= kFan;
    tree[l.offset[j] + i] = SumChildren(tree + l.offset[j - 1] + i * kFan);
  }
}

void RebuildTree(double* tree, const KaryLayout& l) {
  for (int j = 1; j <= l.depth(); ++j) {
    for (int64_t i = 0; i < l.count[j]; ++i) {
      tree[l.offset[j] + i] = SumChildren(tree + l.offset[j - 1] + i * kFan);
    }
  }
}

}  // namespace

KaryLayout::KaryLayout(int64_t leaves) {
  int64_t n = leaves;
  int64_t at = 0;
  while (true) {
    count.push_back(n);
    offset.push_back(at);
    at += RoundUp8(n);
    if (n == 1) break;
    n = (n + kFan - 1) / kFan;
  }
  stride = at;
}

PriorityTrees::PriorityTrees(int64_t num_trees, int64_t capacity)
    : num_trees_(num_trees), layout_(capacity), top_layout_(num_trees) {
  storage_ = PageBuffer(static_cast<size_t>(num_trees * layout_.stride) * sizeof(double));
  nodes_ = storage_.as<double>();
  top_.assign(static_cast<size_t>(top_layout_.stride), 0.0);
}

uint64_t PriorityTrees::Bytes(int64_t num_trees, int64_t capacity) {
  return static_cast<uint64_t>(num_trees * KaryLayout(capacity).stride +
                               KaryLayout(num_trees).stride) *
         sizeof(double);
}

void PriorityTrees::Set(int64_t t, int64_t i, double value) {
  double* tree = nodes_ + t * layout_.stride;
  tree[i] = value;
  UpdatePath(tree, layout_, i);
}

void PriorityTrees::SyncTop(int64_t t) {
  top_[t] = TreeTotal(t);
  UpdatePath(top_.data(), top_layout_, t);
}

void PriorityTrees::Rebuild(int64_t t) {
  RebuildTree(nodes_ + t * layout_.stride, layout_);
  SyncTop(t);
}

void PriorityTrees::SetBatch(const int64_t* tree, const int64_t* leaf, const double* value,
                             int64_t n) {
  scratch_.resize(static_cast<size_t>(n));
  int64_t* node = scratch_.data();
  for (int64_t k = 0; k < n; ++k) {
    nodes_[tree[k] * layout_.stride + leaf[k]] = value[k];
    node[k] = leaf[k];
  }
  // Recompute ancestors one level at a time for the whole batch: independent loads overlap.
  // Once a level has no more nodes per tree than the batch has rows, recomputing the whole
  // level of each touched tree is cheaper than one path per row (paths share the top).
  mark_.resize(static_cast<size_t>(num_trees_), 0);
  int64_t distinct = 0;
  for (int64_t k = 0; k < n; ++k) {
    distinct += !mark_[tree[k]];
    mark_[tree[k]] = 1;
  }
  for (int64_t k = 0; k < n; ++k) mark_[tree[k]] = 0;
  int j = 1;
  for (; j <= layout_.depth() && layout_.count[j] * distinct > n; ++j) {
    const int64_t up = layout_.offset[j];
    const int64_t down = layout_.offset[j - 1];
    for (int64_t k = 0; k < n; ++k) {
      double* base = nodes_ + tree[k] * layout_.stride;
      node[k] /= kFan;
      base[up + node[k]] = SumChildren(base + down + node[k] * kFan);
    }
  }
  for (int64_t k = 0; k < n; ++k) {
    if (!mark_[tree[k]]) {
      mark_[tree[k]] = 1;
      double* base = nodes_ + tree[k] * layout_.stride;
      for (int jj = j; jj <= layout_.depth(); ++jj) {
        for (int64_t i = 0; i < layout_.count[jj]; ++i) {
          base[layout_.offset[jj] + i] = SumChildren(base + layout_.offset[jj - 1] + i * kFan);
        }
      }
      SyncTop(tree[k]);
    }
  }
  for (int64_t k = 0; k < n; ++k) mark_[tree[k]] = 0;
}

void PriorityTrees::FindTrees(double* u, int64_t n, int64_t* tree_out) const {
  const KaryLayout& l = top_layout_;
  const double total = Total();
  for (int64_t k = 0; k < n; ++k) {
    double x = u[k] < total ? u[k] : std::nextafter(total, 0.0);
    int64_t i = 0;
    for (int j = l.depth(); j >= 1; --j) {
      i = i * kFan + PickChild(top_.data() + l.offset[j - 1] + i * kFan, &x);
    }
    tree_out[k] = i;
    u[k] = x;
  }
}

void PriorityTrees::FindLeaves(const int64_t* tree, const double* u, int64_t n,
                               int64_t* leaf_out) const {
  const KaryLayout& l = layout_;
  scratch_.resize(static_cast<size_t>(n));
  int64_t* node = leaf_out;
  double* x = reinterpret_cast<double*>(scratch_.data());
  for (int64_t k = 0; k < n; ++k) {
    const double total = TreeTotal(tree[k]);
    x[k] = u[k] < total ? u[k] : std::nextafter(total, 0.0);
    node[k] = 0;
  }
  for (int j = l.depth(); j >= 1; --j) {
    const int64_t down = l.offset[j - 1];
    // Levels of at most 4096 nodes in all stay in cache: prefetch only for the big ones.
    const int64_t ahead = l.count[j - 1] * num_trees_ > 4096 ? kPrefetchAhead : n;
    for (int64_t k = 0; k < n; ++k) {
      if (k + ahead < n) {
        const int64_t a = k + ahead;
        __builtin_prefetch(nodes_ + tree[a] * l.stride + down + node[a] * kFan);
      }
      const double* children = nodes_ + tree[k] * l.stride + down + node[k] * kFan;
      node[k] = node[k] * kFan + PickChild(children, &x[k]);
    }
  }
}

}  // namespace mtrl
