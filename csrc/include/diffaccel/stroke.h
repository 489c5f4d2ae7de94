// Stroke size, docs/math.md Section 2: the pieces of A_w x = (1 - sum_j w_j) x + sum_j w_j S_{k_j} x
// and of the stroke noising that every backend shares.
#pragma once
#include "diffaccel/common.h"

namespace diffaccel {

// Number of rows (or columns) in block I of size k along an axis of length n: the border block
// is partial, min(k, n - k I), and averages over its real size. The one C++ definition of the
// rule, used by every CPU and CUDA stroke kernel (the CUDA weight gradient of stroke_blur writes
// it with tensor ops on the device, csrc/cuda/stroke_ops_cuda.cpp).
DA_HOST_DEVICE int64_t block_extent(int64_t n, int64_t k, int64_t I) {
  const int64_t rest = n - k * I;
  return rest < k ? rest : k;
}

DA_HOST_DEVICE int64_t num_blocks(int64_t n, int64_t k) { return (n + k - 1) / k; }

// x_t and the training target from A_{w^x} x0 (ax) and A_{w^e} eps (ae), per element.
DA_HOST_DEVICE void stroke_noise_outputs(float ax, float ae, float alpha, float sigma,
                                         int32_t target, float& xt, float& tgt) {
  xt = alpha * ax + sigma * ae;
  tgt = target == kEps ? ae : (target == kX0 ? ax : alpha * ae - sigma * ax);
}

}  // namespace diffaccel
