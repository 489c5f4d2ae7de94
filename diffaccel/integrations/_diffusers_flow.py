"""Accelerated ``FlowMatchEulerDiscreteScheduler`` (SD3 / Flux; sigma-indexed as the Euler
schedulers, with the step counter of ``_diffusers_sigma``).

Per step i with s = sigmas[i], s' = sigmas[i + 1] (stock's own sigmas) and the velocity v (the
model output): deterministic x' = x + (s' - s) v; stochastic_sampling x' = (1 - s') (x - s v) + s' z.
One fused pass each, one coefficient row of one model per step (no x0 line).
"""
import torch
from diffusers import FlowMatchEulerDiscreteScheduler as _StockFlow
from diffusers.schedulers.scheduling_flow_match_euler_discrete import \
    FlowMatchEulerDiscreteSchedulerOutput

from ..layout import COEF_AX, COEF_AZ, coef_am, coef_width
from ..sampling.step import fused_step
from ..stroke import stroke_blur
from . import _diffusers_logprob as _logprob
from ._diffusers_base import backend_for, check_model_output, step_seeds, stroke_weights_for
from ._diffusers_sigma import _SigmaMixin

W = coef_width(1)  # a step's row: one model (the velocity)
AM = coef_am(0)


class FlowMatchEulerDiscreteScheduler(_SigmaMixin, _StockFlow):
    """``diffusers.FlowMatchEulerDiscreteScheduler`` (SD3 / Flux) with the fused step,
    deterministic and ``stochastic_sampling``."""

    _da_logp_ready = False

    def _da_check_config(self):
        pass  # every config: the step reads only stock's sigmas

    def _da_stochastic(self):
        return bool(self.config.stochastic_sampling)

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None, timesteps=None):
        super().set_timesteps(num_inference_steps, device, sigmas, mu, timesteps)
        self._da_build(self.timesteps.device)

    def _da_fold_tables(self, tab):
        return None  # no x0 line: the step reads the table's row as it is

    def _da_make_table(self):
        s = self.sigmas.to(torch.float64).cpu()
        sc, sn = s[:-1], s[1:]
        tab = torch.zeros(sc.shape[0], W, dtype=torch.float64)
        if self.config.stochastic_sampling:
            tab[:, COEF_AX], tab[:, AM], tab[:, COEF_AZ] = 1 - sn, -(1 - sn) * sc, sn
        else:
            tab[:, COEF_AX], tab[:, AM] = 1.0, sn - sc
        return tab

    def scale_noise(self, sample, timestep, noise=None, *, stroke=None):
        """Stock's ``scale_noise`` (sigma noise + (1 - sigma) sample); with ``stroke``: the same
        with both blurred by the stroke weights at each sample's log-SNR."""
        if stroke is None:
            return super().scale_noise(sample, timestep, noise)
        B = sample.shape[0]
        one = torch.ones(B, 1, dtype=torch.float32, device=sample.device)
        sig = super().scale_noise(torch.zeros_like(one), timestep, one).reshape(B)
        scales, w = stroke_weights_for(stroke, 1 - sig, sig)
        s4 = sig.reshape(B, 1, 1, 1).to(sample.dtype)
        return s4 * stroke_blur(noise.to(sample.dtype), w, scales) + (1 - s4) * stroke_blur(sample, w, scales)

    def step(self, model_output, timestep, sample, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"),
             s_noise=1.0, generator=None, per_token_timesteps=None, return_dict=True, *, seed=None,
             return_logprob=False, prev_sample=None):
        """Stock's step (same arguments and outputs; s_churn, s_tmin, s_tmax, s_noise are
        ignored, as stock ignores them) as one fused pass. With ``stochastic_sampling``,
        ``return_logprob`` returns ``(prev_sample, log_prob)``: log N(prev; (1 - s') x0, s'^2)
        averaged over the non-batch dims (Flow-GRPO); with ``prev_sample`` it re-scores that
        sample, differentiably in model_output."""
        if return_logprob and not self.config.stochastic_sampling:
            raise ValueError("return_logprob: the deterministic FlowMatch step has no transition "
                             "density (use stochastic_sampling=True)")
        if prev_sample is not None and not return_logprob:
            raise ValueError("prev_sample: only used with return_logprob=True (re-scoring)")
        if per_token_timesteps is not None:
            raise ValueError("per_token_timesteps: not supported by the accelerated step")
        tab, i = self._da_begin(model_output, timestep, sample)
        B, dev = sample.shape[0], sample.device
        x = sample.to(torch.float32).contiguous()
        z, kernel_draw = None, False
        if self.config.stochastic_sampling:
            z, kernel_draw = self._da_noise(model_output, generator, None, seed, True, torch.float32)
        seeds = step_seeds(seed if seed is not None else self._da_seed, B, dev, i) if kernel_draw else None
        if return_logprob:  # one fused pass (no x0 line); re-scoring differentiable in model_output
            r = tab.index_select(0, i)
            zero = torch.zeros_like(r[:, COEF_AX])
            rows = dict(ax=r[:, COEF_AX], am=r[:, AM], std=r[:, COEF_AZ], bx=zero, bm=zero, ay=zero,
                        backend=backend_for(x.dtype))
            if prev_sample is None:
                prev_sample, _, lp = _logprob.sample_with_logprob(
                    x, model_output, z=z, seeds=seeds, out_dtype=model_output.dtype, **rows)
            else:
                check_model_output(prev_sample, sample)
                lp, _ = _logprob.rescore(x, model_output, prev_sample, **rows)
            self._da_advance(i)
            return prev_sample, lp
        prev = fused_step(x, [model_output], tab.index_select(0, i).expand(B, W), z=z, seed=seeds,
                          dist="normal" if kernel_draw else None, out=torch.empty_like(x),
                          backend=backend_for(x.dtype))
        self._da_advance(i)
        prev = prev.to(model_output.dtype)
        if not return_dict:
            return (prev,)
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev)
