// CUDA registration of the fused sampler step: the argument checks and entry points shared with
// the CPU side (csrc/step_checks.h), then the device guard and stream, the launch shape from the
// device's SM count, a float64 scratch for the per-block sums, and the launcher of step.cu. No
// host synchronization.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../step_checks.h"
#include "diffaccel/launch_grid.h"
#include "launch.h"
#include "step_kernels.h"

namespace diffaccel {
namespace {

using at::Tensor;

void run_step_cuda(const StepCall& c) {
  const Tensor& x = c.x;
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), D = x.numel() / B;
  const int sms = sm_count(x.device().index());
  const int64_t chunk = grid::split_chunk(B, D, grid::vec_width(static_cast<int>(x.element_size())), sms);
  // per-block sums, one row per (sample, split), with |z|^2 and |x_new|^2 after the probes' t_p
  // on the y line; only needed when logp is tracked
  const Tensor partial = c.logp.numel()
      ? at::empty({B * std::max<int64_t>(1, grid::splits(D, chunk)) * (3 + c.in.P + (c.in.ycoef.has_value() ? 2 : 0))}, x.options().dtype(at::kDouble))
      : Tensor();
  DA_DISPATCH_FLOATS(x.scalar_type(), "diffaccel::sample_step", [&] {
    double* pp = partial.defined() ? partial.data_ptr<double>() : nullptr;
    DA_CHECK_LAUNCH(cuda::sample_step<scalar_t>(c.args<scalar_t>(), pp, chunk, stream_of(x)));
  });
}

using Ops = StepOps<run_step_cuda>;

}  // namespace
}  // namespace diffaccel

TORCH_LIBRARY_IMPL(diffaccel, CUDA, m) {
  m.impl("sample_step", &diffaccel::Ops::sample_step);
  m.impl("sample_step_out", &diffaccel::Ops::sample_step_out);
}
