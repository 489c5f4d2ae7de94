"""Train the demo's two eps-prediction models on the digits (the script that made the shipped
weights): ``python -m diffaccel.demo.train [--steps N] [--out DIR]``.

Both models are the same small ``diffusers.UNet2DModel`` trained with the same budget (steps,
batch, optimizer, seeds) on the DDPM linear schedule (1000 steps, betas 1e-4 to 0.02); they
differ only in the noising:

- ``plain``:  x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps, target eps;
- ``stroke``: x_t = sqrt(abar) A_w x_0 + sqrt(1 - abar) A_w eps, target A_w eps, with the stroke
  operator A_w at scales (2, 4) and the default weights ``diffaccel.stroke_weights(logsnr)``
  (coarse at low SNR, vanishing at high SNR; docs/math.md, "Stroke operator").

The noising is ``diffaccel.integrations.diffusers.training_targets``: one fused
``diffaccel.stroke_noise`` pass (noise drawn inside the kernel from per-sample seeds; without
``stroke`` it is the plain noising). Weights are saved as float16
safetensors (the exponential moving average of the parameters).
"""
import argparse
import math
import os
import time

import torch

SCALES = (2, 4)
NUM_TRAIN_TIMESTEPS = 1000
KINDS = ("plain", "stroke")
TRAIN_STEPS_DEFAULT = 1500  # the shipped weights
WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "weights")


def unet_config():
    """The UNet2DModel config of both demo models (about 0.7M parameters)."""
    return dict(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                block_out_channels=(32, 64), norm_num_groups=8,
                down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "UpBlock2D"))


def make_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(**unet_config())


def make_scheduler(cls=None):
    """A diffusers scheduler (default DDPMScheduler) with the demo's training schedule."""
    if cls is None:
        from diffusers import DDPMScheduler as cls
    return cls(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule="linear",
               beta_start=1e-4, beta_end=0.02, prediction_type="epsilon")


def stroke_for(kind):
    """The ``stroke=`` argument of ``training_targets`` for model ``kind``."""
    from ..integrations.diffusers import Stroke

    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    return None if kind == "plain" else Stroke(scales=SCALES)


def stroke_weights_for(kind, abar):
    """(B, len(SCALES)) stroke weights of model ``kind`` at noise levels ``abar`` (B,): zero
    for ``plain``; for ``stroke`` the weights ``training_targets`` uses (the default schedule
    at log-SNR log(abar / (1 - abar)))."""
    from ..integrations.diffusers import stroke_weights_for as weights

    stroke = stroke_for(kind)
    abar = torch.as_tensor(abar, dtype=torch.float64)
    if stroke is None:
        return torch.zeros(abar.shape[0], len(SCALES), dtype=torch.float32, device=abar.device)
    return weights(stroke, abar.sqrt(), (1 - abar).sqrt())[1]


def noised(kind, x0, timesteps, seeds, scheduler=None):
    """``(x_t, target)`` of model ``kind`` at integer ``timesteps`` (B,): the diffusers
    integration's ``training_targets`` (one fused ``stroke_noise`` pass, noise drawn in the
    kernel from per-sample ``seeds``)."""
    from ..integrations.diffusers import training_targets

    stroke = stroke_for(kind)
    scheduler = make_scheduler() if scheduler is None else scheduler
    return training_targets(scheduler, x0, timesteps, seed=seeds, stroke=stroke)


def train(kind, x_train, *, steps=3000, batch=128, lr=2e-3, ema=0.995, seed=0, device="cpu",
          progress=True):
    """Train one model from scratch; returns the EMA model (eval mode, on ``device``) and the
    list of per-step training losses. Deterministic given ``seed`` (data order, timesteps,
    noise seeds, initialization) up to the nondeterminism of the device's kernels."""
    from tqdm.auto import trange

    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    for name, v in (("steps", steps), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    if x_train.dim() != 4 or x_train.shape[0] < 1:
        raise ValueError(f"x_train: expected (N, C, H, W) images, got shape {tuple(x_train.shape)}")
    torch.manual_seed(seed)
    model = make_unet().to(device)
    avg = make_unet().to(device)
    avg.load_state_dict(model.state_dict())
    avg.requires_grad_(False)
    scheduler = make_scheduler()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warm = min(100, steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
    g = torch.Generator().manual_seed(seed)
    x_train = x_train.to(device)
    losses = []
    bar = trange(steps, desc=f"train {kind}", disable=not progress)
    for i in bar:
        idx = torch.randint(0, x_train.shape[0], (batch,), generator=g)
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (batch,), generator=g)
        seeds = (seed * 1_000_003 + i * batch + torch.arange(batch)).to(device)
        x_t, target = noised(kind, x_train[idx], t.to(device), seeds, scheduler)
        loss = torch.nn.functional.mse_loss(model(x_t, t.to(device)).sample, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            d = min(ema, (1 + i) / (10 + i))
            for pa, pm in zip(avg.parameters(), model.parameters()):
                pa.lerp_(pm, 1 - d)
        losses.append(loss.item())
        if i % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    return avg.eval(), losses


def weights_path(kind, directory=None):
    return os.path.join(directory or WEIGHTS_DIR, f"{kind}.safetensors")


def save(model, path, *, metadata=None):
    """Save a model's parameters as float16 safetensors (half the bytes; the demo models are
    evaluated in float32, and float16 rounding of the weights changes their outputs by ~1e-3)."""
    from safetensors.torch import save_file

    sd = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(sd, path, metadata={k: str(v) for k, v in (metadata or {}).items()})


def load(path, *, device="cpu"):
    """The demo UNet with the weights at ``path`` (float32, eval mode, on ``device``)."""
    from safetensors.torch import load_file

    if not os.path.exists(path):
        raise FileNotFoundError(f"path: no weights at {path} (run `python -m diffaccel demo --retrain`)")
    model = make_unet()
    sd = load_file(path)
    model.load_state_dict({k: v.float() for k, v in sd.items()})
    return model.to(device).eval()


def train_both(x_train, *, steps, out=None, device="cpu", progress=True, seed=0, kinds=KINDS):
    """Train ``plain`` and ``stroke`` (or ``kinds``) with the same budget and save them; returns
    ``{kind: (model, losses, seconds)}``."""
    res = {}
    for kind in kinds:
        t0 = time.perf_counter()
        model, losses = train(kind, x_train, steps=steps, seed=seed, device=device, progress=progress)
        sec = time.perf_counter() - t0
        save(model, weights_path(kind, out), metadata=dict(kind=kind, steps=steps, seed=seed,
                                                           final_loss=f"{sum(losses[-100:]) / len(losses[-100:]):.5f}"))
        res[kind] = (model, losses, sec)
    return res


def main(argv=None):
    from .data import load_digits_split

    p = argparse.ArgumentParser(prog="python -m diffaccel.demo.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=TRAIN_STEPS_DEFAULT)
    p.add_argument("--out", default=WEIGHTS_DIR, help="folder for plain.safetensors and stroke.safetensors")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    x_train = load_digits_split()[0]
    res = train_both(x_train, steps=args.steps, out=args.out, device=args.device, kinds=args.kinds)
    for kind, (_, losses, sec) in res.items():
        print(f"{kind}: {args.steps} steps in {sec:.0f} s, final loss {sum(losses[-100:]) / 100:.4f} "
              f"-> {weights_path(kind, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
