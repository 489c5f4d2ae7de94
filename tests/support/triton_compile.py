"""Compile every Triton kernel of diffaccel for real GPUs (no GPU needed) and report PTX facts.

Run as a script *without* TRITON_INTERPRET (the interpreter accepts programs the compiler
rejects): ``python tests/support/triton_compile.py 80 90`` prints one JSON object per line:
{"kernel", "variant", "cap", "ok", "error", "ld_global", "st_global", "atom"}.
``python tests/support/triton_compile.py --ones 90`` compiles one variant of every kernel once per
integer argument, with that argument given as the constexpr 1: at a real launch the JIT
specializes an integer argument equal to 1 into a constexpr (a Python int in the kernel, where
``.to(...)`` fails), which the interpreter never does. Other modules add kernels
by appending to ``CASES`` in ``tests/support/triton_cases_*.py`` files (each defines ``cases()``).
"""
import glob
import importlib.util
import json
import os
import re
import sys

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402


def stroke_cases():
    from diffaccel.kernels import random as R
    from diffaccel.kernels import stroke as S

    seeds = {"seeds_ptr": "*i64"}
    out = []
    for dist in range(4):
        for per_sample in (True, False):
            out.append(("noise", f"dist={dist},per_sample={per_sample}", R._noise_kernel,
                        {**seeds, "out_ptr": "*fp32", "N": "i64", "D": "i64", "offset": "i64"},
                        {"DIST": dist, "PER_SAMPLE": per_sample, "BLOCK": R.BLOCK, "IDX64": False}))
    out.append(("philox", "", R._philox_kernel,
                {**seeds, "out_ptr": "*i64", "N": "i64", "D": "i64", "offset": "i64"},
                {"PER_SAMPLE": True, "BLOCK": R.BLOCK, "IDX64": True}))
    for dt in ("fp32", "fp16", "bf16"):
        ks = {"K1": 2, "K2": 4, "K3": 8, "K4": 0, "T": 16}
        out.append(("stroke_blur_tile", dt, S._stroke_blur_tile_kernel,
                    {"x_ptr": f"*{dt}", "w_ptr": "*fp32", "y_ptr": f"*{dt}", "C": "i32", "H": "i32",
                     "W": "i32", "J": "i32"}, ks))
        for target in range(3):
            out.append(("stroke_noise_tile", f"{dt},target={target}", S._stroke_noise_tile_kernel,
                        {"x0_ptr": f"*{dt}", "alpha_ptr": "*fp32", "sigma_ptr": "*fp32",
                         "wx_ptr": "*fp32", "we_ptr": "*fp32", "seeds_ptr": "*i64",
                         "xt_ptr": f"*{dt}", "tgt_ptr": f"*{dt}", "C": "i32", "H": "i32",
                         "W": "i32", "J": "i32", "offset": "i64"},
                        {**ks, "DIST": 0, "PER_SAMPLE": True, "TARGET": target}))
        out.append(("block_means", dt, S._block_means_kernel,
                    {"x_ptr": f"*{dt}", "seeds_ptr": "*i64", "means_ptr": "*fp32", "n_items": "i64",
                     "C": "i32", "H": "i32", "W": "i32", "K": "i32", "nw": "i32", "total": "i32",
                     "moff": "i32", "offset": "i64"},
                    {"FROM_NOISE": False, "DIST": 0, "PER_SAMPLE": False, "BLOCK": S.MEANS_BLOCK,
                     "IDX64": False}))
        out.append(("stroke_blur", dt, S._stroke_blur_kernel,
                    {"x_ptr": f"*{dt}", "w_ptr": "*fp32", "means_ptr": "*fp32", "grid_ptr": "*i64",
                     "y_ptr": f"*{dt}", "N": "i64", "C": "i32", "H": "i32", "W": "i32", "J": "i32",
                     "total": "i32"}, {"BLOCK": S.BLOCK, "IDX64": True}))
        out.append(("stroke_noise", dt, S._stroke_noise_kernel,
                    {"x0_ptr": f"*{dt}", "alpha_ptr": "*fp32", "sigma_ptr": "*fp32", "wx_ptr": "*fp32",
                     "we_ptr": "*fp32", "seeds_ptr": "*i64", "mx_ptr": "*fp32", "me_ptr": "*fp32",
                     "grid_ptr": "*i64", "xt_ptr": f"*{dt}", "tgt_ptr": f"*{dt}", "N": "i64",
                     "C": "i32", "H": "i32", "W": "i32", "J": "i32", "total": "i32", "offset": "i64"},
                    {"DIST": 1, "PER_SAMPLE": False, "TARGET": 2, "BLOCK": S.BLOCK, "IDX64": False}))
    out.append(("block_means_noise", "", S._block_means_kernel,
                {"x_ptr": "*fp32", "seeds_ptr": "*i64", "means_ptr": "*fp32", "n_items": "i64",
                 "C": "i32", "H": "i32", "W": "i32", "K": "i32", "nw": "i32", "total": "i32",
                 "moff": "i32", "offset": "i64"},
                {"FROM_NOISE": True, "DIST": 3, "PER_SAMPLE": True, "BLOCK": S.MEANS_BLOCK, "IDX64": True}))
    return out


def all_cases():
    cases = stroke_cases()
    here = os.path.dirname(os.path.abspath(__file__))
    for path in sorted(glob.glob(os.path.join(here, "triton_cases_*.py"))):
        spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        cases += mod.cases()
    return cases


def compile_one(fn, signature, constexprs, cap):
    sig = dict(signature)
    for name in constexprs:
        sig[name] = "constexpr"
    src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    return triton.compile(src, target=GPUTarget("cuda", cap, 32))


def main(caps):
    for kernel, variant, fn, signature, constexprs in all_cases():
        for cap in caps:
            rec = {"kernel": kernel, "variant": variant, "cap": cap}
            try:
                ptx = compile_one(fn, signature, constexprs, cap).asm["ptx"]
                rec.update(ok=True, error="",
                           ld_global=len(re.findall(r"\bld\.global", ptx)),
                           st_global=len(re.findall(r"\bst\.global", ptx)),
                           atom=len(re.findall(r"\batom\.", ptx)))
            except Exception as exc:  # report, don't stop: every kernel gets its verdict
                rec.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])
            print(json.dumps(rec), flush=True)


def ones_cases():
    """(kernel, variant, fn, signature, constexprs) per kernel and integer argument: one variant
    of each kernel (the first listed, which has per-sample seeds where the kernel takes them),
    that argument moved from the signature into the constexprs with the value 1."""
    out, seen = [], set()
    for kernel, variant, fn, signature, constexprs in all_cases():
        if fn in seen:
            continue
        seen.add(fn)
        for name, ty in signature.items():
            if ty in ("i32", "i64"):
                sig = {k: v for k, v in signature.items() if k != name}
                out.append((kernel, f"{variant},{name}=1", fn, sig, {**constexprs, name: 1}))
    return out


def main_ones(caps):
    for kernel, variant, fn, signature, constexprs in ones_cases():
        for cap in caps:
            rec = {"kernel": kernel, "variant": variant, "cap": cap}
            try:
                compile_one(fn, signature, constexprs, cap)
                rec.update(ok=True, error="")
            except Exception as exc:
                rec.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])
            print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--ones"]:
        main_ones([int(c) for c in sys.argv[2:]] or [90])
    else:
        main([int(c) for c in sys.argv[1:]] or [80, 90])
