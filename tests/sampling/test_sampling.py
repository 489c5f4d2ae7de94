"""Samplers and log-likelihood (docs/math.md Sections 3 and 4): every backend against a plain PyTorch
loop of the same sampler, and statistical tests against the exact answers of oracle models."""
import math

import pytest
import torch

import diffaccel
import diffaccel.sampling as S
import diffaccel.schedules as sch
from support import assert_close, backend_params
from diffaccel.layout import DISTS
from diffaccel.models import CurieWeiss, GaussianMixture

BACKENDS = [pytest.param("reference", "cpu", id="reference-cpu")] + backend_params("sample_step")
RUNNABLE = ["reference"] + [p.values[0] for p in backend_params("sample_step") if not p.marks and p.values[1] == "cpu"]


def _gm(rng, shape, K=3, scale=2.0):
    D = math.prod(shape)
    means = torch.randn(K, *shape, generator=rng, dtype=torch.float64) * scale / math.sqrt(max(1, D / 16))
    return GaussianMixture(means, torch.rand(K, generator=rng) + 0.5, torch.rand(K, generator=rng) * 0.5 + 0.3)


def _ref_noise(shape, seed, offset, dist="normal"):
    return diffaccel.noise(shape, seed=seed, offset=offset, dist=dist, backend="reference")


def _ref_probes(x, P, seed, i, stride, dist="rademacher"):
    v = _ref_noise((x.shape[0], P, *x.shape[1:]), seed, S.PROBE_BASE + i * P * stride, dist)
    return v.transpose(0, 1)


def _den_vjps(model, x, sigma, probes):
    xr = x.detach().double().requires_grad_(True)
    with torch.enable_grad():
        den = model(xr, torch.full((x.shape[0],), float(sigma), dtype=torch.float64))
        ws = [torch.autograd.grad(den, xr, v.double(), retain_graph=True)[0] for v in probes]
    return den.detach(), torch.stack(ws)


def _div(probes, ws):
    B = probes.shape[1]
    return (probes.double().reshape(len(probes), B, -1) * ws.reshape(len(probes), B, -1)).sum(-1).mean(0)


# --------------------------------------------------------------------- plain PyTorch loops

def plain_ode(model, x, sigmas, *, P, seed, mode, switch=None):
    """Euler / Heun / high-density steps on the PF-ODE with Hutchinson log-density, in float64."""
    B, D = x.shape[0], x[0].numel()
    stride = D if isinstance(seed, torch.Tensor) else B * D
    x = x.double()
    sig0 = float(sigmas[0])
    logp = -0.5 * (x.flatten(1) ** 2).sum(1) / sig0 ** 2 - D * math.log(sig0) - 0.5 * D * math.log(2 * math.pi)
    for i in range(len(sigmas) - 1):
        s, sn = float(sigmas[i]), float(sigmas[i + 1])
        v = _ref_probes(x, P, seed, i, stride)
        den, w = _den_vjps(model, x, s, v)
        h = sn - s
        d = (x - den) / s
        if mode == "heun" and sn > 0:
            x2 = x + h * d
            den2, w2 = _den_vjps(model, x2, sn, v)
            d2 = (x2 - den2) / sn
            logp = logp + h / 2 * ((_div(v, w) - D) / s + (_div(v, w2) - D) / sn)
            x = x + h * (d + d2) / 2
        elif mode == "hd" and s <= switch and sn > 0:
            score = (den - x) / s ** 2
            logp = logp + h * (_div(v, w) - D) / s - h * s * (score.flatten(1) ** 2).sum(1)
            x = x + 2 * h * d
        else:
            logp = logp + h * (_div(v, w) - D) / s
            x = x + h * d
    return x, logp


def plain_em(model, x, sigmas, *, seed, dist, logp0):
    B, D = x.shape[0], x[0].numel()
    stride = D if isinstance(seed, torch.Tensor) else B * D
    x, logp = x.double(), logp0.clone()
    for i in range(len(sigmas) - 1):
        s, sn = float(sigmas[i]), float(sigmas[i + 1])
        den = model(x, torch.full((B,), s, dtype=torch.float64))
        score = (den - x) / s ** 2
        q = s ** 2 - sn ** 2
        z = _ref_noise(x.shape, seed, i * stride, dist).double()
        logp = logp + q / 2 * (score.flatten(1) ** 2).sum(1) + math.sqrt(q) * (score * z).flatten(1).sum(1)
        x = x + q * score + math.sqrt(q) * z
    return x, logp


def _sde_case(rng, shape, *, B, n):
    """A mixture, n Karras levels from 10 down to 0.2, B starting points of norm ~10 per
    coordinate with their exact log p_10, and a seed."""
    gm = _gm(rng, shape)
    sigmas = sch.karras_sigmas(n, 0.2, 10.0, append_zero=False)
    x0 = torch.randn(B, *shape, generator=rng) * 10
    seed = int(torch.randint(0, 2 ** 40, (), generator=rng))
    return gm, sigmas, x0, seed, gm.log_prob(x0, 10.0)


def plain_ddim(model, x, sigmas, *, eta, P, seed, logp0):
    """DDIM with eta > 0 in EDM form (k-diffusion's ancestral step) with the log-density of
    the eta-family identity (see sample_ddim), in float64."""
    B, D = x.shape[0], x[0].numel()
    x, logp = x.double(), logp0.clone()
    for i in range(len(sigmas) - 1):
        s, sn = float(sigmas[i]), float(sigmas[i + 1])
        up = min(sn, eta * math.sqrt(max(0.0, sn ** 2 * (s ** 2 - sn ** 2) / s ** 2)))
        down = math.sqrt(max(0.0, sn ** 2 - up ** 2))
        v = _ref_probes(x, P, seed, i, B * D)
        den, w = _den_vjps(model, x, s, v)
        score = (den - x) / s ** 2
        z = _ref_noise(x.shape, seed, i * B * D).double()
        div_s = (_div(v, w) - D) / s ** 2
        logp = (logp + up ** 2 / 2 * (score.flatten(1) ** 2).sum(1) + up * (score * z).flatten(1).sum(1)
                - (s * (s - down) - up ** 2) * div_s)
        x = x + (down - s) * (x - den) / s + up * z
    return x, logp


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_eta_logp_matches_plain_loop(backend, device, eta, rng):
    gm, sigmas, x0, seed, l0 = _sde_case(rng, (4, 5), B=3, n=6)
    x, lp = S.sample_ddim(gm, x0.to(device), sigmas, eta=eta, seed=seed, logp=l0.to(device), probes=2,
                          disable=True, backend=backend)
    xw, lw = plain_ddim(gm, x0, sigmas, eta=eta, P=2, seed=seed, logp0=l0)
    _close_paths(x, xw, "x")
    assert_close(lp, lw, atol=1e-3 * (float(lw.abs().max()) + 1), rtol=1e-4, what="logp")


def test_ddim_eta_logp_tracks_exact(rng):
    """DDIM with eta = 0.5 from exact samples of p_40: the tracked logp against the exact
    log p_{sigma_min} of the same samples; the mean error shrinks as the steps grow."""
    gm = _gm(rng, (16,), K=3)
    B = 256
    x0 = gm.sample(B, generator=rng) + 40 * torch.randn(B, 16, generator=rng)
    l0 = gm.log_prob(x0, 40.0)
    errs = []
    for n in (25, 100, 400):
        sig = sch.karras_sigmas(n + 1, 0.3, 40.0, append_zero=False)
        x, lp = S.sample_ddim(gm, x0, sig, eta=0.5, seed=7, logp=l0, probes=4, disable=True)
        exact = gm.log_prob(x, 0.3)
        e = lp - exact
        errs.append(float(e.abs().mean()))
        corr = float(torch.corrcoef(torch.stack([lp, exact]))[0, 1])
    assert errs[2] < errs[1] < errs[0], errs
    assert corr > 0.95, corr


def _close_paths(got, want, what):
    # float32 state vs a float64 loop over a few steps: a few float32 ulps of the path's scale
    scale = float(want.abs().max()) + 1
    assert_close(got, want, atol=2e-5 * scale, rtol=2e-5, what=what)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("mode", ["euler", "heun", "hd"])
def test_ode_samplers_match_plain_loop(backend, device, mode, rng):
    gm = _gm(rng, (2, 3, 5))
    B = 5
    sigmas = sch.karras_sigmas(6, 0.1, 10.0)
    x0 = torch.randn(B, 2, 3, 5, generator=rng) * 10
    seed = torch.randint(0, 2 ** 40, (B,), generator=rng)
    kw = dict(logp=True, probes=2, seed=seed.to(device), disable=True, backend=backend)
    if mode == "euler":
        x, lp = S.sample_euler(gm, x0.to(device), sigmas, **kw)
    elif mode == "heun":
        x, lp = S.sample_heun(gm, x0.to(device), sigmas, **kw)
    else:
        x, lp = S.sample_hd(gm, x0.to(device), sigmas, sigma_switch=1.0, **kw)
    xw, lw = plain_ode(gm, x0, sigmas, P=2, seed=seed, mode=mode, switch=1.0)
    _close_paths(x, xw, "x")
    assert_close(lp, lw, atol=1e-3 * (float(lw.abs().max()) + 1), rtol=1e-4, what="logp")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dist", ["normal", "laplace"])
def test_euler_maruyama_matches_plain_loop(backend, device, dist, rng):
    gm, sigmas, x0, seed, l0 = _sde_case(rng, (3, 7), B=4, n=7)
    x, lp = S.sample_euler_maruyama(gm, x0.to(device), sigmas, seed=seed, dist=dist, logp=l0.to(device),
                                    disable=True, backend=backend)
    xw, lw = plain_em(gm, x0, sigmas, seed=seed, dist=dist, logp0=l0)
    _close_paths(x, xw, "x")
    assert_close(lp, lw, atol=1e-3 * (float(lw.abs().max()) + 1), rtol=1e-4, what="logp")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_ddim_matches_the_diffusers_step(backend, device, rng):
    """sample_ddim through VPEpsDenoiser == docs/math.md Section 3.6 written in VP space with the same z."""
    gm = _gm(rng, (2, 9))
    B, eta = 3, 0.7
    abar = sch.ddpm_abar()
    ts = [999, 749, 499, 249, 0]

    def eps_model(x_vp, t):
        a = abar[t.round().long().cpu()].to(dtype=x_vp.dtype, device=x_vp.device).sqrt()
        return gm.eps(x_vp, a, (1 - a ** 2).sqrt())

    den = S.VPEpsDenoiser(eps_model, abar)
    sigmas = den.sigmas_for(ts)
    x_vp0 = torch.randn(B, 2, 9, generator=rng)
    seed = torch.randint(0, 2 ** 40, (B,), generator=rng)
    x = S.sample_ddim(den, (x_vp0 / abar[ts[0]].sqrt().float()).to(device), sigmas, eta=eta,
                      seed=seed.to(device), disable=True, backend=backend)
    # plain diffusers DDIM in VP space (final step to abar_prev = 1)
    xv = x_vp0.double()
    D = xv[0].numel()
    for i, t in enumerate(ts):
        at = abar[t]
        ap = abar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
        e = eps_model(xv, torch.full((B,), float(t), dtype=torch.float64))
        st = eta * torch.sqrt((1 - ap) / (1 - at)) * torch.sqrt(1 - at / ap)
        x0h = (xv - torch.sqrt(1 - at) * e) / torch.sqrt(at)
        z = _ref_noise((B, 2, 9), seed, i * D).double()
        xv = torch.sqrt(ap) * x0h + torch.sqrt(torch.clamp(1 - ap - st ** 2, min=0)) * e + st * z
    _close_paths(x, xv, "x (DDIM)")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_interpolant_sampler_matches_plain_loop(backend, device, rng):
    gm = GaussianMixture.two_modes(40)
    taus = sch.interpolant_tau(torch.linspace(0, 1, 9), 40, k=3.0, kind="vp")
    x0 = torch.randn(6, 40, generator=rng)
    x = S.sample_interpolant(gm, x0.to(device), taus, kind="vp", disable=True, backend=backend)
    xw = x0.double()
    for i in range(len(taus) - 1):
        tau, dt = float(taus[i]), float(taus[i + 1] - taus[i])
        e = gm.posterior_mean(xw, tau, math.sqrt(1 - tau ** 2))
        rate = -tau / (1 - tau ** 2)
        xw = xw + dt * (rate * (xw - tau * e) + e)
    _close_paths(x, xw, "x (interpolant)")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_log_likelihood_euler_matches_plain_loop(backend, device, rng):
    gm = _gm(rng, (5, 3))
    B, P, N = 4, 2, 5
    x = gm.sample(B, generator=rng)
    seed = int(torch.randint(0, 2 ** 40, (), generator=rng))
    lp, info = S.log_likelihood(gm, x.to(device), 0.05, 20.0, steps=N, solver="euler", probes=P,
                                seed=seed, backend=backend)
    D = 15
    xw, delta, var = x.double(), torch.zeros(B, dtype=torch.float64), torch.zeros(B, dtype=torch.float64)
    t0, h = math.log(0.05), (math.log(20.0) - math.log(0.05)) / N
    for i in range(N):
        v = _ref_probes(x, P, seed, i, B * D)
        den, w = _den_vjps(gm, xw, math.exp(t0 + i * h), v)
        tp = h * (v.double().reshape(P, B, -1) * w.reshape(P, B, -1)).sum(-1)  # (P, B)
        delta = delta + tp.mean(0) - h * D
        var = var + tp.var(0) / P
        xw = xw + h * (xw - den)
    want = S.prior_logp(xw, 20.0) - delta
    assert info["nfe"] == N
    _close_paths(info["x_T"], xw, "x_T")
    assert_close(lp, want, atol=1e-3 * (float(want.abs().max()) + 1), rtol=1e-4, what="logp")
    assert_close(info["stderr"], var.sqrt(), atol=1e-3, rtol=1e-3, what="stderr")


# ------------------------------------------------------------------ against exact answers

@pytest.mark.parametrize("d,N,B", [(2, 24, 32), (16, 24, 16), (3072, 32, 6)])
def test_log_likelihood_matches_exact_log_p(d, N, B, rng):
    """RK4 in t = log sigma has global error O(h^4): the Richardson estimate (lp_N - lp_2N)/15
    bounds the error of lp_2N from the step count alone (without the answer); the tolerance is
    that plus 7 standard errors of the Hutchinson noise of both runs. Why 7: each step's
    variance comes from 8 probes (7 degrees of freedom) and a few steps near the modes' split
    carry most of it, so the error over its standard error is about Student-t_7 (1e-4 two-sided
    quantile 7.0), not normal; measured at d = 3072 over 180 samples, the ratio's sd is 1.24
    and its largest value 5.7 (with 4 probes and 5 standard errors the test failed 1 in 40)."""
    gm = _gm(rng, (d,), K=4)
    x = gm.sample(B, generator=rng)
    exact = gm.log_prob(x, 0.01)
    prior = lambda xt: gm.log_prob(xt, 80.0)  # noqa: E731  (isolates the ODE's error)
    seed = int(torch.randint(0, 2 ** 40, (), generator=rng))
    l1, i1 = S.log_likelihood(gm, x, 0.01, 80.0, steps=N, solver="rk4", probes=8, seed=seed, prior=prior)
    l2, i2 = S.log_likelihood(gm, x, 0.01, 80.0, steps=2 * N, solver="rk4", probes=8, seed=seed + 1, prior=prior)
    assert i2["nfe"] == 4 * 2 * N
    richardson = (l1 - l2).abs().mean() / 15
    noise = 7 * torch.sqrt(i2["stderr"] ** 2 + (i1["stderr"] ** 2 + i2["stderr"] ** 2) / 15 ** 2)
    err = (l2 - exact).abs()
    tol = richardson + noise + 0.02
    assert bool((err <= tol).all()), f"d={d}: errors {err.tolist()} exceed {tol.tolist()}"
    # the default prior is N(0, sigma_max^2 I): logp + the prior's error == the exact-prior result
    l3, i3 = S.log_likelihood(gm, x, 0.01, 80.0, steps=N, solver="rk4", probes=8, seed=seed)
    assert_close(l3 - S.prior_logp(i3["x_T"], 80.0) + gm.log_prob(i3["x_T"], 80.0), l1, atol=1e-6,
                 what="logp with the default prior")


def test_log_likelihood_standard_error_covers_hutchinson_noise(rng):
    """Two independent runs differ by N(0, se_a^2 + se_b^2): the reported standard errors are
    neither too small nor too large (the std of the z-scores over 96 samples is about 1)."""
    gm = _gm(rng, (16,), K=4)
    x = gm.sample(96, generator=rng)
    runs = [S.log_likelihood(gm, x, 0.01, 80.0, steps=12, solver="heun", probes=3, seed=s) for s in (1, 2)]
    z = (runs[0][0] - runs[1][0]) / torch.sqrt(runs[0][1]["stderr"] ** 2 + runs[1][1]["stderr"] ** 2)
    assert 0.7 < float(z.std()) < 1.45, f"z-score std {float(z.std()):.3f}"
    # with one probe the fixed-step solvers report no standard error
    lp, info = S.log_likelihood(gm, x[:2], 0.01, 80.0, steps=2, solver="euler", probes=1, seed=1)
    assert bool(torch.isnan(info["stderr"]).all())


def plain_dopri5(model, x, b, sigmas, probe_steps, *, P, seed, atol, rtol):
    """Dormand-Prince 5(4) steps on (x, Delta) of sample b of the batch x in float64, written
    plainly, along the given accepted levels: step n uses the batch's probes at stream index
    probe_steps[n] (the FSAL stage takes the next step's), and each step's error norm
    max(RMS over x, |error of Delta|)."""
    from diffaccel.sampling.likelihood import _DP_A, _DP_B, _DP_B4, _DP_C
    B, D = x.shape[0], x[0].numel()
    rms = lambda t: float(torch.sqrt((t ** 2).mean()))  # noqa: E731

    def f(xx, t, v):
        den, w = _den_vjps(model, xx, math.exp(t), v)
        return xx - den, _div(v, w) - D

    ts = sigmas.log().tolist()
    xw, delta, errors = x[b:b + 1].double(), torch.zeros(1, dtype=torch.float64), []
    for n in range(len(ts) - 1):
        t, h = ts[n], ts[n + 1] - ts[n]
        v = _ref_probes(x, P, seed, probe_steps[n], B * D)[:, b:b + 1]
        ks, ds = [], []
        for j in range(7):
            xj = xw + h * sum(a * k for a, k in zip(_DP_A[j], ks))
            dj = delta + h * sum(a * dd for a, dd in zip(_DP_A[j], ds))
            kj, djv = f(xj, t + _DP_C[j] * h, v)
            ks.append(kj)
            ds.append(djv)
        e = [bb - b4 for bb, b4 in zip(_DP_B, _DP_B4)]
        ex, ed = h * sum(a * k for a, k in zip(e, ks)), h * sum(a * dd for a, dd in zip(e, ds))
        errors.append(max(rms(ex / (atol + rtol * torch.maximum(xw.abs(), xj.abs()))),
                          rms(ed / (atol + rtol * torch.maximum(delta.abs(), dj.abs())))))
        xw, delta = xj, dj  # the 7th stage point is the 5th-order solution
    return S.prior_logp(xw, sigmas[-1]) - delta, xw, errors


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_log_likelihood_dopri5_matches_plain_loop(backend, device, rng):
    """Along each sample's accepted levels, a plain float64 Dormand-Prince loop with the same
    probes gives the same x_T, log p and error norms. (The levels themselves depend on error
    norms that float32 rounding sets when they are tiny, so they are taken from the run.)"""
    gm = _gm(rng, (5, 3))
    B, P = 4, 2
    x = gm.sample(B, generator=rng)
    seed = int(torch.randint(0, 2 ** 40, (), generator=rng))
    lp, info = S.log_likelihood(gm, x.to(device), 0.05, 20.0, solver="dopri5", probes=P,
                                seed=seed, atol=1e-3, rtol=1e-3, backend=backend)
    assert tuple(info["steps"].shape) == (B,)
    assert info["nfe"] >= 6 * int(info["steps"].max()) + 2
    n_big = 0
    for b in range(B):
        sig, steps = info["sigmas"][b], int(info["steps"][b])
        assert sig.numel() == steps + 1 and steps >= 3
        assert_close(sig[[0, -1]], torch.tensor([0.05, 20.0], dtype=torch.float64), atol=0,
                     rtol=1e-12, what=f"ends of sample {b}")
        # step n's probes were drawn by the attempt before its first attempt
        probe_steps = [0] + (info["attempts"][b][:-1] + 1).tolist()
        want, xw, errors = plain_dopri5(gm, x, b, sig, probe_steps, P=P, seed=seed, atol=1e-3,
                                        rtol=1e-3)
        _close_paths(info["x_T"][b:b + 1], xw, f"x_T of sample {b}")
        assert_close(lp[b:b + 1], want, atol=1e-3 * (float(want.abs().max()) + 1), rtol=1e-4,
                     what=f"logp of sample {b}")
        got = info["errors"][b]
        assert bool((got <= 1.0).all())
        # error norms above float32 rounding (1e-3 of the tolerance) agree to 1%
        ref = torch.tensor(errors, dtype=torch.float64)
        big = ref > 1e-3
        n_big += int(big.sum())
        assert_close(got[big], ref[big], atol=0, rtol=1e-2, what=f"error norms of sample {b}")
    assert n_big >= 2 * B


def test_log_likelihood_dopri5(rng):
    gm = _gm(rng, (16,), K=4)
    x = gm.sample(12, generator=rng)
    exact = gm.log_prob(x, 0.01)
    lp, info = S.log_likelihood(gm, x, 0.01, 80.0, solver="dopri5", probes=8, seed=5, atol=1e-5,
                                rtol=1e-5, prior=lambda xt: gm.log_prob(xt, 80.0))
    assert info["nfe"] > 20 and bool((info["steps"] > 3).all())
    err = (lp - exact).abs()
    # fresh probes per step: the estimate is a sum of independent per-step estimates, about
    # normal, with a standard error from 7 degrees of freedom per step; 6 of them bound it
    # (the solver's own error at rtol 1e-5 is far below 0.05)
    assert bool((err <= 6.0 * info["stderr"] + 0.05).all()), (err.tolist(), info["stderr"].tolist())
    # looser tolerances take fewer evaluations
    _, loose = S.log_likelihood(gm, x, 0.01, 80.0, solver="dopri5", probes=2, seed=5, atol=1e-2, rtol=1e-2)
    assert loose["nfe"] < info["nfe"]


def test_log_likelihood_dopri5_initial_step_stays_in_range():
    """A draw (found by the random test above) where the initial-step formula's h0 was ~1e3 in
    log sigma, so e^(t0 + h0) overflowed: the trial step is now cut to the interval."""
    rng = torch.Generator().manual_seed(2027755297)
    gm = _gm(rng, (16,), K=4)
    x = gm.sample(12, generator=rng)
    lp, info = S.log_likelihood(gm, x, 0.01, 80.0, solver="dopri5", probes=2, seed=5)
    assert bool(torch.isfinite(lp).all()) and bool((info["steps"] >= 3).all())


def test_bits_per_dim():
    lp = torch.tensor([-100.0, 0.0], dtype=torch.float64)
    bpd = S.bits_per_dim(lp, 50)
    assert_close(bpd, torch.tensor([100 / (50 * math.log(2)), 0.0], dtype=torch.float64), atol=1e-12, what="bpd")
    assert_close(S.bits_per_dim(lp, 50, pixel_scale=127.5), bpd + math.log2(127.5), atol=1e-12, what="bpd")


def test_euler_maruyama_zero_overhead_logp_tracks_exact(rng):
    """Final logp vs the exact log p_{sigma_min} of the same samples: correlation near 1 and the
    mean error shrinking as the steps grow."""
    gm = _gm(rng, (16,), K=3)
    B = 256
    x0 = torch.randn(B, 16, generator=rng) * 40
    l0 = gm.log_prob(x0, 40.0)
    errs = []
    for n in (20, 80, 320):
        x, lp = S.sample_euler_maruyama(gm, x0, sch.karras_sigmas(n, 0.05, 40.0, append_zero=False),
                                        seed=7, logp=l0, disable=True)
        exact = gm.log_prob(x, 0.05)
        errs.append(float((lp - exact).mean().abs()))
        corr = float(torch.corrcoef(torch.stack([lp, exact]))[0, 1])
    assert errs[0] > errs[1] > errs[2], errs
    assert errs[2] < 0.2 * errs[0], errs
    # at 320 steps the correlation depends on the drawn mixture: lowest 0.89 over 61 of them
    assert corr > 0.85, corr


def test_high_density_sampler_has_higher_log_p(rng):
    gm = _gm(rng, (16,), K=3)
    x0 = torch.randn(256, 16, generator=rng) * 40
    sigmas = sch.karras_sigmas(40, 0.02, 40.0)
    xo = S.sample_euler(gm, x0, sigmas, disable=True)
    xh = S.sample_hd(gm, x0, sigmas, lambda_thr=0.0, disable=True)
    lo, lh = gm.log_prob(xo).mean(), gm.log_prob(xh).mean()
    assert float(lh) > float(lo) + 1.0, (float(lh), float(lo))
    # the log-density it reports converges to the exact one at first order (Euler steps)
    errs = []
    for n in (40, 160):
        xs, lps = S.sample_hd(gm, x0[:8], sch.karras_sigmas(n, 0.02, 40.0, append_zero=False),
                              sigma_switch=1.0, logp=gm.log_prob(x0[:8], 40.0), probes=2, seed=1,
                              disable=True)
        errs.append(float((lps - gm.log_prob(xs, 0.02)).abs().mean()))
    assert errs[1] < 0.4 * errs[0], errs


@pytest.mark.parametrize("backend", RUNNABLE)
def test_high_density_after_sde_matches_plain_loop(backend, rng):
    """first="sde": Euler-Maruyama steps (zero-overhead logp) above the switch, HD ODE below."""
    gm = _gm(rng, (9,))
    B = 4
    sigmas = sch.karras_sigmas(8, 0.1, 10.0, append_zero=False)
    x0 = torch.randn(B, 9, generator=rng) * 10
    seed = int(torch.randint(0, 2 ** 40, (), generator=rng))
    x, lp = S.sample_hd(gm, x0, sigmas, sigma_switch=1.0, first="sde", dist="uniform", logp=True,
                        probes=2, seed=seed, disable=True, backend=backend)
    xw, D = x0.double(), 9
    lw = S.prior_logp(x0, 10.0)
    for i in range(len(sigmas) - 1):
        s, sn = float(sigmas[i]), float(sigmas[i + 1])
        v = _ref_probes(xw, 2, seed, i, B * D)
        den, w = _den_vjps(gm, xw, s, v)
        score = (den - xw) / s ** 2
        if s > 1.0:
            q = s ** 2 - sn ** 2
            z = _ref_noise(xw.shape, seed, i * B * D, "uniform").double()
            lw = lw + q / 2 * (score ** 2).sum(1) + math.sqrt(q) * (score * z).sum(1)
            xw = xw + q * score + math.sqrt(q) * z
        else:
            h = sn - s
            lw = lw + h * (_div(v, w) - D) / s - h * s * (score ** 2).sum(1)
            xw = xw + 2 * h * (xw - den) / s
    _close_paths(x, xw, "x")
    assert_close(lp, lw, atol=1e-3 * (float(lw.abs().max()) + 1), rtol=1e-4, what="logp")


def test_gm_vp_reproduction_target(rng):
    """The mixture's reproduction target (knee schedules: docs/math.md Section 4): d = 3000,
    p = 0.8, k = 5 on the paper's VP schedule: the fraction in the + mode is about 0.8 with 200
    Euler steps and each mode's spread about c = 0.1. With 15 steps the knee schedule stays near
    it and the constant-speed one does not.

    At 15 steps the knee's Euler bias is about +0.05 (measured 0.84-0.87 over seeds), so its bound
    is that plus 4 standard errors (0.142); the constant schedule gives 0.98-0.99 there, a miss of
    more than 0.15 that its binomial noise (sd 0.007) cannot close. (At 30 steps the two are
    0.83-0.85 and 0.87-0.93: too close for a bound that does not fail on some seeds.)"""
    d, n = 3000, 300
    gm = GaussianMixture.two_modes(d, p=0.8, m=0.9, c=0.1)
    se = math.sqrt(0.8 * 0.2 / n)
    x = S.sample_interpolant(gm, torch.randn(n, d, generator=rng),
                             sch.interpolant_tau(torch.linspace(0, 1, 201), d, 5.0), disable=True)
    plus = x.mean(1) > 0
    assert abs(float(plus.float().mean()) - 0.8) < 4 * se
    for sel, centre in ((plus, 0.9), (~plus, -0.9)):
        spread = float((x[sel] - x[sel].mean(1, keepdim=True)).std())
        assert 0.08 < spread < 0.13, spread
        assert abs(float(x[sel].mean()) - centre) < 0.03
    fr = {}
    for k in (5.0, None):
        x = S.sample_interpolant(gm, torch.randn(n, d, generator=rng),
                                 sch.interpolant_tau(torch.linspace(0, 1, 16), d, k), disable=True)
        fr[k] = float((x.mean(1) > 0).float().mean())
    assert abs(fr[5.0] - 0.8) < 0.05 + 4 * se, fr
    assert fr[None] - 0.8 > 0.15, fr


def test_curie_weiss_reproduction_target(rng):
    """CW-VP, beta = 2, p = 0.8, 50 Euler steps: the positive-magnetization fraction is about
    W_+ = 0.790 with the knee schedule at d = 5*10^4 (float32 posterior), and the
    constant-speed schedule misses it (its miss grows with d)."""
    cw = CurieWeiss(50000, 2.0, 0.8, compute_dtype=torch.float32)
    assert abs(cw.w_plus - 0.790) < 1e-3
    n = 120  # 4 standard errors = 0.15; the constant schedule gives about 0.99 at this d
    se = math.sqrt(cw.w_plus * (1 - cw.w_plus) / n)
    fr = {}
    for k in (5.0, None):
        x = S.sample_interpolant(cw, torch.randn(n, cw.d, generator=rng),
                                 sch.interpolant_tau(torch.linspace(0, 1, 51), cw.d, k), disable=True)
        fr[k] = float((x.mean(1) > 0).float().mean())
        if k:
            assert abs(float(x.mean(1).abs().mean()) - cw.m) < 0.05
    assert abs(fr[5.0] - cw.w_plus) < 4 * se, fr
    assert abs(fr[None] - cw.w_plus) > 4 * se, fr


def test_non_normal_increments_give_the_same_mixture(rng):
    """Invariance principle (docs/math.md Section 3.4): with many steps every increment law samples the same
    mixture (mode weights within 4 standard errors, spreads within 10%)."""
    means = torch.tensor([[2.0, 2.0, 0.0], [-2.0, 0.0, 1.0]], dtype=torch.float64)
    gm = GaussianMixture(means, [0.7, 0.3], [0.3, 0.5])
    n = 4000
    x0 = torch.randn(n, 3, generator=rng) * 20
    sigmas = sch.karras_sigmas(150, 0.002, 20.0)
    se = math.sqrt(0.7 * 0.3 / n)
    for dist in DISTS:
        x = S.sample_euler_maruyama(gm, x0, sigmas, seed=11, dist=dist, disable=True)
        r = gm.responsibilities(x)
        k = r.argmax(1)
        w = float((k == 0).double().mean())
        assert abs(w - 0.7) < 4 * se, (dist, w)
        for j, c in enumerate((0.3, 0.5)):
            spread = float((x[k == j].double() - means[j]).pow(2).mean().sqrt())
            assert abs(spread - c) < 0.1 * c, (dist, j, spread)


@pytest.mark.parametrize("backend", RUNNABLE)
def test_per_sample_seeds_make_samples_batch_independent(backend, rng):
    gm = _gm(rng, (12,))
    x0 = torch.randn(5, 12, generator=rng) * 10
    seeds = torch.randint(0, 2 ** 40, (5,), generator=rng)
    sig = sch.karras_sigmas(5, 0.1, 10.0, append_zero=False)
    xa, la = S.sample_euler_maruyama(gm, x0, sig, seed=seeds, logp=True, disable=True, backend=backend)
    xb, lb = S.sample_euler_maruyama(gm, x0[2:4], sig, seed=seeds[2:4], logp=True, disable=True, backend=backend)
    assert_close(xb, xa[2:4], atol=1e-5, rtol=1e-5, what="x (batch independence)")
    assert_close(lb, la[2:4], atol=1e-4, rtol=1e-6, what="logp (batch independence)")


def test_callback_and_progress_bar(rng, capsys):
    gm = _gm(rng, (4,))
    seen = []
    S.sample_heun(gm, torch.randn(2, 4, generator=rng), sch.karras_sigmas(4, 0.1, 5.0),
                  callback=lambda d: seen.append((d["i"], tuple(d["denoised"].shape))), disable=False)
    assert [i for i, _ in seen] == [0, 1, 2, 3] and seen[0][1] == (2, 4)


def test_sampler_arguments_raise_named_errors(rng):
    gm = _gm(rng, (4,))
    x = torch.randn(2, 4, generator=rng)
    sig = sch.karras_sigmas(3, 0.1, 5.0)
    with pytest.raises(ValueError, match="sigmas"):
        S.sample_euler(gm, x, torch.ones(1))
    with pytest.raises(ValueError, match="probes"):
        S.sample_euler(gm, x, sig, logp=True, probes=0)
    with pytest.raises(ValueError, match="sigma_switch"):
        S.sample_hd(gm, x, sig)
    with pytest.raises(ValueError, match="dist"):
        S.sample_euler_maruyama(gm, x, sig, dist="cauchy")
    with pytest.raises(ValueError, match="sigmas"):
        S.sample_euler_maruyama(gm, x, sig, logp=True)
    with pytest.raises(ValueError, match="solver"):
        S.log_likelihood(gm, x, 0.1, 5.0, steps=3, solver="rk45")
    with pytest.raises(ValueError, match="steps"):
        S.log_likelihood(gm, x, 0.1, 5.0, solver="rk4")
    with pytest.raises(ValueError, match="sigma_min"):
        S.log_likelihood(gm, x, 5.0, 0.1, steps=3)
    with pytest.raises(ValueError, match="eta"):
        S.sample_ddim(gm, x, sig, eta=-0.5, logp=True)
    with pytest.raises(ValueError, match="eta"):
        S.sample_ddim(gm, x, sig, eta=float("nan"), logp=True)
    for kw, name in ((dict(atol=-1e-4), "atol"), (dict(rtol=float("inf")), "rtol"),
                     (dict(atol=0.0, rtol=0.0), "atol, rtol"), (dict(max_steps=0), "max_steps")):
        with pytest.raises(ValueError, match=name):
            S.log_likelihood(gm, x, 0.1, 5.0, solver="dopri5", **kw)
