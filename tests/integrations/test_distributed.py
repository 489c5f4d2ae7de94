"""diffaccel.distributed: sampling, likelihoods and VRG error statistics across processes.

Two gloo processes on CPU, started by torchrun and by ``accelerate launch`` (real launchers,
real ``torch.distributed``), run tests/integrations/distributed_worker.py; every rank's gathered results must
equal the one-process results bit for bit (the ErrorStats all-reduce: to float64 rounding, as it
sums in another order). One-process tests pin the seeding scheme, the split, the independence of
a sample from its batch (samplers, fixed-step solvers and dopri5), and the errors.
"""
import os
import shutil
import socket
import subprocess
import sys
import types

import pytest
import torch

import diffaccel
import diffaccel.distributed as dd
import diffaccel.sampling as S
import diffaccel.vrg as vrg
from support import assert_close

HERE = os.path.dirname(os.path.abspath(__file__))
from support import ROOT  # noqa: E402
sys.path.insert(0, HERE)
import distributed_worker as worker  # noqa: E402

EXACT_VALUED = {"em_local_ok", "quirk_refused", "world", "stats", "ll_dopri5_nfe",
                "ll_dopri5_collectives"}


def bits(t):
    """The bytes of a tensor (NaN == NaN, -0.0 != 0.0): bitwise equality."""
    return t.detach().cpu().contiguous().view(torch.uint8) if t.numel() else t


def assert_bitwise(got, want, what):
    assert got.dtype == want.dtype and got.shape == want.shape, \
        f"{what}: {got.dtype}{tuple(got.shape)} != {want.dtype}{tuple(want.shape)}"
    if not torch.equal(bits(got), bits(want)):
        diff = (got.double() - want.double()).abs().flatten()
        bad = (bits(got).view(got.shape[0], -1) != bits(want).view(want.shape[0], -1)).any(1)
        raise AssertionError(f"{what}: rows {bad.nonzero().flatten().tolist()} of {got.shape[0]} "
                             f"differ, max abs difference {diff.nan_to_num(0).max().item():.3g}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cmd, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    # the workers' collectives time out after 120 s (a collective only one rank reaches); past
    # 300 s the launcher is stopped with SIGTERM, on which it ends its workers
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        out, err = p.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        p.terminate()
        try:
            out, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        pytest.fail(f"{cmd[:4]} timed out:\n{out[-3000:]}\n{err[-3000:]}")
    assert p.returncode == 0, f"{cmd[:4]} failed:\n{out[-3000:]}\n{err[-3000:]}"
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]


@pytest.fixture(scope="module")
def single():
    """(seed, the one-process results); fresh inputs every run."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"[worker seed {seed}]")
    return seed, worker.compute(seed)


def check_ranks(results, seed, single_results):
    for rank, got in enumerate(results):
        assert got["world"].tolist() == [rank, 2], f"seed {seed}"
        assert bool(got["quirk_refused"]), "a state of 1 process under a 2-process group passed"
        assert bool(got["em_local_ok"].all()), "gather=False rows differ from the gathered rows"
        for k, want in single_results.items():
            if k not in EXACT_VALUED:
                assert_bitwise(got[k], want, f"seed {seed}, rank {rank}, {k}")
        # all_reduce sums per-rank tables: equal to float64 rounding, counts exact
        assert torch.equal(got["stats"][:, 0], single_results["stats"][:, 0])
        assert_close(got["stats"], single_results["stats"], atol=1e-12, rtol=1e-12,
                     what=f"seed {seed}, rank {rank}, all_reduce")
        # the dopri5 ranks did different work (2 batches vs 1) with no collective in between
        assert got["ll_dopri5_nfe"][0] == single_results["ll_dopri5_nfe"][0]
        assert got["ll_dopri5_nfe"][2] == single_results["ll_dopri5_nfe"][2]  # vjps
    local = [int(r["ll_dopri5_nfe"][1]) for r in results]
    assert local[0] != local[1] and sum(local) == int(results[0]["ll_dopri5_nfe"][0])
    local_vjps = [int(r["ll_dopri5_nfe"][3]) for r in results]
    assert sum(local_vjps) == int(results[0]["ll_dopri5_nfe"][2]) > 0
    # no collective before the last model call; the gathers at the end, as many on each rank
    coll = [r["ll_dopri5_collectives"].tolist() for r in results]
    assert coll[0] == coll[1] and coll[0][0] == 0 and coll[0][1] > 0, coll
    assert single_results["ll_dopri5_collectives"].tolist() == [0, 0]


def test_torchrun_two_processes(tmp_path, single):
    seed, want = single
    res = launch([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                  "--master_port", str(free_port()), os.path.join(HERE, "distributed_worker.py"),
                  str(seed), str(tmp_path), "torchrun"], tmp_path)
    check_ranks(res, seed, want)


def test_accelerate_launch_two_processes(tmp_path, single):
    pytest.importorskip("accelerate")
    exe = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("the accelerate command is not installed beside this python")
    seed, want = single
    # --multi_gpu is accelerate's multi-process launcher; without GPUs PartialState(cpu=True)
    # makes it gloo on CPU
    res = launch([exe, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                  "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                  str(free_port()), os.path.join(HERE, "distributed_worker.py"), str(seed),
                  str(tmp_path), "accelerate"], tmp_path)
    check_ranks(res, seed, want)


# ------------------------------------------------------------------------------ one process

def test_single_process_matches_plain_calls(single):
    """World size 1: the results are those of the plain functions on each global batch."""
    seed, r = single
    p = worker.problem(seed)
    s = p.seed
    lp, info = S.log_likelihood(p.gm, p.data[4:6], 0.01, 20.0, seed=dd.sample_seeds(s, range(4, 6)),
                                steps=5, solver="euler", probes=2)
    assert_bitwise(r["ll_euler"][4:6], lp, "log_likelihood batch 2")
    seeds = dd.sample_seeds(s, range(2, 4))
    z = diffaccel.noise((2, 2, 3), seed=seeds, offset=dd.START_OFFSET)
    x, lp = S.sample_heun(p.gm, z * 20.0, worker.SIGMAS, seed=seeds, logp=True, probes=2)
    assert_bitwise(r["heun_x"][2:4], x, "sample_heun batch 1")
    assert_bitwise(r["heun_lp"][2:4], lp, "sample_heun logp batch 1")
    batches = [p.images[i:i + 1] for i in range(9)]
    tab = vrg.measure_mse(worker.eps_model, batches, p.abar, passes=3, seed=s % 1000,
                          levels=worker.LEVELS, progress=False)
    assert_bitwise(r["mse"], tab.mse, "measure_mse")
    assert torch.equal(r["mse_ts"], tab.ts)


def _splitmix64(z):
    m = 2 ** 64 - 1
    z = (z + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def test_sample_seeds_scheme(rng):
    seed = int(torch.randint(-(2 ** 62), 2 ** 62, (1,), generator=rng)) * 2 + 1
    idx = [0, 1, 7, 2 ** 40 + 3] + torch.randint(0, 2 ** 31, (20,), generator=rng).tolist()
    want = [_splitmix64((_splitmix64(seed % 2 ** 64) + i) % 2 ** 64) for i in idx]
    want = [w - 2 ** 64 if w >= 2 ** 63 else w for w in want]
    got = dd.sample_seeds(seed, idx)
    assert got.dtype == torch.int64 and got.tolist() == want
    assert torch.equal(dd.sample_seeds(seed, torch.tensor(idx)), got)
    assert torch.equal(dd.sample_seeds(seed, range(3, 9)),
                       dd.sample_seeds(seed, list(range(9)))[3:])
    # neighbouring runs share no stream (seed + i would: run s+1's sample i = run s's sample i+1)
    a, b = dd.sample_seeds(seed, range(1000)), dd.sample_seeds(seed + 1, range(1000))
    assert len(set(a.tolist()) | set(b.tolist())) == 2000
    assert dd.sample_seeds(2 ** 64 - 1, [5]).tolist() == dd.sample_seeds(-1, [5]).tolist()
    assert dd.sample_seeds(seed, []).shape == (0,)


@pytest.mark.parametrize("n,bs,world", [(0, 3, 2), (1, 4, 2), (7, 2, 2), (10, 3, 3), (9, 1, 4),
                                        (5, 8, 3), (100, 7, 8)])
def test_split_covers_every_index_once(n, bs, world):
    parts = [dd.split(n, bs, world, r) for r in range(world)]
    flat = [i for p in parts for b in p for i in b]
    assert flat == list(range(n))  # contiguous blocks in rank order = global order
    counts = [len(p) for p in parts]
    assert max(counts) - min(counts) <= 1 and counts == sorted(counts, reverse=True)
    assert all(len(b) == bs for p in parts for b in p[:-1])
    assert [b for p in parts for b in p] == dd.split(n, bs, 1, 0)  # same batches, any world


def test_sample_independent_of_batch_composition(rng):
    """Per-sample streams: a sample does not depend on its batch (a row-wise model)."""
    c = float(torch.rand(1, generator=rng)) + 0.5

    def model(x, sigma):
        s = sigma.view(-1, *[1] * (x.dim() - 1))
        return x * (c / (c + s ** 2)) + 0.1 * torch.tanh(x)

    seed = int(torch.randint(0, 2 ** 62, (1,), generator=rng))
    for sampler, kw in [(S.sample_heun, dict(logp=True, probes=3)),
                        (S.sample_ddim, dict(eta=0.5, logp=True)),
                        (S.sample_euler_maruyama, dict(logp=True, dist="rademacher"))]:
        ref = dd.sample(sampler, model, 5, (3, 2), worker.SIGMAS, seed=seed, batch_size=5, **kw)
        for bs in (1, 2):
            got = dd.sample(sampler, model, 5, (3, 2), worker.SIGMAS, seed=seed, batch_size=bs,
                            **kw)
            for g, w, name in zip(got, ref, ("x", "logp")):
                assert_bitwise(g, w, f"{sampler.__name__} {name}, batch_size {bs} vs 5")
    x = dd.sample(S.sample_euler, model, 4, 6, worker.SIGMAS, seed=seed, batch_size=3,
                  dtype=torch.float64, backend="reference")
    assert x.shape == (4, 6) and x.dtype == torch.float64
    empty = dd.sample(S.sample_euler, model, 0, (2,), worker.SIGMAS, seed=seed, batch_size=3)
    assert empty.shape == (0, 2)


def test_log_likelihood_fixed_step_independent_of_batch_size(single):
    seed, r = single
    p = worker.problem(seed)
    lp, _ = dd.log_likelihood(p.gm, p.data, 0.01, 20.0, seed=p.seed, batch_size=7, steps=5,
                              solver="euler", probes=2)
    assert_bitwise(r["ll_euler"], lp, "euler, batch_size 2 vs 7")


def test_dopri5_independent_of_batch_composition(single):
    """dopri5 steps each sample on its own (its own step size, error norm and probes), so the
    split dataset's log p is bit-identical to one call on the whole dataset: the split changes
    nothing but the batches."""
    seed, r = single
    p = worker.problem(seed)
    seeds = dd.sample_seeds(p.seed, range(5))
    lp, info = S.log_likelihood(p.g1, p.data1, 0.01, 20.0, seed=seeds, solver="dopri5")
    assert_bitwise(r["ll_dopri5"], lp, f"seed {seed}: dopri5, batch_size 2 vs 5")
    assert torch.equal(r["ll_dopri5_steps"], info["steps"])
    assert_close(lp, p.g1.log_prob(p.data1, 0.01), atol=1.0, what="dopri5 vs exact")
    # a mixture (probes matter: Hutchinson is not exact there) and 2 probes, batches of 3 + 1
    kw = dict(solver="dopri5", probes=2, atol=1e-2, rtol=1e-2)
    lp, _ = S.log_likelihood(p.gm, p.data[:4], 0.01, 20.0, seed=dd.sample_seeds(p.seed, range(4)),
                             **kw)
    got, _ = dd.log_likelihood(p.gm, p.data[:4], 0.01, 20.0, seed=p.seed, batch_size=3, **kw)
    assert_bitwise(got, lp, f"seed {seed}: dopri5 on the mixture, batch_size 3 vs 4")


def test_world_of_one_and_errors(monkeypatch, rng):
    gm = worker.problem(1).gm
    assert dd.ranks() == dd.Ranks(0, 1, torch.device("cpu"), None)
    t = torch.randn(3, 2, generator=rng)
    assert dd.gather(t) is t and dd.all_reduce(t) is t
    state = types.SimpleNamespace(process_index=0, num_processes=1, device="cpu")
    assert dd.ranks(state).world_size == 1
    st = vrg.ErrorStats(torch.tensor([0.9, 0.1]))
    st.update(torch.randn(2, 3, generator=rng), torch.zeros(2, 3), 0)
    before = st.table.clone()
    assert torch.equal(st.all_reduce(state=state).table, before)
    with pytest.raises(TypeError, match="state"):
        dd.ranks(object())
    with pytest.raises(RuntimeError, match="not initialized"):
        dd.ranks(types.SimpleNamespace(process_index=0, num_processes=2, device="cpu"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="WORLD_SIZE=2"):
        dd.sample(S.sample_euler, lambda x, s: x, 2, (2,), worker.SIGMAS, seed=0, batch_size=1)
    with pytest.raises(RuntimeError, match="WORLD_SIZE=2"):
        st.all_reduce()  # not a silently partial table
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(TypeError, match="sampler"):
        dd.sample("sample_euler", gm, 2, (2, 3), worker.SIGMAS, seed=0, batch_size=1)
    with pytest.raises(TypeError, match="shape"):
        dd.sample(S.sample_euler, gm, 2, "2x3", worker.SIGMAS, seed=0, batch_size=1)
    with pytest.raises(ValueError, match="sigmas"):
        dd.sample(S.sample_euler, gm, 2, (2, 3), [20.0], seed=0, batch_size=1)
    with pytest.raises(TypeError, match="seed"):  # also with nothing to draw
        dd.sample(S.sample_euler, gm, 0, (2, 3), worker.SIGMAS, seed="0", batch_size=1)
    with pytest.raises(TypeError, match="seed"):
        dd.log_likelihood(gm, torch.zeros(0, 2, 3), 0.01, 20.0, seed=None, batch_size=1, steps=2)
    with pytest.raises(ValueError, match="batch_size"):
        dd.split(4, 0, 1, 0)
    with pytest.raises(ValueError, match="n:"):
        dd.split(-1, 2, 1, 0)
    with pytest.raises(TypeError, match="seed"):
        dd.sample_seeds(1.5, [0])
    with pytest.raises(TypeError, match="seed"):
        dd.sample_seeds(2 ** 64, [0])
    with pytest.raises(ValueError, match="index"):
        dd.sample_seeds(0, [-1])
    with pytest.raises(TypeError, match="index"):
        dd.sample_seeds(0, torch.tensor([0.5]))
    with pytest.raises(TypeError, match="tensor"):
        dd.gather(torch.tensor(1.0))
    with pytest.raises(TypeError, match="data"):
        dd.log_likelihood(gm, [("a", 0)], 0.01, 20.0, seed=0, batch_size=1, steps=2)
    with pytest.raises(TypeError, match="data"):
        dd.log_likelihood(gm, 5, 0.01, 20.0, seed=0, batch_size=1, steps=2)
    with pytest.raises(ValueError, match="data: no batches"):
        dd.measure_mse(worker.eps_model, torch.zeros(0, 1, 4, 4), worker.problem(1).abar,
                       batch_size=2)
    lp, info = dd.log_likelihood(gm, torch.zeros(0, 2, 3), 0.01, 20.0, seed=0, batch_size=2,
                                 steps=2)
    # one bad point comes back NaN; the others, in its batch or not, are unaffected
    data = torch.randn(5, 2, 3, generator=rng)
    clean, _ = dd.log_likelihood(gm, data, 0.01, 20.0, seed=7, batch_size=2, steps=2)
    data[2, 1, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match="1 of 2 samples"):
        dirty, _ = dd.log_likelihood(gm, data, 0.01, 20.0, seed=7, batch_size=2, steps=2)
    assert torch.isnan(dirty[2]) and torch.equal(dirty[[0, 1, 3, 4]], clean[[0, 1, 3, 4]])
    assert lp.shape == (0,) and info["stderr"].shape == (0,) and info["nfe"] == info["vjps"] == 0
