"""Counter-based noise, docs/math.md Section 1, in plain PyTorch (int64 arithmetic on uint32 values).

The stream is Triton's Philox4x32-10 (``tl.randint4x``): key (seed lo, seed hi), counter
(offset lo, offset hi, 0, 0), ten rounds. Every backend must reproduce these integers exactly.
"""
import math

import torch

_MASK32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_UNIFORM_SCALE = 4.6566127342e-10
from ..layout import DISTS


def _mul32(a, b):
    """(hi, lo) 32-bit halves of a*b for uint32 values held in int64 tensors, without overflow."""
    a1, a0 = a >> 16, a & 0xFFFF
    b1, b0 = b >> 16, b & 0xFFFF
    p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
    mid = p01 + p10
    hi = p11 + ((mid + (p00 >> 16)) >> 16)
    lo = (p00 + ((mid & 0xFFFF) << 16)) & _MASK32
    return hi & _MASK32, lo


def philox_uint32(seed, offset):
    """Philox4x32-10 outputs for 64-bit ``seed`` and ``offset`` (int64 tensors, broadcast).

    Returns four int64 tensors with values in [0, 2^32): Triton's ``tl.randint4x(seed, offset)``.
    Negative int64 values stand for the uint64 with the same bits.
    """
    seed, offset = torch.broadcast_tensors(torch.as_tensor(seed, dtype=torch.int64),
                                           torch.as_tensor(offset, dtype=torch.int64))
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    c0, c1 = offset & _MASK32, (offset >> 32) & _MASK32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(10):
        hi_b, lo_b = _mul32(torch.full_like(c2, _ROUND_B), c2)
        hi_a, lo_a = _mul32(torch.full_like(c0, _ROUND_A), c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _KEY_A) & _MASK32
        k1 = (k1 + _KEY_B) & _MASK32
    return c0, c1, c2, c3


def uniform_from(i):
    """Triton's ``uint_to_uniform_float``: int32 bitcast, negatives folded with ~x, times 2^-31."""
    s = torch.where(i >= 2**31, i - 2**32, i)
    s = torch.where(s < 0, -s - 1, s)
    return s.to(torch.float32) * _UNIFORM_SCALE


def draw(i1, i2, dist):
    """Zero-mean, unit-variance draws of law ``dist`` from the first two Philox outputs (float32)."""
    if dist == "normal":  # Triton's randn
        u1 = torch.clamp(uniform_from(i1), min=1.0e-7)
        th = 6.283185307179586 * uniform_from(i2)
        return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(th)
    if dist == "laplace":
        d = uniform_from(i1) - 0.5
        t = torch.clamp(1.0 - 2.0 * d.abs(), min=1.0e-7)
        return torch.sign(d) * (-torch.log(t)) / math.sqrt(2.0)
    if dist == "uniform":
        return (uniform_from(i1) - 0.5) * math.sqrt(12.0)
    if dist == "rademacher":
        return torch.where((i1 & 1) == 1, 1.0, -1.0).to(torch.float32)
    raise ValueError(f"dist: expected one of {DISTS}, got {dist!r}")


def stream_offsets(seeds, shape, offset, device=None):
    """Per-element (seed, offset) of docs/math.md's layout for a tensor of ``shape``.

    ``seeds``: int64 tensor (1,) for one seed (element i of sample b at offset0 + b*D + i) or
    (B,) for one seed per sample (offset0 + i).
    """
    B = shape[0]
    D = math.prod(shape[1:])
    device = seeds.device if device is None else device
    i = torch.arange(D, dtype=torch.int64, device=device).expand(B, D)
    b = torch.arange(B, dtype=torch.int64, device=device)[:, None]
    per_sample = seeds.numel() == B and B > 1
    pos = offset + i + (0 if per_sample else b * D)
    seed = (seeds.to(device).reshape(-1, 1) if per_sample else seeds.to(device).reshape(1, 1)).expand(B, D)
    return seed.reshape(shape), pos.reshape(shape)


def noise(seeds, shape, offset=0, dist="normal", dtype=torch.float32, device=None):
    """Draws of law ``dist`` with the layout of docs/math.md Section 1, float32 arithmetic."""
    seed, pos = stream_offsets(seeds, tuple(shape), offset, device)
    i1, i2, _, _ = philox_uint32(seed, pos)
    return draw(i1, i2, dist).to(dtype)
