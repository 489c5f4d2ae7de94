"""pytest-benchmark entries of the fused sampler step (``pytest benchmarks/test_bench_step.py``):
one Euler-Maruyama step with the zero-overhead log-density at B=64, 4x64x64, on each runnable
backend beside the plain PyTorch step eager and compiled and the bandwidth floor; one PF-ODE
step with a Hutchinson probe; and a whole log_likelihood on a Gaussian mixture.

The side-by-side table is ``python benchmarks/bench_step.py``.
"""
import pytest
import torch

import diffaccel.sampling as S
from bench_step import plain_em_step
from diffaccel.bench import randn_inputs, runnable
from diffaccel.models import GaussianMixture

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FAST = runnable("sample_step", DEVICE, ("cpu", "triton", "cuda"))
GROUP = "sample_step em+logp B=64 4x64x64"


@pytest.fixture(scope="module")
def step_inputs():
    g = torch.Generator().manual_seed(0)
    x, den = randn_inputs(g, (64, 4, 64, 64), 2, DEVICE)
    seeds = torch.randint(0, 2 ** 40, (64,), generator=g).to(DEVICE)
    return x, den, seeds, torch.tensor(2.0, device=DEVICE), torch.tensor(1.8, device=DEVICE)


@pytest.mark.parametrize("backend", FAST)
def test_em_step(benchmark, synced_benchmark, step_inputs, backend):
    x, den, seeds, sig, nxt = step_inputs
    logp = torch.zeros(64, device=DEVICE)
    benchmark.group = GROUP

    def step():
        q = sig ** 2 - nxt ** 2
        g = torch.sqrt(q)
        coef = S.make_coef(64, ax=1 - q / sig ** 2, am=(q / sig ** 2,), az=g, sx=-1 / sig ** 2,
                           sm=(1 / sig ** 2,), c1=q / 2, c2=g)
        return S.fused_step(x, [den], coef, logp=logp, seed=seeds, dist="normal", backend=backend)

    synced_benchmark(step)
    assert torch.isfinite(logp).all()


def test_em_step_plain_eager(benchmark, synced_benchmark, step_inputs):
    x, den, seeds, sig, nxt = step_inputs
    benchmark.group = GROUP
    synced_benchmark(lambda: plain_em_step(x, den, sig, nxt, torch.zeros(64, device=DEVICE)))


def test_em_step_plain_compiled(benchmark, synced_benchmark, step_inputs):
    x, den, seeds, sig, nxt = step_inputs
    benchmark.group = GROUP
    compiled = torch.compile(plain_em_step)
    lp = torch.zeros(64, device=DEVICE)
    compiled(x, den, sig, nxt, lp)
    synced_benchmark(lambda: compiled(x, den, sig, nxt, lp))


def test_em_step_floor(benchmark, synced_benchmark, step_inputs):
    x, den, *_ = step_inputs
    buf = torch.empty_like(x)
    benchmark.group = GROUP
    synced_benchmark(lambda: torch.add(x, den, out=buf))


@pytest.mark.parametrize("solver,steps", [("rk4", 25), ("dopri5", None)])
def test_log_likelihood_gm(benchmark, solver, steps):
    g = torch.Generator().manual_seed(0)
    d = 3072
    gm = GaussianMixture(torch.randn(4, d, generator=g, dtype=torch.float64) * 2,
                         torch.rand(4, generator=g) + 0.5, torch.rand(4, generator=g) * 0.5 + 0.3)
    x = gm.sample(16, generator=g).to(DEVICE)
    benchmark.group = "log_likelihood GM D=3072 B=16"
    lp, info = benchmark.pedantic(lambda: S.log_likelihood(gm, x, 0.01, 80.0, steps=steps,
                                                           solver=solver, seed=1),
                                  rounds=1, iterations=1)
    assert torch.isfinite(lp).all() and info["nfe"] > 0
