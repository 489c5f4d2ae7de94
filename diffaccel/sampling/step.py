"""The fused sampler step (docs/math.md Section 3.1): one pass over x and the model outputs that
writes the new x, draws the increment in the kernel, adds every sample's log-density terms in
place and can write the next step's Hutchinson probes.

Per sample b, with per-sample coefficients ``coef[b]`` (a (B, coef_width(K)) = (B, 7 + 3K)
tensor, columns in the order of ``diffaccel/layout.py``, see :func:`make_coef`)::

    x_new     = ax x + az z + sum_k am_k M_k
    s         = sx x + sum_k sm_k M_k                    (score at the old x)
    t_p       = sum_i v_{p,i} sum_k cw_k w_{k,p,i}        (Hutchinson, probe p, w = v^T J_k)
    logp     += c0 + c1 |s|^2 + c2 (s . z) + c3 (x . s) + mean_p t_p
    logp_var += var_p(t_p) / P                           (P >= 2)

With ``ycoef`` (a (B, y_width(K)) = (B, 5 + K) tensor, :func:`make_ycoef`) the same pass also computes a second
linear combination, e.g. a sampler's predicted x0, clamps it, writes it to ``y_out`` and feeds it
into the step (one launch where a sampler would otherwise need two)::

    y      = bx x + sum_k bm_k M_k,    yc = clamp(y, -clip, clip)  (clip given)  else  y
    x_new += ay yc,    s += sy yc,    logp += cz |z|^2 + cn |x_new|^2,    y_out = yc

One kernel serves Euler, Heun (K = 2 model outputs), Euler-Maruyama, the high-density ODE, DDIM
and Runge-Kutta / multistep solvers (K stage derivatives or past outputs). Coefficients stay
tensors: a step has no host synchronization and compiles with ``torch.compile(fullgraph=True)``.
"""
import numbers

import torch

from .. import _validate
from ..layout import COEF_HEAD, Y_HEAD  # noqa: F401  (re-exported, with coef_width, y_width)
from ..layout import (COEF_AX, COEF_AZ, COEF_C0, COEF_C1, COEF_C2, COEF_C3, COEF_SX, DISTS,
                      MAX_MODELS, MAX_PROBES, NO_INCREMENT, RADEMACHER, Y_AY, Y_BX, Y_CN, Y_CZ,
                      Y_SY, coef_am, coef_cw, coef_sm, coef_width, y_bm, y_width)
from ..library import op
from ..reference import step as _ref


def make_coef(B, *, ax=1.0, az=0.0, sx=0.0, c0=0.0, c1=0.0, c2=0.0, c3=0.0, am=(), sm=None,
              cw=None, device=None, dtype=torch.float32):
    """The (B, 7 + 3K) coefficient tensor from numbers, 0-d or (B,) tensors (no host sync).

    am, sm, cw: sequences of K values (sm / cw default to zeros)."""
    K = len(am)
    sm = (0.0,) * K if sm is None else tuple(sm)
    cw = (0.0,) * K if cw is None else tuple(cw)
    if len(sm) != K or len(cw) != K:
        raise ValueError(f"sm, cw: expected {K} values each (one per model output), got "
                         f"{len(sm)} and {len(cw)}")
    cols = [None] * coef_width(K)
    for col, v in ((COEF_AX, ax), (COEF_AZ, az), (COEF_SX, sx), (COEF_C0, c0), (COEF_C1, c1),
                   (COEF_C2, c2), (COEF_C3, c3)):
        cols[col] = v
    for k in range(K):
        cols[coef_am(k)], cols[coef_sm(k)], cols[coef_cw(k)] = am[k], sm[k], cw[k]
    return _columns(B, cols, device, dtype)


def make_ycoef(B, *, bx=0.0, ay=0.0, sy=0.0, cz=0.0, cn=0.0, bm=(), device=None,
               dtype=torch.float32):
    """The (B, 5 + K) coefficients of the y line from numbers, 0-d or (B,) tensors (no host
    sync); bm: K values, one per model output."""
    cols = [None] * y_width(len(bm))
    for col, v in ((Y_BX, bx), (Y_AY, ay), (Y_SY, sy), (Y_CZ, cz), (Y_CN, cn)):
        cols[col] = v
    for k, v in enumerate(bm):
        cols[y_bm(k)] = v
    return _columns(B, cols, device, dtype)


def _columns(B, cols, device, dtype):
    """(B, len(cols)) table: column j from cols[j], a number, a 0-d or a (B,) tensor."""
    if device is None:
        device = next((c.device for c in cols if isinstance(c, torch.Tensor)), torch.device("cpu"))
    return torch.stack([c.to(device=device, dtype=dtype).reshape(-1).expand(B)
                        if isinstance(c, torch.Tensor) else
                        torch.full((B,), float(c), dtype=dtype, device=device) for c in cols], 1)


def _clip(clip):
    """clip: None or a finite number > 0; returns the float the op takes (0.0: no clamp)."""
    if clip is None:
        return 0.0
    if not is_number(clip):
        raise TypeError(f"clip: expected None or a number > 0, got {type(clip).__name__}")
    c = float(clip)
    if not (c > 0 and c < float("inf")):
        raise ValueError(f"clip: expected a finite number > 0, got {clip}")
    return c


def _tensor(t, name):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    return t


def _like_x(t, x, name):
    _tensor(t, name)
    if t.shape != x.shape:
        raise ValueError(f"{name}: expected shape {tuple(x.shape)} (that of x), got {tuple(t.shape)}")
    return _float_on_x_device(t, x, name)


def _stack_like(t, x, P, name):
    _tensor(t, name)
    shape = (P, *x.shape) if P is not None else None
    if t.dim() != x.dim() + 1 or tuple(t.shape[1:]) != tuple(x.shape) or (shape and tuple(t.shape) != shape):
        raise ValueError(f"{name}: expected shape (P, {', '.join(map(str, x.shape))}), got {tuple(t.shape)}")
    return _float_on_x_device(t, x, name)


def _float_on_x_device(t, x, name):
    if t.device != x.device:
        raise ValueError(f"{name}: expected a tensor on {x.device}, got {t.device}")
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    return t


def _accumulator(t, x, name):
    if t is None:
        return None
    _tensor(t, name)
    if tuple(t.shape) != (x.shape[0],):
        raise ValueError(f"{name}: expected shape ({x.shape[0]},) (one value per sample), got {tuple(t.shape)}")
    if t.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name}: expected float32 or float64, got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{name}: expected a tensor on {x.device}, got {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor (it is updated in place)")
    return t


def fused_step(x, models, coef, *, logp=None, logp_var=None, z=None, seed=None, offset=0,
               dist=None, probes=None, vjps=None, probes_out=None, probe_offset=0,
               probe_dist="rademacher", out=None, ycoef=None, y_out=None, clip=None, backend=None):
    """One fused sampler step; returns the new x (``x`` itself, updated in place, or ``out``).

    x: (B, *S); models: K <= 8 tensors shaped like x (model outputs, stage derivatives, past
    outputs); coef: (B, 7 + 3K) per-sample coefficients (:func:`make_coef`); logp, logp_var:
    (B,) float32/float64 accumulators updated in place (None: not tracked); z: a given
    increment, else draws of law ``dist`` (normal, laplace, uniform, rademacher) at
    ``seed``/``offset`` (docs/math.md Section 1), else (``dist=None``) none;
    probes: (P, B, *S) and vjps: K tensors (P, B, *S) (``v_p^T J_k``) for the Hutchinson term;
    probes_out: (P', B, *S) buffer that receives the next step's probes of law ``probe_dist``
    at ``probe_offset`` (it must not be ``probes``). ``out``: write the new x there, leave x.
    ycoef: (B, 5 + K) coefficients of the y line (:func:`make_ycoef`), None: no y line;
    y_out: a contiguous tensor shaped like x, of x's dtype, that receives yc (not x or out);
    clip: a finite float > 0 clamping y to [-clip, clip] (None: no clamp).
    """
    x = _tensor(x, "x")
    if x.dtype not in _validate.FLOAT_DTYPES + (torch.float64,):
        raise TypeError(f"x: expected float32, float16, bfloat16 or float64, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError("x: expected a (B, *S) tensor, got a 0-d tensor")
    B = x.shape[0]
    if isinstance(models, torch.Tensor):
        models = [models]
    if not isinstance(models, (list, tuple)):
        raise TypeError(f"models: expected a list of tensors, got {type(models).__name__}")
    if len(models) > MAX_MODELS:
        raise ValueError(f"models: expected at most {MAX_MODELS} model outputs, got {len(models)}")
    models = [_like_x(m, x, f"models[{k}]") for k, m in enumerate(models)]
    K = len(models)
    coef = _tensor(coef, "coef")
    if tuple(coef.shape) != (B, coef_width(K)):
        raise ValueError(f"coef: expected shape ({B}, {coef_width(K)}) for {K} model outputs, "
                         f"got {tuple(coef.shape)}")
    if not coef.is_floating_point() or coef.device != x.device:
        raise TypeError(f"coef: expected a floating-point tensor on {x.device}, got {coef.dtype} on {coef.device}")
    logp = _accumulator(logp, x, "logp")
    logp_var = _accumulator(logp_var, x, "logp_var")
    if logp_var is not None and logp is None:
        raise ValueError("logp_var: needs logp (the variance of the log-density's estimate)")
    if z is not None:
        z = _like_x(z, x, "z")
    dist_code = NO_INCREMENT if (dist is None or z is not None) else _validate.dist(dist)
    probe_code = _validate.choice(probe_dist, DISTS, "probe_dist")
    offset = _validate.offset(offset)
    probe_offset = _validate.offset(probe_offset)
    vjps = [] if vjps is None else ([vjps] if isinstance(vjps, torch.Tensor) else list(vjps))
    if probes is not None:
        probes = _stack_like(probes, x, None, "probes")
        if probes.shape[0] > MAX_PROBES:
            raise ValueError(f"probes: expected at most {MAX_PROBES} probes, got {probes.shape[0]}")
        if len(vjps) != K:
            raise ValueError(f"vjps: expected {K} tensors (one per model output) with probes, got {len(vjps)}")
        vjps = [_stack_like(w, x, probes.shape[0], f"vjps[{k}]") for k, w in enumerate(vjps)]
    elif vjps:
        raise ValueError("vjps: given without probes")
    if probes_out is not None:
        probes_out = _stack_like(probes_out, x, None, "probes_out")
        if probes_out.shape[0] > MAX_PROBES:
            raise ValueError(f"probes_out: expected at most {MAX_PROBES} probes, got {probes_out.shape[0]}")
        if not probes_out.is_contiguous():
            raise ValueError("probes_out: expected a contiguous tensor (it is written in place)")
        if (probes is not None and (probes_out is probes or (_validate.eager() and probes.numel()
                and probes_out.data_ptr() == probes.data_ptr()))):
            raise ValueError("probes_out: must not be the probes tensor being read")
    need_seed = dist_code >= 0 or (probes_out is not None and probes_out.shape[0] > 0)
    if need_seed:
        if seed is None:
            raise ValueError("seed: required to draw the increment or the next probes")
        seeds = _validate.seeds(seed, B, x.device)
    else:
        seeds = torch.zeros(1, dtype=torch.int64, device=x.device)
    if out is not None:
        out = _like_x(out, x, "out")
        if out.dtype != x.dtype or not out.is_contiguous():
            raise ValueError(f"out: expected a contiguous {x.dtype} tensor")
    elif not x.is_contiguous():
        raise ValueError("x: expected a contiguous tensor for an in-place step (or pass out=)")
    clip_value = _clip(clip)
    if ycoef is not None:
        ycoef = _tensor(ycoef, "ycoef")
        if tuple(ycoef.shape) != (B, y_width(K)):
            raise ValueError(f"ycoef: expected shape ({B}, {y_width(K)}) for {K} model outputs, "
                             f"got {tuple(ycoef.shape)}")
        if not ycoef.is_floating_point() or ycoef.device != x.device:
            raise TypeError(f"ycoef: expected a floating-point tensor on {x.device}, got "
                            f"{ycoef.dtype} on {ycoef.device}")
    elif y_out is not None or clip is not None:
        raise ValueError(f"{'y_out' if y_out is not None else 'clip'}: given without ycoef")
    if y_out is not None:
        y_out = _like_x(y_out, x, "y_out")
        if y_out.dtype != x.dtype or not y_out.is_contiguous():
            raise ValueError(f"y_out: expected a contiguous {x.dtype} tensor (that of x)")
        for other, oname in ((x, "x"), (out, "out")):
            if other is not None and (y_out is other or (_validate.eager() and y_out.numel()
                                                          and y_out.data_ptr() == other.data_ptr())):
                raise ValueError(f"y_out: must not be {oname} (both are written)")

    name = _validate.pick_backend(backend, x, "x", "sample_step")
    if name == "reference":
        n_out = 0 if probes_out is None else probes_out.shape[0]
        empty = x.new_zeros(0, dtype=torch.float32)
        xn, lp, lv, pout, yc = _ref.sample_step(
            x, empty if logp is None else logp, empty if logp_var is None else logp_var, models,
            coef, z, seeds, offset, None if dist_code == NO_INCREMENT else DISTS[dist_code], probes, vjps,
            n_out, probe_offset, probe_dist, ycoef=ycoef, clip=clip_value or None)
        target = x if out is None else out
        target.copy_(xn)
        if logp is not None:
            logp.copy_(lp)
        if logp_var is not None:
            logp_var.copy_(lv)
        if n_out:
            probes_out.copy_(pout)
        if y_out is not None:
            y_out.copy_(yc)
        return target
    args = _op_args(x, models, coef, logp=logp, logp_var=logp_var, z=z, seeds=seeds,
                    offset=offset, dist_code=dist_code, probes=probes, vjps=vjps,
                    probes_out=probes_out, probe_offset=probe_offset, probe_code=probe_code,
                    ycoef=ycoef, y_out=y_out, clip=clip_value)
    if probes_out is not None and probes_out.dtype != x.dtype:
        raise TypeError(f"probes_out: expected {x.dtype} (that of x), got {probes_out.dtype}")
    if out is None:
        op("sample_step", name)(x, *args)
        return x
    op("sample_step_out", name)(x, out, *args)
    return out


def is_number(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _as(t, dtype):
    """t as a contiguous ``dtype`` tensor (t itself when it is one: no dispatch)."""
    return t if t.dtype == dtype and t.is_contiguous() else t.to(dtype).contiguous()


def _op_args(x, models, coef, *, seeds, logp=None, logp_var=None, z=None, offset=0,
             dist_code=NO_INCREMENT, probes=None, vjps=(), probes_out=None, probe_offset=0,
             probe_code=RADEMACHER, ycoef=None, y_out=None, clip=0.0):
    """The arguments of sample_step after x (and of sample_step_out after x, out), from checked
    ones: x's dtype for the tensors like x, float32 tables, empty tensors for what is not
    tracked or written (logp, logp_var, probes_out, y_out). ``probe_code``: fused_step's default
    probe_dist (rademacher) when no probes are drawn."""
    dt = x.dtype
    empty = x.new_empty(0, dtype=torch.float32)
    return (empty if logp is None else logp, empty if logp_var is None else logp_var,
            [_as(m, dt) for m in models], _as(coef, torch.float32),
            None if z is None else _as(z, dt), seeds, offset, dist_code,
            None if probes is None else _as(probes, dt), [_as(w, dt) for w in vjps],
            x.new_empty((0, *x.shape)) if probes_out is None else probes_out,
            probe_offset, probe_code, None if ycoef is None else _as(ycoef, torch.float32),
            x.new_empty(0) if y_out is None else y_out, clip)


def fused_step_prepared(x, models, coef, *, out, ycoef=None, y_out=None, z=None, seed=None,
                        dist=None, logp=None, clip=None, backend=None):
    """:func:`fused_step` for callers that built its arguments themselves (the accelerated
    diffusers schedulers): same result, without re-checking what holds by construction.

    The caller guarantees: x a contiguous float32/bfloat16/float16 (B, *S) tensor; models shaped
    like x on x's device, floating-point; coef (B, coef_width(K)) and ycoef (B, y_width(K))
    floating-point on x's device; out and y_out fresh contiguous tensors of x's dtype and shape
    (not x); clip None or a float > 0; seed None or int64 seeds from ``_validate.seeds``. What a
    user may hand in, z (a given increment) and logp (a (B,) accumulator), is checked here as
    fused_step checks it (the same named errors); float64 and the reference backend take
    fused_step's checked path."""
    if x.dtype == torch.float64:
        return fused_step(x, models, coef, ycoef=ycoef, y_out=y_out, clip=clip, z=z, seed=seed,
                          dist=dist, out=out, logp=logp, backend=backend)
    name = _validate.pick_backend(backend, x, "x", "sample_step")
    if name == "reference":
        return fused_step(x, models, coef, ycoef=ycoef, y_out=y_out, clip=clip, z=z, seed=seed,
                          dist=dist, out=out, logp=logp, backend=backend)
    if z is not None:
        z = _like_x(z, x, "z")
    if logp is not None:
        logp = _accumulator(logp, x, "logp")
    if dist is None or z is not None:
        dist_code, seeds = NO_INCREMENT, torch.zeros(1, dtype=torch.int64, device=x.device)
    else:
        if seed is None:
            raise ValueError("seed: required to draw the increment or the next probes")
        dist_code, seeds = _validate.dist(dist), seed
    op("sample_step_out", name)(x, out, *_op_args(
        x, models, coef, logp=logp, z=z, seeds=seeds, dist_code=dist_code, ycoef=ycoef,
        y_out=y_out, clip=0.0 if clip is None else float(clip)))
    return out
