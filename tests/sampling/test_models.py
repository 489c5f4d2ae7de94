"""Exact oracle models (docs/math.md Section 4) against independent computations."""
import itertools
import math

import pytest
import torch

from support import assert_close
from diffaccel.models import CurieWeiss, GaussianMixture


def _gm(rng, d=5, K=3):
    return GaussianMixture(torch.randn(K, d, generator=rng, dtype=torch.float64) * 2,
                           torch.rand(K, generator=rng) + 0.2, torch.rand(K, generator=rng) + 0.2)


def test_gm_log_prob_matches_torch_distributions(rng):
    gm = _gm(rng)
    x = torch.randn(7, 5, generator=rng, dtype=torch.float64) * 3
    a, b = 0.6, 0.7
    comp = torch.distributions.Independent(torch.distributions.Normal(
        a * gm.means, torch.sqrt(a ** 2 * gm.stds ** 2 + b ** 2)[:, None].expand(-1, 5)), 1)
    mix = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(gm.weights), comp)
    assert_close(gm.log_prob_ab(x, a, b), mix.log_prob(x), atol=1e-10, what="log p")


def test_gm_score_denoiser_and_eps_are_consistent(rng):
    gm = _gm(rng)
    x = torch.randn(6, 5, generator=rng, dtype=torch.float64) * 2
    sigma = torch.rand(6, generator=rng, dtype=torch.float64) + 0.3
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(gm.log_prob(xr, sigma).sum(), xr)
    assert_close(gm.score(x, sigma), g, atol=1e-10, what="score = grad log p")
    # Tweedie: E[x0|x] = x + sigma^2 s
    assert_close(gm(x, sigma), x + sigma[:, None] ** 2 * g, atol=1e-10, what="denoiser")
    a, b = 0.8, 0.6
    e = gm.eps(x, a, b)
    assert_close(e, -b * gm.score_ab(x, a, b), atol=1e-10, what="eps = -b s")


def test_gm_sample_moments(rng):
    means = torch.tensor([[3.0, 0.0], [-3.0, 1.0]], dtype=torch.float64)
    gm = GaussianMixture(means, [0.25, 0.75], [0.5, 1.0])
    x = gm.sample(20000, generator=rng, dtype=torch.float64)
    k = (x[:, 0] < 0).double()
    assert abs(float(k.mean()) - 0.75) < 0.02
    assert abs(float(x[k == 0].std(0).mean()) - 0.5) < 0.03
    assert abs(float(x[k == 1].std(0).mean()) - 1.0) < 0.03


def test_gm_bad_arguments():
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.zeros(2, 3), [1.0], 1.0)
    with pytest.raises(ValueError, match="stds"):
        GaussianMixture(torch.zeros(2, 3), [1.0, 1.0], [1.0, -1.0])
    gm = GaussianMixture(torch.zeros(2, 3), [1.0, 1.0], 1.0)
    with pytest.raises(ValueError, match="x"):
        gm.log_prob(torch.zeros(4, 5))


def _cw_brute(cw, x, a, b):
    """log p and E[x1|x] by enumerating {-1, 1}^d under the two-branch product measure."""
    d = cw.d
    configs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=d)), dtype=torch.float64)
    logw = []
    for sgn, lw in ((1, math.log(cw.w_plus)), (-1, math.log1p(-cw.w_plus))):
        pr = torch.log((1 + sgn * cw.m * configs) / 2).sum(1)  # P(x1 | branch)
        logw.append(lw + pr)
    log_prior = torch.logsumexp(torch.stack(logw), 0)  # (2^d,)
    ll = (-0.5 * ((x[:, None, :] - a * configs[None]) / b) ** 2 - math.log(b) - 0.5 * math.log(2 * math.pi)).sum(-1)
    joint = log_prior[None] + ll
    logp = torch.logsumexp(joint, 1)
    post = torch.softmax(joint, 1)
    return logp, post @ configs


@pytest.mark.parametrize("beta,p", [(2.0, 0.8), (0.7, 0.5), (1.3, 0.3)])
def test_curie_weiss_matches_enumeration(beta, p, rng):
    cw = CurieWeiss(6, beta, p)
    assert abs(cw.m - math.tanh(beta * cw.m)) < 1e-12
    x = torch.randn(5, 6, generator=rng, dtype=torch.float64) * 1.5
    a, b = 0.7, 0.9
    logp, mean = _cw_brute(cw, x, a, b)
    assert_close(cw.log_prob_ab(x, a, b), logp, atol=1e-10, what="CW log p")
    assert_close(cw.posterior_mean(x, a, b), mean, atol=1e-10, what="CW E[x1|x]")
    assert_close(cw.score_ab(x, a, b), (a * mean - x) / b ** 2, atol=1e-10, what="CW score")


def test_curie_weiss_weights_and_samples(rng):
    cw = CurieWeiss(400, 2.0, 0.8)
    assert abs(cw.w_plus - 0.7904) < 1e-3 and abs(cw.m - 0.9575) < 1e-3
    x = cw.sample(2000, generator=rng)
    mag = x.mean(1)
    assert abs(float((mag > 0).float().mean()) - cw.w_plus) < 0.04
    assert abs(float(mag.abs().mean()) - cw.m) < 0.01
    # the float32 posterior agrees with the float64 one
    cw32 = CurieWeiss(400, 2.0, 0.8, compute_dtype=torch.float32)
    xn = 0.5 * x[:8] + 0.8 * torch.randn(8, 400, generator=rng)
    assert_close(cw32.posterior_mean(xn, 0.5, 0.8), cw.posterior_mean(xn, 0.5, 0.8), atol=1e-5, what="float32 CW")
