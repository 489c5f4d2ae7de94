// Argument checks shared by the CPU and CUDA registrations: a bad call through torch.ops gets a
// clear error naming the argument, never an out-of-bounds access.
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <utility>

#include "diffaccel/common.h"

// The dtypes the fast kernels take (float32 arithmetic inside).
#define DA_DISPATCH_FLOATS(TYPE, NAME, ...)                  \
  AT_DISPATCH_SWITCH(TYPE, NAME,                             \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

namespace diffaccel {

inline void check_float_input(const at::Tensor& t, const char* name) {
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, name,
              ": expected float32, float16 or bfloat16, got ", st);
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* name) {
  TORCH_CHECK(a.device() == b.device(), name, ": expected a tensor on ", a.device(), ", got ",
              b.device());
}

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

// seeds: int64, [1] (one seed) or [B] (one per sample). Returns whether it is per-sample.
inline bool check_seeds(const at::Tensor& seeds, int64_t B) {
  TORCH_CHECK(seeds.scalar_type() == at::kLong && seeds.dim() == 1 &&
                  (seeds.size(0) == 1 || seeds.size(0) == B),
              "seed: expected an int64 tensor of shape (1,) or (", B, ",), got ",
              seeds.scalar_type(), " ", seeds.sizes());
  return seeds.size(0) == B && B > 1;
}

inline void check_offset(int64_t offset) {
  TORCH_CHECK(offset >= 0, "offset: expected a non-negative integer, got ", offset);
}

inline void check_dist(int64_t dist) {
  TORCH_CHECK(dist >= kNormal && dist <= kRademacher, "dist: unknown increment law code ", dist);
}

inline void check_target(int64_t target) {
  TORCH_CHECK(target >= kEps && target <= kV, "target: unknown target code ", target);
}

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

// stroke_noise's arguments; returns whether the seeds are per-sample.
inline bool check_stroke_noise(const at::Tensor& x0, const at::Tensor& alpha,
                               const at::Tensor& sigma, const at::Tensor& data_weights,
                               const at::Tensor& noise_weights, at::IntArrayRef scales,
                               const at::Tensor& seeds, int64_t offset, int64_t dist,
                               int64_t target) {
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
  return check_seeds(seeds, x0.size(0));
}

inline void check_stroke_blur_backward(const at::Tensor& grad, const at::Tensor& x,
                                       const at::Tensor& weights, at::IntArrayRef scales) {
  check_image(x, "x");
  check_scales(scales);
  check_weights(weights, x, scales, "weights");
  check_same_device(x, grad, "grad");
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type(),
              "grad: expected the shape and dtype of x");
}

}  // namespace diffaccel
