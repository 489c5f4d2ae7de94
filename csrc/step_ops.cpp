// CPU registrations of the fused sampler step (schemas, fakes and the Triton version:
// diffaccel/ops/step.py): in place on x (sample_step) or writing out (sample_step_out); logp,
// logp_var and probes_out in place. Checks and entry points shared with CUDA:
// csrc/step_checks.h; kernel: csrc/cpu/step_cpu.cpp.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/step_kernels.h"
#include "step_checks.h"

namespace diffaccel {
namespace {

void run_step_cpu(const StepCall& c) {
  DA_DISPATCH_FLOATS(c.x.scalar_type(), "diffaccel::sample_step", [&] {
    cpu::sample_step<scalar_t>(c.args<scalar_t>());
  });
}

using Ops = StepOps<run_step_cpu>;

}  // namespace
}  // namespace diffaccel

TORCH_LIBRARY_IMPL(diffaccel, CPU, m) {
  m.impl("sample_step", &diffaccel::Ops::sample_step);
  m.impl("sample_step_out", &diffaccel::Ops::sample_step_out);
}
