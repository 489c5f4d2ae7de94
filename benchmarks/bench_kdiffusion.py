"""k-diffusion's samplers beside diffaccel's fused ones: per-step time of a whole sampling loop
with a cheap model (``Dn(x, sigma) = x / (1 + sigma^2)``, one elementwise op, so the time is
the sampler's own overhead), at B = 1 and 16, 4x64x64, in eager mode and under torch.compile.

    python benchmarks/bench_kdiffusion.py                     # eager, every sampler
    python benchmarks/bench_kdiffusion.py --compile           # + torch.compile (slow to compile)
    python benchmarks/bench_kdiffusion.py --samplers euler_ancestral dpmpp_2m --steps 10

Columns (milliseconds per step: the median over ``--repeat`` runs of the whole loop after 3
warm-up, more runs while under 0.3 s, divided by the steps; on CUDA ``triton.testing.do_bench``'s
median):

- ``kd``: k-diffusion 0.1.1.post1's own ``sample_*`` (its default noise: ``torch.randn_like``,
  or a ``BrownianTreeNoiseSampler`` for the SDE samplers);
- ``ours``: diffaccel's sampler with ``seed=`` (noise drawn inside the fused step);
- ``ours/kd-noise``: diffaccel's sampler patched into the module, drawing k-diffusion's noise;
- ``kd compiled`` / ``ours compiled``: ``torch.compile`` of the loop (ours: ``fullgraph=True``
  over a list of noise levels; k-diffusion's breaks the graph at its host reads);
- ``model``: one call of the cheap model, for scale.

k-diffusion is loaded from the installed wheel with its package stubbed (see
tests/support/kdiffusion_real.py); install it with ``pip install --no-deps k-diffusion==0.1.1.post1
torchsde torchdiffeq trampoline``.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "support"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_step import MIN_TIME, WARMUP  # noqa: E402

import diffaccel.schedules as sch  # noqa: E402
from diffaccel.bench import Col, cpu_name, format_table, statistic, timeit  # noqa: E402
from diffaccel.sampling import K_SAMPLERS  # noqa: E402

SHAPE = (4, 64, 64)


def cheap_model(x, sigma, **kw):
    return x / (1 + sigma.reshape(-1, *[1] * (x.dim() - 1)) ** 2)


def load_kd():
    import kdiffusion_real
    kdiffusion_real.package_dir = _no_skip(kdiffusion_real.package_dir)
    return kdiffusion_real.load()


def _no_skip(fn):
    def wrapped():
        try:
            return fn()
        except BaseException as e:  # pytest.skip outside pytest
            raise SystemExit(f"k-diffusion is needed: {e}")
    return wrapped


def rows(args):
    kd = load_kd()
    out = []
    sig_t = sch.karras_sigmas(args.steps, 0.03, 14.6).to(args.device)
    sig_l = sig_t.tolist()
    for short in args.samplers:
        name = "sample_" + short
        ours, core = K_SAMPLERS[name]
        theirs = getattr(kd, name)
        for B in args.batch:
            x = torch.randn(B, *SHAPE, device=args.device) * 14.6
            seed = torch.arange(B, device=args.device) + 1
            res = {"sampler": short, "B": B}
            res["model"] = _time(lambda: cheap_model(x, sig_t[0] * x.new_ones(B)), args)
            calls = {
                "kd": lambda: theirs(cheap_model, x, sig_t, disable=True),
                "ours": lambda: ours(cheap_model, x, sig_l, disable=True, seed=seed),
                "ours/kd-noise": lambda: core(kd, cheap_model, x, sig_t, disable=True),
            }
            if args.compile:
                torch._dynamo.reset()
                ck = torch.compile(lambda x: theirs(cheap_model, x, sig_t, disable=True))
                co = torch.compile(lambda x: ours(cheap_model, x, sig_l, disable=True, seed=seed),
                                   fullgraph=True)
                calls["kd compiled"] = lambda: ck(x)
                calls["ours compiled"] = lambda: co(x)
            with torch.no_grad():
                for label, fn in calls.items():
                    res[label] = _time(fn, args) / args.steps
            out.append(res)
            print(format_row(res), flush=True)
    return out


def _time(fn, args):
    return timeit(fn, args.device, args.repeat, WARMUP, MIN_TIME)


COLS = ["kd", "ours", "ours/kd-noise", "kd compiled", "ours compiled"]
TABLE = [Col("sampler", 18, align="<"), Col("B", 3, "d"), *[Col(c, 14, ".3f") for c in COLS],
         Col("model", 8, ".3f"), Col("kd/ours", 8, ".2f")]


def _cells(r):
    return [r["sampler"], r["B"], *[r[c] * 1e3 if c in r else None for c in COLS],
            r["model"] * 1e3, r["kd"] / r["ours"]]


def format_header():
    return format_table(TABLE, [])


def format_row(r):
    return format_table(TABLE, [_cells(r)], header=False)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samplers", nargs="+", default=[n[7:] for n in K_SAMPLERS])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 16])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    print(f"# ms per step, {args.steps} steps, x of shape (B, {', '.join(map(str, SHAPE))}), "
          f"device {args.device} ({dev}), torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"# each loop: {statistic(args.repeat, WARMUP, MIN_TIME, args.device)}")
    print(format_header())
    return rows(args)


if __name__ == "__main__":
    main()
