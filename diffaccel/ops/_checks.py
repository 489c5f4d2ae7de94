"""The Python mirror of ``csrc/checks.h``: the argument checks every op family shares (each
family's own checks are in its module, beside its schemas, as in ``csrc/<family>_checks.h``).

Same rules, same messages and the same exception class as the C++ side (``TORCH_CHECK`` raises
RuntimeError), so the Triton implementations and the fake functions (torch.compile tracing)
refuse exactly what the C++ kernels refuse, naming the same argument. Only metadata is read
(shapes, dtypes, devices, strides): the checks run on fake tensors too.
"""
import torch

from ..layout import NORMAL, RADEMACHER

FLOAT_INPUTS = (torch.float32, torch.float16, torch.bfloat16)

# c10's names of the dtypes, as TORCH_CHECK prints them
_C10_NAMES = {torch.float32: "Float", torch.float16: "Half", torch.bfloat16: "BFloat16",
              torch.float64: "Double", torch.int64: "Long", torch.int32: "Int",
              torch.int16: "Short", torch.int8: "Char", torch.uint8: "Byte", torch.bool: "Bool"}


def dtype_name(dtype):
    return _C10_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def sizes(t):
    """A shape as at::IntArrayRef prints it: [2, 3]."""
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check(cond, *msg):
    """TORCH_CHECK: RuntimeError with the message pieces joined."""
    if not cond:
        raise RuntimeError("".join(str(m) for m in msg))


def same_memory(a, b):
    """Whether a and b are one tensor or start at one address (only the first where there is
    no address: fake and meta tensors, while torch.compile traces)."""
    if a is b:
        return True
    if _no_storage(a) or _no_storage(b):
        return False
    return a.data_ptr() == b.data_ptr()


def _no_storage(t):
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor) or t.device.type == "meta"


def check_float_input(t, name):
    check(t.dtype in FLOAT_INPUTS, name, ": expected float32, float16 or bfloat16, got ",
          dtype_name(t.dtype))


def check_same_device(a, b, name):
    check(a.device == b.device, name, ": expected a tensor on ", a.device, ", got ", b.device)


def check_seeds(seeds, B):
    """seeds: int64, (1,) or (B,). Returns whether they are per-sample."""
    check(seeds.dtype == torch.int64 and seeds.dim() == 1 and seeds.shape[0] in (1, B),
          "seed: expected an int64 tensor of shape (1,) or (", B, ",), got ",
          dtype_name(seeds.dtype), " ", sizes(seeds))
    return seeds.shape[0] == B and B > 1


def check_offset(offset):
    check(offset >= 0, "offset: expected a non-negative integer, got ", offset)


def check_dist(dist):
    check(NORMAL <= dist <= RADEMACHER, "dist: unknown increment law code ", dist)
