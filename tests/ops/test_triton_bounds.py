"""Every Triton kernel, run in the interpreter at odd sizes (tail lanes in the last program), reads
and writes only inside its tensors: ``support.interp_memcheck`` checks each active lane of each
load and store. On a GPU a read past a tensor is an illegal-address fault once it crosses the end
of a memory segment (the gpu-check runs compute-sanitizer for that); the interpreter alone reads
host memory and would not notice."""
import pytest
import torch

import diffaccel
from diffaccel.backends import availability

from support.interp_memcheck import bounds_checked

pytestmark = pytest.mark.skipif(not availability("triton", "cpu", "noise")[0],
                                reason="the Triton interpreter is not available (TRITON_INTERPRET=1, triton)")


def _seeds(B):
    return torch.arange(11, 11 + B, dtype=torch.int64)


@pytest.mark.parametrize("shape", [(3,), (5, 1), (3, 4, 33, 17)], ids=str)
def test_noise_and_philox_per_sample_seeds_stay_in_bounds(shape):
    with bounds_checked() as bad:
        diffaccel.noise(shape, seed=_seeds(shape[0]), offset=7, backend="triton")
        diffaccel.philox_uint32(shape, seed=_seeds(shape[0]), offset=7, backend="triton")
    assert not bad, bad


@pytest.mark.parametrize("scales", [(3, 5), (2, 7)], ids=str)
@pytest.mark.parametrize("shape", [(3, 4, 33, 17), (2, 1, 1, 9)], ids=str)
def test_stroke_general_path_stays_in_bounds(shape, scales):
    B, J = shape[0], len(scales)
    x = torch.randn(shape)
    w = torch.full((B, J), 0.1)
    with bounds_checked() as bad:
        diffaccel.stroke_blur(x, w, scales, backend="triton")
        diffaccel.stroke_noise(x, torch.rand(B), torch.rand(B), scales=scales, data_weights=w,
                               noise_weights=w, seed=_seeds(B), offset=3, backend="triton")
    assert not bad, bad


@pytest.mark.parametrize("shape", [(4,), (4, 1), (3, 5, 7)], ids=str)
def test_fused_step_stays_in_bounds(shape):
    from diffaccel.kernels import step as S

    B = shape[0]
    D = torch.Size(shape[1:]).numel()
    x = torch.randn(shape)
    models = [torch.randn(shape), torch.randn(shape)]
    coef = torch.randn(B, diffaccel.layout.coef_width(2))
    P = 2
    probes = torch.randn(P, *shape)
    vjps = [torch.randn(P, *shape), torch.randn(P, *shape)]
    logp, var = torch.zeros(B, dtype=torch.float64), torch.zeros(B, dtype=torch.float64)
    with bounds_checked() as bad:
        S.sample_step(x, torch.empty_like(x), logp, var, models, coef, None, _seeds(B), 5,
                      diffaccel.layout.NORMAL, probes, vjps, torch.empty(P, *shape), 9,
                      diffaccel.layout.RADEMACHER, _block_size=16 if D < 16 else None)
    assert not bad, bad
