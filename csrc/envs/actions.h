// The action rule shared by every backend of mtrl.envs (TaskPool.check_actions): used entries
// must be finite, values are clipped to [-1, 1], padded entries past an env's action size are
// ignored (non-finite padding becomes 0).
#pragma once

#include <cstdint>
#include <vector>

namespace mtrl {

// actions and out are [n, dim] row-major; used[k] is env k's action size (clamped to [0, dim]).
// Writes the clipped actions to out (which may alias actions) and returns the envs with a NaN
// or inf in a used entry, in increasing order; out is fully written either way.
std::vector<int> ClipActions(const float* actions, int64_t n, int64_t dim, const int64_t* used,
                             float* out);

}  // namespace mtrl
