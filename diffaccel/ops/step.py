"""The fused sampler step ops (docs/math.md Section 3.1): ``sample_step`` (in place on x) and
``sample_step_out`` (the new x written to ``out``).

Schemas, fake functions, the Python mirror of their C++ argument checks (``csrc/step_checks.h``,
used in ``csrc/step_ops.cpp`` and ``csrc/cuda/step_ops_cuda.cpp``) and the Triton
implementations (``kernels/step.py``). Reference: ``diffaccel/reference/step.py``; public API:
``diffaccel/sampling/step.py`` (``fused_step``, ``make_coef``, ``make_ycoef``).

Both ops mutate their arguments in place and return nothing, so the fake functions only check
the arguments and return None: under ``torch.compile(fullgraph=True)`` the ops trace as
``auto_functionalized`` nodes that Inductor re-inplaces.
"""
import math

import torch

from ..layout import MAX_MODELS, MAX_PROBES, NO_INCREMENT, NORMAL, RADEMACHER, coef_width, y_width
from ..library import define, impl_triton, kernels, register_fake
from ._checks import (check, check_float_input, check_offset, check_same_device, check_seeds,
                      dtype_name, same_memory, sizes)

# in place on x [B, *S], logp [B] and logp_var [B]; models: K tensors [B, *S];
# coef [B, coef_width(K)]; probes [P, B, *S]; vjps: K x [P, B, *S]; dist NO_INCREMENT: no
# increment; probes_out [P', B, *S] or empty; the optional y line: ycoef [B, y_width(K)] or None,
# y_out [B, *S] or empty, clip > 0 or 0 (none)
define("sample_step",
       "(Tensor(a!) x, Tensor(b!) logp, Tensor(c!) logp_var, Tensor[] models, Tensor coef, "
       "Tensor? z, Tensor seeds, int offset, int dist, Tensor? probes, Tensor[] vjps, "
       "Tensor(d!) probes_out, int probe_offset, int probe_dist, Tensor? ycoef, "
       "Tensor(e!) y_out, float clip) -> ()")
# the same, writing the new x to out [B, *S] instead of x
define("sample_step_out",
       "(Tensor x, Tensor(a!) out, Tensor(b!) logp, Tensor(c!) logp_var, Tensor[] models, "
       "Tensor coef, Tensor? z, Tensor seeds, int offset, int dist, Tensor? probes, "
       "Tensor[] vjps, Tensor(d!) probes_out, int probe_offset, int probe_dist, Tensor? ycoef, "
       "Tensor(e!) y_out, float clip) -> ()")


# ------------------------------------------------------------------------------------ checks

def _check_accumulator(t, x, name):
    if t.numel() == 0:
        return
    check_same_device(x, t, name)
    check(t.dtype in (torch.float32, torch.float64) and t.dim() == 1 and t.shape[0] == x.shape[0]
          and t.is_contiguous(),
          name, ": expected an empty tensor or a contiguous float32/float64 tensor of shape (",
          x.shape[0], "), got ", dtype_name(t.dtype), " ", sizes(t))


def _check_like_x(t, x, name):
    check_same_device(x, t, name)
    check(t.shape == x.shape and t.dtype == x.dtype, name, ": expected the shape and dtype of x ",
          sizes(x), " ", dtype_name(x.dtype), ", got ", sizes(t), " ", dtype_name(t.dtype))


def _check_stack_like_x(t, x, name):
    """[P, *x.shape] with x's dtype; returns P."""
    check_same_device(x, t, name)
    check(t.dim() == x.dim() + 1 and t.shape[1:] == x.shape and t.dtype == x.dtype,
          name, ": expected shape (P, ", sizes(x), ") and dtype ", dtype_name(x.dtype), ", got ",
          sizes(t), " ", dtype_name(t.dtype))
    check(t.shape[0] <= MAX_PROBES, name, ": expected at most ", MAX_PROBES, " probes, got ",
          t.shape[0])
    return t.shape[0]


def check_sample_step(x, out, logp, logp_var, models, coef, z, seeds, offset, dist, probes, vjps,
                      probes_out, probe_offset, probe_dist, ycoef, y_out, clip):
    """The C++ kernels' checks of sample_step(_out)'s arguments (``out`` is ``x`` for
    sample_step, which also needs a contiguous x)."""
    check(x.dim() >= 1, "x: expected a (B, *S) tensor, got a 0-d tensor")
    check_float_input(x, "x")
    _check_like_x(out, x, "out")
    check(out.is_contiguous(), "out: expected a contiguous tensor (it is written in place)")
    _check_accumulator(logp, x, "logp")
    _check_accumulator(logp_var, x, "logp_var")
    check(logp_var.numel() == 0 or logp.numel() != 0, "logp_var: needs logp")
    K = len(models)
    check(K <= MAX_MODELS, "models: expected at most ", MAX_MODELS, " model outputs, got ", K)
    for m in models:
        _check_like_x(m, x, "models")
    check_same_device(x, coef, "coef")
    check(coef.dtype == torch.float32 and coef.dim() == 2 and coef.shape[0] == x.shape[0]
          and coef.shape[1] == coef_width(K),
          "coef: expected a float32 tensor of shape (", x.shape[0], ", ", coef_width(K), "), got ",
          dtype_name(coef.dtype), " ", sizes(coef))
    if z is not None:
        _check_like_x(z, x, "z")
    check_same_device(x, seeds, "seed")
    check_seeds(seeds, x.shape[0])
    check_offset(offset)
    check_offset(probe_offset)
    check(dist == NO_INCREMENT or NORMAL <= dist <= RADEMACHER,
          "dist: unknown increment law code ", dist)
    check(NORMAL <= probe_dist <= RADEMACHER, "probe_dist: unknown law code ", probe_dist)
    if probes is not None:
        P = _check_stack_like_x(probes, x, "probes")
        check(len(vjps) == K, "vjps: expected ", K, " tensors (one per model output), got ",
              len(vjps))
        for w in vjps:
            check(_check_stack_like_x(w, x, "vjps") == P, "vjps: expected ", P, " probes")
    else:
        check(len(vjps) == 0, "vjps: given without probes")
    if probes_out.numel() != 0:
        _check_stack_like_x(probes_out, x, "probes_out")
        check(probes_out.is_contiguous(), "probes_out: expected a contiguous tensor")
        check(probes is None or probes_out is not probes,
              "probes_out: must not be the probes tensor being read")
    # the y line (all optional): ycoef [B, y_width(K)] float32, y_out like x or empty, clip >= 0
    check(math.isfinite(clip) and clip >= 0.0,
          "clip: expected a finite value >= 0 (0: no clamp), got ", clip)
    if ycoef is not None:
        check_same_device(x, ycoef, "ycoef")
        check(ycoef.dtype == torch.float32 and ycoef.dim() == 2 and ycoef.shape[0] == x.shape[0]
              and ycoef.shape[1] == y_width(K),
              "ycoef: expected a float32 tensor of shape (", x.shape[0], ", ", y_width(K),
              "), got ", dtype_name(ycoef.dtype), " ", sizes(ycoef))
    if y_out.numel() != 0:
        check(ycoef is not None, "y_out: given without ycoef")
        _check_like_x(y_out, x, "y_out")
        check(y_out.is_contiguous(), "y_out: expected a contiguous tensor (it is written in place)")
        check(not same_memory(y_out, x) and not same_memory(y_out, out),
              "y_out: must not be x or out")


# ---------------------------------------------------------------------------- fake kernels

def _sample_step_fake(x, logp, logp_var, models, coef, z, seeds, offset, dist, probes, vjps,
                      probes_out, probe_offset, probe_dist, ycoef, y_out, clip):
    check(x.is_contiguous(), "x: expected a contiguous tensor")
    check_sample_step(x, x, logp, logp_var, models, coef, z, seeds, offset, dist, probes, vjps,
                      probes_out, probe_offset, probe_dist, ycoef, y_out, clip)


def _sample_step_out_fake(x, out, logp, logp_var, models, coef, z, seeds, offset, dist, probes,
                          vjps, probes_out, probe_offset, probe_dist, ycoef, y_out, clip):
    check_sample_step(x, out, logp, logp_var, models, coef, z, seeds, offset, dist, probes, vjps,
                      probes_out, probe_offset, probe_dist, ycoef, y_out, clip)


register_fake("sample_step", _sample_step_fake)
register_fake("sample_step_out", _sample_step_out_fake)


# ------------------------------------------------------------------------- Triton kernels

@impl_triton("sample_step")
def _sample_step_triton(x, logp, logp_var, models, coef, z, seeds, offset, dist, probes, vjps,
                        probes_out, probe_offset, probe_dist, ycoef, y_out, clip):
    _sample_step_fake(x, logp, logp_var, models, coef, z, seeds, offset, dist, probes, vjps,
                      probes_out, probe_offset, probe_dist, ycoef, y_out, clip)
    kernels("step").sample_step(x, x, logp, logp_var, models, coef, z, seeds, offset, dist,
                                probes, vjps, probes_out, probe_offset, probe_dist,
                                ycoef=ycoef, y_out=y_out, clip=clip)


@impl_triton("sample_step_out")
def _sample_step_out_triton(x, out, logp, logp_var, models, coef, z, seeds, offset, dist, probes,
                            vjps, probes_out, probe_offset, probe_dist, ycoef, y_out, clip):
    x = x.contiguous()  # read only (as in the C++ kernels)
    check_sample_step(x, out, logp, logp_var, models, coef, z, seeds, offset, dist, probes, vjps,
                      probes_out, probe_offset, probe_dist, ycoef, y_out, clip)
    kernels("step").sample_step(x, out, logp, logp_var, models, coef, z, seeds, offset, dist,
                                probes, vjps, probes_out, probe_offset, probe_dist,
                                ycoef=ycoef, y_out=y_out, clip=clip)
