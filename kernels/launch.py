"""The Triton launchers' device guard."""
import functools

import torch


def on_tensor_device(fn):
    """Run launcher ``fn`` with its first tensor argument's CUDA device current.

    Triton launches on the current device and that device's current stream, and torch.library
    adds no device guard for Python kernels: without this, tensors on cuda:1 while cuda:0 is
    current fail to launch ("Pointer argument cannot be accessed from Triton") or, with peer
    access, run on GPU 0's stream, unordered with the work on cuda:1."""
    @functools.wraps(fn)
    def launcher(*args, **kwargs):
        for a in (*args, *kwargs.values()):
            if isinstance(a, torch.Tensor):
                if a.device.type == "cuda":
                    with torch.cuda.device(a.device):
                        return fn(*args, **kwargs)
                break
        return fn(*args, **kwargs)
    return launcher
