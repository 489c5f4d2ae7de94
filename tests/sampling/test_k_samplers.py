"""diffaccel's k-diffusion samplers against the real k_diffusion/sampling.py (0.1.1.post1) on
exact Gaussian-mixture denoisers: the same samples (float tolerance) from the same noise, drawn
the same number of times, in the same order, with the same arguments."""
import math

import pytest
import torch

import diffaccel.sampling as S
import diffaccel.schedules as sch
from support import kdiffusion_real as R
from support import assert_close
from diffaccel.models import GaussianMixture

# torchsde warns when k-diffusion's float32 sigma_min falls an ulp below the tree's start
pytestmark = [pytest.mark.filterwarnings("ignore:Should have ta>=t0:UserWarning"),
              pytest.mark.usefixtures("one_thread")]

CASES = [
    ("sample_euler", {}), ("sample_euler", dict(s_churn=1.0)),
    ("sample_heun", {}), ("sample_heun", dict(s_churn=2.0, s_tmin=0.5, s_tmax=5.0, s_noise=1.1)),
    ("sample_dpm_2", {}), ("sample_dpm_2", dict(s_churn=1.0)),
    ("sample_euler_ancestral", {}), ("sample_euler_ancestral", dict(eta=0.6, s_noise=0.9)),
    ("sample_dpm_2_ancestral", {}), ("sample_dpm_2_ancestral", dict(eta=0.7)),
    ("sample_lms", {}), ("sample_lms", dict(order=2)),
    ("sample_dpmpp_2m", {}),
    ("sample_dpmpp_2s_ancestral", {}), ("sample_dpmpp_2s_ancestral", dict(eta=0.5, s_noise=1.2)),
    ("sample_dpmpp_sde", {}), ("sample_dpmpp_sde", dict(eta=0.5, r=0.3)),
    ("sample_dpmpp_2m_sde", {}), ("sample_dpmpp_2m_sde", dict(solver_type="heun")),
    ("sample_dpmpp_2m_sde", dict(eta=0.0)),
    ("sample_dpmpp_3m_sde", {}), ("sample_dpmpp_3m_sde", dict(eta=0.5, s_noise=0.8)),
]
IDS = [n[7:] + "".join(f"-{k}={v}" for k, v in kw.items()) for n, kw in CASES]
NOISE_SAMPLER = {"sample_euler_ancestral", "sample_dpm_2_ancestral", "sample_dpmpp_2s_ancestral",
                 "sample_dpmpp_sde", "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde"}
BROWNIAN = {"sample_dpmpp_sde", "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde"}


@pytest.fixture(scope="module")
def kd():
    return R.load()


def _problem(rng, shape=(2, 3, 5), B=5, n=7, dtype=torch.float32):
    """A mixture, x (B, *shape) and sigmas in ``dtype``. The comparisons with k-diffusion's own
    samplers run in float64: near a component boundary the mixture's denoiser amplifies float32
    rounding (the two implementations order their float32 arithmetic differently) past any
    tight tolerance about once in a thousand comparisons; float64 leaves the algorithms' own
    differences (coefficients, noise, draw order) to be seen."""
    D = math.prod(shape)
    means = torch.randn(3, *shape, generator=rng, dtype=torch.float64) * 2 / math.sqrt(max(1, D / 16))
    gm = GaussianMixture(means, torch.rand(3, generator=rng) + 0.5, torch.rand(3, generator=rng) * 0.5 + 0.3)
    sigmas = sch.karras_sigmas(n, 0.05 + 0.1 * float(torch.rand((), generator=rng)), 10.0).to(dtype)
    x = (torch.randn(B, *shape, generator=rng) * 10).to(dtype)
    return gm, x, sigmas


def _close(got, want, what):
    scale = float(want.abs().max()) + 1
    assert_close(got, want, atol=2e-5 * scale, rtol=1e-5, what=what)


def _run(kd, fn, *args, rec_seed, global_seed=11, **kw):
    """fn under a recording module-global torch; returns (x, the draws' shapes)."""
    rec = R.RecordingTorch(rec_seed)
    kd.torch = rec
    try:
        torch.manual_seed(global_seed)
        return fn(*args, **kw), rec.calls
    finally:
        kd.torch = torch


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_same_samples_and_draws_as_k_diffusion(kd, name, kw, rng):
    """Through the module (the patched case): its global torch.randn_like, its noise samplers."""
    gm, x, sigmas = _problem(rng, dtype=torch.float64)
    core = S.K_SAMPLERS[name][1]
    s = int(torch.randint(0, 2 ** 31, (), generator=rng))
    want, drawn = _run(kd, getattr(kd, name), gm, x, sigmas, disable=True, rec_seed=s, **kw)
    got, ours = _run(kd, core, kd, gm, x, sigmas, disable=True, rec_seed=s, **kw)
    _close(got, want, name)
    assert ours == drawn, f"{name}: {len(ours)} randn_like draws, k-diffusion {len(drawn)}"
    assert got.dtype == want.dtype and got.shape == want.shape
    if name in ("sample_euler", "sample_heun", "sample_dpm_2"):
        assert len(drawn) == len(sigmas) - 1  # a draw per step, even without churn
    # unpatched, torch's own global generator plays the module's part
    torch.manual_seed(s)
    want2 = getattr(kd, name)(gm, x, sigmas, disable=True, **kw)
    theirs = torch.randint(0, 2 ** 62, (2,))
    torch.manual_seed(s)
    got2 = S.K_SAMPLERS[name][0](gm, x, sigmas, disable=True, **kw)
    assert torch.equal(torch.randint(0, 2 ** 62, (2,)), theirs), \
        f"{name}: the global generator advanced unlike k-diffusion's"
    if name not in BROWNIAN:  # (unpatched, our SDE default draws Brownian increments itself)
        _close(got2, want2, f"{name} (unpatched)")


@pytest.mark.parametrize("name,kw", [c for c in CASES if c[0] in NOISE_SAMPLER],
                         ids=[i for i, c in zip(IDS, CASES) if c[0] in NOISE_SAMPLER])
def test_noise_sampler_given(kd, name, kw, rng):
    """A caller's noise_sampler: called with the same arguments, as often, in the same order."""
    gm, x, sigmas = _problem(rng, dtype=torch.float64)
    s = int(torch.randint(0, 2 ** 31, (), generator=rng))
    out, calls = [], []
    for fn in (getattr(kd, name), S.K_SAMPLERS[name][0]):
        g = torch.Generator().manual_seed(s)
        ns = R.RecordingNoiseSampler(lambda a, b: torch.randn(x.shape, generator=g))
        out.append(fn(gm, x, sigmas, disable=True, noise_sampler=ns, **kw))
        calls.append(ns.calls)
    _close(out[1], out[0], name)
    assert len(calls[1]) == len(calls[0])
    assert len(calls[0]) > 0 or kw.get("eta") == 0
    assert_close(torch.tensor(calls[1]), torch.tensor(calls[0]), atol=1e-6, rtol=1e-6,
                 what="noise_sampler arguments")


@pytest.mark.parametrize("name", sorted(BROWNIAN))
def test_brownian_tree_noise_sampler_with_per_sample_seeds(kd, name, rng):
    """k-diffusion's BrownianTreeNoiseSampler(seed=[...]) (stable-diffusion-webui's choice)."""
    gm, x, sigmas = _problem(rng, B=3, dtype=torch.float64)
    seeds = torch.randint(0, 2 ** 31, (3,), generator=rng).tolist()
    lo, hi = sigmas[sigmas > 0].min(), sigmas.max()
    out = [fn(gm, x, sigmas, disable=True,
              noise_sampler=kd.BrownianTreeNoiseSampler(x, lo, hi, seed=seeds))
           for fn in (getattr(kd, name), S.K_SAMPLERS[name][0])]
    _close(out[1], out[0], name)


@pytest.mark.parametrize("name", sorted(S.K_SAMPLERS))
def test_seed_draws_in_the_step(name, rng):
    """seed=: the same samples for the same seed, per-sample seeds independent of the batch, no
    draw from the global generator, and a different seed gives other samples where noise is
    drawn."""
    gm, x, sigmas = _problem(rng, shape=(7,), B=4)
    fn = S.K_SAMPLERS[name][0]
    kw = dict(s_churn=1.0) if name in ("sample_euler", "sample_heun", "sample_dpm_2") else {}
    seeds = torch.randint(0, 2 ** 40, (4,), generator=rng)
    state = torch.get_rng_state()
    a = fn(gm, x, sigmas, disable=True, seed=seeds, **kw)
    assert torch.equal(torch.get_rng_state(), state), "the global generator was used"
    b = fn(gm, x[1:3], sigmas, disable=True, seed=seeds[1:3], **kw)
    _close(b, a[1:3], f"{name} (batch independence)")
    c = fn(gm, x, sigmas, disable=True, seed=seeds + 1, **kw)
    if name not in ("sample_lms", "sample_dpmpp_2m"):
        assert (c - a).abs().max() > 1e-3, "the seed changed nothing"
    else:
        _close(c, a, name)


def test_callback_and_signature(kd, rng):
    import inspect
    gm, x, sigmas = _problem(rng, shape=(3,), B=2, n=4)
    for name, (fn, _) in S.K_SAMPLERS.items():
        theirs = inspect.signature(getattr(kd, name)).parameters
        ours = inspect.signature(fn).parameters
        assert list(ours)[:len(theirs)] == list(theirs), name
        for p in theirs.values():
            assert ours[p.name].default == p.default and ours[p.name].kind == p.kind, (name, p.name)
        assert all(ours[p].kind is inspect.Parameter.KEYWORD_ONLY for p in list(ours)[len(theirs):])
        seen = []
        x_in = x.clone()
        fn(gm, x, sigmas, disable=True, callback=lambda d: seen.append(
            (d["i"], float(d["sigma"]), d["x"].clone(), d["x"])))
        assert torch.equal(x, x_in), f"{name} changed its input"
        assert [s[0] for s in seen] == list(range(4)), name
        assert all(torch.equal(c, x) for _, _, c, x in seen), f"{name} changed a callback's x"


def test_named_errors(rng):
    gm, x, sigmas = _problem(rng, shape=(3,), B=2, n=4)
    with pytest.raises(ValueError, match="solver_type"):
        S.sample_dpmpp_2m_sde(gm, x, sigmas, solver_type="rk4")
    with pytest.raises(ValueError, match="order"):
        S.sample_lms(gm, x, sigmas, order=5)
    with pytest.raises(ValueError, match="seed, noise_sampler"):
        S.sample_euler_ancestral(gm, x, sigmas, seed=1, noise_sampler=lambda a, b: torch.randn_like(x))
    with pytest.raises(ValueError, match="sigmas"):
        S.sample_dpmpp_2m(gm, x, torch.tensor([1.0, float("nan"), 0.0]))
    with pytest.raises(ValueError, match="strictly decreasing"):
        S.sample_dpmpp_2m(gm, x, torch.tensor([1.0, 0.0, 0.0]))
    with pytest.raises(TypeError, match="sigmas"):
        S.sample_dpmpp_2m(gm, x, 3.0)
    with pytest.raises(ValueError, match="dist"):
        S.sample_euler_ancestral(gm, x, sigmas, seed=1, dist="cauchy")
    with pytest.raises(ValueError, match="s_churn"):
        S.sample_euler(gm, x, sigmas, s_churn=1.0, logp=True, seed=1)
    with pytest.raises(ValueError, match="r"):
        S.sample_dpmpp_sde(gm, x, sigmas, r=0.0, seed=1)


# ------------------------------------------------------------------------------ logp

ODE = ("sample_euler", "sample_heun", "sample_dpm_2", "sample_lms", "sample_dpmpp_2m")


@pytest.fixture(scope="module")
def exact_problem():
    """A mixture in D = 8 and B = 256 exact samples of p_40 with their exact log-densities."""
    g = torch.Generator().manual_seed(int.from_bytes(__import__("os").urandom(4), "little"))
    D, B, smax = 8, 256, 40.0
    gm = GaussianMixture(torch.randn(3, D, generator=g, dtype=torch.float64) * 1.5,
                         torch.rand(3, generator=g) + 0.5, torch.rand(3, generator=g) * 0.3 + 0.3)
    x0 = (gm.sample(B, generator=g, dtype=torch.float64)
          + smax * torch.randn(B, D, generator=g, dtype=torch.float64)).float()
    return gm, x0, gm.log_prob(x0, smax), smax


@pytest.mark.parametrize("name", sorted(S.K_SAMPLERS))
def test_logp_converges_to_the_exact_log_density(name, exact_problem):
    """logp of the returned samples (sigma = 0) against the exact log p_0 of the same samples:
    the bias falls like the sampler's order as the steps grow 4x (second order for the ODE
    samplers' quadrature but Euler's, first order for the stochastic ones), and the estimate
    ranks the samples as the exact density does."""
    gm, x0, l0, smax = exact_problem
    fn = S.K_SAMPLERS[name][0]
    bias, spread = [], []
    for n in (40, 160):
        sig = sch.karras_sigmas(n, 0.02, smax).float()
        x, lp = fn(gm, x0, sig, disable=True, logp=l0, seed=3, **({"probes": 2} if name in ODE else {}))
        exact = gm.log_prob(x, 0.0)
        bias.append(float((lp - exact).mean()))
        spread.append(float((lp - exact).std()))
    print(name, bias, spread)
    if name in ODE and name != "sample_euler":  # second order
        assert abs(bias[1]) < max(0.15 * abs(bias[0]), 0.05), bias
    elif name == "sample_euler":  # first order
        assert abs(bias[1]) < 0.35 * abs(bias[0]) and abs(bias[1]) < 1.0, bias
    else:  # first order; the trapezoid on |s|^2 leaves little at 160 steps
        assert abs(bias[1]) < max(0.5 * abs(bias[0]), 0.3), bias
    # per sample: Hutchinson noise (ODE); the discretized Ito integral, strong order 1/2
    # (stochastic: the spread halves as the steps grow 4x)
    if name in ODE:
        # over 12 mixtures at 160 steps: heun / dpm_2 / dpmpp_2m at most 0.21, lms (its order-4
        # weights carry more Hutchinson noise on some mixtures) up to 0.65, median 0.17 for all
        assert spread[1] < (1.0 if name == "sample_lms" else 0.3), spread
    else:
        assert spread[1] < 0.65 * spread[0] and spread[1] < 2.5, spread


def test_stochastic_logp_is_zero_overhead_at_eta_1(exact_problem):
    """eta = 1: no divergence, so no vector-Jacobian product but at the final step to sigma = 0;
    eta < 1: one probe per step (the divergence weight is O(step), not O(step^2))."""
    gm, x0, l0, smax = exact_problem
    graded = []

    def model(x, sigma):
        graded.append(torch.is_grad_enabled())
        return gm(x, sigma)

    sig = sch.karras_sigmas(12, 0.02, smax).float()
    for name in ("sample_euler_ancestral", "sample_dpmpp_2m_sde", "sample_dpmpp_sde"):
        graded.clear()
        S.K_SAMPLERS[name][0](model, x0, sig, disable=True, logp=l0, seed=1)
        assert sum(graded) == 1 and graded[-1], (name, graded)
    graded.clear()
    S.sample_euler_ancestral(model, x0, sig, disable=True, logp=l0, seed=1, eta=0.5)
    assert all(graded), graded
    # and with the divergence the eta < 1 estimate converges too
    bias = []
    for n in (40, 160):
        s = sch.karras_sigmas(n, 0.02, smax).float()
        x, lp = S.sample_euler_ancestral(gm, x0, s, disable=True, logp=l0, seed=1, eta=0.5)
        bias.append(float((lp - gm.log_prob(x, 0.0)).mean()))
    assert abs(bias[1]) < max(0.5 * abs(bias[0]), 0.3), bias


@pytest.mark.parametrize("name", sorted(S.K_SAMPLERS))
def test_logp_same_on_reference_and_cpu_backends(name, rng):
    gm, x, sigmas = _problem(rng, shape=(3, 5), B=3, n=6)
    seeds = torch.randint(0, 2 ** 40, (3,), generator=rng)
    out = [S.K_SAMPLERS[name][0](gm, x, sigmas, disable=True, logp=True, seed=seeds, probes=2,
                                 backend=b) for b in ("reference", "cpu")]
    _close(out[1][0], out[0][0], f"{name} x")
    _close(out[1][1], out[0][1], f"{name} logp")


@pytest.mark.parametrize("name", sorted(S.K_SAMPLERS))
def test_dtypes_layouts_and_empty_batch(name, rng):
    """bfloat16 and float16 follow the float32 result to their precision; a channels-last input
    gives the contiguous one's result and is left as it was; an empty batch returns empty. One
    Gaussian (a linear denoiser): no mode for a rounding error to switch the path to."""
    fn = S.K_SAMPLERS[name][0]
    _, x, sigmas = _problem(rng, shape=(4, 3, 5), B=3, n=5)
    gm = GaussianMixture(torch.randn(1, 4, 3, 5, generator=rng, dtype=torch.float64), [1.0],
                         0.3 + 0.5 * float(torch.rand((), generator=rng)))
    want = fn(gm, x, sigmas, disable=True, seed=4)
    for dt, tol in ((torch.bfloat16, 0.05), (torch.float16, 0.01)):
        got = fn(gm, x.to(dt), sigmas, disable=True, seed=4)
        assert got.dtype == dt
        assert_close(got, want, atol=tol * (float(want.abs().max()) + 1), what=f"{name} {dt}")
    xc = x.to(memory_format=torch.channels_last)
    before = xc.clone()
    _close(fn(gm, xc, sigmas, disable=True, seed=4), want, f"{name} channels_last")
    assert torch.equal(xc, before)
    e = fn(gm, x[:0], sigmas, disable=True, seed=4)
    assert e.shape == (0, 4, 3, 5)
    e, lp = fn(gm, x[:0], sigmas, disable=True, logp=True)
    assert e.shape == (0, 4, 3, 5) and lp.shape == (0,)
