// Helpers shared by the task ports: dm_control/suite/utils/randomizers.py and small accessors.
#pragma once

#include <cmath>

#include "envs/physics.h"
#include "common/rng.h"

namespace mtrl::tasks {

// randomizers.random_limited_quaternion.
inline void RandomLimitedQuaternion(Rng& rng, double limit, double* quat) {
  double axis[3] = {rng.Normal(), rng.Normal(), rng.Normal()};
  mju_normalize3(axis);
  const double angle = rng.Uniform() * limit;
  mju_axisAngle2Quat(quat, axis, angle);
}

// randomizers.randomize_limited_and_rotational_joints: limited hinges/slides uniform in range,
// unlimited hinges uniform in [-pi, pi], balls and free-joint rotations uniform on the 3-sphere
// (limited balls within their angle); free-joint positions are kept.
inline void RandomizeLimitedAndRotationalJoints(Physics& p, Rng& rng) {
  for (int j = 0; j < p.m->njnt; ++j) {
    const int type = p.m->jnt_type[j];
    double* q = p.d->qpos + p.m->jnt_qposadr[j];
    const double lo = p.m->jnt_range[2 * j], hi = p.m->jnt_range[2 * j + 1];
    if (p.m->jnt_limited[j]) {
      if (type == mjJNT_HINGE || type == mjJNT_SLIDE) {
        q[0] = rng.Uniform(lo, hi);
      } else if (type == mjJNT_BALL) {
        RandomLimitedQuaternion(rng, hi, q);
      }
    } else if (type == mjJNT_HINGE) {
      q[0] = rng.Uniform(-M_PI, M_PI);
    } else if (type == mjJNT_BALL) {
      for (int i = 0; i < 4; ++i) q[i] = rng.Normal();
      mju_normalize4(q);
    } else if (type == mjJNT_FREE) {
      for (int i = 0; i < 4; ++i) q[3 + i] = rng.Uniform();
      mju_normalize4(q + 3);
    }
  }
}

// Element (r, c) of a body's rotation matrix, dm_control's xmat['body', 'rc'] (x=0, y=1, z=2).
inline double XMat(const Physics& p, int body, int r, int c) { return p.d->xmat[9 * body + 3 * r + c]; }

// The mean over actuators of tolerance(ctrl, margin=1, value_at_margin=0, sigmoid='quadratic').
double SmallControlMean(const Physics& p);

}  // namespace mtrl::tasks
