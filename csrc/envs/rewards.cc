// Port of dm_control/utils/rewards.py: _sigmoids and tolerance, evaluated for one scalar.
#include "envs/rewards.h"

#include <cmath>

namespace mtrl {
namespace {

double Sigmoids(double x, double value_at_1, Sigmoid sigmoid) {
  switch (sigmoid) {
    case Sigmoid::kGaussian: {
      const double scale = std::sqrt(-2.0 * std::log(value_at_1));
      return std::exp(-0.5 * (x * scale) * (x * scale));
    }
    case Sigmoid::kHyperbolic: {
      const double scale = std::acosh(1.0 / value_at_1);
      return 1.0 / std::cosh(x * scale);
    }
    case Sigmoid::kLongTail: {
      const double scale = std::sqrt(1.0 / value_at_1 - 1.0);
      return 1.0 / ((x * scale) * (x * scale) + 1.0);
    }
    case Sigmoid::kReciprocal: {
      const double scale = 1.0 / value_at_1 - 1.0;
      return 1.0 / (std::abs(x) * scale + 1.0);
    }
    case Sigmoid::kCosine: {
      const double scale = std::acos(2.0 * value_at_1 - 1.0) / M_PI;
      const double scaled_x = x * scale;
      return std::abs(scaled_x) < 1.0 ? (1.0 + std::cos(M_PI * scaled_x)) / 2.0 : 0.0;
    }
    case Sigmoid::kLinear: {
      const double scaled_x = x * (1.0 - value_at_1);
      return std::abs(scaled_x) < 1.0 ? 1.0 - scaled_x : 0.0;
    }
    case Sigmoid::kQuadratic: {
      const double scaled_x = x * std::sqrt(1.0 - value_at_1);
      return std::abs(scaled_x) < 1.0 ? 1.0 - scaled_x * scaled_x : 0.0;
    }
    case Sigmoid::kTanhSquared: {
      const double scale = std::atanh(std::sqrt(1.0 - value_at_1));
      const double t = std::tanh(x * scale);
      return 1.0 - t * t;
    }
  }
  return 0.0;
}

}  // namespace

double Tolerance(double x, double bounds_lower, double bounds_upper, double margin,
                 Sigmoid sigmoid, double value_at_margin) {
  const bool in_bounds = bounds_lower <= x && x <= bounds_upper;
  if (margin == 0.0) return in_bounds ? 1.0 : 0.0;
  if (in_bounds) return 1.0;
  const double d = (x < bounds_lower ? bounds_lower - x : x - bounds_upper) / margin;
  return Sigmoids(d, value_at_margin, sigmoid);
}

}  // namespace mtrl
