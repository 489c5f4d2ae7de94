"""stroke_blur, stroke_blur_backward and stroke_noise called through torch.ops with one bad
argument: the C++ kernels, the Triton implementation and the fake function refuse it alike
(RuntimeError naming the argument; the Python mirror of the C++ checks is
diffaccel/ops/stroke.py). The public API's own errors are tested in tests/test_bad_input.py."""
import pytest
import torch

from diffaccel.layout import MAX_SCALES, NORMAL, TARGET_EPS
from support.op_checks import CHECK_BACKENDS, assert_accepts, assert_rejects

pytestmark = pytest.mark.usefixtures("one_thread")

B, C, H, W = 2, 1, 6, 5
NOISE_ARGS = ("x0", "alpha", "sigma", "data_weights", "noise_weights", "scales", "seeds",
              "offset", "dist", "target")


def _blur(**change):
    a = dict(grad=torch.randn(B, C, H, W), x=torch.randn(B, C, H, W),
             weights=torch.full((B, 1), 0.3), scales=[2])
    a.update(change)
    return a


def _noise(**change):
    a = dict(x0=torch.randn(B, C, H, W), alpha=torch.full((B,), 0.8),
             sigma=torch.full((B,), 0.6), data_weights=torch.full((B, 1), 0.3),
             noise_weights=torch.full((B, 1), 0.2), scales=[2], seeds=torch.tensor([5]),
             offset=0, dist=NORMAL, target=TARGET_EPS)
    a.update(change)
    return tuple(a[k] for k in NOISE_ARGS)


BLUR_CASES = [
    ("x", dict(x=torch.randn(B, H, W))),
    ("x", dict(x=torch.randn(B, C, H, W).long())),
    ("scales", dict(scales=[])),
    ("scales", dict(scales=[1])),
    ("scales", dict(scales=[2] * (MAX_SCALES + 1), weights=torch.zeros(B, MAX_SCALES + 1))),
    ("weights", dict(weights=torch.full((B, 1), 0.3, dtype=torch.float64))),
    ("weights", dict(weights=torch.full((B, 2), 0.3))),
    ("weights", dict(weights=torch.full((B + 1, 1), 0.3))),
]
BACKWARD_CASES = BLUR_CASES + [
    ("grad", dict(grad=torch.randn(B, C, H, W + 1))),
    ("grad", dict(grad=torch.randn(B, C, H, W).half())),
]
NOISE_CASES = [
    ("x0", dict(x0=torch.randn(B, H, W))),
    ("scales", dict(scales=[0])),
    ("data_weights", dict(data_weights=torch.full((B, 2), 0.3))),
    ("noise_weights", dict(noise_weights=torch.full((B,), 0.3))),
    ("alpha", dict(alpha=torch.full((B + 1,), 0.8))),
    ("alpha", dict(alpha=torch.full((B,), 0.8, dtype=torch.float64))),
    ("sigma", dict(sigma=torch.full((B, 1), 0.6))),
    ("seed", dict(seeds=torch.tensor([5.0]))),
    ("seed", dict(seeds=torch.tensor([1, 2, 3]))),
    ("offset", dict(offset=-3)),
    ("dist", dict(dist=4)),
    ("target", dict(target=3)),
]


def _ids(cases):
    return [f"{n}{i}" for i, (n, _) in enumerate(cases)]


@pytest.mark.parametrize("backend", CHECK_BACKENDS)
def test_valid_arguments_pass(backend):
    a = _blur()
    assert_accepts("stroke_blur", backend, (a["x"], a["weights"], a["scales"]))
    assert_accepts("stroke_blur_backward", backend, tuple(a.values()))
    assert_accepts("stroke_noise", backend, _noise())


@pytest.mark.parametrize("backend", CHECK_BACKENDS)
@pytest.mark.parametrize("argname,change", BLUR_CASES, ids=_ids(BLUR_CASES))
def test_stroke_blur_bad_argument_is_named(backend, argname, change):
    a = _blur(**change)
    assert_rejects("stroke_blur", backend, (a["x"], a["weights"], a["scales"]), argname)


@pytest.mark.parametrize("backend", CHECK_BACKENDS)
@pytest.mark.parametrize("argname,change", BACKWARD_CASES, ids=_ids(BACKWARD_CASES))
def test_stroke_blur_backward_bad_argument_is_named(backend, argname, change):
    assert_rejects("stroke_blur_backward", backend, tuple(_blur(**change).values()), argname)


@pytest.mark.parametrize("backend", CHECK_BACKENDS)
@pytest.mark.parametrize("argname,change", NOISE_CASES, ids=_ids(NOISE_CASES))
def test_stroke_noise_bad_argument_is_named(backend, argname, change):
    assert_rejects("stroke_noise", backend, _noise(**change), argname)
