"""Test setup: Triton runs in its interpreter on CPU tensors, so TRITON_INTERPRET is set before
anything imports triton or diffaccel.kernels. Fresh random inputs every run (the seed is printed
on failure through the test ids of parametrized cases and the message of assert_close).
Shared helpers (assert_close, backend_params, paths) are in the ``support`` package beside this file."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import diffaccel  # noqa: E402,F401  (imported after TRITON_INTERPRET is set)


@pytest.fixture
def rng():
    """A fresh, logged generator per test: failures print the seed to reproduce."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"[rng seed {seed}]")
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny-tensor tests (on a loaded 2-core machine more
    threads cost up to 50x). Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
