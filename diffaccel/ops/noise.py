"""The counter-based noise ops (docs/math.md Section 1): ``philox_uint32`` and ``noise``.

Schemas, fake functions, the Python mirror of their C++ argument checks (``csrc/noise_checks.h``
and ``csrc/checks.h``, used in ``csrc/noise_ops.cpp`` and ``csrc/cuda/noise_ops_cuda.cpp``) and
the Triton implementations (``kernels/random.py``). Reference: ``diffaccel/reference/random.py``; public API:
``diffaccel/random.py``.
"""
from ..library import define, impl_triton, kernels, register_fake
from ._checks import FLOAT_INPUTS, check, check_dist, check_offset, check_seeds, dtype_name

# [*shape, 4] int64: the four uint32 Philox outputs per element
define("philox_uint32", "(Tensor seeds, int[] shape, int offset) -> Tensor")
# [*shape] draws of law `dist`
define("noise", "(Tensor seeds, int[] shape, int offset, int dist, ScalarType dtype) -> Tensor")


# ------------------------------------------------------------------------------------ checks

def batch_layout(shape):
    """(B, D) of a noise shape: B = shape[0], D = prod(shape[1:])."""
    check(len(shape) > 0, "shape: expected at least one dimension")
    n = 1
    for s in shape:
        check(s >= 0, "shape: expected non-negative sizes, got ", list(shape))
        n *= s
    return shape[0], 0 if shape[0] == 0 else n // shape[0]


def check_philox_uint32(seeds, shape, offset):
    """The C++ kernels' checks of philox_uint32's arguments; returns (B, D)."""
    check_offset(offset)
    B, D = batch_layout(shape)
    check_seeds(seeds, B)
    return B, D


def check_noise(seeds, shape, offset, dist, dtype):
    """The C++ kernels' checks of noise's arguments; returns (B, D)."""
    check_offset(offset)
    check_dist(dist)
    B, D = batch_layout(shape)
    check_seeds(seeds, B)
    check(dtype in FLOAT_INPUTS, "dtype: expected float32, float16 or bfloat16, got ",
          dtype_name(dtype))
    return B, D


# ---------------------------------------------------------------------------- fake kernels

def _philox_fake(seeds, shape, offset):
    check_philox_uint32(seeds, shape, offset)
    return seeds.new_empty((*shape, 4))


def _noise_fake(seeds, shape, offset, dist, dtype):
    check_noise(seeds, shape, offset, dist, dtype)
    return seeds.new_empty(shape, dtype=dtype)


register_fake("philox_uint32", _philox_fake)
register_fake("noise", _noise_fake)


# ------------------------------------------------------------------------- Triton kernels

@impl_triton("philox_uint32")
def _philox_triton(seeds, shape, offset):
    check_philox_uint32(seeds, shape, offset)
    return kernels("random").philox_uint32(seeds.contiguous(), tuple(shape), offset)


@impl_triton("noise")
def _noise_triton(seeds, shape, offset, dist, dtype):
    check_noise(seeds, shape, offset, dist, dtype)
    return kernels("random").noise(seeds.contiguous(), tuple(shape), offset, dist, dtype)
