"""The sampler driver: the machinery that every sampler and solver of :mod:`diffaccel.sampling`
shares, below them all (it imports none of them).

- noise levels: :func:`check_levels` (finite, >= 0, strictly decreasing), :func:`_sigmas`;
- the noise and probe streams of one call: :class:`_Noise` (seed, stride, offsets: step i's
  increment at ``i * stride``, its probes at ``PROBE_BASE + i * P * stride``),
  :func:`draw_probes`, :class:`_Probes` (double-buffered: the fused step draws the next step's);
- the log-density: :func:`prior_logp`, :func:`_init_logp`, :func:`denoise_with_vjps`;
- non-finite samples: :func:`_rows_bad`, :func:`finish_rows`;
- :class:`_Run`, the state and the pieces of a sampler's loop (model call, callback, one fused
  step with its log-density terms, the result). Two contracts open one: :func:`open_run`
  (k-diffusion's samplers, :mod:`.k_samplers`: levels as numbers, noise from k-diffusion's
  sources without ``seed``) and :func:`open_seeded_run` (:func:`.samplers.sample_hd`,
  :func:`.samplers.sample_euler_maruyama`, :func:`.samplers.sample_ddim`: levels as a float64
  tensor, always a seeded stream).
"""
import math
import warnings

import torch
from tqdm.auto import trange

from .. import _validate
from ..layout import DISTS
from ..random import noise as _noise
from .step import fused_step, make_coef

PROBE_BASE = 1 << 52

__all__ = ["PROBE_BASE", "prior_logp", "check_levels", "finish_rows", "draw_probes",
           "denoise_with_vjps"]


# ------------------------------------------------------------------------------ noise levels

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


def _sigmas(sigmas, x):
    """``sigmas`` as a float64 tensor on x's device, checked in eager mode (no host read while
    a CUDA graph captures)."""
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


def _steps(n, disable):
    """The step indices, with k-diffusion's progress bar unless disabled (a traced loop needs
    disable=True: tqdm does not trace)."""
    return range(n) if disable else trange(n, disable=disable)


# ------------------------------------------------------------------------------ log-density

def prior_logp(x, sigma):
    """log N(x; 0, sigma^2 I) per sample, float64."""
    D = math.prod(x.shape[1:])
    xf = x.detach().double().flatten(1)
    if isinstance(sigma, (int, float)):  # a number: no host-to-device copy (CUDA-graph capture)
        return -0.5 * (xf ** 2).sum(1) / sigma ** 2 - D * math.log(sigma) - 0.5 * D * math.log(2 * math.pi)
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
    return -0.5 * (xf ** 2).sum(1) / sigma ** 2 - D * torch.log(sigma) - 0.5 * D * math.log(2 * math.pi)


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


# ------------------------------------------------------------------------ non-finite samples

def _rows_bad(x):
    """(B,) bool: the samples of x with a non-finite value (a device op, no host read)."""
    return ~torch.isfinite(x.detach()).reshape(x.shape[0], math.prod(x.shape[1:])).all(1)


def finish_rows(where, bad, x, *accs, stacklevel=3):
    """Set the samples that were non-finite on input (``bad``, (B,) bool) or are now (in x or
    any (B,) accumulator in ``accs``) to NaN, in place, and warn once saying how many (one host
    read, in eager mode only; ``stacklevel`` as ``warnings.warn`` counts it from here). The
    other samples are left as they are."""
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
                          "NaN, the other samples are unaffected", RuntimeWarning,
                          stacklevel=stacklevel)
    return bad


# ------------------------------------------------------------------------ noise and probes

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


def _check_dist(dist):
    if dist not in DISTS:
        raise ValueError(f"dist: expected one of {DISTS}, got {dist!r}")


def _check_probes(probes):
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes: expected a positive int, got {probes!r}")
    return probes


def _check_probe_dist(probe_dist):
    if probe_dist not in ("rademacher", "normal"):
        raise ValueError(f"probe_dist: expected 'rademacher' or 'normal', got {probe_dist!r}")


def draw_probes(x, P, seed, offset, dist, backend=None):
    """(P, B, *S) probes shaped and typed like x: the (B, P, *S) noise at ``offset``."""
    dt = torch.float32 if x.dtype == torch.float64 else x.dtype
    v = _noise((x.shape[0], P, *x.shape[1:]), seed=seed, offset=offset, dist=dist,
               device=x.device, dtype=dt, backend=backend)
    return v.transpose(0, 1).contiguous().to(x.dtype)


class _Probes:
    """Double-buffered Hutchinson probes: the fused step writes step i+1's into the spare."""

    def __init__(self, P, x, noise, dist, backend):
        _check_probe_dist(dist)
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


class _Source:
    """Where the noise comes from without ``seed``: torch, or the patched module ``ns``."""

    def __init__(self, ns):
        self.ns = ns

    def _get(self, name, default=None):
        return getattr(self.ns, name, default) if self.ns is not None else default

    def randn_like(self, x):
        return self._get("torch", torch).randn_like(x)  # looked up now: callers replace it

    def default_noise_sampler(self, x):
        f = self._get("default_noise_sampler")
        if f is not None:
            return f(x)
        return lambda sigma, sigma_next: self.randn_like(x)

    def brownian(self, x, sigmas):
        """The module's BrownianTreeNoiseSampler over [min sigma > 0, max sigma], as k-diffusion
        builds it (None when there is no module to take it from)."""
        cls = self._get("BrownianTreeNoiseSampler")
        if cls is None:
            return None
        s = sigmas if isinstance(sigmas, torch.Tensor) else torch.as_tensor(sigmas)
        return cls(x, s[s > 0].min(), s.max())


# ------------------------------------------------------------------------------ one run

class _Run:
    """The state of one sampling call: x (the run's own copy), the noise levels (``sigmas`` as
    the sampler reads them, ``levels`` as numbers or None), the noise source, and the
    log-density accumulators and probes. Opened by :func:`open_run` or
    :func:`open_seeded_run`."""

    def __init__(self, model, x, sigmas, levels, n, extra_args, callback, *, bad, backend, dist,
                 where, ns=None, keep_reported=True):
        self.model, self.sigmas, self.levels, self.where = model, sigmas, levels, where
        self.bad = bad  # non-finite input samples: NaN out, the others unaffected
        self.B, self.D = x.shape[0], math.prod(x.shape[1:])
        self.n = n if self.B else 0  # an empty batch: nothing to do
        self.extra_args = {} if extra_args is None else extra_args
        self.callback, self.backend, self.dist = callback, backend, dist
        # a callback may keep the x it is given: then each step writes a new tensor
        self.keep_reported = keep_reported
        self.src = _Source(ns)
        self.x = x
        self.s_in = x.new_ones([self.B])
        self.noise = self.pnoise = None
        self.draws = 0
        self.carry = 0.0  # |s|^2 weight handed to the next step (stochastic samplers)
        self.lp = self.var = self.pr = None
        self.P = 0
        self.probe_dist = None

    def track(self, P, pnoise, probe_dist):
        """Track the divergence with ``P`` probes per step (0: none) from ``pnoise``."""
        self.P, self.pnoise, self.probe_dist = P, pnoise, probe_dist
        self.var = torch.zeros_like(self.lp)
        if self.P and self.B:
            self.pr = _Probes(self.P, self.x, self.pnoise, probe_dist, self.backend)

    # -------------------------------------------------------------------- pieces of a step
    def sig(self, i):
        """sigmas[i] as the caller gave it (a tensor element or a number)."""
        return self.sigmas[i]

    def denoise(self, x, sigma, vjp=False, probes=None):
        """(Dn(x, sigma), its vector-Jacobian products with the step's probes or None)."""
        s = self.s_in * sigma
        if vjp and self.lp is not None:
            pr = probes if probes is not None else self.pr.cur
            return denoise_with_vjps(self.model, x, s, self.extra_args, pr)
        with torch.no_grad():
            return self.model(x, s, **self.extra_args), None

    def report(self, i, den, sigma_hat=None):
        if self.callback is not None:
            sig = self.sig(i)
            self.callback({"x": self.x, "i": i, "sigma": sig,
                           "sigma_hat": sig if sigma_hat is None else sigma_hat, "denoised": den})

    def seeded(self):
        return self.noise is not None

    def offset(self):
        """The next increment's offset: the stream's draws are numbered in order (the seeded
        samplers of :mod:`.samplers` draw one per step, so step i's is at ``offset(i)``)."""
        off = self.noise.offset(self.draws)
        self.draws += 1
        return off

    def draw(self):
        """A noise tensor like x from the seeded stream (when it must exist outside a step)."""
        dt = torch.float32 if self.x.dtype == torch.float64 else self.x.dtype
        return _noise(self.x.shape, seed=self.noise.seed, offset=self.offset(), dist=self.dist,
                      device=self.x.device, dtype=dt, backend=self.backend).to(self.x.dtype)

    def final_probes(self):
        """One probe for the final denoising step of a sampler that tracks no divergence."""
        return draw_probes(self.x, 1, self.pnoise.seed, self.pnoise.probe_offset(self.n - 1, 1),
                           self.probe_dist, self.backend)

    def noisy_step(self, i, noise_sampler, models, ax, am, az, **kw):
        """``step`` with the noise ``az z``: drawn inside the kernel when seeded, else
        ``z = noise_sampler(sigma_i, sigma_{i+1})``, drawn right before the step."""
        if self.seeded():
            return self.step(i, models, ax, am, az=az, draw=True, **kw)
        return self.step(i, models, ax, am, az=az, z=noise_sampler(self.sig(i), self.sig(i + 1)),
                         **kw)

    def step(self, i, models, ax, am, *, az=0.0, z=None, draw=False, terms=None, vjps=None,
             probes=None, into=None, fresh=False, next_probes=False):
        """One fused launch: ``x' = ax x + sum_k am_k models_k + az z`` with z given, drawn in
        the step (``draw``) or none; ``terms``: the log-density terms (dict of make_coef's
        sx, sm, c0, c1, c2, cw). With ``vjps`` (and no ``probes`` of its own) or
        ``next_probes``, the step draws the next step's probes. Writes into ``into`` (leaving x
        and logp) or advances x, in place unless ``fresh`` (True or the buffer to write: a
        multistep sampler keeps the old x) or a callback may keep it."""
        K = len(models)
        t = terms if (terms is not None and self.lp is not None and into is None) else None
        kw = {}
        advance = False
        if t is None:
            coef = make_coef(self.B, ax=ax, az=az, am=am, device=self.x.device)
        else:
            coef = make_coef(self.B, ax=ax, az=az, am=am, sx=t.get("sx", 0.0),
                             sm=t.get("sm", (0.0,) * K), c0=t.get("c0", 0.0), c1=t.get("c1", 0.0),
                             c2=t.get("c2", 0.0), cw=t.get("cw", (0.0,) * K), device=self.x.device)
            kw.update(logp=self.lp, logp_var=self.var)
            if vjps is not None:
                kw.update(vjps=vjps, probes=self.pr.cur if probes is None else probes)
            advance = (vjps is not None and probes is None) or next_probes
            if advance:
                kw.update(seed=self.pnoise.seed, **self.pr.step_kwargs(i, i == self.n - 1))
        if z is not None:
            kw.update(z=z)
        elif draw:  # (seeded: the probes come from the same stream)
            kw.update(seed=self.noise.seed, offset=self.offset(), dist=self.dist)
        if into is not None:
            return fused_step(self.x, models, coef, out=into, backend=self.backend, **kw)
        if fresh is not False or (self.callback is not None and self.keep_reported):
            buf = fresh if isinstance(fresh, torch.Tensor) else torch.empty_like(self.x)
            self.x = fused_step(self.x, models, coef, out=buf, backend=self.backend, **kw)
        else:
            fused_step(self.x, models, coef, backend=self.backend, **kw)
        if advance and i < self.n - 1:
            self.pr.advance()
        return self.x

    def scratch(self):
        """The stage buffer (a midpoint x): allocated once, reused every step."""
        if getattr(self, "_scratch", None) is None:
            self._scratch = torch.empty_like(self.x)
        return self._scratch

    def ring(self, i, size):
        """Step i's output buffer among ``size`` reused ones (``size`` > the states a multistep
        sampler keeps); a fresh tensor when a callback may keep x."""
        if self.callback is not None:
            return torch.empty_like(self.x)
        if getattr(self, "_ring", None) is None:
            self._ring = [self.x] + [torch.empty_like(self.x) for _ in range(size - 1)]
        return self._ring[(i + 1) % size]

    def output(self):
        return self.x if self.lp is None else (self.x, self.lp)

    def result(self, stacklevel=3):
        """NaN out the non-finite samples (warning as :func:`finish_rows`, ``stacklevel``
        counted from this method's caller's caller) and return ``x`` or ``(x, logp)``."""
        finish_rows(self.where, self.bad, self.x, self.lp, stacklevel=stacklevel)
        return self.output()

    # ------------------------------------------------------------------ log-density terms
    def ode_terms(self, weights, D_weight=None):
        """Terms of ``logp += sum_k weights_k (div M_k - D)``."""
        c0 = -self.D * (sum(weights) if D_weight is None else D_weight)
        return dict(c0=c0, cw=tuple(weights))

    def sde_terms(self, K, sigma, A, G, q):
        """Ito's formula for a step ``x' = x + A s + G z`` (s from models[0], at sigma)."""
        u = (G * G - q) / (2 * sigma * sigma)  # weight of div Dn - D
        # the |s|^2 integral by the trapezoid rule: half of this step's weight now, half with
        # the next step's score (the s . z term stays at the left point: it is Ito's)
        c1 = self.carry + (A - q / 2) / 2
        self.carry = (A - q / 2) / 2
        t = dict(sx=-1 / sigma ** 2, sm=(1 / sigma ** 2,) + (0.0,) * (K - 1), c1=c1, c2=G)
        if self.P:
            t.update(c0=-self.D * u, cw=(u,) + (0.0,) * (K - 1))
        return t

    def final_terms(self, sigma):
        """The final step ``x' = Dn(x)`` of a stochastic sampler: ``D - div Dn``, and the rest
        of the previous step's |s|^2 term."""
        t = self.ode_terms((-1.0,))
        if self.carry:
            t.update(sx=-1 / sigma ** 2, sm=(1 / sigma ** 2,), c1=self.carry)
        return t

    def sde_vjp(self):
        return self.lp is not None and self.P > 0

    def denoise_final(self, x, sigma):
        """Dn at the final step of a stochastic sampler, with the vjp its log-density needs."""
        if self.lp is None:
            return self.denoise(x, sigma) + (None,)
        pr = self.pr.cur if self.P else self.final_probes()
        den, w = self.denoise(x, sigma, vjp=True, probes=pr)
        return den, w, pr

    def denoise_sde(self, sigma, final):
        """(Dn, vjps, probes) at x for a stochastic sampler's step: the final step's (with the
        probes its log-density needs) or an SDE step's (vjps only where its terms need them;
        probes None: the step's own)."""
        if final:
            return self.denoise_final(self.x, sigma)
        return self.denoise(self.x, sigma, vjp=self.sde_vjp()) + (None,)

    def sde_begin(self, i):
        """Step i of a stochastic sampler up to its own update: Dn (:meth:`denoise_sde`),
        reported; returns ``(sigma, sigma', Dn, vjps)``, or None after the final step to
        sigma = 0 (:meth:`final_step`), done here."""
        sig, nxt = self.levels[i], self.levels[i + 1]
        den, w, pr = self.denoise_sde(sig, nxt == 0)
        self.report(i, den)
        if nxt == 0:
            self.final_step(i, den, w, pr)
            return None
        return sig, nxt, den, w

    def final_step(self, i, den, w, pr, ax=0.0, am=(1.0,)):
        """A stochastic sampler's final step to sigma = 0, ``x' = Dn`` (``ax x + am Dn``):
        ``D - div Dn`` with the probes of :meth:`denoise_final`."""
        self.step(i, [den], ax, am, terms=self.final_terms(self.levels[i]),
                  vjps=None if w is None else [w], probes=pr)


def open_run(ns, model, x, sigmas, extra_args, callback, *, seed, dist, logp, probes, probe_dist,
             backend, where, noise_sampler=None, stochastic=False, div_small=False):
    """A run of one of k-diffusion's samplers (:mod:`.k_samplers`): ``sigmas`` a 1-d tensor or
    a list of numbers (read once, here); without ``seed`` the noise comes from ``ns``
    (:class:`_Source`) and the probes from a fresh seed."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point (B, *S) tensor, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if isinstance(sigmas, torch.Tensor):
        if sigmas.dim() != 1:
            raise ValueError(f"sigmas: expected a 1-d tensor, got shape {tuple(sigmas.shape)}")
        levels = sigmas.detach().double().cpu().tolist()  # one host read, before the loop
    elif isinstance(sigmas, (list, tuple)):
        levels = [float(s) for s in sigmas]
    else:
        raise TypeError(f"sigmas: expected a 1-d tensor or a list of numbers, got "
                        f"{type(sigmas).__name__}")
    if len(levels) < 2:
        raise ValueError(f"sigmas: expected at least 2 noise levels, got {len(levels)}")
    check_levels(levels, "sigmas")  # finite, >= 0, strictly decreasing
    _check_dist(dist)
    if seed is not None and noise_sampler is not None:
        raise ValueError("seed, noise_sampler: give one of them (seed draws the noise in the "
                         "fused step, noise_sampler draws it outside)")
    run = _Run(model, x.detach().clone(memory_format=torch.contiguous_format), sigmas, levels,
               len(levels) - 1, extra_args, callback, bad=_rows_bad(x), backend=backend,
               dist=dist, where=where, ns=ns)
    run.noise = None if seed is None or not run.B else _Noise(seed, x)
    run.lp = _init_logp(logp, x, levels[0])
    if run.lp is not None:
        if probes is None:
            probes = 0 if (stochastic and div_small) else 1
        if stochastic and isinstance(probes, int) and not isinstance(probes, bool) and probes == 0:
            P = 0
        else:
            P = _check_probes(probes)
        pnoise = run.noise if run.noise is not None or not run.B else _Noise(None, x)
        _check_probe_dist(probe_dist)
        run.track(P, pnoise, probe_dist)
    return run


def open_seeded_run(model, x, sigmas, extra_args, callback, *, where, seed, logp, backend,
                    dist="normal", levels=None, probes=None, probe_dist="rademacher"):
    """A run of :func:`.samplers.sample_hd`, :func:`.samplers.sample_euler_maruyama` or
    :func:`.samplers.sample_ddim`: ``sigmas`` the float64 tensor of :func:`_sigmas` (``levels``:
    its values, when the sampler reads them), noise always from a seeded stream (``seed``
    None: one drawn from torch's generator), x updated in place (a callback sees the live x).
    ``probes``: the Hutchinson probes per step when ``logp`` is tracked (None: the sampler has
    no divergence term; then an empty batch draws no seed)."""
    x = x.clone().contiguous()
    run = _Run(model, x, sigmas, levels, sigmas.numel() - 1, extra_args, callback,
               bad=_rows_bad(x), backend=backend, dist=dist, where=where, keep_reported=False)
    run.lp = _init_logp(logp, x, sigmas[0])
    if probes is None and not run.B:
        return run
    run.noise = _Noise(seed, x)
    if probes is not None and run.lp is not None and run.B:
        run.track(_check_probes(probes), run.noise, probe_dist)
    return run
