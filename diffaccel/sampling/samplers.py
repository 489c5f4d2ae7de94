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
import warnings

import torch
from tqdm.auto import trange

from .. import _validate
from ..library import DISTS
from ..random import noise as _noise
from .step import fused_step, make_coef

PROBE_BASE = 1 << 52
__all__ = ["sample_euler_maruyama", "sample_hd", "sample_ddim", "VPEpsDenoiser", "prior_logp",
           "PROBE_BASE"]  # sample_euler, sample_heun and the other k-diffusion samplers: k_samplers.py


# ------------------------------------------------------------------------------ helpers

def prior_logp(x, sigma):
    """log N(x; 0, sigma^2 I) per sample, float64."""
    D = math.prod(x.shape[1:])
    xf = x.detach().double().flatten(1)
    if isinstance(sigma, (int, float)):  # a number: no host-to-device copy (CUDA-graph capture)
        return -0.5 * (xf ** 2).sum(1) / sigma ** 2 - D * math.log(sigma) - 0.5 * D * math.log(2 * math.pi)
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
    return -0.5 * (xf ** 2).sum(1) / sigma ** 2 - D * torch.log(sigma) - 0.5 * D * math.log(2 * math.pi)


def _sigmas(sigmas, x):
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise TypeError("x: expected a (B, *S) tensor")
    sigmas = torch.as_tensor(sigmas)
    if sigmas.dim() != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas: expected a 1-d tensor of at least 2 noise levels, got shape "
                         f"{tuple(sigmas.shape)}")
    sigmas = sigmas.to(device=x.device, dtype=torch.float64)
    if _validate.eager():
        check_levels(sigmas.tolist(), "sigmas")
    return sigmas


def check_levels(levels, name):
    """Noise levels of a sampler: finite, >= 0, strictly decreasing (only the last may be 0)."""
    if not all(math.isfinite(s) for s in levels):
        raise ValueError(f"{name}: expected finite noise levels, got {levels}")
    if levels[-1] < 0:
        raise ValueError(f"{name}: expected noise levels >= 0, got {levels[-1]!r}")
    i = next((i for i in range(len(levels) - 1) if not levels[i + 1] < levels[i]), None)
    if i is not None:
        raise ValueError(f"{name}: expected strictly decreasing noise levels (from noise to data), "
                         f"got {name}[{i}] = {levels[i]!r} then {name}[{i + 1}] = {levels[i + 1]!r}")


def _rows_bad(x):
    """(B,) bool: the samples of x with a non-finite value (a device op, no host read)."""
    return ~torch.isfinite(x.detach()).reshape(x.shape[0], math.prod(x.shape[1:])).all(1)


def finish_rows(where, bad, x, *accs):
    """Set the samples that were non-finite on input (``bad``, (B,) bool) or are now (in x or
    any (B,) accumulator in ``accs``) to NaN, in place, and warn once saying how many (one host
    read, in eager mode only). The other samples are left as they are."""
    bad = bad | _rows_bad(x)
    for a in accs:
        if a is not None:
            bad = bad | ~torch.isfinite(a)
    x.masked_fill_(bad.reshape(-1, *[1] * (x.dim() - 1)), float("nan"))
    for a in accs:
        if a is not None:
            a.masked_fill_(bad, float("nan"))
    if _validate.eager():
        n = int(bad.sum())
        if n:
            warnings.warn(f"{where}: {n} of {x.shape[0]} samples are non-finite (non-finite input, "
                          "or the model returned non-finite values for them); their results are "
                          "NaN, the other samples are unaffected", RuntimeWarning, stacklevel=3)
    return bad


class _Noise:
    """Seeds and stream offsets of one sampling run."""

    def __init__(self, seed, x):
        B, D = x.shape[0], math.prod(x.shape[1:])
        if seed is None:
            seed = int(torch.randint(0, 2 ** 62, ()).item())
        self.seed = seed
        per_sample = isinstance(seed, torch.Tensor) and seed.numel() == B and B > 1
        self.stride = D if per_sample else B * D

    def offset(self, i):
        return i * self.stride

    def probe_offset(self, i, P):
        return PROBE_BASE + i * P * self.stride


def _init_logp(logp, x, sigma0):
    if logp is None or logp is False:
        return None
    if logp is True:
        return prior_logp(x, sigma0)
    if isinstance(logp, torch.Tensor):
        if logp.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"logp: expected a float32 or float64 tensor, got {logp.dtype}")
        return logp.detach().to(x.device).expand(x.shape[0]).clone()
    if isinstance(logp, (int, float)):
        return torch.full((x.shape[0],), float(logp), dtype=torch.float64, device=x.device)
    raise TypeError(f"logp: expected None, True, a number or a (B,) tensor, got {type(logp).__name__}")


def _check_probes(probes):
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes: expected a positive int, got {probes!r}")
    return probes


def draw_probes(x, P, seed, offset, dist, backend=None):
    """(P, B, *S) probes shaped and typed like x: the (B, P, *S) noise at ``offset``."""
    dt = torch.float32 if x.dtype == torch.float64 else x.dtype
    v = _noise((x.shape[0], P, *x.shape[1:]), seed=seed, offset=offset, dist=dist,
               device=x.device, dtype=dt, backend=backend)
    return v.transpose(0, 1).contiguous().to(x.dtype)


class _Probes:
    """Double-buffered Hutchinson probes: the fused step writes step i+1's into the spare."""

    def __init__(self, P, x, noise, dist, backend):
        if dist not in ("rademacher", "normal"):
            raise ValueError(f"probe_dist: expected 'rademacher' or 'normal', got {dist!r}")
        self.P, self.noise, self.dist = P, noise, dist
        self.cur = draw_probes(x, P, noise.seed, noise.probe_offset(0, P), dist, backend)
        self.spare = torch.empty_like(self.cur)

    def step_kwargs(self, i, last):
        if last:
            return dict(probes_out=None)
        return dict(probes_out=self.spare, probe_offset=self.noise.probe_offset(i + 1, self.P),
                    probe_dist=self.dist)

    def advance(self):
        self.cur, self.spare = self.spare, self.cur


def denoise_with_vjps(model, x, sigma, extra_args, probes):
    """(Dn(x, sigma), stacked v_p^T dDn/dx for each probe v_p (P, B, *S))."""
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        den = model(xr, sigma, **extra_args)
        P = probes.shape[0]
        ws = []
        for p in range(P):
            (g,) = torch.autograd.grad(den, xr, probes[p].to(den.dtype), retain_graph=p < P - 1)
            ws.append(g)
    return den.detach(), torch.stack(ws)


def _start(x, sigmas, extra_args, logp, seed, probes, probe_dist, backend):
    """The set-up shared by the samplers with Hutchinson tracking: (extra_args, sigmas (float64),
    a contiguous copy of x, logp (or None), its variance (or None), the noise stream, the
    probes (None when logp is not tracked))."""
    extra_args = {} if extra_args is None else extra_args
    sigmas = _sigmas(sigmas, x)
    x = x.clone().contiguous()
    lp = _init_logp(logp, x, sigmas[0])
    noise = _Noise(seed, x)
    if lp is None or x.shape[0] == 0:
        return extra_args, sigmas, x, lp, None, noise, None
    pr = _Probes(_check_probes(probes), x, noise, probe_dist, backend)
    return extra_args, sigmas, x, lp, torch.zeros_like(lp), noise, pr


def _evaluate(model, x, sigma, extra_args, probes):
    s_in = x.new_ones(x.shape[0]) * sigma.to(x.dtype)
    if probes is None:
        with torch.no_grad():
            return model(x, s_in, **extra_args), None
    return denoise_with_vjps(model, x, s_in, extra_args, probes.cur)


def _callback(callback, x, i, sigma, denoised):
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})


def _ode_sampler(model, x, sigmas, extra_args, callback, disable, logp, probes, probe_dist, seed,
                 backend, mode, switch=None, sde_first=False, dist="normal"):
    """Euler steps of the PF-ODE (mode 'euler'), Heun ('heun'), or the high-density sampler
    ('hd', switching below sigma ``switch``; Euler-Maruyama steps before it if ``sde_first``)."""
    extra_args, sigmas, x, lp, var, noise, pr = _start(x, sigmas, extra_args, logp, seed, probes,
                                                       probe_dist, backend)
    if x.shape[0] == 0:
        return x if lp is None else (x, lp)
    n = sigmas.numel() - 1
    levels = sigmas.tolist()  # one host read before the loop; none inside a step
    B, D = x.shape[0], math.prod(x.shape[1:])
    bad = _rows_bad(x)
    for i in trange(n, disable=disable):
        sig, nxt = sigmas[i], sigmas[i + 1]
        sde_step = sde_first and levels[i] > switch and levels[i + 1] > 0
        den, w = _evaluate(model, x, sig, extra_args, None if sde_step else pr)
        _callback(callback, x, i, sig, den)
        h = nxt - sig
        r = h / sig
        last = i == n - 1
        kw = {} if pr is None else dict(probes=pr.cur, **pr.step_kwargs(i, last))
        if sde_step:
            # reverse-SDE Euler-Maruyama step, zero-overhead log-density (no probes needed)
            q = sig ** 2 - nxt ** 2
            g = torch.sqrt(q)
            coef = make_coef(B, ax=1 - q / sig ** 2, am=(q / sig ** 2,), az=g, sx=-1 / sig ** 2,
                             sm=(1 / sig ** 2,), c1=q / 2, c2=g, device=x.device)
            kw.pop("probes", None)
            fused_step(x, [den], coef, logp=lp, logp_var=var, seed=noise.seed,
                       offset=noise.offset(i), dist=dist, backend=backend, **kw)
        elif mode == "heun" and levels[i + 1] > 0:
            x2 = ((1 + r) * x - r * den).to(x.dtype)
            den2, w2 = _evaluate(model, x2, nxt, extra_args, pr)
            rn = h / nxt
            coef = make_coef(B, ax=1 + r / 2 + rn / 2 * (1 + r), am=(-r / 2 - rn * r / 2, -rn / 2),
                             c0=-D / 2 * (r + rn), cw=(r / 2, rn / 2), device=x.device)
            fused_step(x, [den, den2], coef, logp=lp, logp_var=var,
                       vjps=None if pr is None else [w, w2], backend=backend, seed=noise.seed, **kw)
        elif mode == "hd" and levels[i] <= switch and levels[i + 1] > 0:
            # high-density ODE dx/dsigma = 2 (x - Dn)/sigma;
            # d logp/dsigma = (div Dn - D)/sigma - sigma |s|^2, s = (Dn - x)/sigma^2
            coef = make_coef(B, ax=1 + 2 * r, am=(-2 * r,), sx=-1 / sig ** 2, sm=(1 / sig ** 2,),
                             c0=-D * r, c1=-h * sig, cw=(r,), device=x.device)
            fused_step(x, [den], coef, logp=lp, logp_var=var, vjps=None if pr is None else [w],
                       backend=backend, seed=noise.seed, **kw)
        else:
            # PF-ODE Euler: dx/dsigma = (x - Dn)/sigma; d logp/dsigma = (div Dn - D)/sigma
            coef = make_coef(B, ax=1 + r, am=(-r,), c0=-D * r, cw=(r,), device=x.device)
            fused_step(x, [den], coef, logp=lp, logp_var=var, vjps=None if pr is None else [w],
                       backend=backend, seed=noise.seed, **kw)
        if pr is not None and not last:
            pr.advance()
    finish_rows(f"sample_{mode}", bad, x, lp)
    return x if lp is None else (x, lp)


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
    if dist not in DISTS:
        raise ValueError(f"dist: expected one of {DISTS}, got {dist!r}")
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
    extra_args = {} if extra_args is None else extra_args
    sigmas = _sigmas(sigmas, x)
    if dist not in DISTS:
        raise ValueError(f"dist: expected one of {DISTS}, got {dist!r}")
    levels = sigmas.tolist()
    if logp is not None and logp is not False and levels[-1] <= 0:
        raise ValueError("sigmas: with logp, the last noise level must be above 0 "
                         "(log p_0 of the samples is not defined by the SDE)")
    n = sigmas.numel() - 1
    x = x.clone().contiguous()
    B = x.shape[0]
    lp = _init_logp(logp, x, sigmas[0])
    if B == 0:
        return x if lp is None else (x, lp)
    noise = _Noise(seed, x)
    bad = _rows_bad(x)
    for i in trange(n, disable=disable):
        sig, nxt = sigmas[i], sigmas[i + 1]
        den, _ = _evaluate(model, x, sig, extra_args, None)
        _callback(callback, x, i, sig, den)
        if levels[i + 1] > 0:
            q = sig ** 2 - nxt ** 2
            g = torch.sqrt(q)
            coef = make_coef(B, ax=1 - q / sig ** 2, am=(q / sig ** 2,), az=g, sx=-1 / sig ** 2,
                             sm=(1 / sig ** 2,), c1=q / 2, c2=g, device=x.device)
            fused_step(x, [den], coef, logp=lp, seed=noise.seed, offset=noise.offset(i),
                       dist=dist, backend=backend)
        else:
            fused_step(x, [den], make_coef(B, ax=0.0, am=(1.0,), device=x.device), backend=backend)
    finish_rows("sample_euler_maruyama", bad, x, lp)
    return x if lp is None else (x, lp)


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
    if dist not in DISTS:
        raise ValueError(f"dist: expected one of {DISTS}, got {dist!r}")
    extra_args, sigmas, x, lp, var, noise, pr = _start(x, sigmas, extra_args, logp, seed, probes,
                                                       probe_dist, backend)
    if x.shape[0] == 0:
        return x if lp is None else (x, lp)
    n = sigmas.numel() - 1
    B, D = x.shape[0], math.prod(x.shape[1:])
    bad = _rows_bad(x)
    for i in trange(n, disable=disable):
        sig, nxt = sigmas[i], sigmas[i + 1]
        den, w = _evaluate(model, x, sig, extra_args, pr)
        _callback(callback, x, i, sig, den)
        down, up = ancestral_step(sig, nxt, eta)
        if pr is None:
            coef = make_coef(B, ax=down / sig, am=(1 - down / sig,), az=up, device=x.device)
            fused_step(x, [den], coef, seed=noise.seed, offset=noise.offset(i), dist=dist,
                       backend=backend)
            continue
        wdiv = (sig * (sig - down) - up ** 2) / sig ** 2  # weight of div Dn - D
        coef = make_coef(B, ax=down / sig, am=(1 - down / sig,), az=up, sx=-1 / sig ** 2,
                         sm=(1 / sig ** 2,), c0=wdiv * D, c1=up ** 2 / 2, c2=up, cw=(-wdiv,),
                         device=x.device)
        last = i == n - 1
        fused_step(x, [den], coef, logp=lp, logp_var=var, seed=noise.seed,
                   offset=noise.offset(i), dist=dist, probes=pr.cur, vjps=[w], backend=backend,
                   **pr.step_kwargs(i, last))
        if not last:
            pr.advance()
    finish_rows("sample_ddim", bad, x, lp)
    return x if lp is None else (x, lp)


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


def __getattr__(name):
    # sample_euler and sample_heun live in k_samplers.py now (with k-diffusion's signatures)
    if name in ("sample_euler", "sample_heun"):
        from . import k_samplers
        return getattr(k_samplers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
