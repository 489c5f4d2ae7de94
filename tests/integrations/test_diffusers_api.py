"""diffaccel.integrations.diffusers' entry points: accelerate() (configs, signatures, saving,
named errors, a schedule already set), the accelerated steps on every backend, training_targets
and add_noise (with and without stroke) against stock, and a VRG trajectory through
set_timesteps."""
import inspect

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from support import backend_params  # noqa: E402
from support.diffusers_cases import STOCK  # noqa: E402
from diffaccel.backends import use_backend  # noqa: E402
from diffaccel.integrations import diffusers as dd  # noqa: E402


def _public(cfg):
    return {k: v for k, v in dict(cfg).items() if not k.startswith("_")}


def test_accelerate_config_and_errors(tmp_path):
    for cls, cfg in STOCK.values():
        stock = cls(**cfg)
        acc = dd.accelerate(stock)
        assert _public(acc.config) == _public(stock.config)
        again = type(acc).from_config(acc.config)
        assert type(again) is type(acc) and _public(again.config) == _public(stock.config)
        acc.save_config(tmp_path / cls.__name__)
        loaded = cls.from_pretrained(tmp_path / cls.__name__)
        assert type(loaded) is cls  # the saved class name is stock's
        assert _public(loaded.config) == _public(stock.config)
        for meth in ("step", "set_timesteps", "scale_model_input", "add_noise"):
            if not hasattr(stock, meth):
                continue
            ps = list(inspect.signature(getattr(stock, meth)).parameters.values())
            pa = list(inspect.signature(getattr(acc, meth)).parameters.values())
            assert [p.name for p in ps] == [p.name for p in pa[:len(ps)]], meth
            for p, q in zip(ps, pa):  # same defaults (num_inference_steps may become optional:
                assert p.default == q.default or (p.default is p.empty and q.name == "num_inference_steps"), \
                    (meth, p.name)  # custom timesteps/sigmas are the alternative)
            assert all(p.kind == p.KEYWORD_ONLY or p.default is not p.empty for p in pa[len(ps):]), meth
    with pytest.raises(ValueError, match="PNDMScheduler.*supported: DDPMScheduler"):
        dd.accelerate(diffusers.PNDMScheduler())
    with pytest.warns(UserWarning, match="stock scheduler"):
        s = diffusers.PNDMScheduler()
        assert dd.accelerate(s, strict=False) is s
    with pytest.raises(ValueError, match="thresholding"):
        dd.accelerate(diffusers.DDIMScheduler(thresholding=True))
    with pytest.raises(ValueError, match="variance_type='learned'"):
        dd.accelerate(diffusers.DDPMScheduler(variance_type="learned"))
    with pytest.raises(ValueError, match="track_logp.*deterministic"):
        dd.accelerate(diffusers.EulerDiscreteScheduler(), track_logp=True)
    # a schedule already set carries over
    for st in (diffusers.DDIMScheduler(), diffusers.EulerAncestralDiscreteScheduler(),
               diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True),
               diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)):
        st.set_timesteps(6, **({"mu": 0.7} if isinstance(st, diffusers.FlowMatchEulerDiscreteScheduler) else {}))
        acc = dd.accelerate(st)
        assert torch.equal(acc.timesteps, st.timesteps)
        if hasattr(st, "sigmas"):
            assert torch.equal(acc.sigmas, st.sigmas)
        x = torch.randn(1, 2, 3, 3)
        assert acc.step(x, acc.timesteps[0], x).prev_sample.shape == x.shape


def test_step_backends(rng):
    """The accelerated DDIM (eta > 0, clipped) and EulerAncestral steps agree on every backend."""
    outs = {}
    params = [p for p in backend_params("sample_step") if p.values[1] == "cpu" and not p.marks]
    x = torch.randn(2, 3, 4, 5, generator=rng)
    m = torch.randn(2, 3, 4, 5, generator=rng)
    z = torch.randn(2, 3, 4, 5, generator=rng)
    for name in ["reference"] + [p.values[0] for p in params]:
        res = []
        with use_backend(name):
            for cls in (dd.DDIMScheduler, dd.EulerAncestralDiscreteScheduler):
                s = cls()
                s.set_timesteps(5)
                t = s.timesteps[1]
                if cls is dd.DDIMScheduler:
                    res.append(s.step(m, t, x, eta=0.7, variance_noise=z).prev_sample)
                else:
                    s.set_begin_index(1)
                    res.append(s.step(m, t, x, seed=torch.tensor([3, 4])).prev_sample)
        outs[name] = res
    for name, res in outs.items():
        for r, e in zip(res, outs["reference"]):
            torch.testing.assert_close(r, e, rtol=1e-5, atol=1e-5 * e.abs().max().item(), msg=name)


@pytest.mark.parametrize("name", ["ddpm", "ddpm-v-large", "ddim-sample-trailing", "euler"])
def test_training_targets_match_stock_add_noise(name, rng):
    """No stroke: noisy = stock add_noise(x0, eps, t) and the target of the prediction type, with
    eps the Philox normals of the seed (diffaccel.noise); per-sample seeds: batch-invariant."""
    import diffaccel

    cls, cfg = STOCK[name]
    stock = cls(**cfg)
    B = 5
    x0 = torch.randn(B, 3, 6, 7, generator=rng)
    t = torch.randint(0, 1000, (B,), generator=rng)
    seeds = torch.randint(0, 2**62, (B,), generator=rng)
    for sched in (stock, dd.accelerate(stock)):  # stock or accelerated: the same targets
        noisy, target = dd.training_targets(sched, x0, t, seed=seeds)
        eps = diffaccel.noise(x0.shape, seed=seeds)
        if name == "euler":
            ac = stock.alphas_cumprod[t].double()
            ref = x0.double() + ((1 - ac) / ac).sqrt()[:, None, None, None] * eps.double()
        else:
            ref = stock.add_noise(x0, eps, t)
        tol = dict(rtol=2e-6, atol=2e-6 * ref.abs().max().item())
        torch.testing.assert_close(noisy.double(), ref.double(), **tol)
        pred = stock.config.prediction_type
        want = {"epsilon": eps, "sample": x0}.get(pred)
        if pred == "v_prediction":
            want = stock.get_velocity(x0, eps, t)
        torch.testing.assert_close(target.double(), want.double(), rtol=2e-6, atol=2e-6)
    one_noisy, one_target = dd.training_targets(stock, x0[2:3], t[2:3], seed=seeds[2:3])
    assert torch.equal(one_noisy, noisy[2:3]) and torch.equal(one_target, target[2:3])


def test_training_targets_and_add_noise_with_stroke(rng):
    """stroke=: alpha A_w x0 + sigma A_w eps (diffaccel.stroke_blur), weights of the log-SNR."""
    import diffaccel

    stock = diffusers.DDPMScheduler(prediction_type="v_prediction")
    acc = dd.accelerate(stock)
    B = 4
    x0 = torch.randn(B, 2, 8, 8, generator=rng)
    t = torch.tensor([0, 300, 700, 999])
    st = dd.Stroke(scales=(2, 4))
    noisy, target = dd.training_targets(acc, x0, t, seed=7, stroke=st)
    eps = diffaccel.noise(x0.shape, seed=7)
    a = stock.alphas_cumprod[t].double().sqrt()
    s = (1 - stock.alphas_cumprod[t].double()).sqrt()
    w = diffaccel.stroke_weights((2 * (a.log() - s.log())).float(), (2, 4))
    assert bool((w[-1] > w[0]).all()), "coarser strokes weigh more at low SNR"
    Ax, Ae = (diffaccel.stroke_blur(v, w, (2, 4), backend="reference").double() for v in (x0, eps))
    r = lambda v: v[:, None, None, None]  # noqa: E731
    torch.testing.assert_close(noisy.double(), r(a) * Ax + r(s) * Ae, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(target.double(), r(a) * Ae - r(s) * Ax, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(acc.add_noise(x0, eps, t, stroke=st).double(), r(a) * Ax + r(s) * Ae,
                               rtol=1e-5, atol=1e-5)
    assert torch.equal(acc.add_noise(x0, eps, t), stock.add_noise(x0, eps, t))
    with pytest.raises(ValueError, match="timesteps: expected integers in"):
        dd.training_targets(acc, x0, torch.tensor([0, 1, 2, 1000]), seed=1)
    with pytest.raises(ValueError, match="timesteps: expected shape"):
        dd.training_targets(acc, x0, torch.tensor([0, 1]), seed=1)
    with pytest.raises(ValueError, match="seed: expected shape"):
        dd.training_targets(acc, x0, t, seed=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="PNDMScheduler"):
        dd.training_targets(diffusers.PNDMScheduler(), x0, t, seed=1)


def test_vrg_trajectory_end_to_end(rng):
    """A VRG-optimized trajectory goes straight into set_timesteps: DDIM with
    vrg.to_timesteps (each step goes to the next timestep of the trajectory, checked against the
    float64 DDIM formula), EulerAncestral with vrg.to_sigmas."""
    import diffaccel.vrg as vrg

    ddim = dd.accelerate(diffusers.DDIMScheduler(clip_sample=False))
    ac = ddim.alphas_cumprod.double()
    t_all = torch.arange(1000)
    table = vrg.MSETable(ac, 0.05 + 0.5 * (1 - ac) * ac, t_all)  # a smooth synthetic error curve
    init = ac[torch.linspace(0, 999, 8).round().long()]
    res = vrg.optimize_trajectory(init, table, solver="ddim", lp=0.01, candidates=2, steps=30)
    ts = vrg.to_timesteps(res.abar, ddim)
    ddim.set_timesteps(timesteps=ts)
    assert torch.equal(ddim.timesteps, ts) and ddim.num_inference_steps == len(ts)
    x = torch.randn(2, 3, 4, 4, generator=rng)
    for k, t in enumerate(ddim.timesteps):
        eps = torch.tanh(x)
        a = ac[int(t)]
        ap = ac[int(ts[k + 1])] if k + 1 < len(ts) else ddim.final_alpha_cumprod.double()
        x0 = (x.double() - (1 - a).sqrt() * eps.double()) / a.sqrt()
        want = ap.sqrt() * x0 + (1 - ap).sqrt() * eps.double()
        x = ddim.step(eps, t, x).prev_sample
        torch.testing.assert_close(x.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    ea = dd.accelerate(diffusers.EulerAncestralDiscreteScheduler(), seed=3)
    ea.set_timesteps(sigmas=vrg.to_sigmas(res.abar))
    assert ea.num_inference_steps == len(ts) and float(ea.sigmas[-1]) == 0.0
    x = torch.randn(2, 3, 4, 4, generator=rng) * float(ea.init_noise_sigma)
    for t in ea.timesteps:
        x = ea.step(torch.tanh(ea.scale_model_input(x, t)), t, x).prev_sample
    assert bool(torch.isfinite(x).all())
