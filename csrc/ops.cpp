// CPU registrations of the diffaccel ops (schemas are defined once, in diffaccel/ops.py) and the
// Python module diffaccel._C, which reports how the extension was built.
#include <torch/extension.h>

#include <vector>

#include "checks.h"
#include "diffaccel/launch_grid.h"
#include "cpu/cpu_kernels.h"

#ifndef DIFFACCEL_CUDA_ARCHS
#define DIFFACCEL_CUDA_ARCHS ""
#endif

namespace diffaccel {
namespace {

using at::Tensor;

Tensor philox_uint32_cpu(const Tensor& seeds, at::IntArrayRef shape, int64_t offset) {
  check_offset(offset);
  auto [B, D] = batch_layout(shape);
  const bool per_sample = check_seeds(seeds, B);
  std::vector<int64_t> out_shape(shape.begin(), shape.end());
  out_shape.push_back(4);
  Tensor out = at::empty(out_shape, seeds.options().dtype(at::kLong));
  const Tensor s = seeds.contiguous();
  cpu::philox_uint32(s.data_ptr<int64_t>(), per_sample, B, D, static_cast<uint64_t>(offset),
                     out.data_ptr<int64_t>());
  return out;
}

Tensor noise_cpu(const Tensor& seeds, at::IntArrayRef shape, int64_t offset, int64_t dist,
                 at::ScalarType dtype) {
  check_offset(offset);
  check_dist(dist);
  auto [B, D] = batch_layout(shape);
  const bool per_sample = check_seeds(seeds, B);
  Tensor out = at::empty(shape, seeds.options().dtype(dtype));
  check_float_input(out, "dtype");
  const Tensor s = seeds.contiguous();
  DA_DISPATCH_FLOATS(dtype, "diffaccel::noise", [&] {
    cpu::noise<scalar_t>(s.data_ptr<int64_t>(), per_sample, B, D, static_cast<uint64_t>(offset),
                         static_cast<int32_t>(dist), out.data_ptr<scalar_t>());
  });
  return out;
}

Tensor stroke_blur_cpu(const Tensor& x_in, const Tensor& weights, at::IntArrayRef scales) {
  check_image(x_in, "x");
  check_scales(scales);
  check_weights(weights, x_in, scales, "weights");
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
  const bool per_sample = check_stroke_noise(x0_in, alpha, sigma, data_weights, noise_weights,
                                             scales, seeds, offset, dist, target);
  const Tensor x0 = x0_in.contiguous();
  const Tensor a = alpha.contiguous(), s = sigma.contiguous();
  const Tensor wx = data_weights.contiguous(), we = noise_weights.contiguous();
  const Tensor sd = seeds.contiguous();
  Tensor xt = at::empty_like(x0), tgt = at::empty_like(x0);
  DA_DISPATCH_FLOATS(x0.scalar_type(), "diffaccel::stroke_noise", [&] {
    cpu::stroke_noise<scalar_t>(x0.data_ptr<scalar_t>(), a.data_ptr<float>(), s.data_ptr<float>(),
                                wx.data_ptr<float>(), we.data_ptr<float>(), scales.data(),
                                static_cast<int>(scales.size()), x0.size(0), x0.size(1),
                                x0.size(2), x0.size(3), sd.data_ptr<int64_t>(), per_sample,
                                static_cast<uint64_t>(offset), static_cast<int32_t>(dist),
                                static_cast<int32_t>(target), xt.data_ptr<scalar_t>(),
                                tgt.data_ptr<scalar_t>());
  });
  return {xt, tgt};
}

}  // namespace
}  // namespace diffaccel

TORCH_LIBRARY_IMPL(diffaccel, CPU, m) {
  m.impl("philox_uint32", &diffaccel::philox_uint32_cpu);
  m.impl("noise", &diffaccel::noise_cpu);
  m.impl("stroke_blur", &diffaccel::stroke_blur_cpu);
  m.impl("stroke_blur_backward", &diffaccel::stroke_blur_backward_cpu);
  m.impl("stroke_noise", &diffaccel::stroke_noise_cpu);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "diffaccel compiled kernels (registered as torch.ops.diffaccel.*)";
#ifdef DIFFACCEL_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("cuda_archs") = DIFFACCEL_CUDA_ARCHS;
  // Launch shapes of the CUDA kernels for a given SM count (csrc/include/diffaccel/launch_grid.h),
  // so tests can check them for any GPU without one.
  m.def("launch_split_chunk", &diffaccel::grid::split_chunk, "elements per block of one sample",
        pybind11::arg("B"), pybind11::arg("D"), pybind11::arg("vec"), pybind11::arg("sm_count"));
  m.def("launch_splits", &diffaccel::grid::splits, pybind11::arg("D"), pybind11::arg("chunk"));
  m.def("launch_vec_width", &diffaccel::grid::vec_width, pybind11::arg("elem_bytes"));
  m.def("launch_stroke_tile", [](std::vector<int64_t> scales) {
    return diffaccel::grid::stroke_tile(scales.data(), static_cast<int>(scales.size()));
  }, "tile side of the one-pass stroke kernels (0: general path)", pybind11::arg("scales"));
  m.def("launch_stroke_tile_blocks", &diffaccel::grid::stroke_tile_blocks);
  m.attr("launch_threads") = diffaccel::grid::kThreads;
  m.attr("launch_blocks_per_sm") = diffaccel::grid::kBlocksPerSm;
}
