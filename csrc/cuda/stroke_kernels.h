// CUDA launchers of the stroke ops over raw pointers (csrc/cuda/stroke.cu; no torch headers
// there, nvcc time). The registration in stroke_ops_cuda.cpp checks arguments and passes
// pointers, sizes and the stream. Each launcher returns the launch's cudaError_t.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "diffaccel/common.h"

namespace diffaccel {
namespace cuda {

// Block grids of up to kMaxScales stroke scales on an H x W plane, passed by value to kernels.
// The block means of one plane are laid out scale after scale: [off[j] + I * wk[j] + J].
struct ScaleGrid {
  int J;
  int64_t k[kMaxScales], hk[kMaxScales], wk[kMaxScales], off[kMaxScales], total;
};
ScaleGrid make_grid(const int64_t* scales, int J, int64_t H, int64_t W);

// means[B*C, grid.total] = block means of x[B, C, H, W] at every scale.
template <typename T>
cudaError_t stroke_means(const T* x, const ScaleGrid& grid, int64_t BC, int64_t H, int64_t W,
                         float* means, cudaStream_t stream);

// The same for the noise that stroke_noise draws (regenerated from the stream, never stored).
cudaError_t stroke_noise_means(const int64_t* seeds, bool per_sample, uint64_t offset,
                               int32_t dist, const ScaleGrid& grid, int64_t B, int64_t C,
                               int64_t H, int64_t W, float* means, cudaStream_t stream);

// y = A_w x, given the block means of x.
template <typename T>
cudaError_t stroke_blur(const T* x, const float* w, const float* means, const ScaleGrid& grid,
                        int64_t B, int64_t C, int64_t H, int64_t W, T* y, cudaStream_t stream);

// The one-pass tile kernels (power-of-two scales <= 64, see launch_grid.h stroke_tile): x read
// once, block sums in shared memory. stroke_tile_path says whether they can take a call.
bool stroke_tile_path(const int64_t* scales, int J, int64_t B, int64_t C, int64_t H, int64_t W);

template <typename T>
cudaError_t stroke_blur_tile(const T* x, const float* w, const int64_t* scales, int J, int64_t B,
                             int64_t C, int64_t H, int64_t W, T* y, cudaStream_t stream);

template <typename T>
cudaError_t stroke_noise_tile(const T* x0, const float* alpha, const float* sigma,
                              const float* wx, const float* we, const int64_t* scales, int J,
                              int64_t B, int64_t C, int64_t H, int64_t W, const int64_t* seeds,
                              bool per_sample, uint64_t offset, int32_t dist, int32_t target,
                              T* xt, T* tgt, cudaStream_t stream);

// x_t and target from x0 and the block means of x0 and of the noise (noise redrawn in-kernel).
template <typename T>
cudaError_t stroke_noise(const T* x0, const float* alpha, const float* sigma, const float* wx,
                         const float* we, const float* means_x, const float* means_e,
                         const ScaleGrid& grid, int64_t B, int64_t C, int64_t H, int64_t W,
                         const int64_t* seeds, bool per_sample, uint64_t offset, int32_t dist,
                         int32_t target, T* xt, T* tgt, cudaStream_t stream);

}  // namespace cuda
}  // namespace diffaccel
