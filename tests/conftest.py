"""Test setup: Triton runs in its interpreter on CPU tensors, so TRITON_INTERPRET is set before
anything imports triton or diffaccel.kernels. Fresh random inputs every run (the seed is printed
on failure through the test ids of parametrized cases and the message of assert_close)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import diffaccel  # noqa: E402
from diffaccel.backends import availability  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backend_params(op="stroke_blur"):
    """pytest params (backend, device) for every backend and device, skipped with the reason
    when the backend cannot run there (e.g. cuda here: no GPU; the CUDA build is still compiled)."""
    params = []
    for dev in ["cpu", "cuda"]:
        for name in diffaccel.BACKENDS:
            if name == "reference":
                continue
            ok, why = availability(name, dev, op) if (dev == "cpu" or torch.cuda.is_available()) \
                else (False, "no CUDA device is available")
            if name == "cpu" and dev == "cuda" or name == "cuda" and dev == "cpu":
                continue
            marks = [] if ok else [pytest.mark.skip(reason=f"{name} on {dev}: {why}")]
            params.append(pytest.param(name, dev, id=f"{name}-{dev}", marks=marks))
    return params


def assert_close(actual, expected, *, atol, rtol=0.0, what="values"):
    """Like torch.testing.assert_close, but says how many elements mismatch and where."""
    actual = actual.detach().double().cpu()
    expected = expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual - expected).abs()
    bad = ~(err <= atol + rtol * expected.abs())
    n = int(bad.sum())
    if n:
        idx = bad.nonzero()[:5].tolist()
        worst = int(err.flatten().argmax())
        raise AssertionError(
            f"{what}: {n} of {err.numel()} elements mismatch (atol={atol:g}, rtol={rtol:g}); "
            f"max abs error {err.max().item():.3g} at flat index {worst}; first bad indices {idx}; "
            f"e.g. actual {actual[tuple(idx[0])].item():.7g} vs expected {expected[tuple(idx[0])].item():.7g}")


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
