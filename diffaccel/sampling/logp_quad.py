"""The log-density a multistep ODE sampler returns with its samples, integrated with the
likelihood solver's exponential / Lagrange machinery (:mod:`.expint`).

In ``t = log sigma`` the probability flow ``dx/dt = x - Dn(x, e^t)`` carries the log-density by
``d log p_t(x_t) / dt = div Dn - D``. The target is ``log p_0`` of the *returned* sample, and a
sampler's x is not on the exact flow: each step adds its local error ``e_i``. So the estimate has
two parts, both linear in quantities every step's fused pass already has:

1. the flow integral ``sum_i W_i (div Dn_i - D)`` over the evaluation nodes
   ``t_0 > t_1 > ... > t_{n-1}`` (:func:`flow_weights`): each interval by the Lagrange polynomial
   through ``QUAD_NODES`` nodes around it (:func:`._quadrature.quadrature_weights`); the last
   interval to ``sigma = 0`` (``t = -inf``) by ``(D - div Dn_{n-1}) / 2``: for a smooth density
   ``D - div Dn = -sigma^2 Lap log p_sigma`` is ``c e^{2t}`` to leading order, whose integral
   from ``-inf`` is half its value at the end (error O(sigma^4)); without a final zero the last
   interval extrapolates the polynomial through the last nodes;
2. the sampler's own error: ``log p(x_{i+1}) - log p(x*_{i+1}) ~ s_{i+1} . e_i``, with
   ``x*_{i+1}`` the exact flow from ``x_i`` and ``s = (Dn - x) / sigma^2`` the score at the next
   evaluation (no extra model call). ``e_i`` is estimated by the exponential corrector
   (:func:`corrector`): ``e_i ~ x_{i+1} - (e^h x_i - sum_j c_j Dn_j)`` with ``c_j`` the integrals
   of the Lagrange basis through the ``CORR_NODES`` nodes ending at ``t_{i+1}``, weighted by
   ``e^{t_{i+1} - tau}`` (the corrector of :func:`.expint.expint_plan`). What is left is the
   corrector's own local error, and the first neglected term of the expansion,
   ``|e_i|^2 / (2 (sigma^2 + var))``. The last step (to sigma = 0) is not corrected (there is no
   score at its end).
"""
import math

from ._quadrature import lagrange_integrals, quadrature_weights

__all__ = ["QUAD_NODES", "CORR_NODES", "flow_weights", "corrector"]

QUAD_NODES = 5  # quartic per interval, as expint's order-4 quadrature of Delta
CORR_NODES = 4  # cubic corrector (order 4)


def flow_weights(levels, m=QUAD_NODES):
    """W[i] (i < n): evaluation i's weight on ``div Dn_i - D`` in ``log p``, for ``levels`` =
    sigma_0 > ... > sigma_n (sigma_n may be 0; the sampler evaluates sigma_0 .. sigma_{n-1})."""
    lv = [float(s) for s in levels]
    n = len(lv) - 1
    ts = [math.log(s) for s in lv[:n]]
    W = quadrature_weights(ts, m)
    if lv[n] == 0:
        W[n - 1] -= 0.5
    else:
        nodes = list(range(max(0, n - m), n))
        for j, c in zip(nodes, lagrange_integrals([ts[j] for j in nodes], ts[n - 1],
                                                   math.log(lv[n]))):
            W[j] += c
    return W


def corrector(levels, i, q=CORR_NODES):
    """The exponential corrector of the step sigma_{i-1} -> sigma_i (i >= 1, sigma_i > 0):
    ``(e^h, {j: c_j})`` with ``x*_i ~ e^h x_{i-1} - sum_j c_j Dn_j``, h = t_i - t_{i-1}, nodes
    ``j = max(0, i + 1 - q) .. i``."""
    ts = {j: math.log(float(levels[j])) for j in range(max(0, i + 1 - q), i + 1)}
    nodes = sorted(ts)
    c = lagrange_integrals([ts[j] for j in nodes], ts[i - 1], ts[i], end=ts[i])
    return math.exp(ts[i] - ts[i - 1]), dict(zip(nodes, c))
