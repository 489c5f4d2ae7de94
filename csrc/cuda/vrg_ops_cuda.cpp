// CUDA registrations of the VRG ops: the checks and entry points shared with the CPU side
// (csrc/vrg_checks.h), the device guard and stream, and the launchers of vrg.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../vrg_checks.h"
#include "diffaccel/launch_grid.h"
#include "launch.h"
#include "vrg_kernels.h"

namespace diffaccel {
namespace {

using at::Tensor;

Tensor vrg_error_moments_cuda(const Tensor& pred_in, const Tensor& target_in,
                              const Tensor& bins_in, int64_t num_bins) {
  const c10::cuda::CUDAGuard guard(pred_in.device());
  const MomentsCall c = prepare_error_moments(pred_in, target_in, bins_in, num_bins);
  const Tensor& pred = c.pred;
  const int64_t B = pred.size(0), D = c.D;
  const int sms = sm_count(pred.device().index());
  const int64_t chunk = grid::split_chunk(B, D, grid::vec_width(static_cast<int>(pred.element_size())), sms);
  const Tensor partial = at::empty({std::max<int64_t>(1, B * grid::splits(D, chunk) * 2)},
                                   pred.options().dtype(at::kDouble));
  DA_DISPATCH_FLOATS(pred.scalar_type(), "diffaccel::vrg_error_moments", [&] {
    DA_CHECK_LAUNCH(cuda::vrg_error_moments<scalar_t>(
        pred.data_ptr<scalar_t>(), c.target.data_ptr<scalar_t>(), c.bins.data_ptr<int64_t>(), B,
        D, num_bins, c.table.data_ptr<double>(), partial.data_ptr<double>(), chunk,
        stream_of(pred)));
  });
  return c.table;
}

void run_cpe_cuda(const CpeCall& c) {
  const c10::cuda::CUDAGuard guard(c.abar.device());
  DA_CHECK_LAUNCH(cuda::vrg_cumulative_error(
      c.abar.data_ptr<double>(), c.abar.size(0), c.abar.size(1), c.grid.data_ptr<double>(),
      c.mse.data_ptr<double>(), c.grid.size(0), c.solver, c.cpe.data_ptr<double>(),
      c.grad.defined() ? c.grad.data_ptr<double>() : nullptr, stream_of(c.abar)));
}

using Cpe = CpeOps<run_cpe_cuda>;

}  // namespace
}  // namespace diffaccel

TORCH_LIBRARY_IMPL(diffaccel, CUDA, m) {
  m.impl("vrg_error_moments", &diffaccel::vrg_error_moments_cuda);
  m.impl("vrg_cumulative_error", &diffaccel::Cpe::cumulative_error);
  m.impl("vrg_cumulative_error_grad", &diffaccel::Cpe::cumulative_error_grad);
}
