"""The accelerated diffusers steps' fast paths against stock diffusers: the folded coefficient
tables cached per DDIM call variant (eta, use_clipped_model_output), and the eager step counter
that skips the first step's timestep lookup once a step has set it (reset by set_timesteps, left
alone by a failed step). The general step-by-step comparison is FamilyChecks.test_step_matches_stock
(tests/support/diffusers_cases.py)."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffaccel.integrations import diffusers as dd  # noqa: E402
from support.diffusers_cases import c_m, close_to_stock, scaled_input  # noqa: E402

EPS = 2.0 ** -24


def test_ddim_call_variants_mixed_in_one_run(rng):
    """eta and use_clipped_model_output change from step to step (each variant has its own
    cached folded table): every step matches stock's with the same variance_noise."""
    cfg = dict(prediction_type="sample", clip_sample_range=0.7)  # clipping and the clipped eps differ
    stock = diffusers.DDIMScheduler(**cfg)
    acc = dd.accelerate(diffusers.DDIMScheduler(**cfg))
    variants = [dict(eta=0.0), dict(eta=1.0), dict(eta=0.5, use_clipped_model_output=True),
                dict(eta=0.5), dict(eta=1.0, use_clipped_model_output=True)]
    B, S = 3, (2, 5, 3)
    for n in (9, 6):  # a second schedule: the cached tables are rebuilt
        stock.set_timesteps(n)
        acc.set_timesteps(n)
        x = torch.randn(B, *S, generator=rng)
        order = torch.randperm(len(variants), generator=rng).tolist()
        for i, t in enumerate(stock.timesteps):
            kw = variants[order[i % len(order)]]
            m = torch.randn(B, *S, generator=rng)
            vn = torch.randn(B, *S, generator=rng)
            out_s = stock.step(m, t, x, variance_noise=vn, **kw)
            out_a = acc.step(m, t, x, variance_noise=vn, **kw)
            for key in out_s.keys():
                close_to_stock(out_a[key], out_s[key], x, m, c_m(stock, t, i), EPS, f"n={n} {kw} {key} step {i}")
            x = out_s.prev_sample


@pytest.mark.parametrize("name", ["euler-a", "dpm-3", "flow"])
def test_step_counter_restarts(name, rng):
    """Start mid-schedule (stock finds the timestep), run a few steps, restart from a new
    set_timesteps at another timestep, and recover from a failed first step: the step index
    and every output follow stock's."""
    cls, cfg = {"euler-a": (diffusers.EulerAncestralDiscreteScheduler, {}),
                "dpm-3": (diffusers.DPMSolverMultistepScheduler, dict(solver_order=3)),
                "flow": (diffusers.FlowMatchEulerDiscreteScheduler, dict(shift=3.0))}[name]
    stock, acc = cls(**cfg), dd.accelerate(cls(**cfg))
    B, S = 2, (4, 3, 3)
    for n, start, steps in ((10, 3, 4), (7, 0, 3), (12, 5, 7)):
        stock.set_timesteps(n)
        acc.set_timesteps(n)
        x = torch.randn(B, *S, generator=rng) * float(getattr(stock, "init_noise_sigma", 1.0))
        with pytest.raises(ValueError, match="model_output"):  # a failed first step moves nothing
            acc.step(torch.randn(B + 1, *S), stock.timesteps[start], x)
        for i, t in enumerate(stock.timesteps[start:start + steps]):
            m = torch.randn(B, *S, generator=rng)
            kw_s, kw_a = {}, {}
            if name == "euler-a":  # the same draws from two generators seeded alike
                seed = int(torch.randint(0, 2**31, (1,), generator=rng))
                kw_s, kw_a = (dict(generator=torch.Generator().manual_seed(seed)) for _ in range(2))
            ins, ina = scaled_input(stock, x, t), scaled_input(acc, x, t)
            close_to_stock(ina, ins, x, x, 0.0, 2 * EPS, f"{name} n={n} scale_model_input step {start + i}")
            out_s = stock.step(m, t, x, **kw_s)
            out_a = acc.step(m, t, x, **kw_a)
            assert acc.step_index == stock.step_index == start + i + 1, f"{name} n={n} step index"
            for key in out_s.keys():
                close_to_stock(out_a[key], out_s[key], x, m, c_m(stock, t, start + i), EPS,
                       f"{name} n={n} {key} step {start + i}")
            x = out_s.prev_sample
