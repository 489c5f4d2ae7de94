"""Counter-based noise in Triton (docs/math.md Section 1): Triton's own Philox and laws."""
import math

import torch
import triton
import triton.language as tl

from diffaccel import layout

from .launch import on_tensor_device

# the increment-law codes of diffaccel/layout.py (DISTS), as constexprs the kernels read
NORMAL = tl.constexpr(layout.NORMAL)
LAPLACE = tl.constexpr(layout.LAPLACE)
UNIFORM = tl.constexpr(layout.UNIFORM)
RADEMACHER = tl.constexpr(layout.RADEMACHER)
BLOCK = 1024
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_SQRT12 = math.sqrt(12.0)


@triton.jit
def draw(seed, pos, DIST: tl.constexpr):
    """One zero-mean, unit-variance draw per element at stream position (seed, pos).

    normal: Triton's randn; laplace: -sign(u-1/2) ln(max(1e-7, 1-2|u-1/2|))/sqrt(2);
    uniform: (u-1/2) sqrt(12); rademacher: +1 if i1 odd else -1, with i1 = randint, u = rand.
    """
    if DIST == NORMAL:
        z = tl.randn(seed, pos)
    elif DIST == LAPLACE:
        d = tl.rand(seed, pos) - 0.5
        mag = -tl.log(tl.maximum(1.0 - 2.0 * tl.abs(d), 1.0e-7)) * 0.7071067811865476
        z = tl.where(d > 0.0, mag, tl.where(d < 0.0, -mag, 0.0))
    elif DIST == UNIFORM:
        z = (tl.rand(seed, pos) - 0.5) * 3.4641016151377544
    else:
        i1 = tl.randint(seed, pos)
        z = tl.where((i1 & 1) == 1, 1.0, -1.0)
    return z


@triton.jit
def stream_position(seeds_ptr, b, i, D, offset, PER_SAMPLE: tl.constexpr):
    """(seed, offset) of element i of sample b: per-sample seeds use offset + i, one seed
    uses offset + b*D + i (64-bit). The seed load is unmasked: b must be a real sample in every
    lane (callers point masked-off lanes at element 0)."""
    if PER_SAMPLE:
        seed = tl.load(seeds_ptr + b)
        pos = offset + i
    else:
        seed = tl.load(seeds_ptr)
        pos = offset + b * D + i
    return seed, pos


@triton.jit
def _flat_index(BLOCK: tl.constexpr, IDX64: tl.constexpr):
    """This program's BLOCK flat element indices: int32 (every per-element division a 32-bit one)
    unless IDX64 (2^31 elements or more)."""
    pid = tl.program_id(0)
    if IDX64:
        pid = pid.to(tl.int64)
    return pid * BLOCK + tl.arange(0, BLOCK)


def idx64(n):
    """Whether flat indices up to n (plus a block of slack) need 64 bits."""
    return n + 4096 >= 2**31


@triton.jit
def _philox_kernel(seeds_ptr, out_ptr, N, D, offset, PER_SAMPLE: tl.constexpr, BLOCK: tl.constexpr,
                   IDX64: tl.constexpr = False):
    """out[n, 0:4] = tl.randint4x at element n of a (B, D) layout, as int64."""
    t = _flat_index(BLOCK, IDX64)
    mask = t < N
    tv = tl.where(mask, t, 0)  # tail lanes take element 0: their seed load stays inside seeds
    b = tv // D
    seed, pos = stream_position(seeds_ptr, b, tv - b * D, D, offset, PER_SAMPLE)
    r0, r1, r2, r3 = tl.randint4x(seed, pos)
    o = out_ptr + 4 * t.to(tl.int64)
    tl.store(o, r0.to(tl.int64), mask=mask)
    tl.store(o + 1, r1.to(tl.int64), mask=mask)
    tl.store(o + 2, r2.to(tl.int64), mask=mask)
    tl.store(o + 3, r3.to(tl.int64), mask=mask)


@triton.jit
def _noise_kernel(seeds_ptr, out_ptr, N, D, offset, DIST: tl.constexpr, PER_SAMPLE: tl.constexpr,
                  BLOCK: tl.constexpr, IDX64: tl.constexpr = False):
    """out[b, i] = draw of law DIST at its stream position."""
    t = _flat_index(BLOCK, IDX64)
    mask = t < N
    tv = tl.where(mask, t, 0)  # tail lanes take element 0: their seed load stays inside seeds
    b = tv // D
    seed, pos = stream_position(seeds_ptr, b, tv - b * D, D, offset, PER_SAMPLE)
    z = draw(seed, pos, DIST)
    tl.store(out_ptr + t, z.to(out_ptr.dtype.element_ty), mask=mask)


def _layout(shape):
    B = shape[0]
    return B, (math.prod(shape) // B if B else 0)


@on_tensor_device
def philox_uint32(seeds, shape, offset):
    B, D = _layout(shape)
    out = torch.empty((*shape, 4), dtype=torch.int64, device=seeds.device)
    N = B * D
    if N:
        per_sample = seeds.numel() == B and B > 1
        _philox_kernel[(triton.cdiv(N, BLOCK),)](seeds, out, N, D, offset, per_sample, BLOCK, idx64(N))
    return out


@on_tensor_device
def noise(seeds, shape, offset, dist, dtype):
    B, D = _layout(shape)
    out = torch.empty(shape, dtype=dtype, device=seeds.device)
    N = B * D
    if N:
        per_sample = seeds.numel() == B and B > 1
        _noise_kernel[(triton.cdiv(N, BLOCK),)](seeds, out, N, D, offset, dist, per_sample, BLOCK, idx64(N))
    return out
