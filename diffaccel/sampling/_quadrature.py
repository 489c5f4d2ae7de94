"""Lagrange quadrature on the host (Gauss-Legendre, float64) from a grid of log noise levels
alone: the likelihood solver's (:mod:`.expint`) and the multistep samplers' log-density
(:mod:`.logp_quad`) constants."""
import numpy as np

__all__ = ["lagrange_integrals", "quadrature_weights"]

_GL = np.polynomial.legendre.leggauss(32)


def lagrange_integrals(nodes, a, b, end=None):
    """int_a^b w(tau) l_j(tau) dtau for the Lagrange basis l_j on ``nodes`` (float64), with
    ``w = e^{end - tau}`` (``end`` given) or 1."""
    g, gw = _GL
    tau = 0.5 * (b - a) * g + 0.5 * (a + b)
    w = 0.5 * (b - a) * gw * (np.exp(end - tau) if end is not None else 1.0)
    out = []
    for j, sj in enumerate(nodes):
        lj = np.ones_like(tau)
        for m, sm in enumerate(nodes):
            if m != j:
                lj = lj * (tau - sm) / (sj - sm)
        out.append(float((w * lj).sum()))
    return out


def quadrature_weights(ts, m):
    """W[n]: node n's weight in ``int_{ts[0]}^{ts[-1]} f dt ~ sum_n W_n f(ts[n])``, each interval
    [ts[n], ts[n+1]] integrated with the Lagrange polynomial through ``m`` consecutive nodes
    around it (fewer when there are fewer). ``ts`` monotone (either direction), float64."""
    ts = [float(t) for t in ts]
    N = len(ts) - 1
    m = min(m, N + 1)
    W = [0.0] * (N + 1)
    for n in range(N):
        s = min(max(0, n - (m - 1) // 2), N + 1 - m)
        nodes = list(range(s, s + m))
        for j, c in zip(nodes, lagrange_integrals([ts[j] for j in nodes], ts[n], ts[n + 1])):
            W[j] += c
    return W
