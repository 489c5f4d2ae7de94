"""The noise ops (philox_uint32, noise) as torch.library ops: opcheck (schema, fake, autograd
registration, AOT dispatch) for the C++ and Triton implementations; their named errors in Python
and in the C++ checks, and empty shapes. (The stroke ops' and a compiled training step over both
families: tests/ops/stroke/test_stroke_ops.py.)"""
import pytest
import torch

import diffaccel
from diffaccel import _ext

from support import opcheck, skip_without_extension

# (backend, device): the C++ op serves "cpu" and "cuda" through its dispatch keys
BACKENDS = [("cpu", "cpu"), ("triton", "cpu")] + (
    [("cuda", "cuda"), ("triton", "cuda")] if torch.cuda.is_available() else [])
IDS = [f"{b}-{d}" for b, d in BACKENDS]
needs_ext = pytest.mark.skipif(_ext.load() is None, reason=f"{_ext.error()}")


def _samples(device="cpu"):
    seeds = torch.tensor([11, 12], device=device)
    return {
        "philox_uint32": (seeds, [2, 5], 3),
        "noise": (seeds, [2, 3, 4], 2**33, 0, torch.float32),
    }


@pytest.mark.parametrize("name", list(_samples()))
@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
def test_opcheck(name, backend, device):
    opcheck(name, backend, _samples(device)[name])


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("call,exc,match", [
    (lambda b: diffaccel.noise((4, -1), seed=0, backend=b), ValueError, "shape"),
    (lambda b: diffaccel.noise((4, 2), seed=1, dtype=torch.int32, backend=b), TypeError, "dtype"),
])
def test_bad_input_names_the_argument(backend, call, exc, match):
    skip_without_extension(backend)
    with pytest.raises(exc, match=match):
        call(backend)


@needs_ext
def test_direct_op_calls_are_checked_in_cpp():
    """Calls straight through torch.ops get C++ checks, not out-of-bounds reads."""
    with pytest.raises(RuntimeError, match="seed: expected an int64 tensor"):
        torch.ops.diffaccel.noise(torch.tensor([1, 2, 3]), [2, 4], 0, 0, torch.float32)
    with pytest.raises(RuntimeError, match="dist: unknown"):
        torch.ops.diffaccel.noise(torch.tensor([1]), [2, 4], 0, 9, torch.float32)


def test_empty_batch_and_degenerate_sizes():
    for backend in ["reference"] + (["cpu"] if _ext.load() is not None else []):
        assert diffaccel.noise((0, 3), seed=1, backend=backend).shape == (0, 3)
