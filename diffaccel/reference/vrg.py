"""Variance-Reduction Guidance, docs/math.md Section 5, in plain PyTorch (float64, autograd).

Trajectories are ``abar`` tensors ``(K, N)``: ``abar[:, 0]`` is the least noisy level
(``abar_1`` of docs/math.md Section 5), ``abar[:, N-1]`` the level where sampling starts; the sampler's last
step goes to ``abar_0 = 1`` (the clean sample). Column ``p`` (0-based) is level ``p + 1``.

MSE interpolation: piecewise linear in ``abar`` on an increasing grid, exact at grid points,
constant beyond the grid's ends (clamped; ``diffaccel.vrg.cumulative_error(outside="raise")``
refuses such inputs instead). On the interval ``[g_j, g_{j+1})`` the slope is that interval's,
so at an interior grid point the derivative is the right-hand one.

The compiled kernels use closed forms in ``s = sqrt((1 - abar) / abar)``; this file derives the
same numbers differently (DPM-Solver-2M through the generic error-propagation recursion in ``x``
coordinates), so the tests compare two derivations.
"""
import torch

SOLVERS = ("ddim", "dpm2m")


# ---------------------------------------------------------------------------- error moments

def error_moments(pred, target, bins, num_bins):
    """(num_bins, 3) float64: element count, sum e, sum e^2 per bin, e = pred - target.

    ``e`` is formed in the inputs' precision promoted to float32 (float64 inputs stay float64),
    then summed in float64."""
    wide = torch.float64 if torch.float64 in (pred.dtype, target.dtype) else torch.float32
    e = (pred.to(wide) - target.to(wide)).reshape(pred.shape[0], -1).double()
    s1 = e.sum(1)
    s2 = (e * e).sum(1)
    n = torch.full_like(s1, float(e.shape[1]))
    out = torch.zeros(num_bins, 3, dtype=torch.float64, device=pred.device)
    return out.index_add_(0, bins.to(torch.int64), torch.stack([n, s1, s2], 1))


def error_moments_loop(pred, target, bins, num_bins):
    """The same with an explicit float64 loop over samples (the tests' oracle)."""
    out = torch.zeros(num_bins, 3, dtype=torch.float64)
    for b in range(pred.shape[0]):
        e = pred[b].double().cpu().flatten() - target[b].double().cpu().flatten()
        j = int(bins[b])
        out[j, 0] += e.numel()
        out[j, 1] += e.sum()
        out[j, 2] += (e * e).sum()
    return out


# ---------------------------------------------------------------------------- interpolation

def interp_mse(abar, grid, mse):
    """MSE(abar), linear on the increasing ``grid`` and clamped outside it (differentiable)."""
    M = grid.shape[0]
    j = (torch.searchsorted(grid, abar.detach().contiguous(), right=True) - 1).clamp(0, M - 2)
    g0, g1 = grid[j], grid[j + 1]
    t = (abar - g0) / (g1 - g0)
    inside = (1 - t) * mse[j] + t * mse[j + 1]  # exact at both grid points of the interval
    return torch.where(abar < grid[0], mse[0], torch.where(abar > grid[-1], mse[-1], inside))


# ---------------------------------------------------------------------------- closed form (DDIM)

def ddim_cpe(abar, grid, mse):
    """docs/math.md Section 5 literally: sum_i (sqrt(1 - abar_i) - sqrt(alpha_i - abar_i))^2
    MSE(abar_i) / abar_i with alpha_1 = abar_1, alpha_i = abar_i / abar_{i-1}."""
    prev = torch.cat([torch.ones_like(abar[..., :1]), abar[..., :-1]], -1)
    # sqrt(alpha_i - abar_i) written as sqrt(abar_i) sqrt((1 - abar_{i-1}) / abar_{i-1}): the
    # same number, and autograd never meets sqrt(0) (alpha_1 - abar_1 = 0) with abar in it.
    root = torch.sqrt(abar) * torch.sqrt((1 - prev) / prev)
    coef = (torch.sqrt(1 - abar) - root) ** 2
    return (coef * interp_mse(abar, grid, mse) / abar).sum(-1)


# ---------------------------------------------------------------------------- recursion

def solver_coefficients(abar, solver):
    """Update coefficients of a sampler linear in eps-predictions, in ``x`` coordinates.

    Step ``p`` (0-based, from level p to p - 1, level -1 being abar = 1) is
    ``x_{p-1} = a[:, p] x_p + b[:, p, 0] eps_p + b[:, p, 1] eps_{p+1}``.

    - ddim (= DPM-Solver-1): ``a = alpha_{p-1} / alpha_p``,
      ``b0 = sigma_{p-1} - alpha_{p-1} sigma_p / alpha_p`` (``alpha = sqrt(abar)``,
      ``sigma = sqrt(1 - abar)``), ``b1 = 0``.
    - dpm2m (DPM-Solver-2 multistep, eps-prediction, solver_type "dpmsolver"): with
      ``lambda = log(alpha / sigma)``, ``h_p = lambda_{p-1} - lambda_p``, ``r_p = h_{p+1} / h_p``,
      ``c_p = 1 / (2 r_p)``: ``b0 = B_p (1 + c_p)``, ``b1 = -B_p c_p`` with ``B_p`` the DDIM
      coefficient above. The first step (p = N-1, no history) and the last one (p = 0, onto
      abar = 1 where lambda is infinite) are first order (c_p = 0).
    """
    K, N = abar.shape
    alpha, sigma = torch.sqrt(abar), torch.sqrt(1 - abar)
    one, zero = torch.ones_like(abar[:, :1]), torch.zeros_like(abar[:, :1])
    alpha_prev = torch.cat([one, alpha[:, :-1]], 1)
    sigma_prev = torch.cat([zero, sigma[:, :-1]], 1)
    a = alpha_prev / alpha
    B = sigma_prev - alpha_prev * sigma / alpha
    if solver == "ddim":
        return a, torch.stack([B, torch.zeros_like(B)], -1)
    if solver != "dpm2m":
        raise ValueError(f"solver: expected one of {SOLVERS}, got {solver!r}")
    lam = torch.log(alpha) - torch.log(sigma)
    c = torch.zeros_like(abar)
    if N >= 3:
        h = lam[:, :-1] - lam[:, 1:]              # h[:, p - 1] = lambda_{p-1} - lambda_p, p >= 1
        # order-2 steps p = 1 .. N-2: c_p = h_p / (2 h_{p+1})
        c[:, 1:N - 1] = h[:, 0:N - 2] / (2 * h[:, 1:N - 1])
    return a, torch.stack([B * (1 + c), -B * c], -1)


def error_weights(a, b):
    """Weights ``W`` (K, N) with ``delta x_out = sum_j W_j e_j`` for step errors ``e_j`` added to
    the eps-prediction at level j, by one backward recursion over the update coefficients:
    ``G_0 = 1``, ``G_{p+1} = G_p a_p`` (G_p = d x_out / d x_{p-1}),
    ``W_j = sum_k G_{j-k} b[j-k, k]``."""
    K, N = a.shape
    G = [torch.ones_like(a[:, 0])]
    for p in range(N - 1):
        G.append(G[-1] * a[:, p])
    W = []
    for j in range(N):
        w = G[j] * b[:, j, 0]
        if j >= 1:
            w = w + G[j - 1] * b[:, j - 1, 1]
        W.append(w)
    return torch.stack(W, 1)


def cumulative_error(abar, grid, mse, solver="ddim"):
    """cpe (K,) of trajectories ``abar`` (K, N): the DDIM closed form for ``ddim``, the
    recursion ``sum_j W_j^2 MSE(abar_j)`` for the other solvers. Differentiable in abar."""
    if solver == "ddim":
        return ddim_cpe(abar, grid, mse)
    W = error_weights(*solver_coefficients(abar, solver))
    return (W * W * interp_mse(abar, grid, mse)).sum(-1)
