"""The fused step's Triton kernels (the split step and the per-sample finish) compile for sm_80
and sm_90 without a GPU (the interpreter accepts programs the real compiler rejects), with no
atomics."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

_SCRIPT = r'''
import json, re, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from diffaccel.kernels import step as S

cap, dtype, K, dist, hutch = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
y = sys.argv[6] == "1"
sig = {}
if dtype == "finish":  # the reduction kernel: float64 accumulators (dist, hutch unused)
    k = S._step_finish_kernel
    sig = {"partial_ptr": "*fp32", "coef_ptr": "*fp32", "logp_ptr": "*fp64", "var_ptr": "*fp64",
           "NS": "i32", "P": "i32", "W": "i32", "ycoef_ptr": "*fp32", "YW": "i32",
           "TRACK_VAR": "constexpr", "BLOCK_S": "constexpr", "Y": "constexpr"}
    consts = dict(TRACK_VAR=K > 0, BLOCK_S=S.SPLIT_BLOCK, Y=y)
else:
    k = S._sample_step_kernel
    for name in k.arg_names:
        sig[name] = "constexpr"
    ptrs = ["x_ptr", "out_ptr", "z_ptr", "probes_ptr", "probes_out_ptr"] + [f"m{i}" for i in range(8)] + [f"w{i}" for i in range(8)]
    for name in ptrs:
        sig[name] = "*" + dtype
    sig.update({"coef_ptr": "*fp32", "seeds_ptr": "*i64", "partial_ptr": "*fp32", "B": "i32", "D": "i32",
                "CHUNK": "i32", "offset": "i64", "probe_offset": "i64", "P": "i32", "P_out": "i32", "W": "i32",
                "ycoef_ptr": "*fp32", "y_out_ptr": "*" + dtype, "clip": "fp32"})
    consts = dict(K=K, DIST=dist, HAS_Z=False, TRACK=True, HUTCH=hutch, PROBE_DIST=3,
                  PER_SAMPLE=True, BLOCK=1024, Y=y, Y_OUT=y, CLIP=y)
ck = triton.compile(ASTSource(fn=k, signature=sig, constexprs=consts), target=GPUTarget("cuda", cap, 32))
ptx = ck.asm["ptx"]
print(json.dumps({"ptx_len": len(ptx), "cubin": len(ck.asm.get("cubin", b"")),
                  "ld_global": len(re.findall(r"ld\.global", ptx)), "st_global": len(re.findall(r"st\.global", ptx)),
                  "atom": len(re.findall(r"\batom\.", ptx))}))
'''


def _compile(cap, dtype="fp32", K=2, dist=0, hutch=True, y=False):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", _SCRIPT, str(cap), dtype, str(K), str(dist), "1" if hutch else "0",
                        "1" if y else "0"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("cap", [80, 90])
def test_step_kernel_compiles(cap):
    info = _compile(cap)
    assert info["ptx_len"] > 1000 and info["cubin"] > 0
    assert info["atom"] == 0  # partial sums in their own scratch slots: no atomics
    assert info["st_global"] > 0


@pytest.mark.parametrize("cap", [80, 90])
def test_step_finish_kernel_compiles(cap):
    """The per-sample reduction of the partial sums, with and without the variance accumulator."""
    for track_var, y in ((1, False), (0, False), (1, True)):
        info = _compile(cap, "finish", K=track_var, y=y)
        assert info["cubin"] > 0 and info["atom"] == 0 and info["st_global"] > 0


def test_step_kernel_variants_compile():
    """Half storage, eight model outputs, every increment law, no Hutchinson term."""
    for dtype, K, dist, hutch in (("fp16", 8, 1, True), ("bf16", 1, 3, False), ("fp32", 0, -1, False)):
        info = _compile(90, dtype, K, dist, hutch)
        assert info["cubin"] > 0


@pytest.mark.parametrize("cap", [80, 90])
def test_step_kernel_y_line_compiles(cap):
    """The y line (clamped, stored, fed into the step; its two extra sums): more global stores
    than the plain kernel (y_out, two more partial sums), no atomics."""
    plain = _compile(cap, "fp32", 1, 0, False)
    with_y = _compile(cap, "fp32", 1, 0, False, y=True)
    assert with_y["cubin"] > 0 and with_y["atom"] == 0
    assert with_y["st_global"] > plain["st_global"] and with_y["ld_global"] >= plain["ld_global"]
