"""What the compilers emit for every GPU kernel of diffaccel, read without a GPU.

- CUDA: the kernels built into diffaccel/_C*.so, per architecture: resources from
  ``cuobjdump -res-usage`` and SASS from ``nvdisasm`` on the extracted cubins (the toolkit's tools,
  or the copies Triton ships in ``triton/backends/nvidia/bin``).
- Triton: every kernel at every launch configuration its launcher can pick (tile side and warps,
  step block and warps, ...), compiled with ``triton.compile`` for sm_80 and sm_90; registers and
  spills from ``cuobjdump -res-usage`` on the cubin, instruction counts from the PTX.

``python tests/support/gpu_codegen.py`` prints the table of every kernel's registers, spills, stack and
shared memory (run it without TRITON_INTERPRET). tests/build/test_gpu_codegen.py asserts on the same data.
"""
import concurrent.futures
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))  # the repository (this file: tests/support/)
ARCHS = (80, 90)
REGS_PER_SM = 65536
SMEM_PER_SM = {80: 164 * 1024, 90: 228 * 1024}
MAX_WARPS_PER_SM = {80: 64, 90: 64}


def tool(name):
    """Path of a CUDA binary tool (cuobjdump, nvdisasm), or None."""
    for d in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if d and os.path.exists(os.path.join(d, "bin", name)):
            return os.path.join(d, "bin", name)
    if shutil.which(name):
        return shutil.which(name)
    try:
        import triton
        p = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
        return p if os.path.exists(p) else None
    except ImportError:
        return None


def blocks_per_sm(regs, threads, shared, cap):
    """Resident blocks per SM allowed by registers (allocated per warp in units of 256), shared
    memory and the warp limit."""
    warps = -(-threads // 32)
    per_warp = -(-regs * 32 // 256) * 256
    by_regs = REGS_PER_SM // max(per_warp * warps, 1)
    by_smem = SMEM_PER_SM[cap] // shared if shared else 10**9
    return min(by_regs, by_smem, MAX_WARPS_PER_SM[cap] // warps)


# ------------------------------------------------------------------------------------- CUDA

_RES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def cuda_resources(so):
    """{(cap, mangled name): {"regs", "stack", "shared", "local"}} of every kernel in the .so."""
    out = subprocess.run([tool("cuobjdump"), "-res-usage", so], capture_output=True, text=True,
                         check=True).stdout
    res, cap, name = {}, None, None
    for line in out.splitlines():
        m = re.match(r"arch = sm_(\d+)", line.strip())
        if m:
            cap = int(m.group(1))
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            name = m.group(1)
        m = _RES.search(line)
        if m and name:
            res[(cap, name)] = dict(zip(("regs", "stack", "shared", "local"), map(int, m.groups())))
            name = None
    return res


def elf_symbols(path):
    """[(index, name, section name)] of an ELF64 file's symbol table (a cubin)."""
    import struct

    data = open(path, "rb").read()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    secs = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]

    def cstr(off):
        return data[off:data.index(b"\0", off)].decode()

    shstr = secs[shstrndx][4]
    names = [cstr(shstr + s[0]) for s in secs]
    out = []
    for s in secs:
        if s[1] != 2:  # SHT_SYMTAB
            continue
        strtab = secs[s[6]][4]
        for i in range(s[5] // 24):
            st_name, _info, _other, shndx = struct.unpack_from("<IBBH", data, s[4] + 24 * i)
            out.append((i, cstr(strtab + st_name), names[shndx] if shndx < len(names) else ""))
    return out


class CudaBinary:
    """The cubins of a .so: 64-bit division subroutines per kernel (from the symbol tables, where
    nvcc's $__internal_N_$__cuda_sm20_div_s64 copies live in the calling kernel's section), and
    SASS of chosen kernels (nvdisasm, only those functions: the step cubin is large)."""

    def __init__(self, so):
        self.tmp = tempfile.mkdtemp()
        subprocess.run([tool("cuobjdump"), "-xelf", "all", os.path.abspath(so)], cwd=self.tmp,
                       capture_output=True, check=True)
        self.where = {}  # (cap, kernel) -> (cubin, symbol index)
        self.div64 = {}  # (cap, kernel) -> [subroutine names]
        for cubin in glob.glob(os.path.join(self.tmp, "*.cubin")):
            cap = int(re.search(r"sm_(\d+)", cubin).group(1))
            for idx, name, sec in elf_symbols(cubin):
                if sec == ".text." + name:
                    self.where[(cap, name)] = (cubin, idx)
                if re.search(r"(?:div|rem)_[su]64", name) and sec.startswith(".text."):
                    self.div64.setdefault((cap, sec[len(".text."):]), []).append(name)

    def sass(self, cap, names):
        """{name: SASS} of kernels `names` for sm_`cap` (one nvdisasm run per cubin)."""
        by_cubin = {}
        for n in names:
            cubin, idx = self.where[(cap, n)]
            by_cubin.setdefault(cubin, []).append(str(idx))
        out = {}
        for cubin, idxs in by_cubin.items():
            text = subprocess.run([tool("nvdisasm"), "-c", "-fun", ",".join(idxs), cubin],
                                  capture_output=True, text=True, check=True).stdout
            for part in re.split(r"\n\s*\.section\s+\.text\.", text)[1:]:
                out[part.split(",", 1)[0].strip()] = part
        return out


def demangle(names):
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                             check=True).stdout.splitlines()
        return dict(zip(names, out))
    except (OSError, subprocess.CalledProcessError):
        return {n: n for n in names}


def short_name(demangled):
    """"stroke_noise_tile_kernel<float>" from a demangled kernel signature."""
    s = demangled.replace("(anonymous namespace)::", "").replace("diffaccel::cuda::", "")
    s = re.sub(r"\(.*$", "", s)
    s = s.replace("c10::BFloat16", "bf16").replace("c10::Half", "fp16")
    return re.sub(r"^void ", "", s)


# CUDA launch sizes (threads per block); the rest use 256 (launch_grid.h kThreads).
CUDA_THREADS = {"step_finish_kernel": 128, "moments_finish_kernel": 128, "cumulative_error_kernel": 128}
# dynamic shared memory a tile kernel may get (csrc/cuda/stroke.cu tile_launch refuses more)
CUDA_TILE_DYN_SMEM = 48 * 1024


def cuda_kernels(so):
    """([{"name", "base", "mangled", "cap", "regs", "stack", "shared", "local", "threads",
    "div64"}], CudaBinary) of every kernel in the .so."""
    res = cuda_resources(so)
    binary = CudaBinary(so)
    names = demangle(sorted({n for _, n in res}))
    out = []
    for (cap, name), r in sorted(res.items()):
        short = short_name(names[name])
        base = short.split("<")[0]
        shared = r["shared"] + (CUDA_TILE_DYN_SMEM if "tile_kernel" in base else 0)
        out.append(dict(r, name=short, base=base, mangled=name, cap=cap, shared=shared,
                        threads=CUDA_THREADS.get(base, 256), div64=binary.div64.get((cap, name), []),
                        found=(cap, name) in binary.where))
    return out, binary


# ----------------------------------------------------------------------------------- Triton

def triton_configs():
    """Every (kernel, variant, fn, signature, constexprs, num_warps) the launchers can pick,
    taking for each the worst case of the choices that do not change the launch shape (the
    normal law, the v target, the most scales)."""
    from diffaccel.kernels import random as R
    from diffaccel.kernels import step as S
    from diffaccel.kernels import stroke as K
    from diffaccel.kernels import vrg as V
    from triton_cases_step import step_signature  # (beside this file)

    out = []
    seeds = {"seeds_ptr": "*i64"}
    out.append(("noise", "fp32", R._noise_kernel,
                {**seeds, "out_ptr": "*fp32", "N": "i32", "D": "i32", "offset": "i64"},
                {"DIST": 0, "PER_SAMPLE": False, "BLOCK": R.BLOCK, "IDX64": False}, 4))
    out.append(("philox", "", R._philox_kernel,
                {**seeds, "out_ptr": "*i64", "N": "i32", "D": "i32", "offset": "i64"},
                {"PER_SAMPLE": True, "BLOCK": R.BLOCK, "IDX64": False}, 4))
    # tile path: every tile side the launcher picks, with its warps
    sides = sorted({K.tile_config(ks)[1] for ks in ((2,), (2, 4), (2, 4, 8), (2, 4, 8, 16), (4, 8, 16, 32),
                                                     (8, 16, 32, 64)) if K.tile_config(ks)})
    for T in sides:
        ks = tuple(k for k in (2, 4, 8, 16, 32, 64) if k <= T)[-K.MAX_TILE_SCALES:]
        ks, T, warps = K.tile_config(ks)
        kc = dict(zip(("K1", "K2", "K3", "K4"), ks), T=T)
        for dt in ("fp32", "fp16"):
            out.append(("stroke_noise_tile", f"{dt},T={T}", K._stroke_noise_tile_kernel,
                        {"x0_ptr": f"*{dt}", "alpha_ptr": "*fp32", "sigma_ptr": "*fp32",
                         "wx_ptr": "*fp32", "we_ptr": "*fp32", "seeds_ptr": "*i64",
                         "xt_ptr": f"*{dt}", "tgt_ptr": f"*{dt}", "C": "i32", "H": "i32",
                         "W": "i32", "J": "i32", "offset": "i64"},
                        {**kc, "DIST": 0, "PER_SAMPLE": True, "TARGET": 2}, warps))
        out.append(("stroke_blur_tile", f"fp32,T={T}", K._stroke_blur_tile_kernel,
                    {"x_ptr": "*fp32", "w_ptr": "*fp32", "y_ptr": "*fp32", "C": "i32", "H": "i32",
                     "W": "i32", "J": "i32"}, kc, warps))
    # general path
    mean_sig = {"x_ptr": "*fp32", "seeds_ptr": "*i64", "means_ptr": "*fp32", "n_items": "i32",
                "C": "i32", "H": "i32", "W": "i32", "K": "i32", "nw": "i32", "total": "i32",
                "moff": "i32", "offset": "i64"}
    for noise in (False, True):
        out.append(("block_means", "noise" if noise else "x", K._block_means_kernel, mean_sig,
                    {"FROM_NOISE": noise, "DIST": 0, "PER_SAMPLE": True, "BLOCK": K.MEANS_BLOCK,
                     "IDX64": False}, 4))
    out.append(("stroke_blur", "fp32", K._stroke_blur_kernel,
                {"x_ptr": "*fp32", "w_ptr": "*fp32", "means_ptr": "*fp32", "grid_ptr": "*i64",
                 "y_ptr": "*fp32", "N": "i32", "C": "i32", "H": "i32", "W": "i32", "J": "i32",
                 "total": "i32"}, {"BLOCK": K.BLOCK, "IDX64": False}, 4))
    out.append(("stroke_noise", "fp32", K._stroke_noise_kernel,
                {"x0_ptr": "*fp32", "alpha_ptr": "*fp32", "sigma_ptr": "*fp32", "wx_ptr": "*fp32",
                 "we_ptr": "*fp32", "seeds_ptr": "*i64", "mx_ptr": "*fp32", "me_ptr": "*fp32",
                 "grid_ptr": "*i64", "xt_ptr": "*fp32", "tgt_ptr": "*fp32", "N": "i32",
                 "C": "i32", "H": "i32", "W": "i32", "J": "i32", "total": "i32", "offset": "i64"},
                {"DIST": 0, "PER_SAMPLE": True, "TARGET": 2, "BLOCK": K.BLOCK, "IDX64": False}, 4))
    # fused step: each K's warps, at the largest and the smallest block gpu_plan picks
    for dt, K_, hutch, blocks, y in (("fp32", 1, False, "min", False), ("bf16", 1, False, "max", False),
                                     ("fp32", 2, True, "max", False), ("fp16", 8, True, "max", False),
                                     # the y line (a scheduler's x0 beside the step): DDPM/DDIM/Euler
                                     # K = 1, DPM-Solver++ up to 3
                                     ("fp32", 1, False, "min", True), ("bf16", 1, False, "max", True),
                                     ("fp32", 3, False, "max", True), ("fp16", 8, True, "max", True)):
        warps = S.num_warps(K_)
        block = S.max_block(K_) if blocks == "max" else S.min_program_elems(warps)
        sig = step_signature(dt)
        ykw = {"Y": True, "Y_OUT": True, "CLIP": True} if y else {}
        out.append(("sample_step", f"{dt},K={K_},hutch={hutch},BLOCK={block}" + (",y" if y else ""),
                    S._sample_step_kernel, sig, {"K": K_, "DIST": 0, "HAS_Z": False, "TRACK": True,
                                                 "HUTCH": hutch, "PROBE_DIST": 3, "PER_SAMPLE": True,
                                                 "BLOCK": block, **ykw}, warps))
    for y in (False, True):
        out.append(("step_finish", ",y" if y else "", S._step_finish_kernel,
                    {"partial_ptr": "*fp32", "coef_ptr": "*fp32", "logp_ptr": "*fp64", "var_ptr": "*fp64",
                     "NS": "i32", "P": "i32", "W": "i32", "ycoef_ptr": "*fp32", "YW": "i32"},
                    {"TRACK_VAR": True, "BLOCK_S": S.SPLIT_BLOCK, "Y": y}, 4))
    for dt in ("bf16",):
        for block in sorted({V.MOMENT_BLOCK, V.MOMENT_MIN_BLOCK}):
            out.append(("vrg_error_moments", f"{dt},BLOCK={block}", V._error_moments_kernel,
                        {"pred_ptr": f"*{dt}", "target_ptr": f"*{dt}", "partial_ptr": "*fp64",
                         "D": "i32", "CHUNK": "i32"},
                        {"BLOCK": block}, 4))
    out.append(("vrg_moments_finish", "", V._moments_finish_kernel,
                {"partial_ptr": "*fp64", "bins_ptr": "*i64", "table_ptr": "*fp64", "B": "i32",
                 "NS": "i32"},
                {"BLOCK_B": V.FINISH_BLOCK}, 4))
    for solver in (1,):  # ddim (0) is the same stencil with fewer terms
        for grad in (False, True):
            out.append(("vrg_cumulative_error", f"solver={solver},grad={grad}", V._cumulative_error_kernel,
                        {"abar_ptr": "*fp64", "grid_ptr": "*fp64", "mse_ptr": "*fp64", "cpe_ptr": "*fp64",
                         "grad_ptr": "*fp64", "K": "i32", "N": "i32", "M": "i32"},
                        {"SOLVER": solver, "WITH_GRAD": grad, "ITERS": 11, "BLOCK_K": V.CPE_BLOCK_K,
                         "BLOCK_N": V.CPE_MAX_BLOCK_N}, V.CPE_WARPS))
    return out


def _compile_one(args):
    index, cap = args
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel, variant, fn, signature, constexprs, warps = triton_configs()[index]
    sig = dict(signature)
    for name in constexprs:
        sig[name] = "constexpr"
    for name in fn.arg_names:  # defaulted constexprs not given
        sig.setdefault(name, "constexpr")
    src = ASTSource(fn=fn, signature=sig,
                    constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    ck = triton.compile(src, target=GPUTarget("cuda", cap, 32), options={"num_warps": warps})
    ptx = ck.asm["ptx"]
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(ck.asm["cubin"])
        f.flush()
        res = cuda_resources(f.name)
    (r,) = res.values()
    return {"kernel": kernel, "variant": variant, "cap": cap, "num_warps": warps,
            "threads": 32 * warps, "regs": r["regs"], "stack": r["stack"], "local": r["local"],
            "shared": max(r["shared"], int(ck.metadata.shared)),
            "ptx_div64": len(re.findall(r"\b(?:div|rem)\.[su]64\b", ptx)),
            "ptx_ld": re.findall(r"\bld\.global[\.\w]*", ptx),
            "ptx_st": re.findall(r"\bst\.global[\.\w]*", ptx),
            "ptx_mulhi": len(re.findall(r"\bmul\.hi\.u32\b", ptx)),
            "constexprs": constexprs}


def triton_kernels(caps=ARCHS, workers=2):
    """Compile every Triton launch configuration for every cap (in `workers` processes)."""
    os.environ.pop("TRITON_INTERPRET", None)
    jobs = [(i, cap) for i in range(len(triton_configs())) for cap in caps]
    with concurrent.futures.ProcessPoolExecutor(workers) as ex:
        return list(ex.map(_compile_one, jobs))


def format_table(rows):
    """The kernels table (diffaccel.bench's formatter): name, sm, threads, registers, spills,
    stack, shared memory and resident blocks per SM of each row."""
    from diffaccel.bench import Col, format_table as table

    cols = [Col("kernel", 58, align="<"), Col("sm", 3, "d"), Col("thr", 5, "d"), Col("regs", 5, "d"),
            Col("spill", 6, "d"), Col("stack", 6, "d"), Col("smem B", 8, "d"), Col("blk/SM", 7, "d")]
    return table(cols, [(r["name"][:58], r["cap"], r["threads"], r["regs"], r["local"], r["stack"],
                         r["shared"], blocks_per_sm(r["regs"], r["threads"], r["shared"], r["cap"]))
                        for r in rows])


def main():
    sys.path.insert(0, ROOT)
    if "--triton-json" in sys.argv:  # for tests/build/test_gpu_codegen.py
        print(json.dumps(triton_kernels()))
        return
    rows = []
    so = glob.glob(os.path.join(ROOT, "diffaccel", "_C*.so"))
    if so and tool("cuobjdump") and tool("nvdisasm"):
        rows += [dict(r, name="cuda " + r["name"]) for r in cuda_kernels(so[0])[0]]
    rows += [dict(r, name=f"triton {r['kernel']}[{r['variant']}]") for r in triton_kernels()]
    print(format_table(rows))


if __name__ == "__main__":
    main()
