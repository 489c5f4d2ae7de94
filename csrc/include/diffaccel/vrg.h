// Variance-Reduction Guidance, docs/math.md Section 5: the per-step cumulative-prediction-error terms,
// their derivatives, MSE interpolation and the error-moment update, shared by the CPU and CUDA
// kernels (the Triton kernels in kernels/vrg.py write the same formulas).
//
// A trajectory is a row a[0..N) of abar values, a[0] the least noisy level, a[N-1] where sampling
// starts; the last step goes to abar = 1. With s_q = sqrt((1 - a_q) / a_q) (s_{-1} = 0), in
// x / sqrt(abar) coordinates step p (from level p to p - 1) of a sampler that is linear in the
// eps-predictions adds the prediction errors with weights W_p, and
//
//     cpe = sum_p W_p^2 MSE(a_p),
//
//   ddim  (= DPM-Solver-1):  W_p = -d_p,                         d_p = s_p - s_{p-1}
//   dpm2m (DPM-Solver-2M):   W_p = -d_p (1 + c_p) + d_{p-1} c_{p-1},
//                            c_p = h_p / (2 h_{p+1}),  h_p = log(s_p / s_{p-1}) (log-SNR step),
//                            c_p = 0 for the first step (p = N-1, no history) and the last
//                            (p = 0, onto abar = 1).
// W_p depends on s_{p-2}, s_{p-1}, s_p, s_{p+1} only, so the gradient is a short stencil.
#pragma once
#include <cmath>

#include "diffaccel/common.h"

namespace diffaccel {

enum VrgSolver : int32_t { kDdim = 0, kDpm2m = 1 };

// e = pred - target in float32 (the fast kernels' arithmetic); the moments add e and e^2 in
// float64.
DA_HOST_DEVICE float vrg_error(float pred, float target) { return pred - target; }

// Interval j in [0, M-2] with grid[j] <= x < grid[j+1] (clamped to the ends), by binary search
// on the increasing grid [M], M >= 2.
DA_HOST_DEVICE int64_t vrg_interval(const double* grid, int64_t M, double x) {
  int64_t lo = 0, hi = M;  // number of grid points <= x lies in [lo, hi]
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (grid[mid] <= x) lo = mid + 1; else hi = mid;
  }
  int64_t j = lo - 1;
  if (j < 0) j = 0;
  if (j > M - 2) j = M - 2;
  return j;
}

// MSE(x) and its derivative: linear in abar between grid points (exact at them), constant
// beyond the grid's ends (slope 0 there).
DA_HOST_DEVICE void vrg_mse(const double* grid, const double* mse, int64_t M, double x,
                            double& value, double& slope) {
  const int64_t j = vrg_interval(grid, M, x);
  const double g0 = grid[j], g1 = grid[j + 1], m0 = mse[j], m1 = mse[j + 1];
  if (x < grid[0]) { value = mse[0]; slope = 0.0; return; }
  if (x > grid[M - 1]) { value = mse[M - 1]; slope = 0.0; return; }
  const double t = (x - g0) / (g1 - g0);
  slope = (m1 - m0) / (g1 - g0);
  value = (1.0 - t) * m0 + t * m1;  // exact at both grid points of the interval
}

// s = sqrt((1 - abar) / abar) and ds / dabar = -1 / (2 s abar^2).
DA_HOST_DEVICE double vrg_s(double a) { return sqrt((1.0 - a) / a); }
DA_HOST_DEVICE double vrg_ds(double a, double s) { return -0.5 / (s * a * a); }

// W_p and its partials w.r.t. s_{p-2}, s_{p-1}, s_p, s_{p+1} (dw[0..3]). sm1 = 0 for p = 0;
// sm2 and sp1 are read only where the step needs them (p >= 2, p <= N-2).
struct VrgTerm {
  double w, dw[4];
};

DA_HOST_DEVICE VrgTerm vrg_term(int32_t solver, int64_t p, int64_t N, double sm2, double sm1,
                                double s0, double sp1) {
  VrgTerm t;
  const double d = s0 - sm1;
  t.w = -d;
  t.dw[0] = 0.0; t.dw[1] = 1.0; t.dw[2] = -1.0; t.dw[3] = 0.0;
  if (solver != kDpm2m) return t;
  // c_p (step p is second order for 1 <= p <= N-2)
  if (p >= 1 && p <= N - 2) {
    const double hp = log(s0 / sm1), hn = log(sp1 / s0);
    const double c = hp / (2.0 * hn);
    const double dc_m1 = -1.0 / (2.0 * hn * sm1);
    const double dc_0 = (1.0 / (2.0 * hn) + hp / (2.0 * hn * hn)) / s0;
    const double dc_p1 = -hp / (2.0 * hn * hn * sp1);
    t.w -= d * c;
    t.dw[1] += c - d * dc_m1;
    t.dw[2] += -c - d * dc_0;
    t.dw[3] += -d * dc_p1;
  }
  // c_{p-1} (step p - 1 is second order for 2 <= p <= N-1): + d_{p-1} c_{p-1}
  if (p >= 2 && p <= N - 1) {
    const double dp = sm1 - sm2;
    const double hp = log(sm1 / sm2), hn = log(s0 / sm1);
    const double c = hp / (2.0 * hn);
    const double dc_m2 = -1.0 / (2.0 * hn * sm2);
    const double dc_m1 = (1.0 / (2.0 * hn) + hp / (2.0 * hn * hn)) / sm1;
    const double dc_0 = -hp / (2.0 * hn * hn * s0);
    t.w += dp * c;
    t.dw[0] += -c + dp * dc_m2;
    t.dw[1] += c + dp * dc_m1;
    t.dw[2] += dp * dc_0;
  }
  return t;
}

// cpe of one trajectory a[N]; with grad != nullptr also d cpe / d a into grad[N]. Sequential over
// the row; the stencil's contributions are pushed into grad, each position finished (times
// ds/dabar, plus its own MSE slope term) as soon as the last term touching it is done.
DA_HOST_DEVICE double vrg_cpe_row(int32_t solver, const double* a, int64_t N, const double* grid,
                                  const double* mse, int64_t M, double* grad) {
  double cpe = 0.0;
  double direct[3] = {0.0, 0.0, 0.0};  // w_q^2 MSE'(a_q), ring over q % 3
  if (grad)
    for (int64_t q = 0; q < N; ++q) grad[q] = 0.0;
  for (int64_t p = 0; p < N; ++p) {
    const double sm2 = p >= 2 ? vrg_s(a[p - 2]) : 0.0;
    const double sm1 = p >= 1 ? vrg_s(a[p - 1]) : 0.0;
    const double s0 = vrg_s(a[p]);
    const double sp1 = p + 1 < N ? vrg_s(a[p + 1]) : 0.0;
    const VrgTerm t = vrg_term(solver, p, N, sm2, sm1, s0, sp1);
    double m, dm;
    vrg_mse(grid, mse, M, a[p], m, dm);
    cpe += t.w * t.w * m;
    if (grad) {
      const double g = 2.0 * t.w * m;
      for (int k = 0; k < 4; ++k) {
        const int64_t q = p - 2 + k;
        if (q >= 0 && q < N) grad[q] += g * t.dw[k];
      }
      direct[p % 3] = t.w * t.w * dm;
      if (p >= 2) {
        const int64_t q = p - 2;
        grad[q] = grad[q] * vrg_ds(a[q], vrg_s(a[q])) + direct[q % 3];
      }
    }
  }
  if (grad) {
    for (int64_t q = (N >= 2 ? N - 2 : 0); q < N; ++q)
      grad[q] = grad[q] * vrg_ds(a[q], vrg_s(a[q])) + direct[q % 3];
  }
  return cpe;
}

}  // namespace diffaccel
