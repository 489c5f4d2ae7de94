"""Registry helpers of the ``torch.ops.diffaccel`` ops (the ops themselves: ``diffaccel/ops/``).

Each op has one schema and two names: ``diffaccel::<op>`` (C++ kernels, registered by the
extension for the CPU and CUDA dispatch keys) and ``diffaccel::<op>_triton`` (Triton kernels,
registered for CPU tensors under TRITON_INTERPRET=1 and for CUDA tensors). Each op family's module
``diffaccel/ops/{noise,stroke,step,vrg}.py`` defines its schemas with :func:`define` and
registers its fakes (:func:`register_fake`), autograd and Triton implementations
(:func:`impl_triton`) for both names; ``import diffaccel`` imports every family.

The integer codes of the schemas are in ``diffaccel/layout.py``.
"""
import importlib

import torch

from . import _ext

TRITON_SUFFIX = "_triton"
SCHEMAS = {}  # op name -> schema text, filled by define() as the family modules load

_lib = torch.library.Library("diffaccel", "DEF")


def qualnames(name):
    """The two qualified names of op ``name``: (C++ op, Triton twin)."""
    return (f"diffaccel::{name}", f"diffaccel::{name}{TRITON_SUFFIX}")


def define(name, schema):
    """Define op ``name`` and its Triton twin with one schema (the text after the name)."""
    SCHEMAS[name] = schema
    _lib.define(name + schema)
    _lib.define(name + TRITON_SUFFIX + schema)


def register_fake(name, fn):
    """The fake (meta) function of op ``name`` and of its Triton twin."""
    for qualname in qualnames(name):
        torch.library.register_fake(qualname, fn, lib=_lib)


def register_autograd(name, backward_for, setup_context):
    """Autograd of op ``name`` and of its Triton twin: ``backward_for(suffix)`` returns the
    backward that calls the ops with that suffix ("" or TRITON_SUFFIX)."""
    for suffix in ("", TRITON_SUFFIX):
        torch.library.register_autograd(f"diffaccel::{name}{suffix}", backward_for(suffix),
                                        setup_context=setup_context, lib=_lib)


def impl_triton(name):
    """Decorator: ``fn`` implements ``diffaccel::<name>_triton`` on CPU and CUDA tensors."""
    def register(fn):
        torch.library.impl(f"diffaccel::{name}{TRITON_SUFFIX}", ("cpu", "cuda"), lib=_lib)(fn)
        return fn
    return register


def kernels(module):
    """``diffaccel.kernels.<module>``, imported on first use (Triton loads with it)."""
    return importlib.import_module(f"diffaccel.kernels.{module}")


def op(name, backend):
    """The OpOverload running ``name`` on ``backend`` ('cpu'/'cuda' -> C++, 'triton'). For the
    C++ backends it loads the extension first: loading registers their kernels."""
    if backend in ("cpu", "cuda"):
        _ext.load()
    suffix = TRITON_SUFFIX if backend == "triton" else ""
    return getattr(torch.ops.diffaccel, name + suffix).default
