"""What ``log_likelihood`` reports in ``info`` for every solver: ``nfe`` and ``vjps`` against a
wrapper that counts the model's forward calls and the vector-Jacobian products taken through
its output, and a standard error that is calibrated (z-scores of two independent runs)."""
import pytest
import torch

import diffaccel.sampling as S
from diffaccel.models import GaussianMixture


class _Tap(torch.autograd.Function):
    """Identity on the model's output; its backward runs once per vector-Jacobian product."""

    @staticmethod
    def forward(ctx, y, counter):
        ctx.counter = counter
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g):
        ctx.counter.vjps += 1
        return g, None


class Counting:
    """A denoiser wrapper counting batched forward calls and vector-Jacobian products."""

    def __init__(self, model):
        self.model, self.calls, self.vjps = model, 0, 0

    def __call__(self, x, sigma, **kw):
        self.calls += 1
        out = self.model(x, sigma, **kw)
        return _Tap.apply(out, self) if out.requires_grad else out


def _gm(rng, d, K=3):
    return GaussianMixture(torch.randn(K, d, generator=rng, dtype=torch.float64),
                           torch.rand(K, generator=rng) + 0.5, torch.rand(K, generator=rng) * 0.5 + 0.3)


def _seed(rng):
    return int(torch.randint(0, 2 ** 40, (), generator=rng))


CASES = [("euler", {}), ("heun", {}), ("rk4", {}), ("dopri5", dict(atol=1e-3, rtol=1e-3)),
         ("expint", {}), ("expint", dict(divergence="subspace", cv_sigma=0.0)),
         ("expint", dict(divergence="subspace", order=2))]


@pytest.mark.parametrize("solver,kw", CASES, ids=[f"{s}-{k.get('divergence', 'hutchinson')}-{i}"
                                                  for i, (s, k) in enumerate(CASES)])
@pytest.mark.parametrize("probes", [1, 3])
def test_info_counts_model_calls_and_vjps(solver, kw, probes, rng):
    """``info["nfe"]`` and ``info["vjps"]`` equal what the model actually did, for every solver
    (dopri5's trial evaluation for its first step takes no VJP, its last stage takes two sets;
    the control variate adds its subspace's VJPs); ``stderr`` is (B,), NaN with one probe and
    finite and positive with more. An empty batch calls nothing and reports zeros."""
    gm = _gm(rng, 6)
    x = gm.sample(int(torch.randint(2, 6, (), generator=rng)), generator=rng)
    steps = None if solver == "dopri5" else int(torch.randint(3, 9, (), generator=rng))
    m = Counting(gm)
    lp, info = S.log_likelihood(m, x, 0.05, 20.0, solver=solver, steps=steps, probes=probes,
                                seed=_seed(rng), **kw)
    assert (info["nfe"], info["vjps"]) == (m.calls, m.vjps), (solver, info["nfe"], info["vjps"],
                                                               m.calls, m.vjps)
    assert m.vjps >= probes * (m.calls - (1 if solver == "dopri5" else 0))
    if solver in ("euler", "heun", "rk4"):
        assert m.calls == steps * {"euler": 1, "heun": 2, "rk4": 4}[solver]
    assert info["stderr"].shape == lp.shape == (x.shape[0],)
    if probes == 1:
        assert bool(torch.isnan(info["stderr"]).all())
    else:
        assert bool((torch.isfinite(info["stderr"]) & (info["stderr"] > 0)).all()), info["stderr"]
    m0 = Counting(gm)
    lp0, info0 = S.log_likelihood(m0, x[:0], 0.05, 20.0, solver=solver, steps=steps, probes=probes, **kw)
    assert lp0.shape == (0,) and info0["stderr"].shape == (0,)
    assert (info0["nfe"], info0["vjps"], m0.calls, m0.vjps) == (0, 0, 0, 0)



@pytest.mark.parametrize("solver,kw", [("rk4", dict(steps=6)), ("dopri5", dict(atol=1e-3, rtol=1e-3))])
def test_standard_error_is_calibrated(solver, kw, rng):
    """Two independent runs differ by about N(0, se_a^2 + se_b^2): the std of the z-scores over
    64 samples is about 1. With 8 probes per evaluation: over 24 fresh mixtures and seeds each
    the std ranged over [0.85, 1.27] (rk4) and [0.83, 1.20] (dopri5), mean 1.03 / 1.02, spread
    (sd) about 0.1, so (0.65, 1.5) is 3.5 sd or more from the mean. A standard error off by a
    factor of 2 either way fails it. (With 3 probes the per-step variance estimates have 2
    degrees of freedom and the z-scores are Student-t-like: std 0.89-1.62, mean 1.22.)"""
    gm = _gm(rng, 16, K=4)
    x = gm.sample(64, generator=rng)
    runs = [S.log_likelihood(gm, x, 0.01, 80.0, solver=solver, probes=8, seed=_seed(rng), **kw)
            for _ in range(2)]
    z = (runs[0][0] - runs[1][0]) / torch.sqrt(runs[0][1]["stderr"] ** 2 + runs[1][1]["stderr"] ** 2)
    assert 0.65 < float(z.std()) < 1.5, f"{solver}: z-score std {float(z.std()):.3f}"
