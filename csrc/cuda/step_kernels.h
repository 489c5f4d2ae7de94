// CUDA launchers of the fused sampler step (raw pointers, no torch headers; the registration is
// csrc/cuda/step_ops_cuda.cpp). Returns the launch's cudaError_t.
#pragma once
#include <cuda_runtime.h>

#include "diffaccel/step.h"

namespace diffaccel {
namespace cuda {

// scratch: [B, 3 + P] float64, zeroed by the caller: per-sample |s|^2, s.z, x.s and the probes'
// t_p, summed over blocks with atomicAdd; a second kernel turns them into the increments.
template <typename T>
cudaError_t sample_step(const StepArgs<T>& args, double* scratch, cudaStream_t stream);

}  // namespace cuda
}  // namespace diffaccel
