"""Priors at ``sigma_max`` for :func:`log_likelihood`: ``log p_{sigma_max}(x_T)`` per sample.

- ``"standard"``: ``log N(x_T; 0, sigma_max^2 I)`` (k-diffusion's). It ignores the data's spread:
  the noised data have covariance ``C + sigma_max^2 I``, so with data of norm comparable to
  ``sigma_max`` it is off by O(|x_0| |x_T| / sigma_max^2) nats per sample.
- ``"matched"`` (:class:`MatchedPrior`): ``log N(x_T; mu, (sigma_max^2 + v) I)`` with the data's
  mean ``mu`` (per dimension, or one number) and variance ``v`` (the mean per-dimension variance,
  or per dimension with ``diagonal=True``), given or estimated from an iterable of batches
  (:meth:`MatchedPrior.from_data`). Exact for Gaussian data with isotropic (diagonal) covariance.
- a callable ``prior(x_T) -> (B,)``.
"""
import math

import torch

from .samplers import prior_logp

__all__ = ["PRIORS", "MatchedPrior", "resolve_prior"]

PRIORS = ("standard", "matched")


class MatchedPrior:
    """``log N(x_T; mu, (sigma_max^2 + v) I)``; ``mean``: a number or a tensor of the event shape
    (or broadcastable to it); ``var``: a number >= 0 or a tensor like ``mean`` (per dimension)."""

    def __init__(self, mean, var):
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.var = torch.as_tensor(var, dtype=torch.float64)
        if not bool(torch.isfinite(self.mean).all()):
            raise ValueError("prior_data: expected a finite mean")
        if not bool(torch.isfinite(self.var).all()) or not bool((self.var >= 0).all()):
            raise ValueError("prior_data: expected a finite variance >= 0")

    @classmethod
    def from_data(cls, batches, diagonal=False):
        """Mean and variance of an iterable of (B, *S) batches (or one tensor), in float64
        (two accumulated moments per dimension); ``diagonal=False`` keeps one variance, the
        mean over dimensions. A tuple passed as ``prior_data`` is read as ``(mean, var)``."""
        if isinstance(batches, torch.Tensor):
            batches = [batches]
        n, s1, s2 = 0, None, None
        for xb in batches:
            if not isinstance(xb, torch.Tensor) or xb.dim() < 1:
                raise TypeError("prior_data: expected an iterable of (B, *S) tensors")
            xb = xb.detach().double()
            s1 = xb.sum(0) if s1 is None else s1 + xb.sum(0)
            s2 = (xb ** 2).sum(0) if s2 is None else s2 + (xb ** 2).sum(0)
            n += xb.shape[0]
        if n < 2:
            raise ValueError(f"prior_data: expected at least 2 samples, got {n}")
        mean = s1 / n
        var = ((s2 - n * mean ** 2) / (n - 1)).clamp_min(0.0)
        return cls(mean, var if diagonal else var.mean())

    def __call__(self, x, sigma_max):
        B = x.shape[0]
        xf = x.detach().double().reshape(B, -1)
        D = xf.shape[1]
        mean = self.mean.to(x.device).expand(x.shape[1:]).reshape(-1)
        s2 = (sigma_max ** 2 + self.var.to(x.device)).expand(x.shape[1:]).reshape(-1)
        return (-0.5 * ((xf - mean) ** 2 / s2).sum(1) - 0.5 * torch.log(s2).sum()
                - 0.5 * D * math.log(2 * math.pi))


def resolve_prior(prior, prior_data):
    """A function ``(x_T, sigma_max) -> (B,) float64`` from the ``prior`` / ``prior_data``
    arguments of :func:`log_likelihood`."""
    if prior is None or (isinstance(prior, str) and prior == "standard"):
        if prior_data is not None:
            raise ValueError("prior_data: only used with prior='matched'")
        return prior_logp
    if isinstance(prior, str):
        if prior != "matched":
            raise ValueError(f"prior: expected one of {PRIORS} or a callable, got {prior!r}")
        if prior_data is None:
            raise ValueError("prior_data: prior='matched' needs (mean, var), a MatchedPrior or an "
                             "iterable of data batches")
        if isinstance(prior_data, MatchedPrior):
            return prior_data
        if isinstance(prior_data, tuple):  # (mean, var); any other iterable holds batches
            if len(prior_data) != 2:
                raise ValueError(f"prior_data: expected a (mean, var) tuple, got {len(prior_data)} items")
            return MatchedPrior(*prior_data)
        return MatchedPrior.from_data(prior_data)
    if prior_data is not None:
        raise ValueError("prior_data: only used with prior='matched'")
    if not callable(prior):
        raise TypeError(f"prior: expected one of {PRIORS} or a callable, got {type(prior).__name__}")

    def call(x, sigma_max):
        return torch.as_tensor(prior(x), dtype=torch.float64, device=x.device).reshape(x.shape[0])
    return call
