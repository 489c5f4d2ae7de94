"""Priors at ``sigma_max`` for :func:`log_likelihood`: ``log p_{sigma_max}(x_T)`` per sample.

- ``"standard"``: ``log N(x_T; 0, sigma_max^2 I)`` (k-diffusion's). It ignores the data's spread:
  the noised data have covariance ``C + sigma_max^2 I``, so with data of norm comparable to
  ``sigma_max`` it is off by O(|x_0| |x_T| / sigma_max^2) nats per sample.
- ``"matched"`` (:class:`MatchedPrior`): ``log N(x_T; mu, (sigma_max^2 + v) I)`` with the data's
  mean ``mu`` (per dimension, or one number) and variance ``v`` (the mean per-dimension variance,
  or per dimension with ``diagonal=True``), given or estimated from an iterable of batches
  (:meth:`MatchedPrior.from_data`). Exact for Gaussian data with isotropic (diagonal) covariance.
- ``"empirical"`` (:class:`EmpiricalPrior`): ``log (1/n) sum_i N(x_T; x_i, sigma_max^2 I)`` over
  n data points ``x_i``. Since ``p_{sigma_max} = p_data * N(0, sigma_max^2 I)``, the average is an
  unbiased estimate of ``p_{sigma_max}(x_T)`` for any data distribution (mixtures, images), not
  only a Gaussian one; its log is biased low by about ``(1 / ESS - 1 / n) / 2`` nats (Jensen),
  ESS the weights' effective sample size (:meth:`EmpiricalPrior.effective_samples`), and its
  noise falls like ``1 / sqrt(ESS)``.
- a callable ``prior(x_T) -> (B,)``.
"""
import math

import torch

from ._driver import prior_logp

__all__ = ["PRIORS", "MatchedPrior", "EmpiricalPrior", "resolve_prior"]

PRIORS = ("standard", "matched", "empirical")


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


def _batches(batches):
    """The (B, *S) tensors of ``prior_data`` (one tensor or an iterable of them)."""
    if isinstance(batches, torch.Tensor):
        batches = [batches]
    for xb in batches:
        if not isinstance(xb, torch.Tensor) or xb.dim() < 1:
            raise TypeError("prior_data: expected an iterable of (B, *S) tensors")
        yield xb.detach()


class EmpiricalPrior:
    """``log (1/n) sum_i N(x_T; x_i, sigma_max^2 I)``: the noised data's density at sigma_max
    estimated from n data points (a tensor (n, *S) or an iterable of such batches; kept on the
    CPU as float32, or float64 when given so).

    The log-weights ``l_i = -|x_T - x_i|^2 / (2 sigma_max^2)`` are summed in float64 with a
    log-sum-exp, over chunks of ``chunk`` points (memory B x chunk). Reliable when the weights
    are spread over many points (``sigma_max`` large against the data's spread, as at the end
    of a diffusion schedule); :meth:`effective_samples` says how many count."""

    def __init__(self, data, chunk=4096):
        parts = [xb.flatten(1) if xb.dim() > 1 else xb[:, None] for xb in _batches(data)]
        if not parts or sum(p.shape[0] for p in parts) < 1:
            raise ValueError("prior_data: expected at least 1 data point for prior='empirical'")
        if len({p.shape[1] for p in parts}) > 1:
            raise ValueError("prior_data: the batches' sample shapes differ")
        dt = torch.float64 if all(p.dtype == torch.float64 for p in parts) else torch.float32
        self.data = torch.cat([p.to("cpu", dt) for p in parts])
        if not bool(torch.isfinite(self.data).all()):
            raise ValueError("prior_data: expected finite data")
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk: expected a positive int, got {chunk!r}")
        self.chunk = chunk
        self.sq = (self.data.double() ** 2).sum(1)

    def _log_weights(self, x, sigma_max):
        """Per chunk of data points: (B, m) float64 log-weights ``-|x - x_i|^2 / (2 s^2)``."""
        B = x.shape[0]
        xf = x.detach().double().reshape(B, -1)
        if xf.shape[1] != self.data.shape[1]:
            raise ValueError(f"x: expected samples of {self.data.shape[1]} values (the prior's "
                             f"data), got {xf.shape[1]}")
        xsq = (xf ** 2).sum(1, keepdim=True)
        for i in range(0, self.data.shape[0], self.chunk):
            d = self.data[i:i + self.chunk].to(x.device, torch.float64)
            sq = (xsq - 2 * xf @ d.T + self.sq[i:i + self.chunk].to(x.device)[None]).clamp_min(0)
            yield -sq / (2 * sigma_max ** 2)

    def __call__(self, x, sigma_max):
        n, D = self.data.shape
        lse = torch.logsumexp(torch.stack([torch.logsumexp(lw, 1) for lw in self._log_weights(x, sigma_max)]), 0)
        return lse - math.log(n) - 0.5 * D * math.log(2 * math.pi * sigma_max ** 2)

    def effective_samples(self, x, sigma_max):
        """(B,) ``(sum_i w_i)^2 / sum_i w_i^2``: how many data points carry the estimate at x."""
        l1, l2 = zip(*[(torch.logsumexp(lw, 1), torch.logsumexp(2 * lw, 1))
                       for lw in self._log_weights(x, sigma_max)])
        return torch.exp(2 * torch.logsumexp(torch.stack(l1), 0) - torch.logsumexp(torch.stack(l2), 0))


def resolve_prior(prior, prior_data):
    """A function ``(x_T, sigma_max) -> (B,) float64`` from the ``prior`` / ``prior_data``
    arguments of :func:`log_likelihood`."""
    if prior is None or (isinstance(prior, str) and prior == "standard"):
        if prior_data is not None:
            raise ValueError("prior_data: only used with prior='matched' or 'empirical'")
        return prior_logp
    if isinstance(prior, str) and prior == "empirical":
        if prior_data is None:
            raise ValueError("prior_data: prior='empirical' needs data: an EmpiricalPrior, a "
                             "(n, *S) tensor or an iterable of batches")
        return prior_data if isinstance(prior_data, EmpiricalPrior) else EmpiricalPrior(prior_data)
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
        raise ValueError("prior_data: only used with prior='matched' or 'empirical'")
    if not callable(prior):
        raise TypeError(f"prior: expected one of {PRIORS} or a callable, got {type(prior).__name__}")

    def call(x, sigma_max):
        return torch.as_tensor(prior(x), dtype=torch.float64, device=x.device).reshape(x.shape[0])
    return call
