"""Variance-Reduction Guidance in Triton (docs/math.md Section 5); the same formulas as
``csrc/include/diffaccel/vrg.h``.

- ``_error_moments_kernel``: one program per (sample, chunk of its elements) reads pred and
  target once, sums ``e = pred - target`` (float32) and ``e^2`` in float64 lanes and stores
  (count, sum e, sum e^2) in its own row of a float64 scratch;
  ``_moments_finish_kernel``: one program per bin adds up the rows of its samples in a fixed
  order (no atomics: the table's bits do not depend on the programs' timing).
- ``_cumulative_error_kernel``: one program per block of candidate trajectories, the steps in
  tiles of ``BLOCK_N``; cpe and its analytic gradient from a stencil over shifted loads of abar
  (every step weight ``W_p`` depends on ``s_{p-2} .. s_{p+1}``, ``s = sqrt((1 - abar) / abar)``).
"""
import functools

import torch
import triton
import triton.language as tl

from diffaccel import layout

from .launch import on_tensor_device

VRG_DPM2M = tl.constexpr(layout.VRG_DPM2M)  # solver code (layout.VRG_SOLVERS)

MOMENT_BLOCK = 1024
MOMENT_MIN_BLOCK = 512  # 4 elements per thread at 4 warps
MOMENT_CHUNK = 16384    # chunk on CPU (the interpreter) and the most on a GPU
PROGRAMS_PER_SM = 4
MAX_CHUNKS = 65535      # grid axis 1 limit
FINISH_BLOCK = 128      # samples per iteration of the per-bin finish
CPE_BLOCK_K = 16
# at BLOCK_N = 64 the dpm2m gradient needs 255 registers and spills KBs, at 16 it spills 80 B
# (4 warps) or allows one program per SM (8 warps: 174 registers); at 8, 166 registers, 3 per SM
CPE_MAX_BLOCK_N = 8
CPE_WARPS = 4


@triton.jit
def _error_moments_kernel(pred_ptr, target_ptr, partial_ptr, D, CHUNK, BLOCK: tl.constexpr):
    """Program (b, c): e_i = float(pred[b, i]) - float(target[b, i]) over i in
    [c CHUNK, min(D, (c + 1) CHUNK)); partial[b, c] = (count, sum e, sum e^2) (float64)."""
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64)
    start = c * CHUNK
    end = tl.minimum(start + CHUNK, D)
    base = b * D
    s1 = tl.zeros([BLOCK], dtype=tl.float64)
    s2 = tl.zeros([BLOCK], dtype=tl.float64)
    for i in range(start, end, BLOCK):
        offs = i + tl.arange(0, BLOCK)
        m = offs < end
        p = tl.load(pred_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
        t = tl.load(target_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
        e = (p - t).to(tl.float64)
        s1 += e
        s2 += e * e
    row = partial_ptr + (b * tl.num_programs(1) + c) * 3
    tl.store(row, (end - start).to(tl.float64))
    tl.store(row + 1, tl.sum(s1, axis=0))
    tl.store(row + 2, tl.sum(s2, axis=0))


@triton.jit
def _moments_finish_kernel(partial_ptr, bins_ptr, table_ptr, B, NS, BLOCK_B: tl.constexpr):
    """Program j: table[j] = sum of partial[b, c] over the samples b with bins[b] == j and
    their NS chunks, lane b % BLOCK_B adding its samples in order, the lanes summed by one
    fixed tree. Bins outside [0, num_bins) match no program (the Python API refuses them)."""
    j = tl.program_id(0).to(tl.int64)
    a0 = tl.zeros([BLOCK_B], dtype=tl.float64)
    a1 = tl.zeros([BLOCK_B], dtype=tl.float64)
    a2 = tl.zeros([BLOCK_B], dtype=tl.float64)
    for b0 in range(0, B, BLOCK_B):
        bb = b0 + tl.arange(0, BLOCK_B).to(tl.int64)
        live = bb < B
        sel = live & (tl.load(bins_ptr + bb, mask=live, other=-1) == j)
        for c in range(0, NS):
            row = partial_ptr + (bb * NS + c) * 3
            a0 += tl.load(row, mask=sel, other=0.0)
            a1 += tl.load(row + 1, mask=sel, other=0.0)
            a2 += tl.load(row + 2, mask=sel, other=0.0)
    out = table_ptr + j * 3
    tl.store(out, tl.sum(a0, axis=0))
    tl.store(out + 1, tl.sum(a1, axis=0))
    tl.store(out + 2, tl.sum(a2, axis=0))


@functools.lru_cache(maxsize=None)
def _sm_count(index):
    return torch.cuda.get_device_properties(index).multi_processor_count


def moments_plan(B, D, sm_count):
    """(BLOCK, chunks, chunk) for (B, D) on a GPU with sm_count SMs: PROGRAMS_PER_SM programs per
    SM over the batch where D allows, else programs of MOMENT_MIN_BLOCK elements."""
    want = triton.cdiv(PROGRAMS_PER_SM * sm_count, max(B, 1))
    block = MOMENT_BLOCK
    if triton.cdiv(D, block) < want:
        block = min(MOMENT_BLOCK, max(MOMENT_MIN_BLOCK, triton.next_power_of_2(triton.cdiv(D, want))))
    chunk = min(MOMENT_CHUNK, max(1, triton.cdiv(D, block) // want) * block)
    return block, *_chunks(D, chunk, block)


def _chunks(D, chunk, block):
    """(chunks, chunk) with chunk grown (in whole blocks) until chunks <= MAX_CHUNKS, the limit
    of grid axis 1 (MOMENT_CHUNK alone passes it from D = 2^30 elements)."""
    chunk = max(chunk, triton.cdiv(triton.cdiv(D, MAX_CHUNKS), block) * block)
    return max(1, triton.cdiv(D, chunk)), chunk


@on_tensor_device
def error_moments(pred, target, bins, num_bins):
    """(num_bins, 3) float64 table of (count, sum e, sum e^2); pred, target contiguous."""
    B = pred.shape[0]
    D = pred.numel() // B if B else 0
    table = torch.zeros(num_bins, 3, dtype=torch.float64, device=pred.device)
    if B == 0 or num_bins == 0:
        return table
    if pred.device.type == "cuda":
        block, chunks, chunk = moments_plan(B, D, _sm_count(pred.device.index))
    else:
        block = MOMENT_BLOCK
        chunks, chunk = _chunks(D, MOMENT_CHUNK, block)
    # one float64 row per program, every row written, summed per bin in a fixed order
    partial = torch.empty((B, chunks, 3), dtype=torch.float64, device=pred.device)
    _error_moments_kernel[(B, chunks)](pred, target, partial, D, chunk, BLOCK=block)
    _moments_finish_kernel[(num_bins,)](partial, bins, table, B, chunks, BLOCK_B=FINISH_BLOCK)
    return table


# ----------------------------------------------------------------------------- cpe

@triton.jit
def _interp(grid_ptr, mse_ptr, M, x, ITERS: tl.constexpr):
    """MSE(x) and its slope: linear on the increasing grid[M], constant beyond its ends."""
    lo = tl.zeros(x.shape, dtype=tl.int32)
    hi = lo + M
    for _ in range(ITERS):  # binary search: number of grid points <= x
        active = lo < hi
        mid = (lo + hi) // 2
        g = tl.load(grid_ptr + mid, mask=active, other=0.0)
        right = active & (g <= x)
        lo = tl.where(right, mid + 1, lo)
        hi = tl.where(active & (g > x), mid, hi)
    j = tl.minimum(tl.maximum(lo - 1, 0), M - 2)
    g0 = tl.load(grid_ptr + j)
    g1 = tl.load(grid_ptr + j + 1)
    m0 = tl.load(mse_ptr + j)
    m1 = tl.load(mse_ptr + j + 1)
    slope = (m1 - m0) / (g1 - g0)
    t = (x - g0) / (g1 - g0)
    value = (1.0 - t) * m0 + t * m1  # exact at both grid points of the interval
    first = tl.load(grid_ptr)
    last = tl.load(grid_ptr + M - 1)
    below = x < first
    above = x > last
    value = tl.where(below, tl.load(mse_ptr), value)
    value = tl.where(above, tl.load(mse_ptr + M - 1), value)
    slope = tl.where(below | above, 0.0, slope)
    return value, slope


@triton.jit
def _s_at(abar_ptr, rows, rmask, q, N):
    """s = sqrt((1 - abar) / abar) at step positions q (2-d); s = 0 at q = -1 (abar = 1). Lanes
    outside the rows or [-1, N) get s = q + 4: never read by a selected branch, but distinct, so
    their (discarded) logarithms stay finite."""
    inside = rmask & (q >= 0) & (q < N)
    a = tl.load(abar_ptr + rows * N + q, mask=inside, other=0.5)
    s = tl.sqrt((1.0 - a) / a)
    s = tl.where(q == -1, 0.0, s)
    return tl.where(inside | (rmask & (q == -1)), s, (q + 4).to(tl.float64))


@triton.jit
def _dpm2m_ratio(valid, sa, sb, sc):
    """c = log(sb / sa) / (2 log(sc / sb)) and its partials in sa, sb, sc where ``valid``, else
    0 (the other lanes compute on the finite stand-ins 1, 2, 4)."""
    a = tl.where(valid, sa, 1.0)
    b = tl.where(valid, sb, 2.0)
    e = tl.where(valid, sc, 4.0)
    hp = tl.log(b / a)
    hn = tl.log(e / b)
    c = tl.where(valid, hp / (2.0 * hn), 0.0)
    dc_a = tl.where(valid, -1.0 / (2.0 * hn * a), 0.0)
    dc_b = tl.where(valid, (1.0 / (2.0 * hn) + hp / (2.0 * hn * hn)) / b, 0.0)
    dc_c = tl.where(valid, -hp / (2.0 * hn * hn * e), 0.0)
    return c, dc_a, dc_b, dc_c


@triton.jit
def _term(p, N, sm2, sm1, s0, sp1, SOLVER: tl.constexpr):
    """Step weight W_p and its partials w.r.t. s_{p-2}, s_{p-1}, s_p, s_{p+1}:
    ddim W_p = -(s_p - s_{p-1}); dpm2m W_p = -d_p (1 + c_p) + d_{p-1} c_{p-1} with
    c_p = log(s_p / s_{p-1}) / (2 log(s_{p+1} / s_p)) for 1 <= p <= N-2, else 0."""
    d = s0 - sm1
    w = -d
    dw0 = tl.zeros(s0.shape, dtype=tl.float64)
    dw1 = dw0 + 1.0
    dw2 = dw0 - 1.0
    dw3 = dw0
    if SOLVER == VRG_DPM2M:
        cur = (p >= 1) & (p <= N - 2)
        c, dc_m1, dc_0, dc_p1 = _dpm2m_ratio(cur, sm1, s0, sp1)
        w = w - d * c
        dw1 = dw1 + c - d * dc_m1
        dw2 = dw2 - c - d * dc_0
        dw3 = dw3 - d * dc_p1
        prv = (p >= 2) & (p <= N - 1)
        dp = tl.where(prv, sm1 - sm2, 0.0)
        c2, dc2_m2, dc2_m1, dc2_0 = _dpm2m_ratio(prv, sm2, sm1, s0)
        w = w + dp * c2
        dw0 = dw0 - c2 + dp * dc2_m2
        dw1 = dw1 + c2 + dp * dc2_m1
        dw2 = dw2 + dp * dc2_0
    return w, dw0, dw1, dw2, dw3


@triton.jit
def _cumulative_error_kernel(abar_ptr, grid_ptr, mse_ptr, cpe_ptr, grad_ptr, K, N, M,
                             SOLVER: tl.constexpr, WITH_GRAD: tl.constexpr, ITERS: tl.constexpr,
                             BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """cpe[k] = sum_p W_p^2 MSE(abar[k, p]); with WITH_GRAD
    grad[k, q] = ds_q/dabar_q sum_{p=q-1}^{q+2} 2 W_p MSE_p dW_p/ds_q + W_q^2 MSE'(abar_q)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    rmask = rows < K
    rows2 = rows[:, None]
    rmask2 = rmask[:, None]
    acc = tl.zeros([BLOCK_K], dtype=tl.float64)
    for n0 in range(0, N, BLOCK_N):
        q = n0 + tl.arange(0, BLOCK_N)[None, :]
        valid = rmask2 & (q < N)
        a0 = tl.load(abar_ptr + rows2 * N + q, mask=valid, other=0.5)
        s_m3 = _s_at(abar_ptr, rows2, rmask2, q - 3, N)
        s_m2 = _s_at(abar_ptr, rows2, rmask2, q - 2, N)
        s_m1 = _s_at(abar_ptr, rows2, rmask2, q - 1, N)
        s_0 = _s_at(abar_ptr, rows2, rmask2, q, N)
        s_p1 = _s_at(abar_ptr, rows2, rmask2, q + 1, N)
        s_p2 = _s_at(abar_ptr, rows2, rmask2, q + 2, N)
        s_p3 = _s_at(abar_ptr, rows2, rmask2, q + 3, N)
        m0, dm0 = _interp(grid_ptr, mse_ptr, M, a0, ITERS)
        w0, _, _, e2, _ = _term(q, N, s_m2, s_m1, s_0, s_p1, SOLVER)
        acc += tl.sum(tl.where(valid, w0 * w0 * m0, 0.0), axis=1)
        if WITH_GRAD:
            # terms p = q - 1, q + 1, q + 2 and their MSE values
            a_m1 = tl.load(abar_ptr + rows2 * N + q - 1, mask=valid & (q >= 1), other=0.5)
            a_p1 = tl.load(abar_ptr + rows2 * N + q + 1, mask=valid & (q + 1 < N), other=0.5)
            a_p2 = tl.load(abar_ptr + rows2 * N + q + 2, mask=valid & (q + 2 < N), other=0.5)
            mm1, _ = _interp(grid_ptr, mse_ptr, M, a_m1, ITERS)
            mp1, _ = _interp(grid_ptr, mse_ptr, M, a_p1, ITERS)
            mp2, _ = _interp(grid_ptr, mse_ptr, M, a_p2, ITERS)
            wm1, _, _, _, e3 = _term(q - 1, N, s_m3, s_m2, s_m1, s_0, SOLVER)
            wp1, _, e1, _, _ = _term(q + 1, N, s_m1, s_0, s_p1, s_p2, SOLVER)
            wp2, e0, _, _, _ = _term(q + 2, N, s_0, s_p1, s_p2, s_p3, SOLVER)
            gs = 2.0 * w0 * m0 * e2
            gs += tl.where(q >= 1, 2.0 * wm1 * mm1 * e3, 0.0)
            gs += tl.where(q + 1 < N, 2.0 * wp1 * mp1 * e1, 0.0)
            gs += tl.where(q + 2 < N, 2.0 * wp2 * mp2 * e0, 0.0)
            ds = -0.5 / (s_0 * a0 * a0)
            g = gs * ds + w0 * w0 * dm0
            tl.store(grad_ptr + rows2 * N + q, g, mask=valid)
    tl.store(cpe_ptr + rows, acc, mask=rmask)


@on_tensor_device
def cumulative_error(abar, grid, mse, solver, with_grad):
    """(cpe (K,), grad (K, N) or an empty tensor) for contiguous float64 abar (K, N)."""
    K, N = abar.shape
    M = grid.shape[0]
    cpe = torch.empty(K, dtype=torch.float64, device=abar.device)
    grad = torch.empty_like(abar) if with_grad else abar.new_empty(0)
    if K == 0 or N == 0:
        if N == 0:
            cpe.zero_()
        return cpe, grad
    block_n = min(CPE_MAX_BLOCK_N, triton.next_power_of_2(N))
    _cumulative_error_kernel[(triton.cdiv(K, CPE_BLOCK_K),)](
        abar, grid, mse, cpe, grad if with_grad else cpe, K, N, M, SOLVER=int(solver),
        WITH_GRAD=bool(with_grad), ITERS=int(M).bit_length(), BLOCK_K=CPE_BLOCK_K,
        BLOCK_N=block_n, num_warps=CPE_WARPS)
    return cpe, grad
