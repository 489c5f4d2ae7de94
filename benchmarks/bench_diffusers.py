"""diffusers schedulers, stock against diffaccel's drop-in (``accelerate``), side by side in one
run: one ``step()`` at B = 1 and B = 16 on 4x64x64 latents (fp32 and bf16 model outputs and
latents), and a whole 20-step loop with a cheap model (a 1x1 convolution: scheduler overhead
dominates), eager and under ``torch.compile``.

    python benchmarks/bench_diffusers.py            # everything
    python benchmarks/bench_diffusers.py --quick    # B = 1 and 4, fewer schedulers

Schedulers: DDIM (eta = 0, stock's default clip_sample=True), DDIM eta = 1, EulerAncestral
(noise every step) and DPM-Solver++ 2M. Stock draws noise from torch's global generator; the
accelerated rows draw it either the same way ("accel") or in the fused kernel from per-sample
seeds ("accel+seed"). Steps at a fixed step index: the step counters are reset before each
timed call (for both).

Times are the package timer's (``diffaccel.bench.timeit``): the median of 15 runs after 2 warm-up
per step, of 3 runs after 1 warm-up per loop. (Until issue 17 this script reported the minimum
of those runs; tables measured before then are minima.)
"""
import argparse

import torch

import diffusers  # noqa: E402

from diffaccel.bench import Col, format_table, statistic, timeit  # noqa: E402
from diffaccel.integrations.diffusers import accelerate  # noqa: E402

STEP_TIMER = dict(repeat=15, warmup=2)
LOOP_TIMER = dict(repeat=3, warmup=1)


SCHEDULERS = {
    "ddim": (lambda: diffusers.DDIMScheduler(), dict(eta=0.0)),
    "ddim-eta1": (lambda: diffusers.DDIMScheduler(), dict(eta=1.0)),
    "euler-a": (lambda: diffusers.EulerAncestralDiscreteScheduler(), {}),
    "dpm++2m": (lambda: diffusers.DPMSolverMultistepScheduler(), {}),
}


def _reset(s, k):
    """Put a scheduler at step index k (stock or accelerated), history filled for multistep."""
    if hasattr(s, "_da_i"):
        s._da_i.fill_(k)
        if hasattr(s, "_da_taken"):
            s._da_taken.fill_(k)
    elif hasattr(s, "_step_index"):
        s._step_index = k
        if hasattr(s, "lower_order_nums"):
            s.lower_order_nums = k


def step_rows(batches=(1, 16), dtypes=(torch.float32, torch.bfloat16), names=tuple(SCHEDULERS)):
    rows = []
    for name in names:
        make, kw = SCHEDULERS[name]
        for dt in dtypes:
            for B in batches:
                x = torch.randn(B, 4, 64, 64).to(dt)
                m = torch.randn(B, 4, 64, 64).to(dt)
                seeds = torch.arange(B)
                res = {}
                for label, sched in (("stock", make()), ("accel", accelerate(make())),
                                     ("accel+seed", accelerate(make(), seed=seeds))):
                    sched.set_timesteps(20)
                    k = 5
                    t = sched.timesteps[k]
                    if hasattr(sched, "model_outputs"):
                        sched.model_outputs = [m.clone() for _ in sched.model_outputs]
                    if name == "ddim" and label == "accel+seed":
                        continue  # eta = 0 draws no noise

                    def call(sched=sched, t=t, k=k):
                        _reset(sched, k)
                        return sched.step(m, t, x, return_dict=False, **kw)[0]

                    res[label] = timeit(call, "cpu", **STEP_TIMER)
                for label, sec in res.items():
                    rows.append((name, str(dt).replace("torch.", ""), B, label, sec, res["stock"] / sec))
    return rows


def loop_rows(B=16, steps=20, names=("ddim", "euler-a", "dpm++2m"), compiled=True):
    """A whole loop: model (1x1 conv) + scale_model_input + step, 20 steps."""
    rows = []
    net = torch.nn.Conv2d(4, 4, 1).eval()
    x0 = torch.randn(B, 4, 64, 64)
    for name in names:
        make, kw = SCHEDULERS[name]
        for label in ("stock", "accel", "accel+seed"):
            if name == "ddim" and label == "accel+seed":
                continue
            sched = make() if label == "stock" else accelerate(make(), seed=torch.arange(B) if "seed" in label else None)

            def one(x, t, sched=sched):
                x_in = sched.scale_model_input(x, t)
                return sched.step(net(x_in), t, x, return_dict=False, **kw)[0]

            for mode in (("eager", "compiled") if compiled else ("eager",)):
                fn = one
                if mode == "compiled":
                    torch._dynamo.reset()
                    fn = torch.compile(one, fullgraph=label != "stock")

                def loop(fn=fn, sched=sched):
                    sched.set_timesteps(steps)
                    if hasattr(sched, "set_begin_index"):
                        sched.set_begin_index(0)
                    x = x0 * float(getattr(sched, "init_noise_sigma", 1.0))
                    with torch.no_grad():
                        for t in sched.timesteps:
                            x = fn(x, t)
                    return x

                rows.append((name, label, mode, timeit(loop, "cpu", **LOOP_TIMER)))
    return rows


STEP_COLS = [Col("scheduler", 10, align="<"), Col("dtype", 9, align="<"), Col("B", 3, "d"),
             Col("impl", 11, align="<"), Col("ms", 8, ".3f"), Col("vs stock", 9, ".2f", suffix="x")]
LOOP_COLS = [Col("scheduler", 10, align="<"), Col("impl", 11, align="<"), Col("mode", 9, align="<"),
             Col("ms", 9, ".1f")]


def format_rows(step, loop, B=16, steps=20):
    out = format_table(STEP_COLS, [(name, dt, B_, label, sec * 1e3, sp) for name, dt, B_, label, sec, sp in step],
                       title=f"one step() on 4x64x64 latents ({statistic(**STEP_TIMER)}, wall clock)")
    if loop:
        out += "\n\n" + format_table(
            LOOP_COLS, [(name, label, mode, sec * 1e3) for name, label, mode, sec in loop],
            title=f"{steps}-step loop, B={B}, 1x1-conv model (total wall time, {statistic(**LOOP_TIMER)})")
    return out


def run(quick=False, loop=True):
    torch.manual_seed(0)
    if quick:
        step = step_rows(batches=(1, 4), names=("ddim", "euler-a"))
        lp = loop_rows(B=4, steps=10, names=("ddim",), compiled=False) if loop else []
        return format_rows(step, lp, B=4, steps=10)
    step = step_rows()
    lp = loop_rows() if loop else []
    return format_rows(step, lp)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-loop", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (1 is the "
                    "stable choice on a shared machine)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(run(quick=args.quick, loop=not args.no_loop))
