"""philox_uint32 and noise called through torch.ops with one bad argument: the C++ kernels, the
Triton implementation and the fake function refuse it alike (RuntimeError naming the argument;
the Python mirror of the C++ checks is diffaccel/ops/noise.py)."""
import pytest
import torch

from diffaccel.layout import NORMAL
from support.op_checks import CHECK_BACKENDS, assert_accepts, assert_rejects

pytestmark = pytest.mark.usefixtures("one_thread")


def _noise(**change):
    a = dict(seeds=torch.tensor([7]), shape=[2, 3], offset=0, dist=NORMAL, dtype=torch.float32)
    a.update(change)
    return tuple(a.values())


CASES = [
    ("offset", dict(offset=-1)),
    ("dist", dict(dist=4)),
    ("shape", dict(shape=[])),
    ("shape", dict(shape=[2, -1])),
    ("seed", dict(seeds=torch.tensor([7.0]))),
    ("seed", dict(seeds=torch.tensor([1, 2, 3]))),
    ("dtype", dict(dtype=torch.float64)),
]


@pytest.mark.parametrize("backend", CHECK_BACKENDS)
def test_valid_arguments_pass(backend):
    assert_accepts("noise", backend, _noise())
    assert_accepts("philox_uint32", backend, _noise()[:3])


@pytest.mark.parametrize("backend", CHECK_BACKENDS)
@pytest.mark.parametrize("argname,change", CASES, ids=[f"{n}{i}" for i, (n, _) in enumerate(CASES)])
def test_bad_argument_is_named(backend, argname, change):
    assert_rejects("noise", backend, _noise(**change), argname)
    if argname not in ("dist", "dtype"):
        assert_rejects("philox_uint32", backend, _noise(**change)[:3], argname)
