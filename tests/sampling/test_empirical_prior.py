"""``prior="empirical"``: ``log (1/n) sum_i N(x_T; x_i, sigma_max^2 I)`` over data points, against
the closed form (data that are a finite set of points: the noised density is exactly that
average), its convergence on a mixture, its wiring into ``log_likelihood`` and its bad input."""
import math

import pytest
import torch

import diffaccel.sampling as S
from support import assert_close
from diffaccel.models import GaussianMixture


def test_exact_for_finite_data(rng):
    """Data uniform over n points (a mixture of n near-point masses, std 1e-9): the estimate from
    exactly those points is the exact noised log-density, for any chunking, odd event shapes,
    float32 or float64 data, a tensor or an iterable of batches."""
    n, shape = int(torch.randint(3, 40, (), generator=rng)), (3, 5)
    pts = torch.randn(n, *shape, generator=rng, dtype=torch.float64) * 3
    gm = GaussianMixture(pts, torch.ones(n), 1e-9)
    s = float(torch.rand((), generator=rng)) * 10 + 0.5
    xt = gm.sample(7, generator=rng, sigma=s, dtype=torch.float64).transpose(1, 2).contiguous().transpose(1, 2)
    assert not xt.is_contiguous()
    truth = gm.log_prob(xt, s)
    for data, chunk in ((pts, 4096), (pts, 2), (iter(pts.split(4)), 3)):
        got = S.EmpiricalPrior(data, chunk=chunk)(xt, s)
        assert_close(got, truth, atol=1e-9, rtol=1e-12, what=f"empirical prior (chunk {chunk})")
    got32 = S.EmpiricalPrior(pts.float())(xt, s)
    # float32 data points: each off by ~6e-8 relative, |x - x_i| . dx_i / s^2 nats
    assert_close(got32, truth, atol=1e-4 * (1 + float(xt.abs().max()) / s), what="float32 data")
    ess = S.EmpiricalPrior(pts).effective_samples(xt, s)
    assert bool(((ess >= 1 - 1e-9) & (ess <= n + 1e-9)).all()), ess
    # far-away x: every weight underflows alone, the log-sum-exp does not
    far = S.EmpiricalPrior(pts)(xt + 1e4, s)
    assert_close(far, gm.log_prob(xt + 1e4, s), atol=1e-6, rtol=1e-9, what="far from the data")


def test_converges_on_a_mixture(rng):
    """At sigma_max = 80, D = 3072 on a 4-component mixture whose components stay apart at
    sigma_max (means 2 randn), a single Gaussian cannot fit p_80 while 4096 data points do: the
    mean |error| of the empirical prior is below 0.1 nats and under a quarter of the matched
    prior's. Measured over 20 fresh mixtures: empirical 0.009-0.028 (noise from the component
    counts, ~1/sqrt(n)), matched 0.44-0.52, their ratio at most 0.06."""
    d, K = 3072, 4
    gm = GaussianMixture(torch.randn(K, d, generator=rng, dtype=torch.float64) * 2,
                         torch.rand(K, generator=rng) + 0.5, torch.rand(K, generator=rng) * 0.5 + 0.3)
    data = gm.sample(4096, generator=rng)
    xt = gm.sample(256, generator=rng, sigma=80.0, dtype=torch.float64)
    truth = gm.log_prob(xt, 80.0)
    e_emp = float((S.EmpiricalPrior(data)(xt, 80.0) - truth).abs().mean())
    e_mat = float((S.MatchedPrior.from_data(data)(xt, 80.0) - truth).abs().mean())
    assert e_emp < 0.1 and e_emp < 0.25 * e_mat, (e_emp, e_mat)


def test_in_log_likelihood(rng):
    """``prior="empirical"`` swaps only the prior term, for every solver; bad input is named."""
    gm = GaussianMixture(torch.randn(3, 6, generator=rng), torch.rand(3, generator=rng) + 0.5, 0.4)
    x = gm.sample(5, generator=rng)
    data = gm.sample(300, generator=rng)
    emp = S.EmpiricalPrior(data)
    for solver, kw in (("rk4", dict(steps=3)), ("expint", dict(steps=6)),
                       ("dopri5", dict(atol=1e-2, rtol=1e-2))):
        base, info = S.log_likelihood(gm, x, 0.05, 20.0, solver=solver, seed=3, **kw)
        for pd in (data, emp, iter(data.split(100))) if solver == "rk4" else (emp,):
            lp, _ = S.log_likelihood(gm, x, 0.05, 20.0, solver=solver, seed=3, **kw,
                                     prior="empirical", prior_data=pd)
            want = base - S.prior_logp(info["x_T"], 20.0) + emp(info["x_T"], 20.0)
            assert_close(lp, want, atol=1e-9, rtol=1e-12, what=f"{solver} with the empirical prior")
    bad = [(dict(prior="empirical"), ValueError, "prior_data"),
           (dict(prior="empirical", prior_data=data[:0]), ValueError, "prior_data"),
           (dict(prior="empirical", prior_data=torch.full((2, 6), math.nan)), ValueError, "prior_data"),
           (dict(prior="empirical", prior_data=torch.zeros(4, 5)), ValueError, "x"),
           (dict(prior="empirical", prior_data=[data, "a"]), TypeError, "prior_data"),
           (dict(prior="standard", prior_data=data), ValueError, "prior_data")]
    for kw, err, name in bad:
        with pytest.raises(err, match=name):
            S.log_likelihood(gm, x, 0.05, 20.0, solver="rk4", steps=2, **kw)
    with pytest.raises(ValueError, match="chunk"):
        S.EmpiricalPrior(data, chunk=0)
