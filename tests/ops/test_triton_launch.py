"""The Triton launchers without a GPU: each runs on its tensors' CUDA device (Triton launches on
the current device), and the index arithmetic of the block-means store is 64-bit."""
import ast
import glob
import os

import pytest
import torch

from support import ROOT

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from diffaccel.kernels.stroke import _means_offset  # noqa: E402


@triton.jit
def _offset_kernel(out_ptr, plane, total, moff, q):
    tl.store(out_ptr, _means_offset(plane, total, moff, q))


def _launching_functions(path):
    """Module-level functions of a kernels/*.py file that launch a kernel (``k[grid](...)``),
    with their decorator names."""
    tree = ast.parse(open(path).read())
    for fn in tree.body:
        if isinstance(fn, ast.FunctionDef):
            if any(isinstance(n, ast.Call) and isinstance(n.func, ast.Subscript) for n in ast.walk(fn)):
                yield fn.name, [d.id for d in fn.decorator_list if isinstance(d, ast.Name)]


def test_every_triton_launcher_takes_its_tensors_device():
    found = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "kernels", "*.py"))):
        for name, decorators in _launching_functions(path):
            found[f"{os.path.basename(path)}:{name}"] = "on_tensor_device" in decorators
    assert {"random.py:noise", "step.py:sample_step", "stroke.py:stroke_noise",
            "vrg.py:error_moments", "vrg.py:cumulative_error"} <= set(found)
    missing = [name for name, ok in found.items() if not ok]
    assert not missing, f"Triton launchers without @on_tensor_device: {missing}"


class _OnCuda1(torch.Tensor):
    """A CPU tensor that says it lives on cuda:1 (no GPU here)."""
    @property
    def device(self):
        return torch.device("cuda", 1)


def test_on_tensor_device_makes_the_first_tensors_device_current(monkeypatch):
    from diffaccel.kernels.launch import on_tensor_device

    entered, seen = [], []

    class _Guard:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            entered.append("exit")

    monkeypatch.setattr(torch.cuda, "device", _Guard)

    @on_tensor_device
    def launch(n, x, y=None):
        seen.append(list(entered))
        return n

    x = torch.zeros(2).as_subclass(_OnCuda1)
    assert launch(3, x) == 3
    assert seen[-1] == [torch.device("cuda", 1)] and entered[-1] == "exit"
    entered.clear()
    assert launch(4, torch.zeros(2), y=x) == 4  # the first tensor decides: a CPU one, no guard
    assert seen[-1] == [] and entered == []


def test_block_means_store_offset_is_64_bit():
    """plane * total in int64: B*C*total passes 2^31 before x.numel() does (five scales of 2:
    sum 1/k^2 > 1), while plane and total still arrive as int32."""
    out = torch.zeros(1, dtype=torch.int64)
    if not isinstance(_offset_kernel, triton.runtime.interpreter.InterpretedFunction):
        pytest.skip("needs the Triton interpreter (TRITON_INTERPRET=1)")
    _offset_kernel[(1,)](out, 3, 2**30 - 1, 5, 7)
    assert int(out) == 3 * (2**30 - 1) + 5 + 7


@pytest.mark.parametrize("sm", [1, 108, 132])
def test_moments_grid_within_the_axis_limit(sm):
    """The error moments' chunks (grid axis 1) stay <= 65535 at any size: MOMENT_CHUNK alone gave
    65536 chunks at D = 2^30."""
    from diffaccel.kernels import vrg as V

    for B in (1, 3, 256):
        for D in (1, 1000, 2**30 - 1, 2**30, 2**30 + 12345, 2**32 + 7, 2**34):
            block, chunks, chunk = V.moments_plan(B, D, sm)
            assert chunks <= 65535 and chunk % block == 0, (B, D, sm, chunks, chunk)
            assert chunks * chunk >= D > (chunks - 1) * chunk, (B, D, sm, chunks, chunk)
