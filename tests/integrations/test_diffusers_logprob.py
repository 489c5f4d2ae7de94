"""The fused transition log-probability of the diffusers steps (return_logprob=True, DDPO /
Flow-GRPO): values against the plain float64 formula, re-scoring gradients by gradcheck in
float64 (reference backend) and against autograd of the plain formula in float32 (every
backend), one fused-step launch per step() in both modes, the accelerated schedulers' steps
against stock's in float64 (with finite-difference gradients of the re-scoring), and the
steps that have no transition density. (FlowMatch's: test_diffusers_flow.py.)"""
import copy
import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from support import assert_close, backend_params  # noqa: E402
from diffaccel.integrations import _diffusers_logprob as L  # noqa: E402
from diffaccel.integrations import diffusers as dd  # noqa: E402
from support.diffusers_cases import STEP_OPS, STOCK, CountSteps  # noqa: E402

BACKENDS = ["reference"] + [p.values[0] for p in backend_params("sample_step")
                            if p.values[1] == "cpu" and not p.marks]


def _rows(rng, B, clip):
    """Per-sample coefficients like a VP step's (x0 from eps, mean from x and x0, and M)."""
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(B, generator=rng, dtype=torch.float64)  # noqa: E731
    return dict(ax=u(0.5, 1.0), am=u(-0.3, 0.3), std=u(0.1, 0.6), bx=u(1.0, 2.0), bm=u(-1.5, -0.5),
                ay=u(0.2, 0.8), clip=clip)


def _plain(x, m, prev, r):
    """x0 and lp = mean_i log N(prev_i; mean_i, std^2) in plain PyTorch (x's dtype), differentiable."""
    B = x.shape[0]
    c = lambda v: v.to(x.dtype).reshape(B, *([1] * (x.dim() - 1)))  # noqa: E731
    y = c(r["bx"]) * x + c(r["bm"]) * m
    x0 = y.clamp(-r["clip"], r["clip"]) if r["clip"] is not None else y
    mean = c(r["ax"]) * x + c(r["ay"]) * x0 + c(r["am"]) * m
    std = c(r["std"])
    lp = -(prev - mean) ** 2 / (2 * std ** 2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return lp.reshape(B, -1).mean(1), x0, mean


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("clip", [None, 1.0])
def test_sampling_logprob_against_float64(backend, clip, rng):
    """x_prev = mean + std z (z given, then drawn in the kernel) and lp against the float64
    formula evaluated at the returned x_prev."""
    B, S = 3, (2, 5, 7)
    r = _rows(rng, B, clip)
    x, m = torch.randn(B, *S, generator=rng), torch.randn(B, *S, generator=rng)
    z = torch.randn(B, *S, generator=rng)
    for kw in (dict(z=z), dict(seeds=torch.randint(0, 2 ** 40, (B,), generator=rng))):
        prev, x0, lp = L.sample_with_logprob(x, m, backend=backend, **r, **kw)
        want, x0w, mean = _plain(x.double(), m.double(), prev.double(), r)
        assert_close(x0, x0w, atol=1e-5, rtol=1e-5, what="x0")
        if "z" in kw:
            assert_close(prev, mean + r["std"].reshape(B, 1, 1, 1) * z.double(), atol=1e-5, what="x_prev")
        # |lp| ~ z^2 / 2: float32 rounding of x_prev shifts (x_prev - mean)/std by ~1e-7 |mean|/std
        assert_close(lp, want, atol=2e-5, rtol=1e-5, what="lp")


@pytest.mark.parametrize("clip", [None, 0.8])
def test_rescore_gradcheck_float64(clip, rng):
    """gradcheck (float64, the reference backend) of (lp, x0) with respect to the model output."""
    B, S = 2, (2, 3, 3)
    r = _rows(rng, B, clip)
    x = torch.randn(B, *S, generator=rng, dtype=torch.float64)
    prev = torch.randn(B, *S, generator=rng, dtype=torch.float64)
    m = torch.randn(B, *S, generator=rng, dtype=torch.float64)
    if clip is not None:  # keep y = bx x + bm m away from the clamp's corners (finite differences)
        y = r["bx"].reshape(B, 1, 1, 1) * x + r["bm"].reshape(B, 1, 1, 1) * m
        x = torch.where((y.abs() - clip).abs() < 1e-3, x + 0.01, x)
    m.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda mm: L.rescore(x, mm, prev, backend="reference", **r), (m,),
                                    eps=1e-6, atol=1e-7)
    lp, x0 = L.rescore(x, m, prev, backend="reference", **r)
    want, x0w, _ = _plain(x, m, prev, r)
    assert_close(lp, want, atol=1e-12, what="lp (float64)")
    assert_close(x0, x0w, atol=1e-12, what="x0 (float64)")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("clip", [None, 1.0])
def test_rescore_float32_against_autograd_of_the_formula(backend, clip, rng):
    B, S = 3, (4, 33)
    r = _rows(rng, B, clip)
    x = torch.randn(B, *S, generator=rng)
    prev = torch.randn(B, *S, generator=rng)
    m1 = torch.randn(B, *S, generator=rng).requires_grad_(True)
    m2 = m1.detach().clone().requires_grad_(True)
    g_lp, g_x0 = torch.randn(B, generator=rng), torch.randn(B, *S, generator=rng)
    lp, x0 = L.rescore(x, m1, prev, backend=backend, **r)
    want, x0w, _ = _plain(x, m2, prev, r)
    assert_close(lp, want, atol=1e-5, rtol=1e-5, what="lp")
    assert_close(x0, x0w, atol=1e-6, rtol=1e-6, what="x0")
    ((lp * g_lp).sum() + (x0 * g_x0).sum()).backward()
    ((want * g_lp).sum() + (x0w * g_x0).sum()).backward()
    assert_close(m1.grad, m2.grad, atol=1e-6, rtol=1e-5, what="d/dM")
    if clip is not None:
        assert bool((m2.grad != 0).any())
        assert bool((x0w.abs() == clip).any()), "the test should clamp some elements"


# ------------------------------------------------------------------ through the schedulers

CASES = [("ddpm", diffusers.DDPMScheduler, {}, {}),
         ("ddim-eta0.7", diffusers.DDIMScheduler, {}, dict(eta=0.7)),
         ("euler-a", diffusers.EulerAncestralDiscreteScheduler, {}, {}),
         ("flow-stochastic", diffusers.FlowMatchEulerDiscreteScheduler, dict(stochastic_sampling=True), {})]


@pytest.mark.skipif(not STEP_OPS, reason="no compiled backend runs on this machine")
@pytest.mark.parametrize("name,cls,cfg,kw", CASES, ids=[c[0] for c in CASES])
def test_return_logprob_is_one_fused_launch(name, cls, cfg, kw, rng):
    """Sampling with return_logprob and re-scoring the stored sample: one fused-step op each, and
    the re-scored log-probability equals the sampled one."""
    from diffaccel.backends import use_backend

    acc = dd.accelerate(cls(**cfg))
    acc.set_timesteps(5)
    B, S = 2, (3, 8, 8)
    t = acc.timesteps[1]
    x, m = torch.randn(B, *S, generator=rng), torch.randn(B, *S, generator=rng)
    if hasattr(acc, "_da_i"):
        acc.set_begin_index(1)
    with use_backend(STEP_OPS[0]):
        count = CountSteps()
        with count:
            out = acc.step(m, t, x, generator=torch.Generator().manual_seed(2), return_logprob=True, **kw)
        assert len(count.names) == 1, count.names
        prev, lp = out[0], out[-1]
        if hasattr(acc, "_da_i"):
            acc._da_i.sub_(1)  # re-score the same step
        mg = m.clone().requires_grad_(True)
        count = CountSteps()
        with count:
            lp2 = acc.step(mg, t, x, return_logprob=True, prev_sample=prev, **kw)[-1]
        assert len(count.names) == 1, count.names
    assert_close(lp2.detach(), lp, atol=1e-4, rtol=1e-5, what="re-scored lp")
    lp2.sum().backward()
    assert mg.grad is not None and bool(torch.isfinite(mg.grad).all()) and bool((mg.grad != 0).any())


@pytest.mark.parametrize("name,cls,cfg,kw", CASES, ids=[c[0] for c in CASES])
def test_bf16_logprob_is_that_of_the_returned_sample(name, cls, cfg, kw, rng):
    """With bfloat16 model outputs the returned x_prev is rounded to bfloat16 (~0.4% of |x_prev|,
    large against a small std): the sampled log-probability is that of the rounded x_prev, so
    re-scoring it under the same model output gives the same value (PPO ratio 1)."""
    acc = dd.accelerate(cls(**cfg))
    acc.set_timesteps(5)
    B, S = 2, (3, 8, 8)
    x = torch.randn(B, *S, generator=rng).to(torch.bfloat16)  # (DDPM/DDIM: stock's dtype is the
    m = torch.randn(B, *S, generator=rng).to(torch.bfloat16)  # promotion of sample and model output)
    for j, t in enumerate(acc.timesteps[:-1]):
        if hasattr(acc, "_da_i"):
            acc._da_i.fill_(j)
        out = acc.step(m, t, x, generator=torch.Generator().manual_seed(j), return_logprob=True, **kw)
        prev, lp = out[0], out[-1]
        assert prev.dtype == torch.bfloat16
        if hasattr(acc, "_da_i"):
            acc._da_i.sub_(1)
        lp2 = acc.step(m, t, x, return_logprob=True, prev_sample=prev, **kw)[-1]
        assert_close(lp, lp2, atol=1e-5, rtol=1e-5, what=f"lp at step {j}: sampled vs re-scored")


@pytest.mark.parametrize("name,kw", [("ddpm", {}), ("ddim-v-linspace", dict(eta=0.7)), ("euler-a", {})])
def test_return_logprob_against_float64(name, kw, rng):
    """step(..., return_logprob=True): log N(prev; mean, std^2) averaged over the non-batch dims,
    against the stock step in float64 for the mean (model output with and without noise) and
    the same formula in float64; re-scoring a stored prev_sample gives gradients to the model
    output that equal the analytic ones."""
    cls, cfg = STOCK[name]
    acc = dd.accelerate(cls(**cfg))
    stock = cls(**cfg)
    acc.set_timesteps(6)
    stock.set_timesteps(6)
    B, S = 3, (2, 4, 5)
    total_grad = 0.0
    for i, t in enumerate(acc.timesteps[:-1]):
        x = torch.randn(B, *S, generator=rng)
        m = torch.randn(B, *S, generator=rng)
        seed = int(torch.randint(0, 2**31, (1,), generator=rng))
        g = torch.Generator().manual_seed(seed)
        if hasattr(acc, "is_scale_input_called"):
            acc.scale_model_input(x, t)
            stock.scale_model_input(x, t)
        prev, x0, lp = acc.step(m, t, x, generator=g, return_logprob=True, **kw)
        # the mean: stock's step with zero noise (float64 where stock keeps the dtype)
        dt = torch.float32 if name == "euler-a" else torch.float64
        st_kw = dict(kw, variance_noise=torch.zeros(B, *S, dtype=dt)) if name.startswith("ddim") else kw
        st = stock if name == "euler-a" else copy.deepcopy(stock)  # (its step index advances)
        if name == "ddpm":
            mean = _ddpm_mean64(st, m.double(), t, x.double())
        elif name == "euler-a":
            mean = (st.step(m, t, x, generator=torch.Generator().manual_seed(seed)).prev_sample.double()
                    - _ea_noise(st, i, B, S, seed))
        else:
            mean = st.step(m.double(), t, x.double(), **st_kw).prev_sample
        std = _std64(stock, t, i, kw.get("eta"))
        ref = (-(prev.double() - mean) ** 2 / (2 * std ** 2) - math.log(std)
               - 0.5 * math.log(2 * math.pi)).flatten(1).mean(1)
        # |log p| terms are ~ z^2/2 with z = (prev - mean)/std: float32 error ~ 1e-6 |z|^2
        torch.testing.assert_close(lp.double(), ref, rtol=1e-4, atol=1e-4)
        # re-score: gradient flows to the model output
        mg = m.clone().requires_grad_(True)
        _, _, lp2 = acc.step(mg, t, x, return_logprob=True, prev_sample=prev, **kw) if not hasattr(
            acc, "_da_i") else _rescore(acc, mg, t, x, prev, kw)
        torch.testing.assert_close(lp2.detach().double(), lp.double(), rtol=1e-5, atol=1e-5)
        lp2.sum().backward()
        assert mg.grad is not None and bool(torch.isfinite(mg.grad).all())
        total_grad += mg.grad.abs().sum().item()  # (zero where x0 is clipped)
        # the checked element: the one of sample 0 whose x0 is farthest from the clamp's edges
        # (a central difference across an edge measures neither side's slope)
        e = (0, 0, 0, 0)
        if getattr(acc.config, "clip_sample", False):
            r_ = acc.config.clip_sample_range
            x00 = x0[0].double()
            e = (0,) + tuple(torch.unravel_index(
                torch.minimum((x00 - r_).abs(), (x00 + r_).abs()).argmax(), S))
        eps_, lps = 1e-3, []
        for sgn in (1, -1):  # central difference (the log-density is quadratic in m)
            mp = m.clone()
            mp[e] += sgn * eps_
            lps.append((_rescore(acc, mp, t, x, prev, kw) if hasattr(acc, "_da_i") else
                        acc.step(mp, t, x, return_logprob=True, prev_sample=prev, **kw))[2][0].item())
        fd = (lps[0] - lps[1]) / (2 * eps_)
        assert abs(fd - mg.grad[e].item()) < 2e-2 * (1 + abs(fd)), (e, fd, mg.grad[e].item())
    assert total_grad > 0


def _rescore(acc, m, t, x, prev, kw):
    """Re-score at the same step index (the counter advanced with the first call)."""
    acc._da_i.sub_(1)
    return acc.step(m, t, x, return_logprob=True, prev_sample=prev, **kw)


def _ddpm_mean64(st, m, t, x):
    a = st.alphas_cumprod.double()
    ts = st.timesteps.tolist()
    k = ts.index(int(t))
    ap = a[ts[k + 1]] if k + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
    at = a[int(t)]
    x0 = ((x - (1 - at).sqrt() * m) / at.sqrt()).clamp(-1, 1)
    beta = 1 - at / ap
    return ap.sqrt() * beta / (1 - at) * x0 + (at / ap).sqrt() * (1 - ap) / (1 - at) * x


def _std64(stock, t, i, eta):
    a = stock.alphas_cumprod.double()
    if isinstance(stock, diffusers.EulerAncestralDiscreteScheduler):
        s, s2 = stock.sigmas.double()[i], stock.sigmas.double()[i + 1]
        return math.sqrt(s2 ** 2 * (s ** 2 - s2 ** 2) / s ** 2)
    ts = stock.timesteps.tolist()
    if isinstance(stock, diffusers.DDIMScheduler):
        prev_t = int(t) - stock.config.num_train_timesteps // stock.num_inference_steps
        ap = a[prev_t] if prev_t >= 0 else stock.final_alpha_cumprod.double()
    else:
        k = ts.index(int(t))
        ap = a[ts[k + 1]] if k + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
    at = a[int(t)]
    var = (1 - ap) / (1 - at) * (1 - at / ap)
    return float((eta if eta is not None else 1.0) * var.sqrt())


def _ea_noise(st, i, B, S, seed):
    s, s2 = st.sigmas.double()[i], st.sigmas.double()[i + 1]
    up = (s2 ** 2 * (s ** 2 - s2 ** 2) / s ** 2).sqrt()
    return up * torch.randn(B, *S, generator=torch.Generator().manual_seed(seed)).double()


def test_return_logprob_without_density():
    ddim = dd.accelerate(diffusers.DDIMScheduler())
    ddim.set_timesteps(3)
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="return_logprob: DDIM with eta = 0"):
        ddim.step(x, ddim.timesteps[0], x, return_logprob=True)
    ddpm = dd.accelerate(diffusers.DDPMScheduler())
    ddpm.set_timesteps(3)
    with pytest.raises(ValueError, match="return_logprob: the step at timestep 0 adds no noise"):
        ddpm.step(x, ddpm.timesteps[-1], x, return_logprob=True)
    with pytest.raises(ValueError, match="prev_sample: only used with return_logprob"):
        ddpm.step(x, ddpm.timesteps[0], x, prev_sample=x)
    with pytest.raises(TypeError):  # the deterministic Euler step has no density: no such argument
        e = dd.accelerate(diffusers.EulerDiscreteScheduler())
        e.set_timesteps(3)
        e.step(x, e.timesteps[0], x, return_logprob=True)
