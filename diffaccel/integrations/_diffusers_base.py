"""Shared machinery of the accelerated diffusers schedulers.

Every accelerated ``step()`` is one pass of the fused step op
(``diffaccel.sampling.step.fused_step``, docs/math.md Section 3.1), with per-step coefficients
read from tables built at ``set_timesteps`` (float64 on the host, stored float32 on the device)
through a device-resident index: a step never reads a tensor value on the host, so a denoising
loop compiles once with ``torch.compile(fullgraph=True)`` and can be captured in a CUDA graph.

The tables hold two rows of coefficients per step, in the op's column layout
(``diffaccel.layout``):

    row A (where the step uses the predicted x0):  x0 = bx x + bm M   (clamped when the config clips)
    row B:  x_prev = ax x + az z + a0 x0 + am M      (+ the log-density terms, when tracked)

row A a coefficient row of one model (bx in ``COEF_AX``, bm in ``ROW_A_BM``), row B one of two
models (model 0: x0, model 1: M) starting at column ``ROW_B`` (row A's width). :func:`fold_x0`
turns them into one call: x0 is the op's y line (computed, clamped, written to
``pred_original_sample`` and fed into x_prev in the same pass).

Noise: with a ``generator`` (one, or a list of one per sample) or ``variance_noise`` the noise is
drawn exactly as stock draws it (``diffusers.utils.torch_utils.randn_tensor``, same shape, dtype,
device and count) and passed to the kernel; with a ``seed`` (an int, or a (B,) tensor of
per-sample seeds) it is drawn inside the kernel from diffaccel's Philox stream (docs/math.md Section 1)
with a per-step key, so that per-sample seeds give noise independent of the batch; with neither,
from torch's global generator as stock does.

Also here: :class:`Stroke` and :func:`stroke_weights_for` (stroke-size noising, public through
``diffaccel.integrations.diffusers``), used by ``add_noise`` / ``scale_noise`` and
``training_targets``.
"""
import math
import numbers
from dataclasses import dataclass

import torch

from .. import _validate
from ..layout import (COEF_AX, COEF_C0, COEF_HEAD, COEF_PER_MODEL, Y_AY, Y_BX, Y_SY, coef_am,
                      coef_sm, coef_width, y_bm, y_width)
from ..sampling.step import fused_step_prepared
from ..stroke import stroke_blur, stroke_weights

# The two rows of a step (see the module docstring): row A, one model [M]; row B, two [x0, M].
ROW_A_WIDTH = coef_width(1)
ROW_B_WIDTH = coef_width(2)
ROW_B = ROW_A_WIDTH  # first column of row B in a table
ROW_A_BM = coef_am(0)  # row A's column of bm (x0 = bx x + bm M, bx in COEF_AX)

# Per-step noise keys: XORed into the high word of each seed's Philox key, so that every step
# draws an independent stream (the offset stays 0 and the key stays on the device).
_KEY_SHIFT = 40


def tensor_host_known(v, eager=None):
    """True when ``v``'s value can be read without a device synchronization (``eager``:
    ``_validate.eager()`` when the caller has it already)."""
    if isinstance(v, torch.Tensor):
        return v.device.type == "cpu" and (_validate.eager() if eager is None else eager)
    return isinstance(v, numbers.Real)


def host_value(v):
    return v.item() if isinstance(v, torch.Tensor) else v


def check_model_output(model_output, sample):
    """Named errors for a model output or sample that the step cannot use."""
    for name, t in (("model_output", model_output), ("sample", sample)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            raise TypeError(f"{name}: expected a float32, float16, bfloat16 or float64 tensor, got {t.dtype}")
    if model_output.shape != sample.shape:
        raise ValueError(f"model_output: expected shape {tuple(sample.shape)} (that of sample), "
                         f"got {tuple(model_output.shape)}")
    if model_output.device != sample.device:
        raise ValueError(f"model_output: expected a tensor on {sample.device} (that of sample), "
                         f"got {model_output.device}")
    if sample.dim() < 1:
        raise ValueError("sample: expected a (B, ...) tensor, got a 0-d tensor")


def step_seeds(seed, B, device, key):
    """int64 seeds for this step: the given seed(s) with the step key in the high word.

    seed: int or (B,) / (1,) integer tensor; key: (1,) int64 device tensor (a timestep or step
    index). Per-sample seeds stay per-sample, so noise is independent of the batch."""
    s = _validate.seeds(seed, B, device)
    return torch.bitwise_xor(s, (key.to(device=device, dtype=torch.int64) + 1) << _KEY_SHIFT)


def row(table, idx, B, lo, hi):
    """(B, hi - lo) coefficient block of the rows ``idx`` ((1,) device index)."""
    return table.index_select(0, idx)[:, lo:hi].expand(B, hi - lo)


def columns(width, cols, zero):
    """A (B, width) table whose column j is ``cols[j]`` (a (B,) tensor), ``zero`` where ``cols``
    has no entry: a row of the op's layout written by column name."""
    return torch.stack([cols.get(j, zero) for j in range(width)], 1)


def with_columns(t, cols):
    """``t`` (N, W) with the columns ``cols`` ({column: (N, 1) tensor}) replaced, in one cat."""
    parts, j = [], 0
    for k in sorted(cols):
        parts += [t[:, j:k], cols[k]]
        j = k + 1
    return torch.cat(parts + [t[:, j:]], 1)


def fold_x0(rA, cB, *, replace=False):
    """(coef, ycoef) of the one-pass step from row A (B, ROW_A_WIDTH: x0 = bx x + bm M) and row
    B (B, coef_width(K): model 0 is x0). x0 becomes the op's y line (ay, sy: x0's columns of row
    B; bx, bm_0: row A). Models of the one pass: [M, rest of row B's] (``replace=False``: row B's
    model 1 is M itself, so x0's columns are dropped: K - 1 models) or ``replace=True``: M takes
    x0's place with no direct term (K models; a multistep history [x0, m1, m2]).
    Returns coef (B, coef_width(models)) and ycoef (B, y_width(models))."""
    B = cB.shape[0]
    if replace:
        zero = torch.zeros(B, COEF_PER_MODEL, dtype=cB.dtype, device=cB.device)
        coef = torch.cat([cB[:, :coef_am(0)], zero, cB[:, coef_am(1):]], 1)
    else:
        coef = torch.cat([cB[:, :coef_am(0)], cB[:, coef_am(1):]], 1)
    n = (coef.shape[1] - COEF_HEAD) // COEF_PER_MODEL  # models of the one pass
    ycoef = columns(y_width(n), {Y_BX: rA[:, COEF_AX], Y_AY: cB[:, coef_am(0)], Y_SY: cB[:, coef_sm(0)],
                                 y_bm(0): rA[:, ROW_A_BM]},
                    torch.zeros(B, dtype=cB.dtype, device=cB.device))
    return coef, ycoef


def one_pass(x, model_output, rA, cB, *, clip=None, z=None, seeds=None, logp=None, backend=None):
    """x_prev and x0 (both in x's dtype) in one fused pass from rows A and B (B, ROW_A_WIDTH)
    and (B, ROW_B_WIDTH)."""
    coef, ycoef = fold_x0(rA, cB)
    return one_pass_folded(x, model_output, coef, ycoef, clip=clip, z=z, seeds=seeds, logp=logp,
                           backend=backend)


def one_pass_folded(x, model_output, coef, ycoef, *, clip=None, z=None, seeds=None, logp=None,
                    backend=None):
    """:func:`one_pass` from the folded rows (coef, ycoef) of :func:`fold_x0` (B, ...) each.

    x: contiguous, the step's compute dtype; model_output checked against it (check_model_output)."""
    x0 = torch.empty_like(x)
    prev = fused_step_prepared(x, [model_output], coef, ycoef=ycoef, y_out=x0, clip=clip, z=z,
                               seed=seeds, dist="normal" if seeds is not None else None,
                               out=torch.empty_like(x), logp=logp, backend=backend)
    return prev, x0


def folded_rows(tables, idx, B):
    """(coef, ycoef) (B, ...) of the rows ``idx`` ((1,) device index) of folded tables (the
    per-row :func:`fold_x0` of a scheduler's table, built once per schedule, :func:`fold_table`):
    one index_select per table."""
    # (gathering the row B times gives the contiguous (B, ...) blocks the op takes in one call)
    j = idx.expand(B)
    return tables[0].index_select(0, j), tables[1].index_select(0, j)


def fold_table(rA, cB, *, replace=False):
    """The folded rows of :func:`fold_x0` for every row of a table, as :func:`folded_rows` reads
    them: (coef (N, coef width), ycoef (N, ycoef width)), contiguous."""
    return tuple(t.contiguous() for t in fold_x0(rA, cB, replace=replace))


def with_logp_dim(cB, D):
    """The per-dimension constant of a log-density update (column COEF_C0) times D."""
    return with_columns(cB, {COEF_C0: cB[:, COEF_C0:COEF_C0 + 1] * D})


def backend_for(dtype):
    return "reference" if dtype == torch.float64 else None


def step_output(res, return_logprob, return_dict, output_cls):
    """What stock's step returns from our ``(prev_sample, pred_original_sample)``: a tuple with
    ``return_dict=False``, else ``output_cls``; with ``return_logprob`` the
    ``(prev, x0, log_prob)`` triple as it is."""
    if return_logprob:
        return res
    prev, x0 = res
    if not return_dict:
        return (prev, x0)
    return output_cls(prev_sample=prev, pred_original_sample=x0)


@dataclass(frozen=True)
class Stroke:
    """Stroke-size noising for :func:`training_targets` (the multi-scale block blur of docs/math.md Section 2).

    scales: block sizes (each >= 2); weights: None (``diffaccel.stroke_weights`` of each
    sample's log-SNR with ``w_max``), a (J,) or (B, J) tensor, or a callable
    ``logsnr (B,) -> (B, J)``. The same weights blur the data and the noise."""
    scales: tuple = (2, 4, 8)
    weights: object = None
    w_max: float = 0.5


Stroke.__module__ = "diffaccel.integrations.diffusers"  # its public home (repr, pickle, docs)


def stroke_weights_for(stroke, alpha, sigma):
    """(scales, (B, J) weights) of ``stroke`` (a :class:`Stroke` or a tuple of scales) at each
    sample's log-SNR 2 log(alpha / sigma)."""
    if not isinstance(stroke, Stroke):
        if isinstance(stroke, (list, tuple, int)):
            stroke = Stroke(scales=tuple(stroke) if not isinstance(stroke, int) else (stroke,))
        else:
            raise TypeError(f"stroke: expected a Stroke or a tuple of scales, got {type(stroke).__name__}")
    scales = _validate.scales(stroke.scales)
    # pure noise (alpha = 0) or clean data (sigma = 0) have an infinite log-SNR: the weights'
    # limits are reached well within +-60
    logsnr = (2 * (alpha.double().log() - sigma.double().log())).clamp(-60, 60).to(torch.float32)
    if stroke.weights is None:
        w = stroke_weights(logsnr, scales, w_max=stroke.w_max)
    elif callable(stroke.weights):
        w = stroke.weights(logsnr)
    else:
        w = stroke.weights
    return scales, w


class AcceleratedMixin:
    """State and helpers shared by every accelerated scheduler (mixed into a stock subclass)."""

    is_accelerated = True

    def __new__(cls, *args, **kwargs):
        # A pipeline records each component as (library, class name), the library read off the
        # instance's ``__module__`` (diffusers' _fetch_class_library_tuple). Each instance reports
        # its stock class's module, so ``save_pretrained`` writes ["diffusers", "<same name>"]
        # and the saved pipeline loads with stock diffusers, with or without diffaccel. The class
        # itself keeps its own ``__module__`` (repr, pickle, docs).
        self = super().__new__(cls)
        stock = next((c for c in cls.__mro__ if c.__module__.startswith("diffusers.")), None)
        if stock is not None:
            self.__dict__["__module__"] = stock.__module__
        return self

    _da_seed = None
    _da_track_logp = False
    _da_logp_ready = True
    logp = None

    # ---- configuration -------------------------------------------------------------------
    def _da_init(self, seed, track_logp):
        if seed is not None:
            _validate.seeds(seed, 1 if not isinstance(seed, torch.Tensor) else seed.reshape(-1).shape[0], "cpu")
        self._da_seed = seed
        if track_logp and not self._da_stochastic():
            raise ValueError(f"track_logp: {type(self).__name__} with this config is deterministic "
                             f"(no log-density update is defined); {self._da_logp_help}")
        if track_logp and not self._da_logp_ready:
            raise ValueError(f"track_logp: not available for {type(self).__name__}; "
                             f"{self._da_logp_help}")
        self._da_track_logp = bool(track_logp)
        self.logp = None

    _da_logp_help = ("track_logp is supported by DDPM, DDIM (any eta; eta != 1 needs step(..., "
                     "divergence=)), EulerAncestral and DPMSolverMultistep with sde-dpmsolver++")

    def init_logp(self, latents, logp=None):
        """Start tracking from ``latents`` (B, ...): ``scheduler.logp`` becomes ``logp`` (a (B,)
        tensor) or the prior's log-density log N(latents; 0, init_noise_sigma^2 I) (float64)."""
        if not self._da_track_logp:
            raise ValueError("init_logp: the scheduler was not accelerated with track_logp=True")
        B = latents.shape[0]
        if logp is not None:
            if not isinstance(logp, torch.Tensor) or tuple(logp.shape) != (B,):
                raise ValueError(f"logp: expected a ({B},) tensor")
            self.logp = logp.to(device=latents.device, dtype=torch.float64).clone()
            return self.logp
        s0 = float(getattr(self, "init_noise_sigma", 1.0))
        x = latents.double().reshape(B, -1)
        D = x.shape[1]
        self.logp = -0.5 * (x * x).sum(1) / s0 ** 2 - D * (math.log(s0) + 0.5 * math.log(2 * math.pi))
        return self.logp

    def _da_stochastic(self):
        return False

    # ---- noise ---------------------------------------------------------------------------
    def _da_noise(self, model_output, generator, variance_noise, seed, draw, dtype):
        """(z, seeds_or_None, use_kernel_draw) for a step.

        draw: True / False where stock's draw decision is known on the host, None where it is
        not (the coefficient of z is then zero whenever stock would not draw)."""
        if variance_noise is not None:
            if not isinstance(variance_noise, torch.Tensor):
                raise TypeError(f"variance_noise: expected a torch.Tensor, got {type(variance_noise).__name__}")
            if variance_noise.shape != model_output.shape or variance_noise.device != model_output.device:
                raise ValueError(f"variance_noise: expected shape {tuple(model_output.shape)} on "
                                 f"{model_output.device}, got {tuple(variance_noise.shape)} on {variance_noise.device}")
            return variance_noise, False
        if draw is False:
            return None, False
        if seed is None and generator is None:
            seed = self._da_seed
        if seed is not None and generator is None:
            return None, True
        from diffusers.utils.torch_utils import randn_tensor

        if isinstance(generator, list) and len(generator) not in (1, model_output.shape[0]):
            raise ValueError(f"generator: expected one generator or a list of {model_output.shape[0]} "
                             f"(one per sample), got a list of {len(generator)}")
        z = randn_tensor(model_output.shape, generator=generator, device=model_output.device, dtype=dtype)
        return z, False

    # ---- forward process -----------------------------------------------------------------
    def _da_alpha_sigma(self, timesteps, B, device):
        """Per-sample (alpha, sigma) of stock's forward process x_t = alpha x0 + sigma n at
        ``timesteps``, read off stock's own ``add_noise`` on (B, 1) unit inputs (so every
        config and timestep lookup is stock's)."""
        one = torch.ones(B, 1, dtype=torch.float32, device=device)
        zero = torch.zeros_like(one)
        stock_add = super().add_noise
        return stock_add(one, zero, timesteps).reshape(B), stock_add(zero, one, timesteps).reshape(B)

    def add_noise(self, original_samples, noise, timesteps, *, stroke=None):
        """Stock's ``add_noise`` (unchanged without ``stroke``). With ``stroke`` (a ``Stroke`` or
        a tuple of scales): alpha A_w x0 + sigma A_w noise, A_w the multi-scale block blur with
        the stroke's weights at each sample's log-SNR (``diffaccel.stroke_blur``)."""
        if stroke is None:
            return super().add_noise(original_samples, noise, timesteps)
        x0 = _validate.image(original_samples, "original_samples")
        if not isinstance(noise, torch.Tensor) or noise.shape != x0.shape:
            raise ValueError(f"noise: expected a tensor of shape {tuple(x0.shape)}")
        B = x0.shape[0]
        alpha, sigma = self._da_alpha_sigma(timesteps, B, x0.device)
        scales, w = stroke_weights_for(stroke, alpha, sigma)
        a = alpha.reshape(B, 1, 1, 1).to(x0.dtype)
        s = sigma.reshape(B, 1, 1, 1).to(x0.dtype)
        return a * stroke_blur(x0, w, scales) + s * stroke_blur(noise.to(x0.dtype), w, scales)

    # ---- log-density ---------------------------------------------------------------------
    def _da_logp_buffer(self, B, device, x):
        if not self._da_track_logp:
            return None
        lp = self.logp
        if lp is None:
            raise ValueError("logp: track_logp=True needs a starting value: call "
                             "scheduler.init_logp(latents) (the prior's log-density) or set "
                             "scheduler.logp to a (B,) float32/float64 tensor")
        if tuple(lp.shape) != (B,) or lp.device != device:
            raise ValueError(f"logp: expected shape ({B},) on {device}, got {tuple(lp.shape)} on {lp.device}")
        return lp
