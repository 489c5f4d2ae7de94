"""Accelerated ``DDPMScheduler`` and ``DDIMScheduler`` (variance-preserving, timestep-indexed).

Both stock steps are linear in the sample x, the model output M, the predicted x0 (clamped when
``clip_sample``) and the noise z, with coefficients that depend only on the timestep t. The
tables here hold, for every training timestep t (rows indexed by t itself, so no lookup of t in
the schedule is needed on the device), with abar = alphas_cumprod, a = abar_t, b = 1 - a and
a' = abar of the step's previous timestep:

    x0 = bx x + bm M:  epsilon (1/sqrt(a), -sqrt(b)/sqrt(a)); sample (0, 1); v (sqrt(a), -sqrt(b))
    DDPM:  x_prev = sqrt(a') (1 - a/a') / b x0 + sqrt(a/a') (1 - a') / b x + std z
           std^2 = (1 - a')/b (1 - a/a') ("fixed_small", clamped at 1e-20) or 1 - a/a'
           ("fixed_large"); std = 0 at t = 0
    DDIM:  x_prev = sqrt(a') x0 + sqrt(1 - a' - std^2) eps + std z,  std = eta sqrt(var),
           var = (1 - a')/b (1 - a/a'),  eps = ex x + e0 x0 + em M
           (epsilon: M; v: sqrt(a) M + sqrt(b) x; sample: (x - sqrt(a) M) / sqrt(b); with
           use_clipped_model_output: (x - sqrt(a) x0) / sqrt(b), x0 after the clamp)

The previous timestep is stock's: DDPM the next entry of ``timesteps``; DDIM
``t - num_train_timesteps // num_inference_steps`` (a quirk stock has with "linspace" spacing,
kept), or the next entry for custom ``timesteps``.
"""
import math
import numbers

import torch
from diffusers import DDIMScheduler as _StockDDIM
from diffusers import DDPMScheduler as _StockDDPM
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput

from .. import _validate
from ..layout import COEF_AX, COEF_AZ, COEF_C0, COEF_C1, COEF_C2, COEF_SX, coef_am, coef_sm
from . import _diffusers_logprob as _logprob
from ._diffusers_base import (ROW_A_BM, ROW_A_WIDTH, ROW_B, ROW_B_WIDTH, AcceleratedMixin,
                              backend_for, check_model_output, fold_table, folded_rows, host_value,
                              one_pass, one_pass_folded, step_output, step_seeds, tensor_host_known,
                              with_columns, with_logp_dim)

PREDICTIONS = ("epsilon", "sample", "v_prediction")


def _x0_coefs(pred, a, b):
    """(bx, bm): x0 = bx x + bm M for prediction type ``pred`` (float64 (T,) tensors a, b)."""
    if pred == "epsilon":
        return 1 / a.sqrt(), -b.sqrt() / a.sqrt()
    if pred == "sample":
        return torch.zeros_like(a), torch.ones_like(a)
    return a.sqrt(), -b.sqrt()


def _eps_coefs(pred, a, b, clipped):
    """(ex, e0, em): eps = ex x + e0 x0 + em M."""
    z = torch.zeros_like(a)
    if clipped:  # from the (clamped) x0
        return 1 / b.sqrt(), -a.sqrt() / b.sqrt(), z
    if pred == "sample":  # stock takes eps from the x0 before clamping, i.e. from M
        return 1 / b.sqrt(), z, -a.sqrt() / b.sqrt()
    if pred == "epsilon":
        return z, z, torch.ones_like(a)
    return b.sqrt(), z, a.sqrt()


class _VPMixin(AcceleratedMixin):
    """Timestep-indexed tables and the two-pass step shared by DDPM and DDIM."""

    def _da_check_config(self):
        cfg = self.config
        name = type(self).__name__
        if cfg.thresholding:
            raise ValueError(f"{name}: thresholding=True is not supported by the accelerated step "
                             "(supported: clip_sample True/False, prediction_type "
                             f"{', '.join(PREDICTIONS)})")
        if cfg.prediction_type not in PREDICTIONS:
            raise ValueError(f"{name}: prediction_type={cfg.prediction_type!r} is not supported "
                             f"(supported: {', '.join(PREDICTIONS)})")

    def _da_prev_of(self, ts, custom):
        """(T,) int64: previous timestep of every timestep t in the schedule (-1: the end)."""
        T = self.config.num_train_timesteps
        prev = torch.full((T,), -1, dtype=torch.int64)
        for i in range(len(ts) - 1, -1, -1):  # the first occurrence wins, as stock's lookup
            prev[ts[i]] = ts[i + 1] if i + 1 < len(ts) else -1
        return prev

    def _da_build(self, device, custom):
        ts = [int(t) for t in self.timesteps.tolist()]
        T = self.config.num_train_timesteps
        bad = [t for t in ts if not 0 <= t < T]
        if bad:
            raise ValueError(f"timesteps: expected integers in [0, {T}), got {bad[:5]}")
        self._da_valid = frozenset(ts)
        ac = self.alphas_cumprod.to(torch.float64)
        prev = self._da_prev_of(ts, custom)
        a = ac
        a_prev = torch.where(prev >= 0, ac[prev.clamp(min=0)],
                             torch.as_tensor(self._da_final_abar(), dtype=torch.float64))
        tab = self._da_table(a, 1 - a, a_prev)
        self._da_tab = tab.to(device=device, dtype=torch.float32)
        self._da_tab_cpu = tab
        self._da_folds = {}

    def _da_device_tab(self, device):
        if self._da_tab.device != device:
            self._da_tab = self._da_tab.to(device)
            self._da_folds = {}
        return self._da_tab

    _FOLDS_KEPT = 8

    def _da_folded(self, key, cB_fn):
        """Folded rows (fold_table of row A and ``cB_fn``'s row B, every row of the
        device table, float32 as a step computes them, so the values are the same bits), cached
        per ``key`` (the per-call arguments cB_fn depends on) until the next set_timesteps."""
        folds = self._da_folds
        f = folds.get(key)
        if f is None:
            if len(folds) >= self._FOLDS_KEPT:
                folds.clear()
            tab = self._da_tab
            f = folds[key] = fold_table(tab[:, :ROW_A_WIDTH], cB_fn(tab))
        return f

    def _da_index(self, timestep, device):
        """(1,) int64 row index on ``device`` (the timestep itself); named error when a timestep
        readable on the host is not one of the schedule's."""
        if self.num_inference_steps is None or getattr(self, "_da_tab", None) is None:
            raise ValueError("timestep: call set_timesteps before step")
        if isinstance(timestep, bool) or not isinstance(timestep, (numbers.Real, torch.Tensor)):
            raise TypeError(f"timestep: expected an int or a tensor, got {type(timestep).__name__}")
        if isinstance(timestep, torch.Tensor) and timestep.numel() != 1:
            raise ValueError(f"timestep: expected one timestep, got shape {tuple(timestep.shape)}")
        if tensor_host_known(timestep):
            t = host_value(timestep)
            if t != int(t) or int(t) not in self._da_valid:
                raise ValueError(f"timestep: {t} is not one of the scheduler's timesteps "
                                 f"({sorted(self._da_valid, reverse=True)[:8]}...)")
        if isinstance(timestep, torch.Tensor):
            return timestep.reshape(1).to(device=device, dtype=torch.int64)
        return torch.tensor([int(timestep)], dtype=torch.int64, device=device)

    def _da_run(self, model_output, timestep, sample, cB_fn, draw, generator, variance_noise, seed,
                clip, return_logprob=False, prev_sample=None, fold_key=None):
        """One fused pass: returns (prev_sample, pred_original_sample) in stock's dtype, plus the
        transition log-probability with ``return_logprob``. ``fold_key``: cB_fn's arguments when
        its rows can be folded once for the whole table (:meth:`_da_folded`), None: per step."""
        check_model_output(model_output, sample)
        if prev_sample is not None:
            if not return_logprob:
                raise ValueError("prev_sample: only used with return_logprob=True (re-scoring)")
            check_model_output(prev_sample, sample)
        B = sample.shape[0]
        dev = sample.device
        idx = self._da_index(timestep, dev)
        tab = self._da_device_tab(dev)
        cd = torch.promote_types(sample.dtype, model_output.dtype)
        x = sample.to(cd).contiguous()
        be = backend_for(cd)
        z, kernel_draw = self._da_noise(model_output, generator, variance_noise, seed, draw,
                                        model_output.dtype)
        if return_logprob:
            r = tab.index_select(0, idx)
            cB = cB_fn(r)
            return self._da_logprob(model_output, sample, r, cB, clip, z, kernel_draw, prev_sample,
                                    timestep, seed, generator)
        seeds = None
        if kernel_draw:
            seeds = step_seeds(seed if seed is not None else self._da_seed, B, dev, idx)
        logp = self._da_logp_buffer(B, dev, x)
        clip = self.config.clip_sample_range if clip else None
        # x0 (clamped with clip_sample) and x_prev from it, in one pass. The cache of folded tables
        # is eager only: filled while torch.compile traces, it would change the guarded state
        # after the first call (a recompile); a compiled graph folds its row itself.
        if fold_key is None or not _validate.eager():
            r = tab.index_select(0, idx)
            cB = cB_fn(r)
            if logp is not None:
                cB = with_logp_dim(cB, x[0].numel())
            return one_pass(x, model_output, r[:, :ROW_A_WIDTH].expand(B, ROW_A_WIDTH),
                            cB.expand(B, ROW_B_WIDTH),
                            clip=clip, z=z, seeds=seeds, logp=logp, backend=be)
        coef, ycoef = folded_rows(self._da_folded(fold_key, cB_fn), idx, B)
        if logp is not None:
            coef = with_logp_dim(coef, x[0].numel())
        return one_pass_folded(x, model_output, coef, ycoef, clip=clip, z=z, seeds=seeds, logp=logp,
                               backend=be)

    def _da_logprob(self, model_output, sample, r, cB, clip, z, kernel_draw, prev_sample,
                    timestep, seed, generator):
        """(prev_sample, pred_original_sample, log N(prev; mean, std^2 I) averaged over the
        non-batch dims) in one fused pass; re-scoring a given prev_sample is differentiable in
        model_output (DDPO; see _diffusers_logprob)."""
        std = cB[:, COEF_AZ]
        if tensor_host_known(timestep) and float(std[0]) == 0:
            raise ValueError(f"return_logprob: the step at timestep {host_value(timestep)} adds no "
                             "noise (std = 0), so it has no transition density")
        cd = torch.promote_types(sample.dtype, model_output.dtype)
        ct = torch.promote_types(cd, torch.float32)
        x = sample.to(ct).contiguous()
        rows = dict(ax=cB[:, COEF_AX], am=cB[:, coef_am(1)], std=std, bx=r[:, COEF_AX],
                    bm=r[:, ROW_A_BM], ay=cB[:, coef_am(0)],
                    clip=self.config.clip_sample_range if clip else None, backend=backend_for(ct))
        if prev_sample is not None:
            lp, x0 = _logprob.rescore(x, model_output, prev_sample, **rows)
            return prev_sample, x0.to(cd), lp
        seeds = None
        if z is None and kernel_draw:
            seeds = step_seeds(seed if seed is not None else self._da_seed, sample.shape[0],
                               sample.device, self._da_index(timestep, sample.device))
        prev, x0, lp = _logprob.sample_with_logprob(x, model_output, z=z, seeds=seeds, out_dtype=cd,
                                                    **rows)
        return prev, x0.to(cd), lp


class DDPMScheduler(_VPMixin, _StockDDPM):
    """``diffusers.DDPMScheduler`` with the fused step (same config, signatures and outputs)."""

    _VARIANCES = ("fixed_small", "fixed_small_log", "fixed_large")

    def _da_check_config(self):
        super()._da_check_config()
        if self.config.variance_type not in self._VARIANCES:
            raise ValueError(f"DDPMScheduler: variance_type={self.config.variance_type!r} is not "
                             f"supported (supported: {', '.join(self._VARIANCES)})")

    def _da_final_abar(self):
        return 1.0

    def _da_stochastic(self):
        return True

    def set_timesteps(self, num_inference_steps=None, device=None, timesteps=None):
        super().set_timesteps(num_inference_steps, device, timesteps)
        self._da_build(self.timesteps.device, timesteps is not None)

    def _da_table(self, a, b, a_prev):
        T = a.shape[0]
        t = torch.arange(T)
        bx, bm = _x0_coefs(self.config.prediction_type, a, b)
        alpha_t = a / a_prev
        beta_t = 1 - alpha_t
        if self.config.variance_type == "fixed_large":
            var = beta_t
        else:
            var = ((1 - a_prev) / b * beta_t).clamp(min=1e-20)
        std = torch.where(t > 0, var.sqrt(), torch.zeros_like(var))
        tab = torch.zeros(T, ROW_B + ROW_B_WIDTH, dtype=torch.float64)
        tab[:, COEF_AX], tab[:, ROW_A_BM] = bx, bm
        o = ROW_B
        tab[:, o + COEF_AX] = alpha_t.sqrt() * (1 - a_prev) / b
        tab[:, o + coef_am(0)] = a_prev.sqrt() * beta_t / b
        tab[:, o + COEF_AZ] = std
        # log-density (docs/math.md 3.1, reverse SDE in the step's own terms): with the score
        # s = (sqrt(a) x0 - x)/b the step is x' = ax_eff x + (...) s + std z, so
        # logp += -D log(ax_eff) + std^2/2 |s|^2 + std (s . z)
        tab[:, o + COEF_SX], tab[:, o + coef_sm(0)] = -1 / b, a.sqrt() / b
        ax_eff = tab[:, o + COEF_AX] + tab[:, o + coef_am(0)] / a.sqrt()
        tab[:, o + COEF_C0] = -ax_eff.log()
        tab[:, o + COEF_C1], tab[:, o + COEF_C2] = std ** 2 / 2, std
        return tab

    def step(self, model_output, timestep, sample, generator=None, return_dict=True, *,
             seed=None, return_logprob=False, prev_sample=None):
        """Stock's step (same arguments and outputs) as one fused pass; ``seed``: int or (B,)
        integer tensor, noise drawn in the kernel (batch-invariant with per-sample seeds)."""
        draw = (host_value(timestep) > 0) if tensor_host_known(timestep) else None
        res = self._da_run(model_output, timestep, sample, lambda r: r[:, ROW_B:], draw,
                           generator, None, seed, self.config.clip_sample, return_logprob, prev_sample,
                           fold_key="ddpm")
        return step_output(res, return_logprob, return_dict, DDPMSchedulerOutput)


# DDIMScheduler's table: row A | P | Q | Qc (row B's parts, ROW_B_WIDTH each) | six per-step values:
# sqrt(1 - a'), sqrt(var), rho, b, kD, kd (see DDIMScheduler._da_table)
DDIM_P, DDIM_Q, DDIM_QC = (ROW_B + k * ROW_B_WIDTH for k in range(3))
_S = DDIM_QC + ROW_B_WIDTH
DDIM_DIR, DDIM_STD, DDIM_RHO, DDIM_B, DDIM_KD, DDIM_KM = range(_S, _S + 6)
DDIM_WIDTH = _S + 6


class DDIMScheduler(_VPMixin, _StockDDIM):
    """``diffusers.DDIMScheduler`` with the fused step; ``set_timesteps`` also takes custom
    ``timesteps`` (descending integers, e.g. from ``diffaccel.vrg.to_timesteps``)."""

    _da_custom = False

    def _da_final_abar(self):
        return float(self.final_alpha_cumprod)

    def _da_stochastic(self):
        return True  # with eta > 0 (checked per step)

    def set_timesteps(self, num_inference_steps=None, device=None, timesteps=None):
        """Stock's ``set_timesteps(num_inference_steps, device)``, plus custom ``timesteps``
        (descending integers in [0, num_train_timesteps)); the step after the last one goes to
        ``final_alpha_cumprod`` as stock's last step does."""
        if timesteps is not None:
            if num_inference_steps is not None:
                raise ValueError("timesteps: pass either num_inference_steps or timesteps, not both")
            ts = torch.as_tensor(timesteps).reshape(-1)
            if ts.is_floating_point() and not bool((ts == ts.round()).all()):
                raise ValueError("timesteps: expected integers")
            ts = ts.to(torch.int64)
            if ts.numel() == 0 or (ts.numel() > 1 and not bool((ts[1:] < ts[:-1]).all())):
                raise ValueError(f"timesteps: expected a non-empty, strictly descending sequence, got {ts.tolist()}")
            self.num_inference_steps = ts.numel()
            self.timesteps = ts.to(device)
            self._da_custom = True
        else:
            if num_inference_steps is None:
                raise ValueError("num_inference_steps: required when timesteps is not given")
            super().set_timesteps(num_inference_steps, device)
            self._da_custom = False
        self._da_build(self.timesteps.device, self._da_custom)

    def _da_prev_of(self, ts, custom):
        if custom:
            return super()._da_prev_of(ts, custom)
        T = self.config.num_train_timesteps
        return torch.arange(T, dtype=torch.int64) - T // self.num_inference_steps

    def _da_table(self, a, b, a_prev):
        """Rows: row A (x0) | P | Q | Qc | sqrt(1 - a') | sqrt(var) | rho | b | kD | kd, with row
        B = P + dir Q (Qc with use_clipped_model_output) + std e_z: the eta-dependent parts
        combine per step; the last four are the log-density's (see ``_logp_coefs``)."""
        T = a.shape[0]
        pred = self.config.prediction_type
        bx, bm = _x0_coefs(pred, a, b)
        var = (1 - a_prev) / b * (1 - a / a_prev)
        tab = torch.zeros(T, DDIM_WIDTH, dtype=torch.float64)
        tab[:, COEF_AX], tab[:, ROW_A_BM] = bx, bm
        o = DDIM_P
        tab[:, o + coef_am(0)] = a_prev.sqrt()
        # log-density (see _logp_coefs): the score s = (sqrt(a) x0 - x)/b and the change of
        # variables of x = sqrt(abar) y, -D/2 log(a'/a); the rest is set per step
        tab[:, o + COEF_SX], tab[:, o + coef_sm(0)] = -1 / b, a.sqrt() / b
        tab[:, o + COEF_C0] = -0.5 * (a_prev / a).log()
        for q, clipped in ((DDIM_Q, False), (DDIM_QC, True)):
            ex, e0, em = _eps_coefs(pred, a, b, clipped)
            tab[:, q + COEF_AX], tab[:, q + coef_am(0)], tab[:, q + coef_am(1)] = ex, e0, em
        tab[:, DDIM_DIR] = (1 - a_prev).sqrt()
        tab[:, DDIM_STD] = var.sqrt()
        tab[:, DDIM_RHO] = (a / a_prev).sqrt()
        tab[:, DDIM_B] = b
        # div_x s = kD D + kd div_x M (s linear in x and M through the unclamped x0)
        tab[:, DDIM_KD] = (a.sqrt() * bx - 1) / b
        tab[:, DDIM_KM] = a.sqrt() * bm / b
        return tab

    def step(self, model_output, timestep, sample, eta=0.0, use_clipped_model_output=False,
             generator=None, variance_noise=None, return_dict=True, *, seed=None,
             return_logprob=False, prev_sample=None, divergence=None):
        """Stock's step (same arguments and outputs) as one fused pass; ``seed``: int or (B,)
        integer tensor, noise drawn in the kernel (batch-invariant with per-sample seeds).

        With ``track_logp``, ``scheduler.logp`` takes the step's log-density change (see
        ``_logp_coefs``); for ``eta != 1`` it needs ``divergence``, a (B,) tensor: div_x of
        ``model_output`` at ``sample`` (an estimate such as
        :func:`diffaccel.integrations.diffusers.model_output_and_divergence`'s); at ``eta = 1``
        it is optional (its term is second order in the step there). The divergence term reads
        x0 unclamped: with ``clip_sample=True`` it is exact only where the clamp is inactive."""
        if self.num_inference_steps is None:
            raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' "
                             "after creating the scheduler")
        if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not math.isfinite(eta) or eta < 0:
            raise ValueError(f"eta: expected a finite number >= 0, got {eta!r}")
        eta = float(eta)
        if eta > 0 and variance_noise is not None and generator is not None:
            raise ValueError("Cannot pass both generator and variance_noise. Please make sure that "
                             "either `generator` or `variance_noise` stays `None`.")
        track = self._da_track_logp and not return_logprob
        self._da_check_divergence(divergence, model_output, sample, eta, track, return_logprob)
        if return_logprob and eta == 0:
            raise ValueError("return_logprob: DDIM with eta = 0 is deterministic (no transition density)")
        q = DDIM_QC if use_clipped_model_output else DDIM_Q
        wd = []  # the divergence's weight, read from this step's row

        def coef_b(r):
            P, Q = r[:, DDIM_P:DDIM_P + ROW_B_WIDTH], r[:, q:q + ROW_B_WIDTH]
            col = lambda j: r[:, j:j + 1]  # noqa: E731  (a (1, 1) column of the row)
            if eta == 0:
                d = col(DDIM_DIR)
                c = P + d * Q
                if not track:
                    return c
                std = torch.zeros_like(d)
            else:
                std = eta * col(DDIM_STD)
                d = (col(DDIM_DIR) ** 2 - std * std).sqrt()
                c = P + d * Q
                c = with_columns(c, {COEF_AZ: std, COEF_C1: std * std / 2, COEF_C2: std})
            if track:
                c1, c2, cdiv = _logp_coefs(col(DDIM_RHO), col(DDIM_B), d, std)
                c0 = c[:, COEF_C0:COEF_C0 + 1] + cdiv * col(DDIM_KD)
                c = with_columns(c, {COEF_C0: c0, COEF_C1: c1, COEF_C2: c2})
                wd.append(cdiv * col(DDIM_KM))
            return c

        res = self._da_run(model_output, timestep, sample, coef_b, eta > 0,
                           generator, variance_noise if eta > 0 else None,
                           seed if eta > 0 else None, self.config.clip_sample, return_logprob,
                           prev_sample, fold_key=None if track else (eta, q))
        if track and divergence is not None:
            lp = self.logp
            lp.add_(wd[0].reshape(1).to(lp.dtype) * divergence.to(lp.dtype))
        return step_output(res, return_logprob, return_dict, DDIMSchedulerOutput)

    def _da_check_divergence(self, divergence, model_output, sample, eta, track, return_logprob):
        """Named errors for ``divergence`` before any state moves."""
        if divergence is None:
            if track and eta != 1:
                raise ValueError(f"divergence: required with track_logp at eta != 1 (got eta={eta}): "
                                 "pass divergence=, a (B,) tensor of div_x model_output (e.g. from "
                                 "diffaccel.integrations.diffusers.model_output_and_divergence)")
            return
        if return_logprob:
            raise ValueError("divergence: not used with return_logprob=True")
        if not self._da_track_logp:
            raise ValueError("divergence: only used with track_logp=True (accelerate(..., track_logp=True))")
        check_model_output(model_output, sample)
        B = sample.shape[0]
        if not isinstance(divergence, torch.Tensor) or not divergence.is_floating_point():
            raise TypeError(f"divergence: expected a floating-point ({B},) tensor, got "
                            f"{getattr(divergence, 'dtype', type(divergence).__name__)}")
        if tuple(divergence.shape) != (B,) or divergence.device != sample.device:
            raise ValueError(f"divergence: expected shape ({B},) on {sample.device} (one value per "
                             f"sample), got {tuple(divergence.shape)} on {divergence.device}")


def _logp_coefs(rho, b, d, std):
    """(c1, c2, cdiv) of DDIM's log-density update, (1, 1) tensors each:

        log p <- log p + D c0 + c1 |s|^2 + c2 (s . z) + cdiv div_x s,   s = grad_x log p_t(x)

    In the coordinates y = x / sqrt(a) (EDM form, sigma = sqrt(b/a)) the step is
    y' = y + (sigma_down - sigma)(y - x0)/sigma + sigma_up z with sigma_up = std/sqrt(a'),
    sigma_down = dir/sqrt(a') (dir = sqrt(1 - a' - std^2)), and docs/math.md 3.6 gives
    log p_y += sigma_up^2/2 |s_y|^2 + sigma_up (s_y . z) - (A - sigma_up^2) div_y s_y,
    A = sigma (sigma - sigma_down) (``diffaccel.sampling.sample_ddim``'s update). With
    s_y = sqrt(a) s, div_y s_y = a div_x s and log p_x = log p_y - D/2 log a, in x (rho =
    sqrt(a/a')):

        c0 = -1/2 log(a'/a) (in the table's P row, kept),  c1 = rho^2 std^2 / 2,
        c2 = rho std,  cdiv = -(b - rho sqrt(b) dir - rho^2 std^2)

    eta = 0 (std = 0): the probability-flow ODE's Euler step, cdiv = -(b - rho sqrt(b (1 - a'))).
    rho, b, d (= dir), std: (1, 1) tensors (c0 is in the P row of the table)."""
    r2s2 = rho * rho * std * std
    return r2s2 / 2, rho * std, -(b - rho * b.sqrt() * d - r2s2)
