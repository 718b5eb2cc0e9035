// C++ port of dm_control/utils/rewards.py (`tolerance` and its sigmoids), argument names kept.
#pragma once

namespace mtrl {

enum class Sigmoid { kGaussian, kHyperbolic, kLongTail, kReciprocal, kCosine, kLinear, kQuadratic,
                     kTanhSquared };

// dm_control's _DEFAULT_VALUE_AT_MARGIN.
inline constexpr double kDefaultValueAtMargin = 0.1;

// 1 inside [bounds_lower, bounds_upper]; outside, decays with the distance to the nearest bound
// divided by `margin` through `sigmoid`, equal to `value_at_margin` at distance `margin`.
// margin == 0 gives a hard 0/1 indicator. Arguments are assumed valid (checked by the tasks'
// constants): lower <= upper, margin >= 0, value_at_margin in the sigmoid's allowed range.
double Tolerance(double x, double bounds_lower, double bounds_upper, double margin = 0.0,
                 Sigmoid sigmoid = Sigmoid::kGaussian,
                 double value_at_margin = kDefaultValueAtMargin);

}  // namespace mtrl
