"""The stroke ops (docs/math.md Section 2): ``stroke_blur``, ``stroke_blur_backward``,
``stroke_noise``.

Schemas, fake functions, autograd, the Python mirror of their C++ argument checks
(``csrc/stroke_checks.h``, used in ``csrc/stroke_ops.cpp`` and ``csrc/cuda/stroke_ops_cuda.cpp``)
and the Triton implementations (``kernels/stroke.py``). Reference:
``diffaccel/reference/stroke.py``; public API: ``diffaccel/stroke.py``.
"""
import torch

from ..layout import MAX_SCALES, TARGET_EPS, TARGET_V, TARGET_X0
from ..library import define, impl_triton, kernels, register_autograd, register_fake
from ._checks import (check, check_dist, check_float_input, check_offset, check_same_device,
                      check_seeds, dtype_name, sizes)

# x [B, C, H, W], weights [B, J] -> A_w x
define("stroke_blur", "(Tensor x, Tensor weights, int[] scales) -> Tensor")
# -> (A_w grad, grad_w [B, J])
define("stroke_blur_backward",
       "(Tensor grad, Tensor x, Tensor weights, int[] scales) -> (Tensor, Tensor)")
# -> (x_t, target)
define("stroke_noise",
       "(Tensor x0, Tensor alpha, Tensor sigma, Tensor data_weights, Tensor noise_weights, "
       "int[] scales, Tensor seeds, int offset, int dist, int target) -> (Tensor, Tensor)")


# ------------------------------------------------------------------------------------ checks

def check_image(x, name):
    check(x.dim() == 4, name, ": expected a (B, C, H, W) tensor, got shape ", sizes(x))
    check_float_input(x, name)


def check_scales(scales):
    check(0 < len(scales) <= MAX_SCALES, "scales: expected 1 to ", MAX_SCALES, " scales, got ",
          len(scales))
    for k in scales:
        check(k >= 2, "scales: every scale must be >= 2, got ", k)


def check_weights(w, x, scales, name):
    check_same_device(x, w, name)
    check(w.dtype == torch.float32, name, ": expected float32, got ", dtype_name(w.dtype))
    check(w.dim() == 2 and w.shape[0] == x.shape[0] and w.shape[1] == len(scales),
          name, ": expected shape (", x.shape[0], ", ", len(scales), "), got ", sizes(w))


def check_per_sample(t, x, name):
    check_same_device(x, t, name)
    check(t.dtype == torch.float32 and t.dim() == 1 and t.shape[0] == x.shape[0], name,
          ": expected a float32 tensor of shape (", x.shape[0], "), got ", dtype_name(t.dtype),
          " ", sizes(t))


def check_target(target):
    check(TARGET_EPS <= target <= TARGET_V, "target: unknown target code ", target)


def check_stroke_blur(x, weights, scales):
    """The C++ kernels' checks of stroke_blur's arguments."""
    check_image(x, "x")
    check_scales(scales)
    check_weights(weights, x, scales, "weights")


def check_stroke_blur_backward(grad, x, weights, scales):
    """The C++ kernels' checks of stroke_blur_backward's arguments."""
    check_stroke_blur(x, weights, scales)
    check_same_device(x, grad, "grad")
    check(grad.shape == x.shape and grad.dtype == x.dtype,
          "grad: expected the shape and dtype of x")


def check_stroke_noise(x0, alpha, sigma, data_weights, noise_weights, scales, seeds, offset, dist,
                       target):
    """The C++ kernels' checks of stroke_noise's arguments; returns whether the seeds are
    per-sample."""
    check_image(x0, "x0")
    check_scales(scales)
    check_weights(data_weights, x0, scales, "data_weights")
    check_weights(noise_weights, x0, scales, "noise_weights")
    check_per_sample(alpha, x0, "alpha")
    check_per_sample(sigma, x0, "sigma")
    check_same_device(x0, seeds, "seed")
    check_offset(offset)
    check_dist(dist)
    check_target(target)
    return check_seeds(seeds, x0.shape[0])


# ---------------------------------------------------------------------------- fake kernels

def _empty_contiguous(t):
    return torch.empty_like(t, memory_format=torch.contiguous_format)


def _stroke_blur_fake(x, weights, scales):
    check_stroke_blur(x, weights, scales)
    return _empty_contiguous(x)


def _stroke_blur_backward_fake(grad, x, weights, scales):
    check_stroke_blur_backward(grad, x, weights, scales)
    return _empty_contiguous(x), _empty_contiguous(weights)


def _stroke_noise_fake(x0, alpha, sigma, wx, we, scales, seeds, offset, dist, target):
    check_stroke_noise(x0, alpha, sigma, wx, we, scales, seeds, offset, dist, target)
    return _empty_contiguous(x0), _empty_contiguous(x0)


register_fake("stroke_blur", _stroke_blur_fake)
register_fake("stroke_blur_backward", _stroke_blur_backward_fake)
register_fake("stroke_noise", _stroke_noise_fake)


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
        if ctx.target == TARGET_X0:
            g = g + g_target.float()
        elif ctx.target == TARGET_V:
            g = g - sigma[:, None, None, None] * g_target.float()
        blur = getattr(torch.ops.diffaccel, "stroke_blur" + suffix)
        gx0 = blur(g.to(g_xt.dtype), wx, ctx.scales)
        return (gx0,) + (None,) * 9
    return backward


register_autograd("stroke_blur", _blur_backward_for, _blur_setup)
register_autograd("stroke_noise", _noise_backward_for, _noise_setup)


# ------------------------------------------------------------------------- Triton kernels

@impl_triton("stroke_blur")
def _stroke_blur_triton(x, weights, scales):
    check_stroke_blur(x, weights, scales)
    return kernels("stroke").stroke_blur(x.contiguous(), weights.contiguous(), tuple(scales))


@impl_triton("stroke_blur_backward")
def _stroke_blur_backward_triton(grad, x, weights, scales):
    check_stroke_blur_backward(grad, x, weights, scales)
    return kernels("stroke").stroke_blur_backward(grad.contiguous(), x.contiguous(),
                                                  weights.contiguous(), tuple(scales))


@impl_triton("stroke_noise")
def _stroke_noise_triton(x0, alpha, sigma, wx, we, scales, seeds, offset, dist, target):
    check_stroke_noise(x0, alpha, sigma, wx, we, scales, seeds, offset, dist, target)
    return kernels("stroke").stroke_noise(
        x0.contiguous(), alpha.contiguous(), sigma.contiguous(), wx.contiguous(), we.contiguous(),
        tuple(scales), seeds.contiguous(), offset, dist, target)
