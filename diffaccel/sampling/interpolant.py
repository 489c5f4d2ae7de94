"""Euler sampling of the stochastic-interpolant ODE (docs/math.md Section 4).

``I = a(tau) x_1 + alpha(tau) z``, tau from 0 (noise) to 1 (data), with a = tau and
VP: alpha = sqrt(1 - tau^2);  VE: alpha = sqrt(d) (1 - tau).
Velocity per unit tau: ``b = (alpha'/alpha)(x - tau E[x_1|x]) + E[x_1|x]``; one Euler step
``x <- x + (tau_{i+1} - tau_i) b(x, tau_i)`` is the fused step with
``ax = 1 + dtau alpha'/alpha``, ``am = dtau (1 - tau alpha'/alpha)``.
"""
import math

import torch
from tqdm.auto import trange

from ._driver import _rows_bad, finish_rows
from .step import fused_step, make_coef

__all__ = ["sample_interpolant"]


def _posterior_mean(model, x, a, b, extra_args):
    if hasattr(model, "posterior_mean"):
        return model.posterior_mean(x, a, b)
    if a <= 0:
        raise ValueError("taus: a k-diffusion denoiser needs tau > 0 (or give the model a "
                         "posterior_mean(x, a, b) method)")
    sigma = x.new_full((x.shape[0],), b / a)
    return model(x / a, sigma, **extra_args)


def sample_interpolant(model, x, taus, kind="vp", extra_args=None, callback=None, disable=None,
                       *, backend=None):
    """Euler steps in tau over the grid ``taus`` (increasing, in [0, 1)) from ``x`` at
    ``taus[0]`` (pure noise ``alpha(0) z`` when ``taus[0] = 0``). ``model`` is an oracle with
    ``posterior_mean(x, a, b)`` (e.g. diffaccel.models) or a k-diffusion denoiser (then
    ``E[x_1|x] = model(x / a, alpha / a)``). Use ``diffaccel.schedules.interpolant_tau`` for the
    paper's knee schedules. A sample that is non-finite on input or made non-finite by the model
comes back as NaN (one warning says how many); the others are unaffected. B = 0 returns x."""
    if kind not in ("vp", "ve"):
        raise ValueError(f"kind: expected 'vp' or 've', got {kind!r}")
    extra_args = {} if extra_args is None else extra_args
    taus = [float(t) for t in torch.as_tensor(taus, dtype=torch.float64).reshape(-1)]
    if (len(taus) < 2 or not all(math.isfinite(t) for t in taus)
            or not all(a < b for a, b in zip(taus, taus[1:])) or taus[0] < 0 or taus[-1] > 1):
        raise ValueError(f"taus: expected a finite, strictly increasing grid in [0, 1] with at "
                         f"least 2 points, got {taus}")
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise TypeError("x: expected a (B, *S) tensor")
    x = x.clone().contiguous()
    B = x.shape[0]
    if B == 0:
        return x
    d = math.prod(x.shape[1:])
    bad = _rows_bad(x)
    for i in trange(len(taus) - 1, disable=disable):
        tau, dt = taus[i], taus[i + 1] - taus[i]
        if kind == "vp":
            alpha, rate = math.sqrt(1 - tau ** 2), -tau / (1 - tau ** 2)
        else:
            alpha, rate = math.sqrt(d) * (1 - tau), -1.0 / (1 - tau)
        with torch.no_grad():
            e = _posterior_mean(model, x, tau, alpha, extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "tau": tau, "denoised": e})
        coef = make_coef(B, ax=1 + dt * rate, am=(dt * (1 - tau * rate),), device=x.device)
        fused_step(x, [e], coef, backend=backend)
    finish_rows("sample_interpolant", bad, x)
    return x
