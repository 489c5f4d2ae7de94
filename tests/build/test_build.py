"""The installed extension: what it was built with. Where nvcc and a CUDA build of torch exist
(as on our CI machines), `make test` builds the CUDA kernels too; this checks they are in the .so
for sm_80 and sm_90 even though no GPU is here to run them."""
import glob
import os
import shutil
import subprocess

import pytest
import torch

import diffaccel
from diffaccel import _ext
from support import build_archs

CUDA_TOOLKIT = (os.environ.get("CUDA_HOME") or "/usr/local/cuda")
CAN_BUILD_CUDA = torch.version.cuda is not None and (
    shutil.which("nvcc") or os.path.exists(os.path.join(CUDA_TOOLKIT, "bin", "nvcc")))


def _so():
    mod = _ext.load()
    if mod is None:
        pytest.skip(_ext.error())
    return mod.__file__


def test_cpu_kernels_registered():
    _so()
    for op in diffaccel.library.SCHEMAS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"diffaccel::{op}", "CPU"), op


@pytest.mark.skipif(not CAN_BUILD_CUDA, reason="no nvcc or no CUDA build of torch here")
def test_cuda_kernels_built_for_sm80_and_sm90():
    if os.environ.get("DIFFACCEL_BUILD_CUDA", "auto") == "0":
        pytest.skip("DIFFACCEL_BUILD_CUDA=0")
    path = _so()
    assert _ext.with_cuda(), "nvcc and a CUDA torch are present but the extension has no CUDA kernels"
    for op in diffaccel.library.SCHEMAS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"diffaccel::{op}", "CUDA"), op
    archs = build_archs()  # both by default, the one make gpu-check builds for there
    assert all(a in _ext.cuda_archs() for a in archs), (archs, _ext.cuda_archs())
    cuobjdump = shutil.which("cuobjdump") or next(iter(glob.glob(os.path.join(
        os.path.dirname(__import__("triton").__file__), "backends", "nvidia", "bin", "cuobjdump"))), None)
    if cuobjdump is None:
        pytest.skip("no cuobjdump to list the embedded cubins")
    elves = subprocess.run([cuobjdump, "--list-elf", path], capture_output=True, text=True).stdout
    assert all(f"sm_{a.replace('.', '')}" in elves for a in archs), elves
