// Port of scipy.ndimage.zoom(input, zoom, order=3, mode='constant', grid_mode=False) for 2-D
// arrays whose output points all fall inside the input grid (as zoom's do): cubic B-spline
// coefficients with mirror boundaries (scipy's exact boundary handling for these modes), then
// separable evaluation at x_out * (n_in - 1) / (n_out - 1). Used by quadruped-escape's terrain;
// matches scipy to ~1e-15 (tests/test_envs_engine.py).
#pragma once

#include <cmath>
#include <vector>

namespace mtrl::tasks {

// Cubic B-spline prefilter of one line (stride `step`), in place; mirror boundary conditions.
inline void SplinePrefilter(double* c, int n, int step) {
  if (n < 2) return;
  const double z = std::sqrt(3.0) - 2.0;
  for (int k = 0; k < n; ++k) c[k * step] *= 6.0;  // gain (1 - z)(1 - 1/z)
  // Causal init: the full mirrored sum (period 2n - 2).
  double sum = 0, zk = 1;
  for (int k = 0; k < 2 * n - 2; ++k) {
    const int i = k < n ? k : 2 * n - 2 - k;
    sum += zk * c[i * step];
    zk *= z;
  }
  c[0] = sum / (1 - std::pow(z, 2 * n - 2));
  for (int k = 1; k < n; ++k) c[k * step] += z * c[(k - 1) * step];
  c[(n - 1) * step] = (z / (z * z - 1)) * (c[(n - 1) * step] + z * c[(n - 2) * step]);
  for (int k = n - 2; k >= 0; --k) c[k * step] = z * (c[(k + 1) * step] - c[k * step]);
}

inline double CubicBSpline(double x) {
  const double ax = std::abs(x);
  if (ax < 1) return 2.0 / 3.0 - ax * ax + ax * ax * ax / 2;
  if (ax < 2) return (2 - ax) * (2 - ax) * (2 - ax) / 6;
  return 0;
}

// Evaluates the spline with coefficients c[0..n) (stride `step`) at n_out evenly spaced points
// spanning [0, n - 1]; out has stride `out_step`.
inline void SplineResample(const double* c, int n, int step, double* out, int n_out, int out_step) {
  for (int i = 0; i < n_out; ++i) {
    const double x = n_out > 1 ? i * (static_cast<double>(n - 1) / (n_out - 1)) : 0.0;
    const int f = static_cast<int>(std::floor(x));
    double v = 0;
    for (int j = f - 1; j <= f + 2; ++j) {
      int m = j < 0 ? -j : j;
      if (m > n - 1) m = 2 * (n - 1) - m;
      if (n == 1) m = 0;
      v += c[m * step] * CubicBSpline(x - j);
    }
    out[i * out_step] = v;
  }
}

// zoom of a row-major rows x cols array to out_rows x out_cols (row-major).
inline std::vector<double> SplineZoom2D(std::vector<double> a, int rows, int cols, int out_rows,
                                        int out_cols) {
  for (int r = 0; r < rows; ++r) SplinePrefilter(a.data() + r * cols, cols, 1);
  for (int c = 0; c < cols; ++c) SplinePrefilter(a.data() + c, rows, cols);
  std::vector<double> tmp(static_cast<size_t>(out_rows) * cols), out(static_cast<size_t>(out_rows) * out_cols);
  for (int c = 0; c < cols; ++c) SplineResample(a.data() + c, rows, cols, tmp.data() + c, out_rows, cols);
  for (int r = 0; r < out_rows; ++r) {
    SplineResample(tmp.data() + static_cast<size_t>(r) * cols, cols, 1, out.data() + static_cast<size_t>(r) * out_cols,
                   out_cols, 1);
  }
  return out;
}

}  // namespace mtrl::tasks
