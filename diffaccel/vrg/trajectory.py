"""Sampling-trajectory optimization by cumulative prediction error (docs/math.md Section 5).

A trajectory is ``abar`` ``(N,)`` or a batch ``(K, N)`` of candidates, least noisy level first:
``1 > abar_1 > ... > abar_N > 0``; sampling starts at ``abar_N`` and the last step lands on
``abar_0 = 1``. Solvers (all linear in the eps-predictions, errors propagated as independent):

- ``"ddim"`` (= DPM-Solver-1, aliases ``"dpm1"``, ``"dpm-solver-1"``):
  ``cpe = sum_i (sqrt(1 - abar_i) - sqrt(alpha_i - abar_i))^2 MSE(abar_i) / abar_i``.
- ``"dpm2m"`` (DPM-Solver-2 multistep with eps-prediction, aliases ``"dpm-solver-2m"``,
  ``"dpmsolver2m"``): in ``y = x / sqrt(abar)`` coordinates, with ``s = sqrt((1 - abar)/abar)``
  and the half log-SNR step ``h_i = log(s_i / s_{i-1})`` (step i from level i to i-1):
  ``y_{i-1} = y_i - (s_i - s_{i-1}) [(1 + c_i) eps_i - c_i eps_{i+1}]``, ``c_i = h_i / (2 h_{i+1})``
  (DPM-Solver's ``0.5 (sigma_t phi_1) D1_0`` with ``r_0 = h_{i+1} / h_i``); the first step (no
  history) and the last (onto abar = 1, ``h = inf``) are first order. The error weights follow
  from one backward recursion (``diffaccel.reference.vrg.error_weights``),
  ``W_j = -(s_j - s_{j-1})(1 + c_j) + (s_{j-1} - s_{j-2}) c_{j-1}``, ``cpe = sum W_j^2 MSE_j``.

MSE beyond the table's range is the end value (clamped); ``outside="raise"`` refuses it.
Note that cpe models prediction error only, not discretization error: minimized without a trust
region (``lp=None``) it favours trajectories that bunch up at high noise, where the eps-prediction
is easy. The paper's trust region ``lp`` (0.01) keeps each ``alpha_i`` near the start.
"""
import math
import numbers
import time
from typing import NamedTuple

import torch

from .. import backends
from ..library import op
from ..reference import vrg as _ref
from .table import MSETable

SOLVERS = _ref.SOLVERS
_ALIASES = {"ddim": "ddim", "dpm1": "ddim", "dpm-solver-1": "ddim", "dpmsolver1": "ddim",
            "dpm2m": "dpm2m", "dpm-solver-2m": "dpm2m", "dpmsolver2m": "dpm2m",
            "dpm-solver-2": "dpm2m"}


class TrajectoryError(ValueError):
    """A trajectory is not ``0 < abar_N < ... < abar_1 < 1`` (or outside the table's range)."""


def solver_code(solver):
    key = _ALIASES.get(str(solver).lower()) if isinstance(solver, str) else None
    if key is None:
        raise ValueError(f"solver: expected one of {sorted(_ALIASES)}, got {solver!r}")
    return key, SOLVERS.index(key)


def _table_of(table):
    if isinstance(table, MSETable):
        return table
    if isinstance(table, (tuple, list)) and len(table) == 2:
        return MSETable(*table)
    raise TypeError(f"table: expected an MSETable or an (abar, mse) pair, got {type(table).__name__}")


def check_trajectory(abar, name="abar", table=None, outside="clamp"):
    """(K, N) float64 view of ``abar`` after checking ``0 < abar_N < ... < abar_1 < 1``."""
    if not isinstance(abar, torch.Tensor):
        try:
            abar = torch.as_tensor(abar, dtype=torch.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{name}: expected a tensor of shape (N,) or (K, N)") from None
    if not abar.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {abar.dtype}")
    if abar.dim() not in (1, 2) or abar.shape[-1] < 1:
        raise ValueError(f"{name}: expected shape (N,) or (K, N) with N >= 1, got {tuple(abar.shape)}")
    a = abar.to(torch.float64)
    a2 = a if a.dim() == 2 else a[None]
    if not torch.compiler.is_compiling() and a2.numel():
        d = a2.detach()
        if not bool(torch.isfinite(d).all()):
            raise TrajectoryError(f"{name}: expected finite values")
        if bool((d <= 0).any()) or bool((d >= 1).any()):
            raise TrajectoryError(f"{name}: expected values in (0, 1), got [{d.min().item():.6g}, "
                                  f"{d.max().item():.6g}]")
        if d.shape[1] > 1 and bool((d[:, 1:] >= d[:, :-1]).any()):
            k, i = [int(v) for v in torch.nonzero(d[:, 1:] >= d[:, :-1])[0]]
            raise TrajectoryError(f"{name}: expected strictly decreasing values (least noisy "
                                  f"first), but row {k} has {d[k, i].item():.8g} then "
                                  f"{d[k, i + 1].item():.8g} at steps {i}, {i + 1}")
        if table is not None and outside == "raise":
            lo, hi = table.range
            if bool((d < lo).any()) or bool((d > hi).any()):
                raise TrajectoryError(f"{name}: values outside the table's range [{lo:.6g}, "
                                      f"{hi:.6g}] (outside='raise')")
    return a2


def cumulative_error(abar, table, solver="ddim", *, outside="clamp", backend=None):
    """Cumulative prediction error of trajectories ``abar`` ``(N,)`` or ``(K, N)`` (least noisy
    first) under the MSE ``table`` for ``solver`` (``"ddim"`` or ``"dpm2m"``): a float64 scalar
    or ``(K,)`` tensor. Differentiable in ``abar`` (analytic gradient in the kernels, autograd on
    the reference). ``outside``: ``"clamp"`` (MSE constant beyond the table's ends) or ``"raise"``.
    """
    table = _table_of(table)
    if outside not in ("clamp", "raise"):
        raise ValueError(f"outside: expected 'clamp' or 'raise', got {outside!r}")
    key, code = solver_code(solver)
    a = check_trajectory(abar, "abar", table, outside)
    grid, mse = table.tensors(a.device)
    name = backends.select(backend, a.device, "vrg_cumulative_error")
    if name == "reference":
        out = _ref.cumulative_error(a, grid, mse, key)
    else:
        out = op("vrg_cumulative_error", name)(a, grid, mse, code)
    return out if abar.dim() == 2 else out[0]


def cumulative_error_and_grad(abar, table, solver="ddim", *, backend=None):
    """``(cpe (K,), d cpe / d abar (K, N))`` in one fused pass (no autograd graph)."""
    table = _table_of(table)
    key, code = solver_code(solver)
    a = check_trajectory(abar, "abar", table).detach()
    return _value_and_grad(a, table, key, code, backends.select(backend, a.device,
                                                                "vrg_cumulative_error_grad"))


def _value_and_grad(a, table, key, code, name):
    grid, mse = table.tensors(a.device)
    if name == "reference":
        x = a.detach().requires_grad_(True)
        with torch.enable_grad():
            v = _ref.cumulative_error(x, grid, mse, key)
            (g,) = torch.autograd.grad(v.sum(), x)
        return v.detach(), g
    return op("vrg_cumulative_error_grad", name)(a.contiguous(), grid, mse, code)


# --------------------------------------------------------------------------- optimization

class TrajectoryResult(NamedTuple):
    """Best trajectory ``abar`` (N,), its ``cpe``, the objective ``loss`` (cpe plus the pin
    penalty, if any), the start's ``init_cpe``, every candidate's final best ``candidates_cpe``
    (K,), the number of ``steps`` and the wall time ``seconds``."""
    abar: torch.Tensor
    cpe: float
    loss: float
    init_cpe: float
    candidates_cpe: torch.Tensor
    steps: int
    seconds: float


_SHRINK = 1.0 - 1e-9  # keeps box parametrizations strictly inside (tanh/sigmoid saturate)


class _Param:
    """Maps unconstrained z (K, N) to valid trajectories (K, N), every iterate valid."""

    def __init__(self, init, table, lp, pin_hard, K):
        self.init, self.N, self.K = init, init.numel(), K
        self.lp = lp
        self.pin_hard = pin_hard
        if lp is not None:
            a0 = torch.cat([init[:1], init[1:] / init[:-1]])  # alpha_i = abar_i / abar_{i-1}
            box = torch.minimum(torch.minimum(torch.full_like(a0, lp), a0), 1 - a0) * _SHRINK
            self.alpha0, self.box = a0, box
            if pin_hard:
                self.lo, self.hi = torch.log(a0 - box), torch.log(a0 + box)
                self.c = torch.log(init[-1])
                u0 = torch.log(a0)
                f = ((u0 - self.lo) / (self.hi - self.lo)).clamp(1e-12, 1 - 1e-12)
                self.z0 = torch.log(f) - torch.log1p(-f)
                self.tau = torch.zeros(K, 1, dtype=torch.float64)
            else:
                self.z0 = torch.zeros_like(a0)
        else:
            lam = torch.log(init) - torch.log1p(-init)
            hi_abar = min(max(table.range[1], float(init[0])), 1 - 1e-9)
            self.lam_max = math.log(hi_abar) - math.log1p(-hi_abar)
            self.lam_min = min(float(lam[-1]), math.log(1e-9)) - 5.0
            self.lamN = lam[-1]
            span = self.lam_max - float(lam[-1])
            frac0 = min(max((float(lam[0]) - float(lam[-1])) / span, 1e-9), 1 - 1e-9)
            gaps = lam[:-1] - lam[1:]
            logits = torch.log(gaps / gaps.sum()) if self.N > 1 else torch.zeros(0, dtype=torch.float64)
            first = torch.tensor([math.log(frac0) - math.log1p(-frac0)], dtype=torch.float64)
            last = (lam[-1:] - self.lam_min) / (self.lam_max - self.lam_min)
            last = torch.log(last) - torch.log1p(-last)
            self.z0 = torch.cat([first, logits, last]) if not pin_hard else torch.cat([first, logits])

    # log-alpha box with sum pinned: u = lo + (hi - lo) sigmoid(z + tau), tau solved per row
    def _solve_tau(self, z, iters=6):
        lo, hi, c = self.lo, self.hi, self.c
        tau = self.tau
        for _ in range(iters):
            sg = torch.sigmoid(z + tau)
            S = (lo + (hi - lo) * sg).sum(-1, keepdim=True)
            dS = ((hi - lo) * sg * (1 - sg)).sum(-1, keepdim=True).clamp_min(1e-300)
            tau = tau + ((c - S) / dS).clamp(-2.0, 2.0)
        return tau

    def exact_tau(self, z):
        """Bisection to machine precision (for the final answer)."""
        tl = torch.full((z.shape[0], 1), -80.0, dtype=torch.float64)
        th = torch.full((z.shape[0], 1), 80.0, dtype=torch.float64)
        for _ in range(200):
            tm = 0.5 * (tl + th)
            S = (self.lo + (self.hi - self.lo) * torch.sigmoid(z + tm)).sum(-1, keepdim=True)
            big = S > self.c
            th, tl = torch.where(big, tm, th), torch.where(big, tl, tm)
        return 0.5 * (tl + th)

    def __call__(self, z, exact=False):
        if self.lp is not None:
            if not self.pin_hard:
                alpha = self.alpha0 + torch.tanh(z) * self.box
                return torch.cumprod(alpha, -1)
            with torch.no_grad():
                tau = self.exact_tau(z) if exact else self._solve_tau(z.detach())
                self.tau = tau
            sg = torch.sigmoid(z + tau)
            u = self.lo + (self.hi - self.lo) * sg
            # one Newton step with gradient: at the solution it carries d tau / d z (implicit)
            S = u.sum(-1, keepdim=True)
            dS = ((self.hi - self.lo) * sg * (1 - sg)).sum(-1, keepdim=True)
            tau = tau + (self.c - S) / dS
            u = self.lo + (self.hi - self.lo) * torch.sigmoid(z + tau)
            return torch.exp(torch.cumsum(u, -1))
        N = self.N
        if self.pin_hard:
            lamN = self.lamN.expand(z.shape[0], 1)
        else:
            lamN = self.lam_min + (self.lam_max - self.lam_min) * torch.sigmoid(z[:, -1:])
        top = lamN + (self.lam_max - lamN) * torch.sigmoid(z[:, :1])
        if N == 1:
            lam = lamN
        else:
            gaps = torch.softmax(z[:, 1:N], -1) * (top - lamN)  # lambda_i - lambda_{i+1} > 0
            rest = torch.flip(torch.cumsum(torch.flip(gaps, [-1]), -1), [-1])
            lam = torch.cat([lamN + rest, lamN], -1)
        return torch.sigmoid(lam)


def optimize_trajectory(init, table, *, solver="ddim", candidates=64, lp=None, pin_last=True,
                        steps=1500, lr=0.05, spread=0.5, seed=0, backend=None, progress=False):
    """Minimize the cumulative prediction error over trajectories near ``init``.

    ``candidates`` restarts (the start itself plus ``candidates - 1`` random perturbations of
    its parameters, ``spread`` their scale, drawn from ``seed``) are optimized together as one
    ``(K, N)`` float64 batch with Adam (cosine-decayed ``lr``, ``steps`` iterations); each
    candidate keeps its best iterate and the best of all is returned. Every iterate is a valid
    trajectory (``0 < abar_N < ... < abar_1 < 1``) by construction:

    - ``lp`` given (the paper's trust region, e.g. 0.01): ``alpha_i = abar_i / abar_{i-1}``
      stays in ``alpha_i^0 +- min(lp, alpha_i^0, 1 - alpha_i^0)`` (the paper's box);
    - ``lp=None``: free log-SNR gaps (softmax shares of the span), the least noisy level below
      the table's top; see the module note on what cpe alone favours.

    ``pin_last``: ``True`` keeps ``abar_N`` exactly at its start (in the box, a per-candidate
    shift of the log-alpha box coordinates solves ``sum log alpha = log abar_N``); ``False``
    frees it; a number ``w`` adds the paper's soft pin ``w (abar_N - abar_N^0)^2`` to the
    objective instead (the paper uses ``w = 100``; with ``lp=0.01`` that is its search space and
    objective). Returns a :class:`TrajectoryResult` (``abar`` least noisy first).
    """
    t_start = time.perf_counter()
    table = _table_of(table)
    key, code = solver_code(solver)
    init = check_trajectory(init, "init")
    if init.shape[0] != 1:
        raise ValueError(f"init: expected one trajectory (N,), got shape {tuple(init.shape)}")
    init = init[0].detach().cpu()
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ValueError(f"candidates: expected a positive int, got {candidates!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps: expected a non-negative int, got {steps!r}")
    if lp is not None and not (isinstance(lp, numbers.Real) and 0 < lp < 1):
        raise ValueError(f"lp: expected None or a number in (0, 1), got {lp!r}")
    if isinstance(pin_last, bool):
        pin_hard, pin_w = pin_last, 0.0
    elif isinstance(pin_last, numbers.Real) and pin_last >= 0 and math.isfinite(pin_last):
        pin_hard, pin_w = False, float(pin_last)
    else:
        raise ValueError(f"pin_last: expected True, False or a penalty weight >= 0, got {pin_last!r}")
    K = candidates
    name = backends.select(backend, "cpu", "vrg_cumulative_error_grad")
    param = _Param(init, table, lp, pin_hard, K)
    gen = torch.Generator().manual_seed(int(seed))
    z = param.z0.expand(K, -1).clone()
    if K > 1:
        z[1:] += spread * torch.randn(K - 1, z.shape[1], dtype=torch.float64, generator=gen)
    z.requires_grad_(True)
    target_last = float(init[-1])

    def objective(a):
        v, g = _value_and_grad(a.detach(), table, key, code, name)
        loss = v
        if pin_w:
            dl = a.detach()[:, -1] - target_last
            loss = v + pin_w * dl * dl
            g = g.clone()
            g[:, -1] += 2 * pin_w * dl
        return v, loss, g

    init_cpe = float(_value_and_grad(init[None], table, key, code, name)[0][0])
    best_loss = torch.full((K,), math.inf, dtype=torch.float64)
    best_cpe = torch.full((K,), math.inf, dtype=torch.float64)
    best_z = z.detach().clone()
    opt = torch.optim.Adam([z], lr=lr)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="optimize_trajectory")
    for it in range(steps + 1):
        a = param(z)
        v, loss, g = objective(a)
        with torch.no_grad():
            better = loss < best_loss
            best_loss = torch.where(better, loss, best_loss)
            best_cpe = torch.where(better, v, best_cpe)
            best_z[better] = z.detach()[better]
        if it == steps:
            break
        for group in opt.param_groups:
            group["lr"] = lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * it / max(steps, 1))))
        opt.zero_grad(set_to_none=False)
        a.backward(g)
        opt.step()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    # re-evaluate the kept iterates exactly (the pinned box re-solves its shift to precision)
    with torch.no_grad():
        a = param(best_z, exact=True)
        v, loss, _ = objective(a)
    k = int(torch.argmin(loss))
    return TrajectoryResult(a[k].detach().clone(), float(v[k]), float(loss[k]), init_cpe,
                            v.detach().clone(), steps, time.perf_counter() - t_start)


# ---------------------------------------------------------------------------- the paper

def paper_optimizer(init, table, *, lp=0.01, epochs=3000, lr=2e-4, momentum=0.9, reg_lambda=100.0,
                    seed=None, log_interval=100, progress=False):
    """The VRG paper's optimizer (shifengxu/VRG, ``schedule/vrg_scheduler.py``), re-implemented
    as the baseline: ``alpha_i = alpha_i^0 + tanh(o_i) lp_i``, ``lp_i = min(lp, alpha_i^0,
    1 - alpha_i^0)``, ``abar = cumprod(alpha)``, ``o`` the output of a purely linear network
    1000 -> 2000 -> 2000 -> N on a constant input 0.5, loss ``cpe + reg_lambda (abar_N -
    abar_N^0)^2`` (DDIM cpe), gradients of the weights squashed by ``tanh`` twice, SGD with
    momentum, float64; every ``log_interval`` epochs the lowest loss so far is kept.
    Returns a :class:`TrajectoryResult` (``steps`` = epochs)."""
    t_start = time.perf_counter()
    table = _table_of(table)
    init = check_trajectory(init, "init")[0].detach().cpu()
    grid, mse = table.tensors("cpu")
    if seed is not None:
        torch.manual_seed(int(seed))
    N = init.numel()
    a_base = torch.cat([init[:1], init[1:] / init[:-1]])
    lp_t = torch.minimum(torch.minimum(torch.full_like(a_base, lp), a_base), 1 - a_base)
    net = torch.nn.Sequential(torch.nn.Linear(1000, 2000, dtype=torch.float64),
                              torch.nn.Linear(2000, 2000, dtype=torch.float64),
                              torch.nn.Linear(2000, N, dtype=torch.float64))
    x_in = torch.full((1000,), 0.5, dtype=torch.float64)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    ab_last = float(init[-1])

    def cpe_of(alpha, ab):
        delta = torch.zeros_like(ab)
        delta[0] = 1e-16
        coef = ((1 - ab).sqrt() - (alpha + delta - ab).sqrt()) ** 2
        return (coef * _ref.interp_mse(ab, grid, mse) / ab).sum()

    init_cpe = float(cpe_of(a_base, init))
    best = (math.inf, init_cpe, init.clone())
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, desc="paper_optimizer")
    for e in range(1, epochs + 1):
        opt.zero_grad()
        alpha = a_base + torch.tanh(net(x_in)) * lp_t
        ab = torch.cumprod(alpha, 0)
        cpe = cpe_of(alpha, ab)
        loss = cpe + reg_lambda * (ab[-1] - ab_last) ** 2
        loss.backward()
        for lin in net:
            lin.weight.grad = torch.tanh(torch.tanh(lin.weight.grad))
        opt.step()
        if (e % log_interval == 0 or e == epochs) and loss.item() < best[0]:
            best = (loss.item(), cpe.item(), ab.detach().clone())
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return TrajectoryResult(best[2], best[1], best[0], init_cpe, torch.tensor([best[1]]), epochs,
                            time.perf_counter() - t_start)


# ---------------------------------------------------------------------------- helpers

def to_timesteps(abar, schedule):
    """Integer timesteps of a discrete schedule for trajectory ``abar`` (least noisy first):
    for each level the timestep whose ``abar`` is nearest in log-SNR, returned noisiest first
    (the order diffusers' ``timesteps`` use). ``schedule``: abar per timestep (a tensor, or an
    object with ``.alphas_cumprod`` such as a diffusers scheduler). Raises ValueError if two
    levels land on the same timestep."""
    from .moments import _schedule_abar

    a = check_trajectory(abar, "abar")
    if a.shape[0] != 1:
        raise ValueError("abar: expected one trajectory (N,)")
    sched = _schedule_abar(schedule)
    lam_s = torch.log(sched) - torch.log1p(-sched)
    lam = torch.log(a[0]) - torch.log1p(-a[0])
    t = torch.argmin((lam[:, None] - lam_s[None, :]).abs(), dim=1)
    if torch.unique(t).numel() != t.numel():
        raise ValueError("abar: two levels map to the same timestep of the schedule "
                         f"({t.tolist()}); the trajectory is finer than the schedule")
    return torch.flip(t, [0])


def to_sigmas(abar, *, append_zero=True, dtype=torch.float32):
    """k-diffusion sigmas ``sqrt((1 - abar) / abar)`` of trajectory ``abar`` (least noisy first),
    returned noisiest first with a final 0 when ``append_zero``."""
    a = check_trajectory(abar, "abar")
    if a.shape[0] != 1:
        raise ValueError("abar: expected one trajectory (N,)")
    s = torch.flip(torch.sqrt((1 - a[0]) / a[0]), [0])
    if append_zero:
        s = torch.cat([s, s.new_zeros(1)])
    return s.to(dtype)
