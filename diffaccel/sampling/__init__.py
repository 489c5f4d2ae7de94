"""Samplers with in-place log-density tracking (docs/math.md Section 3) on one fused step op.

- :func:`fused_step` / :func:`make_coef` / :func:`make_ycoef`: the fused step (``torch.ops.diffaccel.sample_step``)
  on the reference, cpu (C++), triton and cuda backends.
- k-diffusion's samplers with its exact signatures (k_samplers.py): :func:`sample_euler`,
  :func:`sample_euler_ancestral`, :func:`sample_heun`, :func:`sample_dpm_2`,
  :func:`sample_dpm_2_ancestral`, :func:`sample_lms`, :func:`sample_dpmpp_2s_ancestral`,
  :func:`sample_dpmpp_sde`, :func:`sample_dpmpp_2m`, :func:`sample_dpmpp_2m_sde`,
  :func:`sample_dpmpp_3m_sde`; and :func:`sample_euler_maruyama`, :func:`sample_hd`,
  :func:`sample_ddim` (+ :class:`VPEpsDenoiser` for eps-prediction models), and :func:`sample_interpolant` (Section 4's stochastic
  interpolants, Euler in tau).
- :func:`log_likelihood` (euler, heun, rk4, dopri5, expint; priors: :class:`MatchedPrior`, :class:`EmpiricalPrior`) and
  :func:`bits_per_dim`.
"""
from ._driver import PROBE_BASE, prior_logp
from .interpolant import sample_interpolant
from .likelihood import SOLVERS, bits_per_dim, log_likelihood
from .k_samplers import (K_SAMPLERS, sample_dpm_2, sample_dpm_2_ancestral, sample_dpmpp_2m,
                         sample_dpmpp_2m_sde, sample_dpmpp_2s_ancestral, sample_dpmpp_3m_sde,
                         sample_dpmpp_sde, sample_euler, sample_euler_ancestral, sample_heun,
                         sample_lms)
from .priors import EmpiricalPrior, MatchedPrior
from .samplers import VPEpsDenoiser, ancestral_step, sample_ddim, sample_euler_maruyama, sample_hd
from .step import coef_width, fused_step, make_coef, make_ycoef

__all__ = ["fused_step", "make_coef", "make_ycoef", "coef_width", "sample_euler", "sample_heun",
           "sample_euler_ancestral", "sample_dpm_2", "sample_dpm_2_ancestral", "sample_lms",
           "sample_dpmpp_2s_ancestral", "sample_dpmpp_sde", "sample_dpmpp_2m",
           "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde", "K_SAMPLERS",
           "sample_euler_maruyama", "sample_hd", "sample_ddim", "sample_interpolant",
           "VPEpsDenoiser", "ancestral_step", "prior_logp", "log_likelihood", "bits_per_dim",
           "SOLVERS", "PROBE_BASE", "MatchedPrior", "EmpiricalPrior"]
