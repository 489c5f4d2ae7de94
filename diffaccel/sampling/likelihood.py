"""Exact-likelihood estimation through the probability-flow ODE (docs/math.md 3.2, 3.3).

Encode the data from ``sigma_min`` up to ``sigma_max`` in ``t = log sigma``:
``dx/dt = x - Dn(x, e^t)`` and ``dDelta/dt = div Dn - D``, then

    log p_{sigma_min}(x) = log N(x(sigma_max); 0, sigma_max^2 I) - Delta(sigma_max).

Fixed-step solvers (euler, heun, rk4) combine their stages and accumulate the Hutchinson
estimates in one fused step per ODE step, with fresh probes per step (drawn by the step), so the
estimate's variance is the sum of the steps' variances (weights squared). ``dopri5`` is adaptive
(Dormand-Prince 5(4), error control on x and Delta in the RMS norm, like torchdiffeq with
``atol = rtol = 1e-4`` by default) with a step size per sample, also with fresh probes per
accepted step; each stage combination, the solution with its Hutchinson accumulation, and the
embedded error estimate are each one fused pass. With one probe no standard error can be
estimated (NaN).

Every sample is solved independently of the rest of its batch (with per-sample seeds, also its
probes): a sample that is non-finite on input, or for which the model returns non-finite values,
comes back as NaN (with one warning saying how many) and the others are unaffected. B = 0
returns empty results.
"""
import math

import torch

from .expint import DIVERGENCES, ORDERS, expint_log_likelihood
from .priors import resolve_prior
from ._driver import (_Noise, _check_probe_dist, _check_probes, _rows_bad, denoise_with_vjps,
                      draw_probes, finish_rows, prior_logp)
from .step import fused_step, make_coef

__all__ = ["log_likelihood", "bits_per_dim", "SOLVERS"]

SOLVERS = ("euler", "heun", "rk4", "dopri5", "expint")
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
    """(k = x - Dn, Dn's vjps with the probes) at log-level t (a 0-d or (B,) float64 tensor)."""
    sigma = torch.exp(t).to(x.dtype) * x.new_ones(x.shape[0])
    den, w = denoise_with_vjps(model, x, sigma, extra_args, probes)
    return (x - den), w


def _check_tolerances(atol, rtol, max_steps):
    for name, v in (("atol", atol), ("rtol", rtol)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
            raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")
    if atol + rtol <= 0:
        raise ValueError("atol, rtol: expected at least one of them > 0")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps: expected a positive int, got {max_steps!r}")


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


def _check_expint(order, divergence, cv_rank, cv_sigma, probe_dist):
    if isinstance(order, bool) or not isinstance(order, int) or order not in ORDERS:
        raise ValueError(f"order: expected one of {ORDERS} for solver 'expint', got {order!r}")
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence: expected one of {DIVERGENCES}, got {divergence!r}")
    if isinstance(cv_rank, bool) or not isinstance(cv_rank, int) or not 1 <= cv_rank <= 16:
        raise ValueError(f"cv_rank: expected an int in [1, 16], got {cv_rank!r}")
    if cv_sigma is not None and (isinstance(cv_sigma, bool) or not isinstance(cv_sigma, (int, float))
                                 or not cv_sigma >= 0):
        raise ValueError(f"cv_sigma: expected a number >= 0 or None, got {cv_sigma!r}")
    _check_probe_dist(probe_dist)


def log_likelihood(model, x, sigma_min, sigma_max, *, steps=None, solver="heun", probes=1,
                   seed=None, extra_args=None, probe_dist="rademacher", atol=1e-4, rtol=1e-4,
                   max_steps=10000, prior=None, backend=None, order=4, divergence="hutchinson",
                   prior_data=None, cv_rank=3, cv_sigma=None):
    """``(logp, info)``: log p_{sigma_min}(x) (float64, (B,)) through the PF-ODE, and a dict
    with ``stderr`` (the Hutchinson estimate's standard error per sample, (B,); NaN with one
    probe, where no variance can be estimated),
    ``nfe`` (batched model evaluations), ``vjps`` (batched vector-Jacobian products: ``probes``
    per evaluation for euler / heun / rk4; for dopri5 none at its initial-step trial evaluation
    and ``2 * probes`` at each attempt's last stage, which also serves the next step; for expint
    more with ``divergence="subspace"``), ``steps`` and
    ``x_T`` (the encoded latent) and ``delta`` (the integral term). dopri5 steps each sample
    on its own (``steps`` is then a (B,) int64 tensor of accepted steps per sample, ``nfe``
    counts batched model calls) and adds, per sample (lists of B float64 / int64 tensors),
    ``sigmas`` (the accepted levels, sigma_min to sigma_max), ``errors`` (each accepted step's
    error norm, <= 1) and ``attempts`` (the attempt index of each accepted step); it reads the
    host once per step attempt. ``steps`` is required for euler / heun / rk4. A sample that is
    non-finite on input or for which the model returns non-finite values gets NaN (one warning
    says how many); the others are unaffected. B = 0 returns empty results.
    ``prior``: a callable giving log p_{sigma_max}(x_T) per sample (default
    ``log N(x_T; 0, sigma_max^2 I)``, which ignores the data's spread at sigma_max: with data of
    norm comparable to sigma_max it is off by O(|x_0| |x_T| / sigma_max^2) nats per sample).

    ``solver="expint"``: the exponential multistep solver of :mod:`.expint` (``order`` 1-4,
    ``steps`` + 1 evaluations); ``divergence`` ("hutchinson" or "subspace", its control variate
    of rank ``cv_rank`` used where sigma >= ``cv_sigma``, default sigma_max / 16; its extra
    VJPs are counted in ``vjps``). ``prior`` (every solver): "standard" (the default above),
    "matched" (``prior_data``: (mean, var), a :class:`~.priors.MatchedPrior` or an iterable of
    data batches), "empirical" (``prior_data``: data points, a tensor or an iterable of batches,
    or an :class:`~.priors.EmpiricalPrior`: the data's own noised density at sigma_max) or a
    callable (see :mod:`.priors`)."""
    _check_args(x, sigma_min, sigma_max, steps, solver)
    _check_probes(probes)
    extra_args = {} if extra_args is None else extra_args
    prior_fn = resolve_prior(prior, prior_data)
    prior = lambda xt: prior_fn(xt, sigma_max)  # noqa: E731
    if solver == "expint":
        _check_expint(order, divergence, cv_rank, cv_sigma, probe_dist)
        return expint_log_likelihood(
            model, x, sigma_min, sigma_max, steps=steps, order=order, probes=probes, seed=seed,
            extra_args=extra_args, probe_dist=probe_dist, prior_fn=prior_fn,
            divergence=divergence, cv_rank=cv_rank,
            cv_sigma=sigma_max / 16 if cv_sigma is None else cv_sigma, backend=backend)
    if divergence != "hutchinson":
        raise ValueError(f"divergence: {divergence!r} needs solver='expint' (the others use "
                         f"'hutchinson')")
    if solver == "dopri5":
        _check_tolerances(atol, rtol, max_steps)
        return _dopri5(model, x, sigma_min, sigma_max, probes, seed, extra_args, probe_dist,
                       atol, rtol, max_steps, prior, backend)
    A, b, c = _TABLEAUS[solver]
    x = x.detach().clone().contiguous()
    B, D = x.shape[0], math.prod(x.shape[1:])
    if B == 0:
        return _empty(x, solver)
    bad = _rows_bad(x)
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
    finish_rows(f"log_likelihood({solver})", bad, x, logp, delta, stderr if P > 1 else None)
    return logp, {"stderr": stderr, "nfe": nfe, "vjps": nfe * P, "steps": steps, "solver": solver,
                  "x_T": x, "delta": delta}


def _empty(x, solver):
    """The results for an empty batch (B = 0): no model call."""
    e = torch.zeros(0, dtype=torch.float64, device=x.device)
    info = {"stderr": e.clone(), "nfe": 0, "vjps": 0, "steps": 0, "solver": solver, "x_T": x,
            "delta": e.clone()}
    if solver == "dopri5":
        info.update(steps=torch.zeros(0, dtype=torch.int64), sigmas=[], errors=[], attempts=[])
    return e, info


def _rms_rows(t):
    """Per-sample RMS norm (B,) in float64."""
    return torch.sqrt((t.double().reshape(t.shape[0], -1) ** 2).mean(1))


def _rows(v, x):
    """A (B,) tensor shaped to broadcast over x's sample dimensions."""
    return v.reshape(-1, *[1] * (x.dim() - 1))


def _initial_step(model, x, t0, t1, k1, extra_args, atol, rtol):
    """Hairer, Norsett & Wanner II.4 (as torchdiffeq), per sample: one extra model call, no
    vjps, no host read. The trial step stays within [t0, t1]: with a tiny derivative (x near
    the data) the formula's h0 can be so large that e^(t0 + h0) overflows. Non-finite samples
    get a finite placeholder (they are frozen at their first attempt)."""
    sx = atol + rtol * x.double().abs()
    d0n, d1n = _rms_rows(x / sx), _rms_rows(k1 / sx)
    h0 = torch.where((d0n > 1e-5) & (d1n > 1e-5), 0.01 * d0n / d1n, 1e-6)
    h0 = torch.where(torch.isfinite(h0), h0.clamp(max=t1 - t0), 1e-6)
    sigma = torch.exp(t0 + h0).to(x.dtype)
    with torch.no_grad():
        x1 = x + _rows(h0, x).to(x.dtype) * k1
        k2 = x1 - model(x1, sigma, **extra_args)
    d2n = _rms_rows((k2 - k1) / sx) / h0
    dmax = torch.maximum(d1n, d2n)
    h1 = torch.where(dmax <= 1e-15, (h0 * 1e-3).clamp(min=1e-6), (0.01 / dmax) ** (1 / 5))
    h = torch.minimum(100 * h0, h1)
    return torch.where(torch.isfinite(h) & (h > 0), h, 1e-6)


def _dopri5(model, x, sigma_min, sigma_max, P, seed, extra_args, probe_dist, atol, rtol,
            max_steps, prior, backend):
    """Adaptive Dormand-Prince 5(4) on (x, Delta) with a step size per sample.

    Each sample b has its own level t_b and step h_b and is accepted or rejected on its own
    error norm ``max(RMS_b(e_x / tol_x), |e_Delta / tol_Delta|)``; a sample that reached
    sigma_max, or went non-finite, is frozen (steps of size 0) until the others finish, so its
    result does not depend on the rest of the batch. A step uses one set of fresh probes in all
    its stages, so its Delta increment is a Hutchinson estimate whose variance the fused step
    reports; the steps' variances add up, as for the fixed-step solvers. Every attempt runs all
    samples through the same fused passes (:func:`fused_step` with ``out=`` and per-sample
    coefficients): each stage point; the 5th-order solution together with its Delta increment,
    variance and the next probes; and the embedded error of x together with that of Delta. Probes: the first
    attempt of a sample's step uses the probes drawn at stream position ``probe_offset(a)``,
    ``a`` the index of that attempt (0 for the first step; an attempt draws the probes at
    ``a + 1``, which the sample keeps if it accepts), so accepted step n of sample b uses
    ``probe_offset(attempts[b][n - 1] + 1)``. The last stage (FSAL, the first stage of the next
    step) takes its vjps with both sets. One host read per attempt (whether any sample is still
    running).
    """
    x = x.detach().clone().contiguous()
    B, D = x.shape[0], math.prod(x.shape[1:])
    if B == 0:
        return _empty(x, "dopri5")
    bad = _rows_bad(x)
    noise = _Noise(seed, x)
    v = draw_probes(x, P, noise.seed, noise.probe_offset(0, P), probe_dist, backend)
    v_next = torch.empty_like(v)
    dev, f64 = x.device, torch.float64

    def coef(am=(), cw=None, c0=0.0, ax=1.0):
        return make_coef(B, ax=ax, am=am, cw=cw, c0=c0, device=dev)

    def nonzero(weights, items):
        """Only the stages with a nonzero tableau weight are read: (index list, items)."""
        idx = [m for m, a in enumerate(weights) if a != 0.0]
        return idx, [items[m] for m in idx]

    t0, t1 = math.log(sigma_min), math.log(sigma_max)
    delta = torch.zeros(B, dtype=f64, device=dev)
    var = torch.zeros_like(delta)
    t = torch.full((B,), t0, dtype=f64, device=dev)
    k1, w1 = _stage(model, x, t, extra_args, v)
    nfe, vjps = 1, P
    h = _initial_step(model, x, t0, t1, k1, extra_args, atol, rtol)
    nfe += 1  # the trial step's evaluation takes no vjps
    active = torch.ones(B, dtype=torch.bool, device=dev)
    e_b = [bb - b4 for bb, b4 in zip(_DP_B, _DP_B4)]
    hist_t, hist_acc, hist_err = [], [], []
    for attempt in range(max_steps):
        hs = torch.where(active, torch.minimum(h, t1 - t), 0.0)  # frozen samples: steps of 0
        ks, ws = [k1], [w1]
        for j in range(1, 6):  # stages 2..6: x + h sum_m a_jm k_m
            idx, km = nonzero(_DP_A[j], ks)
            xj = fused_step(x, km, coef(am=[hs * _DP_A[j][m] for m in idx]),
                            out=torch.empty_like(x), backend=backend)
            kj, wj = _stage(model, xj, t + _DP_C[j] * hs, extra_args, v)
            ks.append(kj)
            ws.append(wj)
        # 5th-order solution (= the 7th stage point), its Delta increment h sum_j b_j (v.w_j - D)
        # with the variance over probes, and the next attempt's probes: one pass
        idx, kb = nonzero(_DP_B[:6], ks)
        bw = [hs * _DP_B[m] for m in idx]
        d5, var5 = delta.clone(), var.clone()
        x5 = fused_step(x, kb, coef(am=bw, cw=bw, c0=-hs * D), logp=d5, logp_var=var5, probes=v,
                        vjps=[ws[m] for m in idx], probes_out=v_next, seed=noise.seed,
                        probe_offset=noise.probe_offset(attempt + 1, P), probe_dist=probe_dist,
                        out=torch.empty_like(x), backend=backend)
        k7, w7 = _stage(model, x5, t + hs, extra_args, torch.cat([v, v_next]))
        nfe += 6
        vjps += 7 * P  # stages 2-6 with the step's probes, the last one with the next ones too
        ks.append(k7)
        ws.append(w7[:P])
        # embedded error h sum_j (b_j - b4_j) (k_j, v.w_j - D); sum_j (b_j - b4_j) = 0, so no D term
        idx, ke = nonzero(e_b, ks)
        e = [hs * e_b[m] for m in idx]
        ed = torch.zeros_like(delta)
        ex = fused_step(ke[0], ke, coef(ax=0.0, am=e, cw=e), logp=ed, probes=v,
                        vjps=[ws[m] for m in idx], out=torch.empty_like(x), backend=backend)
        tol_x = atol + rtol * torch.maximum(x.abs(), x5.abs())
        tol_d = atol + rtol * torch.maximum(delta.abs(), d5.abs())
        err = torch.maximum(_rms_rows(ex / tol_x), (ed / tol_d).abs())
        # a non-finite error (the model returned non-finite values, or x overflowed) freezes the
        # sample; it is reported as NaN
        died = active & ~torch.isfinite(err)
        acc = active & (err <= 1.0)
        t = torch.where(acc, t + hs, t)
        x = torch.where(_rows(acc, x), x5, x)
        delta, var = torch.where(acc, d5, delta), torch.where(acc, var5, var)
        k1 = torch.where(_rows(acc, k1), k7, k1)
        w1 = torch.where(_rows(acc, w1[0])[None], w7[P:], w1)
        v = torch.where(_rows(acc, v[0])[None], v_next, v)
        factor = torch.where(err == 0, 10.0, (0.9 * err ** -0.2).clamp(0.2, 10.0))
        h = torch.where(active & ~died, hs * factor, h)
        bad = bad | died
        hist_t.append(t)
        hist_acc.append(acc)
        hist_err.append(err)
        active = active & ~died & (t < t1 - 1e-12)
        if not bool(active.any()):  # the one host read of the attempt
            break
    else:
        n = int(active.sum())
        raise RuntimeError(f"dopri5: {n} of {B} samples did not reach sigma_max within "
                           f"max_steps={max_steps} step attempts")
    logp = _prior(prior, x, sigma_max) - delta
    stderr = torch.sqrt(var) if P > 1 else torch.full_like(var, float("nan"))
    finish_rows("log_likelihood(dopri5)", bad, x, logp, delta, stderr if P > 1 else None)
    # per-sample histories: accepted levels, error norms and attempt indices (one host copy)
    acc_h = torch.stack(hist_acc, 1).cpu()
    t_h, err_h = torch.stack(hist_t, 1).cpu(), torch.stack(hist_err, 1).cpu()
    start = torch.full((1,), t0, dtype=f64)
    sigmas = [torch.cat([start, t_h[b][acc_h[b]]]).exp() for b in range(B)]
    errors = [err_h[b][acc_h[b]] for b in range(B)]
    attempts = [acc_h[b].nonzero().reshape(-1) for b in range(B)]
    return logp, {"stderr": stderr, "nfe": nfe, "vjps": vjps, "steps": acc_h.sum(1), "solver": "dopri5",
                  "x_T": x, "delta": delta, "sigmas": sigmas, "errors": errors,
                  "attempts": attempts}
