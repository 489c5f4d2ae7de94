// CUDA launchers of the noise ops over raw pointers (csrc/cuda/noise.cu; no torch headers there).
// The registration in noise_ops_cuda.cpp checks arguments and passes pointers, sizes and the
// stream. Each launcher returns the launch's cudaError_t.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace diffaccel {
namespace cuda {

// out[n, 4] = the four uint32 Philox outputs (as int64) for element n of a (B, D) layout.
cudaError_t philox_uint32(const int64_t* seeds, bool per_sample, int64_t B, int64_t D,
                          uint64_t offset, int64_t* out, cudaStream_t stream);

// out[B, D] = draws of law `dist` (docs/math.md Section 1 layout).
template <typename T>
cudaError_t noise(const int64_t* seeds, bool per_sample, int64_t B, int64_t D, uint64_t offset,
                  int32_t dist, T* out, cudaStream_t stream);

}  // namespace cuda
}  // namespace diffaccel
