"""Stroke size, docs/math.md Section 2, in plain PyTorch (differentiable through autograd).

    P_k: k x k block averages (a partial border block averages over its real size)
    U_k: nearest upsampling back;  S_k = U_k P_k  (orthogonal projection)
    A_w x = (1 - sum_j w_j) x + sum_j w_j S_{k_j} x
"""
import torch
import torch.nn.functional as F

from .random import noise

TARGETS = ("eps", "x0", "v")


def block_means(x, k):
    """P_k x: (B, C, H, W) -> (B, C, ceil(H/k), ceil(W/k)) block means, float32 or wider."""
    H, W = x.shape[-2:]
    nh, nw = -(-H // k), -(-W // k)
    xp = F.pad(x, (0, nw * k - W, 0, nh * k - H))
    sums = xp.reshape(*x.shape[:-2], nh, k, nw, k).sum(dim=(-3, -1))
    rows = torch.clamp(H - k * torch.arange(nh, device=x.device), max=k)
    cols = torch.clamp(W - k * torch.arange(nw, device=x.device), max=k)
    return sums / (rows[:, None] * cols[None, :]).to(sums.dtype)


def stroke_project(x, k):
    """S_k x = U_k P_k x, same shape as x."""
    H, W = x.shape[-2:]
    m = block_means(x, k)
    return m.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)[..., :H, :W]


def stroke_blur(x, weights, scales):
    """A_w x for x (B, C, H, W), weights (B, J), scales (k_1..k_J). Computes in float32
    (or float64 for float64 input) and returns x's dtype."""
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf, w = x.to(ct), weights.to(ct)
    y = (1 - w.sum(dim=1))[:, None, None, None] * xf
    for j, k in enumerate(scales):
        y = y + w[:, j, None, None, None] * stroke_project(xf, k)
    return y.to(x.dtype)


def stroke_noise(x0, alpha, sigma, data_weights, noise_weights, scales, seeds, offset=0,
                 dist="normal", target="eps"):
    """(x_t, target) of the stroke noising: x_t = alpha A_{w^x} x0 + sigma A_{w^e} eps.

    alpha, sigma: (B,) tensors; eps drawn from the Section 1 stream with ``seeds``/``offset``.
    """
    if target not in TARGETS:
        raise ValueError(f"target: expected one of {TARGETS}, got {target!r}")
    eps = noise(seeds, x0.shape, offset, dist, torch.float32, device=x0.device)
    ax = stroke_blur(x0.to(torch.float32), data_weights, scales)
    ae = stroke_blur(eps, noise_weights, scales)
    a = alpha.to(torch.float32)[:, None, None, None]
    s = sigma.to(torch.float32)[:, None, None, None]
    xt = a * ax + s * ae
    tgt = {"eps": ae, "x0": ax, "v": a * ae - s * ax}[target]
    return xt.to(x0.dtype), tgt.to(x0.dtype)
