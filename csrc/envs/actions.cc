// Implementation of ClipActions (see actions.h).
#include "envs/actions.h"

#include <algorithm>
#include <cmath>

namespace mtrl {

std::vector<int> ClipActions(const float* actions, int64_t n, int64_t dim, const int64_t* used,
                             float* out) {
  std::vector<int> bad;
  for (int64_t k = 0; k < n; ++k) {
    const float* a = actions + k * dim;
    float* o = out + k * dim;
    const int64_t u = std::clamp<int64_t>(used[k], 0, dim);
    bool finite = true;
    for (int64_t i = 0; i < dim; ++i) {
      const float v = a[i];
      if (!std::isfinite(v)) {
        finite = finite && i >= u;
        o[i] = 0.0f;  // padding (ignored by the env); in a used entry the caller raises
      } else {
        o[i] = std::min(1.0f, std::max(-1.0f, v));
      }
    }
    if (!finite) bad.push_back(static_cast<int>(k));
  }
  return bad;
}

}  // namespace mtrl
