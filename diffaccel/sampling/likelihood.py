"""Exact-likelihood estimation through the probability-flow ODE (MATH.md 3.2, 3.3).

Encode the data from ``sigma_min`` up to ``sigma_max`` in ``t = log sigma``:
``dx/dt = x - Dn(x, e^t)`` and ``dDelta/dt = div Dn - D``, then

    log p_{sigma_min}(x) = log N(x(sigma_max); 0, sigma_max^2 I) - Delta(sigma_max).

Fixed-step solvers (euler, heun, rk4) combine their stages and accumulate the Hutchinson
estimates in one fused step per ODE step, with fresh probes per step (drawn by the step), so the
estimate's variance is the sum of the steps' variances (weights squared). ``dopri5`` is adaptive
(Dormand-Prince 5(4), error control on x and Delta in the RMS norm, like torchdiffeq with
``atol = rtol = 1e-4`` by default); it keeps one set of probes for the whole solve (needed by
its FSAL stage reuse) and reports the standard error over probes (``probes >= 2``).
"""
import math

import torch

from .samplers import _Noise, _check_probes, denoise_with_vjps, draw_probes, prior_logp
from .step import fused_step, make_coef

__all__ = ["log_likelihood", "bits_per_dim", "SOLVERS"]

SOLVERS = ("euler", "heun", "rk4", "dopri5")
_TABLEAUS = {
    "euler": ([], [1.0], [0.0]),
    "heun": ([[1.0]], [0.5, 0.5], [0.0, 1.0]),
    "rk4": ([[0.5], [0.0, 0.5], [0.0, 0.0, 1.0]], [1 / 6, 1 / 3, 1 / 3, 1 / 6], [0.0, 0.5, 0.5, 1.0]),
}
# Dormand-Prince 5(4)
_DP_C = [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0]
_DP_A = [[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
         [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
         [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
         [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]]
_DP_B = [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0]
_DP_B4 = [5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40]


def bits_per_dim(logp, dim, *, pixel_scale=None):
    """Bits per dimension ``-log p / (D ln 2)``. ``pixel_scale``: the data were divided by it
    (e.g. 127.5 for 8-bit images mapped to [-1, 1]), so log p in pixel units is
    ``log p - D log(pixel_scale)``."""
    logp = torch.as_tensor(logp, dtype=torch.float64)
    if pixel_scale is not None:
        logp = logp - dim * math.log(pixel_scale)
    return -logp / (dim * math.log(2.0))


def _prior(prior, x, sigma_max):
    if prior is None:
        return prior_logp(x, sigma_max)
    return torch.as_tensor(prior(x), dtype=torch.float64, device=x.device).reshape(x.shape[0])


def _stage(model, x, t, extra_args, probes):
    """(k = x - Dn, Dn's vjps with the probes) at log-level t."""
    sigma = torch.exp(t).to(x.dtype) * x.new_ones(x.shape[0])
    den, w = denoise_with_vjps(model, x, sigma, extra_args, probes)
    return (x - den), w


def _check_args(x, sigma_min, sigma_max, steps, solver):
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or not x.is_floating_point():
        raise TypeError("x: expected a floating-point (B, *S) tensor")
    if not (0 < sigma_min < sigma_max < math.inf):
        raise ValueError(f"sigma_min, sigma_max: expected 0 < sigma_min < sigma_max, got "
                         f"{sigma_min!r}, {sigma_max!r}")
    if solver not in SOLVERS:
        raise ValueError(f"solver: expected one of {SOLVERS}, got {solver!r}")
    if solver != "dopri5" and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps: expected a positive int for solver {solver!r}, got {steps!r}")


def log_likelihood(model, x, sigma_min, sigma_max, *, steps=None, solver="heun", probes=1,
                   seed=None, extra_args=None, probe_dist="rademacher", atol=1e-4, rtol=1e-4,
                   max_steps=10000, prior=None, backend=None):
    """``(logp, info)``: log p_{sigma_min}(x) (float64, (B,)) through the PF-ODE, and a dict
    with ``stderr`` (the Hutchinson estimate's standard error per sample, (B,); NaN with one
    probe, where no variance can be estimated),
    ``nfe`` (model evaluations, each with ``probes`` vector-Jacobian products), ``steps`` and
    ``x_T`` (the encoded latent) and ``delta`` (the integral term). ``steps`` is required for
    euler / heun / rk4. ``prior``: a callable giving log p_{sigma_max}(x_T) per sample (default
    ``log N(x_T; 0, sigma_max^2 I)``, which ignores the data's spread at sigma_max: with data of
    norm comparable to sigma_max it is off by O(|x_0| |x_T| / sigma_max^2) nats per sample)."""
    _check_args(x, sigma_min, sigma_max, steps, solver)
    _check_probes(probes)
    extra_args = {} if extra_args is None else extra_args
    if solver == "dopri5":
        return _dopri5(model, x, sigma_min, sigma_max, probes, seed, extra_args, probe_dist,
                       atol, rtol, max_steps, prior, backend)
    A, b, c = _TABLEAUS[solver]
    x = x.detach().clone().contiguous()
    B, D = x.shape[0], x[0].numel()
    noise = _Noise(seed, x)
    P = probes
    cur = draw_probes(x, P, noise.seed, noise.probe_offset(0, P), probe_dist, backend)
    spare = torch.empty_like(cur)
    delta = torch.zeros(B, dtype=torch.float64, device=x.device)
    var = torch.zeros_like(delta)
    t0, t1 = math.log(sigma_min), math.log(sigma_max)
    h = (t1 - t0) / steps
    nfe = 0
    for i in range(steps):
        t = t0 + i * h
        ks, ws = [], []
        for j in range(len(b)):
            xj = x
            if j:
                xj = x.clone()
                for m, a in enumerate(A[j - 1]):
                    if a:
                        xj.add_(ks[m], alpha=h * a)
            k, w = _stage(model, xj, torch.tensor(t + c[j] * h, dtype=torch.float64), extra_args, cur)
            ks.append(k)
            ws.append(w)
            nfe += 1
        last = i == steps - 1
        coef = make_coef(B, ax=1.0, am=[h * bj for bj in b], c0=-h * D,
                         cw=[h * bj for bj in b], device=x.device)
        fused_step(x, ks, coef, logp=delta, logp_var=var, probes=cur, vjps=ws,
                   probes_out=None if last else spare, seed=noise.seed,
                   probe_offset=noise.probe_offset(i + 1, P), probe_dist=probe_dist,
                   backend=backend)
        cur, spare = spare, cur
    logp = _prior(prior, x, sigma_max) - delta
    stderr = torch.sqrt(var) if P > 1 else torch.full_like(var, float("nan"))
    return logp, {"stderr": stderr, "nfe": nfe, "steps": steps, "solver": solver, "x_T": x,
                  "delta": delta}


def _rms(t):
    return torch.sqrt((t.double() ** 2).mean())


def _dopri5(model, x, sigma_min, sigma_max, P, seed, extra_args, probe_dist, atol, rtol,
            max_steps, prior, backend):
    """Adaptive Dormand-Prince 5(4) on y = (x, Delta_p) with one step size for the batch."""
    x = x.detach().clone().contiguous()
    B, D = x.shape[0], x[0].numel()
    noise = _Noise(seed, x)
    v = draw_probes(x, P, noise.seed, noise.probe_offset(0, P), probe_dist, backend)
    vf = v.double().reshape(P, B, -1)

    def f(xx, t):
        k, w = _stage(model, xx, torch.tensor(t, dtype=torch.float64), extra_args, v)
        # per-probe derivative of Delta: v_p . w_p - D   (P, B)
        dd = (vf * w.double().reshape(P, B, -1)).sum(-1) - D
        return k, dd

    t0, t1 = math.log(sigma_min), math.log(sigma_max)
    delta = torch.zeros(P, B, dtype=torch.float64, device=x.device)
    k1, d1 = f(x, t0)
    nfe = 1
    # initial step (Hairer, Norsett & Wanner II.4, as in torchdiffeq)
    sx = atol + rtol * x.double().abs()
    d0n, d1n = _rms(x / sx), _rms(k1 / sx)
    h0 = 0.01 * d0n / d1n if d0n > 1e-5 and d1n > 1e-5 else torch.tensor(1e-6, dtype=torch.float64)
    h0 = float(h0)
    k2, _ = f(x + h0 * k1, t0 + h0)
    nfe += 1
    d2n = float(_rms((k2 - k1) / sx)) / h0
    if max(float(d1n), d2n) <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(float(d1n), d2n)) ** (1 / 5)
    h = min(100 * h0, h1, t1 - t0)
    t, n_acc = t0, 0
    for _ in range(max_steps):
        if t >= t1 - 1e-12:
            break
        h = min(h, t1 - t)
        ks, ds = [k1], [d1]
        for j in range(1, 7):
            xj = x.clone()
            dj = delta.clone()
            for m, a in enumerate(_DP_A[j]):
                if a:
                    xj.add_(ks[m], alpha=h * a)
                    dj = dj + h * a * ds[m]
            kj, djv = f(xj, t + _DP_C[j] * h)
            nfe += 1
            ks.append(kj)
            ds.append(djv)
            if j == 6:
                x5, d5 = xj, dj  # the 7th stage point is the 5th-order solution (FSAL)
        ex = sum(h * (bb - b4) * kk for bb, b4, kk in zip(_DP_B, _DP_B4, ks) if bb != b4)
        ed = sum(h * (bb - b4) * dd for bb, b4, dd in zip(_DP_B, _DP_B4, ds) if bb != b4)
        tol_x = atol + rtol * torch.maximum(x.abs(), x5.abs())
        tol_d = atol + rtol * torch.maximum(delta.abs(), d5.abs())
        err = max(float(_rms(ex / tol_x)), float(_rms(ed / tol_d)))
        if err <= 1.0:
            t += h
            x, delta = x5, d5
            k1, d1 = ks[6], ds[6]
            n_acc += 1
        factor = 10.0 if err == 0 else min(10.0, max(0.2, 0.9 * err ** -0.2))
        h = h * factor
    else:
        raise RuntimeError(f"dopri5: did not reach sigma_max within max_steps={max_steps}")
    lp = _prior(prior, x, sigma_max)[None] - delta  # (P, B)
    logp = lp.mean(0)
    stderr = lp.std(0, unbiased=True) / math.sqrt(P) if P > 1 else torch.full_like(logp, float("nan"))
    return logp, {"stderr": stderr, "nfe": nfe, "steps": n_acc, "solver": "dopri5", "x_T": x,
                  "delta": delta.mean(0)}
