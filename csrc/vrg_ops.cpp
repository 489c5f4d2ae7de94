// CPU registrations of the VRG ops (schemas in diffaccel/library.py; fake functions, autograd
// and the Triton versions in diffaccel/vrg/_ops.py).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "cpu/vrg_kernels.h"
#include "vrg_checks.h"

namespace diffaccel {
namespace {

using at::Tensor;

Tensor vrg_error_moments_cpu(const Tensor& pred_in, const Tensor& target_in, const Tensor& bins_in,
                             int64_t num_bins) {
  const int64_t D = check_error_moments(pred_in, target_in, bins_in, num_bins);
  const Tensor pred = pred_in.contiguous(), target = target_in.contiguous();
  const Tensor bins = bins_in.contiguous();
  Tensor table = at::zeros({num_bins, 3}, pred.options().dtype(at::kDouble));
  int64_t bad = -1;
  DA_DISPATCH_FLOATS(pred.scalar_type(), "diffaccel::vrg_error_moments", [&] {
    bad = cpu::vrg_error_moments<scalar_t>(pred.data_ptr<scalar_t>(), target.data_ptr<scalar_t>(),
                                           bins.data_ptr<int64_t>(), pred.size(0), D, num_bins,
                                           table.data_ptr<double>());
  });
  TORCH_CHECK(bad < 0, "bins: expected values in [0, ", num_bins, "), got ",
              bad < 0 ? 0 : bins.data_ptr<int64_t>()[bad], " at sample ", bad);
  return table;
}

std::tuple<Tensor, Tensor> run_cpe(const Tensor& abar_in, const Tensor& grid_in,
                                   const Tensor& mse_in, int64_t solver, bool with_grad) {
  check_cumulative_error(abar_in, grid_in, mse_in, solver);
  const Tensor abar = abar_in.contiguous(), grid = grid_in.contiguous(), mse = mse_in.contiguous();
  Tensor cpe = at::empty({abar.size(0)}, abar.options());
  Tensor grad = with_grad ? at::empty_like(abar) : Tensor();
  cpu::vrg_cumulative_error(abar.data_ptr<double>(), abar.size(0), abar.size(1),
                            grid.data_ptr<double>(), mse.data_ptr<double>(), grid.size(0),
                            static_cast<int32_t>(solver), cpe.data_ptr<double>(),
                            with_grad ? grad.data_ptr<double>() : nullptr);
  return {cpe, grad};
}

Tensor vrg_cumulative_error_cpu(const Tensor& abar, const Tensor& grid, const Tensor& mse,
                                int64_t solver) {
  return std::get<0>(run_cpe(abar, grid, mse, solver, false));
}

std::tuple<Tensor, Tensor> vrg_cumulative_error_grad_cpu(const Tensor& abar, const Tensor& grid,
                                                         const Tensor& mse, int64_t solver) {
  return run_cpe(abar, grid, mse, solver, true);
}

}  // namespace
}  // namespace diffaccel

TORCH_LIBRARY_IMPL(diffaccel, CPU, m) {
  m.impl("vrg_error_moments", &diffaccel::vrg_error_moments_cpu);
  m.impl("vrg_cumulative_error", &diffaccel::vrg_cumulative_error_cpu);
  m.impl("vrg_cumulative_error_grad", &diffaccel::vrg_cumulative_error_grad_cpu);
}
