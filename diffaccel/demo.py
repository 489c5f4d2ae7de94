"""``python -m diffaccel demo``: the stroke-size training step on every backend that can run here.

Noises a batch at a training size with per-sample stroke weights from the default schedule,
checks every fast backend against the bit-exact reference, and prints one timing line each.
"""
import time

import torch

import diffaccel
from diffaccel.backends import BACKENDS, availability
from diffaccel.info import format_info


def main(size=64, batch=16, channels=4):
    print(format_info())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(batch, channels, size, size, generator=g).to(device)
    t = torch.rand(batch, generator=g).to(device)
    abar = torch.cos(t * torch.pi / 2) ** 2  # cosine schedule
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    logsnr = torch.log(abar / (1 - abar)).clamp(-20, 20)
    scales = (2, 4, 8)
    w = diffaccel.stroke_weights(logsnr, scales)
    seeds = torch.arange(batch, device=device) + 1000
    kw = dict(scales=scales, data_weights=w, noise_weights=w, seed=seeds, target="v")
    ref = diffaccel.stroke_noise(x0, alpha, sigma, backend="reference", **kw)
    print(f"\nstroke_noise  B={batch} C={channels} {size}x{size} scales={scales} on {device}:")
    for name in BACKENDS:
        ok, why = availability(name, device, "stroke_noise")
        if not ok:
            print(f"  {name:9s} skipped: {why}")
            continue
        out = diffaccel.stroke_noise(x0, alpha, sigma, backend=name, **kw)
        t0 = time.perf_counter()
        out = diffaccel.stroke_noise(x0, alpha, sigma, backend=name, **kw)
        if device == "cuda":
            torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) * 1e3
        err = max((a - b).abs().max().item() for a, b in zip(out, ref))
        print(f"  {name:9s} {ms:9.2f} ms   max |difference from reference| = {err:.2e}")
    return 0
