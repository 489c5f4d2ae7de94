"""Build of diffaccel: one torch extension, ``diffaccel._C``.

The C++ CPU kernels are always compiled; the CUDA kernels too when nvcc and a CUDA build of
torch are present. Environment:

- ``DIFFACCEL_BUILD_CUDA=auto|0|1``: build the CUDA kernels (auto: when nvcc and torch.version.cuda).
- ``TORCH_CUDA_ARCH_LIST``: CUDA architectures (default "8.0;9.0+PTX": sm_80, sm_90, PTX for the newest).
- ``DIFFACCEL_CPU_ARCH``: value for ``-march`` (default ``native``; ``none`` leaves it out), for
  portable wheels.
- ``DIFFACCEL_BUILD_EXT=0``: skip the extension (reference and Triton paths only).
- ``DIFFACCEL_REQUIRE_EXT=1``: fail the install if the extension does not build (used by
  ``make test``, so a broken kernel build cannot pass CI silently).

If the compiler is missing or the build fails, the package still installs without the extension
(a warning is printed) and works on the reference and Triton paths.
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


def _extensions():
    if os.environ.get("DIFFACCEL_BUILD_EXT", "1") == "0":
        return []
    try:
        from torch.utils import cpp_extension
    except ImportError:
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


REQUIRE_EXT = os.environ.get("DIFFACCEL_REQUIRE_EXT", "0") == "1"


class OptionalBuildExt(build_ext):
    """Build the extension if possible; otherwise install the pure-Python package."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, broken toolchain
            if REQUIRE_EXT:
                raise
            print(f"diffaccel: WARNING: extension not built ({exc}); "
                  "only the reference and Triton backends will be available", file=sys.stderr)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            if REQUIRE_EXT:
                raise
            print(f"diffaccel: WARNING: extension {ext.name} not built ({exc})", file=sys.stderr)


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
