"""Every Triton kernel compiles for sm_80 and sm_90 (the interpreter accepts programs the real
compiler rejects), and the PTX of the fused stroke-noise kernels loads x0 once and stores each
output once per element."""
import json
import os
import subprocess
import sys

import pytest

from support import SUPPORT as HERE  # noqa: E402  (triton_compile.py is there)


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, os.path.join(HERE, "triton_compile.py"), "80", "90"],
                       capture_output=True, text=True, env=env, timeout=1500)
    assert r.returncode == 0, r.stderr[-4000:]
    recs = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert recs, r.stderr[-4000:]
    return recs


def test_every_kernel_compiles_for_sm80_and_sm90(compiled):
    bad = [f"{r['kernel']}[{r['variant']}] sm_{r['cap']}: {r['error']}" for r in compiled if not r["ok"]]
    assert not bad, "\n".join(bad)
    assert {r["cap"] for r in compiled} == {80, 90}
    names = {r["kernel"] for r in compiled}
    assert {"noise", "philox", "stroke_blur_tile", "stroke_noise_tile", "stroke_blur", "stroke_noise",
            "block_means"} <= names


def _ptx_counts(kernel, variant):
    """(16-bit global loads, 16-bit global stores) in the fp16 build of a kernel: in the fp16
    variant only x0 / the outputs are 16-bit, so these count exactly the tensor traffic."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = f"""
import re, sys, json
sys.path.insert(0, {HERE!r})
import triton_compile as tc
for k, v, fn, sig, cx in tc.stroke_cases():
    if k == {kernel!r} and v == {variant!r}:
        ptx = tc.compile_one(fn, sig, cx, 90).asm["ptx"]
        lds = re.findall(r"\\bld\\.global[\\.\\w]*", ptx); sts = re.findall(r"\\bst\\.global[\\.\\w]*", ptx)
        print(json.dumps([sum("16" in l for l in lds), sum("16" in s for s in sts)]))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kernel,variant,elems_per_thread", [
    # tile path: T = 16, a 16 x 16 tile over 4 warps -> 2 elements per thread
    ("stroke_noise_tile", "fp16,target=2", 16 * 16 // 128),
    # general path: BLOCK = 1024 over 4 warps -> 8 elements per thread
    ("stroke_noise", "fp16", 1024 // 128),
])
def test_fused_noise_kernel_reads_x0_once_writes_each_output_once(kernel, variant, elems_per_thread):
    loads, stores = _ptx_counts(kernel, variant)
    assert loads == elems_per_thread, f"{loads} 16-bit loads of x0 per thread, expected {elems_per_thread}"
    assert stores == 2 * elems_per_thread, f"{stores} 16-bit stores per thread, expected {2 * elems_per_thread}"


def test_every_kernel_compiles_with_each_integer_argument_equal_to_1():
    """At a real launch the JIT turns an integer argument equal to 1 into a constexpr (a Python
    int inside the kernel): e.g. the fused step with D == 1 and per-sample seeds. The
    interpreter never does, so only the compiler (sm_90) shows such a failure."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, os.path.join(HERE, "triton_compile.py"), "--ones", "90"],
                       capture_output=True, text=True, env=env, timeout=1500)
    assert r.returncode == 0, r.stderr[-4000:]
    recs = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert {"sample_step", "noise", "block_means", "stroke_noise", "vrg_error_moments"} <= {
        r["kernel"] for r in recs}
    assert any(r["kernel"] == "sample_step" and r["variant"].endswith(",D=1") for r in recs)
    bad = [f"{r['kernel']}[{r['variant']}]: {r['error'][-600:]}" for r in recs if not r["ok"]]
    assert not bad, "\n".join(bad)


def test_no_kernel_uses_atomics(compiled):
    """Every reduction goes through per-program slots summed in a fixed order, so the results'
    bits do not depend on the order in which programs run (float64 atomics in the error
    moments did)."""
    names = {r["kernel"] for r in compiled}
    assert {"vrg_error_moments", "vrg_moments_finish", "sample_step", "step_finish"} <= names
    bad = [f"{r['kernel']}[{r['variant']}] sm_{r['cap']}: {r['atom']} atom." for r in compiled
           if r["ok"] and r["atom"]]
    assert not bad, "\n".join(bad)
