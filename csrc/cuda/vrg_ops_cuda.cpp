// CUDA registrations of the VRG ops: the checks shared with the CPU side (csrc/vrg_checks.h),
// the stream, and the launchers of vrg.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "../vrg_checks.h"
#include "diffaccel/launch_grid.h"
#include "launch.h"
#include "vrg_kernels.h"

namespace diffaccel {
namespace {

using at::Tensor;

Tensor vrg_error_moments_cuda(const Tensor& pred_in, const Tensor& target_in,
                              const Tensor& bins_in, int64_t num_bins) {
  const int64_t D = check_error_moments(pred_in, target_in, bins_in, num_bins);
  const c10::cuda::CUDAGuard guard(pred_in.device());
  const Tensor pred = pred_in.contiguous(), target = target_in.contiguous();
  const Tensor bins = bins_in.contiguous();
  Tensor table = at::zeros({num_bins, 3}, pred.options().dtype(at::kDouble));
  const int64_t B = pred.size(0);
  const int sms = sm_count(pred.device().index());
  const int64_t chunk = grid::split_chunk(B, D, grid::vec_width(static_cast<int>(pred.element_size())), sms);
  const Tensor partial = at::empty({std::max<int64_t>(1, B * grid::splits(D, chunk) * 2)},
                                   pred.options().dtype(at::kDouble));
  DA_DISPATCH_FLOATS(pred.scalar_type(), "diffaccel::vrg_error_moments", [&] {
    DA_CHECK_LAUNCH(cuda::vrg_error_moments<scalar_t>(
        pred.data_ptr<scalar_t>(), target.data_ptr<scalar_t>(), bins.data_ptr<int64_t>(), B, D,
        num_bins, table.data_ptr<double>(), partial.data_ptr<double>(), chunk, stream_of(pred)));
  });
  return table;
}

std::tuple<Tensor, Tensor> run_cpe_cuda(const Tensor& abar_in, const Tensor& grid_in,
                                        const Tensor& mse_in, int64_t solver, bool with_grad) {
  check_cumulative_error(abar_in, grid_in, mse_in, solver);
  const c10::cuda::CUDAGuard guard(abar_in.device());
  const Tensor abar = abar_in.contiguous(), grid = grid_in.contiguous(), mse = mse_in.contiguous();
  Tensor cpe = at::empty({abar.size(0)}, abar.options());
  Tensor grad = with_grad ? at::empty_like(abar) : Tensor();
  DA_CHECK_LAUNCH(cuda::vrg_cumulative_error(
      abar.data_ptr<double>(), abar.size(0), abar.size(1), grid.data_ptr<double>(),
      mse.data_ptr<double>(), grid.size(0), static_cast<int32_t>(solver), cpe.data_ptr<double>(),
      with_grad ? grad.data_ptr<double>() : nullptr, stream_of(abar)));
  return {cpe, grad};
}

Tensor vrg_cumulative_error_cuda(const Tensor& abar, const Tensor& grid, const Tensor& mse,
                                 int64_t solver) {
  return std::get<0>(run_cpe_cuda(abar, grid, mse, solver, false));
}

std::tuple<Tensor, Tensor> vrg_cumulative_error_grad_cuda(const Tensor& abar, const Tensor& grid,
                                                          const Tensor& mse, int64_t solver) {
  return run_cpe_cuda(abar, grid, mse, solver, true);
}

}  // namespace
}  // namespace diffaccel

TORCH_LIBRARY_IMPL(diffaccel, CUDA, m) {
  m.impl("vrg_error_moments", &diffaccel::vrg_error_moments_cuda);
  m.impl("vrg_cumulative_error", &diffaccel::vrg_cumulative_error_cuda);
  m.impl("vrg_cumulative_error_grad", &diffaccel::vrg_cumulative_error_grad_cuda);
}
