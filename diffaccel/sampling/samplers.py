"""k-diffusion-style samplers on the fused step (docs/math.md Sections 3.1, 3.3 to 3.6).

``model(x, sigma, **extra_args)`` returns the denoised x (x = x_0 + sigma z, EDM form); the
score is ``s = (Dn - x) / sigma^2``. Every sampler takes ``(model, x, sigmas, extra_args=None,
callback=None, disable=None, ...)`` and returns ``x``, or ``(x, logp)`` when ``logp`` is given:

- ``logp=True`` starts from the prior ``log N(x; 0, sigmas[0]^2 I)``; a number or a (B,)
  tensor starts from those values (float64 accumulation unless a float32 tensor is given).
- ODE samplers (Euler, Heun, DDIM with eta = 0, the high-density sampler) add the Hutchinson
  estimate of the divergence with ``probes`` Rademacher (or Gaussian) probes per step; the
  sampler takes the vector-Jacobian products, the fused step does the rest and draws the next
  step's probes. Euler-Maruyama tracks ``logp`` at zero overhead (no divergence, no extra
  model call); DDIM with eta > 0 combines both (its divergence weight vanishes as eta -> 1).

Noise: ``seed`` (an int, or a (B,) integer tensor of per-sample seeds: then each sample's noise
does not depend on the rest of the batch) and ``dist``. Step i draws its increment at offset
``i * stride`` and its probes at ``PROBE_BASE + i * P * stride`` (stride = D for per-sample
seeds, B * D for one seed). Seeds are taken modulo 2^64 (``seed=-1`` is ``2**64 - 1``).

Bad input: ``sigmas`` must be finite, >= 0 and strictly decreasing (checked in eager mode). A
sample that is non-finite on input, or that the model sends to non-finite values, comes back
as NaN (x and logp) with one warning saying how many; the other samples get exactly what they
would get without it. An empty batch (B = 0) returns empty results.
"""
import math

import torch

from ._driver import (PROBE_BASE, _check_dist, _sigmas, _steps, open_seeded_run,  # noqa: F401
                      prior_logp)

# PROBE_BASE, prior_logp: public here (and in diffaccel.sampling); they live in ._driver
__all__ = ["sample_euler_maruyama", "sample_hd", "sample_ddim", "VPEpsDenoiser", "prior_logp",
           "PROBE_BASE"]  # sample_euler, sample_heun and the other k-diffusion samplers: k_samplers.py

# warnings of finish_rows point at the public sampler's caller (or, via _ode_sampler, at it)
_STACKLEVEL = 4


def _euler_maruyama_step(run, i, den, sig, nxt, **kw):
    """The reverse-SDE Euler-Maruyama step sigma -> sigma' (q = sigma^2 - sigma'^2):
    ``x <- x + q s + sqrt(q) z``, with the zero-overhead log-density
    ``logp <- logp + q |s|^2 / 2 + sqrt(q) (s . z)``."""
    q = sig ** 2 - nxt ** 2
    g = torch.sqrt(q)
    run.step(i, [den], 1 - q / sig ** 2, (q / sig ** 2,), az=g, draw=True,
             terms=dict(sx=-1 / sig ** 2, sm=(1 / sig ** 2,), c1=q / 2, c2=g), **kw)


def _ode_sampler(model, x, sigmas, extra_args, callback, disable, logp, probes, probe_dist, seed,
                 backend, mode, switch=None, sde_first=False, dist="normal"):
    """Euler steps of the PF-ODE (mode 'euler') or the high-density sampler ('hd', switching
    below sigma ``switch``; Euler-Maruyama steps before it if ``sde_first``)."""
    sigmas = _sigmas(sigmas, x)
    run = open_seeded_run(model, x, sigmas, extra_args, callback, where=f"sample_{mode}",
                          seed=seed, logp=logp, backend=backend, dist=dist, probes=probes,
                          probe_dist=probe_dist)
    if not run.B:
        return run.output()
    run.levels = levels = sigmas.tolist()  # one host read before the loop; none inside a step
    D = run.D
    for i in _steps(run.n, disable):
        sig, nxt = sigmas[i], sigmas[i + 1]
        sde_step = sde_first and levels[i] > switch and levels[i + 1] > 0
        den, w = run.denoise(run.x, sig, vjp=not sde_step)
        run.report(i, den)
        h = nxt - sig
        r = h / sig
        if sde_step:
            _euler_maruyama_step(run, i, den, sig, nxt, next_probes=True)  # (no probes used)
        elif mode == "hd" and levels[i] <= switch and levels[i + 1] > 0:
            # high-density ODE dx/dsigma = 2 (x - Dn)/sigma;
            # d logp/dsigma = (div Dn - D)/sigma - sigma |s|^2, s = (Dn - x)/sigma^2
            run.step(i, [den], 1 + 2 * r, (-2 * r,), vjps=[w],
                     terms=dict(sx=-1 / sig ** 2, sm=(1 / sig ** 2,), c0=-D * r, c1=-h * sig,
                                cw=(r,)))
        else:
            # PF-ODE Euler: dx/dsigma = (x - Dn)/sigma; d logp/dsigma = (div Dn - D)/sigma
            run.step(i, [den], 1 + r, (-r,), vjps=[w], terms=dict(c0=-D * r, cw=(r,)))
    return run.result(_STACKLEVEL)


def sample_hd(model, x, sigmas, extra_args=None, callback=None, disable=None, *,
              sigma_switch=None, lambda_thr=None, first="ode", dist="normal", logp=None, probes=1,
              probe_dist="rademacher", seed=None, backend=None):
    """High-density sampler (docs/math.md 3.5): PF-ODE Euler steps down to the switch level, then
    the high-density ODE ``dx/dsigma = 2 (x - Dn)/sigma`` (the score doubled). The switch is
    ``sigma_switch`` or the log-SNR ``lambda_thr`` (sigma = exp(-lambda_thr / 2)); steps that
    start at sigma <= switch are high-density steps, except a final step to sigma = 0, which is
    the PF-ODE's (x = Dn; the HD ODE's Euler step to 0 would overshoot to 2 Dn - x).
    ``first="sde"`` runs Euler-Maruyama steps (increments of law ``dist``) before the switch
    instead of the PF-ODE, with the zero-overhead log-density there."""
    if first not in ("ode", "sde"):
        raise ValueError(f"first: expected 'ode' or 'sde', got {first!r}")
    _check_dist(dist)
    if (sigma_switch is None) == (lambda_thr is None):
        raise ValueError("sigma_switch, lambda_thr: give exactly one of them")
    switch = float(sigma_switch) if sigma_switch is not None else math.exp(-float(lambda_thr) / 2)
    if not switch > 0:
        raise ValueError(f"sigma_switch: expected a positive level, got {switch!r}")
    return _ode_sampler(model, x, sigmas, extra_args, callback, disable, logp, probes, probe_dist,
                        seed, backend, "hd", switch=switch, sde_first=first == "sde", dist=dist)


def sample_euler_maruyama(model, x, sigmas, extra_args=None, callback=None, disable=None, *,
                          seed=None, dist="normal", logp=None, backend=None):
    """Euler-Maruyama steps of the reverse SDE, from sigma_i to sigma_{i+1} (q = sigma_i^2 -
    sigma_{i+1}^2): ``x <- x + q s + sqrt(q) z`` with ``z`` of law ``dist`` drawn inside the
    fused step. With ``logp``, the zero-overhead log-density (docs/math.md 3.1, 3.3):
    ``logp <- logp + q |s|^2 / 2 + sqrt(q) (s . z)``. A final step to sigma = 0 returns the
    denoised x (no log-density is defined there: with ``logp``, sigmas must end above 0)."""
    sigmas = _sigmas(sigmas, x)
    _check_dist(dist)
    levels = sigmas.tolist()
    if logp is not None and logp is not False and levels[-1] <= 0:
        raise ValueError("sigmas: with logp, the last noise level must be above 0 "
                         "(log p_0 of the samples is not defined by the SDE)")
    run = open_seeded_run(model, x, sigmas, extra_args, callback, where="sample_euler_maruyama",
                          seed=seed, logp=logp, backend=backend, dist=dist, levels=levels)
    if not run.B:
        return run.output()
    for i in _steps(run.n, disable):
        sig, nxt = sigmas[i], sigmas[i + 1]
        den, _ = run.denoise(run.x, sig)
        run.report(i, den)
        if levels[i + 1] > 0:
            _euler_maruyama_step(run, i, den, sig, nxt)
        else:
            run.step(i, [den], 0.0, (1.0,))
    return run.result(_STACKLEVEL)


def ancestral_step(sigma, sigma_next, eta=1.0):
    """(sigma_down, sigma_up) of k-diffusion's ancestral step (DDIM's eta in EDM form)."""
    up = torch.minimum(sigma_next, eta * torch.sqrt(torch.clamp(
        sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2, min=0)))
    down = torch.sqrt(torch.clamp(sigma_next ** 2 - up ** 2, min=0))
    return down, up


def sample_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None, *, eta=0.0,
                seed=None, dist="normal", logp=None, probes=1, probe_dist="rademacher",
                backend=None):
    """DDIM (docs/math.md 3.6) in EDM form: ``x <- x + (sigma_down - sigma)(x - Dn)/sigma +
    sigma_up z``, which is the diffusers DDIM step in the coordinates ``x / sqrt(abar)``
    (``sigma = sqrt((1 - abar)/abar)``). Wrap an eps-prediction model with
    :class:`VPEpsDenoiser`; a VP-space state ``x_vp`` is ``x sqrt(abar)``, so start from
    ``x_vp / sqrt(abar_0)`` and multiply the result by ``sqrt(abar)`` of the last level (1 at
    sigma = 0). Increments are drawn in the step (``seed``, ``dist``). With ``eta = 0`` it is the
    PF-ODE's Euler step. ``logp`` tracks the log-density of ``x`` (EDM coordinates; add
    ``-D/2 log abar`` for the VP variable), from the identity of docs/math.md 3.1 along the
    eta-family of reverse processes (drift ``(1 + eta^2)/2 g^2 s``, noise ``eta g dW``):
    ``d logp = eta^2 g^2/2 |s|^2 dtau - (1 - eta^2) g^2/2 div s dtau + eta g s.dW``. Matched to the
    step's own drift ``A = sigma (sigma - sigma_down)`` and noise ``sigma_up``::

        logp <- logp + sigma_up^2/2 |s|^2 + sigma_up (s . z) - (A - sigma_up^2) div s

    with ``div s = (div Dn - D)/sigma^2`` from ``probes`` Hutchinson probes. At ``eta = 0`` this
    is :func:`sample_euler`'s update; the divergence weight ``A - sigma_up^2`` is O(step^2) at
    ``eta = 1`` (for a stochastic sampler with no divergence at all, see
    :func:`sample_euler_maruyama`)."""
    if not 0 <= eta < math.inf:
        raise ValueError(f"eta: expected a finite eta >= 0, got {eta!r}")
    if eta == 0:
        return _ode_sampler(model, x, sigmas, extra_args, callback, disable, logp, probes,
                            probe_dist, seed, backend, "euler")
    _check_dist(dist)
    sigmas = _sigmas(sigmas, x)
    run = open_seeded_run(model, x, sigmas, extra_args, callback, where="sample_ddim", seed=seed,
                          logp=logp, backend=backend, dist=dist, probes=probes,
                          probe_dist=probe_dist)
    if not run.B:
        return run.output()
    D = run.D
    for i in _steps(run.n, disable):
        sig, nxt = sigmas[i], sigmas[i + 1]
        den, w = run.denoise(run.x, sig, vjp=True)
        run.report(i, den)
        down, up = ancestral_step(sig, nxt, eta)
        wdiv = (sig * (sig - down) - up ** 2) / sig ** 2  # weight of div Dn - D
        run.step(i, [den], down / sig, (1 - down / sig,), az=up, draw=True, vjps=[w],
                 terms=dict(sx=-1 / sig ** 2, sm=(1 / sig ** 2,), c0=wdiv * D, c1=up ** 2 / 2,
                            c2=up, cw=(-wdiv,)))
    return run.result(_STACKLEVEL)


class VPEpsDenoiser:
    """A k-diffusion denoiser around a diffusers-style eps-prediction model
    ``eps_model(x_vp, t, **kw)`` trained on the discrete table ``alphas_cumprod``:
    ``Dn(x, sigma) = x - sigma eps(x / sqrt(1 + sigma^2), t(sigma))``, with ``t(sigma)``
    interpolated in log sigma between table entries (k-diffusion's DiscreteEpsDDPMDenoiser)."""

    def __init__(self, eps_model, alphas_cumprod):
        self.inner = eps_model
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.sigmas = torch.sqrt((1 - ac) / ac)
        self.log_sigmas = self.sigmas.log()

    def sigma_to_t(self, sigma):
        ls = self.log_sigmas.to(sigma.device)
        lsig = sigma.double().log()
        dists = lsig[:, None] - ls[None]
        lo = (dists >= 0).cumsum(1).argmax(1).clamp(max=ls.numel() - 2)
        hi = lo + 1
        w = ((ls[lo] - lsig) / (ls[lo] - ls[hi])).clamp(0, 1)
        return (1 - w) * lo + w * hi

    def sigmas_for(self, timesteps):
        """EDM noise levels of the given table indices (e.g. DDIM's timesteps), plus a final 0."""
        s = self.sigmas[torch.as_tensor(timesteps)]
        return torch.cat([s, s.new_zeros(1)]).float()

    def __call__(self, x, sigma, **kwargs):
        sigma = sigma.reshape(-1).expand(x.shape[0])
        sv = sigma.to(x.dtype).reshape(-1, *[1] * (x.dim() - 1))
        c_in = 1 / torch.sqrt(1 + sv ** 2)
        eps = self.inner(x * c_in, self.sigma_to_t(sigma), **kwargs)
        return x - sv * eps

