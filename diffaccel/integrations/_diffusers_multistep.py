"""Accelerated ``DPMSolverMultistepScheduler`` (``dpmsolver++`` / ``sde-dpmsolver++``, orders
1-3, midpoint / heun).

DPM-Solver++ in stock's notation (alpha_t, sigma_t from stock's ``_sigma_to_alpha_sigma_t``,
lambda = log alpha - log sigma, h = lambda_t - lambda_s0, r0 = h_0/h, r1 = h_1/h, m0..m2 the
current and past x0 predictions):

    x_t = ax x + kA D0 + kB D1 + kC D2 + az z
    D0 = m0,  D1_0 = (m0 - m1)/r0,  D1_1 = (m1 - m2)/r1
    order 2: D1 = D1_0;  order 3: D1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1),  D2 = (D1_0 - D1_1)/(r0 + r1)

with, for dpmsolver++: ax = sigma_t/sigma_s0, kA = -alpha_t (e^-h - 1); kB = kA/2 (midpoint) or
alpha_t ((e^-h - 1)/h + 1) (heun, and order 3); kC = -alpha_t ((e^-h - 1 + h)/h^2 - 1/2);
for sde-dpmsolver++: ax = sigma_t/sigma_s0 e^-h, kA = alpha_t (1 - e^-2h), kB = kA/2 (midpoint) or
alpha_t ((1 - e^-2h)/(-2h) + 1), kC = alpha_t ((1 - e^-2h - 2h)/(2h)^2 - 1/2),
az = sigma_t sqrt(1 - e^-2h). Expanded into coefficients of m0, m1, m2, one table row per
(step, order); the order of each step (stock's rule: first order at the first step and, per
``lower_order_final`` / ``euler_at_final`` / ``final_sigmas_type``, at the end) is chosen on the
device from the step index and the number of steps taken.
"""
import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler as _StockDPM
from diffusers.schedulers.scheduling_utils import SchedulerOutput

from ..layout import (COEF_AX, COEF_AZ, COEF_C0, COEF_C1, COEF_C2, COEF_SX, coef_am, coef_sm,
                      coef_width)
from ..sampling.step import fused_step_prepared
from ._diffusers_base import (ROW_A_BM, ROW_A_WIDTH, ROW_B, backend_for, fold_table, folded_rows,
                              step_seeds, with_logp_dim)
from ._diffusers_sigma import _SigmaMixin, sigma_to_t


class DPMSolverMultistepScheduler(_SigmaMixin, _StockDPM):
    """``diffusers.DPMSolverMultistepScheduler`` with the fused step; ``set_timesteps`` also
    takes custom ``sigmas`` (descending, with the final sigma)."""

    ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++")
    PREDICTIONS = ("epsilon", "sample", "v_prediction", "flow_prediction")

    def _da_check_config(self):
        cfg = self.config
        if cfg.algorithm_type not in self.ALGORITHMS:
            raise ValueError(f"DPMSolverMultistepScheduler: algorithm_type={cfg.algorithm_type!r} is "
                             f"not supported (supported: {', '.join(self.ALGORITHMS)})")
        if cfg.solver_type not in ("midpoint", "heun"):
            raise ValueError(f"DPMSolverMultistepScheduler: solver_type={cfg.solver_type!r} is not "
                             "supported (supported: midpoint, heun)")
        if cfg.thresholding:
            raise ValueError("DPMSolverMultistepScheduler: thresholding=True is not supported")
        if cfg.variance_type is not None:
            raise ValueError(f"DPMSolverMultistepScheduler: variance_type={cfg.variance_type!r} is not "
                             "supported (supported: None)")
        super()._da_check_config()

    def _da_stochastic(self):
        return self.config.algorithm_type.startswith("sde")

    # track_logp (sde-dpmsolver++): the step is the reverse SDE (noise share 1) in data-prediction
    # form, x' = ax x + kA x0 + (differences of past x0, O(h) corrections) + az z. With the score
    # s = (alpha_s x0 - x)/sigma_s^2 of the current x0, x' = (ax + kA/alpha_s) x + ... + az z, and
    # docs/math.md 3.1's reverse-SDE update in the step's own terms (as DDPMScheduler's) reads
    # logp += -D log(ax + kA/alpha_s) + az^2/2 |s|^2 + az (s . z): no divergence, zero overhead
    # (first order in the step; the deterministic last step to sigma = 0 of final_sigmas_type
    # "zero" adds only its scaling term).

    @property
    def lower_order_nums(self):
        """Stock's count of the steps taken, capped at solver_order (a host read)."""
        n = getattr(self, "_da_taken", None)
        return 0 if n is None else min(int(n[0]), self.config.solver_order)

    @lower_order_nums.setter
    def lower_order_nums(self, value):
        pass  # stock resets it in set_timesteps; ours is reset with the tables

    def set_timesteps(self, num_inference_steps=None, device=None, mu=None, timesteps=None, sigmas=None):
        """Stock's ``set_timesteps``, plus custom ``sigmas`` (descending, ending with the final
        sigma; timesteps by log-sigma interpolation as EulerDiscreteScheduler does)."""
        if sigmas is None:
            super().set_timesteps(num_inference_steps, device, mu, timesteps)
        else:
            if num_inference_steps is not None or timesteps is not None:
                raise ValueError("sigmas: pass either sigmas or num_inference_steps / timesteps")
            if self.config.use_flow_sigmas:
                raise ValueError("sigmas: custom sigmas with use_flow_sigmas are not supported")
            s = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1).cpu()
            if s.numel() < 2 or not bool((s[1:] < s[:-1]).all()) or not bool((s >= 0).all()):
                raise ValueError(f"sigmas: expected at least two strictly descending values >= 0 "
                                 f"(the last is the final sigma), got {s.tolist()[:8]}")
            ts = sigma_to_t(s[:-1].numpy(), self.alphas_cumprod.to(torch.float64).numpy())
            self.sigmas = s.to(torch.float32)
            self.timesteps = torch.from_numpy(np.round(ts).astype(np.int64)).to(device)
            self.num_inference_steps = s.numel() - 1
            self.model_outputs = [None] * self.config.solver_order
            self._step_index = None
            self._begin_index = None
        self._da_build(self.timesteps.device)

    def _da_make_table(self):
        """(n, ROW_B + 3 W) rows, W = coef_width(solver_order): row A (x0 of the model output),
        then row B for orders 1, 2, 3 (models: the history [x0, m1, m2])."""
        s = self.sigmas.to(torch.float64).cpu()
        n = s.shape[0] - 1
        K = self.config.solver_order
        W = coef_width(K)
        alpha, sig = self._sigma_to_alpha_sigma_t(s)
        tab = torch.zeros(n, ROW_B + 3 * W, dtype=torch.float64)
        pred = self.config.prediction_type
        a0, s0 = alpha[:-1], sig[:-1]
        if pred == "epsilon":
            tab[:, COEF_AX], tab[:, ROW_A_BM] = 1 / a0, -s0 / a0
        elif pred == "v_prediction":
            tab[:, COEF_AX], tab[:, ROW_A_BM] = a0, -s0
        elif pred == "flow_prediction":
            tab[:, COEF_AX], tab[:, ROW_A_BM] = 1.0, -s[:-1]
        else:
            tab[:, ROW_A_BM] = 1.0
        with np.errstate(all="ignore"):
            lam = alpha.log() - sig.log()
            sde = self.config.algorithm_type == "sde-dpmsolver++"
            heun = self.config.solver_type == "heun"
            for i in range(n):
                at, st, ss0 = alpha[i + 1], sig[i + 1], sig[i]
                h = lam[i + 1] - lam[i]
                em, em2 = torch.exp(-h), torch.exp(-2 * h)
                if sde:
                    ax, kA, az = st / ss0 * em, at * (1 - em2), st * torch.sqrt(1 - em2)
                    kB2 = at * ((1 - em2) / (-2 * h) + 1) if heun else kA / 2
                    kB3 = at * ((1 - em2) / (-2 * h) + 1)
                    kC = at * ((1 - em2 - 2 * h) / (2 * h) ** 2 - 0.5)
                else:
                    ax, kA, az = st / ss0, -at * (em - 1), 0.0
                    kB2 = at * ((em - 1) / h + 1) if heun else kA / 2
                    kB3 = at * ((em - 1) / h + 1)
                    kC = -at * ((em - 1 + h) / h ** 2 - 0.5)
                r0 = (lam[i] - lam[max(i - 1, 0)]) / h
                r1 = (lam[max(i - 1, 0)] - lam[max(i - 2, 0)]) / h
                rows = [(kA, 0.0, 0.0)]
                rows.append((kA + kB2 / r0, -kB2 / r0, 0.0))
                u = kB3 * (1 + r0 / (r0 + r1)) + kC / (r0 + r1)
                v = -kB3 * r0 / (r0 + r1) - kC / (r0 + r1)
                rows.append((kA + u / r0, -u / r0 + v / r1, -v / r1))
                for o, cm in enumerate(rows):
                    base = ROW_B + o * W
                    tab[i, base + COEF_AX] = ax
                    tab[i, base + COEF_AZ] = az
                    if sde:  # log-density (track_logp), see the note above set_timesteps
                        a_s = alpha[i]
                        tab[i, base + COEF_SX], tab[i, base + coef_sm(0)] = -1 / ss0 ** 2, a_s / ss0 ** 2
                        tab[i, base + COEF_C0] = -torch.log(ax + kA / a_s)
                        tab[i, base + COEF_C1], tab[i, base + COEF_C2] = az ** 2 / 2, az
                    for k in range(min(K, 3)):
                        tab[i, base + coef_am(k)] = cm[k]
        return tab

    def _da_on_build(self, device):
        self._da_taken = torch.zeros(1, dtype=torch.int64, device=device)
        # Keep a history allocated by an earlier run (zeroed in place: the same tensors, so a
        # compiled loop's guards still hold); its values are never read before they are
        # overwritten (the order rows give the unwritten entries coefficient 0), zeroing only
        # keeps a non-finite leftover from turning 0 * inf into NaN.
        old = [m for m in (getattr(self, "_da_hist", None) or []) if m is not None]
        if len(old) == self.config.solver_order and all(m.device == torch.device(device) for m in old):
            for m in old:
                m.zero_()
            self.model_outputs = list(old)
        else:
            self.model_outputs = [None] * self.config.solver_order

    def init_history(self, sample):
        """Allocate the history of past x0 predictions (``model_outputs``) as zeros shaped like
        ``sample`` (B, ...) before the first step, so that a compiled denoising loop sees the
        same state at every step and compiles once (without it the first step allocates the
        history and the second compiles again). The values are never read: the per-step order
        (first order at the first step, at most the number of steps taken plus one) gives the
        entries not yet written the coefficient 0. ``set_timesteps`` keeps the allocation."""
        if not isinstance(sample, torch.Tensor) or sample.dim() < 1:
            raise TypeError(f"sample: expected a (B, ...) tensor, got {type(sample).__name__}")
        if getattr(self, "_da_tab", None) is None:
            raise ValueError("init_history: call set_timesteps first")
        if int(self._da_taken[0]) != 0:
            raise ValueError("init_history: the run has started (call it after set_timesteps, "
                             "before the first step)")
        # float32, the dtype of the x0 each step writes (the step computes in float32)
        self.model_outputs = [torch.zeros(sample.shape, dtype=torch.float32, device=sample.device)
                              for _ in range(self.config.solver_order)]
        self._da_hist = self.model_outputs
        return self.model_outputs

    def _da_on_build_move(self, device):
        self._da_taken = self._da_taken.to(device)

    def _da_order(self, i, taken=None):
        """Order of the step at index i (stock's rule) after ``taken`` steps (default: the device
        count); i, taken: int64 tensors of one shape (the (1,) device values, or the host grid
        of ``_da_fold_tables``)."""
        cfg = self.config
        n = len(self.timesteps)
        final = cfg.euler_at_final or (cfg.lower_order_final and n < 15) or cfg.final_sigmas_type == "zero"
        second = cfg.lower_order_final and n < 15
        taken = self._da_taken if taken is None else taken
        o1 = (taken < 1) | ((i == n - 1) & final)
        o2 = (taken < 2) | ((i == n - 2) & second)
        order = torch.where(o1, 1, torch.where(o2, 2, 3))
        return order.clamp(max=cfg.solver_order)

    def _da_fold_tables(self, tab):
        """Folded (coef, ycoef) rows of every (steps taken capped at solver_order, step index):
        row ``i + n min(taken, K)`` holds step i's row A folded with row B of the order stock
        takes there (``replace=True``: M takes x0's place), so a step reads one row."""
        n, K = tab.shape[0], self.config.solver_order
        W = coef_width(K)
        i = torch.arange(n).repeat(K + 1)
        taken = torch.arange(K + 1).repeat_interleave(n)
        cols = ROW_B + (self._da_order(i, taken) - 1)[:, None] * W + torch.arange(W)[None]
        i, cols = i.to(tab.device), cols.to(tab.device)
        return fold_table(tab.index_select(0, i)[:, :ROW_A_WIDTH], tab[i[:, None], cols], replace=True)

    def step(self, model_output, timestep, sample, generator=None, variance_noise=None,
             return_dict=True, *, seed=None):
        """Stock's step (same arguments and outputs) as one fused pass: the model output's x0
        (the op's y line, kept in ``model_outputs``, float32) and the multistep update from it
        and the past x0s."""
        if self.num_inference_steps is None:
            raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' "
                             "after creating the scheduler")
        tab, i = self._da_begin(model_output, timestep, sample, reject_index=False)
        B, dev = sample.shape[0], sample.device
        K = self.config.solver_order
        cd = torch.promote_types(sample.dtype, model_output.dtype)
        for k, m in enumerate(self.model_outputs):
            if m is not None and (m.shape != sample.shape or m.device != dev):
                raise ValueError(f"model_outputs[{k}]: the history holds a {tuple(m.shape)} tensor on "
                                 f"{m.device}, the sample is {tuple(sample.shape)} on {dev} (call "
                                 "set_timesteps, then init_history(sample), for a new batch shape)")
        sde = self._da_stochastic()
        z, kernel_draw = None, False
        if sde:
            z, kernel_draw = self._da_noise(model_output, generator, variance_noise, seed, True,
                                            torch.float32)
            if z is not None:
                z = z.to(device=dev, dtype=torch.float32)
        # (seeds checked before any state moves: a bad seed leaves the scheduler as it was)
        seeds = step_seeds(seed if seed is not None else self._da_seed, B, dev, i) if kernel_draw else None
        x = sample.to(torch.float32).contiguous()
        x0 = torch.empty_like(x)  # this step's history entry: the y line's output
        # m1, m2: past x0s (unused slots, before K steps were taken, get zero coefficients)
        past = [m if m is not None else x for m in reversed(self.model_outputs[1:])]
        # this step's folded row: (step i, steps taken capped at K), see _da_fold_tables
        row = torch.add(i, self._da_taken.clamp(max=K), alpha=tab.shape[0])
        coef, ycoef = folded_rows(self._da_fold, row, B)
        logp = self._da_logp_buffer(B, dev, x)
        if logp is not None:
            coef = with_logp_dim(coef, x[0].numel())
        prev = fused_step_prepared(x, [model_output] + past[:K - 1], coef, ycoef=ycoef, y_out=x0,
                                   z=z, seed=seeds, dist="normal" if kernel_draw else None,
                                   out=torch.empty_like(x), logp=logp, backend=backend_for(x.dtype))
        for k in range(K - 1):
            self.model_outputs[k] = self.model_outputs[k + 1]
        self.model_outputs[-1] = x0
        # entries not written yet (no init_history): zeros, with coefficient 0 in this step's row
        self.model_outputs = [m if m is not None else torch.zeros_like(x0) for m in self.model_outputs]
        self._da_hist = self.model_outputs
        self._da_taken.add_(1)
        self._da_advance(i)
        prev = prev.to(cd)
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)
