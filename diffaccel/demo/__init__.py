"""``python -m diffaccel demo``: an end-to-end demo on a real (small) diffusion model.

Two small ``diffusers.UNet2DModel`` eps-predictors trained on scikit-learn's 8x8 digits (plain
and stroke-size noising; weights shipped in ``diffaccel/demo/weights``, retrained by
``--retrain``) go through every part of the package: per-level error tables (``vrg.ErrorStats``),
VRG trajectories sampled with DDIM, held-out bits per dimension (``log_likelihood``), the SDE
sampler's tracked log-density, the high-density sampler, non-normal increments, high-dimension
schedules on an exact mixture, and the microbenchmarks. It writes ``report.md`` and PNG figures
into ``--out``. Needs the ``demo`` extra (from a clone: ``pip install --no-build-isolation ".[demo]"``). docs/demo.md
describes each part.
"""
import argparse

import torch

from .oracle import sampling, stroke_check  # noqa: F401  (exact-answer checks, also used by tests)
from .train import TRAIN_STEPS_DEFAULT


def add_arguments(p):
    p.add_argument("--out", default="diffaccel-report", help="folder for report.md and the PNGs")
    p.add_argument("--quick", action="store_true", help="smaller sizes: about a minute")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where models and samplers run (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is much faster on a "
                        "machine whose cores are busy with other work)")
    p.add_argument("--retrain", action="store_true",
                   help="train both models again first (minutes on a CPU) and use the new weights")
    p.add_argument("--train-steps", type=int, default=None,
                   help="optimizer steps per model with --retrain (default: the shipped weights' "
                        f"{TRAIN_STEPS_DEFAULT})")
    p.add_argument("--weights", default=None,
                   help="folder of plain.safetensors and stroke.safetensors (default: the shipped ones; "
                        "--retrain writes there)")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m diffaccel demo")
    add_arguments(p)
    return run(p.parse_args(argv))


def run(args):
    missing = [m for m in ("diffusers", "sklearn", "matplotlib", "safetensors")
               if __import__("importlib").util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"diffaccel demo needs the demo extra (missing: {', '.join(missing)}): "
                         "pip install 'diffusers>=0.42,<0.43' 'scikit-learn>=1.3' 'matplotlib>=3.7' "
                         "'safetensors>=0.4' (or, from a clone of diffaccel: "
                         "pip install --no-build-isolation '.[demo]'; diffaccel is not on PyPI)")
    from . import steps as _steps

    if args.train_steps is None:
        args.train_steps = TRAIN_STEPS_DEFAULT
    if args.train_steps < 1:
        raise SystemExit(f"--train-steps: expected a positive int, got {args.train_steps}")
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads: expected a positive int, got {args.threads}")
        torch.set_num_threads(args.threads)
        from threadpoolctl import threadpool_limits  # scikit-learn's BLAS and OpenMP pools

        threadpool_limits(args.threads)
    if args.retrain and args.weights is None:
        args.weights = "diffaccel-weights"
    return _steps.run(args)
