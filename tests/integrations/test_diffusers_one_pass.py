"""Every accelerated diffusers step() is one fused step launch (issue: "each step() is one fused
kernel launch over the latents"): the ops dispatched during a step() are counted with a
TorchDispatchMode, for every scheduler configuration of tests/support/diffusers_cases.py."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffaccel.backends import use_backend  # noqa: E402
from diffaccel.integrations import diffusers as dd  # noqa: E402
from support.diffusers_cases import STEP_KW, STEP_OPS, STOCK, CountSteps  # noqa: E402


def _cases():
    out = []
    for name in STOCK:
        for kw in STEP_KW.get(name.split("-")[0] if name.startswith("ddim") else name, [{}]):
            tag = "-".join(f"{k}={v}" for k, v in kw.items()) or "default"
            out.append(pytest.param(name, kw, id=f"{name}-{tag}"))
    # Euler's churn: a partial range (stock's draw decision read on the host) and every step
    for kw in (dict(s_churn=1.0, s_tmin=0.5, s_tmax=10.0), dict(s_churn=3.0)):
        out.append(pytest.param("euler", kw, id="euler-churn-" + "-".join(f"{k}={v}" for k, v in kw.items())))
    return out


@pytest.mark.skipif(not STEP_OPS, reason="no compiled backend runs on this machine")
@pytest.mark.parametrize("name,kw", _cases())
def test_each_step_is_one_fused_launch(name, kw, rng):
    cls, cfg = STOCK[name]
    sched = dd.accelerate(cls(**cfg))
    sched.set_timesteps(6)
    B, S = 2, (3, 8, 8)
    x = torch.randn(B, *S, generator=rng)
    if hasattr(sched, "init_noise_sigma"):
        x = x * float(sched.init_noise_sigma)
    with use_backend(STEP_OPS[0]):
        for t in sched.timesteps:
            m = torch.randn(B, *S, generator=rng)
            counter = CountSteps()
            with counter:
                out = sched.step(m, t, x, generator=torch.Generator().manual_seed(1), return_dict=False, **kw)
            assert len(counter.names) == 1, f"{name} at t={float(t)}: fused step ops {counter.names}"
            x = out[0]
    assert torch.isfinite(x).all()


def test_clipped_x0_is_returned_and_used(rng):
    """DDPM with clip_sample: pred_original_sample is the clamped x0 of the same pass (one launch)
    and equals stock's (the clamp happens inside the fused step)."""
    stock = diffusers.DDPMScheduler(clip_sample=True, clip_sample_range=0.3)
    acc = dd.accelerate(diffusers.DDPMScheduler(clip_sample=True, clip_sample_range=0.3))
    for s in (stock, acc):
        s.set_timesteps(5)
    x = torch.randn(2, 3, 8, 8, generator=rng)
    m = torch.randn(2, 3, 8, 8, generator=rng)
    t = stock.timesteps[1]
    a = acc.step(m, t, x, generator=torch.Generator().manual_seed(3))
    b = stock.step(m, t, x, generator=torch.Generator().manual_seed(3))
    r = torch.tensor(0.3)  # (in float32)
    assert bool((a.pred_original_sample.abs() <= r).all())
    assert bool((a.pred_original_sample.abs() == r).any()), "the test should clamp some elements"
    torch.testing.assert_close(a.pred_original_sample, b.pred_original_sample, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.prev_sample, b.prev_sample, atol=1e-5, rtol=1e-5)
