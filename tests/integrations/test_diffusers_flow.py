"""The accelerated FlowMatchEulerDiscreteScheduler (diffaccel.integrations._diffusers_flow) against
stock diffusers: the checks every family runs (tests/support/diffusers_cases.py), its
return_logprob and scale_noise (with stroke), custom trajectories of the other schedulers'
set_timesteps, and its training targets."""
import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from support.diffusers_cases import FamilyChecks  # noqa: E402
from diffaccel.integrations import diffusers as dd  # noqa: E402


class TestFlow(FamilyChecks):
    CLASSES = (diffusers.FlowMatchEulerDiscreteScheduler,)
    BAD_INPUT = ["flow-stochastic"]
    COMPILE = [("flow-stochastic", {})]
    BATCH = [("flow-stochastic", {})]
    NONCONTIGUOUS = [("flow", {})]


def test_flow_logprob_scale_noise_and_custom_trajectories(rng):
    """FlowMatch (stochastic): return_logprob against the float64 formula, re-scoring with
    gradients; scale_noise with and without stroke; custom timesteps / sigmas in set_timesteps:
    DDIM and EulerAncestral (which stock lacks) reproduce the stock schedule when given it, DPM
    takes sigmas, and a bad schedule is a named error."""
    import diffaccel

    acc = dd.accelerate(diffusers.FlowMatchEulerDiscreteScheduler(stochastic_sampling=True, shift=3.0))
    acc.set_timesteps(5)
    x = torch.randn(2, 3, 4, 4, generator=rng)
    v = torch.randn(2, 3, 4, 4, generator=rng)
    t = acc.timesteps[1]
    acc.set_begin_index(1)
    prev, lp = acc.step(v, t, x, return_logprob=True, generator=torch.Generator().manual_seed(3))
    s, s2 = acc.sigmas.double()[1], acc.sigmas.double()[2]
    mean = (1 - s2) * (x.double() - s * v.double())
    ref = (-(prev.double() - mean) ** 2 / (2 * s2 ** 2) - s2.log() - 0.5 * math.log(2 * math.pi)).flatten(1).mean(1)
    torch.testing.assert_close(lp.double(), ref, rtol=1e-5, atol=1e-5)
    vg = v.clone().requires_grad_(True)
    acc.set_begin_index(1)
    acc.set_timesteps(5)
    acc.set_begin_index(1)
    _, lp2 = acc.step(vg, t, x, return_logprob=True, prev_sample=prev)
    torch.testing.assert_close(lp2.detach(), lp, rtol=1e-6, atol=1e-6)
    lp2.sum().backward()
    g_ref = ((prev.double() - mean) / s2 ** 2 * (-(1 - s2) * s)) / x[0].numel()
    torch.testing.assert_close(vg.grad.double(), g_ref, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="return_logprob: the deterministic FlowMatch"):
        f = dd.accelerate(diffusers.FlowMatchEulerDiscreteScheduler())
        f.set_timesteps(3)
        f.step(v, f.timesteps[0], x, return_logprob=True)
    # scale_noise: stock without stroke; with stroke, both blurred
    stock = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    stock.set_timesteps(5)
    ts = stock.timesteps[[0, 3]]
    acc = dd.accelerate(stock)  # fresh: stock's scale_noise reads begin_index / step_index
    assert torch.equal(acc.scale_noise(x, ts, v), stock.scale_noise(x, ts, v))
    sig = stock.sigmas[[0, 3]].double()
    w = diffaccel.stroke_weights((2 * ((1 - sig).log() - sig.log())).clamp(-60, 60).float(), (2,))
    got = acc.scale_noise(x, ts, v, stroke=(2,)).double()
    A = lambda u: diffaccel.stroke_blur(u, w, (2,), backend="reference").double()  # noqa: E731
    r = sig[:, None, None, None]
    torch.testing.assert_close(got, r * A(v) + (1 - r) * A(x), rtol=1e-5, atol=1e-5)
    # custom trajectories
    for cls, kw in ((diffusers.DDIMScheduler, {}), (diffusers.EulerAncestralDiscreteScheduler, {})):
        st, a1, a2 = cls(), dd.accelerate(cls()), dd.accelerate(cls())
        st.set_timesteps(6)
        a1.set_timesteps(6)
        if cls is diffusers.DDIMScheduler:
            a2.set_timesteps(timesteps=st.timesteps.tolist())
        else:
            a2.set_timesteps(sigmas=st.sigmas)
            torch.testing.assert_close(a2.timesteps, st.timesteps, rtol=0, atol=0.5)
        xx = torch.randn(2, 3, 4, 4, generator=rng)
        for tt1, tt2 in zip(a1.timesteps, a2.timesteps):
            m = torch.tanh(xx)
            o1 = a1.step(m, tt1, xx, seed=5).prev_sample
            o2 = a2.step(m, tt2, xx, seed=5).prev_sample
            torch.testing.assert_close(o1, o2, rtol=1e-6, atol=1e-6)
            xx = o1
        with pytest.raises(ValueError, match="timesteps|sigmas"):
            a2.set_timesteps(timesteps=[10, 500]) if cls is diffusers.DDIMScheduler else a2.set_timesteps(sigmas=[1.0, 2.0, 0.0])
    dpm, dpm_st = dd.accelerate(diffusers.DPMSolverMultistepScheduler()), diffusers.DPMSolverMultistepScheduler()
    dpm_st.set_timesteps(6)
    dpm.set_timesteps(sigmas=dpm_st.sigmas)
    assert torch.equal(dpm.sigmas, dpm_st.sigmas) and len(dpm.timesteps) == 6


def test_training_targets_flow_match(rng):
    """FlowMatch: x_t = (1 - s) x0 + s eps (stock's scale_noise with the same eps) and the
    velocity eps - x0, s = t / num_train_timesteps."""
    import diffaccel

    stock = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    stock.set_timesteps(10)
    x0 = torch.randn(4, 3, 6, 6, generator=rng)
    t = stock.timesteps[[0, 2, 5, 9]]
    seeds = torch.randint(0, 2**62, (4,), generator=rng)
    noisy, target = dd.training_targets(stock, x0, t, seed=seeds)
    eps = diffaccel.noise(x0.shape, seed=seeds)
    torch.testing.assert_close(noisy, stock.scale_noise(x0, t, eps), rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(target, eps - x0, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="timesteps: expected values in"):
        dd.training_targets(stock, x0, torch.tensor([0.0, 1.0, 2.0, 1001.0]), seed=1)
