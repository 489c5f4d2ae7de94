"""The fused transition log-probability of the diffusers steps (return_logprob=True, DDPO /
Flow-GRPO): values against the plain float64 formula, re-scoring gradients by gradcheck in
float64 (reference backend) and against autograd of the plain formula in float32 (every
backend), and one fused-step launch per step() in both modes."""
import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from support import assert_close, backend_params  # noqa: E402
from diffaccel.integrations import _diffusers_logprob as L  # noqa: E402
from diffaccel.integrations import diffusers as dd  # noqa: E402
from test_diffusers_one_pass import STEP_OPS, _CountSteps  # noqa: E402

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
        count = _CountSteps()
        with count:
            out = acc.step(m, t, x, generator=torch.Generator().manual_seed(2), return_logprob=True, **kw)
        assert len(count.names) == 1, count.names
        prev, lp = out[0], out[-1]
        if hasattr(acc, "_da_i"):
            acc._da_i.sub_(1)  # re-score the same step
        mg = m.clone().requires_grad_(True)
        count = _CountSteps()
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
