// Shared task helpers (see common.h).
#include "envs/tasks/common.h"

#include "envs/rewards.h"

namespace mtrl::tasks {

double SmallControlMean(const Physics& p) {
  double sum = 0;
  for (int i = 0; i < p.m->nu; ++i) {
    sum += Tolerance(p.d->ctrl[i], 0, 0, 1, Sigmoid::kQuadratic, 0.0);
  }
  return p.m->nu > 0 ? sum / p.m->nu : 0.0;
}

}  // namespace mtrl::tasks
