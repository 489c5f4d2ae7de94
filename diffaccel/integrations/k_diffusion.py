"""Swap k-diffusion's samplers for diffaccel's fused ones, in ``k_diffusion.sampling`` or in
any module with its API (a vendored copy such as ComfyUI's ``comfy.k_diffusion.sampling``).

    from diffaccel.integrations import k_diffusion as kd
    kd.patch()                 # k_diffusion.sampling.sample_euler, ... are diffaccel's now
    kd.unpatch()               # the originals are back
    with kd.patch(module):     # or for a block only
        ...

A replacement keeps the original's ``__name__``, ``__qualname__``, ``__doc__``, ``__module__``
and ``inspect.signature`` (callers such as stable-diffusion-webui choose their keywords by
signature) and also takes diffaccel's keyword-only extras (``seed``, ``dist``, ``logp``,
``probes``, ``probe_dist``, ``backend``). Without ``seed`` it draws its noise through the
patched module's own names, looked up at call time: its global ``torch.randn_like`` (which
stable-diffusion-webui replaces by a per-image-seed generator), its ``default_noise_sampler``
and its ``BrownianTreeNoiseSampler``, or the ``noise_sampler`` passed in; the same number of
draws in the same order as k-diffusion 0.1.1.post1. The replacement computes what k-diffusion
0.1.1.post1 computes: ComfyUI's modified copy (seeded default noise sampler, rectified-flow
variants, half-log-SNR SDE samplers) is replaced by that math, not reproduced.

Nothing here imports k-diffusion until :func:`patch` is called without a module.
"""
import functools
import importlib
import threading

from ..sampling.k_samplers import K_SAMPLERS

NAMES = tuple(K_SAMPLERS)
__all__ = ["patch", "unpatch", "is_patched", "NAMES"]

_lock = threading.Lock()


def _module(module):
    if module is None or isinstance(module, str):
        name = module or "k_diffusion.sampling"
        try:
            return importlib.import_module(name)
        except ImportError as e:
            raise ImportError(f"module: cannot import {name} ({e}); pass the sampling module "
                              f"itself, e.g. patch(comfy.k_diffusion.sampling)") from e
    return module


def _replacement(module, name, original):
    core = K_SAMPLERS[name][1]

    def sampler(*args, **kwargs):
        return core(module, *args, **kwargs)

    functools.update_wrapper(sampler, original)  # name, doc, module; signature via __wrapped__
    sampler._diffaccel_original = original
    return sampler


class Patch:
    """What :func:`patch` returns: the patched module and its originals; a context manager that
    restores them on exit."""

    def __init__(self, module, originals):
        self.module, self.originals = module, originals

    def __enter__(self):
        return self.module

    def __exit__(self, *exc):
        unpatch(self.module, names=tuple(self.originals))
        return False

    def __repr__(self):
        return f"<diffaccel patch of {getattr(self.module, '__name__', self.module)}: {sorted(self.originals)}>"


def patch(module=None, names=None):
    """Replace the k-diffusion samplers ``names`` (default: all eleven of :data:`NAMES` that the
    module has) in ``module`` (default ``k_diffusion.sampling``; a module object or its dotted
    name). Patching twice is harmless. Returns a :class:`Patch` (a context manager)."""
    mod = _module(module)
    names = NAMES if names is None else tuple(names)
    unknown = [n for n in names if n not in K_SAMPLERS]
    if unknown:
        raise ValueError(f"names: expected some of {NAMES}, got {unknown}")
    done = {}
    with _lock:
        for name in names:
            current = getattr(mod, name, None)
            if current is None:
                continue  # a vendored copy without this sampler
            original = getattr(current, "_diffaccel_original", None)
            if original is None:
                setattr(mod, name, _replacement(mod, name, current))
                original = current
            done[name] = original
    return Patch(mod, done)


def unpatch(module=None, names=None):
    """Put back the originals of ``names`` (default: all) in ``module``; a sampler someone
    replaced after :func:`patch` is left alone. Returns the names restored."""
    mod = _module(module)
    restored = []
    with _lock:
        for name in NAMES if names is None else names:
            current = getattr(mod, name, None)
            original = getattr(current, "_diffaccel_original", None)
            if original is not None:
                setattr(mod, name, original)
                restored.append(name)
    return restored


def is_patched(module=None, name="sample_euler"):
    """Whether ``module.<name>`` is diffaccel's."""
    return getattr(getattr(_module(module), name, None), "_diffaccel_original", None) is not None
