"""pytest-benchmark entries of the VRG ops (``pytest benchmarks/test_bench_vrg.py``).

The full side-by-side table (every backend, the reference eager and compiled, the floor, and the
paper's optimizer against optimize_trajectory) is ``python benchmarks/bench_vrg.py``.
"""
import pytest
import torch

import diffaccel.vrg as vrg
from diffaccel.bench import randn_inputs, runnable
from diffaccel.reference import vrg as R

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FAST = runnable("vrg_error_moments", DEVICE, ("cpu", "triton", "cuda"))


@pytest.fixture(scope="module")
def moments_inputs():
    g = torch.Generator().manual_seed(0)
    pred, target = randn_inputs(g, (256, 4, 64, 64), 2, DEVICE)
    bins = torch.randint(0, 1000, (256,), generator=g).to(DEVICE)
    return pred, target, bins


@pytest.mark.parametrize("backend", FAST + ["reference"])
def test_error_moments(benchmark, synced_benchmark, moments_inputs, backend):
    pred, target, bins = moments_inputs
    benchmark.group = "vrg error_moments B=256 4x64x64"
    table = synced_benchmark(lambda: vrg.error_moments(pred, target, bins, 1000, backend=backend))
    assert table[:, 0].sum().item() == pred.numel()


def test_error_moments_reference_compiled(benchmark, synced_benchmark, moments_inputs):
    pred, target, bins = moments_inputs
    benchmark.group = "vrg error_moments B=256 4x64x64"
    compiled = torch.compile(R.error_moments)
    compiled(pred, target, bins, 1000)
    synced_benchmark(lambda: compiled(pred, target, bins, 1000))


@pytest.mark.parametrize("backend", [b for b in FAST if b != "triton" or DEVICE == "cuda"] + ["reference"])
def test_cumulative_error_grad(benchmark, synced_benchmark, backend):
    g = torch.Generator().manual_seed(0)
    lam = torch.sort(torch.rand(64, 10, generator=g, dtype=torch.float64) * 18 - 9, 1,
                     descending=True).values + 0.1 * torch.arange(10, 0, -1)
    abar = torch.sigmoid(lam).to(DEVICE)
    table = vrg.MSETable(torch.linspace(0, 0.9999, 1000), torch.rand(1000, generator=g))
    benchmark.group = "vrg cumulative_error + grad K=64 N=10"
    cpe, grad = synced_benchmark(lambda: vrg.cumulative_error_and_grad(abar, table, "dpm2m",
                                                                       backend=backend))
    assert grad.shape == (64, 10)
