// VRG CPU kernels over raw pointers (the math lives in csrc/include/diffaccel/vrg.h).
#pragma once
#include <cstdint>

namespace diffaccel {
namespace cpu {

// table[num_bins, 3] (float64, zeroed by the caller) += per bin: element count, sum e, sum e^2,
// e = pred - target over the D elements of each sample; pred, target [B, D] contiguous, T float,
// c10::Half or c10::BFloat16. Deterministic (fixed chunking, serial combination). Returns the
// first sample whose bin is outside [0, num_bins), or -1.
template <typename T>
int64_t vrg_error_moments(const T* pred, const T* target, const int64_t* bins, int64_t B,
                          int64_t D, int64_t num_bins, double* table);

// cpe[K] of trajectories abar[K, N]; with grad != nullptr also d cpe / d abar into grad[K, N].
// grid[M] increasing, mse[M].
void vrg_cumulative_error(const double* abar, int64_t K, int64_t N, const double* grid,
                          const double* mse, int64_t M, int32_t solver, double* cpe,
                          double* grad);

}  // namespace cpu
}  // namespace diffaccel
