"""sample_lms's logp (diffaccel/sampling/logp_quad.py) against the exact log p_0 of the samples
it returns, on Gaussian mixtures, with the exact divergence (the mixture's closed-form Jacobian
trace in place of the Hutchinson estimate, so that only the discretization is measured): closer
than k-diffusion's own LMS quadrature of the same path, converging at its order; the samples
stay k-diffusion's."""
import math

import pytest
import torch

import diffaccel.sampling as S
import diffaccel.sampling._driver as driver
import diffaccel.sampling.k_samplers as KS
import diffaccel.schedules as sch
from support import kdiffusion_real as R
from support import assert_close
from diffaccel.models import GaussianMixture

SMAX = 80.0


pytestmark = pytest.mark.usefixtures("one_thread")


def div_exact(gm, x, sigma):
    """tr dDn/dx for the mixture's denoiser Dn = sum_k r_k m_k, m_k = mu_k + a_k (x - mu_k),
    a_k = c_k^2 / v_k, v_k = c_k^2 + sigma^2: ``D sum_k r_k a_k + sum_k r_k (m_k - Dn) . (g_k - gbar)``
    with g_k = -(x - mu_k) / v_k the components' scores (dr_k/dx = r_k (g_k - gbar)). (B,), float64."""
    xf = x.double().flatten(1)
    s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(xf.shape[0])[:, None]
    mu, c2 = gm.means.flatten(1), (gm.stds ** 2)[None]
    v = c2 + s ** 2
    r = gm.responsibilities(x, s.reshape(-1))
    a = c2 / v
    m = mu[None] + a[..., None] * (xf[:, None] - mu[None])
    g = -(xf[:, None] - mu[None]) / v[..., None]
    gbar = (r[..., None] * g).sum(1, keepdim=True)
    den = (r[..., None] * m).sum(1, keepdim=True)
    return xf.shape[1] * (r * a).sum(1) + (r * ((m - den) * (g - gbar)).sum(-1)).sum(1)


@pytest.fixture
def exact_divergence(monkeypatch):
    """The samplers' vector-Jacobian products replaced by ``v div / D``: with Rademacher probes
    (v_i^2 = 1) the Hutchinson term ``v . w`` is then the exact divergence."""
    def vjps(model, x, sigma, extra_args, probes):
        with torch.no_grad():
            den = model(x, sigma, **extra_args)
        d = div_exact(model, x, sigma).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return den, probes * d[None] / x[0].numel()
    monkeypatch.setattr(driver, "denoise_with_vjps", vjps)


def _mixture(g, D=512, K=4):
    """The likelihood benchmark's mixture shape (means ~ 2 N(0, I), stds in [0.3, 0.8]) and
    B = 16 exact samples of p_80 with their exact log-densities."""
    gm = GaussianMixture(torch.randn(K, D, generator=g, dtype=torch.float64) * 2,
                         torch.rand(K, generator=g) + 0.5, torch.rand(K, generator=g) * 0.5 + 0.3)
    xT = gm.sample(16, generator=g, sigma=SMAX, dtype=torch.float64)
    return gm, xT, gm.log_prob(xT, SMAX)


def _old_lms_logp(levels, order, l0, xs, divs, D):
    """The LMS quadrature this module replaced (k-diffusion's own weights on (div Dn - D)/sigma
    in sigma), applied to the same path: sum_m W_m (div_m - D), W_m = sum_i c_{i,i-m}/sigma_m."""
    coeffs = KS.lms_coefficients(levels, order)
    W = [0.0] * len(xs)
    for i, row in enumerate(coeffs):
        for j, c in enumerate(row):
            W[i - j] += c / levels[i - j]
    return l0 + sum(w * (d - D) for w, d in zip(W, divs))


def _lms(gm, xT, l0, n, order=4, path=False):
    """(mean |new error|, mean |old error|) over the batch, errors against log p_0(x)."""
    sig = sch.karras_sigmas(n, 0.01, SMAX, dtype=torch.float64)
    xs = []
    x, lp = S.sample_lms(gm, xT, sig, disable=True, logp=l0, order=order, seed=1,
                         callback=(lambda d: xs.append(d["x"])) if path else None)
    exact = gm.log_prob(x, 0.0)
    new = float((lp - exact).abs().mean())
    if not path:
        return new, None
    lv = sig.tolist()
    divs = [div_exact(gm, xi, s) for xi, s in zip(xs, lv)]
    old = _old_lms_logp(lv, order, l0, xs, divs, gm.dim)
    return new, float((old - exact).abs().mean())


def test_exact_divergence_is_the_jacobian_trace(rng):
    gm, _, _ = _mixture(rng, D=6, K=3)
    for sigma in (0.05, 0.7, 20.0):
        x = gm.sample(3, generator=rng, sigma=sigma, dtype=torch.float64)
        want = torch.stack([torch.trace(torch.autograd.functional.jacobian(
            lambda y: gm(y[None], sigma)[0], xi)) for xi in x])
        assert_close(div_exact(gm, x, sigma), want, atol=1e-6, rtol=1e-6, what=f"div at {sigma}")


# min old / new ratio over the mixtures measured, halved (and rounded down)
RATIO = {(25, 4): 25, (50, 4): 120, (25, 2): 20, (50, 2): 50}


@pytest.mark.parametrize("n,order", sorted(RATIO))
def test_lms_logp_closer_to_exact_than_the_lms_quadrature(n, order, rng, exact_divergence):
    """Over 40 mixtures (D = 512, B = 16) the old / new mean |error| ratio of order 4 was 53 to
    71 at 25 steps (errors 0.53-0.90 vs 38-48 nats) and 253 to 349 at 50 (0.015-0.025 vs
    5.2-6.3); over 30, order 2's was 49 to 54 and 115 to 123."""
    gm, xT, l0 = _mixture(rng)
    new, old = _lms(gm, xT, l0, n, order=order, path=True)
    print(n, order, new, old)
    assert new < old / RATIO[n, order], (new, old)


def test_lms_logp_converges_at_fourth_order_or_better(rng, exact_divergence):
    """log-log slope of the mean |error| against the steps (25, 50, 100): over 40 mixtures
    between -5.18 and -5.03, and 4.4e-4 to 7.3e-4 nats at 100 steps (k-diffusion's quadrature
    converges at about third order here, the quartic quadrature without the local-error
    correction at about 3.5)."""
    gm, xT, l0 = _mixture(rng)
    ns = (25, 50, 100)
    errs = [_lms(gm, xT, l0, n)[0] for n in ns]
    lx, ly = [math.log(n) for n in ns], [math.log(e) for e in errs]
    mx, my = sum(lx) / 3, sum(ly) / 3
    slope = sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)
    print(errs, slope)
    assert slope < -4.6, (errs, slope)
    assert errs[-1] < 2e-3, errs


@pytest.mark.parametrize("order", [1, 2, 4])
def test_lms_with_logp_keeps_k_diffusions_samples(order, rng):
    """Tracking logp (its corrector input, z with zero weight on x) leaves x k-diffusion's."""
    kd = R.load()
    g = rng
    gm = GaussianMixture(torch.randn(3, 2, 3, 5, generator=g, dtype=torch.float64),
                         torch.rand(3, generator=g) + 0.5, torch.rand(3, generator=g) * 0.5 + 0.3)
    sig = sch.karras_sigmas(7, 0.05, 10.0, dtype=torch.float64)
    x = torch.randn(4, 2, 3, 5, generator=g, dtype=torch.float64) * 10
    want = kd.sample_lms(gm, x, sig, disable=True, order=order)
    got, lp = S.sample_lms(gm, x, sig, disable=True, order=order, logp=True, seed=2)
    # (k-diffusion integrates its coefficients with scipy's quad at epsrel = 1e-4; the bitwise
    # check against our own logp-free run is the one that sees a change in x's update)
    assert_close(got, want, atol=2e-5 * (float(want.abs().max()) + 1), rtol=1e-5,
                 what=f"sample_lms order {order}")
    assert torch.isfinite(lp).all()
    assert torch.equal(S.sample_lms(gm, x, sig, disable=True, order=order), got)


def test_lms_logp_loop_compiles_into_one_graph(rng):
    """With logp the loop (model, vector-Jacobian products, the corrector's input, fused steps)
    still traces into one graph with the eager numbers (autograd traced by dynamo)."""
    dyn = pytest.importorskip("torch._dynamo.testing")
    if not hasattr(torch._dynamo.config, "trace_autograd_ops"):
        pytest.skip("this torch's dynamo cannot trace torch.autograd.grad")
    torch._dynamo.reset()
    conv = torch.nn.Conv2d(2, 2, 3, padding=1).eval()

    def model(x, sigma):
        s = sigma.reshape(-1, 1, 1, 1)
        return x / (1 + s ** 2) + s / (1 + s ** 2) ** 0.5 * conv(x / (1 + s ** 2) ** 0.5)

    sigmas = sch.karras_sigmas(6, 0.05, 10.0).tolist()

    def loop(x):
        return S.sample_lms(model, x, sigmas, disable=True, backend="cpu", logp=True, seed=3)

    counter = dyn.CompileCounterWithBackend("aot_eager")
    try:
        with torch._dynamo.config.patch(trace_autograd_ops=True):
            compiled = torch.compile(loop, backend=counter, fullgraph=True)
            x = torch.randn(2, 2, 5, 5, generator=rng) * 10
            got, want = compiled(x), loop(x)
    finally:
        torch._dynamo.reset()
    assert counter.frame_count == 1
    assert_close(got[0], want[0], atol=1e-5, rtol=1e-5, what="x")
    assert_close(got[1], want[1], atol=1e-4, rtol=1e-5, what="logp")
