"""k-diffusion's samplers (``k_diffusion.sampling``, 0.1.1.post1) with their exact signatures,
each step one fused ``sample_step`` launch (docs/math.md, section 3.1).

``model(x, sigma * s_in, **extra_args)`` returns the denoised x (x = x_0 + sigma z); ``sigmas``
is the noise levels, usually ending with 0. Every sampler takes k-diffusion's parameters, in
k-diffusion's order and with its defaults, plus keyword-only extras:

- ``seed``: an int, or a (B,) integer tensor of per-sample seeds (each sample's noise then does
  not depend on the rest of the batch). The noise is drawn inside the fused step (law ``dist``:
  normal, laplace, uniform or rademacher, unit variance). Without ``seed`` the noise is drawn
  exactly as k-diffusion draws it: ``torch.randn_like`` on every step of Euler / Heun / DPM-2
  (even when ``s_churn`` is 0), ``noise_sampler(sigma, sigma_next)`` (default
  ``default_noise_sampler(x)``) for the ancestral samplers, a ``BrownianTreeNoiseSampler`` for
  the SDE samplers: the same draws, in the same order, with the same arguments. Inside a module
  patched by :mod:`diffaccel.integrations.k_diffusion`, those names (``torch``,
  ``default_noise_sampler``, ``BrownianTreeNoiseSampler``) are looked up in that module at call
  time, so a caller that replaces them (stable-diffusion-webui replaces the module's ``torch``
  by its per-image-seed generator) keeps its seeds. Unpatched, ``torch.randn_like`` is torch's;
  an SDE sampler without ``seed`` or ``noise_sampler`` draws one seed from the global generator
  (as k-diffusion's tree does) and uses it for Brownian increments drawn in the step.
- ``logp``: ``True`` (start from the prior ``log N(x; 0, sigmas[0]^2 I)``), a number or a (B,)
  tensor; the sampler then returns ``(x, logp)``, the log-density of the returned samples
  tracked along the sampler's own path (docs/math.md 3.1, 3.3):

  * ODE samplers (euler, heun, dpm_2, lms, dpmpp_2m) integrate
    ``d logp / d log sigma = div Dn - D`` with the quadrature weights the sampler gives its model
    evaluations (Heun: trapezoid, DPM-2: midpoint, DPM-Solver++(2M): its own linear
    extrapolation), the divergence by Hutchinson with ``probes`` probes per evaluation; LMS
    with quartic Lagrange weights in log sigma over all its evaluations plus a correction for
    its own local errors (:mod:`.logp_quad`);
  * stochastic samplers use Ito's formula for ``log p_sigma(x)`` along a step
    ``x' = x + A s + G z`` (s = (Dn - x)/sigma^2 the score, q = sigma^2 - sigma'^2)::

        logp += (A - q/2) |s|^2 + G (s . z) + (G^2 - q)/2 div s

    (zero overhead: no extra model call; the ``|s|^2`` term by the trapezoid rule, half of
    its weight carried to the next step's score). ``(G^2 - q)`` is O(step^2) at ``eta = 1`` and
    ``s_noise = 1`` (k-diffusion's ancestral noise is the reverse SDE's to first order), so
    ``probes=None`` drops the divergence there and estimates it with one probe otherwise. The
    final step to sigma = 0 (``x' = Dn(x)``) adds ``D - div Dn`` (one Hutchinson estimate).

  Accuracy is first order in the step (second order for the ODE samplers' quadrature, fourth
  or better for LMS's, which also corrects for its own local errors in x).
- ``backend``: the fused step's backend (reference, cpu, triton, cuda).

Host reads: the noise levels are read once before the loop (as k-diffusion's ``sample_lms``
does); every per-step coefficient is then a number, nothing in a step reads the device, and for
a ``sigmas`` list (constants) the whole loop traces into one graph
(``torch.compile(fullgraph=True)``, with ``disable=True``). Steps with a Heun / DPM-2 / 2S /
SDE midpoint stage launch one more fused step for it, and ``s_churn > 0`` one for the churn;
``sample_dpmpp_sde`` with ``seed`` draws its two correlated Brownian increments outside the step.
The state is copied once (the input is never changed) and then updated in place, or written to
a new tensor each step when a ``callback`` may keep it or a multistep sampler needs it.
"""
import math

import torch

from ..layout import MAX_MODELS
from ._driver import _Noise, _steps, open_run
from .logp_quad import CORR_NODES, corrector, flow_weights

INF = float("inf")
MAX_LMS_ORDER = (MAX_MODELS + 1) // 2  # 2 * order - 1 model-sized inputs per fused step

__all__ = ["sample_euler", "sample_euler_ancestral", "sample_heun", "sample_dpm_2",
           "sample_dpm_2_ancestral", "sample_lms", "sample_dpmpp_2s_ancestral", "sample_dpmpp_sde",
           "sample_dpmpp_2m", "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde", "K_SAMPLERS",
           "get_ancestral_step", "lms_coefficients"]


# ------------------------------------------------------------------------------ helpers

def get_ancestral_step(sigma_from, sigma_to, eta=1.0):
    """k-diffusion's (sigma_down, sigma_up), on numbers."""
    if not eta:
        return sigma_to, 0.0
    up = min(sigma_to, eta * math.sqrt(max(sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2)
                                           / sigma_from ** 2, 0.0)))
    return math.sqrt(max(sigma_to ** 2 - up ** 2, 0.0)), up


def lms_coefficients(levels, order):
    """coeffs[i][j]: the weight of the derivative at step i - j in LMS step i, the integral of
    its Lagrange basis polynomial over [sigma_i, sigma_{i+1}] (exact, in Python floats so that
    a traced loop sees constants; k-diffusion integrates the same polynomials with scipy's
    quad)."""
    t = [float(v) for v in levels]
    out = []
    for i in range(len(t) - 1):
        cur = min(i + 1, order)
        row = []
        for j in range(cur):
            p = [1.0]  # coefficients, lowest degree first
            for k in range(cur):
                if k != j:
                    d = t[i - j] - t[i - k]
                    p = [(a - t[i - k] * b) / d for a, b in zip([0.0] + p, p + [0.0])]
            prim = lambda v: sum(c * v ** (m + 1) / (m + 1) for m, c in enumerate(p))  # noqa: E731
            row.append(prim(t[i + 1]) - prim(t[i]))
        out.append(row)
    return out


def _check_churn(run, s_churn, s_tmin, s_tmax):
    n = run.n
    if not s_churn:  # (also keeps a traced loop free of symbolic churn arithmetic)
        return [0.0] * n
    gammas = [min(s_churn / n, 2 ** 0.5 - 1) if s_tmin <= s <= s_tmax else 0.0
              for s in run.levels[:-1]]
    if run.lp is not None and any(g > 0 for g in gammas):
        raise ValueError("s_churn: logp is tracked for s_churn = 0 only (churn adds noise "
                         "whose log-density needs the Laplacian)")
    return gammas


def _churn(run, i, gamma, s_noise):
    """k-diffusion's churn: one randn_like per step without seed (used or not); returns sigma_hat."""
    sig = run.levels[i]
    eps = None if run.seeded() else run.src.randn_like(run.x)
    sigma_hat = sig * (gamma + 1)
    if gamma > 0:
        g = s_noise * math.sqrt(sigma_hat ** 2 - sig ** 2)
        if eps is None:
            run.step(i, [], 1.0, (), az=g, draw=True)
        else:
            run.step(i, [], 1.0, (), az=g, z=eps)
    return sigma_hat


def _sigma_hat(run, i, gamma):
    if gamma == 0:
        return None
    s = run.sig(i)
    return s * (gamma + 1)


def _churn_run(ns, where, model, x, sigmas, extra_args, callback, s_churn, s_tmin, s_tmax, seed,
               dist, logp, probes, probe_dist, backend):
    """(run, the churn's gamma per step) of Euler, Heun or DPM-2."""
    run = open_run(ns, model, x, sigmas, extra_args, callback, where=where, seed=seed, dist=dist,
                   logp=logp, probes=probes, probe_dist=probe_dist, backend=backend)
    return run, _check_churn(run, s_churn, s_tmin, s_tmax)


def _churn_begin(run, i, gammas, s_noise, vjp=True):
    """Step i of Euler, Heun or DPM-2 up to its own update: the churn, then Dn at sigma_hat
    (with its vjps if ``vjp``), reported; returns ``(sigma_hat, sigma', Dn, vjps)``."""
    sh = _churn(run, i, gammas[i], s_noise)
    den, w = run.denoise(run.x, sh, vjp=vjp)
    run.report(i, den, _sigma_hat(run, i, gammas[i]))
    return sh, run.levels[i + 1], den, w


def _public(core, name):
    """The public sampler: ``core`` without its leading module argument."""
    import functools
    import inspect

    @functools.wraps(core)
    def f(*args, **kwargs):
        return core(None, *args, **kwargs)
    sig = inspect.signature(core)
    f.__signature__ = sig.replace(parameters=list(sig.parameters.values())[1:])
    f.__name__ = f.__qualname__ = name
    del f.__wrapped__  # the signature is the one above (without the module argument)
    f.core = core
    return f


# ----------------------------------------------------------------------- ODE samplers

def _euler(ns, model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.,
           s_tmin=0., s_tmax=INF, s_noise=1., *, seed=None, dist="normal", logp=None, probes=1,
           probe_dist="rademacher", backend=None):
    """Karras et al. (2022) Algorithm 2 with Euler steps (k-diffusion's ``sample_euler``):
    ``x <- x + (sigma' - sigma_hat)(x - Dn(x, sigma_hat))/sigma_hat`` after the churn
    ``sigma_hat = sigma (1 + gamma)``. ``logp``: ``d logp = (div Dn - D) d sigma / sigma``."""
    run, gammas = _churn_run(ns, "sample_euler", model, x, sigmas, extra_args, callback, s_churn,
                             s_tmin, s_tmax, seed, dist, logp, probes, probe_dist, backend)
    for i in _steps(run.n, disable):
        sh, nxt, den, w = _churn_begin(run, i, gammas, s_noise)
        r = (nxt - sh) / sh
        run.step(i, [den], 1 + r, (-r,), terms=run.ode_terms((r,)), vjps=[w])
    return run.result()


def _heun(ns, model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.,
          s_tmin=0., s_tmax=INF, s_noise=1., *, seed=None, dist="normal", logp=None, probes=1,
          probe_dist="rademacher", backend=None):
    """Karras et al. (2022) Algorithm 2 (Heun steps; an Euler step to sigma = 0). ``logp``: the
    trapezoid rule on ``d logp = (div Dn - D) d sigma / sigma``; both stages use the same
    probes."""
    run, gammas = _churn_run(ns, "sample_heun", model, x, sigmas, extra_args, callback, s_churn,
                             s_tmin, s_tmax, seed, dist, logp, probes, probe_dist, backend)
    for i in _steps(run.n, disable):
        sh, nxt, den, w = _churn_begin(run, i, gammas, s_noise)
        r = (nxt - sh) / sh
        if nxt == 0:
            run.step(i, [den], 1 + r, (-r,), terms=run.ode_terms((r,)), vjps=[w])
            continue
        x2 = run.step(i, [den], 1 + r, (-r,), into=run.scratch())
        den2, w2 = run.denoise(x2, nxt, vjp=True)
        rn = (nxt - sh) / nxt
        run.step(i, [den, den2], 1 + r / 2 + rn / 2 * (1 + r), (-r / 2 - rn * r / 2, -rn / 2),
                 terms=run.ode_terms((r / 2, rn / 2)), vjps=None if w is None else [w, w2])
    return run.result()


def _dpm_2(ns, model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.,
           s_tmin=0., s_tmax=INF, s_noise=1., *, seed=None, dist="normal", logp=None, probes=1,
           probe_dist="rademacher", backend=None):
    """k-diffusion's DPM-2: an Euler half step to the geometric midpoint sigma_mid, then the full
    step with the derivative there (Euler to sigma = 0). ``logp``: the midpoint rule."""
    run, gammas = _churn_run(ns, "sample_dpm_2", model, x, sigmas, extra_args, callback, s_churn,
                             s_tmin, s_tmax, seed, dist, logp, probes, probe_dist, backend)
    for i in _steps(run.n, disable):
        sh, nxt, den, w = _churn_begin(run, i, gammas, s_noise, vjp=run.levels[i + 1] == 0)
        if nxt == 0:
            r = -1.0
            run.step(i, [den], 1 + r, (-r,), terms=run.ode_terms((r,)), vjps=[w])
            continue
        mid = math.exp(0.5 * (math.log(sh) + math.log(nxt)))
        b = (mid - sh) / sh
        x2 = run.step(i, [den], 1 + b, (-b,), into=run.scratch())
        den2, w2 = run.denoise(x2, mid, vjp=True)
        a = (nxt - sh) / mid
        run.step(i, [den, den2], 1 + a * (1 + b), (-a * b, -a), terms=run.ode_terms((0.0, a)),
                 vjps=None if w2 is None else [w2, w2])
    return run.result()


def _lms(ns, model, x, sigmas, extra_args=None, callback=None, disable=None, order=4, *,
         seed=None, dist="normal", logp=None, probes=1, probe_dist="rademacher", backend=None):
    """k-diffusion's linear multistep (Adams-Bashforth in sigma, order ``order`` <= 4 here):
    ``x <- x + sum_j c_ij d_{i-j}``, d = (x - Dn)/sigma, with the past states and model outputs
    as inputs of the fused step. ``logp`` (:mod:`.logp_quad`): ``div Dn - D`` integrated in
    t = log sigma with quartic Lagrange weights over all evaluations (each evaluation's total
    weight added at its own step), plus ``s_i . e_{i-1}``, the log-density change from the
    previous step's local error ``e`` (estimated by the exponential corrector), both in step
    i's fused pass."""
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= MAX_LMS_ORDER:
        raise ValueError(f"order: expected an int from 1 to {MAX_LMS_ORDER} (the fused step takes "
                         f"at most {MAX_MODELS} model-sized inputs), got {order!r}")
    run = open_run(ns, model, x, sigmas, extra_args, callback, where="sample_lms", seed=seed,
                   dist=dist, logp=logp, probes=probes, probe_dist=probe_dist, backend=backend)
    lv = run.levels
    coeffs = lms_coefficients(lv[:run.n + 1], order)
    W = flow_weights(lv[:run.n + 1]) if run.lp is not None and run.n else None
    # past steps kept: the LMS terms' and (logp) the corrector's
    keep = max(order - 1, CORR_NODES - 1 if W is not None else 0)
    hist = []  # (x_m, Dn_m) of the previous steps, newest first
    zbuf = None
    for i in _steps(run.n, disable):
        xi = run.x
        den, w = run.denoise(xi, lv[i], vjp=True)
        run.report(i, den)
        row = coeffs[i]
        models, am = [den], [-row[0] / lv[i]]
        for j in range(1, len(row)):
            xm, dm = hist[j - 1]
            models += [xm, dm]
            am += [row[j] / lv[i - j], -row[j] / lv[i - j]]
        K = len(models)
        terms = z = None
        if W is not None:
            terms = dict(c0=-run.D * W[i], cw=(W[i],) + (0.0,) * (K - 1))
            if i:  # s_i . e_{i-1}: z = x_i - (e^h x_{i-1} - sum_j c_j Dn_j), s_i from Dn_i and x_i
                eh, cs = corrector(lv, i)
                # e is a small difference of large terms: float32 at least (from the stored,
                # rounded states, so a half-precision x's rounding counts as local error)
                if zbuf is None:
                    zbuf = torch.empty_like(xi, dtype=torch.promote_types(xi.dtype, torch.float32))
                z = zbuf.copy_(xi).sub_(hist[0][0], alpha=eh)
                for j, c in cs.items():
                    z.add_(den if j == i else hist[i - j - 1][1], alpha=c)
                terms.update(sx=-1 / lv[i] ** 2, sm=(1 / lv[i] ** 2,) + (0.0,) * (K - 1), c2=1.0)
        run.step(i, models, 1 + row[0] / lv[i], tuple(am), z=z, terms=terms,
                 vjps=None if w is None else [w] * K, fresh=run.ring(i, keep + 2))
        hist.insert(0, (xi, den))
        del hist[keep:]
    return run.result()


def _dpmpp_2m(ns, model, x, sigmas, extra_args=None, callback=None, disable=None, *, seed=None,
              dist="normal", logp=None, probes=1, probe_dist="rademacher", backend=None):
    """DPM-Solver++(2M) (k-diffusion's ``sample_dpmpp_2m``): in t = -log sigma, h = t' - t,
    ``x <- (sigma'/sigma) x + (1 - e^-h) ((1 + 1/2r) Dn - (1/2r) Dn_old)``, r = h_old / h
    (first order on the first step and to sigma = 0). ``logp``: the same linear extrapolation
    of ``div Dn`` in t, ``logp += -h ((1 + 1/2r) f - f_old/2r - D)``, f = div Dn (to sigma = 0:
    ``D - f``)."""
    run = open_run(ns, model, x, sigmas, extra_args, callback, where="sample_dpmpp_2m", seed=seed,
                   dist=dist, logp=logp, probes=probes, probe_dist=probe_dist, backend=backend)
    lv = run.levels
    # per step: (h, weight on the new output, weight on the old one) in the D-space update
    steps = []
    for i in range(run.n):
        if lv[i + 1] == 0:
            steps.append((None, 1.0, 0.0))
            continue
        h = math.log(lv[i]) - math.log(lv[i + 1])
        if i == 0:
            steps.append((h, 1.0, 0.0))
        else:
            r = (math.log(lv[i - 1]) - math.log(lv[i])) / h
            steps.append((h, 1 + 1 / (2 * r), 1 / (2 * r)))
    W = []  # total weight of evaluation m on div Dn_m; c0 of step m
    for m, (h, a, _) in enumerate(steps):
        wm = -1.0 if h is None else -h * a
        if m + 1 < run.n and steps[m + 1][0] is not None:
            wm += steps[m + 1][0] * steps[m + 1][2]
        W.append(wm)
    old = None
    for i in _steps(run.n, disable):
        den, w = run.denoise(run.x, lv[i], vjp=True)
        run.report(i, den)
        h, a, b = steps[i]
        c0 = run.D * (1.0 if h is None else h)
        if h is None or old is None or b == 0:
            e = 1.0 if h is None else -math.expm1(-h)
            run.step(i, [den], lv[i + 1] / lv[i], (e,), terms=dict(c0=c0, cw=(W[i],)), vjps=[w])
        else:
            e = -math.expm1(-h)
            run.step(i, [den, old], lv[i + 1] / lv[i], (e * a, -e * b),
                     terms=dict(c0=c0, cw=(W[i], 0.0)), vjps=None if w is None else [w, w])
        old = den
    return run.result()


# ------------------------------------------------------------------- stochastic samplers

def _ancestral_run(ns, where, model, x, sigmas, extra_args, callback, eta, s_noise, noise_sampler,
                   seed, dist, logp, probes, probe_dist, backend):
    """(run, noise sampler) of an ancestral sampler: the noise sampler is None with ``seed``
    (drawn in the step), else the one given or the module's ``default_noise_sampler(x)``, made
    before the loop as k-diffusion makes it."""
    run = _sde_run(ns, where, model, x, sigmas, extra_args, callback, eta, s_noise, noise_sampler,
                   seed, dist, logp, probes, probe_dist, backend)
    if run.seeded() or not run.B:
        return run, None
    return run, (noise_sampler if noise_sampler is not None else run.src.default_noise_sampler(x))


def _ancestral_begin(run, i, eta):
    """Step i of an ancestral sampler up to its own update: ``(sigma, sigma', Dn, vjps,
    sigma_down, sigma_up)``, or None after the final step to sigma = 0 (``x' = Dn``), done here."""
    step = run.sde_begin(i)
    return None if step is None else step + get_ancestral_step(step[0], step[1], eta)


def _sde_run(ns, where, model, x, sigmas, extra_args, callback, eta, s_noise, noise_sampler, seed,
             dist, logp, probes, probe_dist, backend):
    """The run of a stochastic sampler: ``probes=None`` drops the divergence (0 probes) where it
    is O(step^2) (``eta = 1``, ``s_noise = 1``), else one probe."""
    return open_run(ns, model, x, sigmas, extra_args, callback, where=where, seed=seed, dist=dist,
                    logp=logp, probes=probes, probe_dist=probe_dist, backend=backend,
                    noise_sampler=noise_sampler, stochastic=True,
                    div_small=eta == 1 and s_noise == 1)


def _brownian_run(ns, where, model, x, sigmas, extra_args, callback, eta, s_noise, noise_sampler,
                  seed, dist, logp, probes, probe_dist, backend):
    """(run, noise sampler) of an SDE sampler: the noise sampler given, None with ``seed``
    (drawn in the step), else k-diffusion's default (:func:`_brownian`)."""
    run = _sde_run(ns, where, model, x, sigmas, extra_args, callback, eta, s_noise, noise_sampler,
                   seed, dist, logp, probes, probe_dist, backend)
    if noise_sampler is None and not run.seeded():
        return run, _brownian(run, x)
    return run, noise_sampler


def _multistep_sde(run, sampler, disable, eta, keep, update):
    """The loop of DPM-Solver++(2M) / (3M) SDE: step i is ``x' = ax x + sum_k am_k models_k +
    G z`` (the noise unless ``eta`` is 0; drift ``sigma^2 e s``, its log-density by Ito's
    formula), with ``(models, ax, am, e, G) = update(sigma, sigma', h, Dn, hist)``, h = log
    sigma - log sigma', ``hist`` the ``(h, Dn)`` of the last ``keep`` steps, newest first."""
    hist = []
    for i in _steps(run.n, disable):
        step = run.sde_begin(i)
        if step is None:
            continue
        sig, nxt, den, w = step
        h = math.log(sig) - math.log(nxt)
        models, ax, am, e, G = update(sig, nxt, h, den, hist)
        terms = run.sde_terms(len(models), sig, sig * sig * e, G, sig * sig - nxt * nxt)
        vjps = None if w is None else [w] * len(models)
        if not eta:
            run.step(i, models, ax, tuple(am), terms=terms, vjps=vjps)
        else:
            run.noisy_step(i, sampler, models, ax, tuple(am), G, terms=terms, vjps=vjps)
        hist = [(h, den)] + hist[:keep - 1]


def _brownian(run, x):
    """k-diffusion's default for the SDE samplers: the module's BrownianTreeNoiseSampler; without
    a module, a seed from the global generator (as the tree draws one) for noise drawn in the
    step (independent increments: the law of the tree's increments over disjoint intervals)."""
    if not run.B:
        return None
    tree = run.src.brownian(x, run.sigmas)
    if tree is None:
        run.noise = _Noise(int(torch.randint(0, 2 ** 63 - 1, []).item()), run.x)
        if run.lp is not None:  # the probes share the stream
            run.track(run.P, run.noise, run.probe_dist)
    return tree


def _euler_ancestral(ns, model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.,
                     s_noise=1., noise_sampler=None, *, seed=None, dist="normal", logp=None,
                     probes=None, probe_dist="rademacher", backend=None):
    """Ancestral sampling with Euler steps (k-diffusion's ``sample_euler_ancestral``): an Euler
    step to sigma_down, then ``s_noise sigma_up`` times the noise (none to sigma = 0)."""
    run, ns_ = _ancestral_run(ns, "sample_euler_ancestral", model, x, sigmas, extra_args, callback,
                              eta, s_noise, noise_sampler, seed, dist, logp, probes, probe_dist,
                              backend)
    for i in _steps(run.n, disable):
        sig, nxt = run.levels[i], run.levels[i + 1]
        den, w, pr = run.denoise_sde(sig, nxt == 0)
        run.report(i, den)
        down, up = get_ancestral_step(sig, nxt, eta)
        ax, am = down / sig, (1 - down / sig,)
        if nxt == 0:  # (x' = Dn, written as the sampler writes it)
            run.final_step(i, den, w, pr, ax, am)
            continue
        G = s_noise * up
        terms = run.sde_terms(1, sig, sig * (sig - down), G, sig * sig - nxt * nxt)
        vj = [w] if w is not None else None
        run.noisy_step(i, ns_, [den], ax, am, G, terms=terms, vjps=vj)
    return run.result()


def _dpm_2_ancestral(ns, model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.,
                     s_noise=1., noise_sampler=None, *, seed=None, dist="normal", logp=None,
                     probes=None, probe_dist="rademacher", backend=None):
    """Ancestral sampling with DPM-2 steps (k-diffusion's ``sample_dpm_2_ancestral``): DPM-2 to
    sigma_down (Euler when sigma_down = 0, then no noise), then ``s_noise sigma_up`` noise."""
    run, ns_ = _ancestral_run(ns, "sample_dpm_2_ancestral", model, x, sigmas, extra_args, callback,
                              eta, s_noise, noise_sampler, seed, dist, logp, probes, probe_dist,
                              backend)
    for i in _steps(run.n, disable):
        step = _ancestral_begin(run, i, eta)
        if step is None:
            continue
        sig, nxt, den, w, down, up = step
        if down == 0:
            run.step(i, [den], 0.0, (1.0,), vjps=None if w is None else [w],
                     terms=run.sde_terms(1, sig, sig * sig, 0.0, sig * sig - nxt * nxt))
            continue
        mid = math.exp(0.5 * (math.log(sig) + math.log(down)))
        b = (mid - sig) / sig
        x2 = run.step(i, [den], 1 + b, (-b,), into=run.scratch())
        den2, _ = run.denoise(x2, mid)
        a = (down - sig) / mid
        G = s_noise * up
        terms = run.sde_terms(2, sig, sig * (sig - down), G, sig * sig - nxt * nxt)
        vj = [w, w] if w is not None else None
        run.noisy_step(i, ns_, [den, den2], 1 + a * (1 + b), (-a * b, -a), G, terms=terms,
                       vjps=vj)
    return run.result()


def _dpmpp_2s_ancestral(ns, model, x, sigmas, extra_args=None, callback=None, disable=None,
                        eta=1., s_noise=1., noise_sampler=None, *, seed=None, dist="normal",
                        logp=None, probes=None, probe_dist="rademacher", backend=None):
    """Ancestral sampling with DPM-Solver++(2S) steps (k-diffusion's
    ``sample_dpmpp_2s_ancestral``): in t = -log sigma, a first-order step to the midpoint
    ``s = t + h/2`` of [t, t_down], then ``x <- (sigma_down/sigma) x + (1 - e^-h) Dn(x_2, s)``,
    then ``s_noise sigma_up`` noise unless sigma' = 0."""
    run, ns_ = _ancestral_run(ns, "sample_dpmpp_2s_ancestral", model, x, sigmas, extra_args,
                              callback, eta, s_noise, noise_sampler, seed, dist, logp, probes,
                              probe_dist, backend)
    for i in _steps(run.n, disable):
        step = _ancestral_begin(run, i, eta)
        if step is None:
            continue
        sig, nxt, den, w, down, up = step
        G = s_noise * up
        q = sig * sig - nxt * nxt
        if down == 0:
            models, ax, am = [den], 0.0, (1.0,)
            terms = run.sde_terms(1, sig, sig * sig, G, q)
            vj = None if w is None else [w]
        else:
            h = math.log(sig) - math.log(down)
            ms = math.sqrt(sig * down)  # sigma at s = t + h/2
            x2 = run.step(i, [den], ms / sig, (-math.expm1(-h / 2),), into=run.scratch())
            den2, _ = run.denoise(x2, ms)
            models, ax, am = [den, den2], down / sig, (0.0, -math.expm1(-h))
            terms = run.sde_terms(2, sig, sig * (sig - down), G, q)
            vj = None if w is None else [w, w]
        run.noisy_step(i, ns_, models, ax, am, G, terms=terms, vjps=vj)
    return run.result()


def _dpmpp_sde(ns, model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.,
               s_noise=1., noise_sampler=None, r=1 / 2, *, seed=None, dist="normal", logp=None,
               probes=None, probe_dist="rademacher", backend=None):
    """DPM-Solver++ (stochastic; k-diffusion's ``sample_dpmpp_sde``): two ancestral
    DPM-Solver++ stages per step, at ``s = t + r h`` and at t'. Its two noises are Brownian
    increments over [sigma_s, sigma] and [sigma', sigma] (the second contains the first); with
    ``seed`` they are drawn with that correlation."""
    if not isinstance(r, (int, float)) or isinstance(r, bool) or not 0 < r:
        raise ValueError(f"r: expected a number > 0, got {r!r}")
    run, sampler = _brownian_run(ns, "sample_dpmpp_sde", model, x, sigmas, extra_args, callback,
                                 eta, s_noise, noise_sampler, seed, dist, logp, probes,
                                 probe_dist, backend)
    tsig = isinstance(run.sigmas, torch.Tensor)
    for i in _steps(run.n, disable):
        step = run.sde_begin(i)
        if step is None:
            continue
        sig, nxt, den, w = step
        t, tn = -math.log(sig), -math.log(nxt)
        h = tn - t
        s = t + h * r
        fac = 1 / (2 * r)
        ss = math.exp(-s)
        sd, su = get_ancestral_step(sig, ss, eta)
        sd2, su2 = get_ancestral_step(sig, nxt, eta)
        if sampler is not None:
            if tsig:  # the tree's query points computed as k-diffusion computes them
                tt = run.sigmas[i].log().neg()
                st = tt + (run.sigmas[i + 1].log().neg() - tt) * r
                a1, b1, b2 = tt.neg().exp(), st.neg().exp(), run.sigmas[i + 1].log().neg().neg().exp()
            else:
                a1, b1, b2 = math.exp(-t), ss, math.exp(-tn)
            z1 = sampler(a1, b1)
        else:
            # W over [sigma_s, sigma] and [sigma', sigma_s]: n2 = (sqrt(d1) n1 + sqrt(d2) n')/sqrt(d1+d2)
            z1 = run.draw()
        x2 = run.step(i, [den], sd / sig, (1 - sd / sig,), az=s_noise * su, z=z1,
                      into=run.scratch())
        den2, _ = run.denoise(x2, ss)
        if sampler is not None:
            z2 = sampler(a1, b2)
        else:
            d1, d2 = abs(sig - ss), abs(ss - nxt)
            z2 = torch.add(z1 * math.sqrt(d1 / (d1 + d2)), run.draw(), alpha=math.sqrt(d2 / (d1 + d2)))
        G = s_noise * su2
        e = 1 - sd2 / sig
        terms = run.sde_terms(2, sig, sig * sig * e, G, sig * sig - nxt * nxt)
        run.step(i, [den, den2], sd2 / sig, (e * (1 - fac), e * fac), az=G, z=z2, terms=terms,
                 vjps=None if w is None else [w, w])
    return run.result()


def _dpmpp_2m_sde(ns, model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.,
                  s_noise=1., noise_sampler=None, solver_type='midpoint', *, seed=None,
                  dist="normal", logp=None, probes=None, probe_dist="rademacher", backend=None):
    """DPM-Solver++(2M) SDE (k-diffusion's ``sample_dpmpp_2m_sde``), ``solver_type`` 'midpoint'
    or 'heun'; the final step to sigma = 0 returns the denoised x."""
    if solver_type not in {'heun', 'midpoint'}:
        raise ValueError('solver_type must be \'heun\' or \'midpoint\'')
    run, sampler = _brownian_run(ns, "sample_dpmpp_2m_sde", model, x, sigmas, extra_args, callback,
                                 eta, s_noise, noise_sampler, seed, dist, logp, probes,
                                 probe_dist, backend)

    def update(sig, nxt, h, den, hist):
        eh = eta * h
        e = -math.expm1(-h - eh)
        models, am = [den], [e]
        if hist:
            (h_last, old), = hist
            c = ((e / (-h - eh) + 1) if solver_type == 'heun' else 0.5 * e) / (h_last / h)
            models, am = [den, old], [e + c, -c]
        G = nxt * math.sqrt(-math.expm1(-2 * eh)) * s_noise if eta else 0.0
        return models, nxt / sig * math.exp(-eh), am, e, G
    _multistep_sde(run, sampler, disable, eta, 1, update)
    return run.result()


def _dpmpp_3m_sde(ns, model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.,
                  s_noise=1., noise_sampler=None, *, seed=None, dist="normal", logp=None,
                  probes=None, probe_dist="rademacher", backend=None):
    """DPM-Solver++(3M) SDE (k-diffusion's ``sample_dpmpp_3m_sde``); the final step to sigma = 0
    returns the denoised x."""
    run, sampler = _brownian_run(ns, "sample_dpmpp_3m_sde", model, x, sigmas, extra_args, callback,
                                 eta, s_noise, noise_sampler, seed, dist, logp, probes,
                                 probe_dist, backend)

    def update(sig, nxt, h, den, hist):
        he = h * (eta + 1)
        e = -math.expm1(-he)
        phi2 = math.expm1(-he) / he + 1
        if len(hist) == 2:
            (h_1, d_1), (h_2, d_2) = hist
            r0, r1 = h_1 / h, h_2 / h
            phi3 = phi2 / he - 0.5
            alpha = phi2 * (1 + r0 / (r0 + r1)) - phi3 / (r0 + r1)
            beta = -phi2 * r0 / (r0 + r1) + phi3 / (r0 + r1)
            models = [den, d_1, d_2]
            am = [e + alpha / r0, -alpha / r0 + beta / r1, -beta / r1]
        elif hist:
            (h_1, d_1), = hist
            rr = h_1 / h
            models, am = [den, d_1], [e + phi2 / rr, -phi2 / rr]
        else:
            models, am = [den], [e]
        G = nxt * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise if eta else 0.0
        return models, math.exp(-he), am, e, G
    _multistep_sde(run, sampler, disable, eta, 2, update)
    return run.result()


_CORES = {"sample_euler": _euler, "sample_euler_ancestral": _euler_ancestral,
          "sample_heun": _heun, "sample_dpm_2": _dpm_2, "sample_dpm_2_ancestral": _dpm_2_ancestral,
          "sample_lms": _lms, "sample_dpmpp_2s_ancestral": _dpmpp_2s_ancestral,
          "sample_dpmpp_sde": _dpmpp_sde, "sample_dpmpp_2m": _dpmpp_2m,
          "sample_dpmpp_2m_sde": _dpmpp_2m_sde, "sample_dpmpp_3m_sde": _dpmpp_3m_sde}

sample_euler = _public(_euler, "sample_euler")
sample_euler_ancestral = _public(_euler_ancestral, "sample_euler_ancestral")
sample_heun = _public(_heun, "sample_heun")
sample_dpm_2 = _public(_dpm_2, "sample_dpm_2")
sample_dpm_2_ancestral = _public(_dpm_2_ancestral, "sample_dpm_2_ancestral")
sample_lms = _public(_lms, "sample_lms")
sample_dpmpp_2s_ancestral = _public(_dpmpp_2s_ancestral, "sample_dpmpp_2s_ancestral")
sample_dpmpp_sde = _public(_dpmpp_sde, "sample_dpmpp_sde")
sample_dpmpp_2m = _public(_dpmpp_2m, "sample_dpmpp_2m")
sample_dpmpp_2m_sde = _public(_dpmpp_2m_sde, "sample_dpmpp_2m_sde")
sample_dpmpp_3m_sde = _public(_dpmpp_3m_sde, "sample_dpmpp_3m_sde")

# name -> (the public sampler, its core taking the module to draw noise through first)
K_SAMPLERS = {name: (globals()[name], core) for name, core in _CORES.items()}
