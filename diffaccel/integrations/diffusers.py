"""diffusers drop-in: accelerated schedulers and fused training targets.

    pipe.scheduler = diffaccel.integrations.diffusers.accelerate(pipe.scheduler)

returns an instance of a subclass of the stock scheduler class (same name, same config, same
method signatures and outputs) whose ``step()`` runs on diffaccel's fused step op with per-step
coefficient tables on the device and no host synchronization. Extras: ``seed=`` (noise drawn in
the kernel; per-sample seeds give batch-invariant images), custom ``timesteps=`` / ``sigmas=``
(VRG trajectories), and :func:`training_targets` (noisy input and target in one fused pass, with
optional stroke-size noising).
"""
import warnings

import torch

try:
    import diffusers as diffusers_stock
except ImportError as e:  # pragma: no cover (the test environment has it)
    raise ImportError("diffaccel.integrations.diffusers needs diffusers: "
                      "pip install 'diffusers>=0.42,<0.43' (the release line it is tested "
                      "against; from a clone of diffaccel: pip install --no-build-isolation "
                      "'.[diffusers]')") from e

from .. import _validate
from ..stroke import stroke_noise
from ._diffusers_base import Stroke, stroke_weights_for
from ._diffusers_flow import FlowMatchEulerDiscreteScheduler
from ._diffusers_multistep import DPMSolverMultistepScheduler
from ._diffusers_sigma import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from ._diffusers_vp import DDIMScheduler, DDPMScheduler

ACCELERATED = {cls.__name__: cls for cls in (
    DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler,
    DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler)}


def _stock_class(scheduler):
    """The stock diffusers class of ``scheduler`` (itself, or the base of an accelerated one)."""
    for cls in type(scheduler).__mro__:
        if cls.__module__.startswith("diffusers."):
            return cls
    return None


def accelerate(scheduler, *, seed=None, strict=True, track_logp=False):
    """An accelerated copy of a diffusers ``scheduler`` (same config; the input is left as is).

    seed: None (noise as stock draws it: from ``generator``, else torch's global generator), an
    int, or a (B,) integer tensor of per-sample seeds: noise drawn inside the fused step from
    diffaccel's Philox stream (image i depends only on seed i). A ``generator`` passed to
    ``step`` still takes precedence, so pipelines that pass one get stock's noise.
    track_logp: keep ``scheduler.logp`` (B,), each sample's log-density, updated in the step
    (stochastic schedulers only). strict: raise ValueError for a scheduler or config that has no
    accelerated step; with strict=False return ``scheduler`` itself with a warning.
    """
    stock = _stock_class(scheduler)
    name = stock.__name__ if stock is not None else type(scheduler).__name__
    try:
        if name not in ACCELERATED:
            raise ValueError(f"scheduler: {name} has no accelerated step (supported: "
                             f"{', '.join(ACCELERATED)})")
        new = ACCELERATED[name].from_config(scheduler.config)
        new._da_check_config()
        new._da_init(seed, track_logp)
    except ValueError as e:
        if strict:
            raise
        warnings.warn(f"diffaccel: returning the stock scheduler unchanged ({e})", stacklevel=2)
        return scheduler
    if getattr(scheduler, "num_inference_steps", None) is not None:
        _copy_schedule(scheduler, new)
    return new


def _copy_schedule(old, new):
    """Carry a schedule already set on ``old`` over to ``new``."""
    dev = old.timesteps.device
    if isinstance(new, (DDIMScheduler, DDPMScheduler)):
        new.set_timesteps(old.num_inference_steps, device=dev)
        if not torch.equal(new.timesteps.cpu(), old.timesteps.cpu()):
            new.set_timesteps(timesteps=old.timesteps.cpu().tolist(), device=dev)
    else:  # the sigma schedulers: stock's arrays as they are (mu, custom sigmas, ... included)
        new.num_inference_steps = old.num_inference_steps
        new.sigmas = old.sigmas.clone()
        new.timesteps = old.timesteps.clone()
        if hasattr(new, "model_outputs"):
            new.model_outputs = [None] * new.config.solver_order
        new._da_build(dev)
    begin = getattr(old, "_begin_index", None)
    if begin is not None:
        new.set_begin_index(begin)


def _alpha_sigma(scheduler, timesteps, B, device):
    """Per-sample (alpha, sigma) of the scheduler's forward process at training ``timesteps``."""
    T = scheduler.config.num_train_timesteps
    if not isinstance(timesteps, torch.Tensor):
        timesteps = torch.as_tensor(timesteps)
    if timesteps.dim() == 0:
        timesteps = timesteps.expand(B)
    if tuple(timesteps.shape) != (B,):
        raise ValueError(f"timesteps: expected shape ({B},) (one per sample), got {tuple(timesteps.shape)}")
    if _is_flow(scheduler):  # x_t = (1 - s) x0 + s eps, s = t / T (stock's timesteps = s T)
        s = timesteps.to(device=device, dtype=torch.float64) / T
        if _validate.eager() and s.numel() and not bool(((s >= 0) & (s <= 1)).all()):
            raise ValueError(f"timesteps: expected values in [0, {T}] (sigma * num_train_timesteps)")
        return 1 - s, s
    if timesteps.is_floating_point() or timesteps.dtype == torch.bool or timesteps.is_complex():
        raise TypeError(f"timesteps: expected an integer tensor of training timesteps, got {timesteps.dtype}")
    t = timesteps.to(device=device, dtype=torch.int64)
    if _validate.eager() and t.numel() and not bool(((t >= 0) & (t < T)).all()):
        raise ValueError(f"timesteps: expected integers in [0, {T}), got min {int(t.min())}, max {int(t.max())}")
    ac = scheduler.alphas_cumprod.to(device=device, dtype=torch.float64)[t]
    if isinstance(scheduler, (diffusers_stock.EulerDiscreteScheduler, diffusers_stock.EulerAncestralDiscreteScheduler)):
        return torch.ones_like(ac), ((1 - ac) / ac).sqrt()
    return ac.sqrt(), (1 - ac).sqrt()


def _is_flow(scheduler):
    return isinstance(scheduler, diffusers_stock.FlowMatchEulerDiscreteScheduler)


_TARGETS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def training_targets(scheduler, x0, timesteps, *, seed, stroke=None):
    """``(noisy, target)`` for one training step of a model used with ``scheduler``, in one
    fused pass (``diffaccel.stroke_noise``: the noise is drawn in the kernel, never stored).

    x0: (B, C, H, W) clean samples; timesteps: (B,) integer training timesteps; seed: int or (B,)
    integer tensor (per-sample seeds: each sample's noise independent of the batch).
    noisy = alpha A x0 + sigma A eps with stock's forward process (DDPM/DDIM: alpha =
    sqrt(abar_t), sigma = sqrt(1 - abar_t); Euler: alpha = 1, sigma = sqrt((1 - abar_t)/abar_t))
    and the target of ``config.prediction_type``: epsilon A eps, sample A x0, v_prediction
    alpha A eps - sigma A x0 (VP schedulers); FlowMatch: x_t = (1 - s) A x0 + s A eps with
    s = timesteps / num_train_timesteps (float timesteps allowed) and the velocity A eps - A x0. A is the identity without ``stroke``; with
    ``stroke`` (a :class:`Stroke`, or a tuple of scales) the multi-scale block blur of docs/math.md.
    """
    stock = _stock_class(scheduler)
    name = stock.__name__ if stock is not None else type(scheduler).__name__
    if name not in ACCELERATED:
        raise ValueError(f"scheduler: {name} is not supported by training_targets (supported: "
                         f"{', '.join(ACCELERATED)})")
    x0 = _validate.image(x0, "x0")
    B = x0.shape[0]
    flow = _is_flow(scheduler)
    pred = "flow" if flow else scheduler.config.prediction_type
    if not flow and pred not in _TARGETS:
        raise ValueError(f"prediction_type: {pred!r} has no training target (supported: {', '.join(_TARGETS)})")
    is_sigma = name.startswith("Euler")
    if is_sigma and pred == "v_prediction":
        raise ValueError("prediction_type: v_prediction training targets are defined for the VP "
                         "schedulers (DDPM, DDIM); train with DDPMScheduler's config")
    alpha, sigma = _alpha_sigma(scheduler, timesteps, B, x0.device)
    if stroke is None:
        scales = (2,)  # zero weights: A is the identity
        w = torch.zeros(B, 1, dtype=torch.float32, device=x0.device)
    else:
        scales, w = stroke_weights_for(stroke, alpha, sigma)
    noisy, target = stroke_noise(x0, alpha.to(torch.float32), sigma.to(torch.float32), scales=scales,
                                 data_weights=w, noise_weights=w, seed=seed,
                                 target="v" if flow else _TARGETS[pred])
    if flow:
        # the flow velocity A eps - A x0 from x_t = (1-s) A x0 + s A eps and v = (1-s) A eps - s A x0
        # (a rotation: well conditioned for every s): u = ((2s - 1) x_t + v) / ((1-s)^2 + s^2)
        sh = (B,) + (1,) * (x0.dim() - 1)
        s = sigma.reshape(sh)
        det = (1 - s) ** 2 + s ** 2
        target = (((2 * s - 1) / det).to(torch.float32) * noisy.float()
                  + (1 / det).to(torch.float32) * target.float()).to(x0.dtype)
    return noisy, target


def model_output_and_divergence(fn, sample, *, probes=1, seed=None, probe_dist="rademacher"):
    """``(model_output, divergence)``: ``fn(sample)`` and a (B,) Hutchinson estimate of its
    divergence div_x fn(x) = tr(d fn / dx) per sample (docs/math.md 3.2), for
    ``DDIMScheduler.step(..., divergence=)`` with ``track_logp``:

        divergence_b ~ (1/P) sum_p v_p^T (d fn_b / dx_b) v_p

    one vector-Jacobian product through ``fn`` per probe v_p (independent Rademacher entries, or
    ``probe_dist="normal"``), drawn with diffaccel's probe stream (``seed``: an int or (B,)
    per-sample seeds; None: a fresh seed from torch's global generator; use a different seed at
    every step so the estimates' errors average out over the steps). fn: sample (B, ...) ->
    model output shaped like sample (e.g. ``lambda x: unet(x, t).sample``). model_output comes
    back detached; the estimate is float32 (float64 for a float64 sample). Cost: one forward
    and P backward passes."""
    from ..sampling._driver import PROBE_BASE, _check_probes, draw_probes

    if not callable(fn):
        raise TypeError(f"fn: expected a callable sample -> model output, got {type(fn).__name__}")
    if not isinstance(sample, torch.Tensor) or not sample.is_floating_point() or sample.dim() < 1:
        raise TypeError("sample: expected a floating-point (B, ...) tensor")
    P = _check_probes(probes)
    if probe_dist not in ("rademacher", "normal"):
        raise ValueError(f"probe_dist: expected 'rademacher' or 'normal', got {probe_dist!r}")
    if seed is None:
        seed = int(torch.randint(0, 2 ** 62, ()).item())

    def call(x):
        out = fn(x)
        if not isinstance(out, torch.Tensor) or out.shape != sample.shape:
            raise ValueError(f"fn: expected a model output of shape {tuple(sample.shape)} (that of "
                             f"sample), got {tuple(getattr(out, 'shape', ())) or type(out).__name__}")
        return out

    B = sample.shape[0]
    ct = torch.promote_types(sample.dtype, torch.float32)
    est = torch.zeros(B, dtype=ct, device=sample.device)
    if B == 0:
        with torch.no_grad():
            return call(sample), est
    v = draw_probes(sample, P, seed, PROBE_BASE, probe_dist)  # (P, B, ...)
    with torch.enable_grad():
        xr = sample.detach().requires_grad_(True)
        out = call(xr)
        if out.requires_grad:  # else fn does not depend on its input: divergence 0
            for p in range(P):
                (g,) = torch.autograd.grad(out, xr, v[p].to(out.dtype), retain_graph=p < P - 1)
                est += (g.to(ct) * v[p].to(ct)).reshape(B, -1).sum(1)
            est /= P
    return out.detach(), est


__all__ = ["accelerate", "training_targets", "model_output_and_divergence", "Stroke",
           "DDPMScheduler", "DDIMScheduler",
           "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
           "FlowMatchEulerDiscreteScheduler", "ACCELERATED"]
