"""Exponential multistep likelihood solver (``log_likelihood(..., solver="expint")``).

In ``t = log sigma`` the probability-flow ODE ``dx/dt = x - Dn(x, e^t)`` has a linear part that
this solver integrates exactly (data prediction, as DPM-Solver++ / UniPC):

    x(t_{n+1}) = e^{h_n} x(t_n) - int_{t_n}^{t_{n+1}} e^{t_{n+1} - tau} Dn(tau) dtau,

with ``Dn`` replaced by the Lagrange polynomial through the last ``order`` nodes (predictor,
order ``order``), then the step is redone once ``Dn_{n+1}`` is known, through ``order + 1``
nodes ending at ``t_{n+1}`` (corrector; no extra evaluation: the next predictor starts from the
corrected point but uses ``Dn`` as evaluated at the predicted one). The first steps bootstrap at
lower order (as many nodes as exist). Every integral of a Lagrange basis polynomial, with or
without the weight ``e^{t_{n+1} - tau}``, is precomputed on the host (Gauss-Legendre, float64)
from the grid alone, so the solve itself has no host synchronization.

The log-density term ``Delta = int (div Dn - D) dt`` is a quadrature over *all* nodes (each
interval by the polynomial through ``order + 1`` nodes around it), ``Delta = sum_n W_n d_n -
D (t_N - t_0)``, where ``d_n`` is node n's divergence estimate; its variance is ``sum_n W_n^2
var(d_n)``. N steps take N + 1 model evaluations (the last node is evaluated for the corrector
and for ``d_N``).

Per node, one fused :func:`fused_step` pass computes the next predicted ``x`` (the corrector of
the step just finished and the predictor of the next one are both linear in the current ``x``
and the stored ``Dn`` values, so they fold into one combination of at most ``order + 1``
outputs), the node's Hutchinson estimate ``d_n`` with its variance, and the next node's probes.

Divergence estimators (``divergence=``):

- ``"hutchinson"``: ``d_n = mean_p v_p^T J v_p`` with P fresh probes per node (``J = dDn/dx``).
- ``"subspace"``: a control variate on a subspace carried from node to node. With ``Q`` (r rows
  of length D, derived from earlier nodes only, so independent of ``v``), ``u = Q v``,
  ``M = Q J Q^T`` (r extra vector-Jacobian products, ``q_i^T J``), ``G = Q Q^T`` and an
  isotropic level ``a`` (from the previous node)::

      d = v^T J v - u^T (M - a I) u + tr((M - a I) G)

  is unbiased for ``tr J`` for any such ``Q`` and ``a`` (``E[u u^T] = G``), and exact when
  ``J - a I`` lives in the span of ``Q``. Subtracting ``a I`` keeps the isotropic part of ``J``
  (which Rademacher probes already measure without noise) out of the control variate. The next
  ``Q`` is a subspace iteration on ``J - a I``: Gram-Schmidt of ``(J - a I)^T`` applied to the
  rows of ``Q`` and then to the probes, the first ``rank`` kept. It is used only at nodes with
  ``sigma >= cv_sigma`` (where the Jacobian is far from isotropic); the subspace starts being
  built a few nodes before. ``info["vjps"]`` counts all vector-Jacobian products.
"""
import math

import torch

from ._driver import _Noise, denoise_with_vjps, draw_probes
from ._quadrature import lagrange_integrals, quadrature_weights
from .step import fused_step, make_coef

__all__ = ["ORDERS", "DIVERGENCES", "expint_log_likelihood", "expint_plan", "quadrature_weights"]

ORDERS = (1, 2, 3, 4)
DIVERGENCES = ("hutchinson", "subspace")
def expint_plan(ts, order, corrector=True):
    """The solver's constants from the grid ``ts`` (N + 1 increasing log-levels).

    Returns ``(ax, combos, W)``: pass n (node n's evaluation done) sets
    ``x <- ax[n] x + sum_j combos[n][j] Dn_j`` (node index j -> coefficient; pass N applies only
    the last corrector, ax = 1), and ``W[n]`` is node n's quadrature weight for Delta."""
    ts = [float(t) for t in ts]
    N = len(ts) - 1
    pred, corr = [], [None]
    for n in range(N):
        nodes = list(range(max(0, n - order + 1), n + 1))
        c = lagrange_integrals([ts[j] for j in nodes], ts[n], ts[n + 1], end=ts[n + 1])
        pred.append({j: -cj for j, cj in zip(nodes, c)})
    for n in range(1, N + 1):
        nodes = list(range(max(0, n - order), n + 1))
        c = lagrange_integrals([ts[j] for j in nodes], ts[n - 1], ts[n], end=ts[n])
        corr.append({j: -cj for j, cj in zip(nodes, c)})
    ax, combos = [], []
    for n in range(N + 1):
        delta = {}  # corrected - predicted x at node n
        if corrector and n >= 1:
            for j, c in corr[n].items():
                delta[j] = delta.get(j, 0.0) + c
            for j, c in pred[n - 1].items():
                delta[j] = delta.get(j, 0.0) - c
        if n == N:
            ax.append(1.0)
            combos.append(delta)
            continue
        eh = math.exp(ts[n + 1] - ts[n])
        comb = {j: eh * c for j, c in delta.items()}
        for j, c in pred[n].items():
            comb[j] = comb.get(j, 0.0) + c
        ax.append(eh)
        combos.append(comb)
    return ax, combos, quadrature_weights(ts, order + 1)


def _gram_schmidt(R, rank, eps):
    """Per sample, orthonormal rows: modified Gram-Schmidt of ``R`` ((m, B, D)) in the given
    order, the first ``rank`` kept (callers put the carried directions first, so a full
    subspace is a subspace iteration and the probes' directions fill it while it grows). Rows
    that vanish (norm <= eps) stay zero. A fixed order, no selection by size: nearby inputs
    give nearby subspaces on every backend. No host synchronization."""
    rows = []
    for i in range(min(R.shape[0], rank)):
        r = R[i]
        for q in rows:
            r = r - (r * q).sum(1, keepdim=True) * q
        nrm = r.norm(dim=1, keepdim=True)
        rows.append(torch.where(nrm > eps, r / nrm.clamp_min(eps), torch.zeros_like(r)))
    return torch.stack(rows, 1)  # (B, min(m, rank), D)


def expint_log_likelihood(model, x, sigma_min, sigma_max, *, steps, order, probes, seed,
                          extra_args, probe_dist, prior_fn, divergence, cv_rank, cv_sigma,
                          backend, corrector=True):
    """The solve behind ``log_likelihood(solver="expint")`` (arguments already checked).
    Returns ``(logp, info)``; ``prior_fn(x_T, sigma_max)`` gives the prior per sample."""
    x = x.detach().clone().contiguous()
    B, D = x.shape[0], math.prod(x.shape[1:])
    P, N = probes, steps
    if B == 0:  # nothing to evaluate
        empty = torch.zeros(0, dtype=torch.float64, device=x.device)
        return empty, {"stderr": empty, "nfe": 0, "vjps": 0, "steps": N, "solver": "expint",
                       "order": order, "divergence": divergence, "x_T": x, "delta": empty,
                       "sigmas": torch.tensor([sigma_min, sigma_max], dtype=torch.float64), "cv_nodes": 0}
    shape = x.shape
    dev = x.device
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    t0, t1 = math.log(sigma_min), math.log(sigma_max)
    ts = [t0 + (t1 - t0) * n / N for n in range(N + 1)]
    ax, combos, W = expint_plan(ts, order, corrector)
    cv = divergence == "subspace"
    cv_on = [cv and math.exp(t) >= cv_sigma for t in ts]
    first_on = next((n for n, on in enumerate(cv_on) if on), None)
    # build the subspace from ceil(rank / P) nodes before the first one that uses it
    warm = first_on - max(1, -(-cv_rank // P)) if first_on is not None else N + 1

    noise = _Noise(seed, x)
    v = draw_probes(x, P, noise.seed, noise.probe_offset(0, P), probe_dist, backend)
    v_next = torch.empty_like(v)
    delta = torch.full((B,), -float(D) * (t1 - t0), dtype=torch.float64, device=dev)
    var = torch.zeros_like(delta)
    dens = {}
    Q, a = None, None
    nfe = vjps = 0
    eps = 1e-30 if cdt == torch.float64 else 1e-20
    for n in range(N + 1):
        sigma = x.new_full((B,), math.exp(ts[n]))
        use_cv = cv_on[n] and Q is not None
        pr = torch.cat([v, Q.transpose(0, 1).reshape(-1, *shape).to(x.dtype)]) if use_cv else v
        den, w = denoise_with_vjps(model, x, sigma, extra_args, pr)
        nfe += 1
        vjps += pr.shape[0]
        dens[n] = den
        for j in [j for j in dens if j < n - order]:
            del dens[j]
        idx = sorted(combos[n])
        outs = [dens[j] for j in idx]
        am = [combos[n][j] for j in idx]
        # node n's Hutchinson estimate goes through the slot of Dn_n (cw = 1, the rest 0)
        cw = [1.0 if j == n else 0.0 for j in idx]
        if n not in idx:
            outs, am, cw = outs + [den], am + [0.0], cw + [1.0]
        wv = w[:P]
        vj = [wv] * len(outs)
        c0 = 0.0
        if use_cv:
            r = Q.shape[1]
            Qf = Q.to(cdt)
            WQ = w[P:].reshape(r, B, D).transpose(0, 1).to(cdt)  # (B, r, D): q_i^T J
            M = torch.einsum("bid,bjd->bij", WQ, Qf)
            G = torch.einsum("bid,bjd->bij", Qf, Qf)
            A = M - a.to(cdt)[:, None, None] * torch.eye(r, dtype=cdt, device=dev)
            u = torch.einsum("bid,pbd->pbi", Qf, v.reshape(P, B, D).to(cdt))  # (P, B, r)
            y = torch.einsum("bid,pbi->pbd", Qf, torch.einsum("bij,pbj->pbi", A, u))
            outs, am, cw = outs + [den], am + [0.0], cw + [-1.0]
            vj = vj + [y.reshape(P, *shape).to(x.dtype)]
            c0 = (A * G.transpose(1, 2)).sum((1, 2)).double()  # tr(A G), (B,)
            trM = torch.diagonal(M, dim1=1, dim2=2).sum(1).double()
        d = torch.zeros(B, dtype=torch.float64, device=dev)
        dv = torch.zeros_like(d)
        last = n == N
        coef = make_coef(B, ax=ax[n], am=am, cw=cw, c0=c0, device=dev, dtype=cdt)
        fused_step(x, outs, coef, logp=d, logp_var=dv, probes=v, vjps=vj,
                   probes_out=None if last else v_next, seed=noise.seed,
                   probe_offset=noise.probe_offset(n + 1, P), probe_dist=probe_dist,
                   backend=backend)
        delta.add_(d, alpha=W[n])
        var.add_(dv, alpha=W[n] ** 2)
        if cv and warm <= n < N and any(cv_on[n + 1:]):
            # next subspace: (J - a I)^T applied to Q's rows (if used) and to the probes
            a_here = a if a is not None else torch.ones(B, dtype=torch.float64, device=dev)
            ac = a_here.to(cdt)[None, :, None]
            parts = []
            if use_cv:
                parts.append((WQ - ac.transpose(0, 1) * Qf).transpose(0, 1))  # (r, B, D)
            elif Q is not None:
                parts.append(Q.transpose(0, 1).to(cdt))
            parts.append(wv.reshape(P, B, D).to(cdt) - ac * v.reshape(P, B, D).to(cdt))
            Q = _gram_schmidt(torch.cat(parts), cv_rank, eps)
        # isotropic level for the next node: (d - tr M) / (D - r) from this node
        if use_cv:
            a = (d - trM) / max(D - r, 1)
        else:
            a = d / max(D, 1)
        v, v_next = v_next, v
    logp = prior_fn(x, sigma_max) - delta
    stderr = torch.sqrt(var) if P > 1 else torch.full_like(var, float("nan"))
    info = {"stderr": stderr, "nfe": nfe, "vjps": vjps, "steps": N, "solver": "expint",
            "order": order, "divergence": divergence, "x_T": x, "delta": delta,
            "sigmas": torch.tensor(ts, dtype=torch.float64).exp(),
            "cv_nodes": sum(1 for n in range(N + 1) if cv_on[n])}
    return logp, info
