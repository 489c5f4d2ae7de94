"""Helpers shared by the test modules: paths, the parametrization over backends, and
``assert_close`` (which says how many elements mismatch and where), and
``assert_close_to_truth`` (a backend against a float64 truth, within a multiple of the plain
reference's own low-precision error: ``tolerance.py``). Import it as ``support`` (``tests/`` is
on ``sys.path``: pytest puts the folder of the top-level conftest.py there).
The modules beside this file serve the compile checks (``triton_compile.py``,
``triton_cases_*.py``, ``gpu_codegen.py``, run as scripts too) and the real k-diffusion
(``kdiffusion_real.py``)."""
import os

import pytest
import torch

import diffaccel
from diffaccel import _ext
from diffaccel.backends import availability
from diffaccel.library import op

from .tolerance import (LAW_ATOL, LAW_MAX, assert_close_to_truth, draw_atol,  # noqa: F401  (re-exported)
                        to_float64)

SUPPORT = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(SUPPORT)
ROOT = os.path.dirname(TESTS)  # the repository

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def build_archs():
    """The GPU archs ("8.0", ...) the extension's CUDA kernels were built for: sm_80 and sm_90 by
    default (``make test``, CI); ``make gpu-check`` builds for the present GPU's arch only and
    names it in DIFFACCEL_GPU_CHECK_ARCH (benchmarks/gpu_check.py ``gpu_check_env``)."""
    one = os.environ.get("DIFFACCEL_GPU_CHECK_ARCH")
    return [one] if one else ["8.0", "9.0"]


def build_caps():
    """build_archs() as compute capabilities: [80, 90] by default."""
    return [int(a.replace(".", "")) for a in build_archs()]


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


def skip_without_extension(backend):
    """Skip the calling test when ``backend`` is a C++ one ("cpu", "cuda") and the extension does
    not load here."""
    if backend in ("cpu", "cuda") and _ext.load() is None:
        pytest.skip(_ext.error())


OPCHECKS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def opcheck(name, backend, args, without=()):
    """torch.library.opcheck of op ``name`` of ``backend`` (schema, fake, autograd registration,
    AOT dispatch: OPCHECKS, less ``without``); skipped where the C++ extension is missing."""
    skip_without_extension(backend)
    torch.library.opcheck(op(name, backend), args, test_utils=[t for t in OPCHECKS if t not in without])
