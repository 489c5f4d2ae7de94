// CUDA registrations of the noise ops philox_uint32 and noise: the argument checks shared with
// the CPU side (csrc/noise_checks.h), the device guard and stream, and the launchers of noise.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../noise_checks.h"
#include "launch.h"
#include "noise_kernels.h"

namespace diffaccel {
namespace {

using at::Tensor;

Tensor philox_uint32_cuda(const Tensor& seeds, at::IntArrayRef shape, int64_t offset) {
  const c10::cuda::CUDAGuard guard(seeds.device());
  const NoiseCall c = prepare_philox_uint32(seeds, shape, offset);
  DA_CHECK_LAUNCH(cuda::philox_uint32(c.seeds.data_ptr<int64_t>(), c.per_sample, c.B, c.D,
                                      static_cast<uint64_t>(offset), c.out.data_ptr<int64_t>(),
                                      stream_of(c.seeds)));
  return c.out;
}

Tensor noise_cuda(const Tensor& seeds, at::IntArrayRef shape, int64_t offset, int64_t dist,
                  at::ScalarType dtype) {
  const c10::cuda::CUDAGuard guard(seeds.device());
  const NoiseCall c = prepare_noise(seeds, shape, offset, dist, dtype);
  DA_DISPATCH_FLOATS(dtype, "diffaccel::noise", [&] {
    DA_CHECK_LAUNCH(cuda::noise<scalar_t>(c.seeds.data_ptr<int64_t>(), c.per_sample, c.B, c.D,
                                          static_cast<uint64_t>(offset), static_cast<int32_t>(dist),
                                          c.out.data_ptr<scalar_t>(), stream_of(c.seeds)));
  });
  return c.out;
}

}  // namespace
}  // namespace diffaccel

TORCH_LIBRARY_IMPL(diffaccel, CUDA, m) {
  m.impl("philox_uint32", &diffaccel::philox_uint32_cuda);
  m.impl("noise", &diffaccel::noise_cuda);
}
