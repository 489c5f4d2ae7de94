"""Accelerated ``EulerDiscreteScheduler`` and ``EulerAncestralDiscreteScheduler`` (sigma form,
x = x0 + sigma eps, step-indexed).

Per step i with s = sigmas[i], s' = sigmas[i + 1] (stock's own sigmas, whatever config built
them: Karras, exponential, beta, final_sigmas_type, ...):

    x0 = bx x + bm M:  epsilon (1, -s); v_prediction (1/(s^2+1), -s/sqrt(s^2+1)); sample (0, 1)
    Euler:           x_prev = x + (x - x0)/s (s' - s)      = (s'/s) x + (1 - s'/s) x0
    EulerAncestral:  s_up = sqrt(s'^2 (s^2 - s'^2) / s^2), s_down = sqrt(s'^2 - s_up^2)
                     x_prev = (s_down/s) x + (1 - s_down/s) x0 + s_up z

The step index lives on the device: -1 after ``set_timesteps``; the first step finds the
timestep in the schedule with device ops (stock's rule: the second match when it occurs twice)
or starts at ``begin_index``; every step advances it in place. ``step_index`` reads it (a host
read, only when asked).
"""
import numbers

import numpy as np
import torch
from diffusers import EulerAncestralDiscreteScheduler as _StockEA
from diffusers import EulerDiscreteScheduler as _StockEuler
from diffusers.schedulers.scheduling_euler_ancestral_discrete import \
    EulerAncestralDiscreteSchedulerOutput
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteSchedulerOutput

from .. import _validate
from ..layout import COEF_AX, COEF_AZ, COEF_C1, COEF_C2, COEF_SX, coef_am, coef_sm
from ..sampling.step import fused_step
from . import _diffusers_logprob as _logprob
from ._diffusers_base import (ROW_A_BM, ROW_A_WIDTH, ROW_B, ROW_B_WIDTH, AcceleratedMixin,
                              backend_for, check_model_output, fold_table, folded_rows, host_value,
                              one_pass_folded, step_output, step_seeds, tensor_host_known)

SCALE = ROW_B + ROW_B_WIDTH  # the column after row B: sqrt(s^2 + 1), the divisor of scale_model_input


def sigma_to_t(sigmas, alphas_cumprod):
    """Timesteps of ``sigmas`` by log-sigma interpolation in the training schedule (stock's
    ``_sigma_to_t``)."""
    log_sigmas = np.log(np.array(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5))
    s = np.asarray(sigmas, dtype=np.float64)
    log_sigma = np.log(np.maximum(s, 1e-10))
    dists = log_sigma - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = np.clip((lo - log_sigma) / (lo - hi), 0, 1)
    return ((1 - w) * low + w * (low + 1)).reshape(s.shape)


class _SigmaMixin(AcceleratedMixin):
    PREDICTIONS = ("epsilon", "v_prediction", "sample")
    _da_started = False
    _da_fold = None

    def _da_check_config(self):
        if self.config.prediction_type not in self.PREDICTIONS:
            raise ValueError(f"{type(self).__name__}: prediction_type={self.config.prediction_type!r} "
                             f"is not supported (supported: {', '.join(self.PREDICTIONS)})")

    def _da_make_table(self):
        s = self.sigmas.to(torch.float64).cpu()
        n = s.shape[0] - 1
        sc, sn = s[:-1], s[1:]
        pred = self.config.prediction_type
        tab = torch.zeros(n, SCALE + 1, dtype=torch.float64)
        if pred == "epsilon":
            tab[:, COEF_AX], tab[:, ROW_A_BM] = 1.0, -sc
        elif pred == "v_prediction":
            tab[:, COEF_AX], tab[:, ROW_A_BM] = 1 / (sc ** 2 + 1), -sc / (sc ** 2 + 1).sqrt()
        else:
            tab[:, ROW_A_BM] = 1.0
        ratio, up = self._da_down_up(sc, sn)
        tab[:, ROW_B + COEF_AX] = ratio
        tab[:, ROW_B + coef_am(0)] = 1 - ratio
        tab[:, ROW_B + COEF_AZ] = up
        # log-density (docs/math.md 3.1 with f = 0, g^2 h = q = s^2 - s'^2): with the score
        # s = (x0 - x)/s^2 the step is x' = x + A s + s_up z, A = s^2 (1 - ratio); Ito's formula
        # gives logp += (A - q/2) |s|^2 + s_up (s . z) + (s_up^2 - q)/2 div s. The last term
        # (second order in the step, except where the step is not small against s) needs the
        # model's divergence and is left out.
        q = sc ** 2 - sn ** 2
        tab[:, ROW_B + COEF_SX], tab[:, ROW_B + coef_sm(0)] = -1 / sc ** 2, 1 / sc ** 2
        tab[:, ROW_B + COEF_C1], tab[:, ROW_B + COEF_C2] = sc ** 2 * (1 - ratio) - q / 2, up
        tab[:, SCALE] = (sc ** 2 + 1).sqrt()
        return tab

    def _da_build(self, device):
        """Tables on ``device`` and the step counter reset (after stock's set_timesteps)."""
        self._da_tab = self._da_make_table().to(device=device, dtype=torch.float32)
        self._da_ts = self.timesteps.to(device=device, dtype=torch.float32)
        self._da_ts_host = frozenset(float(t) for t in self.timesteps.tolist())
        self._da_i = torch.full((1,), -1, dtype=torch.int64, device=device)
        # the host knows the counter is >= 0 once a step advanced it (eager mode only: see _da_index)
        self._da_started = False
        self._da_fold = self._da_fold_tables(self._da_tab)
        self._da_on_build(device)

    def _da_fold_tables(self, tab):
        """Folded rows (fold_table), one per step: a step reads one row."""
        return fold_table(tab[:, :ROW_A_WIDTH], tab[:, ROW_B:ROW_B + ROW_B_WIDTH])

    def _da_advance(self, i):
        """Move the device step counter past step i (i: this step's index, or the counter itself
        when _da_index returned it)."""
        if i is self._da_i:  # eager, and the flag is already set
            self._da_i.add_(1)
            return
        self._da_i.copy_(i + 1)
        if _validate.eager():
            self._da_started = True

    def _da_on_build(self, device):
        pass

    def _da_logprob(self, model_output, x, r, z, kernel_draw, prev_sample, seed, i):
        """(prev_sample, pred_original_sample, log N(prev; mean, s_up^2 I) averaged over the
        non-batch dims) in one fused pass; re-scoring is differentiable in model_output."""
        b = ROW_B
        rows = dict(ax=r[:, b + COEF_AX], am=r[:, b + coef_am(1)], std=r[:, b + COEF_AZ],
                    bx=r[:, COEF_AX], bm=r[:, ROW_A_BM], ay=r[:, b + coef_am(0)],
                    backend=backend_for(x.dtype))
        if prev_sample is not None:
            lp, x0 = _logprob.rescore(x, model_output, prev_sample, **rows)
            return prev_sample, x0, lp
        seeds = None
        if z is None:
            seeds = step_seeds(seed if seed is not None else self._da_seed, x.shape[0], x.device, i)
        prev, x0, lp = _logprob.sample_with_logprob(x, model_output, z=z, seeds=seeds,
                                                    out_dtype=model_output.dtype, **rows)
        return prev, x0, lp

    def _da_begin(self, model_output, timestep, sample, *, reject_index=True):
        """What a step starts with: stock's refusal of integer step indices (the Euler-type
        schedulers), the model output checked against the sample, the table on the sample's
        device and this step's (1,) device index. Returns (table, index)."""
        if reject_index and isinstance(timestep, (int, torch.IntTensor, torch.LongTensor)) \
                and not isinstance(timestep, bool):
            raise ValueError("timestep: passing integer indices (e.g. from `enumerate(timesteps)`) "
                             "is not supported; pass one of `scheduler.timesteps`")
        check_model_output(model_output, sample)
        tab = self._da_state(sample.device)
        return tab, self._da_index(timestep, sample.device)

    def _da_state(self, device):
        if getattr(self, "_da_tab", None) is None or self.num_inference_steps is None:
            raise ValueError("timestep: call set_timesteps before step")
        if self._da_tab.device != device:
            self._da_tab = self._da_tab.to(device)
            self._da_ts = self._da_ts.to(device)
            self._da_i = self._da_i.to(device)
            if self._da_fold is not None:
                self._da_fold = tuple(t.to(device) for t in self._da_fold)
            self._da_on_build_move(device)
        return self._da_tab

    def _da_on_build_move(self, device):
        pass

    def _da_index(self, timestep, device):
        """(1,) device index of this step: the counter, or at the first step begin_index or the
        timestep's place in the schedule (found on the device)."""
        if isinstance(timestep, bool) or not isinstance(timestep, (numbers.Real, torch.Tensor)):
            raise TypeError(f"timestep: expected a number or a tensor, got {type(timestep).__name__}")
        if isinstance(timestep, torch.Tensor) and timestep.numel() != 1:
            raise ValueError(f"timestep: expected one timestep, got shape {tuple(timestep.shape)}")
        self._da_state(device)
        eager = _validate.eager()
        if (tensor_host_known(timestep, eager)
                and float(host_value(timestep)) not in self._da_ts_host):
            raise ValueError(f"timestep: {float(host_value(timestep))} is not one of the "
                             f"scheduler's timesteps ({self.timesteps[:4].tolist()}...)")
        ctr = self._da_i
        if self._da_started and eager:
            # a step of ours set the counter (>= 0): the first step's lookup (a dozen small ops)
            # is not needed. Eager only: under torch.compile this host flag would be a guard
            # that changes after the first step (a recompile); there the device select stays.
            return ctr
        if self._begin_index is not None:
            first = torch.full_like(ctr, self._begin_index)
        else:
            t = torch.as_tensor(timestep).reshape(1).to(device=device, dtype=torch.float32)
            m = self._da_ts == t
            cum = m.to(torch.int64).cumsum(0)
            want = (cum[-1:] > 1).to(torch.int64) + 1
            first = ((cum == want) & m).to(torch.int64).argmax().reshape(1)
        return torch.where(ctr >= 0, ctr, first)

    @property
    def step_index(self):
        """The current step index (a host read of the device counter); None before the first step."""
        i = getattr(self, "_da_i", None)
        if i is None:
            return None
        v = int(i[0])
        return None if v < 0 else v

    def _da_run(self, model_output, timestep, sample, generator, seed, draw, return_logprob=False,
                prev_sample=None):
        tab, i = self._da_begin(model_output, timestep, sample)
        B, dev = sample.shape[0], sample.device
        x = sample.to(torch.float32).contiguous()
        be = backend_for(x.dtype)
        z, kernel_draw = self._da_noise(model_output, generator, None, seed, draw, model_output.dtype)
        if prev_sample is not None:
            if not return_logprob:
                raise ValueError("prev_sample: only used with return_logprob=True (re-scoring)")
            check_model_output(prev_sample, sample)
        if return_logprob:
            r = tab.index_select(0, i)
            out = self._da_logprob(model_output, x, r, z, kernel_draw, prev_sample, seed, i)
            self._da_advance(i)
            return out
        seeds = None
        if kernel_draw:
            seeds = step_seeds(seed if seed is not None else self._da_seed, B, dev, i)
        logp = self._da_logp_buffer(B, dev, x)
        coef, ycoef = folded_rows(self._da_fold, i, B)
        prev, x0 = one_pass_folded(x, model_output, coef, ycoef, z=z, seeds=seeds, logp=logp,
                                   backend=be)
        self._da_advance(i)
        return prev.to(model_output.dtype), x0


class _ScaleInputMixin:
    def scale_model_input(self, sample, timestep):
        """sample / sqrt(sigma^2 + 1) at this step (stock's; the index stays on the device)."""
        tab = self._da_state(sample.device)
        i = self._da_index(timestep, sample.device)
        self.is_scale_input_called = True
        return sample / tab.index_select(0, i)[0, SCALE]


class EulerDiscreteScheduler(_ScaleInputMixin, _SigmaMixin, _StockEuler):
    """``diffusers.EulerDiscreteScheduler`` with the fused step."""

    def _da_down_up(self, sc, sn):
        return sn / sc, torch.zeros_like(sc)

    def set_timesteps(self, num_inference_steps=None, device=None, timesteps=None, sigmas=None):
        super().set_timesteps(num_inference_steps, device, timesteps, sigmas)
        self._da_build(self.timesteps.device)

    def _da_on_build(self, device):
        self._da_sig = self.sigmas.to(device=device, dtype=torch.float32)  # stock's, for churn

    def _da_on_build_move(self, device):
        self._da_sig = self._da_sig.to(device)

    def step(self, model_output, timestep, sample, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"),
             s_noise=1.0, generator=None, return_dict=True, *, seed=None):
        """Stock's step (same arguments and outputs) as one fused pass. With s_churn > 0
        (stock's "churn": noise added before the step where s_tmin <= sigma <= s_tmax), gamma
        and sigma_hat come from the sigmas on the device (see ``_churn_step``)."""
        if s_churn != 0:
            return self._da_churn_step(model_output, timestep, sample, s_churn, s_tmin, s_tmax,
                                       s_noise, generator, return_dict, seed)
        prev, x0 = self._da_run(model_output, timestep, sample, generator, seed, False)
        if not return_dict:
            return (prev, x0)
        return EulerDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=x0)


def _churn_step(self, model_output, timestep, sample, s_churn, s_tmin, s_tmax, s_noise, generator,
                return_dict, seed):
    """EulerDiscreteScheduler's step with churn: x' = x + c z (c = s_noise sqrt(sh^2 - s^2),
    sh = s (1 + gamma)), x0 from x' and M, x_prev = x' + (x' - x0)/sh (s_next - sh), with
    gamma = min(s_churn / (N - 1), sqrt(2) - 1) where s_tmin <= s <= s_tmax, else 0 (stock's rule,
    compared in float32 as stock compares). s, s_next, gamma, sh and c are computed on the device
    from the sigmas and the device step index (float32, as stock), so the step has no host read
    and compiles once for a whole loop. Stock draws noise only where gamma > 0: with noise from a
    torch generator (or the global one) and a churn range that holds some of the steps but not
    all, matching its draws needs the step index on the host (read there: a sync on a GPU, a
    graph break under torch.compile); with ``seed`` the noise is drawn from diffaccel's stream
    at every step (a launch of its own: the churn noise enters x0, the op's y line, which reads
    only x and the model outputs) and enters with coefficient 0 where gamma = 0. Then one fused
    pass writes x0 and x_prev."""
    import math

    from ..sampling.step import make_coef, make_ycoef

    for name, v in (("s_churn", s_churn), ("s_tmin", s_tmin), ("s_tmax", s_tmax), ("s_noise", s_noise)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(v):
            raise ValueError(f"{name}: expected a number, got {v!r}")
    _, i = self._da_begin(model_output, timestep, sample)
    B, dev = sample.shape[0], sample.device
    gmax = min(s_churn / (len(self.sigmas) - 1), 2 ** 0.5 - 1)
    sig_all = self._da_sig
    sig, nxt = sig_all.index_select(0, i), sig_all.index_select(0, i + 1)  # (1,) float32
    inside = (sig >= s_tmin) & (sig <= s_tmax)
    gamma = torch.where(inside, torch.full_like(sig, gmax), torch.zeros_like(sig))
    sh = sig * (gamma + 1)
    c = s_noise * (sh * sh - sig * sig).clamp(min=0).sqrt()
    x = sample.to(torch.float32).contiguous()
    z, kernel_draw = None, False
    if gmax > 0:
        draw = True
        torch_rng = generator is not None or (seed is None and self._da_seed is None)
        if torch_rng:  # stock's draw decision, on the host, where it is not the same at every step
            host = self.sigmas[:-1]
            ins = (host >= s_tmin) & (host <= s_tmax)
            if not bool(ins.all()):
                draw = bool(ins[int(i[0])])
        z, kernel_draw = self._da_noise(model_output, generator, None, seed, draw, model_output.dtype)
        if kernel_draw:
            from ..random import noise as _noise
            z = _noise(x.shape, seed=step_seeds(seed if seed is not None else self._da_seed, B, dev, i),
                       device=dev)
    pred = self.config.prediction_type
    if pred == "epsilon":
        bx, bm = 1.0, -sh
    elif pred == "v_prediction":
        bx, bm = 1 / (sig * sig + 1), -sig / (sig * sig + 1).sqrt()
    else:
        bx, bm = 0.0, 1.0
    if z is None:  # no churn noise at this step: x stands in for z with coefficient 0
        zz, c = x, torch.zeros_like(c)
    else:
        zz = z.to(torch.float32)
    # one pass: x0 = bx x' + bm M = bx x + bm M + bx c z (the y line, returned), then
    # x_prev = (1 + k) x' - k x0 = (1 + k) x + (1 + k) c z - k x0
    k = (nxt - sh) / sh
    x0 = torch.empty_like(x)
    prev = fused_step(x, [model_output, zz], make_coef(B, ax=1 + k, am=(0.0, (1 + k) * c), device=dev),
                      ycoef=make_ycoef(B, bx=bx, ay=-k, bm=(bm, bx * c), device=dev), y_out=x0,
                      out=torch.empty_like(x), backend=backend_for(x.dtype))
    self._da_advance(i)
    prev = prev.to(model_output.dtype)
    if not return_dict:
        return (prev, x0)
    return EulerDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=x0)


EulerDiscreteScheduler._da_churn_step = _churn_step


class EulerAncestralDiscreteScheduler(_ScaleInputMixin, _SigmaMixin, _StockEA):
    """``diffusers.EulerAncestralDiscreteScheduler`` with the fused step; ``set_timesteps`` also
    takes custom ``timesteps`` or ``sigmas`` (with the final sigma, as EulerDiscreteScheduler;
    e.g. ``diffaccel.vrg.to_sigmas``)."""

    PREDICTIONS = ("epsilon", "v_prediction")

    def _da_stochastic(self):
        return True

    def _da_down_up(self, sc, sn):
        up = (sn ** 2 * (sc ** 2 - sn ** 2) / sc ** 2).sqrt()
        down = (sn ** 2 - up ** 2).sqrt()
        return down / sc, up

    def set_timesteps(self, num_inference_steps=None, device=None, timesteps=None, sigmas=None):
        """Stock's ``set_timesteps(num_inference_steps, device)``, plus custom ``sigmas``
        (descending, ending with the final sigma, usually 0) or ``timesteps`` (descending; the
        sigmas interpolated in the training schedule, a final 0 appended)."""
        given = [n for n, v in (("num_inference_steps", num_inference_steps), ("timesteps", timesteps),
                                ("sigmas", sigmas)) if v is not None]
        if len(given) != 1:
            raise ValueError(f"set_timesteps: pass exactly one of num_inference_steps, timesteps, "
                             f"sigmas (got {', '.join(given) or 'none'})")
        if num_inference_steps is not None:
            super().set_timesteps(num_inference_steps, device)
        else:
            ac = self.alphas_cumprod.to(torch.float64).numpy()
            if sigmas is not None:
                s = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1).cpu()
                if s.numel() < 2:
                    raise ValueError("sigmas: expected at least two values (the last is the final sigma)")
                ts = sigma_to_t(s[:-1].numpy(), ac)
            else:
                ts = torch.as_tensor(timesteps, dtype=torch.float64).reshape(-1).cpu().numpy()
                if ts.size < 1:
                    raise ValueError("timesteps: expected at least one timestep")
                full = ((1 - ac) / ac) ** 0.5
                s = torch.cat([torch.from_numpy(np.interp(ts, np.arange(len(full)), full)),
                               torch.zeros(1, dtype=torch.float64)])
            if not bool((s[:-1] > 0).all()) or not bool((s[1:] <= s[:-1]).all()) or not bool(torch.isfinite(s).all()):
                raise ValueError(f"sigmas: expected finite, positive, non-increasing values, got {s.tolist()[:8]}")
            self.num_inference_steps = s.numel() - 1
            self.sigmas = s.to(torch.float32)
            self.timesteps = torch.from_numpy(np.asarray(ts, dtype=np.float32)).to(device)
            self._step_index = None
            self._begin_index = None
        self._da_build(self.timesteps.device)

    def step(self, model_output, timestep, sample, generator=None, return_dict=True, *, seed=None,
             return_logprob=False, prev_sample=None):
        """Stock's step (same arguments and outputs) as one fused pass; ``seed``: int or (B,)
        integer tensor, noise drawn in the kernel (batch-invariant with per-sample seeds).
        ``return_logprob``: returns ``(prev_sample, pred_original_sample, log_prob)`` (B,), the
        transition's log-density averaged over the non-batch dims; with ``prev_sample`` it
        re-scores that sample (gradients flow to model_output)."""
        res = self._da_run(model_output, timestep, sample, generator, seed, True, return_logprob,
                           prev_sample)
        return step_output(res, return_logprob, return_dict, EulerAncestralDiscreteSchedulerOutput)
