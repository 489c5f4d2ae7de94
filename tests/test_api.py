"""Public API behaviour: backend choice, info(), lazy loading, the CLI and the demo's sampling
part (each op's named errors, float64 and empty batches: tests/ops/<family>/)."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import diffaccel
from diffaccel import BackendUnavailable, _ext
from diffaccel.backends import requested, select

needs_ext = pytest.mark.skipif(_ext.load() is None, reason=f"{_ext.error()}")


def _x(B=2):
    return torch.randn(B, 3, 8, 8)


def _w(B=2, J=2):
    return torch.full((B, J), 0.2)


# ------------------------------------------------------------------------------ selection

@needs_ext
def test_auto_picks_cpu_for_cpu_tensors(monkeypatch):
    monkeypatch.delenv("DIFFACCEL_BACKEND", raising=False)
    assert select(None, "cpu", "stroke_blur") == "cpu"


def test_precedence_argument_context_environment(monkeypatch):
    monkeypatch.setenv("DIFFACCEL_BACKEND", "reference")
    assert requested() == "reference"
    with diffaccel.use_backend("triton"):
        assert requested() == "triton"
        with diffaccel.use_backend("reference"):
            assert requested() == "reference"
        assert requested("cpu") == "cpu"
    assert requested() == "reference"
    monkeypatch.setenv("DIFFACCEL_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="backend"):
        requested()


def test_named_unavailable_backend_raises_with_reason():
    with pytest.raises(BackendUnavailable, match="CUDA tensors"):
        diffaccel.stroke_blur(_x(), _w(), (2, 4), backend="cuda")
    with pytest.raises(ValueError, match="backend"):
        diffaccel.stroke_blur(_x(), _w(), (2, 4), backend="fast")


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    from diffaccel.backends import availability

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    ok, why = availability("triton", "cpu")
    assert not ok and "TRITON_INTERPRET" in why


@pytest.mark.parametrize("version", ["3.0.0", "3.3.1", "3.3.0+git1234abcd", ""])
def test_triton_older_than_3_4_is_unavailable(monkeypatch, version):
    """Before Triton 3.4, tl.randint4x at a 64-bit offset ran another Philox variant: the
    Triton noise would be another stream. The backend says so instead of drawing it."""
    triton = pytest.importorskip("triton")
    from diffaccel.backends import availability, clear_cache

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton, "__version__", version)
    clear_cache()
    try:
        ok, why = availability("triton", "cpu", "noise")
        assert not ok and "3.4" in why and "Philox" in why
        with pytest.raises(BackendUnavailable, match="3.4"):
            diffaccel.noise((2, 3), seed=1, backend="triton")
        monkeypatch.setattr(triton, "__version__", "3.4.0")
        assert availability("triton", "cpu", "noise")[0]
    finally:
        monkeypatch.undo()
        clear_cache()


def test_triton_extra_requires_3_4():
    text = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml")).read()
    assert 'triton = ["triton>=3.4"]' in text


def test_context_manager_is_used(monkeypatch):
    x, w = _x(), _w()
    with diffaccel.use_backend("reference"):
        a = diffaccel.stroke_blur(x, w, (2, 4))
    b = diffaccel.stroke_blur(x, w, (2, 4), backend="reference")
    assert torch.equal(a, b)


# -------------------------------------------------------------------------- info and loading

def test_info_reports_versions_and_backends():
    d = diffaccel.info()
    assert d["torch"] == torch.__version__
    assert set(d["backends"]) == set(diffaccel.BACKENDS)
    for name, per_dev in d["backends"].items():
        for dev in ("cpu", "cuda"):
            assert isinstance(per_dev[dev]["available"], bool) and per_dev[dev]["reason"]
    assert d["backends"]["reference"]["cpu"]["available"]
    json.dumps(d)


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_import_loads_and_compiles_nothing():
    # (torch itself imports triton; what matters is that our kernels and extension are not loaded)
    r = _run("import sys, diffaccel; print('diffaccel._C' in sys.modules, 'diffaccel.kernels' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]


def test_works_without_the_extension():
    code = ("import sys; sys.modules['diffaccel._C'] = None\n"
            "import torch, diffaccel\n"
            "x = torch.randn(2, 1, 5, 5); w = torch.full((2, 1), 0.3)\n"
            "y = diffaccel.stroke_blur(x, w, (2,))\n"
            "print(diffaccel.info()['backends']['cpu']['cpu']['available'])\n"
            "try:\n    diffaccel.stroke_blur(x, w, (2,), backend='cpu')\nexcept diffaccel.BackendUnavailable as e:\n"
            "    print('unavailable:', e)\n")
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert "False" in r.stdout and "unavailable:" in r.stdout and "not loadable" in r.stdout


def test_cli_info():
    r = subprocess.run([sys.executable, "-m", "diffaccel", "info"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for word in ("torch", "triton", "reference", "cpu", "cuda", "CUDA archs"):
        assert word in r.stdout


def test_demo_sampling_part_runs_and_checks_against_exact(capsys):
    """The demo's sampling part at toy sizes: one line per backend, each error finite and small
    enough to show the check is real (log_likelihood within a few nats of the exact log p)."""
    from diffaccel import demo

    demo.sampling("cpu", d=16, d_sde=8, batch=4, steps=40)
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if "log_likelihood dopri5" in ln]
    assert {ln.split()[0] for ln in lines} >= {"reference", "cpu"}, out
    for ln in lines:
        err = float(ln.rsplit("mean |error|", 1)[1].split()[0])
        assert math.isfinite(err) and err < 2.0, ln
