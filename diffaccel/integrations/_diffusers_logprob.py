"""Transition log-probabilities of the accelerated diffusers steps (``return_logprob=True``, as
DDPO and Flow-GRPO use them) in the step's one fused pass.

A stochastic step is x_prev = mean + std z with, per sample (coefficients (B,) tensors),

    x0   = clamp(bx x + bm M, -clip, clip)      (no clamp without clip; bx = bm = ay = 0: no x0)
    mean = ax x + ay x0 + am M

and the log-probability reported is log N(x_prev; mean, std^2 I) averaged over the D non-batch
dimensions:  lp = -|x_prev - mean|^2 / (2 D std^2) - log std - log(2 pi) / 2.

- Sampling (:func:`sample_with_logprob`): x_prev = mean + std z with z given or drawn in the
  kernel, and lp = c0 - |z|^2 / (2 D) from the op's z line (cz = -1/(2D), c0 = -log std - log(2 pi)/2)
  (x_prev returned in a narrower dtype than the step's: a second pass re-scores the rounded one).
- Re-scoring a stored x_prev (:func:`rescore`): the op computes u = (x_prev - mean)/std into a
  scratch buffer (x_prev passed as the increment, coefficients divided by std) and
  lp = c0 - |u|^2 / (2 D) from its |x_new|^2 line (cn = -1/(2D)); x0 is the y line's output.
  Gradients reach the model output through :class:`_Rescore` (backward in plain PyTorch:
  d lp / d M = (x_prev - mean) / (D std^2) (am + ay bm [x0 not clamped])).
"""
import math

import torch

from ..layout import (COEF_AX, COEF_AZ, COEF_C0, Y_AY, Y_BX, Y_CN, Y_CZ, coef_am, coef_width, y_bm,
                      y_width)
from ..sampling.step import fused_step
from ._diffusers_base import columns

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _lp_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _col(v, B):
    return v.reshape(-1).expand(B)


def _coefs(B, ax, am, std, bx, bm, ay, rescore, D):
    """(coef (B, coef_width(1)), ycoef (B, y_width(1))) of the op for sampling (rescore=False)
    or re-scoring."""
    zero = torch.zeros_like(ax)
    c0 = -torch.log(std) - _HALF_LOG_2PI
    half = torch.full_like(ax, -0.5 / D)
    if rescore:  # u = (x_prev - mean) / std in the op's x_new, |u|^2 from its cn term
        inv = 1 / std
        coef = {COEF_AX: -ax * inv, COEF_AZ: inv, COEF_C0: c0, coef_am(0): -am * inv}
        ycoef = {Y_BX: bx, Y_AY: -ay * inv, Y_CN: half, y_bm(0): bm}
    else:  # x_prev = mean + std z, |z|^2 from the op's cz term
        coef = {COEF_AX: ax, COEF_AZ: std, COEF_C0: c0, coef_am(0): am}
        ycoef = {Y_BX: bx, Y_AY: ay, Y_CZ: half, y_bm(0): bm}
    return columns(coef_width(1), coef, zero), columns(y_width(1), ycoef, zero)


def _rows(x, ax, am, std, bx, bm, ay):
    B = x.shape[0]
    return [_col(v, B).to(device=x.device, dtype=_lp_dtype(x)) for v in (ax, am, std, bx, bm, ay)]


def sample_with_logprob(x, model_output, *, ax, am, std, bx, bm, ay, clip=None, z=None, seeds=None,
                        out_dtype=None, backend=None):
    """(x_prev, x0, lp) in one fused pass: x_prev in ``out_dtype`` (default x's), x0 in x's
    dtype, lp (B,) float32 (float64 for float64 x); z given, else drawn from ``seeds`` in the
    kernel. When ``out_dtype`` is narrower than x's dtype (bfloat16 outputs), lp must be that of
    the rounded x_prev the caller gets (the one a later re-scoring sees: a bfloat16 rounding is
    ~0.4% of |x_prev|, large against a small std), so a second pass re-scores the rounded x_prev."""
    if z is None and seeds is None:
        raise ValueError("return_logprob: this step draws no noise")
    B, D = x.shape[0], x[0].numel()
    rows = _rows(x, ax, am, std, bx, bm, ay)
    coef, ycoef = _coefs(B, *rows, False, D)
    out_dtype = x.dtype if out_dtype is None else out_dtype
    rounds = torch.promote_types(out_dtype, x.dtype) != out_dtype
    lp = None if rounds else torch.zeros(B, dtype=_lp_dtype(x), device=x.device)
    x0 = torch.empty_like(x)
    prev = fused_step(x, [model_output], coef, ycoef=ycoef, y_out=x0, clip=clip, z=z, seed=seeds,
                      dist="normal" if z is None else None, out=torch.empty_like(x), logp=lp,
                      backend=backend)
    prev = prev.to(out_dtype)
    if rounds:
        lp, _ = _Rescore.apply(model_output, x, prev.to(x.dtype), *rows, clip, backend)
    return prev, x0, lp


class _Rescore(torch.autograd.Function):
    """(lp, x0) of a stored x_prev under model output M; differentiable in M only."""

    @staticmethod
    def forward(ctx, model_output, x, prev, ax, am, std, bx, bm, ay, clip, backend):
        B, D = x.shape[0], x[0].numel()
        coef, ycoef = _coefs(B, ax, am, std, bx, bm, ay, True, D)
        lp = torch.zeros(B, dtype=_lp_dtype(x), device=x.device)
        x0 = torch.empty_like(x)
        fused_step(x, [model_output.detach()], coef, ycoef=ycoef, y_out=x0, clip=clip, z=prev,
                   out=torch.empty_like(x), logp=lp, backend=backend)
        ctx.save_for_backward(model_output, x, prev, ax, am, std, bx, bm, ay)
        ctx.clip = clip
        return lp, x0

    @staticmethod
    def backward(ctx, g_lp, g_x0):
        m, x, prev, ax, am, std, bx, bm, ay = ctx.saved_tensors
        ct = x.dtype
        B, D = x.shape[0], x[0].numel()
        c = lambda v: v.to(ct).reshape(B, *([1] * (x.dim() - 1)))  # noqa: E731
        mf = m.detach().to(ct)
        y = c(bx) * x + c(bm) * mf
        if ctx.clip is not None:
            keep = ((y >= -ctx.clip) & (y <= ctx.clip)).to(ct)  # torch.clamp's gradient mask
            y = y.clamp(-ctx.clip, ctx.clip)
        else:
            keep = torch.ones_like(y)
        grad = torch.zeros_like(mf)
        if g_lp is not None:
            mean = c(ax) * x + c(ay) * y + c(am) * mf
            d = prev.to(ct) - mean
            grad = grad + c(g_lp) * d / (D * c(std) ** 2) * (c(am) + c(ay) * c(bm) * keep)
        if g_x0 is not None:
            grad = grad + g_x0.to(ct) * c(bm) * keep
        return (grad.to(m.dtype),) + (None,) * 10


def rescore(x, model_output, prev, *, ax, am, std, bx, bm, ay, clip=None, backend=None):
    """(lp, x0) of the stored ``prev`` (x0 in x's dtype; lp (B,) float32, float64 for float64 x)
    in one fused pass;
    gradients flow to ``model_output``."""
    ax, am, std, bx, bm, ay = _rows(x, ax, am, std, bx, bm, ay)
    return _Rescore.apply(model_output, x, prev.to(x.dtype).contiguous(), ax, am, std, bx, bm, ay,
                          clip, backend)
