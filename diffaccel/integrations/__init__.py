"""Drop-ins for the libraries our users sample and train with.

``diffaccel.integrations.diffusers``: accelerated subclasses of diffusers' schedulers
(``accelerate(pipe.scheduler)``) and ``training_targets``. Submodules load on first use, so
importing diffaccel never imports diffusers.
"""
import importlib

_SUBMODULES = ("diffusers",)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_SUBMODULES)
