"""`make gpu-check` and its pieces: without a GPU it stops at once with a clear message; the
CUDA-graph capture of a 10-step sampling loop matches eager (on CPU the same static-buffer loop
runs as the 'replay'); the bench times every op and writes its report (tiny shapes on CPU)."""
import os
import re
import subprocess
import sys

import pytest
import torch

from support import ROOT  # noqa: E402
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import gpu_check  # noqa: E402

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                  reason="no CUDA device"))]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: make gpu-check would run")
def test_make_gpu_check_stops_without_a_gpu():
    r = subprocess.run(["make", "-s", "gpu-check", f"PY={sys.executable}", f"PYTHON={sys.executable}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "needs a CUDA GPU" in out and "Nothing was built or run" in out, out
    assert "build_ext" not in out and "pytest" not in out, out


def test_preflight_and_main_refuse_without_a_gpu(capsys):
    if torch.cuda.is_available():
        assert gpu_check.preflight() == 0
        return
    assert gpu_check.preflight() == 2
    assert gpu_check.main(["bench"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("device", DEVICES)
def test_captured_sampling_loop_matches_eager(device):
    xr, xe, lr, le = gpu_check.capture_vs_eager(device, steps=10)
    assert torch.isfinite(xr).all() and torch.isfinite(lr).all()
    assert (xr != 0).any()
    # the same kernels on the same inputs, reductions in a fixed order: identical bits
    assert torch.equal(xr, xe), float((xr - xe).abs().max())
    assert torch.equal(lr, le), float((lr - le).abs().max())


def test_bench_and_report_on_cpu(tmp_path):
    rows = gpu_check.bench_rows("cpu", quick=True, compile_ref=False, ops=("stroke_blur", "error_moments"))
    cases = {name for name, *_ in rows}
    assert any(c.startswith("stroke_blur B=1 ") for c in cases) and any("error_moments" in c for c in cases)
    labels = {label for _, label, *_ in rows}
    assert {"diffaccel[cpu]", "reference eager", "floor: copy same bytes"} <= labels, labels
    assert all(t > 0 and nbytes > 0 and tc > 0 for _, _, t, nbytes, tc in rows)
    text = gpu_check.format_report(rows, "cpu")
    assert "| diffaccel[cpu] |" in text and "of copy" in text
    assert text.count("## ") == len(cases)


def test_cuda_availability_follows_the_compiled_archs():
    from diffaccel.backends import arch_supported

    assert arch_supported("8.0;9.0+PTX", (8, 0))[0] and arch_supported("8.0;9.0+PTX", (8, 9))[0]
    assert arch_supported("8.0;9.0+PTX", (9, 0))[0]
    ok, why = arch_supported("8.0;9.0+PTX", (12, 0))  # newer GPU: the driver JITs the sm_90 PTX
    assert ok and "PTX" in why
    ok, why = arch_supported("8.0;9.0", (10, 0))  # no PTX: "no kernel image" -> not available
    assert not ok and "sm_100" in why and "TORCH_CUDA_ARCH_LIST" in why
    assert not arch_supported("8.0;9.0+PTX", (7, 5))[0]  # older than every build target
    assert not arch_supported("9.0", (8, 6))[0]


def test_value_checks_skip_while_a_cuda_graph_is_captured(monkeypatch):
    """Value checks read the device (a sync): skipped under capture, as under torch.compile."""
    import diffaccel
    from diffaccel import _validate

    x0 = torch.randn(2, 1, 8, 8)
    bad = torch.tensor([1.0, float("nan")])
    w = torch.full((2, 1), 0.3)

    def call(**kw):
        return diffaccel.stroke_noise(x0, bad, 1.0, scales=(2,), data_weights=w, noise_weights=w,
                                      seed=0, **kw)

    with pytest.raises(ValueError, match="alpha"):
        call()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert not _validate.eager()
    xt, _ = call(backend="reference")
    assert torch.isnan(xt[1]).all() and torch.isfinite(xt[0]).all()


def test_seed_is_filled_on_the_device():
    from diffaccel import _validate

    assert torch.equal(_validate.seeds(5, 3, "cpu"), torch.tensor([5]))
    assert torch.equal(_validate.seeds(2**64 - 1, 3, "cpu"), torch.tensor([-1]))


_COLLECT_PLUGIN = '''
import inspect, json, os, re
import pytest

ITEMS = []

def pytest_configure(config):
    from diffaccel import _ext
    _ext.cuda_archs = lambda: os.environ["DIFFACCEL_GPU_CHECK_ARCH"]  # a faked single-arch build

def pytest_collection_finish(session):
    import triton
    from diffaccel.kernels import step as KS
    out = {"interpret": os.environ.get("TRITON_INTERPRET"), "kernel": type(KS._sample_step_kernel).__name__,
           "jit": isinstance(KS._sample_step_kernel, triton.runtime.jit.JITFunction), "items": []}
    for item in session.items:
        try:
            src = inspect.getsource(item.function)
        except (OSError, TypeError, AttributeError):
            src = ""
        body = src.split(":", 1)[-1] if src.startswith("def ") else src
        out["items"].append({"id": item.nodeid, "skip": any(m.name in ("skip", "skipif") and
                             (m.name == "skip" or (m.args and m.args[0])) for m in item.iter_markers()),
                             "src": body})
    with open(os.environ["GPU_CHECK_COLLECT_OUT"], "w") as f:
        json.dump(out, f)
'''


def test_gpu_check_selection_fits_a_single_arch_build_and_compiled_triton(tmp_path):
    """The tests `make gpu-check` selects, collected as it runs them (its command and environment,
    a faked build for sm_90 only): none is parametrized on, or asserts, an arch the build lacks
    (two did, and under -x ended the run before any kernel test); Triton is compiled (the conftest
    honours TRITON_INTERPRET=0), and no Triton case on CPU tensors is left to run."""
    pytest.importorskip("triton")
    (tmp_path / "gpu_check_collect.py").write_text(_COLLECT_PLUGIN)
    out = tmp_path / "items.json"
    env = gpu_check.gpu_check_env("9.0")
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env["PYTHONPATH"]
    env["GPU_CHECK_COLLECT_OUT"] = str(out)
    cmd = gpu_check.pytest_command(collect_only=True) + ["-p", "gpu_check_collect"]
    assert "-x" not in cmd and "--exitfirst" not in cmd and "--maxfail" not in " ".join(cmd)
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    import json

    got = json.loads(out.read_text())
    assert got["interpret"] == "0" and got["jit"] and "Interpret" not in got["kernel"], got["kernel"]
    items = got["items"]
    assert len(items) > 50, [i["id"] for i in items]
    # parametrized on cap 80, or asserting the build's archs with literals (build_archs() and
    # build_caps() of tests/support follow the build)
    param = re.compile(r"\[(.*[-_])?(80|sm_?80|8\.0)([-_].*)?\]")
    body = re.compile(r"\{80, 90\}|\[80, 90\]|[\"']8\.0[\"'] in |[\"']sm_80[\"'] in ")
    bad = [i["id"] for i in items if param.search(i["id"]) or body.search(i["src"])]
    assert not bad, f"selected by make gpu-check but assume sm_80 on a sm_90-only build: {bad}"
    interp = [i["id"] for i in items if "triton-cpu" in i["id"] and not i["skip"]]
    assert not interp, f"Triton cases on CPU tensors selected without the interpreter: {interp}"
    assert any("triton-cuda" in i["id"] for i in items)  # compiled Triton's CUDA cases are in


def test_gpu_check_report_lists_every_verdict():
    steps = [("build for sm_90 only", "ok", 60.0, ""), ("case stroke_means_no_hang", "FAILED", 180.0, "TIMED OUT")]
    tests = [("tests.ops.stroke.test_x::test_a[cuda]", "passed", ""),
             ("tests.ops.stroke.test_x::test_b[cuda]", "FAILED", "assert 1 == 2")]
    text = gpu_check.format_check_report(steps, tests, 240.0)
    for name, verdict, *_ in steps + tests:
        assert name in text and verdict in text
    assert "total 240 s" in text and set(gpu_check.CASES) >= {"stroke_means_no_hang", "triton_step_d1_seeds",
                                                             "capture_fresh_shape", "logp_batch_invariance"}
