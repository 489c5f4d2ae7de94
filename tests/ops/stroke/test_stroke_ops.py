"""The stroke ops (stroke_blur, its backward, stroke_noise) as torch.library ops: opcheck (schema,
fake, autograd registration, AOT dispatch) for the C++ and Triton implementations,
torch.compile(fullgraph=True) over the public functions; their named errors in Python and in the
C++ checks, float64 and empty batches; the stroke_weights schedule."""
import math

import pytest
import torch

import diffaccel
from diffaccel import _ext
from diffaccel.backends import triton_interpret
from support import assert_close, opcheck, skip_without_extension

# (backend, device): the C++ op serves "cpu" and "cuda" through its dispatch keys
# Triton on CPU tensors needs the interpreter (the test conftest sets it unless make gpu-check
# asked for compiled Triton with TRITON_INTERPRET=0)
_NO_INTERPRETER = pytest.mark.skipif(not triton_interpret(),
                                     reason="Triton runs CPU tensors only under TRITON_INTERPRET=1")
BACKENDS = [("cpu", "cpu"), pytest.param("triton", "cpu", marks=_NO_INTERPRETER)] + (
    [("cuda", "cuda"), ("triton", "cuda")] if torch.cuda.is_available() else [])
IDS = [f"{b[0]}-{b[1]}" if isinstance(b, tuple) else f"{b.values[0]}-{b.values[1]}" for b in BACKENDS]
needs_ext = pytest.mark.skipif(_ext.load() is None, reason=f"{_ext.error()}")


def _x(B=2):
    return torch.randn(B, 3, 8, 8)


def _w(B=2, J=2):
    return torch.full((B, J), 0.2)


# ------------------------------------------------------------------------------ op contracts

def _samples(device="cpu"):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, 7, generator=g).to(device)
    w = (torch.rand(2, 2, generator=g) * 0.4).to(device)
    seeds = torch.tensor([11, 12], device=device)
    return {
        "stroke_blur": (x.requires_grad_(), w.requires_grad_(), [2, 3]),
        "stroke_blur_backward": (torch.randn(2, 3, 9, 7, generator=g).to(device), x.detach(), w.detach(), [2, 4]),
        "stroke_noise": (x.detach().requires_grad_(), torch.rand(2, generator=g).to(device),
                         torch.rand(2, generator=g).to(device),
                         w.detach(), w.detach().flip(0), [2, 4], seeds, 5, 0, 2),
    }


@pytest.mark.parametrize("name", list(_samples()))
@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
def test_opcheck(name, backend, device):
    # the Triton stroke_blur_backward's reduction is plain PyTorch: no AOT dispatch to check
    plain = backend == "triton" and name == "stroke_blur_backward"
    opcheck(name, backend, _samples(device)[name], without=("test_aot_dispatch_dynamic",) if plain else ())


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
def test_compile_fullgraph(backend, device):
    """A training-step-like function with every op compiles without graph breaks and matches eager."""
    if backend != "triton" and _ext.load() is None:
        pytest.skip(_ext.error())
    torch._dynamo.reset()

    def step(x0, w, alpha, sigma, seeds):
        xt, target = diffaccel.stroke_noise(x0, alpha, sigma, scales=(2, 4), data_weights=w,
                                            noise_weights=w, seed=seeds, target="v", backend=backend)
        pred = diffaccel.stroke_blur(xt, w, (2, 4), backend=backend)
        z = diffaccel.noise(x0.shape, seed=seeds, offset=1000, backend=backend)
        return ((pred - target) ** 2).mean() + z.mean()

    g = torch.Generator().manual_seed(1)
    args = tuple(a.to(device) for a in (
        torch.randn(2, 3, 8, 8, generator=g), torch.rand(2, 2, generator=g) * 0.4,
        torch.rand(2, generator=g), torch.rand(2, generator=g), torch.tensor([5, 6])))
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    assert_close(compiled(*args), step(*args), atol=1e-6, what="compiled loss")


def test_compile_inductor_cpu():
    """The default inductor backend too (C++ kernels), with autograd through stroke_blur."""
    if _ext.load() is None:
        pytest.skip(_ext.error())
    torch._dynamo.reset()

    def f(x, w):
        return diffaccel.stroke_blur(x, w, (2, 3), backend="cpu").square().sum()

    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 2, 7, 6, generator=g, requires_grad=True)
    w = (torch.rand(2, 2, generator=g) * 0.4).requires_grad_()
    loss = torch.compile(f, fullgraph=True)(x, w)
    gx, gw = torch.autograd.grad(loss, (x, w))
    ex, ew = torch.autograd.grad(f(x, w), (x, w))
    assert_close(gx, ex, atol=1e-5, what="grad x")
    assert_close(gw, ew, atol=1e-4, what="grad w")


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("call,exc,match", [
    (lambda b: diffaccel.stroke_blur(torch.randn(3, 8, 8), _w(), (2,), backend=b), ValueError, "x: expected a \\(B, C, H, W\\)"),
    (lambda b: diffaccel.stroke_blur(_x(), _w(2, 3), (2, 4), backend=b), ValueError, "weights: expected shape"),
    (lambda b: diffaccel.stroke_blur(_x().int(), _w(), (2, 4), backend=b), TypeError, "x: expected float32"),
    (lambda b: diffaccel.stroke_blur(_x(), _w(), (1, 4), backend=b), ValueError, "scales: every scale must be >= 2"),
    (lambda b: diffaccel.stroke_blur(_x(), _w(), (2, 4.5), backend=b), TypeError, "scales"),
    (lambda b: diffaccel.stroke_blur(_x(), _w(), (), backend=b), ValueError, "scales"),
    (lambda b: diffaccel.stroke_blur(_x(), -_w(), (2, 4), backend=b), ValueError, "weights: weights must be >= 0"),
    (lambda b: diffaccel.stroke_blur(_x(), _w() * 3, (2, 4), backend=b), ValueError, "sum to < 1"),
    (lambda b: diffaccel.stroke_blur(_x(), _w().to("meta"), (2, 4), backend=b), ValueError, "weights: expected a tensor on cpu"),
    (lambda b: diffaccel.stroke_noise(_x(), float("nan"), 1.0, scales=(2,), data_weights=_w(2, 1),
                                      noise_weights=_w(2, 1), seed=0, backend=b), ValueError, "alpha: expected finite"),
    (lambda b: diffaccel.stroke_noise(_x(), 1.0, torch.tensor([1.0, math.inf]), scales=(2,), data_weights=_w(2, 1),
                                      noise_weights=_w(2, 1), seed=0, backend=b), ValueError, "sigma: expected finite"),
    (lambda b: diffaccel.stroke_noise(_x(), torch.ones(3), 1.0, scales=(2,), data_weights=_w(2, 1),
                                      noise_weights=_w(2, 1), seed=0, backend=b), ValueError, "alpha: expected a number or a tensor of shape \\(2,\\)"),
    (lambda b: diffaccel.stroke_noise(_x(), 1.0, 1.0, scales=(2,), data_weights=_w(2, 1),
                                      noise_weights=_w(2, 1), seed=0.5, backend=b), TypeError, "seed"),
    (lambda b: diffaccel.stroke_noise(_x(), 1.0, 1.0, scales=(2,), data_weights=_w(2, 1),
                                      noise_weights=_w(2, 1), seed=torch.tensor([1, 2, 3]), backend=b), ValueError, "seed: expected shape"),
    (lambda b: diffaccel.stroke_noise(_x(), 1.0, 1.0, scales=(2,), data_weights=_w(2, 1),
                                      noise_weights=_w(2, 1), seed=0, offset=-1, backend=b), ValueError, "offset"),
    (lambda b: diffaccel.stroke_noise(_x(), 1.0, 1.0, scales=(2,), data_weights=_w(2, 1),
                                      noise_weights=_w(2, 1), seed=0, dist="cauchy", backend=b), ValueError, "dist: expected one of"),
    (lambda b: diffaccel.stroke_noise(_x(), 1.0, 1.0, scales=(2,), data_weights=_w(2, 1),
                                      noise_weights=_w(2, 1), seed=0, target="score", backend=b), ValueError, "target: expected one of"),
    (lambda b: diffaccel.stroke_noise(_x(), 1.0, -0.5, scales=(2,), data_weights=_w(2, 1),
                                      noise_weights=_w(2, 1), seed=0, backend=b), ValueError, "sigma: expected values >= 0"),
])
def test_bad_input_names_the_argument(backend, call, exc, match):
    skip_without_extension(backend)
    with pytest.raises(exc, match=match):
        call(backend)


@needs_ext
def test_float64_is_reference_only():
    x = _x().double()
    y = diffaccel.stroke_blur(x, _w(), (2, 4), backend="reference")
    assert y.dtype == torch.float64
    with pytest.raises(TypeError, match="float64 is supported by the reference backend only"):
        diffaccel.stroke_blur(x, _w(), (2, 4), backend="cpu")


@needs_ext
def test_gradients_to_alpha_are_refused_on_fast_backends():
    alpha = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="alpha: backend 'cpu' differentiates stroke_noise in x0 only"):
        diffaccel.stroke_noise(_x(), alpha, 1.0, scales=(2,), data_weights=_w(2, 1), noise_weights=_w(2, 1),
                               seed=0, backend="cpu")


@needs_ext
def test_direct_op_calls_are_checked_in_cpp():
    """Calls straight through torch.ops get C++ checks, not out-of-bounds reads."""
    with pytest.raises(RuntimeError, match="weights: expected shape"):
        torch.ops.diffaccel.stroke_blur(_x(), torch.zeros(2, 3), [2, 4])
    with pytest.raises(RuntimeError, match="scales: every scale must be >= 2"):
        torch.ops.diffaccel.stroke_blur(_x(), torch.zeros(2, 2), [2, 0])


def test_empty_batch_and_degenerate_sizes():
    for backend in ["reference"] + (["cpu"] if _ext.load() is not None else []):
        x = torch.randn(0, 2, 5, 5)
        assert diffaccel.stroke_blur(x, torch.zeros(0, 1), (2,), backend=backend).shape == x.shape


# --------------------------------------------------------------------------- stroke_weights

def test_stroke_weights_schedule_is_monotone_and_bounded():
    lam = torch.linspace(-10, 10, 101)
    w = diffaccel.stroke_weights(lam, (2, 4, 8), w_max=0.6)
    assert w.shape == (101, 3)
    assert (w >= 0).all() and (w.sum(-1) <= 0.6).all()
    assert (w[1:] <= w[:-1] + 1e-7).all(), "every weight falls as the SNR rises"
    assert (w[:, 1:] >= w[:, :-1] - 1e-7).all(), "coarser strokes weigh at least as much"
    assert w[0].sum() > 0.5 and w[-1].sum() < 0.05
    with pytest.raises(ValueError, match="w_max"):
        diffaccel.stroke_weights(lam, (2,), w_max=1.0)
