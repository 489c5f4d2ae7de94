"""Bad op-level inputs across every backend: the C++ kernels (cpu, cuda), the Triton
implementation (in the interpreter on CPU) and the fake function (what torch.compile traces)
must refuse the same call with the same error class naming the same argument. Used by
``tests/ops/<family>/test_<family>_checks.py``."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_map_only

from diffaccel.backends import availability
from diffaccel.library import op


def _param(backend):
    ok, why = (True, "") if backend == "fake" else availability(backend, "cpu", "sample_step")
    return pytest.param(backend, marks=[] if ok else [pytest.mark.skip(reason=why)])


# fake: the fake function under FakeTensorMode (the same one for the C++ op and its Triton twin)
CHECK_BACKENDS = [_param(b) for b in ("cpu", "triton", "fake")]


def call(name, backend, args):
    """Op ``name`` on ``backend`` ("cpu", "triton" or "fake") with the positional ``args``."""
    if backend != "fake":
        return op(name, backend)(*args)
    mode = FakeTensorMode()
    fake_args = tree_map_only(torch.Tensor, mode.from_tensor, args)
    with mode:
        return getattr(torch.ops.diffaccel, name).default(*fake_args)


def assert_rejects(name, backend, args, argname, exc=RuntimeError):
    """The call fails with ``exc`` (TORCH_CHECK: RuntimeError) whose message starts with
    ``argname:``."""
    with pytest.raises(exc, match=rf"^{argname}:"):
        call(name, backend, args)


def assert_accepts(name, backend, args):
    """The unchanged arguments are fine (each bad case changes one thing)."""
    call(name, backend, args)
