"""Stroke size (docs/math.md Section 2): multi-scale block blur and the fused stroke noising.

    A_w x = (1 - sum_j w_j) x + sum_j w_j S_{k_j} x,   S_k = U_k P_k (k x k block means, upsampled)
    x_t   = alpha A_{w^x} x0 + sigma A_{w^e} eps
"""
import math

import torch

from . import _validate, reference
from .library import op


def stroke_blur(x, weights, scales, *, backend=None):
    """A_w x for ``x`` (B, C, H, W), per-sample ``weights`` (B, J) (or (J,) shared), integer
    ``scales`` (k_1..k_J), each >= 2; H and W need not be multiples of the scales.

    Differentiable in ``x`` and ``weights``. Returns x's dtype (float32 arithmetic inside).
    """
    x = _validate.image(x, "x")
    scales = _validate.scales(scales)
    w = _validate.weights(weights, x, len(scales), "weights")
    name = _validate.pick_backend(backend, x, "x", "stroke_blur")
    if name == "reference":
        return reference.stroke_blur(x, w, scales)
    return op("stroke_blur", name)(x, w.to(torch.float32), list(scales))


def stroke_noise(x0, alpha, sigma, *, scales, data_weights, noise_weights, seed, offset=0,
                 dist="normal", target="eps", backend=None):
    """Fused stroke noising: returns ``(x_t, target)``, both shaped and typed like ``x0``.

    x0: (B, C, H, W); alpha, sigma: numbers or (B,) tensors; data_weights, noise_weights: (B, J);
    seed: int or (B,) integer tensor and ``offset`` for the noise stream (docs/math.md Section 1);
    dist: normal | laplace | uniform | rademacher; target: "eps" (A_{w^e} eps), "x0"
    (A_{w^x} x0) or "v" (alpha A_{w^e} eps - sigma A_{w^x} x0).

    The compiled backends draw the noise inside the kernel and never store it. Gradients flow
    to ``x0`` (on the reference backend, to every floating-point input).
    """
    x0 = _validate.image(x0, "x0")
    scales = _validate.scales(scales)
    wx = _validate.weights(data_weights, x0, len(scales), "data_weights")
    we = _validate.weights(noise_weights, x0, len(scales), "noise_weights")
    a = _validate.per_sample(alpha, x0, "alpha")
    s = _validate.per_sample(sigma, x0, "sigma", nonneg=True)
    seeds = _validate.seeds(seed, x0.shape[0], x0.device)
    offset = _validate.offset(offset)
    dist_code = _validate.dist(dist)
    target_code = _validate.target(target)
    name = _validate.pick_backend(backend, x0, "x0", "stroke_noise")
    if name == "reference":
        return reference.stroke_noise(x0, a, s, wx, we, scales, seeds, offset, dist, target)
    if torch.is_grad_enabled():
        for arg, t in (("alpha", a), ("sigma", s), ("data_weights", wx), ("noise_weights", we)):
            if t.requires_grad:
                raise ValueError(f"{arg}: backend {name!r} differentiates stroke_noise in x0 only; "
                                 "detach it or use backend='reference'")
    return op("stroke_noise", name)(x0, a.to(torch.float32), s.to(torch.float32),
                wx.to(torch.float32), we.to(torch.float32), list(scales), seeds, offset,
                dist_code, target_code)


def stroke_weights(logsnr, scales, *, w_max=0.5, center=0.0, width=2.0):
    """Default roughness schedule: per-sample stroke weights (..., J) from the log-SNR (...).

    The paper's own schedule is not public; this one is documented and monotone:

        g(lambda) = sigmoid((center - lambda) / width)     in (0, 1): 1 at low SNR, 0 at high SNR
        w_j       = w_max * (k_j / sum_i k_i) * g(lambda) ** (k_max / k_j)

    Every weight falls as the SNR rises; coarser scales always weigh at least as much as finer
    ones (larger share, slower decay), so the blur is coarse at low SNR and vanishes at high SNR;
    the total stays below ``w_max < 1``. ``logsnr`` is ``log(alpha^2 / sigma^2)``, a number or a
    tensor of any shape (per-sample: (B,) gives (B, J), ready for stroke_noise).
    """
    scales = _validate.scales(scales)
    if not (isinstance(w_max, (int, float)) and 0 <= w_max < 1):
        raise ValueError(f"w_max: expected 0 <= w_max < 1, got {w_max!r}")
    if not (isinstance(width, (int, float)) and width > 0 and math.isfinite(width)):
        raise ValueError(f"width: expected a positive number, got {width!r}")
    lam = torch.as_tensor(logsnr)
    lam = lam.to(torch.float64 if lam.dtype == torch.float64 else torch.float32)
    if _validate.eager() and not bool(torch.isfinite(lam).all()):
        raise ValueError("logsnr: expected finite values")
    # per-scale constants on the host, in lam's dtype (torch.tensor(scales, device=...) would be
    # a host-to-device copy on every call)
    k = torch.tensor(scales, dtype=lam.dtype)
    coef = (w_max * (k / k.sum())).tolist()
    expo = (k.max() / k).tolist()
    g = torch.sigmoid((center - lam) / width)
    return torch.stack([coef[j] * g ** expo[j] for j in range(len(scales))], dim=-1)
