"""The VRG ops called through torch.ops with one bad argument: the C++ kernels, the Triton
implementation and the fake function refuse it alike (RuntimeError naming the argument; the
Python mirror of csrc/vrg_checks.h is diffaccel/ops/vrg.py). The public API's own errors are
tested in test_vrg_moments.py, test_vrg_trajectory.py and tests/test_bad_input.py."""
import pytest
import torch

from diffaccel.layout import VRG_DDIM, VRG_DPM2M
from support.op_checks import CHECK_BACKENDS, assert_accepts, assert_rejects

pytestmark = pytest.mark.usefixtures("one_thread")

B, K, N, M = 3, 2, 4, 5


def _moments(**change):
    a = dict(pred=torch.randn(B, 2, 3), target=torch.randn(B, 2, 3),
             bins=torch.tensor([0, 2, 1]), num_bins=3)
    a.update(change)
    return tuple(a.values())


def _cpe(**change):
    grid = torch.linspace(0.01, 0.99, M, dtype=torch.float64)
    abar = torch.linspace(0.9, 0.1, N, dtype=torch.float64).expand(K, N).contiguous()
    a = dict(abar=abar, grid=grid, mse=torch.full((M,), 0.1, dtype=torch.float64),
             solver=VRG_DPM2M)
    a.update(change)
    return tuple(a.values())


MOMENT_CASES = [
    ("pred", dict(pred=torch.tensor(1.0), target=torch.tensor(1.0))),
    ("pred", dict(pred=torch.randn(B, 2, 3).double(), target=torch.randn(B, 2, 3).double())),
    ("target", dict(target=torch.randn(B, 6))),
    ("target", dict(target=torch.randn(B, 2, 3).half())),
    ("bins", dict(bins=torch.tensor([0, 2, 1], dtype=torch.int32))),
    ("bins", dict(bins=torch.tensor([0, 2]))),
    ("num_bins", dict(num_bins=0)),
]
CPE_CASES = [
    ("abar", dict(abar=torch.rand(K, N))),
    ("abar", dict(abar=torch.rand(N, dtype=torch.float64))),
    ("grid", dict(grid=torch.tensor([0.5], dtype=torch.float64),
                  mse=torch.tensor([0.1], dtype=torch.float64))),
    ("grid", dict(grid=torch.linspace(0.01, 0.99, M))),
    ("mse", dict(mse=torch.full((M + 1,), 0.1, dtype=torch.float64))),
    ("solver", dict(solver=2)),
    ("solver", dict(solver=-1)),
]


def _ids(cases):
    return [f"{n}{i}" for i, (n, _) in enumerate(cases)]


@pytest.mark.parametrize("backend", CHECK_BACKENDS)
def test_valid_arguments_pass(backend):
    assert_accepts("vrg_error_moments", backend, _moments())
    for solver in (VRG_DDIM, VRG_DPM2M):
        assert_accepts("vrg_cumulative_error", backend, _cpe(solver=solver))
        assert_accepts("vrg_cumulative_error_grad", backend, _cpe(solver=solver))


@pytest.mark.parametrize("backend", CHECK_BACKENDS)
@pytest.mark.parametrize("argname,change", MOMENT_CASES, ids=_ids(MOMENT_CASES))
def test_error_moments_bad_argument_is_named(backend, argname, change):
    assert_rejects("vrg_error_moments", backend, _moments(**change), argname)


@pytest.mark.parametrize("backend", CHECK_BACKENDS)
@pytest.mark.parametrize("name", ["vrg_cumulative_error", "vrg_cumulative_error_grad"])
@pytest.mark.parametrize("argname,change", CPE_CASES, ids=_ids(CPE_CASES))
def test_cumulative_error_bad_argument_is_named(backend, name, argname, change):
    assert_rejects(name, backend, _cpe(**change), argname)
