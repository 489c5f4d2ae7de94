"""The torch.library ops: opcheck (schema, fake, autograd registration, AOT dispatch) for the C++
and Triton implementations, and torch.compile(fullgraph=True) over the public functions."""
import pytest
import torch

import diffaccel
from diffaccel import _ext
from diffaccel.library import op

from support import assert_close

# (backend, device): the C++ op serves "cpu" and "cuda" through its dispatch keys
BACKENDS = [("cpu", "cpu"), ("triton", "cpu")] + (
    [("cuda", "cuda"), ("triton", "cuda")] if torch.cuda.is_available() else [])
IDS = [f"{b}-{d}" for b, d in BACKENDS]


def _samples(device="cpu"):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, 7, generator=g).to(device)
    w = (torch.rand(2, 2, generator=g) * 0.4).to(device)
    seeds = torch.tensor([11, 12], device=device)
    return {
        "philox_uint32": (seeds, [2, 5], 3),
        "noise": (seeds, [2, 3, 4], 2**33, 0, torch.float32),
        "stroke_blur": (x.requires_grad_(), w.requires_grad_(), [2, 3]),
        "stroke_blur_backward": (torch.randn(2, 3, 9, 7, generator=g).to(device), x.detach(), w.detach(), [2, 4]),
        "stroke_noise": (x.detach().requires_grad_(), torch.rand(2, generator=g).to(device),
                         torch.rand(2, generator=g).to(device),
                         w.detach(), w.detach().flip(0), [2, 4], seeds, 5, 0, 2),
    }


@pytest.mark.parametrize("name", list(_samples()))
@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
def test_opcheck(name, backend, device):
    if backend != "triton" and _ext.load() is None:
        pytest.skip(_ext.error())
    args = _samples(device)[name]
    tests = ["test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"]
    if backend == "triton" and name == "stroke_blur_backward":
        tests.remove("test_aot_dispatch_dynamic")  # its reduction is plain PyTorch: nothing more to check
    torch.library.opcheck(op(name, backend), args, test_utils=tests)


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
