// CPU kernels of the stroke ops over raw pointers (csrc/cpu/stroke_cpu.cpp; the math lives in
// csrc/include/diffaccel/stroke.h). T is float, c10::Half or c10::BFloat16; arithmetic is
// float32. All tensors are contiguous.
#pragma once
#include <cstdint>

namespace diffaccel {
namespace cpu {

// y[B, C, H, W] = A_w x with weights w[B, J] and scales k[J].
template <typename T>
void stroke_blur(const T* x, const float* w, const int64_t* k, int J, int64_t B, int64_t C,
                 int64_t H, int64_t W, T* y);

// grad_x[B, C, H, W] = A_w g;  grad_w[B, J] = sum_{C,H,W} (S_k x - x) g.
template <typename T>
void stroke_blur_backward(const T* g, const T* x, const float* w, const int64_t* k, int J,
                          int64_t B, int64_t C, int64_t H, int64_t W, T* grad_x, float* grad_w);

// The fused stroke noising: x_t and target [B, C, H, W] from x0, alpha[B], sigma[B],
// data weights wx[B, J], noise weights we[B, J], noise drawn in the loop.
template <typename T>
void stroke_noise(const T* x0, const float* alpha, const float* sigma, const float* wx,
                  const float* we, const int64_t* k, int J, int64_t B, int64_t C, int64_t H,
                  int64_t W, const int64_t* seeds, bool per_sample, uint64_t offset, int32_t dist,
                  int32_t target, T* xt, T* tgt);

}  // namespace cpu
}  // namespace diffaccel
