"""The steps of ``python -m diffaccel demo``; each adds its tables and figures to the report.

See docs/demo.md for what each step measures and how to read it.
"""
import math
import os
import time
from types import SimpleNamespace

import torch
from tqdm.auto import tqdm

from . import data as D
from . import train as T
from .metrics import MAX_LABEL_ENTROPY, DigitClassifier, sliced_wasserstein, total_variation
from .report import Report, fmt

FULL = SimpleNamespace(
    n_samples=256, mse_every=10, mse_n=297, ll_batch=128, ll_steps=20, em_batch=64, em_steps=400,
    ode_steps=50, inc_steps=(10, 30, 100), gm_d=3000, gm_n=256, gm_steps=(5, 10, 20, 50, 100, 200),
    bench_size=64, bench_batch=16, bench_repeat=5, oracle=dict(d=3072, d_sde=64, batch=16, steps=400))
QUICK = SimpleNamespace(
    n_samples=64, mse_every=50, mse_n=96, ll_batch=16, ll_steps=6, em_batch=16, em_steps=60,
    ode_steps=15, inc_steps=(10, 30), gm_d=1000, gm_n=128, gm_steps=(5, 20, 100),
    bench_size=32, bench_batch=4, bench_repeat=3, oracle=dict(d=64, d_sde=16, batch=8, steps=60))

LAWS = ("normal", "laplace", "uniform", "rademacher")


def machine():
    """One line naming the machine (CPU model and cores, or the GPU)."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} GPU"
    from ..bench import cpu_name

    return f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


class Demo:
    def __init__(self, args):
        self.args = args
        self.cfg = QUICK if args.quick else FULL
        self.device = torch.device(args.device)
        self.rep = Report(args.out)
        self.summary = []
        self.seconds = {}
        self.t0 = time.perf_counter()

    # --------------------------------------------------------------------- helpers
    def eps_model(self, unet):
        return lambda x, t: unet(x, t).sample

    def denoiser(self, kind):
        from ..sampling import VPEpsDenoiser

        return VPEpsDenoiser(self.eps_model(self.models[kind]), self.abar)

    def judge(self, x):
        """[sliced W2 to held-out, classifier confidence, label entropy, mean TV]."""
        x = x.detach().float().cpu()
        j = self.clf.judge(x)
        return [sliced_wasserstein(x, self.x_test), j["confidence"], j["label_entropy"],
                float(total_variation(x).mean())]

    JUDGE_HEADER = ["sliced W2 to held-out", "classifier confidence", "label entropy (bits)",
                    "roughness (mean TV)"]

    def start_noise(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(n, 1, 8, 8, generator=g).to(self.device)

    # --------------------------------------------------------------------- steps
    def info(self):
        from ..info import format_info

        text = format_info()
        print(text)
        r = self.rep
        r.h("diffaccel demo report", 1)
        r.p(f"Machine: {machine()}; device `{self.device}`; torch {torch.__version__}; "
            f"mode: {'--quick' if self.args.quick else 'default'}. Produced by "
            "`python -m diffaccel demo`; docs/demo.md explains every section.")
        r.h("1. Installation (`diffaccel info`)")
        r.lines += ["```", text, "```", ""]

    def setup(self):
        x_train, y_train, x_test, y_test = D.load_digits_split()
        self.x_train, self.y_train, self.x_test, self.y_test = x_train, y_train, x_test, y_test
        self.abar = T.make_scheduler().alphas_cumprod.to(torch.float64)
        self.sigma_min = float(math.sqrt((1 - self.abar[0]) / self.abar[0]))
        self.sigma_max = float(math.sqrt((1 - self.abar[-1]) / self.abar[-1]))
        self.models, self.train_info = {}, {}
        if self.args.retrain:
            res = T.train_both(x_train, steps=self.args.train_steps, out=self.args.weights,
                               device=self.device)
            for kind, (m, losses, sec) in res.items():
                self.train_info[kind] = f"retrained here: {len(losses)} steps in {sec:.0f} s"
        for kind in T.KINDS:
            self.models[kind] = T.load(T.weights_path(kind, self.args.weights), device=self.device)
            self.models[kind].requires_grad_(False)
        self.clf = DigitClassifier(x_train, y_train)
        self.clf_acc = self.clf.accuracy(x_test, y_test)
        n_par = sum(p.numel() for p in self.models["plain"].parameters())
        r = self.rep
        r.h("2. Data and models")
        r.p(f"Data: scikit-learn's 8x8 handwritten digits, {len(x_train)} train / {len(x_test)} "
            "held-out images (fixed-seed split), at their native 8x8 resolution (resampling to "
            "16x16 would put the data on a 64-dimensional subspace and make bits per dimension "
            "meaningless); 17 pixel levels mapped to [-1, 1].")
        r.p(f"Models: two `diffusers.UNet2DModel` eps-predictors ({n_par} parameters each, "
            "float16 safetensors), trained with the same budget on the DDPM linear schedule "
            "(1000 steps) with `diffaccel.integrations.diffusers.training_targets`: **plain** "
            f"noising, and **stroke**-size noising (scales {T.SCALES}, default "
            "`stroke_weights`). "
            + ("; ".join(f"{k}: {v}" for k, v in self.train_info.items()) or
               f"Shipped weights ({T.TRAIN_STEPS_DEFAULT} steps each; `--retrain` retrains them)."))
        r.p(f"Distance to held-out data, used throughout: the sliced 2-Wasserstein distance on "
            "pixels (512 random directions), and a logistic-regression digit classifier fitted on "
            f"the train split (held-out accuracy {fmt(self.clf_acc)}): its mean confidence on "
            f"the samples, and the entropy of its predicted labels (uniform over 10 digits: "
            f"{fmt(MAX_LABEL_ENTROPY)} bits). Roughness: mean absolute difference of neighbouring "
            "pixels. For scale, the train split against the held-out split:")
        self.baseline = self.judge(x_train[:self.cfg.n_samples])
        r.table(["set", *self.JUDGE_HEADER], [[f"{self.cfg.n_samples} train images", *self.baseline]])
        r.grids([("held-out data", x_test[:64])], "data.png", "Held-out digits")

    def stroke_size(self):
        from ..vrg import ErrorStats

        cfg, r = self.cfg, self.rep
        levels = list(range(0, 1000, cfg.mse_every)) + [999]
        x = self.x_test[:cfg.mse_n].to(self.device)
        n = x.shape[0]
        self.tables = {}
        runs = [("plain", "plain"), ("stroke", "stroke"), ("stroke", "plain")]
        bar = tqdm(total=len(runs) * len(levels), desc="MSE tables", leave=False)
        for model_kind, noise_kind in runs:
            stats = ErrorStats(self.abar, device=self.device)
            for t in levels:
                seeds = torch.arange(n, device=self.device) + 7919 * t
                xt, target = T.noised(noise_kind, x, torch.full((n,), t, device=self.device), seeds)
                with torch.no_grad():
                    pred = self.models[model_kind](xt, torch.full((n,), t, device=self.device)).sample
                stats.update(pred, target, t)
                bar.update()
            self.tables[(model_kind, noise_kind)] = stats.mse_table()
        bar.close()
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.6))
        labels = {("plain", "plain"): "plain model, plain noising",
                  ("stroke", "stroke"): "stroke model, its stroke noising (target A_w eps)",
                  ("stroke", "plain"): "stroke model, plain noising"}
        for key, tab in self.tables.items():
            lam = torch.log(tab.abar) - torch.log1p(-tab.abar)
            ax.semilogy(lam, tab.mse, label=labels[key], ls="--" if key == ("stroke", "plain") else "-")
        ax.set_xlabel("log-SNR log(abar / (1 - abar))")
        ax.set_ylabel("per-element eps MSE")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        r.h("3. Stroke size: per-level prediction error")
        r.p(f"Per-element eps-prediction MSE of each model on {n} held-out images at "
            f"{len(levels)} noise levels, accumulated with `diffaccel.vrg.ErrorStats` (noise "
            "from the fused `stroke_noise`, per-sample seeds).")
        r.save_fig(fig, "mse.png", "MSE against log-SNR")
        pick = [0, 100, 250, 500, 750, 999]
        rows = []
        for t in pick:
            row = [str(t), self.abar[t].item()]
            for key in labels:
                tab = self.tables[key]
                row.append(float(tab(torch.tensor([self.abar[t].item()], dtype=torch.float64))[0]))
            rows.append(row)
        r.table(["timestep", "abar", *labels.values()], rows)
        means = {k: float(v.mse.mean()) for k, v in self.tables.items()}
        r.p("Mean over the levels: " + ", ".join(f"{labels[k]} {fmt(v)}" for k, v in means.items())
            + ". The stroke target A_w eps has less variance than eps at low SNR (its coarse part "
            "averages pixels), so the stroke model's error on its own objective is not directly "
            "comparable with the plain one; the dashed line is the stroke model asked the plain "
            "question.")
        self.summary.append(f"stroke size: mean eps MSE plain {fmt(means[('plain', 'plain')])}, "
                            f"stroke (own target) {fmt(means[('stroke', 'stroke')])}")

    def ddim_scheduler(self):
        """The demo's DDIM: diffusers' ``DDIMScheduler`` (trailing spacing, no x0 clipping, final
        abar 1) made fast by ``diffaccel.integrations.diffusers.accelerate``."""
        from diffusers import DDIMScheduler

        from ..integrations.diffusers import accelerate

        stock = DDIMScheduler.from_config(T.make_scheduler(DDIMScheduler).config,
                                          timestep_spacing="trailing", clip_sample=False)
        return accelerate(stock)

    def ddim(self, kind, timesteps, n, seed):
        """DDIM (eta = 0) with ``kind``'s model on the accelerated diffusers scheduler at the
        given integer ``timesteps`` (descending), from VP noise; the stroke model starts from
        its own (blurred) noise A_w z, the noise it was trained to see at the first level."""
        sched = self.ddim_scheduler()
        sched.set_timesteps(timesteps=[int(t) for t in timesteps], device=self.device)
        x = self.start_noise(n, seed)
        if kind == "stroke":
            aN = self.abar[int(timesteps[0])].expand(n)
            x = self.stroke_blur(x, T.stroke_weights_for("stroke", aN).to(self.device))
        unet = self.models[kind]
        with torch.no_grad():
            for t in sched.timesteps:
                eps = unet(x, t.expand(n)).sample
                x = sched.step(eps, t, x).prev_sample
        return x

    def stroke_blur(self, z, w):
        import diffaccel

        return diffaccel.stroke_blur(z, w, T.SCALES)

    def vrg(self):
        from .. import vrg

        cfg, r = self.cfg, self.rep
        sched = self.ddim_scheduler()
        sched.set_timesteps(10)
        ts0 = sched.timesteps.cpu()
        init = self.abar[ts0.flip(0)]          # least noisy first
        rows, panels, results, used = [], [], {}, {}
        bar = tqdm(total=4, desc="VRG + DDIM", leave=False)
        for kind in T.KINDS:
            table = self.tables[(kind, kind)]
            res = vrg.optimize_trajectory(init, table, solver="ddim", lp=0.01, pin_last=100.0)
            results[kind] = res
            ts_opt = vrg.to_timesteps(res.abar, self.abar)   # nearest training timesteps
            used[kind] = ts_opt
            for name, ts in (("original", ts0), ("VRG", ts_opt)):
                traj = self.abar[ts.flip(0)]
                cpe = float(vrg.cumulative_error(traj[None], table, solver="ddim")[0])
                x = self.ddim(kind, ts, cfg.n_samples, seed=1)
                rows.append([kind, name, " ".join(str(int(t)) for t in ts), cpe, *self.judge(x)])
                panels.append((f"{kind}, {name} (cpe {fmt(cpe, 3)})", x))
                bar.update()
        bar.close()
        r.h("4. VRG: optimized 10-step DDIM trajectories")
        r.p("Start: the 10-step trajectory of diffusers' `DDIMScheduler` with trailing spacing. "
            "`vrg.optimize_trajectory` (the VRG paper's trust region lp = 0.01 and its soft pin "
            "100 on the noisiest level, 64 candidates) minimizes the cumulative prediction error "
            "(cpe) predicted from each model's own MSE table (Section 3); the optimum is "
            "rounded to the nearest training timesteps (`vrg.to_timesteps`), and the cpe "
            "column is that of the rounded trajectory. Then DDIM (eta = 0, no clipping: "
            "`DDIMScheduler` made fast by `diffaccel.integrations.diffusers.accelerate`, custom "
            f"`timesteps=`) draws {cfg.n_samples} samples on each trajectory from the same noise "
            "(the stroke model from the same noise blurred by its first level's A_w).")
        r.table(["model", "trajectory", "timesteps", "cpe", *self.JUDGE_HEADER], rows)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
        labels, vals = [], []
        for row in rows:
            labels.append(f"{row[0]}\n{row[1]}")
            vals.append(row[3])
        ax[0].bar(labels, vals, color=["C0", "C1", "C0", "C1"])
        ax[0].set_ylabel("cpe (rounded trajectory)")
        ax[1].semilogy(range(1, 11), init, "k.-", label="original")
        for kind in T.KINDS:
            ax[1].semilogy(range(1, 11), self.abar[used[kind].flip(0)], ".--", label=f"VRG ({kind} table)")
        ax[1].set_xlabel("level i (1 = least noisy)")
        ax[1].set_ylabel("abar_i")
        ax[1].legend(fontsize=7)
        r.save_fig(fig, "vrg_cpe.png", "cpe before and after, and the trajectories")
        r.grids(panels, "vrg_samples.png", "DDIM samples, original and VRG trajectories")
        self.summary.append("VRG (DDIM, 10 steps): cpe " + ", ".join(
            f"{row[0]} {row[1]} {fmt(row[3], 3)} (sliced W2 {fmt(row[4], 3)})" for row in rows))

    def likelihood(self):
        from .. import schedules
        from ..sampling import log_likelihood, sample_euler, sample_euler_maruyama, sample_hd

        cfg, r = self.cfg, self.rep
        B, smin, smax = cfg.ll_batch, self.sigma_min, self.sigma_max
        bar = tqdm(total=6, desc="likelihood", leave=False)

        def ll(kind, x, sigma_lo=smin):
            lp, info = log_likelihood(self.denoiser(kind), x.to(self.device), sigma_lo, smax,
                                      solver="rk4", steps=cfg.ll_steps, seed=3)
            bar.update()
            return lp.cpu(), info

        g = torch.Generator().manual_seed(5)
        xq = D.dequantize(self.x_test[:B], generator=g)
        rows = []
        for kind in T.KINDS:
            lp, info = ll(kind, xq)
            bpd = D.discrete_bits_per_dim(lp, 64)
            rows.append([kind, float(bpd.mean()), float(bpd.std() / math.sqrt(B)), str(info["nfe"])])
        r.h("5. Likelihood")
        r.p(f"Held-out bits per dimension of {B} held-out digits: uniform dequantization (each "
            "pixel value v becomes v + u - 1/2, u ~ U(0, 1), in pixel units), `log_likelihood` "
            f"through the probability-flow ODE (RK4, {cfg.ll_steps} steps, one Rademacher probe "
            f"per step) from sigma {fmt(smin)} to {fmt(smax)} (the DDPM schedule's ends) with a "
            f"N(0, sigma_max^2) prior. A uniform 17-level model scores {fmt(D.UNIFORM_BITS)}.")
        r.table(["model", "bits/dim", "std. error", "model evaluations"], rows)
        self.summary.append(f"held-out bits/dim: " + ", ".join(f"{row[0]} {fmt(row[1], 3)}" for row in rows))

        # SDE sampler's zero-overhead log-density against log_likelihood on the same samples
        s_end = 0.05
        sig = schedules.karras_sigmas(cfg.em_steps, s_end, smax, append_zero=False)
        xT = self.start_noise(cfg.em_batch, 11) * smax
        x_em, lp_em = sample_euler_maruyama(self.denoiser("plain"), xT, sig, logp=True, seed=12,
                                            disable=True)
        bar.update()
        lp_ode, _ = ll("plain", x_em, s_end)
        diff = lp_em.cpu() - lp_ode
        corr = float(torch.corrcoef(torch.stack([lp_em.cpu(), lp_ode]))[0, 1])
        r.p(f"Euler-Maruyama ({cfg.em_steps} Karras steps, sigma {fmt(smax)} -> {s_end}, plain "
            f"model, {cfg.em_batch} samples) tracks each sample's log-density inside the fused "
            "step at no extra model call; `log_likelihood` (RK4) re-encodes the same samples "
            f"at sigma {s_end}. For an exact model both estimate the same log p; for a learned "
            "one the SDE's and the ODE's marginals differ, and the tracked value has a "
            "first-order discretization error (about proportional to D / steps).")
        r.table(["quantity", "value (nats)"],
                [["mean tracked log p (SDE)", float(lp_em.mean())],
                 ["mean log_likelihood (ODE)", float(lp_ode.mean())],
                 ["mean difference", float(diff.mean())],
                 ["mean absolute difference", float(diff.abs().mean())],
                 ["correlation (no unit)", corr]])
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4, 4))
        ax.scatter(lp_ode, lp_em.cpu(), s=8)
        lo, hi = float(min(lp_ode.min(), lp_em.min())), float(max(lp_ode.max(), lp_em.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel("log_likelihood (RK4), nats")
        ax.set_ylabel("tracked by the SDE sampler, nats")
        r.save_fig(fig, "logp_sde_vs_ode.png", "Tracked log-density against log_likelihood")

        # high-density sampler against the ordinary PF-ODE sampler, same noise and levels
        sig = schedules.karras_sigmas(cfg.ode_steps, smin, smax)
        xT = self.start_noise(cfg.em_batch, 13) * smax
        x_ode = sample_euler(self.denoiser("plain"), xT, sig, disable=True)
        lam = 2.0
        x_hd = sample_hd(self.denoiser("plain"), xT, sig, lambda_thr=lam, disable=True)
        bar.update()
        lp_o, _ = ll("plain", x_ode)
        lp_h, _ = ll("plain", x_hd)
        bar.close()
        rows = [["PF-ODE Euler", float(lp_o.mean()), *self.judge(x_ode)],
                [f"high-density (lambda_thr {lam})", float(lp_h.mean()), *self.judge(x_hd)]]
        r.p(f"The high-density sampler (PF-ODE down to log-SNR {lam}, then the score doubled) "
            f"against ordinary PF-ODE Euler sampling ({cfg.ode_steps} Karras steps, same noise, "
            f"{cfg.em_batch} samples), plain model; log p at sigma {fmt(smin)} by "
            "`log_likelihood`.")
        r.table(["sampler", "mean log p (nats)", *self.JUDGE_HEADER], rows)
        fig, ax = plt.subplots(figsize=(5, 3))
        bins = 20
        ax.hist(lp_o.numpy(), bins, alpha=0.6, label="PF-ODE")
        ax.hist(lp_h.numpy(), bins, alpha=0.6, label="high-density")
        ax.set_xlabel("log p (nats)")
        ax.legend()
        r.save_fig(fig, "logp_hd_hist.png", "log-density of ordinary and high-density samples")
        r.grids([("PF-ODE Euler", x_ode), ("high-density", x_hd)], "hd_samples.png",
                "Ordinary and high-density samples")
        self.summary.append(f"high-density sampler: mean log p {fmt(float(lp_o.mean()), 4)} -> "
                            f"{fmt(float(lp_h.mean()), 4)} nats, roughness {fmt(rows[0][-1], 3)} -> "
                            f"{fmt(rows[1][-1], 3)}")

        # exact oracle checks, per backend
        from .oracle import sampling

        rows = sampling(self.device.type, **cfg.oracle)
        o = cfg.oracle
        r.p(f"Exact check on a 4-component Gaussian mixture (no network): Euler-Maruyama's "
            f"tracked log p (D = {o['d_sde']}, {o['steps']} steps) and dopri5 `log_likelihood` "
            f"(D = {o['d']}) against the exact log p, {o['batch']} samples, per backend.")
        r.table(["backend", "EM seconds", "EM mean abs error (nats)", "dopri5 seconds",
                 "evaluations", "dopri5 mean abs error (nats)"],
                [[b, t1, e1, t2, str(nfe), e2] for b, t1, e1, t2, nfe, e2 in rows])

    def increments(self):
        from .. import schedules
        from ..sampling import sample_euler_maruyama

        cfg, r = self.cfg, self.rep
        rows = []
        bar = tqdm(total=len(cfg.inc_steps) * len(LAWS), desc="increments", leave=False)
        r.h("6. Non-normal increments")
        r.p(f"Euler-Maruyama on the reverse SDE (plain model, Karras levels to sigma "
            f"{fmt(self.sigma_min)}, a last step to 0, {cfg.n_samples} samples, same seeds) with "
            "increments of four zero-mean unit-variance laws, drawn inside the fused step from "
            "the Philox stream. Plain Euler-Maruyama needs many steps: a step from sigma_i to "
            "sigma_i+1 adds fresh noise of size sqrt(sigma_i^2 - sigma_i+1^2), close to sigma_i "
            "when the steps are large, so with few steps noise is left at the end whatever the "
            "law; the laws can only differ where the sampler works at all.")
        for steps in cfg.inc_steps:
            sig = schedules.karras_sigmas(steps, self.sigma_min, self.sigma_max)
            xT = self.start_noise(cfg.n_samples, 21) * self.sigma_max
            panels = []
            for law in LAWS:
                x = sample_euler_maruyama(self.denoiser("plain"), xT, sig, seed=22, dist=law,
                                          disable=True)
                rows.append([law, str(steps), *self.judge(x)])
                panels.append((f"{law}, {steps} steps", x))
                bar.update()
            r.grids(panels, f"increments_{steps}.png", f"Samples with each increment law, {steps} steps")
        bar.close()
        r.table(["law", "steps", *self.JUDGE_HEADER], rows)
        sw = {(row[0], row[1]): row[2] for row in rows}
        self.summary.append(f"increments, sliced W2 at {' / '.join(map(str, cfg.inc_steps))} steps: "
                            + ", ".join(f"{law} " + " / ".join(fmt(sw[(law, str(n))], 3) for n in cfg.inc_steps)
                                        for law in LAWS))

    def schedules(self):
        from .. import schedules as sch
        from ..models import GaussianMixture
        from ..sampling import sample_interpolant

        cfg, r = self.cfg, self.rep
        d, n, k = cfg.gm_d, cfg.gm_n, 5.0
        gm = GaussianMixture.two_modes(d, p=0.8, m=0.9, c=0.1)
        res = {"knee (k = 5)": [], "constant speed": []}
        bar = tqdm(total=2 * len(cfg.gm_steps), desc="schedules", leave=False)
        for steps in cfg.gm_steps:
            for name, kk in (("knee (k = 5)", k), ("constant speed", None)):
                g = torch.Generator().manual_seed(steps)
                x0 = torch.randn(n, d, generator=g)
                taus = sch.interpolant_tau(torch.linspace(0, 1, steps + 1), d, kk)
                x = sample_interpolant(gm, x0, taus, disable=True)
                res[name].append(float((x.double().mean(1) > 0).double().mean()))
                bar.update()
        bar.close()
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        for name, v in res.items():
            ax.semilogx(cfg.gm_steps, v, "o-", label=name)
        ax.axhline(0.8, color="k", ls="--", lw=0.8, label="exact 0.8")
        ax.set_xlabel("Euler steps")
        ax.set_ylabel("fraction in the + mode")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8)
        r.h("7. Schedules in high dimension")
        r.p(f"Exact two-mode Gaussian mixture in d = {d} (modes +-0.9, std 0.1, weight 0.8 on "
            f"+), VP stochastic interpolant, exact posterior mean, {n} samples: the fraction "
            "landing in the + mode against the number of Euler steps, for the knee schedule "
            "(tau = k/sqrt(d) at t = 1/2) and the constant-speed one.")
        r.table(["steps", *res], [[str(s), *[res[name][i] for name in res]] for i, s in enumerate(cfg.gm_steps)])
        r.save_fig(fig, "mode_fraction.png", "Mode fraction against steps")
        self.summary.append(f"schedules (d = {d}), + mode fraction at {cfg.gm_steps[0]} steps: "
                            + ", ".join(f"{name} {fmt(v[0], 3)}" for name, v in res.items()))

    def bench(self):
        from .. import bench

        cfg, r = self.cfg, self.rep
        from ..backends import BACKENDS

        args = SimpleNamespace(device=self.device.type, batch=cfg.bench_batch, channels=4,
                               scales=[2, 4, 8], repeat=cfg.bench_repeat, reference_eager=False,
                               no_compile=True, backends=[b for b in BACKENDS if b != "reference"])
        rows, labels, times = [], [], []
        for op in tqdm(("stroke_noise", "stroke_blur", "error_moments"), desc="benchmark", leave=False):
            for label, fn, nbytes in bench.CASES[op](args, cfg.bench_size):
                t = bench.timeit(fn, args.device, args.repeat)
                rows.append([op, label, t * 1e3, nbytes / t / 1e9])
                labels.append(f"{op}\n{label}")
                times.append(t * 1e3)
        r.h("8. Microbenchmark")
        r.p(f"B = {cfg.bench_batch}, C = 4, {cfg.bench_size}x{cfg.bench_size}, scales (2, 4, 8), "
            f"{bench.statistic(args.repeat, device=args.device)} on {machine()} (one run: the machine may be "
            "shared; `python -m diffaccel bench` adds the torch.compile rows). The Triton "
            "interpreter on the CPU is a correctness tool and is not timed.")
        r.table(["op", "implementation", "ms", "GB/s"], rows)
        from .oracle import stroke_check

        checks = stroke_check(self.device.type, size=cfg.bench_size, batch=cfg.bench_batch)
        r.p("Each backend's `stroke_noise` (x_t and the target, same seeds) against the bit-exact "
            "reference (normals may differ in the last float32 bits: libm's log and cos):")
        r.table(["backend", f"ms ({bench.statistic(1, 1)})", "max abs difference from the reference"],
                [[b, ms, err] for b, ms, err in checks])
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 0.35 * len(rows) + 1))
        ax.barh(range(len(rows)), times)
        ax.set_yticks(range(len(rows)), [l.replace("\n", ": ") for l in labels], fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("ms (log scale)")
        r.save_fig(fig, "bench.png", "Benchmark")

    def finish(self):
        r = self.rep
        sec = time.perf_counter() - self.t0
        r.h("Summary")
        parts = ", ".join(f"{k} {v:.0f}" for k, v in self.seconds.items())
        r.lines += [f"- {s}" for s in self.summary] + [f"- whole run: {sec:.0f} s ({parts})", ""]
        path = r.write()
        print("\n".join(["", "diffaccel demo summary:", *[f"  {s}" for s in self.summary],
                         f"  report and {len(r.figures)} figures written to {r.out}/ "
                         f"(open {path}); {sec:.0f} s"]))
        print("  seconds per step: " + ", ".join(f"{k} {v:.0f}" for k, v in self.seconds.items()))


STEPS = ("info", "setup", "stroke_size", "vrg", "likelihood", "increments", "schedules", "bench")


def run(args):
    demo = Demo(args)
    for name in tqdm(STEPS, desc="diffaccel demo", unit="step"):
        t0 = time.perf_counter()
        getattr(demo, name)()
        demo.seconds[name] = time.perf_counter() - t0
    demo.finish()
    return 0
