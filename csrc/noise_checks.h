// Argument checks of the noise ops (philox_uint32, noise), shared by the CPU and CUDA
// registrations (csrc/noise_ops.cpp, csrc/cuda/noise_ops_cuda.cpp): each checks its arguments
// and allocates its output here, then passes raw pointers to its kernel.
#pragma once
#include <ATen/ATen.h>

#include <utility>
#include <vector>

#include "checks.h"

namespace diffaccel {

// (B, D) layout of a noise shape: B = shape[0], D = prod(shape[1:]).
inline std::pair<int64_t, int64_t> batch_layout(at::IntArrayRef shape) {
  TORCH_CHECK(!shape.empty(), "shape: expected at least one dimension");
  int64_t n = 1;
  for (auto s : shape) {
    TORCH_CHECK(s >= 0, "shape: expected non-negative sizes, got ", shape);
    n *= s;
  }
  return {shape[0], shape[0] == 0 ? 0 : n / shape[0]};
}

// A checked noise call: the (B, D) layout, the seeds (contiguous) and the output to fill.
struct NoiseCall {
  int64_t B, D;
  bool per_sample;
  at::Tensor seeds, out;
};

// philox_uint32: out [*shape, 4] int64.
inline NoiseCall prepare_philox_uint32(const at::Tensor& seeds, at::IntArrayRef shape,
                                       int64_t offset) {
  check_offset(offset);
  auto [B, D] = batch_layout(shape);
  const bool per_sample = check_seeds(seeds, B);
  std::vector<int64_t> out_shape(shape.begin(), shape.end());
  out_shape.push_back(4);
  at::Tensor out = at::empty(out_shape, seeds.options().dtype(at::kLong));
  return {B, D, per_sample, seeds.contiguous(), out};
}

// noise: out [*shape] of a float dtype.
inline NoiseCall prepare_noise(const at::Tensor& seeds, at::IntArrayRef shape, int64_t offset,
                               int64_t dist, at::ScalarType dtype) {
  check_offset(offset);
  check_dist(dist);
  auto [B, D] = batch_layout(shape);
  const bool per_sample = check_seeds(seeds, B);
  at::Tensor out = at::empty(shape, seeds.options().dtype(dtype));
  check_float_input(out, "dtype");
  return {B, D, per_sample, seeds.contiguous(), out};
}

}  // namespace diffaccel
