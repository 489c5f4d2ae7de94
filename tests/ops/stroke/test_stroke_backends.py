"""Every backend of stroke_blur / stroke_noise against the reference: odd shapes, scales that do
not divide H or W, power-of-two (tile path) and general scale sets, every dtype, non-contiguous
inputs, forward and backward."""
import pytest
import torch

import diffaccel

from support import LAW_MAX, assert_close, assert_close_to_truth, backend_params, draw_atol

SHAPES = [(1, 1, 7, 5), (3, 4, 33, 17), (2, 3, 16, 16), (2, 1, 1, 9)]
SCALE_SETS = [(2,), (2, 4, 8), (3, 5), (2, 7), (4, 16)]


def _floor(truth, dtype):
    """The floor of assert_close_to_truth here: float32 arithmetic everywhere, so outputs agree to
    2 float32 ulps of the largest |value| (the terms may be added in another order); in float16 /
    bfloat16 one ulp of the output dtype more (the float32 results differ in their last bits, so
    they may round to neighbouring values)."""
    m = float(truth.abs().max()) if truth.numel() else 0.0
    return (2 * torch.finfo(torch.float32).eps + (0 if dtype == torch.float32 else torch.finfo(dtype).eps)) * m


def _weights(B, J, rng, device, total=0.9):
    w = torch.rand(B, J, generator=rng)
    return (w / w.sum(1, keepdim=True) * torch.rand(B, 1, generator=rng) * total).to(device)


def _layouts(x):
    """The same values contiguous, channels-last, and as a strided view."""
    yield "contiguous", x
    yield "channels_last", x.contiguous(memory_format=torch.channels_last)
    big = torch.zeros(x.shape[0], x.shape[1], x.shape[2], 2 * x.shape[3], dtype=x.dtype, device=x.device)
    big[..., ::2] = x
    yield "strided", big[..., ::2]


@pytest.mark.parametrize("scales", SCALE_SETS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("backend,device", backend_params("stroke_blur"))
def test_blur_forward(backend, device, shape, scales, rng):
    x = torch.randn(shape, generator=rng).to(device)
    w = _weights(shape[0], len(scales), rng, device)
    ref = diffaccel.stroke_blur(x.cpu(), w.cpu(), scales, backend="reference")
    truth = diffaccel.stroke_blur(x.cpu().double(), w.cpu().double(), scales, backend="reference")
    for name, xl in _layouts(x):
        got = diffaccel.stroke_blur(xl, w, scales, backend=backend)
        assert got.shape == x.shape and got.dtype == x.dtype
        assert_close_to_truth(got, truth, ref, floor=_floor(truth, x.dtype), what=f"{backend} blur {name}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend,device", backend_params("stroke_blur"))
def test_blur_low_precision(backend, device, dtype, rng):
    x = torch.randn(2, 3, 19, 12, generator=rng).to(device, dtype)
    w = _weights(2, 3, rng, device)
    for scales in [(2, 4, 8), (3, 5, 6)]:
        got = diffaccel.stroke_blur(x, w, scales, backend=backend)
        ref = diffaccel.stroke_blur(x.cpu(), w.cpu(), scales, backend="reference")
        truth = diffaccel.stroke_blur(x.cpu().double(), w.cpu().double(), scales, backend="reference")
        assert got.dtype == dtype
        assert_close_to_truth(got, truth, ref, floor=_floor(truth, dtype), what=f"{backend} {dtype} blur")


@pytest.mark.parametrize("scales", [(2, 4), (3, 5, 2)], ids=str)
@pytest.mark.parametrize("backend,device", backend_params("stroke_blur"))
def test_blur_backward(backend, device, scales, rng):
    shape = (3, 2, 13, 10)
    x = torch.randn(shape, generator=rng)
    w = _weights(3, len(scales), rng, "cpu")
    g = torch.randn(shape, generator=rng)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    diffaccel.stroke_blur(xr, wr, scales, backend="reference").backward(g)
    xt, wt = x.double().requires_grad_(), w.double().requires_grad_()  # the float64 truth
    diffaccel.stroke_blur(xt, wt, scales, backend="reference").backward(g.double())
    xb, wb = x.to(device).requires_grad_(), w.to(device).requires_grad_()
    diffaccel.stroke_blur(xb, wb, scales, backend=backend).backward(g.to(device))
    assert_close_to_truth(xb.grad, xt.grad, xr.grad, floor=_floor(xt.grad, x.dtype), what="grad x")
    assert_close_to_truth(wb.grad, wt.grad, wr.grad, floor=_floor(wt.grad, x.dtype),  # sums of ~800 terms
                          what="grad weights")


DIST_TOL = {"normal": 1e-5, "laplace": 1e-5, "uniform": 2e-6, "rademacher": 2e-6}


def _noise_case(backend, device, shape, scales, seed, dist, target, rng):
    B = shape[0]
    x0 = torch.randn(shape, generator=rng)
    alpha, sigma = torch.rand(B, generator=rng), torch.rand(B, generator=rng) * 3
    wx, we = _weights(B, len(scales), rng, "cpu"), _weights(B, len(scales), rng, "cpu")
    kw = dict(scales=scales, seed=seed, offset=2**32 - 50, dist=dist, target=target)
    ref = diffaccel.stroke_noise(x0, alpha, sigma, data_weights=wx, noise_weights=we,
                                 backend="reference", **kw)
    if torch.is_tensor(seed):
        kw["seed"] = seed.to(device)
    got = diffaccel.stroke_noise(x0.to(device), alpha.to(device), sigma.to(device),
                                 data_weights=wx.to(device), noise_weights=we.to(device),
                                 backend=backend, **kw)
    atol = DIST_TOL[dist] * 3  # |x_t| error <= (alpha + sigma) * draw error
    assert_close(got[0], ref[0], atol=atol, rtol=1e-5, what=f"x_t {dist} {shape} {scales}")
    assert_close(got[1], ref[1], atol=atol, rtol=1e-5, what=f"target {dist} {shape} {scales}")


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
@pytest.mark.parametrize("scales", [(2, 4, 8), (3, 5)], ids=str)
@pytest.mark.parametrize("backend,device", backend_params("stroke_noise"))
def test_noise_forward(backend, device, scales, target, rng):
    for shape in [(1, 1, 7, 5), (3, 4, 33, 17)]:
        seed = torch.randint(0, 2**62, (shape[0],), generator=rng)
        _noise_case(backend, device, shape, scales, seed, "normal", target, rng)


@pytest.mark.parametrize("dist", ["laplace", "uniform", "rademacher"])
@pytest.mark.parametrize("backend,device", backend_params("stroke_noise"))
def test_noise_forward_laws(backend, device, dist, rng):
    for scales in [(2, 4), (3,)]:
        _noise_case(backend, device, (2, 3, 11, 9), scales, 2**63 + 12345, dist, "v", rng)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("backend,device", backend_params("stroke_noise"))
def test_noise_dtypes_and_layouts(backend, device, dtype, rng):
    x0 = torch.randn(2, 3, 18, 11, generator=rng).to(device, dtype)
    wx, we = _weights(2, 2, rng, device), _weights(2, 2, rng, device)
    ref = diffaccel.stroke_noise(x0.cpu(), 0.8, 0.6, scales=(2, 4), data_weights=wx.cpu(),
                                 noise_weights=we.cpu(), seed=3, target="v", backend="reference")
    # the float64 truth (the reference computes in float32 for every dtype): its formula in float64
    # on the same draws
    eps = diffaccel.noise(x0.shape, seed=3, dist="normal", backend="reference").double()
    ax = diffaccel.stroke_blur(x0.cpu().double(), wx.cpu().double(), (2, 4), backend="reference")
    ae = diffaccel.stroke_blur(eps, we.cpu().double(), (2, 4), backend="reference")
    truth = (0.8 * ax + 0.6 * ae, 0.8 * ae - 0.6 * ax)
    # + how far normal draws may differ between libraries, times sigma (and the weights' sum < 1)
    draws = 0.6 * draw_atol("normal", LAW_MAX["normal"])
    for name, xl in _layouts(x0):
        xt, tgt = diffaccel.stroke_noise(xl, 0.8, 0.6, scales=(2, 4), data_weights=wx, noise_weights=we,
                                         seed=3, target="v", backend=backend)
        assert xt.dtype == dtype and tgt.dtype == dtype and xt.shape == x0.shape
        for what, g, r, t in (("x_t", xt, ref[0], truth[0]), ("target", tgt, ref[1], truth[1])):
            assert_close_to_truth(g, t, r, floor=_floor(t, dtype) + draws, what=f"{what} {dtype} {name}")


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
@pytest.mark.parametrize("backend,device", backend_params("stroke_noise"))
def test_noise_backward_in_x0(backend, device, target, rng):
    shape = (2, 2, 9, 6)
    x0 = torch.randn(shape, generator=rng)
    alpha, sigma = torch.rand(2, generator=rng), torch.rand(2, generator=rng)
    wx, we = _weights(2, 2, rng, "cpu"), _weights(2, 2, rng, "cpu")
    g1, g2 = torch.randn(shape, generator=rng), torch.randn(shape, generator=rng)
    kw = dict(scales=(2, 3), seed=5, target=target)
    xr = x0.clone().requires_grad_()
    out = diffaccel.stroke_noise(xr, alpha, sigma, data_weights=wx, noise_weights=we, backend="reference", **kw)
    pairs = [(o, g) for o, g in zip(out, (g1, g2)) if o.requires_grad]  # target "eps" is free of x0
    torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
    xb = x0.to(device).requires_grad_()
    out = diffaccel.stroke_noise(xb, alpha.to(device), sigma.to(device), data_weights=wx.to(device),
                                 noise_weights=we.to(device), backend=backend, **kw)
    torch.autograd.backward(out, (g1.to(device), g2.to(device)))
    assert_close(xb.grad, xr.grad, atol=1e-5, rtol=1e-5, what="grad x0")


@pytest.mark.parametrize("backend,device", backend_params("stroke_noise"))
def test_noise_per_sample_seeds_are_batch_independent(backend, device, rng):
    x0 = torch.randn(4, 2, 10, 10, generator=rng).to(device)
    seeds = torch.randint(0, 2**62, (4,), generator=rng).to(device)
    w = _weights(4, 2, rng, device)
    full = diffaccel.stroke_noise(x0, 0.7, 0.5, scales=(2, 4), data_weights=w, noise_weights=w,
                                  seed=seeds, backend=backend)
    one = diffaccel.stroke_noise(x0[2:3], 0.7, 0.5, scales=(2, 4), data_weights=w[2:3],
                                 noise_weights=w[2:3], seed=seeds[2:3], backend=backend)
    assert torch.equal(one[0][0], full[0][2]) and torch.equal(one[1][0], full[1][2])


@pytest.mark.parametrize("backend,device", backend_params("stroke_noise"))
def test_zero_weights_reduce_to_plain_noising(backend, device, rng):
    """With no stroke weight, x_t = alpha x0 + sigma eps with eps = diffaccel.noise's draws."""
    x0 = torch.randn(3, 2, 8, 5, generator=rng).to(device)
    z = torch.zeros(3, 2, device=device)
    seeds = torch.tensor([1, 2, 3], device=device)
    xt, eps = diffaccel.stroke_noise(x0, 0.6, 0.8, scales=(2, 4), data_weights=z, noise_weights=z,
                                     seed=seeds, offset=7, backend=backend)
    ref_eps = diffaccel.noise(x0.shape, seed=seeds, offset=7, backend=backend)
    assert_close(eps, ref_eps, atol=1e-6, what="eps")
    assert_close(xt, 0.6 * x0 + 0.8 * ref_eps, atol=1e-6, rtol=1e-6, what="x_t")
