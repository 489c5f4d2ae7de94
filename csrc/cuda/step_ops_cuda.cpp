// CUDA registrations of the fused sampler step (schemas: diffaccel/library.py): the shared
// argument checks (csrc/step_checks.h), the device guard and stream, the launch shape from the
// device's SM count, a float64 scratch for the per-block sums, and the launcher of step.cu. No
// host synchronization.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"
#include "../step_checks.h"
#include "diffaccel/launch_grid.h"
#include "launch.h"
#include "step_kernels.h"

namespace diffaccel {
namespace {

using at::Tensor;

void run_step_cuda(const Tensor& x, const Tensor& out, const Tensor& logp, const Tensor& logp_var,
                   at::TensorList models, const Tensor& coef, const std::optional<Tensor>& z,
                   const Tensor& seeds, int64_t offset, int64_t dist,
                   const std::optional<Tensor>& probes, at::TensorList vjps,
                   const Tensor& probes_out, int64_t probe_offset, int64_t probe_dist,
                  const std::optional<Tensor>& ycoef, const Tensor& y_out, double clip) {
  TORCH_CHECK(x.is_contiguous(), "x: expected a contiguous tensor");
  const StepInputs in = check_sample_step(x, out, logp, logp_var, models, coef, z, seeds, offset,
                                          dist, probes, vjps, probes_out, probe_offset, probe_dist,
                                          ycoef, y_out, clip);
  if (x.size(0) == 0) return;  // D = 0 still adds c0 to logp, as the reference does
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), D = x.numel() / B;
  const int sms = sm_count(x.device().index());
  const int64_t chunk = grid::split_chunk(B, D, grid::vec_width(static_cast<int>(x.element_size())), sms);
  // per-block sums, one row per (sample, split), with |z|^2 and |x_new|^2 after the probes' t_p
  // on the y line; only needed when logp is tracked
  const Tensor partial = logp.numel()
      ? at::empty({B * std::max<int64_t>(1, grid::splits(D, chunk)) * (3 + in.P + (in.ycoef.has_value() ? 2 : 0))}, x.options().dtype(at::kDouble))
      : Tensor();
  DA_DISPATCH_FLOATS(x.scalar_type(), "diffaccel::sample_step", [&] {
    const auto args = make_step_args<scalar_t>(x, out, logp, logp_var, in, offset, dist,
                                               probes_out, probe_offset, probe_dist, y_out, clip);
    double* pp = partial.defined() ? partial.data_ptr<double>() : nullptr;
    DA_CHECK_LAUNCH(cuda::sample_step<scalar_t>(args, pp, chunk, stream_of(x)));
  });
}

void sample_step_cuda(const Tensor& x, const Tensor& logp, const Tensor& logp_var,
                      at::TensorList models, const Tensor& coef, const std::optional<Tensor>& z,
                      const Tensor& seeds, int64_t offset, int64_t dist,
                      const std::optional<Tensor>& probes, at::TensorList vjps,
                      const Tensor& probes_out, int64_t probe_offset, int64_t probe_dist,
                  const std::optional<Tensor>& ycoef, const Tensor& y_out, double clip) {
  run_step_cuda(x, x, logp, logp_var, models, coef, z, seeds, offset, dist, probes, vjps,
                probes_out, probe_offset, probe_dist, ycoef, y_out, clip);
}

void sample_step_out_cuda(const Tensor& x, const Tensor& out, const Tensor& logp,
                          const Tensor& logp_var, at::TensorList models, const Tensor& coef,
                          const std::optional<Tensor>& z, const Tensor& seeds, int64_t offset,
                          int64_t dist, const std::optional<Tensor>& probes, at::TensorList vjps,
                          const Tensor& probes_out, int64_t probe_offset, int64_t probe_dist,
                  const std::optional<Tensor>& ycoef, const Tensor& y_out, double clip) {
  run_step_cuda(x.contiguous(), out, logp, logp_var, models, coef, z, seeds, offset, dist, probes,
                vjps, probes_out, probe_offset, probe_dist, ycoef, y_out, clip);
}

}  // namespace
}  // namespace diffaccel

TORCH_LIBRARY_IMPL(diffaccel, CUDA, m) {
  m.impl("sample_step", &diffaccel::sample_step_cuda);
  m.impl("sample_step_out", &diffaccel::sample_step_out_cuda);
}
