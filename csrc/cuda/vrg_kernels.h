// VRG CUDA launchers over raw pointers (no torch headers in the .cu; registration in
// vrg_ops_cuda.cpp). Each returns the launch's cudaError_t.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace diffaccel {
namespace cuda {

// table[num_bins, 3] (float64, zeroed by the caller) += (count, sum e, sum e^2) per bin,
// e = pred - target over each sample's D elements; pred, target [B, D] contiguous. One block per
// (sample, chunk of `chunk` elements; grid::split_chunk): float32 errors, float64 per-thread
// sums, a block reduction into partial [B, splits, 2] (uninitialized scratch), then one thread
// per bin adds its samples' sums in a fixed order. Samples whose bin is outside [0, num_bins)
// are skipped.
template <typename T>
cudaError_t vrg_error_moments(const T* pred, const T* target, const int64_t* bins, int64_t B,
                              int64_t D, int64_t num_bins, double* table, double* partial,
                              int64_t chunk, cudaStream_t stream);

// cpe[K] of abar[K, N]; with grad != nullptr also d cpe / d abar into grad[K, N]. One thread per
// trajectory running vrg_cpe_row of csrc/include/diffaccel/vrg.h.
cudaError_t vrg_cumulative_error(const double* abar, int64_t K, int64_t N, const double* grid,
                                 const double* mse, int64_t M, int32_t solver, double* cpe,
                                 double* grad, cudaStream_t stream);

}  // namespace cuda
}  // namespace diffaccel
