"""Noise schedules (docs/math.md Sections 0 and 4) and conversions between their parameterizations.

Conventions: ``x_t = a_t x_0 + b_t eps``; VP schedules have ``a^2 + b^2 = 1`` and ``abar = a^2``;
the k-diffusion / EDM noise level is ``sigma = b / a``; the log-SNR is
``lambda = log(a^2 / b^2) = -2 log sigma``. Every ``*_sigmas`` function returns a float32 (or
``dtype``) 1-d tensor of decreasing noise levels for the samplers of ``diffaccel.sampling``,
with a final 0 appended when ``append_zero`` (the k-diffusion convention).

Stochastic interpolants (Section 4), ``tau`` in [0, 1] from noise to data:
VP ``I = sqrt(1 - tau^2) z + tau x_1`` and VE ``I = sqrt(d) (1 - tau) z + tau x_1``; the paper's
high-dimension schedules put a knee at ``tau = k / sqrt(d)`` (:func:`interpolant_tau`).
"""
import math

import torch

__all__ = [
    "abar_to_sigma", "sigma_to_abar", "abar_to_logsnr", "logsnr_to_abar", "sigma_to_logsnr",
    "logsnr_to_sigma", "vp_linear_abar", "vp_linear_beta", "vp_linear_t", "ddpm_abar",
    "cosine_abar", "vp_linear_sigmas", "ddpm_sigmas", "cosine_sigmas", "karras_sigmas",
    "logsnr_sigmas", "ve_sigmas", "interpolant_tau", "interpolant_coefficients",
    "interpolant_sigmas",
]


def _t(v, dtype=torch.float64):
    return torch.as_tensor(v, dtype=dtype) if not isinstance(v, torch.Tensor) else v.to(dtype)


def _finish(s, append_zero, dtype, device):
    s = s.to(dtype=torch.float64)
    if append_zero:
        s = torch.cat([s, s.new_zeros(1)])
    return s.to(dtype=dtype, device=device)


def _check_n(n):
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int (number of noise levels), got {n!r}")


def _check_range(sigma_min, sigma_max):
    if not (0 < sigma_min < sigma_max < math.inf):
        raise ValueError(f"sigma_min, sigma_max: expected 0 < sigma_min < sigma_max < inf, "
                         f"got {sigma_min!r}, {sigma_max!r}")


# ------------------------------------------------------------------------------ conversions

def abar_to_sigma(abar):
    """sigma = sqrt((1 - abar) / abar)."""
    abar = _t(abar)
    return torch.sqrt((1 - abar) / abar)


def sigma_to_abar(sigma):
    """abar = 1 / (1 + sigma^2)."""
    sigma = _t(sigma)
    return 1 / (1 + sigma ** 2)


def abar_to_logsnr(abar):
    """lambda = log(abar / (1 - abar))."""
    abar = _t(abar)
    return torch.log(abar) - torch.log1p(-abar)


def logsnr_to_abar(logsnr):
    """abar = sigmoid(lambda)."""
    return torch.sigmoid(_t(logsnr))


def sigma_to_logsnr(sigma):
    """lambda = -2 log sigma."""
    return -2 * torch.log(_t(sigma))


def logsnr_to_sigma(logsnr):
    """sigma = exp(-lambda / 2)."""
    return torch.exp(-_t(logsnr) / 2)


# ------------------------------------------------------------------------------ VP schedules

def vp_linear_beta(t, beta_min=0.1, beta_max=20.0):
    """beta(t) = beta_min + t (beta_max - beta_min), t in [0, 1]."""
    return beta_min + _t(t) * (beta_max - beta_min)


def vp_linear_abar(t, beta_min=0.1, beta_max=20.0):
    """abar(t) = exp(-beta_min t - (beta_max - beta_min) t^2 / 2) (continuous VP-SDE)."""
    t = _t(t)
    return torch.exp(-beta_min * t - (beta_max - beta_min) * t ** 2 / 2)


def vp_linear_t(abar, beta_min=0.1, beta_max=20.0):
    """The inverse of :func:`vp_linear_abar`: the t in [0, 1] with abar(t) = abar."""
    L = -torch.log(_t(abar))  # beta_min t + db t^2 / 2 = L
    db = beta_max - beta_min
    if db == 0:
        return L / beta_min
    return (-beta_min + torch.sqrt(beta_min ** 2 + 2 * db * L)) / db


def ddpm_abar(num_train_steps=1000, beta_start=1e-4, beta_end=0.02):
    """The discrete DDPM table: betas = linspace(beta_start, beta_end, N), abar = cumprod(1 - betas)."""
    betas = torch.linspace(beta_start, beta_end, num_train_steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def cosine_abar(t, s=0.008):
    """abar(t) = cos^2(((t + s)/(1 + s)) pi/2) / cos^2((s/(1 + s)) pi/2)."""
    t = _t(t)
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return f / math.cos(s / (1 + s) * math.pi / 2) ** 2


def vp_linear_sigmas(n, beta_min=0.1, beta_max=20.0, eps_s=1e-3, *, append_zero=True,
                     dtype=torch.float32, device=None):
    """n noise levels of the continuous VP-SDE at t = linspace(1, eps_s, n) (as in k-diffusion)."""
    _check_n(n)
    t = torch.linspace(1, eps_s, n, dtype=torch.float64)
    return _finish(abar_to_sigma(vp_linear_abar(t, beta_min, beta_max)), append_zero, dtype, device)


def ddpm_sigmas(n, num_train_steps=1000, beta_start=1e-4, beta_end=0.02, *, append_zero=True,
                dtype=torch.float32, device=None):
    """n levels of the discrete DDPM table at evenly spaced training steps (leading spacing
    from the last step down to step 0, like diffusers' DDIM "trailing" without offset)."""
    _check_n(n)
    abar = ddpm_abar(num_train_steps, beta_start, beta_end)
    idx = torch.linspace(num_train_steps - 1, 0, n, dtype=torch.float64).round().long()
    return _finish(abar_to_sigma(abar[idx]), append_zero, dtype, device)


def cosine_sigmas(n, s=0.008, t_max=0.9946, t_min=1e-3, *, append_zero=True, dtype=torch.float32,
                  device=None):
    """n levels of the cosine schedule at t = linspace(t_max, t_min, n) (t_max keeps sigma
    finite, t_min > 0 keeps it positive)."""
    _check_n(n)
    t = torch.linspace(t_max, t_min, n, dtype=torch.float64)
    return _finish(abar_to_sigma(cosine_abar(t, s)), append_zero, dtype, device)


def karras_sigmas(n, sigma_min, sigma_max, rho=7.0, *, append_zero=True, dtype=torch.float32,
                  device=None):
    """sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho (Karras et al.)."""
    _check_n(n)
    _check_range(sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _finish((hi + ramp * (lo - hi)) ** rho, append_zero, dtype, device)


def logsnr_sigmas(n, sigma_min, sigma_max, *, append_zero=True, dtype=torch.float32, device=None):
    """Uniform in log-SNR (= geometric in sigma) from sigma_max down to sigma_min."""
    _check_n(n)
    _check_range(sigma_min, sigma_max)
    lam = torch.linspace(-2 * math.log(sigma_max), -2 * math.log(sigma_min), n, dtype=torch.float64)
    return _finish(logsnr_to_sigma(lam), append_zero, dtype, device)


def ve_sigmas(n, sigma_min=0.01, sigma_max=50.0, *, append_zero=True, dtype=torch.float32,
              device=None):
    """The VE-SDE schedule sigma_i = smax (smin/smax)^(i/(n-1)) (Song et al.)."""
    return logsnr_sigmas(n, sigma_min, sigma_max, append_zero=append_zero, dtype=dtype, device=device)


# ----------------------------------------------------------------------- stochastic interpolants

_KINDS = ("vp", "ve")


def interpolant_tau(t, d, k=5.0, kind="vp"):
    """The paper's high-dimension schedules tau(t), t in [0, 1], with the knee at k/sqrt(d):

    VP: tau = 2kt/sqrt(d) for t < 1/2, else k/sqrt(d) + (1 - k/sqrt(d))(2t - 1);
    VE: tau = (1 - k/sqrt(d)) 2t for t < 1/2, else (1 - k/sqrt(d)) + (k/sqrt(d))(2t - 1).
    ``k=None`` gives the constant-speed schedule tau = t.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind: expected one of {_KINDS}, got {kind!r}")
    t = _t(t)
    if k is None:
        return t.clone()
    kk = k / math.sqrt(d)
    if not 0 < kk < 1:
        raise ValueError(f"k: expected 0 < k/sqrt(d) < 1, got k={k}, d={d}")
    if kind == "vp":
        return torch.where(t < 0.5, 2 * kk * t, kk + (1 - kk) * (2 * t - 1))
    return torch.where(t < 0.5, (1 - kk) * 2 * t, (1 - kk) + kk * (2 * t - 1))


def interpolant_coefficients(tau, d, kind="vp"):
    """(a, b) with I = a x_1 + b z: VP (tau, sqrt(1 - tau^2)); VE (tau, sqrt(d)(1 - tau))."""
    if kind not in _KINDS:
        raise ValueError(f"kind: expected one of {_KINDS}, got {kind!r}")
    tau = _t(tau)
    if kind == "vp":
        return tau, torch.sqrt(torch.clamp(1 - tau ** 2, min=0))
    return tau, math.sqrt(d) * (1 - tau)


def interpolant_sigmas(n, d, k=5.0, kind="vp", tau_min=1e-4, *, dtype=torch.float32, device=None):
    """The interpolant schedule at n + 1 uniform times as EDM noise levels sigma = b / a
    (decreasing; tau is clamped to [tau_min, 1] so the first level is finite, the last is 0)."""
    _check_n(n)
    t = torch.linspace(0, 1, n + 1, dtype=torch.float64)
    tau = torch.clamp(interpolant_tau(t, d, k, kind), min=tau_min)
    a, b = interpolant_coefficients(tau, d, kind)
    return (b / a).to(dtype=dtype, device=device)
