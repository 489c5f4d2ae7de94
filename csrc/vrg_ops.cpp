// CPU registrations of the VRG ops (schemas, fakes, autograd and the Triton versions:
// diffaccel/ops/vrg.py; checks and entry points shared with CUDA: csrc/vrg_checks.h; kernels:
// csrc/cpu/vrg_cpu.cpp).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/vrg_kernels.h"
#include "vrg_checks.h"

namespace diffaccel {
namespace {

using at::Tensor;

Tensor vrg_error_moments_cpu(const Tensor& pred_in, const Tensor& target_in, const Tensor& bins_in,
                             int64_t num_bins) {
  const MomentsCall c = prepare_error_moments(pred_in, target_in, bins_in, num_bins);
  int64_t bad = -1;
  DA_DISPATCH_FLOATS(c.pred.scalar_type(), "diffaccel::vrg_error_moments", [&] {
    bad = cpu::vrg_error_moments<scalar_t>(c.pred.data_ptr<scalar_t>(),
                                           c.target.data_ptr<scalar_t>(),
                                           c.bins.data_ptr<int64_t>(), c.pred.size(0), c.D,
                                           num_bins, c.table.data_ptr<double>());
  });
  TORCH_CHECK(bad < 0, "bins: expected values in [0, ", num_bins, "), got ",
              bad < 0 ? 0 : c.bins.data_ptr<int64_t>()[bad], " at sample ", bad);
  return c.table;
}

void run_cpe_cpu(const CpeCall& c) {
  cpu::vrg_cumulative_error(c.abar.data_ptr<double>(), c.abar.size(0), c.abar.size(1),
                            c.grid.data_ptr<double>(), c.mse.data_ptr<double>(), c.grid.size(0),
                            c.solver, c.cpe.data_ptr<double>(),
                            c.grad.defined() ? c.grad.data_ptr<double>() : nullptr);
}

using Cpe = CpeOps<run_cpe_cpu>;

}  // namespace
}  // namespace diffaccel

TORCH_LIBRARY_IMPL(diffaccel, CPU, m) {
  m.impl("vrg_error_moments", &diffaccel::vrg_error_moments_cpu);
  m.impl("vrg_cumulative_error", &diffaccel::Cpe::cumulative_error);
  m.impl("vrg_cumulative_error_grad", &diffaccel::Cpe::cumulative_error_grad);
}
