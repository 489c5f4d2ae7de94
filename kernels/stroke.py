"""Stroke operator and fused stroke noising in Triton (docs/math.md Section 2).

Two paths:

- tile path, when every scale is a power of two up to MAX_TILE_SCALE = 16 (so each divides the
  next): one program owns a T x T tile of one (b, c) plane, T a multiple of every scale, so every
  block of every scale lies inside it. One read of the tile yields every level
  (S_{2k} = S_{2k} S_k); x0 is read once and each output written once, the noise drawn in
  registers.
- general path, any scales >= 2: a first kernel takes the block means of every scale into a small
  float32 buffer (for the noise, redrawing it), a second reads x0 once more and writes the outputs.
"""
import torch
import triton
import triton.language as tl

from diffaccel import layout

from .launch import on_tensor_device
from .random import _flat_index, draw, idx64, stream_position

# the stroke-noise target codes of diffaccel/layout.py (TARGETS), as constexprs the kernels read
TARGET_EPS = tl.constexpr(layout.TARGET_EPS)
TARGET_X0 = tl.constexpr(layout.TARGET_X0)

MAX_TILE_SCALES = 4
BLOCK = 1024
MEANS_BLOCK = 256


@triton.jit
def _noise_outputs(ax, ae, alpha, sigma, TARGET: tl.constexpr):
    """x_t = alpha ax + sigma ae and the target: ae (TARGET_EPS), ax (TARGET_X0) or
    alpha ae - sigma ax (TARGET_V), from ax = A_{wx} x0 and ae = A_{we} eps."""
    xt = alpha * ax + sigma * ae
    if TARGET == TARGET_EPS:
        tgt = ae
    elif TARGET == TARGET_X0:
        tgt = ax
    else:
        tgt = alpha * ae - sigma * ax
    return xt, tgt


# ----------------------------------------------------------------------------- tile path

@triton.jit
def _tile_level(v, r0, c0, H, W, K: tl.constexpr, T: tl.constexpr):
    """S_K v on a T x T tile at (r0, c0); the tile's out-of-plane entries of v must be zero."""
    s = tl.sum(tl.sum(tl.reshape(v, [T // K, K, T // K, K]), axis=3), axis=1)
    bi = tl.arange(0, T // K)
    rows = tl.minimum(tl.maximum(H - (r0 + bi * K), 0), K)
    cols = tl.minimum(tl.maximum(W - (c0 + bi * K), 0), K)
    n = (rows[:, None] * cols[None, :]).to(tl.float32)
    m = s / tl.maximum(n, 1.0)
    up = tl.broadcast_to(tl.reshape(m, [T // K, 1, T // K, 1]), [T // K, K, T // K, K])
    return tl.reshape(up, [T, T])


@triton.jit
def _tile_blur(v, wb_ptr, r0, c0, H, W, K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr,
               K4: tl.constexpr, T: tl.constexpr):
    """A_w v on a tile, weights at wb_ptr[0..J) (scales K1..K4, 0 = unused)."""
    w1 = tl.load(wb_ptr)
    acc = w1 * _tile_level(v, r0, c0, H, W, K1, T)
    keep = 1.0 - w1
    if K2 > 0:
        w2 = tl.load(wb_ptr + 1)
        acc += w2 * _tile_level(v, r0, c0, H, W, K2, T)
        keep -= w2
    if K3 > 0:
        w3 = tl.load(wb_ptr + 2)
        acc += w3 * _tile_level(v, r0, c0, H, W, K3, T)
        keep -= w3
    if K4 > 0:
        w4 = tl.load(wb_ptr + 3)
        acc += w4 * _tile_level(v, r0, c0, H, W, K4, T)
        keep -= w4
    return keep * v + acc


@triton.jit
def _tile_coords(C, H, W, J, T: tl.constexpr):
    """Plane, sample, tile origin, element offsets and mask of this program's tile."""
    plane = tl.program_id(0).to(tl.int64)
    r0 = tl.program_id(1) * T
    c0 = tl.program_id(2) * T
    r = r0 + tl.arange(0, T)
    c = c0 + tl.arange(0, T)
    mask = (r[:, None] < H) & (c[None, :] < W)
    rc = r[:, None].to(tl.int64) * W + c[None, :]
    return plane, plane // C, r0, c0, rc, mask


@triton.jit
def _stroke_blur_tile_kernel(x_ptr, w_ptr, y_ptr, C, H, W, J, K1: tl.constexpr, K2: tl.constexpr,
                             K3: tl.constexpr, K4: tl.constexpr, T: tl.constexpr):
    """y = A_w x on one T x T tile of one plane (power-of-two scales)."""
    plane, b, r0, c0, rc, mask = _tile_coords(C, H, W, J, T)
    base = plane * H * W
    x = tl.load(x_ptr + base + rc, mask=mask, other=0.0).to(tl.float32)
    y = _tile_blur(x, w_ptr + b * J, r0, c0, H, W, K1, K2, K3, K4, T)
    tl.store(y_ptr + base + rc, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _stroke_noise_tile_kernel(x0_ptr, alpha_ptr, sigma_ptr, wx_ptr, we_ptr, seeds_ptr, xt_ptr,
                              tgt_ptr, C, H, W, J, offset, K1: tl.constexpr, K2: tl.constexpr,
                              K3: tl.constexpr, K4: tl.constexpr, T: tl.constexpr,
                              DIST: tl.constexpr, PER_SAMPLE: tl.constexpr, TARGET: tl.constexpr):
    """x_t = alpha A_{wx} x0 + sigma A_{we} eps and the target, eps drawn in registers."""
    plane, b, r0, c0, rc, mask = _tile_coords(C, H, W, J, T)
    HW = H * W
    base = plane * HW
    x0 = tl.load(x0_ptr + base + rc, mask=mask, other=0.0).to(tl.float32)
    seed, pos = stream_position(seeds_ptr, b, (plane - b * C) * HW + rc, C * HW, offset, PER_SAMPLE)
    eps = tl.where(mask, draw(seed, pos, DIST), 0.0)
    ax = _tile_blur(x0, wx_ptr + b * J, r0, c0, H, W, K1, K2, K3, K4, T)
    ae = _tile_blur(eps, we_ptr + b * J, r0, c0, H, W, K1, K2, K3, K4, T)
    xt, tgt = _noise_outputs(ax, ae, tl.load(alpha_ptr + b), tl.load(sigma_ptr + b), TARGET)
    tl.store(xt_ptr + base + rc, xt.to(xt_ptr.dtype.element_ty), mask=mask)
    tl.store(tgt_ptr + base + rc, tgt.to(tgt_ptr.dtype.element_ty), mask=mask)


# The tile path takes power-of-two scales up to MAX_TILE_SCALE. At T = 32 or 64 the compiled
# kernel either spills (4 warps: 255 registers and a stack; T = 64 spills KBs at any warp count)
# or allows a single program per SM (8 warps: 192 registers; 16 warps: 94), so those scale sets
# take the general path (tests/build/test_gpu_codegen.py checks every tile side the launcher picks).
MAX_TILE_SCALE = 16
TILE_WARPS = {16: 4}


def tile_scales(scales):
    """(K1..K4, T) for the tile path, or None when the scales need the general path."""
    if len(scales) > MAX_TILE_SCALES or any(k & (k - 1) for k in scales) or max(scales) > MAX_TILE_SCALE:
        return None
    T = max(16, max(scales))
    return tuple(scales) + (0,) * (MAX_TILE_SCALES - len(scales)), T


def tile_config(scales):
    """(K1..K4, T, num_warps) of the tile path, or None (general path)."""
    tile = tile_scales(scales)
    if tile is None:
        return None
    ks, T = tile
    return ks, T, TILE_WARPS[T]


# -------------------------------------------------------------------------- general path

@triton.jit
def _means_offset(plane, total, moff, q):
    """plane * total + moff + q in int64 (plane and total may be int32)."""
    return plane.to(tl.int64) * total + moff + q


@triton.jit
def _block_means_kernel(x_ptr, seeds_ptr, means_ptr, n_items, C, H, W, K, nw, total, moff, offset,
                        FROM_NOISE: tl.constexpr, DIST: tl.constexpr, PER_SAMPLE: tl.constexpr,
                        BLOCK: tl.constexpr, IDX64: tl.constexpr = False):
    """means[plane, moff + I*nw + J] = mean of block (I, J) of scale K, of x or of the noise.
    Indices are 32-bit unless IDX64 (a tensor of 2^31 elements or more): no 64-bit division."""
    t = _flat_index(BLOCK, IDX64)
    live = t < n_items
    t = tl.where(live, t, 0)  # tail lanes take block mean 0: no seed load past the batch
    nblk = ((H + K - 1) // K) * nw
    plane = t // nblk
    q = t - plane * nblk
    I = q // nw
    Jb = q - I * nw
    b = plane // C
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for dy in range(0, K):
        for dx in range(0, K):
            r = I * K + dy
            c = Jb * K + dx
            m = live & (r < H) & (c < W)
            rc = r * W + c
            if FROM_NOISE:
                seed, pos = stream_position(seeds_ptr, b, (plane - b * C) * H * W + rc, C * H * W,
                                            offset, PER_SAMPLE)
                v = tl.where(m, draw(seed, pos, DIST), 0.0)
            else:
                v = tl.load(x_ptr + plane * H * W + rc, mask=m, other=0.0).to(tl.float32)
            acc += v
    n = (tl.minimum(H - I * K, K) * tl.minimum(W - Jb * K, K)).to(tl.float32)
    # in int64: B*C*total passes 2^31 before x.numel() does when the scales' 1/k^2 add up past 1
    tl.store(means_ptr + _means_offset(plane, total, moff, q), acc / n, mask=live)


@triton.jit
def _weighted_means(means_ptr, grid_ptr, wb_ptr, plane, total, r, c, J):
    """(sum_j w_j (S_{k_j} v)[r, c], 1 - sum_j w_j) from the block means of v."""
    acc = tl.zeros(r.shape, dtype=tl.float32)
    keep = tl.zeros(r.shape, dtype=tl.float32) + 1.0
    for j in range(0, J):
        # in the index type of r (int32 below 2^31 elements): 32-bit divisions
        k = tl.load(grid_ptr + 3 * j).to(r.dtype)
        nw = tl.load(grid_ptr + 3 * j + 1).to(r.dtype)
        moff = tl.load(grid_ptr + 3 * j + 2).to(r.dtype)
        wj = tl.load(wb_ptr + j)
        acc += wj * tl.load(means_ptr + plane.to(tl.int64) * total + moff + (r // k) * nw + c // k)
        keep -= wj
    return acc, keep


@triton.jit
def _stroke_blur_kernel(x_ptr, w_ptr, means_ptr, grid_ptr, y_ptr, N, C, H, W, J, total,
                        BLOCK: tl.constexpr, IDX64: tl.constexpr = False):
    """y = A_w x per element from the block means of x."""
    t = _flat_index(BLOCK, IDX64)
    mask = t < N
    tv = tl.where(mask, t, 0)  # tail lanes gather element 0's means and weights (in bounds)
    plane = tv // (H * W)
    rc = tv - plane * (H * W)
    r = rc // W
    c = rc - r * W
    x = tl.load(x_ptr + t, mask=mask, other=0.0).to(tl.float32)
    acc, keep = _weighted_means(means_ptr, grid_ptr, w_ptr + (plane // C) * J, plane, total, r, c, J)
    tl.store(y_ptr + t, (keep * x + acc).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _stroke_noise_kernel(x0_ptr, alpha_ptr, sigma_ptr, wx_ptr, we_ptr, seeds_ptr, mx_ptr, me_ptr,
                         grid_ptr, xt_ptr, tgt_ptr, N, C, H, W, J, total, offset,
                         DIST: tl.constexpr, PER_SAMPLE: tl.constexpr, TARGET: tl.constexpr,
                         BLOCK: tl.constexpr, IDX64: tl.constexpr = False):
    """x_t and target per element: x0 read once, eps redrawn, block means gathered."""
    t = _flat_index(BLOCK, IDX64)
    mask = t < N
    HW = H * W
    tv = tl.where(mask, t, 0)  # tail lanes: element 0's seed, means and weights (in bounds)
    plane = tv // HW
    rc = tv - plane * HW
    r = rc // W
    c = rc - r * W
    b = plane // C
    x0 = tl.load(x0_ptr + t, mask=mask, other=0.0).to(tl.float32)
    seed, pos = stream_position(seeds_ptr, b, (plane - b * C) * HW + rc, C * HW, offset, PER_SAMPLE)
    eps = draw(seed, pos, DIST)
    sx, kx = _weighted_means(mx_ptr, grid_ptr, wx_ptr + b * J, plane, total, r, c, J)
    se, ke = _weighted_means(me_ptr, grid_ptr, we_ptr + b * J, plane, total, r, c, J)
    ax = kx * x0 + sx
    ae = ke * eps + se
    alpha = tl.load(alpha_ptr + b, mask=mask, other=0.0)
    sigma = tl.load(sigma_ptr + b, mask=mask, other=0.0)
    xt, tgt = _noise_outputs(ax, ae, alpha, sigma, TARGET)
    tl.store(xt_ptr + t, xt.to(xt_ptr.dtype.element_ty), mask=mask)
    tl.store(tgt_ptr + t, tgt.to(tgt_ptr.dtype.element_ty), mask=mask)


def _grid_rows(scales, H, W):
    """([(k, blocks per row, offset) per scale], total block count per plane)."""
    rows, total = [], 0
    for k in scales:
        nh, nw = -(-H // k), -(-W // k)
        rows.append((k, nw, total))
        total += nh * nw
    return rows, total


_TABLES = {}


def _grid_table(scales, H, W, device):
    """(int64 [J, 3] device table of _grid_rows, the rows, total), cached per shape and device:
    building it is a host-to-device copy, which would sync the stream on every call and cannot
    be captured in a CUDA graph."""
    key = (tuple(scales), H, W, str(device))
    if key not in _TABLES:
        rows, total = _grid_rows(scales, H, W)
        _TABLES[key] = (torch.tensor(rows, dtype=torch.int64, device=device), rows, total)
    return _TABLES[key]


@on_tensor_device
def _block_means(x, rows, total, seeds=None, offset=0, dist=layout.NORMAL):
    """[B*C, total] float32 block means of x (or, with seeds, of the stroke noise)."""
    B, C, H, W = x.shape
    means = torch.empty((B * C, total), dtype=torch.float32, device=x.device)
    per_sample = seeds is not None and seeds.numel() == B and B > 1
    for (k, nw, moff) in rows:
        n_items = B * C * (-(-H // k)) * nw
        _block_means_kernel[(triton.cdiv(n_items, MEANS_BLOCK),)](
            x, x if seeds is None else seeds, means, n_items, C, H, W, k, nw, total, moff, offset,
            seeds is not None, dist, per_sample, MEANS_BLOCK, idx64(x.numel()))
    return means


# ------------------------------------------------------------------------------ launchers

@on_tensor_device
def stroke_blur(x, weights, scales):
    """A_w x. x: (B, C, H, W) contiguous; weights: (B, J) float32 contiguous."""
    B, C, H, W = x.shape
    y = torch.empty_like(x)
    if y.numel() == 0:
        return y
    J = len(scales)
    tile = tile_config(scales)
    if tile is not None:
        ks, T, warps = tile
        _stroke_blur_tile_kernel[(B * C, triton.cdiv(H, T), triton.cdiv(W, T))](
            x, weights, y, C, H, W, J, *ks, T, num_warps=warps)
        return y
    table, rows, total = _grid_table(scales, H, W, x.device)
    means = _block_means(x, rows, total)
    N = x.numel()
    _stroke_blur_kernel[(triton.cdiv(N, BLOCK),)](x, weights, means, table, y, N, C, H, W, J, total, BLOCK,
                                                  idx64(N))
    return y


@on_tensor_device
def stroke_noise(x0, alpha, sigma, data_weights, noise_weights, scales, seeds, offset, dist, target):
    """(x_t, target) of the fused stroke noising; all tensors contiguous, float32 per-sample."""
    B, C, H, W = x0.shape
    xt, tgt = torch.empty_like(x0), torch.empty_like(x0)
    if x0.numel() == 0:
        return xt, tgt
    J = len(scales)
    per_sample = seeds.numel() == B and B > 1
    tile = tile_config(scales)
    if tile is not None:
        ks, T, warps = tile
        _stroke_noise_tile_kernel[(B * C, triton.cdiv(H, T), triton.cdiv(W, T))](
            x0, alpha, sigma, data_weights, noise_weights, seeds, xt, tgt, C, H, W, J, offset,
            *ks, T, dist, per_sample, target, num_warps=warps)
        return xt, tgt
    table, rows, total = _grid_table(scales, H, W, x0.device)
    mx = _block_means(x0, rows, total)
    me = _block_means(x0, rows, total, seeds=seeds, offset=offset, dist=dist)
    N = x0.numel()
    _stroke_noise_kernel[(triton.cdiv(N, BLOCK),)](
        x0, alpha, sigma, data_weights, noise_weights, seeds, mx, me, table, xt, tgt, N, C, H, W,
        J, total, offset, dist, per_sample, target, BLOCK, idx64(N))
    return xt, tgt


def _block_sizes(n, k, device):
    """Sizes of the ceil(n / k) blocks of side k along an axis of length n: min(k, n - k I)."""
    return torch.clamp(n - k * torch.arange(-(-n // k), device=device), max=k)


def _block_sums(v, k):
    """(B, C, ceil(H/k), ceil(W/k)) sums of v over its k x k blocks (the last ones partial)."""
    H, W = v.shape[-2:]
    nh, nw = -(-H // k), -(-W // k)
    vp = torch.nn.functional.pad(v, (0, nw * k - W, 0, nh * k - H))
    return vp.reshape(*v.shape[:-2], nh, k, nw, k).sum(dim=(-3, -1))


@on_tensor_device
def stroke_blur_backward(grad, x, weights, scales):
    """(A_w grad, grad_w): the gradients of <A_w x, grad> in x and in the weights (B, J).

    A_w is self-adjoint, so the first is the blur kernel on grad. The second is
    grad_w[b, j] = sum_{c, blocks of k_j} n_blk mean_x mean_g - <x, g>: a reduction over the
    small block-mean tensors, left to PyTorch (in float64). All tensors contiguous."""
    gx = stroke_blur(grad, weights, scales)
    xd, gd = x.double(), grad.double()
    xg = (xd * gd).flatten(1).sum(1)
    H, W = x.shape[-2:]
    cols = []
    for k in scales:
        n = (_block_sizes(H, k, x.device)[:, None] * _block_sizes(W, k, x.device)[None, :]).double()
        mean_x, mean_g = _block_sums(xd, k) / n, _block_sums(gd, k) / n
        cols.append((mean_x * mean_g * n).flatten(1).sum(1) - xg)
    return gx, torch.stack(cols, 1).float()

