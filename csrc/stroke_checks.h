// Argument checks of the stroke ops (stroke_blur, stroke_blur_backward, stroke_noise), shared by
// the CPU and CUDA registrations (csrc/stroke_ops.cpp, csrc/cuda/stroke_ops_cuda.cpp).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "checks.h"
#include "diffaccel/common.h"

namespace diffaccel {

inline void check_image(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 4, name, ": expected a (B, C, H, W) tensor, got shape ", x.sizes());
  check_float_input(x, name);
}

inline void check_scales(at::IntArrayRef scales) {
  TORCH_CHECK(!scales.empty() && static_cast<int>(scales.size()) <= kMaxScales,
              "scales: expected 1 to ", kMaxScales, " scales, got ", scales.size());
  for (auto k : scales) TORCH_CHECK(k >= 2, "scales: every scale must be >= 2, got ", k);
}

inline void check_weights(const at::Tensor& w, const at::Tensor& x, at::IntArrayRef scales,
                          const char* name) {
  check_same_device(x, w, name);
  TORCH_CHECK(w.scalar_type() == at::kFloat, name, ": expected float32, got ", w.scalar_type());
  TORCH_CHECK(w.dim() == 2 && w.size(0) == x.size(0) &&
                  w.size(1) == static_cast<int64_t>(scales.size()),
              name, ": expected shape (", x.size(0), ", ", scales.size(), "), got ", w.sizes());
}

inline void check_per_sample(const at::Tensor& t, const at::Tensor& x, const char* name) {
  check_same_device(x, t, name);
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.dim() == 1 && t.size(0) == x.size(0), name,
              ": expected a float32 tensor of shape (", x.size(0), "), got ", t.scalar_type(),
              " ", t.sizes());
}

inline void check_target(int64_t target) {
  TORCH_CHECK(target >= kEps && target <= kV, "target: unknown target code ", target);
}

// stroke_blur's arguments: x [B, C, H, W], weights [B, J] float32, J scales.
inline void check_stroke_blur(const at::Tensor& x, const at::Tensor& weights,
                              at::IntArrayRef scales) {
  check_image(x, "x");
  check_scales(scales);
  check_weights(weights, x, scales, "weights");
}

inline void check_stroke_blur_backward(const at::Tensor& grad, const at::Tensor& x,
                                       const at::Tensor& weights, at::IntArrayRef scales) {
  check_stroke_blur(x, weights, scales);
  check_same_device(x, grad, "grad");
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type(),
              "grad: expected the shape and dtype of x");
}

// stroke_noise's inputs, checked and contiguous.
struct StrokeNoiseInputs {
  at::Tensor x0, alpha, sigma, data_weights, noise_weights, seeds;
  bool per_sample;
};

inline StrokeNoiseInputs prepare_stroke_noise(const at::Tensor& x0, const at::Tensor& alpha,
                                              const at::Tensor& sigma,
                                              const at::Tensor& data_weights,
                                              const at::Tensor& noise_weights,
                                              at::IntArrayRef scales, const at::Tensor& seeds,
                                              int64_t offset, int64_t dist, int64_t target) {
  check_image(x0, "x0");
  check_scales(scales);
  check_weights(data_weights, x0, scales, "data_weights");
  check_weights(noise_weights, x0, scales, "noise_weights");
  check_per_sample(alpha, x0, "alpha");
  check_per_sample(sigma, x0, "sigma");
  check_same_device(x0, seeds, "seed");
  check_offset(offset);
  check_dist(dist);
  check_target(target);
  const bool per_sample = check_seeds(seeds, x0.size(0));
  return {x0.contiguous(),           alpha.contiguous(),         sigma.contiguous(),
          data_weights.contiguous(), noise_weights.contiguous(), seeds.contiguous(),
          per_sample};
}

}  // namespace diffaccel
