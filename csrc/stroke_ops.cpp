// CPU registrations of the stroke ops stroke_blur, stroke_blur_backward and stroke_noise
// (schemas, fakes, autograd and the Triton versions: diffaccel/ops/stroke.py; checks shared with
// CUDA: csrc/stroke_checks.h; kernels: csrc/cpu/stroke_cpu.cpp).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "cpu/stroke_kernels.h"
#include "stroke_checks.h"

namespace diffaccel {
namespace {

using at::Tensor;

Tensor stroke_blur_cpu(const Tensor& x_in, const Tensor& weights, at::IntArrayRef scales) {
  check_stroke_blur(x_in, weights, scales);
  const Tensor x = x_in.contiguous();
  const Tensor w = weights.contiguous();
  Tensor y = at::empty_like(x);
  DA_DISPATCH_FLOATS(x.scalar_type(), "diffaccel::stroke_blur", [&] {
    cpu::stroke_blur<scalar_t>(x.data_ptr<scalar_t>(), w.data_ptr<float>(), scales.data(),
                               static_cast<int>(scales.size()), x.size(0), x.size(1), x.size(2),
                               x.size(3), y.data_ptr<scalar_t>());
  });
  return y;
}

std::tuple<Tensor, Tensor> stroke_blur_backward_cpu(const Tensor& grad_in, const Tensor& x_in,
                                                    const Tensor& weights,
                                                    at::IntArrayRef scales) {
  check_stroke_blur_backward(grad_in, x_in, weights, scales);
  const Tensor x = x_in.contiguous(), g = grad_in.contiguous(), w = weights.contiguous();
  Tensor gx = at::empty_like(x);
  Tensor gw = at::empty_like(w);
  DA_DISPATCH_FLOATS(x.scalar_type(), "diffaccel::stroke_blur_backward", [&] {
    cpu::stroke_blur_backward<scalar_t>(g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                        w.data_ptr<float>(), scales.data(),
                                        static_cast<int>(scales.size()), x.size(0), x.size(1),
                                        x.size(2), x.size(3), gx.data_ptr<scalar_t>(),
                                        gw.data_ptr<float>());
  });
  return {gx, gw};
}

std::tuple<Tensor, Tensor> stroke_noise_cpu(const Tensor& x0_in, const Tensor& alpha,
                                            const Tensor& sigma, const Tensor& data_weights,
                                            const Tensor& noise_weights, at::IntArrayRef scales,
                                            const Tensor& seeds, int64_t offset, int64_t dist,
                                            int64_t target) {
  const StrokeNoiseInputs in = prepare_stroke_noise(x0_in, alpha, sigma, data_weights,
                                                    noise_weights, scales, seeds, offset, dist,
                                                    target);
  const Tensor& x0 = in.x0;
  Tensor xt = at::empty_like(x0), tgt = at::empty_like(x0);
  DA_DISPATCH_FLOATS(x0.scalar_type(), "diffaccel::stroke_noise", [&] {
    cpu::stroke_noise<scalar_t>(x0.data_ptr<scalar_t>(), in.alpha.data_ptr<float>(),
                                in.sigma.data_ptr<float>(), in.data_weights.data_ptr<float>(),
                                in.noise_weights.data_ptr<float>(), scales.data(),
                                static_cast<int>(scales.size()), x0.size(0), x0.size(1),
                                x0.size(2), x0.size(3), in.seeds.data_ptr<int64_t>(),
                                in.per_sample, static_cast<uint64_t>(offset),
                                static_cast<int32_t>(dist), static_cast<int32_t>(target),
                                xt.data_ptr<scalar_t>(), tgt.data_ptr<scalar_t>());
  });
  return {xt, tgt};
}

}  // namespace
}  // namespace diffaccel

TORCH_LIBRARY_IMPL(diffaccel, CPU, m) {
  m.impl("stroke_blur", &diffaccel::stroke_blur_cpu);
  m.impl("stroke_blur_backward", &diffaccel::stroke_blur_backward_cpu);
  m.impl("stroke_noise", &diffaccel::stroke_noise_cpu);
}
