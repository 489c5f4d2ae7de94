"""The fused sampler step, docs/math.md Section 3.1, in plain PyTorch (the contract of every backend).

Per sample b (x, model outputs M_k, increment z, probes v_p and vector-Jacobian products
w_{k,p} flattened to D elements), with the per-sample coefficients in ``coef[b]`` (column names: ``diffaccel/layout.py``):

    columns COEF_AX .. COEF_C3 (0..6):           ax, az, sx, c0, c1, c2, c3
    columns coef_am(k), coef_sm(k), coef_cw(k):  am_k, sm_k, cw_k    (7+3k..9+3k, k = 0..K-1)

    x_new = ax x + az z + sum_k am_k M_k
    s     = sx x + sum_k sm_k M_k                      (the score at the old x)
    t_p   = sum_i v_{p,i} sum_k cw_k w_{k,p,i}         (one Hutchinson estimate per probe)
    logp     += c0 + c1 |s|^2 + c2 (s . z) + c3 (x . s) + mean_p t_p
    logp_var += sum_p (t_p - mean_p t_p)^2 / (P (P - 1))      (P >= 2; the estimate's variance)

The optional y line (``ycoef[b]``, y_width(K) = 5 + K columns: Y_BX .. Y_CN = bx, ay, sy, cz,
cn, then y_bm(k) = bm_k; e.g. a sampler's predicted x0, clamped, returned beside the step from
the same pass)::

    y      = bx x + sum_k bm_k M_k
    yc     = clamp(y, -clip, clip)  (clip > 0 given; NaN stays NaN)  else  y
    x_new += ay yc          (added after the model terms)
    s     += sy yc
    logp  += cz |z|^2 + cn |x_new|^2      (x_new before rounding to x's dtype)

z: the given tensor, else draws of law ``dist`` from the Section 1 stream (``seeds``,
``offset``; layout of a (B, *S) tensor), else (``dist = None``; the ops' NO_INCREMENT) zero.
The next step's probes (P' of them, law ``probe_dist``) are the (B, P', *S) noise at
``probe_offset``, stored as (P', B, *S). Arithmetic is float32 (float64 for float64 x); sums are taken in float64.
"""
import math

import torch

from ..layout import COEF_HEAD, COEF_PER_MODEL, DISTS, Y_HEAD, coef_width, y_width
from .random import noise


def draw_probes(seeds, n, shape, offset, dist):
    """(n, B, *S) probes: the (B, n, *S) noise of law ``dist`` at ``offset``, batch moved second."""
    B = shape[0]
    v = noise(seeds, (B, n, *shape[1:]), offset, dist, torch.float32, device=seeds.device)
    return v.transpose(0, 1).contiguous()


def sample_step(x, logp, logp_var, models, coef, z, seeds, offset, dist, probes, vjps,
                n_probes_out, probe_offset, probe_dist, ycoef=None, clip=None):
    """Functional form: returns (x_new, logp_new, logp_var_new, probes_out, yc).

    ``logp`` / ``logp_var`` may be empty tensors (not tracked; returned unchanged); ``dist`` is a
    law name or None (no increment); ``probe_dist`` a law name; ``ycoef`` (B, 5 + K) or None (no
    y line; then yc is None); ``clip`` a float > 0 or None. yc is returned in x's dtype.
    """
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    B = x.shape[0]
    D = math.prod(x.shape[1:])  # (not -1: B may be 0)
    xf = x.to(ct).reshape(B, D)
    c = coef.to(ct)
    if z is not None:
        zf = z.to(ct).reshape(B, D)
    elif dist is not None:
        zf = noise(seeds, xf.shape, offset, dist, torch.float32, device=x.device).to(ct)
    else:
        zf = torch.zeros_like(xf)
    xn = c[:, 0:1] * xf + c[:, 1:2] * zf
    s = c[:, 2:3] * xf
    yc = ycoef.to(ct) if ycoef is not None else None
    y = yc[:, 0:1] * xf if yc is not None else None
    for k, m in enumerate(models):
        mf = m.to(ct).reshape(B, D)
        j = COEF_HEAD + COEF_PER_MODEL * k
        xn = xn + c[:, j:j + 1] * mf
        s = s + c[:, j + 1:j + 2] * mf
        if yc is not None:
            y = y + yc[:, Y_HEAD + k:Y_HEAD + k + 1] * mf
    if yc is not None:
        if clip is not None:
            y = y.clamp(-clip, clip)  # torch.clamp keeps NaN
        xn = xn + yc[:, 1:2] * y
        s = s + yc[:, 2:3] * y
    if logp.numel():
        sd, zd, xd, cd = s.double(), zf.double(), xf.double(), c.double()
        acc = (cd[:, 3] + cd[:, 4] * (sd * sd).sum(1) + cd[:, 5] * (sd * zd).sum(1)
               + cd[:, 6] * (xd * sd).sum(1))
        var = torch.zeros(B, dtype=torch.float64, device=x.device)
        if probes is not None and probes.shape[0] and len(vjps):
            P = probes.shape[0]
            v = probes.to(ct).reshape(P, B, D).double()
            t = torch.zeros(P, B, dtype=torch.float64, device=x.device)
            for k, w in enumerate(vjps):
                j = COEF_HEAD + COEF_PER_MODEL * k + 2
                t = t + cd[None, :, j] * (v * w.to(ct).reshape(P, B, D).double()).sum(-1)
            acc = acc + t.mean(0)
            if P > 1:
                var = t.var(0, unbiased=True) / P
        if yc is not None:
            xnd, ycd = xn.double(), yc.double()
            acc = acc + ycd[:, 3] * (zd * zd).sum(1) + ycd[:, 4] * (xnd * xnd).sum(1)
        logp = logp + acc.to(logp.dtype)
        if logp_var.numel():
            logp_var = logp_var + var.to(logp_var.dtype)
    if n_probes_out:
        pout = draw_probes(seeds, n_probes_out, x.shape, probe_offset, probe_dist).to(x.dtype)
    else:
        pout = None
    y_out = None if yc is None else y.reshape(x.shape).to(x.dtype)
    return xn.reshape(x.shape).to(x.dtype), logp, logp_var, pout, y_out


__all__ = ["COEF_HEAD", "COEF_PER_MODEL", "Y_HEAD", "coef_width", "y_width", "draw_probes",
           "sample_step", "DISTS"]
