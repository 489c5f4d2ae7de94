"""Shared cases of the diffusers drop-in's tests (tests/integrations/test_diffusers_*.py): the stock
scheduler configurations (``STOCK``), the comparison with stock's step (``close_to_stock``), the
fused-step launch counter, and :class:`FamilyChecks`, the checks every scheduler family runs
(a family's test file subclasses it with its configurations).

Tolerances: both implementations evaluate the same linear combinations (at most 4 products
summed, coefficients rounded to the working precision); ours rounds each coefficient once from
float64 and the result once, stock rounds after every operation. Elementwise, the two then differ
by at most a few units of roundoff of the *terms* (not of the result, which can cancel), so the
bound is ``8 eps (|x| + c_M |M| + |x0| + |x_prev|)`` with ``c_M`` the largest coefficient of M
in the step (VP eps: sqrt((1 - abar)/abar); sigma schedulers: sigma) and ``eps`` the unit roundoff
of the precision stock computes in (float32: 2^-24; bfloat16 model outputs with a bfloat16
sample: stock rounds every intermediate to bfloat16, 2^-8).
"""
import copy
import inspect
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

diffusers = pytest.importorskip("diffusers")

from diffaccel.integrations import diffusers as dd  # noqa: E402
from diffaccel.integrations._diffusers_base import ROW_B  # noqa: E402
from diffaccel.layout import coef_am, coef_width  # noqa: E402

from . import backend_params  # noqa: E402

STOCK = {
    "ddpm": (diffusers.DDPMScheduler, {}),
    "ddpm-v-large": (diffusers.DDPMScheduler, dict(prediction_type="v_prediction", variance_type="fixed_large",
                                                   beta_schedule="scaled_linear", clip_sample=False)),
    "ddim": (diffusers.DDIMScheduler, {}),
    "ddim-v-linspace": (diffusers.DDIMScheduler, dict(prediction_type="v_prediction", timestep_spacing="linspace",
                                                      clip_sample=False, set_alpha_to_one=False)),
    "ddim-sample-trailing": (diffusers.DDIMScheduler, dict(prediction_type="sample", timestep_spacing="trailing",
                                                           clip_sample_range=0.5)),
    "euler": (diffusers.EulerDiscreteScheduler, {}),
    "euler-v-karras": (diffusers.EulerDiscreteScheduler, dict(prediction_type="v_prediction", use_karras_sigmas=True,
                                                              beta_schedule="scaled_linear")),
    "euler-a": (diffusers.EulerAncestralDiscreteScheduler, {}),
    "euler-a-v-leading": (diffusers.EulerAncestralDiscreteScheduler, dict(prediction_type="v_prediction",
                                                                         timestep_spacing="leading", steps_offset=1)),
    "dpm": (diffusers.DPMSolverMultistepScheduler, {}),
    "dpm-3-heun-sigmamin": (diffusers.DPMSolverMultistepScheduler, dict(
        solver_order=3, solver_type="heun", beta_schedule="scaled_linear", final_sigmas_type="sigma_min",
        lower_order_final=False)),
    "dpm-3-v-lowerfinal-karras": (diffusers.DPMSolverMultistepScheduler, dict(
        solver_order=3, prediction_type="v_prediction", use_karras_sigmas=True)),
    "dpm-sde-heun": (diffusers.DPMSolverMultistepScheduler, dict(algorithm_type="sde-dpmsolver++", solver_type="heun")),
    "dpm-sde-3-eulerfinal": (diffusers.DPMSolverMultistepScheduler, dict(
        algorithm_type="sde-dpmsolver++", solver_order=3, euler_at_final=True, final_sigmas_type="sigma_min",
        prediction_type="sample")),
    "dpm-1": (diffusers.DPMSolverMultistepScheduler, dict(solver_order=1, use_karras_sigmas=True)),
    "flow": (diffusers.FlowMatchEulerDiscreteScheduler, dict(shift=3.0)),
    "flow-stochastic": (diffusers.FlowMatchEulerDiscreteScheduler, dict(stochastic_sampling=True)),
}
STEP_KW = {"ddim": [dict(eta=0.0), dict(eta=1.0), dict(eta=0.5, use_clipped_model_output=True)]}


def c_m(sched, t, i):
    """Largest coefficient of the model output in the step (see the module docstring)."""
    if isinstance(sched, diffusers.DPMSolverMultistepScheduler):
        # x0 = (x - sigma_t M)/alpha_t, then differences of the last three x0 over r0, r1
        return 32 * float(sched.sigmas[max(0, i - 2):i + 1].max()) / min(1.0, float(sched.sigmas[i + 1]) + 1e-3)
    if hasattr(sched, "sigmas") and not isinstance(sched, diffusers.DDPMScheduler):
        return float(sched.sigmas[i])
    a = float(sched.alphas_cumprod[int(t)])
    return max(1.0, math.sqrt((1 - a) / a))


def close_to_stock(ours, theirs, x, m, c_m, eps, what, hist=()):
    """Assert ``ours`` within the bound of the module docstring of stock's ``theirs`` (``hist``:
    (coefficient, past x0) pairs of a multistep step)."""
    ours, theirs = ours.double(), theirs.double()
    assert bool(torch.isfinite(theirs).all()), f"{what}: stock is not finite (a degenerate case)"
    scale = x.double().abs() + c_m * m.double().abs() + theirs.abs()
    for c, h in hist:  # multistep: the x0 predictions m_k enter with coefficients c_k
        scale = scale + abs(c) * h.double().abs()
    err = (ours - theirs).abs()
    bad = err > 8 * eps * scale + 1e-30
    n = int(bad.sum())
    assert n == 0, (f"{what}: {n} of {err.numel()} elements differ beyond 8 eps (|x| + c_M |M| + |y|); "
                    f"max error {err.max().item():.3g}, worst ratio {(err / scale).max().item():.3g} "
                    f"(eps {eps:.3g})")


def dpm_order_of_next_step(stock):
    """Which update stock's next step calls (its three update methods, spied on)."""
    calls = []
    for k, meth in enumerate(("dpm_solver_first_order_update", "multistep_dpm_solver_second_order_update",
                              "multistep_dpm_solver_third_order_update")):
        orig = getattr(type(stock), meth)
        setattr(stock, meth, (lambda o, kk: lambda *a, **kw: (calls.append(kk + 1), o(stock, *a, **kw))[1])(orig, k))
    state = (stock.model_outputs[:], stock.lower_order_nums, stock._step_index)
    x = torch.zeros(1, 1)
    try:
        with torch.no_grad():
            stock.step(x, stock.timesteps[stock._step_index or 0], x, variance_noise=x)
    finally:
        stock.model_outputs[:], stock.lower_order_nums, stock._step_index = state
        for meth in ("dpm_solver_first_order_update", "multistep_dpm_solver_second_order_update",
                     "multistep_dpm_solver_third_order_update"):
            delattr(stock, meth)
    return calls[0]


def scaled_input(s, x, t):
    """``s.scale_model_input(x, t)`` where the scheduler has one, else x."""
    return s.scale_model_input(x, t) if hasattr(s, "is_scale_input_called") else x


# the compiled backends that run the fused step here
STEP_OPS = [p.values[0] for p in backend_params("sample_step") if p.values[1] == "cpu" and not p.marks]


class CountSteps(TorchDispatchMode):
    """Records the names of the fused-step ops dispatched (any backend's)."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()
        if "sample_step" in name:
            self.names.append(name)
        return func(*args, **(kwargs or {}))


COMPILE_CONFIGS = {**STOCK, "dpm-3-sde": (diffusers.DPMSolverMultistepScheduler,
                                           dict(algorithm_type="sde-dpmsolver++", solver_order=3)),
                   "euler-churn": STOCK["euler"]}


class FamilyChecks:
    """The checks every scheduler family runs against stock. A family's test file subclasses it
    (``class TestVP(FamilyChecks)``) and names its configurations in the attributes below;
    :meth:`pytest_generate_tests` parametrizes each check with them.

    CLASSES: the stock classes of the family (``test_step_matches_stock`` runs every ``STOCK``
    configuration of them); BAD_INPUT: ``STOCK`` names; COMPILE (``COMPILE_CONFIGS`` names),
    BATCH, NONCONTIGUOUS: (name, step kwargs) cases."""

    CLASSES = ()
    BAD_INPUT = ()
    COMPILE = ()
    BATCH = ()
    NONCONTIGUOUS = ()

    def pytest_generate_tests(self, metafunc):
        check = metafunc.function.__name__
        if check == "test_step_matches_stock":
            metafunc.parametrize("noise", ["generator", "generators", "variance_noise"])
            metafunc.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
            metafunc.parametrize("name", [n for n, (cls, _) in STOCK.items() if cls in self.CLASSES])
        elif check == "test_bad_input_named_and_state_unchanged":
            metafunc.parametrize("name", self.BAD_INPUT)
        else:
            cases = {"test_step_compiles_without_graph_breaks": self.COMPILE,
                      "test_seeds_batch_invariant_bitwise": self.BATCH,
                      "test_noncontiguous_empty_and_nonfinite": self.NONCONTIGUOUS}[check]
            metafunc.parametrize("name,kw", cases, ids=[c[0] for c in cases])

    def test_step_matches_stock(self, name, dtype, noise, rng):
        cls, cfg = STOCK[name]
        if noise == "variance_noise" and "variance_noise" not in inspect.signature(cls.step).parameters:
            pytest.skip(f"{cls.__name__}.step takes no variance_noise")
        if dtype == torch.bfloat16 and noise != "generator":
            pytest.skip("bf16: the noise paths are dtype-independent; covered in float32 (test time)")
        stock = cls(**cfg)
        acc = dd.accelerate(stock)
        assert type(acc).__name__ == cls.__name__ and isinstance(acc, cls)
        n = 7
        stock.set_timesteps(n)
        acc.set_timesteps(n)
        torch.testing.assert_close(acc.timesteps, stock.timesteps, rtol=0, atol=0)
        B, S = 3, (2, 5, 3)
        x = (torch.randn(B, *S, generator=rng) * float(getattr(stock, "init_noise_sigma", 1.0))).to(dtype)
        eps_ = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -24
        kws = STEP_KW.get(name.split("-")[0], [{}])
        if cls is diffusers.EulerDiscreteScheduler:  # stock's churn: noise before the step
            # churn over part of the steps (stock draws at some steps only) and over all of them
            kws = [{}, dict(s_churn=1.0, s_tmin=0.5, s_tmax=10.0, s_noise=0.9), dict(s_churn=3.0)]
        for kw in kws:
            stock.set_timesteps(n)
            acc.set_timesteps(n)
            xs = x
            for i, t in enumerate(stock.timesteps):
                m = torch.randn(B, *S, generator=rng).to(dtype)
                seed = int(torch.randint(0, 2**31, (1,), generator=rng))
                gens = lambda: ([torch.Generator().manual_seed(seed + b) for b in range(B)]  # noqa: E731
                                if noise == "generators" else torch.Generator().manual_seed(seed))
                g_s, g_a = gens(), gens()
                extra_s, extra_a = dict(kw), dict(kw)
                if noise == "variance_noise":
                    vn = torch.randn(B, *S, generator=rng).to(dtype)
                    extra_s["variance_noise"] = extra_a["variance_noise"] = vn
                else:
                    extra_s["generator"], extra_a["generator"] = g_s, g_a
                ins, ina = scaled_input(stock, xs, t), scaled_input(acc, xs, t)
                close_to_stock(ina, ins, xs, xs, 0.0, 2 * eps_, f"{name} scale_model_input step {i}")
                hist = ()
                if isinstance(stock, diffusers.DPMSolverMultistepScheduler):  # stock's order, recorded
                    order = dpm_order_of_next_step(stock)
                    assert int(acc._da_order(acc._da_index(t, xs.device))) == order, f"order at step {i}"
                    # rounding bound of sum_k c_k m_k over the past x0 predictions m_1, m_2 with the
                    # step's coefficients (a wrong c_k gives errors ~ |c_k m_k|, far beyond it)
                    W = coef_width(stock.config.solver_order)  # the table's row B of each order
                    row = acc._da_tab[stock._step_index or 0, ROW_B + (order - 1) * W:ROW_B + order * W]
                    past = [h for h in stock.model_outputs[::-1] if h is not None]  # m_1, m_2
                    hist = [(float(row[coef_am(k + 1)]), h) for k, h in enumerate(past[:order - 1])]
                out_s = stock.step(m, t, xs, **extra_s)
                acc_before = copy.deepcopy(acc) if noise == "variance_noise" else None
                out_a = acc.step(m, t, xs, **extra_a)
                assert type(out_a) is type(out_s)
                for key in out_s.keys():
                    a_, s_ = out_a[key], out_s[key]
                    assert a_.dtype == s_.dtype, f"{key}: dtype {a_.dtype} != stock {s_.dtype}"
                    close_to_stock(a_, s_, xs, m, c_m(stock, t, i), eps_, f"{name} {kw} {noise} {key} step {i}", hist)
                if noise == "variance_noise":  # return_dict=False: stock's tuple (on a copy)
                    twin = copy.deepcopy(acc_before)
                    tup = twin.step(m, t, xs, return_dict=False, **extra_a)
                    assert isinstance(tup, tuple) and len(tup) == len(out_s)
                    assert torch.equal(tup[0], out_a.prev_sample)
                if noise != "variance_noise":  # the same number of draws from the same generators
                    for a_g, s_g in zip(*(g if isinstance(g, list) else [g] for g in (g_a, g_s))):
                        assert torch.equal(a_g.get_state(), s_g.get_state()), "generator states differ"
                if hasattr(stock, "step_index"):
                    assert acc.step_index == stock.step_index
                xs = out_s.prev_sample

    def test_bad_input_named_and_state_unchanged(self, name, rng):
        cls, cfg = STOCK[name]
        acc = dd.accelerate(cls(**cfg))
        acc.set_timesteps(5)
        x = torch.randn(2, 3, 4, 4, generator=rng)
        t = acc.timesteps[0]
        ctr = None if not hasattr(acc, "_da_i") else acc._da_i.clone()
        hist = list(getattr(acc, "model_outputs", []))
        kw = dict(eta=1.0) if name == "ddim" else {}
        with pytest.raises(ValueError, match="model_output: expected shape"):
            acc.step(x[:, :2], t, x, **kw)
        with pytest.raises(ValueError, match="model_output: expected a tensor on"):
            acc.step(x.to("meta"), t, x, **kw)
        with pytest.raises(TypeError, match="model_output: expected a float"):
            acc.step(x.to(torch.int32), t, x, **kw)
        with pytest.raises(ValueError, match="timestep: .* is not one of the scheduler's timesteps"):
            acc.step(x, t + 0.5 if name.startswith(("euler", "flow")) else int(t) + 1, x, **kw)
        if name != "euler":  # (the deterministic Euler step draws nothing to seed)
            with pytest.raises(ValueError, match="seed: expected shape"):
                acc.step(x, t, x, seed=torch.tensor([1, 2, 3]), **kw)
        if ctr is not None:
            assert torch.equal(acc._da_i, ctr), "a failed step moved the step counter"
        assert all(a is b for a, b in zip(hist, getattr(acc, "model_outputs", []))), "history moved"
        out = acc.step(x, t, x, **kw).prev_sample  # and the scheduler still works
        assert out.shape == x.shape and bool(torch.isfinite(out).all())

    def test_step_compiles_without_graph_breaks(self, name, kw):
        """Model call + scale_model_input + step: no graph break (dynamo.explain), and a compiled
        10-step loop compiles once (DPM-Solver: after init_history, which allocates its history of
        past x0 as zeros; a fresh run after set_timesteps reuses it), with the eager loop's result
        (noise from per-sample seeds, drawn in the kernel)."""
        from torch._dynamo.testing import CompileCounter

        cls, cfg = COMPILE_CONFIGS[name]
        acc = dd.accelerate(cls(**cfg), seed=torch.tensor([5, 6]))
        dpm = name.startswith("dpm")

        def f(x, t):
            m = torch.tanh(x) * 0.5  # a cheap stand-in for the model
            x_in = acc.scale_model_input(x, t) if hasattr(acc, "scale_model_input") else x
            return acc.step(m + 0 * x_in, t, x, return_dict=False, **kw)[0]

        acc.set_timesteps(10)
        x0 = torch.randn(2, 4, 8, 8)
        explain = torch._dynamo.explain(f)(x0, acc.timesteps[0])
        assert explain.graph_break_count == 0, [str(r.reason) for r in explain.break_reasons]
        acc.set_timesteps(10)
        x = x0.clone()
        for t in acc.timesteps:
            x = f(x, t)
        eager = x
        torch._dynamo.reset()
        cnt = CompileCounter()
        if dpm:  # a fresh scheduler: no history left from the eager run
            acc = dd.accelerate(cls(**cfg), seed=torch.tensor([5, 6]))
        g = torch.compile(f, backend=cnt, fullgraph=True)
        acc.set_timesteps(10)
        if dpm:
            acc.init_history(x0)
        x = x0.clone()
        for t in acc.timesteps:
            x = g(x, t)
        assert cnt.frame_count == 1, f"compiled {cnt.frame_count} times"
        torch.testing.assert_close(x, eager, rtol=1e-5, atol=1e-5)
        if dpm:  # a second run (set_timesteps keeps the history's tensors): no recompilation
            acc.set_timesteps(10)
            x = x0.clone()
            for t in acc.timesteps:
                x = g(x, t)
            assert cnt.frame_count == 1, f"compiled {cnt.frame_count} times"
            torch.testing.assert_close(x, eager, rtol=1e-5, atol=1e-5)

    def test_seeds_batch_invariant_bitwise(self, name, kw, rng):
        """accelerate(seed=(B,) seeds): sample i is bitwise the same alone or in a batch of 8."""
        cls, cfg = STOCK[name]
        seeds = torch.randint(0, 2**62, (8,), generator=rng)
        x0 = torch.randn(8, 3, 5, 6, generator=rng)

        def run(idx, sd=seeds):
            acc = dd.accelerate(cls(**cfg), seed=sd[idx])
            acc.set_timesteps(5)
            x = x0[idx].clone()
            for t in acc.timesteps:
                x_in = acc.scale_model_input(x, t) if hasattr(acc, "scale_model_input") else x
                x = acc.step(torch.tanh(x_in), t, x, **kw).prev_sample  # a per-sample "model"
            return x

        full = run(slice(0, 8))
        for i in (0, 5):
            alone = run(slice(i, i + 1))
            assert torch.equal(alone[0], full[i]), f"sample {i}: max diff {(alone[0] - full[i]).abs().max()}"
        assert not torch.equal(run(slice(0, 8), seeds + 1), full), "other seeds, same samples"
        # a seed per step call (step(..., seed=)) overrides the scheduler's
        acc = dd.accelerate(cls(**cfg))
        acc.set_timesteps(5)
        t = acc.timesteps[0]
        x = x0.clone()
        x_in = acc.scale_model_input(x, t) if hasattr(acc, "scale_model_input") else x
        a = acc.step(torch.tanh(x_in), t, x, seed=seeds, **kw).prev_sample
        assert bool(torch.isfinite(a).all())

    def test_noncontiguous_empty_and_nonfinite(self, name, kw, rng):
        """Non-contiguous inputs give stock's values; an empty batch works; a NaN in one sample
        stays in that sample."""
        cls, cfg = STOCK[name]
        st, acc = cls(**cfg), dd.accelerate(cls(**cfg))
        st.set_timesteps(4)
        acc.set_timesteps(4)
        x = torch.randn(3, 4, 5, 6, generator=rng).transpose(2, 3)
        m = torch.randn(3, 4, 5, 6, generator=rng).transpose(2, 3)
        t = st.timesteps[0]
        a = acc.step(m, t, x, generator=torch.Generator().manual_seed(1), **kw).prev_sample
        b = st.step(m, t, x, generator=torch.Generator().manual_seed(1), **kw).prev_sample
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
        e = torch.zeros(0, 4, 6, 5)
        acc = dd.accelerate(cls(**cfg), seed=1)
        acc.set_timesteps(4)
        assert acc.step(e, acc.timesteps[0], e, **kw).prev_sample.shape == e.shape
        acc = dd.accelerate(cls(**cfg), seed=torch.arange(3))
        acc.set_timesteps(4)
        xn = x.clone()
        xn[0, 0, 0, 0] = float("nan")
        out = acc.step(m, acc.timesteps[0], xn, **kw).prev_sample
        assert not bool(torch.isnan(out[1:]).any()) and int(torch.isnan(out[0]).sum()) == 1
