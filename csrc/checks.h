// The argument checks every op family uses (dtypes, devices, seeds, offsets, increment laws) and
// the float dtype dispatch. Each family's own checks, shared by its CPU and CUDA registrations,
// build on these: noise_checks.h, stroke_checks.h, step_checks.h, vrg_checks.h. A bad call
// through torch.ops gets a clear error naming the argument, never an out-of-bounds access.
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

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

}  // namespace diffaccel
