// CUDA launchers of the fused sampler step (raw pointers, no torch headers; the registration is
// csrc/cuda/step_ops_cuda.cpp). Returns the launch's cudaError_t.
#pragma once
#include <cuda_runtime.h>

#include "diffaccel/step.h"

namespace diffaccel {
namespace cuda {

// partial: [B, splits, 3 + P' + Y] float64 (uninitialized; needed only when logp is tracked), with
// splits = grid::splits(D, chunk) and chunk = grid::split_chunk(B, D, 16 / sizeof(T), SMs): each
// block's |s|^2, s.z, x.s, the probes' t_p (P' = P with probes and K > 0, else 0) and, with the
// y line (Y = 2, else 0), |z|^2 and |x_new|^2; a second kernel adds them up in a fixed order.
template <typename T>
cudaError_t sample_step(const StepArgs<T>& args, double* partial, int64_t chunk,
                        cudaStream_t stream);

}  // namespace cuda
}  // namespace diffaccel
