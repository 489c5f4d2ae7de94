"""Build of diffaccel: one torch extension, ``diffaccel._C``.

The C++ CPU kernels are always compiled; the CUDA kernels too when nvcc and a CUDA build of
torch are present. Environment:

- ``DIFFACCEL_BUILD_CUDA=auto|0|1``: build the CUDA kernels (auto: when nvcc and torch.version.cuda).
- ``TORCH_CUDA_ARCH_LIST``: CUDA architectures (default "8.0;9.0+PTX": sm_80, sm_90, PTX for the newest).
- ``DIFFACCEL_CPU_ARCH``: value for ``-march`` (default ``native``; ``none`` leaves it out), for
  portable wheels.
- ``DIFFACCEL_BUILD_EXT=1|auto|0``: ``1`` (the default): build the extension, and fail the
  build with the compiler's error if it cannot be built; ``auto``: try, and if it fails install
  without it (a warning is printed); ``0``: skip it. Without the extension only the reference
  and Triton paths exist.
- ``DIFFACCEL_REQUIRE_EXT=1``: the old switch for "fail if the extension does not build", now
  the default; still accepted (it overrides ``DIFFACCEL_BUILD_EXT=auto``).

A source build that was asked for the extension (the default) never succeeds without it: a
missing compiler or headers stop the build with an error that says how to build without it.
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;9.0+PTX"


def _want_cuda():
    mode = os.environ.get("DIFFACCEL_BUILD_CUDA", "auto").lower()
    if mode in ("0", "false", "no", "off"):
        return False
    import torch
    from torch.utils import cpp_extension

    if os.environ.get("CUDA_HOME") is None and os.path.isdir("/usr/local/cuda"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
        cpp_extension.CUDA_HOME = "/usr/local/cuda"
    have = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None and (
        shutil.which("nvcc") or os.path.exists(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc"))
    )
    if mode in ("1", "true", "yes", "on") and not have:
        sys.exit("DIFFACCEL_BUILD_CUDA=1 but nvcc or a CUDA build of torch is missing")
    return bool(have)


def _build_ext_mode():
    mode = os.environ.get("DIFFACCEL_BUILD_EXT", "1").strip().lower()
    if mode in ("0", "false", "no", "off"):
        return "0"
    if mode in ("1", "true", "yes", "on", ""):
        return "1"
    if mode == "auto":
        return "1" if os.environ.get("DIFFACCEL_REQUIRE_EXT", "0") == "1" else "auto"
    sys.exit(f"DIFFACCEL_BUILD_EXT={mode!r}: expected 1 (the default), auto or 0")


BUILD_EXT = _build_ext_mode()
HOW_TO_SKIP = ("set DIFFACCEL_BUILD_EXT=0 to install without it (reference and Triton paths "
               "only), or DIFFACCEL_BUILD_EXT=auto to fall back to that when it fails")


def _extensions():
    if BUILD_EXT == "0":
        return []
    try:
        from torch.utils import cpp_extension
    except ImportError:
        if BUILD_EXT == "1":
            sys.exit("diffaccel: torch is not importable at build time, so the extension "
                     "diffaccel._C cannot be built (install torch first and build with "
                     f"--no-build-isolation); {HOW_TO_SKIP}")
        print("diffaccel: torch is not importable at build time; building no extension", file=sys.stderr)
        return []

    cuda = _want_cuda()
    march = os.environ.get("DIFFACCEL_CPU_ARCH", "native")
    # -ffast-math lets g++ use glibc's vector logf/cosf (libmvec) in `omp simd` loops.
    # -fopenmp: at::parallel_for is an inline `omp parallel` region in torch's OpenMP builds;
    # without the flag it silently runs on one thread (libgomp is the one torch loaded).
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-ffast-math"]
    link = ["-fopenmp"]
    if march != "none":
        cxx.append(f"-march={march}")
    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    if not sources:
        sys.exit(f"diffaccel: no C++ sources under {os.path.join(ROOT, 'csrc')} (an incomplete "
                 f"source tree?), so diffaccel._C cannot be built; {HOW_TO_SKIP}")
    include_dirs = [os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include")]
    if not cuda:
        return [cpp_extension.CppExtension("diffaccel._C", sources, include_dirs=include_dirs,
                                           extra_compile_args={"cxx": cxx}, extra_link_args=link)]

    archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_ARCHS
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs  # read by torch's build helper for -gencode flags
    cxx += ["-DDIFFACCEL_WITH_CUDA", f'-DDIFFACCEL_CUDA_ARCHS="{archs}"']
    sources += sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu"))
    # No --use_fast_math: __logf/__cosf would break the 4e-6 agreement of normal draws (docs/math.md 1).
    nvcc = ["-O3", "-std=c++20", "-lineinfo"]
    return [cpp_extension.CUDAExtension("diffaccel._C", sources, include_dirs=include_dirs,
                                        extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                                        extra_link_args=link)]


class OptionalBuildExt(build_ext):
    """Build the extension; with DIFFACCEL_BUILD_EXT=auto, install the pure-Python package if
    that fails. Otherwise a failure stops the build (the compiler's error, then how to skip)."""

    def _failed(self, what, exc):
        if BUILD_EXT == "auto":
            print(f"diffaccel: WARNING: {what} not built ({exc}); "
                  "only the reference and Triton backends will be available", file=sys.stderr)
            return
        print(f"diffaccel: ERROR: {what} could not be built ({exc}); {HOW_TO_SKIP}", file=sys.stderr)
        raise exc

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, broken toolchain
            self._failed("the extension diffaccel._C", exc)


def _cmdclass():
    try:
        from torch.utils.cpp_extension import BuildExtension
    except ImportError:
        return {"build_ext": OptionalBuildExt}

    class Build(BuildExtension, OptionalBuildExt):
        pass

    return {"build_ext": Build.with_options(use_ninja=True)}


setup(
    packages=find_packages(include=["diffaccel", "diffaccel.*"]) + ["diffaccel.kernels"],
    package_dir={"diffaccel": "diffaccel", "diffaccel.kernels": "kernels"},
    ext_modules=_extensions(),
    cmdclass=_cmdclass(),
)
