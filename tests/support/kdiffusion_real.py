"""The real ``k_diffusion/sampling.py`` of the installed k-diffusion wheel (0.1.1.post1), run
without its package's ``__init__`` (which imports clip, torchvision, wandb, ...).

The file is executed as it is, as ``<package>.sampling`` under a stub parent package whose
``utils`` holds only ``append_dims``, whose source is taken from the wheel's own ``utils.py``.
Install with ``pip install --no-deps k-diffusion==0.1.1.post1 torchsde torchdiffeq trampoline``.
"""
import ast
import importlib.util
import pathlib
import sys
import types

import pytest
import torch

VERSION = "0.1.1.post1"


def package_dir():
    """The installed k_diffusion directory, or skip (with the reason) when it is absent."""
    try:
        spec = importlib.util.find_spec("k_diffusion")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed (pip install --no-deps k-diffusion==0.1.1.post1 "
                    "torchsde torchdiffeq trampoline)")
    for dep in ("torchsde", "torchdiffeq", "scipy"):
        if importlib.util.find_spec(dep) is None:
            pytest.skip(f"{dep} is not installed (k_diffusion/sampling.py imports it)")
    return pathlib.Path(spec.submodule_search_locations[0])


def _append_dims_source(pkg):
    tree = ast.parse((pkg / "utils.py").read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "append_dims")
    return ast.get_source_segment((pkg / "utils.py").read_text(), fn)


def load(package="k_diffusion", register=False):
    """A fresh module running the real sampling.py as ``<package>.sampling``; with ``register``
    the stub package and the module are put in sys.modules (undo with :func:`unregister`)."""
    pkg_dir = package_dir()
    parent = types.ModuleType(package)
    parent.__path__ = []  # a stub: nothing else of the package is importable through it
    utils = types.ModuleType(f"{package}.utils")
    exec(_append_dims_source(pkg_dir), utils.__dict__)
    utils.torch = torch
    parent.utils = utils
    saved = {k: sys.modules.get(k) for k in (package, f"{package}.utils", f"{package}.sampling")}
    sys.modules[package] = parent
    sys.modules[f"{package}.utils"] = utils
    try:
        spec = importlib.util.spec_from_file_location(f"{package}.sampling", pkg_dir / "sampling.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[f"{package}.sampling"] = mod
        spec.loader.exec_module(mod)
    finally:
        if not register:
            for k, v in saved.items():
                if v is None:
                    sys.modules.pop(k, None)
                else:
                    sys.modules[k] = v
    parent.sampling = mod
    mod._saved_modules = saved
    return mod


def unregister(mod):
    for k, v in mod._saved_modules.items():
        if v is None:
            sys.modules.pop(k, None)
        else:
            sys.modules[k] = v


class RecordingTorch:
    """Stands in for a module's global ``torch`` (as stable-diffusion-webui's TorchHijack does):
    ``randn_like`` draws from its own generator and counts the calls; the rest is torch."""

    def __init__(self, seed):
        self.gen = torch.Generator().manual_seed(seed)
        self.calls = []

    def randn_like(self, x, *args, **kwargs):
        self.calls.append(tuple(x.shape))
        return torch.randn(x.shape, generator=self.gen, dtype=torch.float32).to(x.dtype)

    def __getattr__(self, name):
        return getattr(torch, name)


class RecordingNoiseSampler:
    """Wraps a noise sampler and records its (sigma, sigma_next) arguments."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, sigma, sigma_next):
        self.calls.append((float(sigma), float(sigma_next)))
        return self.inner(sigma, sigma_next)
