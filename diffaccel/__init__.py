"""diffaccel: compiled kernels (C++, Triton, CUDA) for the hot paths of diffusion models.

Every op has a plain PyTorch reference (``diffaccel.reference``, the numerics contract of
docs/math.md) and fast backends tested against it; see ``diffaccel.backends`` for how one is chosen.
Importing diffaccel compiles and loads nothing; the extension loads on first use.
"""
from . import ops  # first: every op's schema, fake and Triton registration (diffaccel/ops/)
from . import _source_tree
from .backends import BACKENDS, BackendUnavailable, use_backend
from .info import info
from .random import noise, philox_uint32
from .stroke import stroke_blur, stroke_noise, stroke_weights

__version__ = "0.1.0"

_source_tree.install(__path__[0])  # diffaccel.kernels from ../kernels when run from a checkout

# Subpackages load on first use (``diffaccel.vrg``, ``diffaccel.sampling``, ...), keeping
# ``import diffaccel`` light; ``import diffaccel.vrg`` works as usual.
_SUBMODULES = ("vrg", "sampling", "schedules", "models", "reference", "library", "integrations")


def __getattr__(name):
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["BACKENDS", "BackendUnavailable", "use_backend", "info", "noise", "philox_uint32",
           "stroke_blur", "stroke_noise", "stroke_weights", "__version__", *_SUBMODULES]
