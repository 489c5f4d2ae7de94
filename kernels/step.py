"""The fused sampler step in Triton (docs/math.md Section 3.1; contract: diffaccel/reference/step.py).

Two kernels, laid out like the CUDA one (csrc/cuda/step.cu):

- ``_sample_step_kernel``, grid (B, num_splits): program (b, c) walks split c of sample b, a
  contiguous range of its D elements (a multiple of BLOCK; the last split may be shorter) in
  blocks. It reads x and the K model outputs once, draws the increment in registers, writes
  the new x, sums |s|^2, s.z, x.s and then each probe's Hutchinson dot product t_p over its range
  in float32, stores those 3 + P partial sums in its own row of a (B, num_splits, 3 + P) float32
  scratch, and writes its range of the next step's probes.
- The optional y line (constexpr ``Y``, so the plain step compiles to the same code): the same
  loads also give y = bx x + sum_k bm_k M_k, clamped (``CLIP``), stored (``Y_OUT``) and added to
  x_new and s; the scratch rows then end with |z|^2 and |x_new|^2.
- ``_step_finish_kernel``, grid (B,): adds up sample b's partial sums in float64 and adds the
  log-density increment and the estimate's variance into the (B,) accumulators in place.

No atomics: every partial sum has its own slot and is reduced in a fixed order, so results are
deterministic.
"""
import functools

import torch
import triton
import triton.language as tl

from diffaccel import layout
from diffaccel.layout import MAX_MODELS

from .launch import on_tensor_device
from .random import draw

# The coefficient and y-line columns of diffaccel/layout.py, as constexprs the kernels read
COEF_AX = tl.constexpr(layout.COEF_AX)
COEF_AZ = tl.constexpr(layout.COEF_AZ)
COEF_SX = tl.constexpr(layout.COEF_SX)
COEF_C0 = tl.constexpr(layout.COEF_C0)
COEF_C1 = tl.constexpr(layout.COEF_C1)
COEF_C2 = tl.constexpr(layout.COEF_C2)
COEF_C3 = tl.constexpr(layout.COEF_C3)
COEF_PER_MODEL = tl.constexpr(layout.COEF_PER_MODEL)
COEF_AM0 = tl.constexpr(layout.coef_am(0))  # model k's columns: these + COEF_PER_MODEL k
COEF_SM0 = tl.constexpr(layout.coef_sm(0))
COEF_CW0 = tl.constexpr(layout.coef_cw(0))
Y_BX = tl.constexpr(layout.Y_BX)
Y_AY = tl.constexpr(layout.Y_AY)
Y_SY = tl.constexpr(layout.Y_SY)
Y_CZ = tl.constexpr(layout.Y_CZ)
Y_CN = tl.constexpr(layout.Y_CN)
Y_HEAD = tl.constexpr(layout.Y_HEAD)  # bm_k: Y_HEAD + k
PROGRAMS_PER_SM = 4   # on CUDA, aim at this many programs per SM in all
SPLIT_BLOCK = 128     # splits reduced per iteration of the finish kernel


@triton.jit
def _add_model(m_ptr, row, yrow, k: tl.constexpr, offs, mask, xn, s, y, Y: tl.constexpr):
    """xn += am_k M_k, s += sm_k M_k (and y += bm_k M_k with Y) for one block."""
    m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    am = tl.load(row + COEF_AM0 + COEF_PER_MODEL * k)
    sm = tl.load(row + COEF_SM0 + COEF_PER_MODEL * k)
    if Y:
        y = y + tl.load(yrow + Y_HEAD + k) * m
    return xn + am * m, s + sm * m, y


@triton.jit
def _add_vjp(w_ptr, row, k: tl.constexpr, offs, mask, acc):
    """acc += cw_k w_{k,p} for one block."""
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return acc + tl.load(row + COEF_CW0 + COEF_PER_MODEL * k) * w


@triton.jit
def _sample_step_kernel(x_ptr, out_ptr, coef_ptr, z_ptr, seeds_ptr, partial_ptr, probes_ptr,
                        probes_out_ptr, m0, m1, m2, m3, m4, m5, m6, m7, w0, w1, w2, w3, w4, w5,
                        w6, w7, B, D, CHUNK, offset, probe_offset, P, P_out, W, ycoef_ptr,
                        y_out_ptr, clip,
                        K: tl.constexpr, DIST: tl.constexpr, HAS_Z: tl.constexpr,
                        TRACK: tl.constexpr, HUTCH: tl.constexpr, PROBE_DIST: tl.constexpr,
                        PER_SAMPLE: tl.constexpr, BLOCK: tl.constexpr, Y: tl.constexpr = False,
                        Y_OUT: tl.constexpr = False, CLIP: tl.constexpr = False):
    """Split c = program_id(1) (elements [c CHUNK, min(D, (c + 1) CHUNK))) of sample
    b = program_id(0), coefficients c = coef[b]. (The batch is on axis 0, whose limit is
    2^31 - 1; axes 1 and 2 are capped at 65535.)

    x_new = ax x + az z + sum_k am_k M_k;   s = sx x + sum_k sm_k M_k
    partial[b, c] = (sum |s|^2, sum s.z, sum x.s, t_0, .., t_{P-1}) over the split (TRACK),
    t_p = sum_i v_{p,i} sum_k cw_k w_{k,p,i} (HUTCH; the row has 3 + P floats).
    z: loaded (HAS_Z), drawn at offset + (PER_SAMPLE ? 0 : b D) + i (DIST >= 0), or 0.
    Y: y = bx x + sum_k bm_k M_k (ycoef[b] = bx, ay, sy, cz, cn, bm_k), clamped to [-clip, clip]
    (CLIP), written to y_out (Y_OUT); x_new += ay y, s += sy y; the row then ends with
    sum |z|^2, sum |x_new|^2 (row width 5 + P).
    """
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64)
    start = c * CHUNK
    # CHUNK is a multiple of BLOCK, so blocks never straddle two splits: i < D is the only mask
    end = tl.minimum(start + CHUNK, D)
    row = coef_ptr + b * W
    RW = 3 + P
    if Y:
        RW = RW + 2
    part = partial_ptr + (b * tl.num_programs(1) + c) * RW
    yrow = ycoef_ptr + b * (Y_HEAD + K)
    ax = tl.load(row + COEF_AX)
    az = tl.load(row + COEF_AZ)
    sx = tl.load(row + COEF_SX)
    if PER_SAMPLE:
        seed = tl.load(seeds_ptr + b)
    else:
        seed = tl.load(seeds_ptr)
    ss = tl.zeros([BLOCK], dtype=tl.float32)
    sz = tl.zeros([BLOCK], dtype=tl.float32)
    xs = tl.zeros([BLOCK], dtype=tl.float32)
    if Y:
        zz = tl.zeros([BLOCK], dtype=tl.float32)
        nn = tl.zeros([BLOCK], dtype=tl.float32)
    lanes = tl.arange(0, BLOCK)
    for i0 in range(start, end, BLOCK):
        i = i0 + lanes
        mask = i < D
        offs = b * D + i
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_Z:
            z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        elif DIST >= 0:
            if PER_SAMPLE:
                pos = offset + i
            else:
                pos = offset + b * D + i
            z = tl.where(mask, draw(seed, pos, DIST), 0.0)
        else:
            z = tl.zeros([BLOCK], dtype=tl.float32)
        xn = ax * x + az * z
        s = sx * x
        y = x  # the y line (Y); unused otherwise
        if Y:
            y = tl.load(yrow + Y_BX) * x
        if K > 0:
            xn, s, y = _add_model(m0, row, yrow, 0, offs, mask, xn, s, y, Y)
        if K > 1:
            xn, s, y = _add_model(m1, row, yrow, 1, offs, mask, xn, s, y, Y)
        if K > 2:
            xn, s, y = _add_model(m2, row, yrow, 2, offs, mask, xn, s, y, Y)
        if K > 3:
            xn, s, y = _add_model(m3, row, yrow, 3, offs, mask, xn, s, y, Y)
        if K > 4:
            xn, s, y = _add_model(m4, row, yrow, 4, offs, mask, xn, s, y, Y)
        if K > 5:
            xn, s, y = _add_model(m5, row, yrow, 5, offs, mask, xn, s, y, Y)
        if K > 6:
            xn, s, y = _add_model(m6, row, yrow, 6, offs, mask, xn, s, y, Y)
        if K > 7:
            xn, s, y = _add_model(m7, row, yrow, 7, offs, mask, xn, s, y, Y)
        if Y:
            if CLIP:  # torch.clamp: NaN fails both tests and stays NaN (tl.minimum might drop it)
                y = tl.where(y > clip, clip, tl.where(y < -clip, -clip, y))
            xn += tl.load(yrow + Y_AY) * y
            s += tl.load(yrow + Y_SY) * y
            if Y_OUT:
                tl.store(y_out_ptr + offs, y.to(y_out_ptr.dtype.element_ty), mask=mask)
            if TRACK:
                zz += z * z
                nn += xn * xn
        tl.store(out_ptr + offs, xn.to(out_ptr.dtype.element_ty), mask=mask)
        if TRACK:
            ss += s * s
            sz += s * z
            xs += x * s
    if TRACK:
        tl.store(part, tl.sum(ss))
        tl.store(part + 1, tl.sum(sz))
        tl.store(part + 2, tl.sum(xs))
        if Y:
            tl.store(part + 3 + P, tl.sum(zz))
            tl.store(part + 4 + P, tl.sum(nn))
        if HUTCH:
            for p in range(0, P):
                t = tl.zeros([BLOCK], dtype=tl.float32)
                for i0 in range(start, end, BLOCK):
                    i = i0 + lanes
                    mask = i < D
                    offs = (p * B + b) * D + i
                    acc = tl.zeros([BLOCK], dtype=tl.float32)
                    acc = _add_vjp(w0, row, 0, offs, mask, acc)
                    if K > 1:
                        acc = _add_vjp(w1, row, 1, offs, mask, acc)
                    if K > 2:
                        acc = _add_vjp(w2, row, 2, offs, mask, acc)
                    if K > 3:
                        acc = _add_vjp(w3, row, 3, offs, mask, acc)
                    if K > 4:
                        acc = _add_vjp(w4, row, 4, offs, mask, acc)
                    if K > 5:
                        acc = _add_vjp(w5, row, 5, offs, mask, acc)
                    if K > 6:
                        acc = _add_vjp(w6, row, 6, offs, mask, acc)
                    if K > 7:
                        acc = _add_vjp(w7, row, 7, offs, mask, acc)
                    v = tl.load(probes_ptr + offs, mask=mask, other=0.0).to(tl.float32)
                    t += v * acc
                tl.store(part + 3 + p, tl.sum(t))
    for p in range(0, P_out):
        for i0 in range(start, end, BLOCK):
            i = i0 + lanes
            mask = i < D
            # in int64 before the multiply: p * D and probe_offset + p * D can pass 2^31 (p, D
            # and probe_offset may all arrive as int32); tl.cast, not D.to: the JIT passes D == 1
            # as the constexpr 1, a Python int
            if PER_SAMPLE:
                pos = probe_offset + p * tl.cast(D, tl.int64) + i
            else:
                pos = probe_offset + (b * P_out + p) * D + i
            v = draw(seed, pos, PROBE_DIST)
            tl.store(probes_out_ptr + (p * B + b) * D + i, v.to(probes_out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _split_sum(row, NS, RW, BLOCK_S: tl.constexpr):
    """sum_c row[c RW] over the NS splits, in float64."""
    acc = tl.zeros([BLOCK_S], dtype=tl.float64)
    for c0 in range(0, NS, BLOCK_S):
        c = c0 + tl.arange(0, BLOCK_S)
        acc += tl.load(row + c * RW, mask=c < NS, other=0.0).to(tl.float64)
    return tl.sum(acc)


@triton.jit
def _step_finish_kernel(partial_ptr, coef_ptr, logp_ptr, var_ptr, NS, P, W, ycoef_ptr, YW,
                        TRACK_VAR: tl.constexpr, BLOCK_S: tl.constexpr, Y: tl.constexpr = False):
    """Sample b = program_id(0), coefficients c = coef[b], sums over its NS splits (float64):

    logp[b]     += c0 + c1 |s|^2 + c2 s.z + c3 x.s + mean_p t_p
    logp_var[b] += sum_p (t_p - mean)^2 / (P (P - 1))          (P >= 2)
    logp[b]     += cz |z|^2 + cn |x_new|^2                      (Y; ycoef[b] columns Y_CZ, Y_CN)
    """
    b = tl.program_id(0).to(tl.int64)
    row = coef_ptr + b * W
    RW = 3 + P
    if Y:
        RW = RW + 2
    part = partial_ptr + b * NS * RW
    inc = (tl.load(row + COEF_C0).to(tl.float64)
           + tl.load(row + COEF_C1).to(tl.float64) * _split_sum(part, NS, RW, BLOCK_S)
           + tl.load(row + COEF_C2).to(tl.float64) * _split_sum(part + 1, NS, RW, BLOCK_S)
           + tl.load(row + COEF_C3).to(tl.float64) * _split_sum(part + 2, NS, RW, BLOCK_S))
    var = inc * 0.0
    if P > 0:
        # shifted sums of t_p (shift = t_0) keep the variance free of cancellation
        shift = inc * 0.0
        s1 = inc * 0.0
        s2 = inc * 0.0
        for p in range(0, P):
            tp = _split_sum(part + 3 + p, NS, RW, BLOCK_S)
            if p == 0:
                shift = tp
            s1 += tp - shift
            s2 += (tp - shift) * (tp - shift)
        inc += shift + s1 / P
        if P > 1:
            var = (s2 - s1 * s1 / P) / (P * (P - 1))
    if Y:
        yrow = ycoef_ptr + b * YW
        inc += (tl.load(yrow + Y_CZ).to(tl.float64) * _split_sum(part + 3 + P, NS, RW, BLOCK_S)
                + tl.load(yrow + Y_CN).to(tl.float64) * _split_sum(part + 4 + P, NS, RW, BLOCK_S))
    lp = tl.load(logp_ptr + b).to(tl.float64)
    tl.store(logp_ptr + b, (lp + inc).to(logp_ptr.dtype.element_ty))
    if TRACK_VAR:
        lv = tl.load(var_ptr + b).to(tl.float64)
        tl.store(var_ptr + b, (lv + var).to(var_ptr.dtype.element_ty))


def _block(D, device):
    cap = 1024 if device.type == "cuda" else 4096
    return max(16, min(cap, triton.next_power_of_2(max(D, 1))))


@functools.lru_cache(maxsize=None)
def _sm_count(index):
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_warps(K):
    """Warps per program (4; 8 warps at K = 8 took 172 registers: one program per SM)."""
    return 4


def max_block(K):
    """The largest BLOCK on a GPU: 512 from four model outputs on (fp16 K=8 with probes at 1024
    takes 251 registers, 2 programs per SM; at 512, 144 registers and 3)."""
    return 512 if K >= 4 else 1024


def min_program_elems(warps):
    """The fewest elements a program takes on a GPU: four per thread (one 16-byte fp32 vector)."""
    return 4 * 32 * warps


def gpu_plan(B, D, K, sm_count):
    """(BLOCK, num_splits, chunk, num_warps) on a GPU with sm_count SMs: PROGRAMS_PER_SM programs
    per SM over the batch where D allows, else programs of min_program_elems each."""
    warps = num_warps(K)
    want = triton.cdiv(PROGRAMS_PER_SM * sm_count, max(B, 1))
    block = max_block(K)
    if triton.cdiv(D, block) < want:
        block = max(min_program_elems(warps), triton.next_power_of_2(triton.cdiv(D, want)))
        block = min(block, max_block(K))
    num_splits, chunk = _plan(D, block, min(want, triton.cdiv(D, block)))
    return block, num_splits, chunk, warps


def _plan(D, block, splits):
    """(num_splits, chunk): chunk = blocks // splits blocks, so num_splits = cdiv(D, chunk) is at
    least `splits` (capped at D's block count) and no split is empty; the last may be short."""
    blocks = triton.cdiv(D, block)
    chunk = max(1, blocks // max(1, splits)) * block
    return triton.cdiv(D, chunk), chunk


@on_tensor_device
def sample_step(x, out, logp, logp_var, models, coef, z, seeds, offset, dist, probes, vjps,
                probes_out, probe_offset, probe_dist, *, ycoef=None, y_out=None, clip=0.0,
                _block_size=None, _num_splits=None):
    """Launch the fused step (arguments as the diffaccel::sample_step(_out) schemas, checked by
    diffaccel/ops/step.py; x and out contiguous, ``out`` may be ``x``). Mutates out, logp, logp_var, probes_out and y_out (None or empty: not written).
    ``_block_size`` / ``_num_splits`` override BLOCK and the requested splits per sample (tests)."""
    B = x.shape[0]
    D = x.numel() // B if B else 0
    K = len(models)
    has_y = ycoef is not None
    y_out = y_out if y_out is not None and y_out.numel() else None
    if B == 0:
        return
    if D == 0:  # no element to update; logp still gets c0 (the reference's empty sums are 0)
        if logp.numel():
            logp.add_(coef[:, layout.COEF_C0].to(logp.dtype))
        return
    models = [m.contiguous() for m in models]
    coef = coef.contiguous()
    track = logp.numel() > 0
    P = probes.shape[0] if probes is not None else 0
    hutch = track and P > 0 and K > 0
    vjps = [w.contiguous() for w in vjps]
    probes = probes.contiguous() if probes is not None else x
    P_out = probes_out.shape[0] if probes_out.numel() else 0
    ms = models + [x] * (MAX_MODELS - K)
    ws = (vjps if hutch else []) + [x] * (MAX_MODELS - (K if hutch else 0))
    per_sample = seeds.numel() == B and B > 1
    if x.device.type == "cuda" and not (_block_size or _num_splits):
        block, num_splits, chunk, warps = gpu_plan(B, D, K, _sm_count(x.device.index))
    else:  # the interpreter runs programs one by one: one split, large blocks
        block = _block_size or _block(D, x.device)
        num_splits, chunk = _plan(D, block, _num_splits or 1)
        warps = num_warps(K)
    Ph = P if hutch else 0  # probes summed: the scratch rows hold 3 + Ph partial sums
    # every slot is written by its program before the finish kernel reads it
    RW = 3 + Ph + (2 if has_y else 0)  # ... then |z|^2 and |x_new|^2 on the y line
    partial = torch.empty((B, num_splits, RW) if track else (1,), dtype=torch.float32,
                          device=x.device)
    W = layout.coef_width(K)
    ycoef = ycoef.contiguous() if has_y else x
    y_kw = dict(Y=True, Y_OUT=y_out is not None, CLIP=clip > 0) if has_y else {}
    _sample_step_kernel[(B, num_splits)](
        x, out, coef, z.contiguous() if z is not None else x, seeds.contiguous(), partial, probes,
        probes_out if P_out else x, *ms, *ws, B, D, chunk, offset, probe_offset, Ph, P_out, W,
        ycoef, y_out if y_out is not None else x, float(clip), **y_kw,
        K=K, DIST=-1 if z is not None else dist, HAS_Z=z is not None, TRACK=track, HUTCH=hutch,
        PROBE_DIST=probe_dist, PER_SAMPLE=per_sample, BLOCK=block, num_warps=warps)
    if track:
        track_var = logp_var.numel() > 0
        _step_finish_kernel[(B,)](partial, coef, logp, logp_var if track_var else logp, num_splits,
                                  Ph, W, ycoef, layout.y_width(K), TRACK_VAR=track_var, BLOCK_S=SPLIT_BLOCK,
                                  **({"Y": True} if has_y else {}))
