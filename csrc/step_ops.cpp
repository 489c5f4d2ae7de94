// CPU registrations of the fused sampler step (schemas: diffaccel/library.py): in place on x
// (sample_step) or writing out (sample_step_out); logp, logp_var and probes_out in place.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/step_kernels.h"
#include "step_checks.h"

namespace diffaccel {
namespace {

using at::Tensor;

void run_step_cpu(const Tensor& x, const Tensor& out, const Tensor& logp, const Tensor& logp_var,
                  at::TensorList models, const Tensor& coef, const std::optional<Tensor>& z,
                  const Tensor& seeds, int64_t offset, int64_t dist,
                  const std::optional<Tensor>& probes, at::TensorList vjps,
                  const Tensor& probes_out, int64_t probe_offset, int64_t probe_dist,
                  const std::optional<Tensor>& ycoef, const Tensor& y_out, double clip) {
  TORCH_CHECK(x.is_contiguous(), "x: expected a contiguous tensor");
  const StepInputs in = check_sample_step(x, out, logp, logp_var, models, coef, z, seeds, offset,
                                          dist, probes, vjps, probes_out, probe_offset, probe_dist,
                                          ycoef, y_out, clip);
  // D = 0 still adds c0 to logp (the reference's sums over no elements are 0)
  if (x.size(0) == 0) return;
  DA_DISPATCH_FLOATS(x.scalar_type(), "diffaccel::sample_step", [&] {
    cpu::sample_step<scalar_t>(make_step_args<scalar_t>(x, out, logp, logp_var, in, offset, dist,
                                                        probes_out, probe_offset, probe_dist,
                                                        y_out, clip));
  });
}

void sample_step_cpu(const Tensor& x, const Tensor& logp, const Tensor& logp_var,
                     at::TensorList models, const Tensor& coef, const std::optional<Tensor>& z,
                     const Tensor& seeds, int64_t offset, int64_t dist,
                     const std::optional<Tensor>& probes, at::TensorList vjps,
                     const Tensor& probes_out, int64_t probe_offset, int64_t probe_dist,
                  const std::optional<Tensor>& ycoef, const Tensor& y_out, double clip) {
  run_step_cpu(x, x, logp, logp_var, models, coef, z, seeds, offset, dist, probes, vjps,
               probes_out, probe_offset, probe_dist, ycoef, y_out, clip);
}

void sample_step_out_cpu(const Tensor& x, const Tensor& out, const Tensor& logp,
                         const Tensor& logp_var, at::TensorList models, const Tensor& coef,
                         const std::optional<Tensor>& z, const Tensor& seeds, int64_t offset,
                         int64_t dist, const std::optional<Tensor>& probes, at::TensorList vjps,
                         const Tensor& probes_out, int64_t probe_offset, int64_t probe_dist,
                  const std::optional<Tensor>& ycoef, const Tensor& y_out, double clip) {
  const Tensor xc = x.contiguous();
  run_step_cpu(xc, out, logp, logp_var, models, coef, z, seeds, offset, dist, probes, vjps,
               probes_out, probe_offset, probe_dist, ycoef, y_out, clip);
}

}  // namespace
}  // namespace diffaccel

TORCH_LIBRARY_IMPL(diffaccel, CPU, m) {
  m.impl("sample_step", &diffaccel::sample_step_cpu);
  m.impl("sample_step_out", &diffaccel::sample_step_out_cpu);
}
