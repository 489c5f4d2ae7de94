"""The fused sampler step in Triton (MATH.md Section 3.1; contract: diffaccel/reference/step.py).

One program per sample walks its D elements in blocks: it reads x and the K model outputs once,
draws the increment in registers, writes the new x, keeps the three per-sample sums
(|s|^2, s.z, x.s) in registers, then the Hutchinson dot products probe by probe, adds the
log-density increment and the estimate's variance into the (B,) accumulators in place, and
finally writes the next step's probes. No atomics, no second kernel.
"""
import torch
import triton
import triton.language as tl

from .random import draw

MAX_MODELS = 8
HEAD = 7


@triton.jit
def _add_model(m_ptr, row, k: tl.constexpr, offs, mask, xn, s):
    """xn += am_k M_k, s += sm_k M_k for one block."""
    m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    am = tl.load(row + 7 + 3 * k)
    sm = tl.load(row + 8 + 3 * k)
    return xn + am * m, s + sm * m


@triton.jit
def _add_vjp(w_ptr, row, k: tl.constexpr, offs, mask, acc):
    """acc += cw_k w_{k,p} for one block."""
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return acc + tl.load(row + 9 + 3 * k) * w


@triton.jit
def _sample_step_kernel(x_ptr, out_ptr, coef_ptr, z_ptr, seeds_ptr, logp_ptr, var_ptr, probes_ptr,
                        probes_out_ptr, m0, m1, m2, m3, m4, m5, m6, m7, w0, w1, w2, w3, w4, w5,
                        w6, w7, B, D, offset, probe_offset, P, P_out, W,
                        K: tl.constexpr, DIST: tl.constexpr, HAS_Z: tl.constexpr,
                        TRACK: tl.constexpr, TRACK_VAR: tl.constexpr, HUTCH: tl.constexpr,
                        PROBE_DIST: tl.constexpr, PER_SAMPLE: tl.constexpr, BLOCK: tl.constexpr):
    """Sample b = program_id(0), coefficients c = coef[b]:

    x_new = ax x + az z + sum_k am_k M_k;   s = sx x + sum_k sm_k M_k
    t_p   = sum_i v_{p,i} sum_k cw_k w_{k,p,i}
    logp[b]     += c0 + c1 |s|^2 + c2 s.z + c3 x.s + mean_p t_p
    logp_var[b] += sum_p (t_p - mean)^2 / (P (P - 1))
    z: loaded (HAS_Z), drawn at offset + (PER_SAMPLE ? 0 : b D) + i (DIST >= 0), or 0.
    """
    b = tl.program_id(0).to(tl.int64)
    row = coef_ptr + b * W
    ax = tl.load(row)
    az = tl.load(row + 1)
    sx = tl.load(row + 2)
    if PER_SAMPLE:
        seed = tl.load(seeds_ptr + b)
    else:
        seed = tl.load(seeds_ptr)
    ss = tl.zeros([BLOCK], dtype=tl.float32)
    sz = tl.zeros([BLOCK], dtype=tl.float32)
    xs = tl.zeros([BLOCK], dtype=tl.float32)
    lanes = tl.arange(0, BLOCK)
    for i0 in range(0, D, BLOCK):
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
        if K > 0:
            xn, s = _add_model(m0, row, 0, offs, mask, xn, s)
        if K > 1:
            xn, s = _add_model(m1, row, 1, offs, mask, xn, s)
        if K > 2:
            xn, s = _add_model(m2, row, 2, offs, mask, xn, s)
        if K > 3:
            xn, s = _add_model(m3, row, 3, offs, mask, xn, s)
        if K > 4:
            xn, s = _add_model(m4, row, 4, offs, mask, xn, s)
        if K > 5:
            xn, s = _add_model(m5, row, 5, offs, mask, xn, s)
        if K > 6:
            xn, s = _add_model(m6, row, 6, offs, mask, xn, s)
        if K > 7:
            xn, s = _add_model(m7, row, 7, offs, mask, xn, s)
        tl.store(out_ptr + offs, xn.to(out_ptr.dtype.element_ty), mask=mask)
        if TRACK:
            ss += s * s
            sz += s * z
            xs += x * s
    if TRACK:
        inc = (tl.load(row + 3).to(tl.float64) + tl.load(row + 4).to(tl.float64) * tl.sum(ss).to(tl.float64)
               + tl.load(row + 5).to(tl.float64) * tl.sum(sz).to(tl.float64)
               + tl.load(row + 6).to(tl.float64) * tl.sum(xs).to(tl.float64))
        var = inc * 0.0
        if HUTCH:
            # shifted sums of t_p (shift = t_0) keep the variance free of cancellation
            shift = inc * 0.0
            s1 = inc * 0.0
            s2 = inc * 0.0
            for p in range(0, P):
                t = tl.zeros([BLOCK], dtype=tl.float32)
                for i0 in range(0, D, BLOCK):
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
                tp = tl.sum(t).to(tl.float64)
                if p == 0:
                    shift = tp
                s1 += tp - shift
                s2 += (tp - shift) * (tp - shift)
            inc += shift + s1 / P
            if P > 1:
                var = (s2 - s1 * s1 / P) / (P * (P - 1))
        lp = tl.load(logp_ptr + b).to(tl.float64)
        tl.store(logp_ptr + b, (lp + inc).to(logp_ptr.dtype.element_ty))
        if TRACK_VAR:
            lv = tl.load(var_ptr + b).to(tl.float64)
            tl.store(var_ptr + b, (lv + var).to(var_ptr.dtype.element_ty))
    for p in range(0, P_out):
        for i0 in range(0, D, BLOCK):
            i = i0 + lanes
            mask = i < D
            if PER_SAMPLE:
                pos = probe_offset + p * D + i
            else:
                pos = probe_offset + (b * P_out + p) * D + i
            v = draw(seed, pos, PROBE_DIST)
            tl.store(probes_out_ptr + (p * B + b) * D + i, v.to(probes_out_ptr.dtype.element_ty), mask=mask)


def _block(D, device):
    cap = 1024 if device.type == "cuda" else 4096
    return max(16, min(cap, triton.next_power_of_2(max(D, 1))))


def sample_step(x, out, logp, logp_var, models, coef, z, seeds, offset, dist, probes, vjps,
                probes_out, probe_offset, probe_dist):
    """Launch the fused step (arguments as the diffaccel::sample_step(_out) schemas; ``out`` may
    be ``x``). Mutates out, logp, logp_var and probes_out."""
    B = x.shape[0]
    D = x.numel() // B if B else 0
    K = len(models)
    if K > MAX_MODELS:
        raise ValueError(f"models: expected at most {MAX_MODELS} model outputs, got {K}")
    if not (x.is_contiguous() and out.is_contiguous()):
        raise ValueError("x, out: expected contiguous tensors")
    if tuple(coef.shape) != (B, HEAD + 3 * K) or coef.dtype != torch.float32:
        raise ValueError(f"coef: expected a float32 tensor of shape ({B}, {HEAD + 3 * K})")
    if dist not in (-1, 0, 1, 2, 3) or probe_dist not in (0, 1, 2, 3):
        raise ValueError("dist, probe_dist: unknown law code")
    if B == 0 or D == 0:
        return
    models = [m.contiguous() for m in models]
    for m in models:
        if m.shape != x.shape or m.dtype != x.dtype:
            raise ValueError("models: expected the shape and dtype of x")
    coef = coef.contiguous()
    track = logp.numel() > 0
    P = probes.shape[0] if probes is not None else 0
    hutch = track and P > 0 and K > 0
    if probes is not None and len(vjps) != K:
        raise ValueError(f"vjps: expected {K} tensors with probes, got {len(vjps)}")
    vjps = [w.contiguous() for w in vjps]
    probes = probes.contiguous() if probes is not None else x
    P_out = probes_out.shape[0] if probes_out.numel() else 0
    dummy = torch.zeros(1, dtype=torch.float32, device=x.device)
    ms = models + [x] * (MAX_MODELS - K)
    ws = (vjps if hutch else []) + [x] * (MAX_MODELS - (K if hutch else 0))
    per_sample = seeds.numel() == B and B > 1
    _sample_step_kernel[(B,)](
        x, out, coef, z.contiguous() if z is not None else x, seeds.contiguous(),
        logp if track else dummy, logp_var if logp_var.numel() else dummy, probes,
        probes_out if P_out else x, *ms, *ws, B, D, offset, probe_offset, P, P_out,
        HEAD + 3 * K, K=K, DIST=-1 if z is not None else dist, HAS_Z=z is not None,
        TRACK=track, TRACK_VAR=track and logp_var.numel() > 0, HUTCH=hutch, PROBE_DIST=probe_dist,
        PER_SAMPLE=per_sample, BLOCK=_block(D, x.device))
