"""Drop-ins for the libraries our users sample and train with.

``diffaccel.integrations.diffusers``: accelerated subclasses of diffusers' schedulers
(``accelerate(pipe.scheduler)``) and ``training_targets``.
``diffaccel.integrations.k_diffusion``: ``patch()`` / ``unpatch()`` of k-diffusion's samplers
(``k_diffusion.sampling`` or a vendored copy). Submodules load on first use, so importing
diffaccel never imports diffusers or k-diffusion.
"""
import importlib

_SUBMODULES = ("diffusers", "k_diffusion")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_SUBMODULES)
