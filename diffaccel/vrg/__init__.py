"""Variance-Reduction Guidance (docs/math.md Section 5): measure a model's prediction error per noise
level, then find the sampling trajectory that minimizes the accumulated error.

- :func:`error_moments`, :class:`ErrorStats`, :func:`measure_mse`: per-level error moments
  (count, sum e, sum e^2 in float64; fused kernels on every backend), merged across batches and
  ``torch.distributed`` ranks, turned into an :class:`MSETable`.
- :func:`cumulative_error`: the cumulative prediction error of ``(K, N)`` candidate trajectories
  for DDIM / DPM-Solver-1 and DPM-Solver-2M, with its analytic gradient (fused, batched).
- :func:`optimize_trajectory`: many restarts optimized at once, every iterate valid;
  :func:`paper_optimizer` is the paper's method (the baseline); :func:`to_timesteps` /
  :func:`to_sigmas` hand the result to diffusers / k-diffusion.
"""
from .moments import ErrorStats, error_moments, measure_mse
from .table import MSETable, load_trajectory
from .trajectory import (SOLVERS, TrajectoryError, TrajectoryResult, check_trajectory,
                         cumulative_error, cumulative_error_and_grad, optimize_trajectory,
                         paper_optimizer, to_sigmas, to_timesteps)

__all__ = ["error_moments", "ErrorStats", "MSETable", "measure_mse", "cumulative_error",
           "cumulative_error_and_grad", "optimize_trajectory", "paper_optimizer", "to_timesteps",
           "to_sigmas", "load_trajectory", "check_trajectory", "TrajectoryError",
           "TrajectoryResult", "SOLVERS"]
