"""Exact oracle models (docs/math.md Section 4): no trained network needed.

Both models know their noised marginals in closed form under ``x = a x_0 + b z``. Called like a
k-diffusion denoiser, ``model(x, sigma)`` returns ``E[x_0 | x]`` for ``x = x_0 + sigma z``
(``a = 1``, ``b = sigma``); :meth:`posterior_mean` takes any ``(a, b)`` (VP, interpolants).
``sigma``, ``a`` and ``b`` are numbers or per-sample ``(B,)`` tensors. Arithmetic is float64;
the denoiser and score return ``x``'s dtype, ``log_prob`` float64. Everything is differentiable
in ``x`` (the samplers take vector-Jacobian products through it).
"""
import math
import numbers

import torch

from . import _validate

__all__ = ["GaussianMixture", "CurieWeiss"]


def _per_sample(v, x, name, low=None):
    """(B,) float64 from a number or a 0-d, (1,) or (B,) tensor. In eager mode the values must
    be finite and, with ``low="ge0"`` / ``"gt0"``, >= 0 / > 0 (a noise level)."""
    B = x.shape[0]
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        out = torch.full((B,), float(v), dtype=torch.float64, device=x.device)
    elif isinstance(v, torch.Tensor):
        v = v.to(device=x.device, dtype=torch.float64)
        if v.dim() == 0 or v.numel() == 1:
            out = v.reshape(1).expand(B)
        elif v.reshape(-1).shape[0] == B:
            out = v.reshape(-1)
        else:
            out = None
    else:
        out = None
    if out is None:
        raise ValueError(f"{name}: expected a number or a tensor of shape ({B},), got "
                         f"{getattr(v, 'shape', type(v).__name__)}")
    if _validate.eager():
        o = out.detach()
        if not bool(torch.isfinite(o).all()):
            raise ValueError(f"{name}: expected finite values")
        if low == "ge0" and bool((o < 0).any()):
            raise ValueError(f"{name}: expected values >= 0, got min {o.min().item():.4g}")
        if low == "gt0" and bool((o <= 0).any()):
            raise ValueError(f"{name}: expected values > 0, got min {o.min().item():.4g}")
    return out


class GaussianMixture:
    """``x_0 ~ sum_k pi_k N(mu_k, c_k^2 I)``.

    means: (K, *S) tensor (the event shape S is taken from it); weights: (K,), positive (they
    are normalized); stds: a number or (K,) positive tensor.
    Under ``x = a x_0 + b z``: ``p(x) = sum_k pi_k N(x; a mu_k, (a^2 c_k^2 + b^2) I)``.
    """

    def __init__(self, means, weights, stds):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.dim() < 2:
            raise ValueError(f"means: expected a (K, *S) tensor, got shape {tuple(means.shape)}")
        K = means.shape[0]
        weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        if weights.shape[0] != K:
            raise ValueError(f"weights: expected {K} weights (one per mean), got {weights.shape[0]}")
        if not bool((weights > 0).all()) or not bool(torch.isfinite(weights).all()):
            raise ValueError("weights: expected positive finite weights")
        stds = torch.as_tensor(stds, dtype=torch.float64).reshape(-1)
        if stds.shape[0] == 1:
            stds = stds.expand(K).clone()
        if stds.shape[0] != K:
            raise ValueError(f"stds: expected a number or {K} standard deviations, got {stds.shape[0]}")
        if not bool((stds > 0).all()):
            raise ValueError("stds: expected positive standard deviations")
        self.means = means
        self.weights = weights / weights.sum()
        self.stds = stds
        self.event_shape = tuple(means.shape[1:])
        self.dim = int(math.prod(self.event_shape))

    # --------------------------------------------------------------------------- internals
    def _check_x(self, x):
        if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x: expected a (B, *{self.event_shape}) tensor, got "
                             f"{tuple(getattr(x, 'shape', ()))}")

    def _posterior(self, x, a, b, bname="b"):
        """(log p(x), responsibilities (B, K), E[x_0 | x] flat (B, D)) in float64."""
        self._check_x(x)
        a = _per_sample(a, x, "a")[:, None]
        b = _per_sample(b, x, bname, "ge0")[:, None]
        xf = x.to(torch.float64).flatten(1)
        mu = self.means.to(x.device).flatten(1)
        c2 = (self.stds.to(x.device) ** 2)[None, :]
        v = a ** 2 * c2 + b ** 2  # (B, K)
        # |x - a mu_k|^2 = |x|^2 - 2 a x.mu_k + a^2 |mu_k|^2 (float64: the cancellation costs
        # at most log10(|x|^2 / |x - a mu|^2) of 16 digits)
        sq = ((xf * xf).sum(1, keepdim=True) - 2 * a * (xf @ mu.T) + a ** 2 * (mu * mu).sum(1)[None])
        sq = torch.clamp(sq, min=0)  # (B, K)
        D = self.dim
        logits = torch.log(self.weights.to(x.device))[None] - 0.5 * D * torch.log(2 * math.pi * v) - sq / (2 * v)
        logp = torch.logsumexp(logits, dim=1)
        r = torch.softmax(logits, dim=1)
        shrink = r * a * c2 / v  # coefficient of x
        mean = (r * (1 - a ** 2 * c2 / v)) @ mu + shrink.sum(1, keepdim=True) * xf
        return logp, r, mean, a, b

    # ------------------------------------------------------------------------------ API
    def log_prob_ab(self, x, a, b):
        """Exact log p(x) under x = a x_0 + b z (float64, shape (B,))."""
        return self._posterior(x, a, b)[0]

    def log_prob(self, x, sigma=0.0):
        """Exact log p_sigma(x) of x = x_0 + sigma z (sigma = 0: the mixture itself)."""
        return self._posterior(x, 1.0, sigma, "sigma")[0]

    def responsibilities(self, x, sigma=0.0):
        """(B, K) posterior component probabilities."""
        return self._posterior(x, 1.0, sigma, "sigma")[1]

    def posterior_mean(self, x, a, b):
        """E[x_0 | x] under x = a x_0 + b z, shaped and typed like x."""
        return self._posterior(x, a, b)[2].reshape(x.shape).to(x.dtype)

    def denoise(self, x, sigma):
        return self._posterior(x, 1.0, sigma, "sigma")[2].reshape(x.shape).to(x.dtype)

    def __call__(self, x, sigma, **extra_args):
        """k-diffusion denoiser: E[x_0 | x] for x = x_0 + sigma z (sigma: a number or (B,),
        finite and >= 0, checked in eager mode)."""
        return self.denoise(x, sigma)

    def score_ab(self, x, a, b, bname="b"):
        """grad_x log p(x) = (a E[x_0|x] - x) / b^2 under x = a x_0 + b z."""
        _, _, mean, a_, b_ = self._posterior(x, a, b, bname)
        s = (a_ * mean - x.to(torch.float64).flatten(1)) / b_ ** 2
        return s.reshape(x.shape).to(x.dtype)

    def score(self, x, sigma):
        return self.score_ab(x, 1.0, sigma, "sigma")

    def eps(self, x, a, b):
        """The exact eps-prediction (x - a E[x_0|x]) / b (for DDIM / diffusers-style models)."""
        _, _, mean, a_, b_ = self._posterior(x, a, b)
        return ((x.to(torch.float64).flatten(1) - a_ * mean) / b_).reshape(x.shape).to(x.dtype)

    def sample(self, n, generator=None, *, sigma=0.0, dtype=torch.float32, device=None):
        """n samples of x_0 (plus sigma z when sigma > 0), shape (n, *S)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn((n, self.dim), generator=generator, dtype=torch.float64)
        x = self.means.flatten(1)[k] + self.stds[k, None] * z
        if sigma:
            x = x + sigma * torch.randn((n, self.dim), generator=generator, dtype=torch.float64)
        return x.reshape(n, *self.event_shape).to(dtype=dtype, device=device)

    @classmethod
    def two_modes(cls, d, p=0.8, m=0.9, c=0.1):
        """The paper's case: modes +-m 1 in d dimensions, std c, weight p on the + mode."""
        means = torch.stack([torch.full((d,), m), torch.full((d,), -m)]).double()
        return cls(means, [p, 1 - p], c)


def _log_cosh(y):
    ay = y.abs()
    return ay + torch.log1p(torch.exp(-2 * ay)) - math.log(2.0)


class CurieWeiss:
    """Curie-Weiss spins ``x_1`` in {-1, +1}^d as a mixture of two product measures with
    magnetization +-m, ``m = tanh(beta m)``, weights ``W_+- = e^{+-hm} / (2 cosh(hm))``,
    ``h = log(p/(1-p)) / 2`` (docs/math.md Section 4). ``compute_dtype``: float64 (default) or
    float32 for the posterior (large d and many samples; the log-density stays float64)."""

    def __init__(self, d, beta, p=0.5, *, compute_dtype=torch.float64):
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1:
            raise ValueError(f"d: expected a positive int, got {d!r}")
        if not (beta > 0 and math.isfinite(beta)):
            raise ValueError(f"beta: expected a positive number, got {beta!r}")
        if not 0 < p < 1:
            raise ValueError(f"p: expected 0 < p < 1, got {p!r}")
        m = 0.9 if beta > 1 else 0.0
        for _ in range(10000):
            m_new = math.tanh(beta * m)
            if abs(m_new - m) < 1e-15:
                break
            m = m_new
        if compute_dtype not in (torch.float32, torch.float64):
            raise TypeError(f"compute_dtype: expected float32 or float64, got {compute_dtype}")
        self.compute_dtype = compute_dtype
        self.d, self.beta, self.p, self.m = int(d), float(beta), float(p), m
        self.dim = self.d
        self.event_shape = (self.d,)
        h = 0.5 * math.log(p / (1 - p))
        self.h = h
        self.w_plus = math.exp(h * m) / (2 * math.cosh(h * m))
        self.log_w = torch.tensor([math.log(self.w_plus), math.log1p(-self.w_plus)], dtype=torch.float64)

    def _check_x(self, x):
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.d:
            raise ValueError(f"x: expected a (B, {self.d}) tensor, got {tuple(getattr(x, 'shape', ()))}")

    def _posterior(self, x, a, b, with_logp=True, bname="b"):
        self._check_x(x)
        ct = torch.float64 if with_logp else self.compute_dtype
        a = _per_sample(a, x, "a")[:, None].to(ct)
        b = _per_sample(b, x, bname, "gt0")[:, None].to(ct)
        xf = x.to(ct)
        y = a * xf / b ** 2
        th = torch.tanh(y)
        m = self.m
        lp = torch.log1p(m * th)   # branch +
        lm = torch.log1p(-m * th)  # branch -
        logits = self.log_w.to(x.device)[None] + torch.stack([lp.sum(1, dtype=torch.float64),
                                                             lm.sum(1, dtype=torch.float64)], 1)
        R = torch.softmax(logits, 1).to(ct)
        mean = R[:, :1] * (th + m) / (1 + m * th) + R[:, 1:] * (th - m) / (1 - m * th)
        if not with_logp:
            return None, R, mean, a, b
        base = (-0.5 * math.log(2 * math.pi) - torch.log(b) - xf ** 2 / (2 * b ** 2)
                - a ** 2 / (2 * b ** 2) + _log_cosh(y)).sum(1)
        logp = base + torch.logsumexp(logits, 1)
        return logp, R, mean, a, b

    def log_prob_ab(self, x, a, b):
        """Exact log-density of x = a x_1 + b z (b > 0), float64 (B,)."""
        return self._posterior(x, a, b)[0]

    def log_prob(self, x, sigma):
        """Exact log p_sigma(x) for x = x_1 + sigma z, sigma > 0."""
        return self._posterior(x, 1.0, sigma, bname="sigma")[0]

    def branch_probs(self, x, a, b):
        """(B, 2) posterior probabilities of the + and - branches."""
        return self._posterior(x, a, b)[1]

    def posterior_mean(self, x, a, b):
        return self._posterior(x, a, b, with_logp=False)[2].to(x.dtype)

    def denoise(self, x, sigma):
        return self._posterior(x, 1.0, sigma, with_logp=False, bname="sigma")[2].to(x.dtype)

    def __call__(self, x, sigma, **extra_args):
        """E[x_1 | x] for x = x_1 + sigma z (sigma: a number or (B,), finite and > 0, checked in
        eager mode)."""
        return self.denoise(x, sigma)

    def score_ab(self, x, a, b, bname="b"):
        _, _, mean, a_, b_ = self._posterior(x, a, b, with_logp=False, bname=bname)
        return ((a_ * mean - x.to(mean.dtype)) / b_ ** 2).to(x.dtype)

    def score(self, x, sigma):
        return self.score_ab(x, 1.0, sigma, "sigma")

    def sample(self, n, generator=None, *, dtype=torch.float32, device=None):
        """n spin configurations (n, d): branch + with probability W_+, then i.i.d. spins with
        mean +-m."""
        branch = torch.rand(n, generator=generator, dtype=torch.float64) < self.w_plus
        mag = torch.where(branch, self.m, -self.m)[:, None]
        u = torch.rand((n, self.d), generator=generator, dtype=torch.float64)
        x = torch.where(u < (1 + mag) / 2, 1.0, -1.0)
        return x.to(dtype=dtype, device=device)
