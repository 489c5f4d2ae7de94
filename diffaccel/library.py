"""The ``torch.library`` ops of diffaccel, defined once here.

Each op has one schema and two names: ``diffaccel::<op>`` (C++ kernels, registered by the
extension for the CPU and CUDA dispatch keys) and ``diffaccel::<op>_triton`` (Triton kernels,
registered below for CPU tensors under TRITON_INTERPRET=1 and for CUDA tensors). Fake (meta)
functions and autograd formulas are registered here for both, so ``torch.library.opcheck``
passes and ``torch.compile(fullgraph=True)`` traces calls without graph breaks.

Integer codes: dist normal=0, laplace=1, uniform=2, rademacher=3; target eps=0, x0=1, v=2.
"""
import torch

from . import _ext
from .layout import DISTS, TARGETS  # noqa: F401  (re-exported)


SCHEMAS = {
    # [*shape, 4] int64: the four uint32 Philox outputs per element
    "philox_uint32": "(Tensor seeds, int[] shape, int offset) -> Tensor",
    # [*shape] draws of law `dist`
    "noise": "(Tensor seeds, int[] shape, int offset, int dist, ScalarType dtype) -> Tensor",
    # x [B, C, H, W], weights [B, J] -> A_w x
    "stroke_blur": "(Tensor x, Tensor weights, int[] scales) -> Tensor",
    # -> (A_w grad, grad_w [B, J])
    "stroke_blur_backward":
        "(Tensor grad, Tensor x, Tensor weights, int[] scales) -> (Tensor, Tensor)",
    # -> (x_t, target)
    "stroke_noise":
        "(Tensor x0, Tensor alpha, Tensor sigma, Tensor data_weights, Tensor noise_weights, "
        "int[] scales, Tensor seeds, int offset, int dist, int target) -> (Tensor, Tensor)",
    # fused sampler step (docs/math.md 3.1), in place on x [B, *S], logp [B] and logp_var [B];
    # models: K tensors [B, *S]; coef [B, 7 + 3K]; probes [P, B, *S]; vjps: K x [P, B, *S];
    # dist -1: no increment; probes_out [P', B, *S] or empty; the optional y line: ycoef
    # [B, 5 + K] or None, y_out [B, *S] or empty, clip > 0 or 0 (none) (diffaccel/sampling/step.py)
    "sample_step":
        "(Tensor(a!) x, Tensor(b!) logp, Tensor(c!) logp_var, Tensor[] models, Tensor coef, "
        "Tensor? z, Tensor seeds, int offset, int dist, Tensor? probes, Tensor[] vjps, "
        "Tensor(d!) probes_out, int probe_offset, int probe_dist, Tensor? ycoef, "
        "Tensor(e!) y_out, float clip) -> ()",
    # the same, writing the new x to out [B, *S] instead of x
    "sample_step_out":
        "(Tensor x, Tensor(a!) out, Tensor(b!) logp, Tensor(c!) logp_var, Tensor[] models, "
        "Tensor coef, Tensor? z, Tensor seeds, int offset, int dist, Tensor? probes, "
        "Tensor[] vjps, Tensor(d!) probes_out, int probe_offset, int probe_dist, Tensor? ycoef, "
        "Tensor(e!) y_out, float clip) -> ()",
    # VRG (docs/math.md 5): pred, target [B, ...], bins [B] int64 -> [num_bins, 3] float64
    # (element count, sum e, sum e^2), e = pred - target
    "vrg_error_moments": "(Tensor pred, Tensor target, Tensor bins, int num_bins) -> Tensor",
    # abar [K, N] float64 trajectories, MSE table grid [M] (increasing), mse [M] -> cpe [K];
    # solver ddim=0, dpm2m=1 (diffaccel/vrg/trajectory.py)
    "vrg_cumulative_error": "(Tensor abar, Tensor grid, Tensor mse, int solver) -> Tensor",
    # -> (cpe [K], d cpe / d abar [K, N])
    "vrg_cumulative_error_grad":
        "(Tensor abar, Tensor grid, Tensor mse, int solver) -> (Tensor, Tensor)",
}
TRITON_SUFFIX = "_triton"

_lib = torch.library.Library("diffaccel", "DEF")
for _name, _schema in SCHEMAS.items():
    _lib.define(_name + _schema)
    _lib.define(_name + TRITON_SUFFIX + _schema)


def op(name, backend):
    """The OpOverload running ``name`` on ``backend`` ('cpu'/'cuda' -> C++, 'triton'). For the
    C++ backends it loads the extension first: loading registers their kernels."""
    if backend in ("cpu", "cuda"):
        _ext.load()
    suffix = TRITON_SUFFIX if backend == "triton" else ""
    return getattr(torch.ops.diffaccel, name + suffix).default


def _both(name):
    return (f"diffaccel::{name}", f"diffaccel::{name}{TRITON_SUFFIX}")


# ---------------------------------------------------------------------------- fake kernels

def _register_fake(name, fn):
    for qualname in _both(name):
        torch.library.register_fake(qualname, fn, lib=_lib)


def _empty_contiguous(t):
    return torch.empty_like(t, memory_format=torch.contiguous_format)


_register_fake("philox_uint32", lambda seeds, shape, offset: seeds.new_empty((*shape, 4)))
_register_fake("noise", lambda seeds, shape, offset, dist, dtype: seeds.new_empty(shape, dtype=dtype))
_register_fake("stroke_blur", lambda x, weights, scales: _empty_contiguous(x))
_register_fake("stroke_blur_backward",
               lambda grad, x, weights, scales: (_empty_contiguous(x), _empty_contiguous(weights)))
_register_fake("stroke_noise",
               lambda x0, alpha, sigma, wx, we, scales, seeds, offset, dist, target:
               (_empty_contiguous(x0), _empty_contiguous(x0)))


# -------------------------------------------------------------------------------- autograd

def _blur_setup(ctx, inputs, output):
    x, weights, scales = inputs
    ctx.save_for_backward(x, weights)
    ctx.scales = scales


def _blur_backward_for(suffix):
    def backward(ctx, grad):
        x, weights = ctx.saved_tensors
        # A_w is self-adjoint: grad_x = A_w grad; grad_w[b, j] = sum (S_kj x - x) grad.
        backward_op = getattr(torch.ops.diffaccel, "stroke_blur_backward" + suffix)
        gx, gw = backward_op(grad.to(x.dtype), x, weights, ctx.scales)
        return (gx if ctx.needs_input_grad[0] else None,
                gw if ctx.needs_input_grad[1] else None, None)
    return backward


def _noise_setup(ctx, inputs, output):
    x0, alpha, sigma, wx, we, scales, seeds, offset, dist, target = inputs
    ctx.save_for_backward(alpha, sigma, wx)
    ctx.scales, ctx.target = scales, target


def _noise_backward_for(suffix):
    def backward(ctx, g_xt, g_target):
        # x_t = alpha A_wx x0 + ..., target = c A_wx x0 + ... with c = 0 (eps), 1 (x0), -sigma (v):
        # grad_x0 = A_wx (alpha g_xt + c g_target)   (A_wx self-adjoint).
        # Only x0 is differentiable; diffaccel.stroke_noise refuses grads on the other inputs.
        alpha, sigma, wx = ctx.saved_tensors
        a = alpha[:, None, None, None]
        g = a * g_xt.float()
        if ctx.target == 1:
            g = g + g_target.float()
        elif ctx.target == 2:
            g = g - sigma[:, None, None, None] * g_target.float()
        blur = getattr(torch.ops.diffaccel, "stroke_blur" + suffix)
        gx0 = blur(g.to(g_xt.dtype), wx, ctx.scales)
        return (gx0,) + (None,) * 9
    return backward


for _suffix in ("", TRITON_SUFFIX):
    torch.library.register_autograd(f"diffaccel::stroke_blur{_suffix}", _blur_backward_for(_suffix),
                                    setup_context=_blur_setup, lib=_lib)
    torch.library.register_autograd(f"diffaccel::stroke_noise{_suffix}", _noise_backward_for(_suffix),
                                    setup_context=_noise_setup, lib=_lib)


# ------------------------------------------------------------------------- Triton kernels

def _kernels(module):
    import importlib

    return importlib.import_module(f"diffaccel.kernels.{module}")


def _impl_triton(name):
    def register(fn):
        torch.library.impl(f"diffaccel::{name}{TRITON_SUFFIX}", ("cpu", "cuda"), lib=_lib)(fn)
        return fn
    return register


@_impl_triton("philox_uint32")
def _philox_triton(seeds, shape, offset):
    return _kernels("random").philox_uint32(seeds.contiguous(), tuple(shape), offset)


@_impl_triton("noise")
def _noise_triton(seeds, shape, offset, dist, dtype):
    return _kernels("random").noise(seeds.contiguous(), tuple(shape), offset, dist, dtype)


@_impl_triton("stroke_blur")
def _stroke_blur_triton(x, weights, scales):
    return _kernels("stroke").stroke_blur(x.contiguous(), weights.contiguous(), tuple(scales))


@_impl_triton("stroke_blur_backward")
def _stroke_blur_backward_triton(grad, x, weights, scales):
    from .reference.stroke import block_means

    grad, x = grad.contiguous(), x.contiguous()
    gx = _kernels("stroke").stroke_blur(grad, weights.contiguous(), tuple(scales))
    # grad_w[b, j] = sum_{c, blocks} n_blk mean_x mean_g - <x, g>: a reduction over the small
    # block-mean tensors, left to PyTorch.
    xd, gd = x.double(), grad.double()
    xg = (xd * gd).flatten(1).sum(1)
    cols = []
    for k in scales:
        H, W = x.shape[-2:]
        rows = torch.clamp(H - k * torch.arange(-(-H // k), device=x.device), max=k)
        colw = torch.clamp(W - k * torch.arange(-(-W // k), device=x.device), max=k)
        n = (rows[:, None] * colw[None, :]).double()
        cols.append((block_means(xd, k) * block_means(gd, k) * n).flatten(1).sum(1) - xg)
    return gx, torch.stack(cols, 1).float()


@_impl_triton("stroke_noise")
def _stroke_noise_triton(x0, alpha, sigma, wx, we, scales, seeds, offset, dist, target):
    return _kernels("stroke").stroke_noise(
        x0.contiguous(), alpha.contiguous(), sigma.contiguous(), wx.contiguous(), we.contiguous(),
        tuple(scales), seeds.contiguous(), offset, dist, target)
