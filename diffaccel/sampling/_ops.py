"""Fake (meta) functions and Triton registrations of the fused sampler step ops.

The schemas ``diffaccel::sample_step`` and ``diffaccel::sample_step_out`` (and their ``_triton``
twins) are defined once in ``diffaccel/library.py``; the C++ kernels are registered by the
extension (csrc/step_ops.cpp, csrc/cuda/step_ops_cuda.cpp). Both ops mutate their arguments
in place and return nothing, so the fake functions only return None: under
``torch.compile(fullgraph=True)`` they trace as ``auto_functionalized`` nodes that Inductor
re-inplaces.
"""
import torch

from ..library import TRITON_SUFFIX, _kernels, _lib

STEP_OPS = ("sample_step", "sample_step_out")


def _fake(*args):
    return None


for _name in STEP_OPS:
    for _q in (f"diffaccel::{_name}", f"diffaccel::{_name}{TRITON_SUFFIX}"):
        torch.library.register_fake(_q, _fake, lib=_lib)


@torch.library.impl(f"diffaccel::sample_step{TRITON_SUFFIX}", ("cpu", "cuda"), lib=_lib)
def _sample_step_triton(x, logp, logp_var, models, coef, z, seeds, offset, dist, probes, vjps,
                        probes_out, probe_offset, probe_dist, ycoef, y_out, clip):
    _kernels("step").sample_step(x, x, logp, logp_var, models, coef, z, seeds, offset, dist,
                                 probes, vjps, probes_out, probe_offset, probe_dist,
                                 ycoef=ycoef, y_out=y_out, clip=clip)


@torch.library.impl(f"diffaccel::sample_step_out{TRITON_SUFFIX}", ("cpu", "cuda"), lib=_lib)
def _sample_step_out_triton(x, out, logp, logp_var, models, coef, z, seeds, offset, dist, probes,
                            vjps, probes_out, probe_offset, probe_dist, ycoef, y_out, clip):
    _kernels("step").sample_step(x, out, logp, logp_var, models, coef, z, seeds, offset, dist,
                                 probes, vjps, probes_out, probe_offset, probe_dist,
                                 ycoef=ycoef, y_out=y_out, clip=clip)
