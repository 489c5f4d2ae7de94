"""Counter-based noise (docs/math.md Section 1): the same numbers on every backend.

Element ``i`` (flat index within its sample) of sample ``b`` is drawn at Philox offset
``offset + i`` under ``seed[b]`` when ``seed`` is a (B,) tensor (noise independent of the rest
of the batch), and at ``offset + b*D + i`` under a single integer seed.
"""

import torch

from . import _validate, reference
from .backends import select
from .layout import DISTS
from .library import op


def _shape(shape):
    if isinstance(shape, int):
        shape = (shape,)
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 0 for s in shape):
        raise ValueError(f"shape: expected a non-empty tuple of non-negative sizes, got {shape}")
    return shape


def noise(shape, *, seed, offset=0, dist="normal", device=None, dtype=torch.float32, backend=None):
    """Draws of law ``dist`` (normal, laplace, uniform, rademacher; zero mean, unit variance).

    shape: (B, ...); seed: int, or an integer tensor (B,) with one seed per sample;
    offset: 64-bit stream offset. Returns a ``dtype`` tensor of ``shape`` (float32 arithmetic).
    """
    shape = _shape(shape)
    if device is None:
        device = seed.device if isinstance(seed, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    if dtype not in _validate.FLOAT_DTYPES:
        raise TypeError(f"dtype: expected float32, float16 or bfloat16, got {dtype}")
    seeds = _validate.seeds(seed, shape[0], device)
    offset = _validate.offset(offset)
    code = _validate.dist(dist)
    name = select(backend, device, "noise")
    if name == "reference":
        return reference.noise(seeds, shape, offset, dist, dtype, device)
    return op("noise", name)(seeds, list(shape), offset, code, dtype)


def philox_uint32(shape, *, seed, offset=0, device=None, backend=None):
    """The raw stream: int64 tensor (*shape, 4) of the four uint32 Philox4x32-10 outputs per
    element, bit-identical to Triton's ``tl.randint4x`` at that element's (seed, offset)."""
    shape = _shape(shape)
    if device is None:
        device = seed.device if isinstance(seed, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    seeds = _validate.seeds(seed, shape[0], device)
    offset = _validate.offset(offset)
    name = select(backend, device, "philox_uint32")
    if name == "reference":
        seed_t, pos = reference.random.stream_offsets(seeds, shape, offset, device)
        return torch.stack(reference.philox_uint32(seed_t, pos), dim=-1)
    return op("philox_uint32", name)(seeds, list(shape), offset)


__all__ = ["noise", "philox_uint32", "DISTS"]
