"""What this installation can run: versions, backends, compiled CUDA architectures."""
import importlib.util

import torch

from . import _ext
from .backends import BACKENDS, availability


def _triton_version():
    if importlib.util.find_spec("triton") is None:
        return None
    try:
        import triton

        return triton.__version__
    except Exception as exc:  # a broken install
        return f"unimportable ({exc})"


def info():
    """A dict: versions (torch, CUDA, Triton), each backend's availability with the reason for
    CPU and CUDA tensors, and the CUDA architectures compiled into the extension."""
    backends = {}
    for name in BACKENDS:
        backends[name] = {dev: dict(zip(("available", "reason"), availability(name, dev)))
                          for dev in ("cpu", "cuda")}
    from . import __version__

    return {
        "diffaccel": __version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "triton": _triton_version(),
        "extension": "loaded" if _ext.load() is not None else _ext.error(),
        "extension_cuda_archs": _ext.cuda_archs() or None,
        "backends": backends,
    }


def format_info(d=None):
    d = info() if d is None else d
    lines = [f"diffaccel {d['diffaccel']}",
             f"torch {d['torch']}  (CUDA {d['cuda']}, device: {d['cuda_device']})",
             f"triton {d['triton']}",
             f"extension: {d['extension']}",
             f"CUDA archs in extension: {d['extension_cuda_archs']}",
             "backends:"]
    for name, per_dev in d["backends"].items():
        for dev, st in per_dev.items():
            mark = "yes" if st["available"] else "no "
            lines.append(f"  {name:<9} {dev:<4} {mark}  {st['reason']}")
    return "\n".join(lines)
