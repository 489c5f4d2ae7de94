// CPU registrations of the noise ops philox_uint32 and noise (schemas, fakes and the Triton
// versions: diffaccel/ops/noise.py; checks shared with CUDA: csrc/noise_checks.h; kernels:
// csrc/cpu/noise_cpu.cpp).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/noise_kernels.h"
#include "noise_checks.h"

namespace diffaccel {
namespace {

using at::Tensor;

Tensor philox_uint32_cpu(const Tensor& seeds, at::IntArrayRef shape, int64_t offset) {
  const NoiseCall c = prepare_philox_uint32(seeds, shape, offset);
  cpu::philox_uint32(c.seeds.data_ptr<int64_t>(), c.per_sample, c.B, c.D,
                     static_cast<uint64_t>(offset), c.out.data_ptr<int64_t>());
  return c.out;
}

Tensor noise_cpu(const Tensor& seeds, at::IntArrayRef shape, int64_t offset, int64_t dist,
                 at::ScalarType dtype) {
  const NoiseCall c = prepare_noise(seeds, shape, offset, dist, dtype);
  DA_DISPATCH_FLOATS(dtype, "diffaccel::noise", [&] {
    cpu::noise<scalar_t>(c.seeds.data_ptr<int64_t>(), c.per_sample, c.B, c.D,
                         static_cast<uint64_t>(offset), static_cast<int32_t>(dist),
                         c.out.data_ptr<scalar_t>());
  });
  return c.out;
}

}  // namespace
}  // namespace diffaccel

TORCH_LIBRARY_IMPL(diffaccel, CPU, m) {
  m.impl("philox_uint32", &diffaccel::philox_uint32_cpu);
  m.impl("noise", &diffaccel::noise_cpu);
}
