"""The properties that decide GPU speed, checked from what the compilers emit (no GPU needed).

For every CUDA kernel built into diffaccel/_C*.so (sm_80 and sm_90 SASS) and every Triton kernel
at every launch configuration its launcher can pick (compiled for sm_80 and sm_90):

- no spills (no local memory; no stack beyond the 32 bytes of cosf's slow-path buffer);
- registers and shared memory that leave room for at least 2 blocks per SM at the launch size;
- no 64-bit integer division or remainder (only kernels instantiated for 64-bit indices, used
  for tensors of 2^31 elements or more, may have them);
- the fused stroke noising: one global load of x0 and one Philox draw per element;
- the CUDA step: 128-bit loads of x and of every model output in float32 and bfloat16.

And the launch grids for a 132-SM (H100) and a 108-SM (A100) GPU at the benchmark shapes, B = 1
included: at least 4 blocks per SM, or one unit of work per thread when the tensor is too small.
The table of every kernel's registers, spills and shared memory is printed (tests/support/gpu_codegen.py
prints it on its own too).
"""
import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest

from support import gpu_codegen as G
from diffaccel import _ext

from support import ROOT, build_caps  # noqa: E402
SM_COUNTS = (132, 108)
LIBRARY_STACK = 32  # cosf's Payne-Hanek buffer (a library slow path, never a spill)


def _so():
    so = glob.glob(os.path.join(ROOT, "diffaccel", "_C*.so"))
    return so[0] if so else None


needs_cuda_build = pytest.mark.skipif(
    _so() is None or _ext.load() is None or not _ext.with_cuda() or G.tool("cuobjdump") is None
    or G.tool("nvdisasm") is None or shutil.which("c++filt") is None,
    reason="diffaccel._C has no CUDA kernels, or cuobjdump/nvdisasm/c++filt missing")


@pytest.fixture(scope="module")
def cuda_all():
    return G.cuda_kernels(_so())


@pytest.fixture(scope="module")
def cuda(cuda_all):
    return cuda_all[0]


def _sass(cuda_all, cap, pick):
    """{short name: SASS} of the kernels of sm_`cap` whose short name satisfies pick."""
    rows = [r for r in cuda_all[0] if r["cap"] == cap and pick(r["name"])]
    text = cuda_all[1].sass(cap, [r["mangled"] for r in rows])
    return {r["name"]: text[r["mangled"]] for r in rows}


@pytest.fixture(scope="module")
def triton_rows():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "support", "gpu_codegen.py"), "--triton-json"],
                       capture_output=True, text=True, env=env, timeout=1200)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _blocks(r):
    return G.blocks_per_sm(r["regs"], r["threads"], r["shared"], r["cap"])


def _idx64(name):
    """A kernel instantiated for 64-bit indices (only launched for >= 2^31 elements)."""
    return "unsigned long" in name


@needs_cuda_build
def test_print_cuda_table(cuda, capsys):
    with capsys.disabled():
        print("\n" + G.format_table([dict(r, name="cuda " + r["name"]) for r in cuda]))


# ------------------------------------------------------------------------------------- CUDA

@needs_cuda_build
def test_cuda_every_kernel_is_seen_for_both_archs(cuda):
    assert {r["cap"] for r in cuda} == set(build_caps())  # make gpu-check: only the GPU's
    bases = {r["base"] for r in cuda}
    assert {"stroke_noise_tile_kernel", "stroke_blur_tile_kernel", "step_main_kernel",
            "step_finish_kernel", "error_moments_kernel", "moments_finish_kernel"} <= bases, bases
    for r in cuda:
        assert r["found"], f"no code found for {r['name']} sm_{r['cap']}"


@needs_cuda_build
def test_cuda_no_spills_and_two_blocks_per_sm(cuda):
    bad = [f"{r['name']} sm_{r['cap']}: regs {r['regs']} x {r['threads']} threads, local {r['local']}, "
           f"stack {r['stack']}, smem {r['shared']} -> {_blocks(r)} blocks/SM"
           for r in cuda if r["local"] or r["stack"] > LIBRARY_STACK or _blocks(r) < 2]
    assert not bad, "\n".join(bad)


@needs_cuda_build
def test_cuda_no_64bit_division(cuda):
    """nvcc emits 64-bit division as calls to $__internal_N_$__cuda_sm20_div_s64 (and rem_, _u64)
    subroutines placed in the calling kernel's section; only 64-bit-index instantiations may
    have one."""
    assert any(r["div64"] for r in cuda if _idx64(r["name"])), "the detector found nothing at all"
    bad = [f"{r['name']} sm_{r['cap']}: {r['div64']}" for r in cuda if r["div64"] and not _idx64(r["name"])]
    assert not bad, "64-bit integer division in:\n" + "\n".join(bad)


def _philox_count(sass):
    """Philox rounds multiply by 0xD2511F53, which the SASS carries as itself or negated
    (0x2daee0ad = 2^32 - 0xD2511F53); the count is proportional to the draws in the code."""
    return len(re.findall(r"0xd2511f53|0x2daee0ad", sass, re.IGNORECASE))


@needs_cuda_build
@pytest.mark.parametrize("cap", build_caps())
def test_cuda_fused_stroke_noise_reads_x0_once_draws_once(cuda_all, cap):
    """The one-pass kernel (the only one the op launches for power-of-two scales <= 64): its load
    loop (not unrolled: one element per iteration) has one 16-bit load (x0) and as much Philox
    code as the noise kernel, whose loop draws once per element with the same draw_any; its
    output loop stores x_t and the target (16-bit) together."""
    names = {r["name"] for r in cuda_all[0] if r["cap"] == cap}
    assert "stroke_noise_tile_kernel<fp16>" in names, "no one-pass stroke_noise kernel in the build"
    one = "noise_kernel<fp16, unsigned int>"
    sass = _sass(cuda_all, cap, lambda n: n in ("stroke_noise_tile_kernel<fp16>", one))
    tile = sass["stroke_noise_tile_kernel<fp16>"]
    one_draw = _philox_count(sass[one])
    assert one_draw >= 10
    assert _philox_count(tile) == one_draw, (_philox_count(tile), one_draw)
    assert len(re.findall(r"LDG\.E\.U16", tile)) == 1
    st = len(re.findall(r"STG\.E\.U16", tile))  # the output loop may be unrolled
    assert st >= 2 and st % 2 == 0, st


@needs_cuda_build
@pytest.mark.parametrize("cap", build_caps())
def test_cuda_step_uses_128bit_loads(cuda_all, cap):
    """float32 and bfloat16, K = 1, 2 and 8 (reading every K's SASS would take a minute); the y
    line's variant (x0 beside the step) at K = 1 and 3."""
    ks = [r["name"] for r in cuda_all[0] if r["base"] == "step_main_kernel" and r["cap"] == cap]
    assert len(ks) == 3 * 9 * 2, ks  # three dtypes, K = 0..8, with and without the y line
    want = [f"step_main_kernel<{dt}, {K}, false>" for dt in ("float", "bf16") for K in (1, 2, 8)]
    want += [f"step_main_kernel<{dt}, {K}, true>" for dt in ("float", "bf16") for K in (1, 3)]
    sass = _sass(cuda_all, cap, lambda n: n in want)
    assert sorted(sass) == sorted(want)
    for name, text in sass.items():
        K = int(re.search(r",\s*(\d+),", name).group(1))
        y = name.endswith("true>")
        lds = len(re.findall(r"LDG\.E\.128", text))
        sts = len(re.findall(r"STG\.E\.128", text))
        # x, z and each model output in the step loop; probes and vjps in the Hutchinson loop;
        # x_new (and y_out on the y line) stored
        assert lds >= K + 2 and sts >= 2 + y, f"{name} sm_{cap}: {lds} LDG.128, {sts} STG.128"


# -------------------------------------------------------------------------------- launch grids

def _C():
    mod = _ext.load()
    if mod is None or not hasattr(mod, "launch_split_chunk"):
        pytest.fail("diffaccel._C has no launch_* functions (rebuild the extension)")
    return mod


STEP_SHAPES = [(64, 4 * 64 * 64), (1, 4 * 64 * 64), (1, 4 * 128 * 128), (16, 3 * 32 * 32)]
MOMENT_SHAPES = [(256, 4 * 64 * 64), (1, 4 * 64 * 64)]
STROKE_SHAPES = [(64, 4, 64, 64), (64, 4, 128, 128), (1, 4, 64, 64), (1, 4, 128, 128)]


def _fills(blocks, sm, n, unit):
    """>= 4 blocks per SM, or every block at the smallest useful size (one unit per thread)."""
    return blocks >= min(4 * sm, math.ceil(n / unit))


@pytest.mark.parametrize("sm", SM_COUNTS)
def test_cuda_grids_fill_the_gpu(sm):
    C = _C()
    threads = C.launch_threads
    for B, D in STEP_SHAPES + MOMENT_SHAPES:
        for elem in (4, 2):
            vec = C.launch_vec_width(elem)
            chunk = C.launch_split_chunk(B, D, vec, sm)
            splits = C.launch_splits(D, chunk)
            assert chunk % (threads * vec) == 0 and splits * chunk >= D > (splits - 1) * chunk
            assert splits <= 65535
            blocks = B * splits
            assert _fills(blocks, sm, B * D, threads * vec), (B, D, elem, sm, blocks)
    for B, C_, H, W in STROKE_SHAPES:
        T = C.launch_stroke_tile([2, 4, 8])
        assert T == 16
        blocks = C.launch_stroke_tile_blocks(B * C_, H, W, T)
        assert _fills(blocks, sm, B * C_ * H * W, threads), (B, C_, H, W, blocks)


def test_cuda_tile_choice():
    C = _C()
    assert C.launch_stroke_tile([2]) == 16 and C.launch_stroke_tile([2, 4, 8, 16, 32]) == 32
    assert C.launch_stroke_tile([64, 2]) == 64
    assert C.launch_stroke_tile([3, 6]) == 0 and C.launch_stroke_tile([128]) == 0


@pytest.mark.parametrize("sm", SM_COUNTS)
def test_triton_grids_fill_the_gpu(sm):
    pytest.importorskip("triton")
    from diffaccel.kernels import step as S
    from diffaccel.kernels import vrg as V

    for B, D in STEP_SHAPES:
        for K in (1, 2, 8):
            block, splits, chunk, warps = S.gpu_plan(B, D, K, sm)
            assert chunk % block == 0 and splits * chunk >= D > (splits - 1) * chunk
            assert _fills(B * splits, sm, B * D, S.min_program_elems(warps)), (B, D, K, sm, splits)
    for B, D in MOMENT_SHAPES:
        block, chunks, chunk = V.moments_plan(B, D, sm)
        assert chunks * chunk >= D > (chunks - 1) * chunk
        assert _fills(B * chunks, sm, B * D, V.MOMENT_MIN_BLOCK), (B, D, sm, chunks)


# ----------------------------------------------------------------------------------- Triton

def test_triton_no_spills_and_two_programs_per_sm(triton_rows):
    assert {r["cap"] for r in triton_rows} == {80, 90}
    bad = [f"{r['kernel']}[{r['variant']}] sm_{r['cap']}: {r['regs']} regs x {r['threads']} threads, "
           f"local {r['local']}, stack {r['stack']}, smem {r['shared']} -> {_blocks(r)} programs/SM"
           for r in triton_rows if r["local"] or r["stack"] > LIBRARY_STACK or _blocks(r) < 2]
    assert not bad, "\n".join(bad)


def test_triton_no_64bit_division(triton_rows):
    bad = [f"{r['kernel']}[{r['variant']}] sm_{r['cap']}: {r['ptx_div64']}"
           for r in triton_rows if r["ptx_div64"]]
    assert not bad, "div/rem.s64 in:\n" + "\n".join(bad)


def test_triton_fused_stroke_noise_reads_x0_once_draws_once(triton_rows):
    """fp16 tile kernel: 16-bit global loads = elements per thread (x0 only is 16-bit), and as
    many Philox multiplies per element as the one-draw noise kernel."""
    from diffaccel.kernels import random as R

    noise = {r["cap"]: r for r in triton_rows if r["kernel"] == "noise"}
    tiles = [r for r in triton_rows if r["kernel"] == "stroke_noise_tile" and r["variant"].startswith("fp16")]
    assert tiles
    for r in tiles:
        T = r["constexprs"]["T"]
        per_thread = T * T // r["threads"]
        n = noise[r["cap"]]
        per_draw = n["ptx_mulhi"] / (R.BLOCK // n["threads"])
        ld16 = sum(1 for i in r["ptx_ld"] if i.endswith(".b16"))
        st16 = sum(1 for i in r["ptx_st"] if i.endswith(".b16"))
        assert ld16 == per_thread and st16 == 2 * per_thread, (r["variant"], ld16, st16, per_thread)
        assert round(r["ptx_mulhi"] / per_thread / per_draw) == 1, (r["variant"], r["ptx_mulhi"], per_draw)


def test_print_triton_table(triton_rows, capsys):
    rows = [dict(r, name=f"triton {r['kernel']}[{r['variant']}]") for r in triton_rows]
    with capsys.disabled():
        print("\n" + G.format_table(rows))
