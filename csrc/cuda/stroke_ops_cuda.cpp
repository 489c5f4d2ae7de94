// CUDA registrations of the stroke ops: the argument checks shared with the CPU side
// (csrc/stroke_checks.h), the device guard and stream, and the launchers of stroke.cu. The weight
// gradient of stroke_blur is a small reduction over block means, written with ATen ops here.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../stroke_checks.h"
#include "diffaccel/stroke.h"
#include "launch.h"
#include "stroke_kernels.h"

namespace diffaccel {
namespace {

using at::Tensor;

Tensor block_means(const Tensor& x, const cuda::ScaleGrid& grid) {
  Tensor means = at::empty({x.size(0) * x.size(1), grid.total}, x.options().dtype(at::kFloat));
  DA_DISPATCH_FLOATS(x.scalar_type(), "diffaccel::stroke_means", [&] {
    DA_CHECK_LAUNCH(cuda::stroke_means<scalar_t>(x.data_ptr<scalar_t>(), grid,
                                                 x.size(0) * x.size(1), x.size(2), x.size(3),
                                                 means.data_ptr<float>(), stream_of(x)));
  });
  return means;
}

Tensor blur_with_means(const Tensor& x, const Tensor& w, const Tensor& means,
                       const cuda::ScaleGrid& grid) {
  Tensor y = at::empty_like(x);
  DA_DISPATCH_FLOATS(x.scalar_type(), "diffaccel::stroke_blur", [&] {
    DA_CHECK_LAUNCH(cuda::stroke_blur<scalar_t>(x.data_ptr<scalar_t>(), w.data_ptr<float>(),
                                                means.data_ptr<float>(), grid, x.size(0),
                                                x.size(1), x.size(2), x.size(3),
                                                y.data_ptr<scalar_t>(), stream_of(x)));
  });
  return y;
}

Tensor stroke_blur_cuda(const Tensor& x_in, const Tensor& weights, at::IntArrayRef scales) {
  check_stroke_blur(x_in, weights, scales);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Tensor x = x_in.contiguous(), w = weights.contiguous();
  const int J = static_cast<int>(scales.size());
  if (cuda::stroke_tile_path(scales.data(), J, x.size(0), x.size(1), x.size(2), x.size(3))) {
    Tensor y = at::empty_like(x);
    DA_DISPATCH_FLOATS(x.scalar_type(), "diffaccel::stroke_blur", [&] {
      DA_CHECK_LAUNCH(cuda::stroke_blur_tile<scalar_t>(
          x.data_ptr<scalar_t>(), w.data_ptr<float>(), scales.data(), J, x.size(0), x.size(1),
          x.size(2), x.size(3), y.data_ptr<scalar_t>(), stream_of(x)));
    });
    return y;
  }
  const auto grid = cuda::make_grid(scales.data(), J, x.size(2), x.size(3));
  return blur_with_means(x, w, block_means(x, grid), grid);
}

std::tuple<Tensor, Tensor> stroke_blur_backward_cuda(const Tensor& grad_in, const Tensor& x_in,
                                                     const Tensor& weights,
                                                     at::IntArrayRef scales) {
  check_stroke_blur_backward(grad_in, x_in, weights, scales);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Tensor x = x_in.contiguous(), g = grad_in.contiguous(), w = weights.contiguous();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const auto grid = cuda::make_grid(scales.data(), static_cast<int>(scales.size()), H, W);
  const int J = static_cast<int>(scales.size());
  const Tensor mx = block_means(x, grid), mg = block_means(g, grid);
  // grad_x is the blur of g (the operator is self-adjoint): the one-pass tile kernel where the
  // scales allow it, as in the forward, else the block means just taken
  Tensor gx;
  if (cuda::stroke_tile_path(scales.data(), J, B, C, H, W)) {
    gx = at::empty_like(g);
    DA_DISPATCH_FLOATS(g.scalar_type(), "diffaccel::stroke_blur_backward", [&] {
      DA_CHECK_LAUNCH(cuda::stroke_blur_tile<scalar_t>(
          g.data_ptr<scalar_t>(), w.data_ptr<float>(), scales.data(), J, B, C, H, W,
          gx.data_ptr<scalar_t>(), stream_of(g)));
    });
  } else {
    gx = blur_with_means(g, w, mg, grid);
  }
  // grad_w[b, j] = sum_{c, blocks of scale j} n_blk mean_x mean_g - <x, g>_b
  // <x, g>: each product exact (in float64 for float32 inputs, in float32 for 16-bit ones, whose
  // 11-bit significands multiply exactly), summed in float64; one converted copy and the product
  // instead of three float64 tensors (g is converted on the fly by the multiplication).
  // explicit sizes: reshape({B, -1}) is ambiguous for an empty batch
  const auto wide = x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const Tensor xg = at::sum((x.to(wide) * g).reshape({B, C * H * W}), {1}, false, at::kDouble);
  const Tensor prod = (mx.to(at::kDouble) * mg.to(at::kDouble)).reshape({B, C, grid.total});
  std::vector<Tensor> cols;
  for (int j = 0; j < grid.J; ++j) {
    // n_blk = min(k, H - k I) * min(k, W - k J) (block_extent), built on the device: a
    // host-to-device copy here would sync the stream and break CUDA-graph capture
    const auto dopt = x.options().dtype(at::kDouble);
    const double k = static_cast<double>(grid.k[j]);
    const Tensor eh = at::clamp_max(static_cast<double>(H) - k * at::arange(grid.hk[j], dopt), k);
    const Tensor ew = at::clamp_max(static_cast<double>(W) - k * at::arange(grid.wk[j], dopt), k);
    const Tensor n = at::outer(eh, ew).reshape({grid.hk[j] * grid.wk[j]});
    cols.push_back((prod.narrow(2, grid.off[j], grid.hk[j] * grid.wk[j]) * n).sum({1, 2}) - xg);
  }
  return {gx, at::stack(cols, 1).to(at::kFloat)};
}

std::tuple<Tensor, Tensor> stroke_noise_cuda(const Tensor& x0_in, const Tensor& alpha,
                                             const Tensor& sigma, const Tensor& data_weights,
                                             const Tensor& noise_weights, at::IntArrayRef scales,
                                             const Tensor& seeds, int64_t offset, int64_t dist,
                                             int64_t target) {
  const c10::cuda::CUDAGuard guard(x0_in.device());
  const StrokeNoiseInputs in = prepare_stroke_noise(x0_in, alpha, sigma, data_weights,
                                                    noise_weights, scales, seeds, offset, dist,
                                                    target);
  const Tensor& x0 = in.x0;
  const Tensor &a = in.alpha, &s = in.sigma, &sd = in.seeds;
  const Tensor &wx = in.data_weights, &we = in.noise_weights;
  const bool per_sample = in.per_sample;
  const int64_t B = x0.size(0), C = x0.size(1), H = x0.size(2), W = x0.size(3);
  const int J = static_cast<int>(scales.size());
  if (cuda::stroke_tile_path(scales.data(), J, B, C, H, W)) {  // one pass
    Tensor xt = at::empty_like(x0), tgt = at::empty_like(x0);
    DA_DISPATCH_FLOATS(x0.scalar_type(), "diffaccel::stroke_noise", [&] {
      DA_CHECK_LAUNCH(cuda::stroke_noise_tile<scalar_t>(
          x0.data_ptr<scalar_t>(), a.data_ptr<float>(), s.data_ptr<float>(), wx.data_ptr<float>(),
          we.data_ptr<float>(), scales.data(), J, B, C, H, W, sd.data_ptr<int64_t>(), per_sample,
          static_cast<uint64_t>(offset), static_cast<int32_t>(dist), static_cast<int32_t>(target),
          xt.data_ptr<scalar_t>(), tgt.data_ptr<scalar_t>(), stream_of(x0)));
    });
    return {xt, tgt};
  }
  const auto grid = cuda::make_grid(scales.data(), J, H, W);
  const Tensor mx = block_means(x0, grid);
  Tensor me = at::empty_like(mx);
  DA_CHECK_LAUNCH(cuda::stroke_noise_means(sd.data_ptr<int64_t>(), per_sample,
                                           static_cast<uint64_t>(offset), static_cast<int32_t>(dist),
                                           grid, B, C, H, W, me.data_ptr<float>(), stream_of(x0)));
  Tensor xt = at::empty_like(x0), tgt = at::empty_like(x0);
  DA_DISPATCH_FLOATS(x0.scalar_type(), "diffaccel::stroke_noise", [&] {
    DA_CHECK_LAUNCH(cuda::stroke_noise<scalar_t>(
        x0.data_ptr<scalar_t>(), a.data_ptr<float>(), s.data_ptr<float>(), wx.data_ptr<float>(),
        we.data_ptr<float>(), mx.data_ptr<float>(), me.data_ptr<float>(), grid, B, C, H, W,
        sd.data_ptr<int64_t>(), per_sample, static_cast<uint64_t>(offset),
        static_cast<int32_t>(dist), static_cast<int32_t>(target), xt.data_ptr<scalar_t>(),
        tgt.data_ptr<scalar_t>(), stream_of(x0)));
  });
  return {xt, tgt};
}

}  // namespace
}  // namespace diffaccel

TORCH_LIBRARY_IMPL(diffaccel, CUDA, m) {
  m.impl("stroke_blur", &diffaccel::stroke_blur_cuda);
  m.impl("stroke_blur_backward", &diffaccel::stroke_blur_backward_cuda);
  m.impl("stroke_noise", &diffaccel::stroke_noise_cuda);
}
