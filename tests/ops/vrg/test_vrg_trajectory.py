"""VRG trajectories: the published cpe value, every backend against the reference (values and
analytic gradients, DDIM and DPM-Solver-2M), finite differences in float64, the error-propagation
recursion against the DDIM closed form, the optimizer (strict improvement, valid iterates, the
paper's box and pin) and bad input."""
from pathlib import Path

import pytest
import torch

import diffaccel.vrg as vrg
from diffaccel.reference import vrg as R

from support import assert_close, backend_params

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "vrg"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"VRG reference data not found at {DATA}")
ALL = [("reference", "cpu")] + backend_params("vrg_cumulative_error")


@pytest.fixture(scope="module")
def cifar():
    return vrg.MSETable.load(DATA / "MSE_vs_alpha_bar_cifar10.txt")


@pytest.fixture(scope="module")
def quadratic():
    return vrg.load_trajectory(DATA / "dpm_alphaBar_1-010-time_quadratic.txt")


def _random_table(rng, M=40):
    a = torch.sort(torch.rand(M, generator=rng, dtype=torch.float64)).values * 0.9998 + 1e-4
    a[0], a[-1] = 0.0, 0.9999
    m = torch.rand(M, generator=rng, dtype=torch.float64) * 0.5 + 0.01
    return vrg.MSETable(a, m)


def _random_trajectories(rng, K, N, lo=2e-4, hi=0.9995):
    """K sorted trajectories (least noisy first), spread in log-SNR, some levels on grid points."""
    lam_lo, hi_l = torch.logit(torch.tensor(lo, dtype=torch.float64)), torch.logit(
        torch.tensor(hi, dtype=torch.float64))
    u = torch.sort(torch.rand(K, N, generator=rng, dtype=torch.float64), 1, descending=True).values
    lam = lam_lo + (hi_l - lam_lo) * u
    # keep the levels apart (dpm2m divides by log-SNR gaps)
    lam = lam + 0.05 * torch.arange(N, 0, -1, dtype=torch.float64)
    return torch.sigmoid(lam)


@needs_data
@pytest.mark.parametrize("backend,device", ALL)
def test_published_value(backend, device, cifar, quadratic):
    """cpe (docs/math.md Section 5): the CIFAR-10 table and the 10-step time-quadratic trajectory
    give 0.5013875."""
    assert quadratic.numel() == 10 and abs(quadratic[0].item() - 0.99580753) < 1e-12
    got = vrg.cumulative_error(quadratic.to(device), cifar, "ddim", backend=backend)
    assert got.dim() == 0 and got.dtype == torch.float64
    assert abs(got.item() - 0.5013875) < 1e-6, got.item()
    # the same trajectory twice in a batch, and DPM-Solver-1 is DDIM
    both = vrg.cumulative_error(torch.stack([quadratic, quadratic]).to(device), cifar, "dpm1",
                                backend=backend)
    assert both.shape == (2,) and abs(both[1].item() - 0.5013875) < 1e-6


@pytest.mark.parametrize("solver", ["ddim", "dpm2m"])
@pytest.mark.parametrize("KN", [(1, 1), (3, 2), (5, 3), (17, 10), (4, 37), (2, 70)], ids=str)
@pytest.mark.parametrize("backend,device", backend_params("vrg_cumulative_error"))
def test_backends_match_reference(backend, device, KN, solver, rng):
    K, N = KN
    table = _random_table(rng)
    abar = _random_trajectories(rng, K, N)
    if N >= 3:  # put a level exactly on a grid point where one lies between its neighbours
        g = table.abar[torch.searchsorted(table.abar, abar[0, 1]) - 1]
        if abar[0, 2] < g < abar[0, 0]:
            abar[0, 1] = g
    x = abar.clone().requires_grad_(True)
    ref = vrg.cumulative_error(x, table, solver, backend="reference")
    (gref,) = torch.autograd.grad(ref.sum(), x)
    got = vrg.cumulative_error(abar.to(device), table, solver, backend=backend)
    assert_close(got, ref, atol=1e-12, rtol=1e-10, what=f"{backend} {solver} cpe")
    v, g = vrg.cumulative_error_and_grad(abar.to(device), table, solver, backend=backend)
    assert_close(v, ref, atol=1e-12, rtol=1e-10, what=f"{backend} {solver} fused cpe")
    assert_close(g, gref, atol=1e-10, rtol=1e-8, what=f"{backend} {solver} gradient")
    # autograd through the op (analytic backward) with a non-trivial incoming gradient
    w = torch.rand(K, generator=rng, dtype=torch.float64)
    xa = abar.to(device).requires_grad_(True)
    (ga,) = torch.autograd.grad((vrg.cumulative_error(xa, table, solver, backend=backend) * w.to(device)).sum(), xa)
    assert_close(ga, w[:, None] * gref, atol=1e-10, rtol=1e-8, what=f"{backend} {solver} autograd")


@pytest.mark.parametrize("solver", ["ddim", "dpm2m"])
@pytest.mark.parametrize("backend,device", ALL)
def test_gradient_finite_differences(backend, device, solver, rng):
    """Analytic (kernel) and autograd (reference) gradients against central differences in
    float64 with one Richardson step (error O(h^4)); h is a small fraction of every length scale
    around the level (its interpolation interval, its neighbours, 1 - abar), so no kink of the
    piecewise-linear MSE is crossed."""
    table = _random_table(rng, M=12)
    abar = _random_trajectories(rng, 3, 6)
    _, g = vrg.cumulative_error_and_grad(abar.to(device), table, solver, backend=backend)
    g = g.cpu()

    def f(a, k):
        return vrg.cumulative_error(a, table, solver, backend="reference")[k].item()

    def central(k, i, h):
        plus, minus = abar.clone(), abar.clone()
        plus[k, i] += h
        minus[k, i] -= h
        return (f(plus, k) - f(minus, k)) / (2 * h)

    for k in range(3):
        for i in range(6):
            a = abar[k, i].item()
            j = int(torch.searchsorted(table.abar, torch.tensor(a, dtype=torch.float64)))
            gaps = [a - table.abar[j - 1].item(), table.abar[j].item() - a] if 0 < j < len(table) else []
            gaps += [abs(a - abar[k, i + d].item()) for d in (-1, 1) if 0 <= i + d < 6]
            gaps += [1 - a]
            h = min([1e-5 * a] + [1e-2 * gp for gp in gaps])
            fd = (4 * central(k, i, h / 2) - central(k, i, h)) / 3
            # truncation O((h / scale)^4) plus the rounding of the sums (|cpe| eps / h)
            tol = 1e-6 * (1 + abs(fd)) + 32 * 2.0 ** -52 * abs(f(abar, k)) / h
            assert abs(g[k, i].item() - fd) <= tol, \
                f"{backend} {solver} d cpe/d abar[{k},{i}]: analytic {g[k, i].item():.10g} vs fd {fd:.10g}"


def test_torch_gradcheck_reference_and_cpu(rng):
    from diffaccel.backends import availability

    table = _random_table(rng, M=9)
    abar = _random_trajectories(rng, 2, 5).requires_grad_(True)
    for backend in ("reference", "cpu"):
        if not availability(backend, "cpu", "vrg_cumulative_error")[0]:
            continue
        for solver in ("ddim", "dpm2m"):
            f = lambda a: vrg.cumulative_error(a, table, solver, backend=backend)  # noqa: E731
            # central differences in float64 carry a rounding error of about |cpe| 2^-52 / eps:
            # with levels near abar = 2e-4, cpe reaches ~1e3 and that error ~1e-5
            eps = 1e-8
            atol = 10 * f(abar.detach()).abs().max().item() * 2.0**-52 / eps
            assert torch.autograd.gradcheck(f, (abar,), eps=eps, atol=max(atol, 1e-6), rtol=1e-5)


def test_recursion_reproduces_ddim_closed_form(rng):
    """The generic error-propagation recursion over DDIM's x-space update coefficients gives
    W_i^2 = (sqrt(1 - abar_i) - sqrt(alpha_i - abar_i))^2 / abar_i (docs/math.md Section 5)."""
    abar = _random_trajectories(rng, 6, 9)
    W = R.error_weights(*R.solver_coefficients(abar, "ddim"))
    prev = torch.cat([torch.ones(6, 1, dtype=torch.float64), abar[:, :-1]], 1)
    closed = (torch.sqrt(1 - abar) - torch.sqrt(abar / prev - abar)) ** 2 / abar
    assert_close(W ** 2, closed, atol=1e-12, rtol=1e-10, what="W^2 vs closed form")
    table = _random_table(rng)
    grid, mse = table.tensors()
    rec = (W ** 2 * R.interp_mse(abar, grid, mse)).sum(1)
    assert_close(rec, R.ddim_cpe(abar, grid, mse), atol=1e-12, rtol=1e-10, what="cpe")
    # and DPM-Solver-2M's recursion differs from DDIM (second-order steps weigh errors more)
    W2 = R.error_weights(*R.solver_coefficients(abar, "dpm2m"))
    assert not torch.allclose(W2, W)
    assert_close(W2[:, 0], W[:, 0], atol=1e-14, what="last step is first order")


def test_dpm2m_recursion_matches_simulation(rng):
    """The weights W of DPM-Solver-2M are what a literal run of the multistep sampler (linear in
    the eps-predictions) does with an error injected at one step."""
    abar = _random_trajectories(rng, 1, 6)[0]
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    lam = torch.log(alpha / sigma)
    N = 6

    def run(errors):
        x = torch.zeros((), dtype=torch.float64)  # error propagation: model outputs = errors
        prev_eps = None
        for p in range(N - 1, -1, -1):  # from abar_N down to abar_1, then onto abar = 1
            eps = errors[p]
            a_to = alpha[p - 1] if p >= 1 else torch.tensor(1.0, dtype=torch.float64)
            s_to = sigma[p - 1] if p >= 1 else torch.tensor(0.0, dtype=torch.float64)
            if p == 0:
                x = (x - sigma[0] * eps) / alpha[0]
            else:
                h = lam[p - 1] - lam[p]
                phi = torch.expm1(h)
                x_new = (a_to / alpha[p]) * x - s_to * phi * eps
                if prev_eps is not None:
                    r0 = (lam[p] - lam[p + 1]) / h
                    x_new = x_new - 0.5 * s_to * phi * (eps - prev_eps) / r0
                x = x_new
            prev_eps = eps
        return x

    W = R.error_weights(*R.solver_coefficients(abar[None], "dpm2m"))[0]
    for j in range(N):
        e = torch.zeros(N, dtype=torch.float64)
        e[j] = 1.0
        assert abs(run(e).item() - W[j].item()) < 1e-9 * (1 + abs(W[j].item())), (j, run(e), W[j])


@pytest.mark.parametrize("backend,device", ALL)
def test_bad_trajectories(backend, device, rng):
    table = _random_table(rng)
    good = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64, device=device)
    for bad, match in ((torch.tensor([0.5, 0.9, 0.1]), "decreasing"),
                       (torch.tensor([0.9, 0.5, 0.5]), "decreasing"),
                       (torch.tensor([1.0, 0.5, 0.1]), r"\(0, 1\)"),
                       (torch.tensor([0.9, 0.5, 0.0]), r"\(0, 1\)"),
                       (torch.tensor([0.9, float("nan"), 0.1]), "finite")):
        with pytest.raises(vrg.TrajectoryError, match=match):
            vrg.cumulative_error(bad.double().to(device), table, backend=backend)
    with pytest.raises(ValueError, match="abar"):
        vrg.cumulative_error(good[None, None], table, backend=backend)
    with pytest.raises(TypeError, match="abar"):
        vrg.cumulative_error(torch.tensor([3, 2, 1], device=device), table, backend=backend)
    with pytest.raises(ValueError, match="solver"):
        vrg.cumulative_error(good, table, "heun", backend=backend)
    with pytest.raises(TypeError, match="table"):
        vrg.cumulative_error(good, {"abar": 1}, backend=backend)
    narrow = vrg.MSETable([0.2, 0.8], [1.0, 2.0])
    with pytest.raises(vrg.TrajectoryError, match="range"):
        vrg.cumulative_error(good, narrow, outside="raise", backend=backend)
    # clamped by default: MSE constant beyond the ends
    clamped = vrg.cumulative_error(good, narrow, backend=backend)
    exact = vrg.cumulative_error(good, vrg.MSETable([1e-3, 0.2, 0.8, 0.99], [1.0, 1.0, 2.0, 2.0]),
                                 backend=backend)
    assert_close(clamped, exact, atol=1e-14, what="clamp")


def test_fake_and_opcheck(rng):
    from diffaccel.backends import availability
    from diffaccel.library import op

    table = _random_table(rng)
    abar = _random_trajectories(rng, 3, 5)
    grid, mse = table.tensors()
    for backend in ("cpu", "triton"):
        if not availability(backend, "cpu", "vrg_cumulative_error")[0]:
            continue
        for solver in (0, 1):  # schema, fake, autograd registration, AOT dispatch
            torch.library.opcheck(op("vrg_cumulative_error_grad", backend), (abar, grid, mse, solver))
            torch.library.opcheck(op("vrg_cumulative_error", backend),
                                  (abar.clone().requires_grad_(True), grid, mse, solver))


@pytest.mark.parametrize("backend,device", [("reference", "cpu")] + backend_params("vrg_cumulative_error"))
def test_compile_fullgraph(backend, device, rng):
    table = _random_table(rng)
    abar = _random_trajectories(rng, 4, 6)

    def f(a):
        return vrg.cumulative_error(a, table, "dpm2m", backend=backend)

    if backend == "triton":
        pytest.skip("torch.compile with the Triton interpreter is not exercised here")
    got = torch.compile(f, fullgraph=True, backend="eager")(abar)
    assert_close(got, f(abar), atol=1e-14, what="compiled")


# ----------------------------------------------------------------------------- optimizer

def _valid(a):
    return bool((a > 0).all() and (a < 1).all() and (a[1:] < a[:-1]).all())


@needs_data
@pytest.mark.parametrize("backend,device", [("reference", "cpu")] + backend_params("vrg_cumulative_error_grad")[:1])
def test_optimizer_paper_space_improves(backend, device, cifar, quadratic, rng):
    """Shortened form of the benchmark's comparison: lp = 0.01 and the paper's pin (soft, weight
    100): a strict improvement over the start, inside the paper's box, valid."""
    seed = int(torch.randint(0, 2**31, (1,), generator=rng))
    r = vrg.optimize_trajectory(quadratic, cifar, lp=0.01, pin_last=100.0, candidates=8,
                                steps=150, seed=seed, backend=backend)
    assert abs(r.init_cpe - 0.5013875) < 1e-6
    assert r.cpe < r.init_cpe - 0.03, (r.cpe, r.init_cpe)
    assert _valid(r.abar)
    a0 = torch.cat([quadratic[:1], quadratic[1:] / quadratic[:-1]])
    alpha = torch.cat([r.abar[:1], r.abar[1:] / r.abar[:-1]])
    box = torch.minimum(torch.minimum(torch.full_like(a0, 0.01), a0), 1 - a0)
    assert bool(((alpha - a0).abs() <= box + 1e-12).all())
    assert abs(vrg.cumulative_error(r.abar, cifar).item() - r.cpe) < 1e-12
    assert abs(r.loss - r.cpe - 100 * (r.abar[-1] - quadratic[-1]).item() ** 2) < 1e-12


@needs_data
@pytest.mark.parametrize("lp", [0.01, None])
@pytest.mark.parametrize("solver", ["ddim", "dpm2m"])
def test_optimizer_hard_pin(cifar, quadratic, solver, lp, rng):
    seed = int(torch.randint(0, 2**31, (1,), generator=rng))
    r = vrg.optimize_trajectory(quadratic, cifar, solver=solver, lp=lp, pin_last=True,
                                candidates=6, steps=120, seed=seed)
    assert r.cpe < r.init_cpe - 1e-3, (r.cpe, r.init_cpe)
    assert _valid(r.abar)
    assert abs(r.abar[-1].item() - quadratic[-1].item()) <= 1e-12 * quadratic[-1].item() + 1e-15
    assert r.candidates_cpe.shape == (6,)
    assert abs(vrg.cumulative_error(r.abar, cifar, solver).item() - r.cpe) < 1e-12


def test_optimizer_every_iterate_valid(rng, monkeypatch):
    """Large steps and wide restarts: every trajectory the objective sees is valid."""
    from diffaccel.vrg import trajectory as T

    table = _random_table(rng)
    init = _random_trajectories(rng, 1, 7)[0]
    seen = []
    real = T._value_and_grad

    def spy(a, *args):
        seen.append(a.detach().clone())
        return real(a, *args)

    monkeypatch.setattr(T, "_value_and_grad", spy)
    for lp, pin in ((0.05, True), (0.05, False), (0.05, 10.0), (None, True), (None, False)):
        seen.clear()
        r = vrg.optimize_trajectory(init, table, lp=lp, pin_last=pin, candidates=5, steps=40,
                                    lr=0.5, spread=3.0, seed=1)
        assert seen and all(_valid(a) for batch in seen for a in batch), (lp, pin)
        assert r.cpe <= r.init_cpe + 1e-15
    with pytest.raises(ValueError, match="pin_last"):
        vrg.optimize_trajectory(init, table, pin_last="yes")
    with pytest.raises(ValueError, match="lp"):
        vrg.optimize_trajectory(init, table, lp=1.5)
    with pytest.raises(ValueError, match="candidates"):
        vrg.optimize_trajectory(init, table, candidates=0)
    with pytest.raises(vrg.TrajectoryError, match="decreasing"):
        vrg.optimize_trajectory(torch.flip(init, [0]), table)


def test_paper_optimizer_short(rng):
    table = _random_table(rng)
    init = _random_trajectories(rng, 1, 5)[0]
    r = vrg.paper_optimizer(init, table, epochs=20, log_interval=5, seed=0)
    assert _valid(r.abar) and r.steps == 20
    # the paper's method rebuilds abar as cumprod(alpha); the (sqrt(1 - abar) - sqrt(alpha - abar))^2
    # terms of the cpe cancel and magnify that float64 rounding (seen: 5e-10 relative)
    expected = vrg.cumulative_error(init, table).item()
    assert abs(r.init_cpe - expected) < 1e-8 * abs(expected)


def test_timesteps_and_sigmas():
    sched = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    abar = sched[[10, 200, 500, 999]].flip(0).flip(0)
    t = vrg.to_timesteps(abar, sched)
    assert t.tolist() == [999, 500, 200, 10]

    class Sched:
        alphas_cumprod = sched.float()

    assert vrg.to_timesteps(abar * (1 + 1e-6), Sched()).tolist() == [999, 500, 200, 10]
    with pytest.raises(ValueError, match="same timestep"):
        vrg.to_timesteps(torch.tensor([0.5, 0.49999999, 0.1], dtype=torch.float64), sched)
    s = vrg.to_sigmas(abar)
    assert s.shape == (5,) and s[-1] == 0 and bool((s[:-1] > s[1:]).all())
    assert_close(s[:-1], ((1 - abar) / abar).sqrt().flip(0), atol=1e-5, rtol=1e-6, what="sigmas")
    assert vrg.to_sigmas(abar, append_zero=False).shape == (4,)
