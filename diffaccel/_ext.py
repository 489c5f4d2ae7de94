"""Lazy loading of the compiled extension ``diffaccel._C``.

``import diffaccel`` never compiles or loads anything; the first call that needs the C++ or CUDA
kernels loads the extension (which registers them as torch.ops.diffaccel.* implementations).
A missing or broken extension is remembered with its reason, and those backends report it.
"""
import importlib
import threading

_lock = threading.Lock()
_state = {"loaded": False, "module": None, "error": None}


def load():
    """The extension module, or None if it cannot be loaded (see ``error()``)."""
    if not _state["loaded"]:
        with _lock:
            if not _state["loaded"]:
                # No import of diffaccel.library here (no import circle): the .so only adds
                # kernels to the schemas, and those are defined by then. Importing the submodule
                # diffaccel._C imports its package diffaccel first, whose __init__ imports
                # diffaccel.ops (every schema) before anything that could call load().
                try:
                    _state["module"] = importlib.import_module("diffaccel._C")
                except Exception as exc:  # not built, or built against another torch
                    _state["error"] = f"extension diffaccel._C not loadable: {exc}"
                _state["loaded"] = True
    return _state["module"]


def error():
    """Why the extension is unavailable, or None."""
    load()
    return _state["error"]


def with_cuda():
    mod = load()
    return bool(mod is not None and mod.with_cuda)


def cuda_archs():
    mod = load()
    return mod.cuda_archs if mod is not None and mod.with_cuda else ""
