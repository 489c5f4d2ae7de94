"""The computations of tests/integrations/test_distributed.py. Launched under ``torchrun`` or ``accelerate
launch`` (``python distributed_worker.py SEED OUT_DIR torchrun|accelerate``), each rank writes
its results to OUT_DIR/rank<r>.pt; the test imports :func:`compute` for the one-process results.
"""
import datetime
import os
import sys
import types

import torch

import diffaccel.distributed as dd
import diffaccel.sampling as S
import diffaccel.vrg as vrg
from diffaccel.models import GaussianMixture
from diffaccel.schedules import ddpm_abar

LEVELS = [2, 9, 17]  # few levels: several samples per bin; with the data's
# spread of scales (e^{2 N(0,1)}) the order of the sums shows in the last bits
SIGMAS = torch.tensor([20.0, 6.0, 2.0, 0.6, 0.15, 0.04])


def problem(seed):
    """Fresh random models and data from ``seed``: a 3-component mixture on (2, 3), a Gaussian
    (its Jacobian is a multiple of I, so Rademacher Hutchinson is exact and dopri5 is compared
    on solver error alone), data from each, images for measure_mse."""
    g = torch.Generator().manual_seed(seed)
    gm = GaussianMixture(torch.randn(3, 2, 3, generator=g) * 2, torch.rand(3, generator=g) + 0.2,
                         torch.rand(3, generator=g) + 0.3)
    g1 = GaussianMixture(torch.randn(1, 2, 3, generator=g), [1.0],
                         float(torch.rand(1, generator=g)) + 0.3)
    return types.SimpleNamespace(
        gm=gm, g1=g1, data=gm.sample(7, g), data1=g1.sample(5, g),
        images=torch.randn(9, 1, 4, 4, generator=g)
        * torch.exp(2 * torch.randn(9, 1, 1, 1, generator=g)),
        seed=int(torch.randint(0, 2**62, (1,), generator=g)),
        abar=ddpm_abar(20), errs=[torch.randn(3, 5, generator=g) for _ in range(5)],
        bins=torch.randint(0, 6, (5, 3), generator=g))


class Collectives:
    """Counts the torch.distributed collectives issued inside the ``with`` block."""
    NAMES = ("all_gather", "all_reduce", "broadcast", "barrier", "reduce", "gather", "scatter",
             "all_to_all", "all_gather_object", "all_gather_into_tensor", "reduce_scatter")

    def __enter__(self):
        import torch.distributed as dist

        self.n, self.saved = 0, {}
        for name in self.NAMES:
            if hasattr(dist, name):
                self.saved[name] = fn = getattr(dist, name)
                setattr(dist, name, self._counting(fn))
        return self

    def _counting(self, fn):
        def wrapper(*args, **kwargs):
            self.n += 1
            return fn(*args, **kwargs)
        return wrapper

    def __exit__(self, *exc):
        import torch.distributed as dist

        for name, fn in self.saved.items():
            setattr(dist, name, fn)


def eps_model(x, t):
    """A deterministic stand-in for a trained eps-prediction network (images, timesteps)."""
    return 0.5 * x * (1 + t.float().view(-1, 1, 1, 1) / 20) + 0.1 * torch.tanh(x)


def compute(seed, state=None):
    """Every distributed result of the tests as a dict of tensors (global order, all ranks)."""
    p = problem(seed)
    s = p.seed
    r = {}
    r["heun_x"], r["heun_lp"] = dd.sample(S.sample_heun, p.gm, 7, (2, 3), SIGMAS, seed=s,
                                          batch_size=2, logp=True, probes=2, state=state)
    r["ddim_x"], r["ddim_lp"] = dd.sample(S.sample_ddim, p.gm, 5, (2, 3), SIGMAS, seed=s + 1,
                                          batch_size=3, logp=True, eta=0.7, dist="laplace",
                                          state=state)
    r["em_x"], r["em_lp"] = dd.sample(S.sample_euler_maruyama, p.gm, 3, (2, 3), SIGMAS, seed=s,
                                      batch_size=1, logp=True, state=state)
    loc_x, loc_lp = dd.sample(S.sample_euler_maruyama, p.gm, 3, (2, 3), SIGMAS, seed=s,
                              batch_size=1, logp=True, gather=False, state=state)
    rows = [i for b in dd.local_batches(3, 1, state) for i in b]
    r["em_local_ok"] = torch.tensor([torch.equal(loc_x, r["em_x"][rows]),
                                     torch.equal(loc_lp, r["em_lp"][rows])])
    r["one_x"] = dd.sample(S.sample_euler, p.gm, 1, (2, 3), SIGMAS, seed=s, batch_size=4,
                           state=state)  # rank 1 holds no batch
    lp, info = dd.log_likelihood(p.gm, p.data, 0.01, 20.0, seed=s, batch_size=2, steps=5,
                                 solver="euler", probes=2, state=state)
    r["ll_euler"], r["ll_euler_se"], r["ll_euler_steps"] = lp, info["stderr"], info["steps"]
    dataset = [(p.data[i], i) for i in range(5)]  # a dataset of (tensor, label) items
    lp, info = dd.log_likelihood(p.gm, dataset, 0.02, 20.0, seed=s, batch_size=2, steps=3,
                                 solver="rk4", probe_dist="normal", state=state)
    r["ll_rk4"], r["ll_rk4_se"] = lp, info["stderr"]
    seen = []  # collectives issued before each model call: none may run inside the solver

    def model(x, sigma):
        seen.append(calls.n)
        return p.g1(x, sigma)

    with Collectives() as calls:
        lp, info = dd.log_likelihood(model, p.data1, 0.01, 20.0, seed=s, batch_size=2,
                                     solver="dopri5", state=state)
    r["ll_dopri5"], r["ll_dopri5_steps"] = lp, info["steps"]
    r["ll_dopri5_nfe"] = torch.tensor([info["nfe"], info["local_nfe"], info["vjps"], info["local_vjps"]])
    r["ll_dopri5_collectives"] = torch.tensor([max(seen), calls.n])
    tab = dd.measure_mse(eps_model, p.images, p.abar, batch_size=1, passes=3, seed=s % 1000,
                         levels=LEVELS,
                         state=state)
    r["mse"], r["mse_ts"] = tab.mse, tab.ts
    stats = vrg.ErrorStats(torch.linspace(0.999, 0.001, 6))
    for b in dd.local_batches(5, 1, state):
        stats.update(p.errs[b.start], torch.zeros(3, 5), p.bins[b.start])
    stats.all_reduce(state=state)  # a no-op on one process
    r["stats"] = stats.table
    return r


def main():
    seed, out, launcher = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    if launcher == "accelerate":
        from accelerate import PartialState

        state = PartialState(cpu=True, timeout=datetime.timedelta(seconds=120))
    else:
        import torch.distributed as dist

        # a collective that only one rank reaches fails after 2 minutes instead of hanging
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
        state = None
    rk = dd.ranks(state)
    r = compute(seed, state)
    try:  # a state that disagrees with torch.distributed is refused
        dd.ranks(types.SimpleNamespace(process_index=0, num_processes=1, device="cpu"))
        r["quirk_refused"] = torch.tensor(False)
    except RuntimeError:
        r["quirk_refused"] = torch.tensor(True)
    r["world"] = torch.tensor([rk.rank, rk.world_size])
    torch.save(r, os.path.join(out, f"rank{rk.rank}.pt"))
    import torch.distributed as dist

    dist.barrier()
    # destroyed under accelerate too: a gloo group left to interpreter shutdown aborted one rank
    # now and then ("terminate called without an active exception", exit -6) after its results
    # were written; and nothing of Python's teardown is needed after this
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
