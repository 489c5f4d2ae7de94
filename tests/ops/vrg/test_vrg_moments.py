"""VRG error statistics: error_moments on every backend against a float64 loop, accumulation,
merging in any order, ErrorStats, distributed all-reduce over two gloo processes, measure_mse,
MSETable files, and bad input."""
import os

import pytest
import torch

import diffaccel.vrg as vrg
from diffaccel.reference import vrg as R

from support import assert_close, backend_params

SHAPES = [(1, 5), (7, 3, 5, 6), (4, 1, 33, 17), (3, 1000), (2, 3, 16384 + 5)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _oracle(pred, target, bins, num_bins):
    """Float64 loop: the table and the per-bin sum |e| (for the float32-rounding bound)."""
    table = R.error_moments_loop(pred, target, bins, num_bins)
    abs_sum = torch.zeros(num_bins, dtype=torch.float64)
    for b in range(pred.shape[0]):
        abs_sum[int(bins[b])] += (pred[b].double().cpu() - target[b].double().cpu()).abs().sum()
    return table, abs_sum


def _check_table(got, table, abs_sum, what):
    """Counts exactly; sums within float32 rounding: e = pred - target is one float32 rounding
    (2^-24 |e|) and the C++ CPU kernel adds at most 8 errors per float32 lane before folding
    into float64 (<= 7 more roundings of the partial |e| sums; e^2 one more): <= 10 ulps of
    sum |e| and sum e^2, checked at 16 (2^-20). A kernel that drops, repeats or misbins one
    element is off by far more."""
    got = got.detach().double().cpu()
    assert got.shape == table.shape, f"{what}: shape {tuple(got.shape)} != {tuple(table.shape)}"
    assert torch.equal(got[:, 0], table[:, 0]), f"{what}: counts {got[:, 0]} != {table[:, 0]}"
    tol1 = abs_sum * 2.0 ** -20 + 1e-12
    tol2 = table[:, 2] * 2.0 ** -20 + 1e-12
    for col, tol, name in ((1, tol1, "sum e"), (2, tol2, "sum e^2")):
        err = (got[:, col] - table[:, col]).abs()
        bad = err > tol
        assert not bool(bad.any()), (
            f"{what}: {name} mismatches in {int(bad.sum())} of {len(err)} bins, e.g. bin "
            f"{int(bad.nonzero()[0])}: {got[bad][0, col].item():.12g} vs {table[bad][0, col].item():.12g}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("backend,device", [("reference", "cpu")] + backend_params("vrg_error_moments"))
def test_error_moments_against_loop(backend, device, shape, dtype, rng):
    num_bins = 5
    pred = torch.randn(shape, generator=rng).to(dtype)
    target = (pred.float() + 0.3 * torch.randn(shape, generator=rng)).to(dtype)
    bins = torch.randint(0, num_bins, (shape[0],), generator=rng)
    table, abs_sum = _oracle(pred, target, bins, num_bins)
    got = vrg.error_moments(pred.to(device), target.to(device), bins.to(device), num_bins,
                            backend=backend)
    assert got.dtype == torch.float64 and got.shape == (num_bins, 3)
    _check_table(got, table, abs_sum, f"{backend} {dtype} {shape}")


@pytest.mark.parametrize("backend,device", [("reference", "cpu")] + backend_params("vrg_error_moments"))
def test_error_moments_non_contiguous_and_out(backend, device, rng):
    x = torch.randn(6, 4, 9, 10, generator=rng)
    y = torch.randn(6, 4, 9, 10, generator=rng)
    pred = x.to(device).contiguous(memory_format=torch.channels_last)
    target = torch.zeros(6, 4, 9, 20, device=device)
    target[..., ::2] = y.to(device)
    target = target[..., ::2]
    assert not target.is_contiguous()
    bins = torch.tensor([3, 0, 3, 1, 6, 3], device=device)
    table, abs_sum = _oracle(x, y, bins.cpu(), 7)
    _check_table(vrg.error_moments(pred, target, bins, 7, backend=backend), table, abs_sum,
                 f"{backend} non-contiguous")
    out = torch.ones(7, 3, dtype=torch.float64, device=device)
    res = vrg.error_moments(pred, target, bins, 7, out=out, backend=backend)
    assert res is out
    _check_table(out - 1, table, abs_sum, f"{backend} out=")
    # a single int bin for the whole batch
    one = vrg.error_moments(pred, target, 2, 7, backend=backend)
    assert one[2, 0].item() == x.numel() and bool((one[[0, 1, 3, 4, 5, 6]] == 0).all())


@pytest.mark.parametrize("backend,device", backend_params("vrg_error_moments"))
def test_error_moments_float64_and_mixed(backend, device, rng):
    pred = torch.randn(3, 50, generator=rng, dtype=torch.float64)
    target = torch.randn(3, 50, generator=rng).to(torch.float16)
    bins = torch.tensor([0, 1, 1])
    # mixed dtypes are promoted (float64 here), which only the reference takes: auto falls back,
    # a named fast backend refuses.
    got = vrg.error_moments(pred, target, bins, 2)
    table, abs_sum = _oracle(pred, target.double(), bins, 2)
    assert_close(got, table, atol=1e-12, rtol=1e-12, what="float64 via auto")
    with pytest.raises(TypeError, match="pred"):
        vrg.error_moments(pred, target, bins, 2, backend=backend)
    # float32 + float16 -> float32 on the fast backend
    p32 = pred.float()
    got = vrg.error_moments(p32.to(device), target.to(device), bins.to(device), 2, backend=backend)
    table, abs_sum = _oracle(p32, target.float(), bins, 2)
    _check_table(got, table, abs_sum, f"{backend} mixed float32/float16")


@pytest.mark.parametrize("backend,device", [("reference", "cpu")] + backend_params("vrg_error_moments"))
def test_error_moments_bad_input(backend, device):
    p = torch.zeros(4, 3, device=device)
    b = torch.zeros(4, dtype=torch.int64, device=device)
    with pytest.raises(ValueError, match="bins"):
        vrg.error_moments(p, p, torch.tensor([0, 1, 5, 0], device=device), 5, backend=backend)
    with pytest.raises(ValueError, match="bins"):
        vrg.error_moments(p, p, torch.tensor([0, -1, 0, 0], device=device), 5, backend=backend)
    with pytest.raises(ValueError, match="bins"):
        vrg.error_moments(p, p, torch.zeros(3, dtype=torch.int64, device=device), 5, backend=backend)
    with pytest.raises(TypeError, match="bins"):
        vrg.error_moments(p, p, torch.zeros(4, device=device), 5, backend=backend)
    with pytest.raises(ValueError, match="target"):
        vrg.error_moments(p, torch.zeros(4, 2, device=device), b, 5, backend=backend)
    with pytest.raises(ValueError, match="num_bins"):
        vrg.error_moments(p, p, b, 0, backend=backend)
    with pytest.raises(TypeError, match="pred"):
        vrg.error_moments(torch.zeros(4, 3, dtype=torch.int32), p.cpu(), b.cpu(), 5, backend=backend)
    with pytest.raises(ValueError, match="out"):
        vrg.error_moments(p, p, b, 5, out=torch.zeros(5, 3, device=device), backend=backend)


def test_op_bins_check_in_kernel():
    """The C++ op refuses out-of-range bins itself (never writes out of bounds)."""
    from diffaccel import _ext
    from diffaccel.backends import availability

    ok, why = availability("cpu", "cpu", "vrg_error_moments")
    if not ok:
        pytest.skip(why)
    _ext.load()
    p = torch.zeros(2, 3)
    with pytest.raises(RuntimeError, match="bins"):
        torch.ops.diffaccel.vrg_error_moments(p, p, torch.tensor([0, 9]), 3)


@pytest.mark.parametrize("backend,device", backend_params("vrg_error_moments"))
def test_opcheck(backend, device, rng):
    from diffaccel.library import op

    pred = torch.randn(3, 2, 5, generator=rng).to(device)
    target = torch.randn(3, 2, 5, generator=rng).to(device)
    bins = torch.tensor([1, 0, 1], device=device)
    torch.library.opcheck(op("vrg_error_moments", backend), (pred, target, bins, 3))


# ----------------------------------------------------------------------------- ErrorStats

def _batches(rng, n=5):
    out = []
    for _ in range(n):
        B = int(torch.randint(1, 6, (1,), generator=rng))
        pred = torch.randn(B, 2, 3, generator=rng)
        target = torch.randn(B, 2, 3, generator=rng)
        t = torch.randint(0, 6, (B,), generator=rng)
        out.append((pred, target, t))
    return out


def test_errorstats_merge_any_order(rng):
    abar = torch.linspace(0.99, 0.01, 6, dtype=torch.float64)
    batches = _batches(rng, 6)
    full = vrg.ErrorStats(abar)
    for b in batches:
        full.update(*b)
    expected = torch.zeros(6, 3, dtype=torch.float64)
    abs_sum = torch.zeros(6, dtype=torch.float64)
    for p, tg, t in batches:
        tab, ab = _oracle(p, tg, t, 6)
        expected += tab
        abs_sum += ab
    _check_table(full.table, expected, abs_sum, "ErrorStats vs loop")
    parts = []
    for b in batches:
        s = vrg.ErrorStats(abar)
        parts.append(s.update(*b))
    for perm in (list(range(6)), [5, 3, 1, 0, 2, 4], [2, 0, 5, 4, 1, 3]):
        acc = vrg.ErrorStats(abar)
        for i in perm:
            acc.merge(parts[i])
        assert torch.equal(acc.table[:, 0], full.table[:, 0])
        assert_close(acc.table, full.table, atol=1e-12, rtol=1e-12, what=f"merge order {perm}")
    with pytest.raises(ValueError, match="other"):
        full.merge(vrg.ErrorStats(abar[:5]))
    with pytest.raises(TypeError, match="other"):
        full.merge(full.table)


def test_errorstats_abar_bins_and_table(rng):
    abar = torch.tensor([0.9, 0.5, 0.1, 0.7], dtype=torch.float64)  # unsorted on purpose
    s = vrg.ErrorStats(abar)
    pred = torch.randn(4, 10, generator=rng)
    target = torch.zeros(4, 10)
    s.update(pred, target, torch.tensor([0.69, 0.11, 0.52, 0.88]))  # -> bins 3, 2, 1, 0
    exp, ab = _oracle(pred, target, torch.tensor([3, 2, 1, 0]), 4)
    _check_table(s.table, exp, ab, "nearest-abar bins")
    s.update(pred[:1], target[:1], 0.5)
    assert s.table[1, 0].item() == 20
    with pytest.raises(ValueError, match="abar_or_t"):
        s.update(pred, target, torch.tensor([0.5, 1.5, 0.2, 0.2]))
    with pytest.raises(ValueError, match="bins"):
        s.update(pred, target, torch.tensor([0, 1, 2, 4]))
    tab = s.mse_table()
    assert isinstance(tab, vrg.MSETable) and len(tab) == 4
    assert_close(tab.mse, (s.table[:, 2] / s.table[:, 0])[torch.argsort(abar)], atol=1e-15,
                 what="mse_table")
    s2 = vrg.ErrorStats(abar)
    s2.update(pred[:1], target[:1], 0)
    with pytest.raises(ValueError, match="min_count"):
        s2.mse_table()
    st = vrg.ErrorStats.from_state_dict(s.state_dict())
    assert torch.equal(st.table, s.table)


def _dist_worker(rank, world, init_file, out_dir, seed):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(seed)
    data = [(torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g),
             torch.randint(0, 8, (3,), generator=g)) for _ in range(4)]
    stats = vrg.ErrorStats(torch.linspace(0.999, 0.001, 8))
    for p, t, b in data[rank::world]:
        stats.update(p, t, b)
    stats.all_reduce()
    torch.save(stats.table, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_distributed_all_reduce(tmp_path, rng):
    import torch.multiprocessing as mp

    seed = int(torch.randint(0, 2**31, (1,), generator=rng))
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "store"), str(tmp_path), seed), nprocs=2,
             join=True)
    g = torch.Generator().manual_seed(seed)
    data = [(torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g),
             torch.randint(0, 8, (3,), generator=g)) for _ in range(4)]
    single = vrg.ErrorStats(torch.linspace(0.999, 0.001, 8))
    for d in data:
        single.update(*d)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(got[:, 0], single.table[:, 0])
        assert_close(got, single.table, atol=1e-12, rtol=1e-12, what=f"rank {rank} all_reduce")


def test_all_reduce_is_a_no_op_in_a_single_process(rng):
    """Without torch.distributed initialized there is one process: the table is unchanged."""
    import torch.distributed as dist

    assert not (dist.is_available() and dist.is_initialized())
    stats = vrg.ErrorStats(torch.tensor([0.5, 0.2]))
    stats.update(torch.randn(3, 4, generator=rng), torch.randn(3, 4, generator=rng), torch.tensor([0, 1, 1]))
    before = stats.table.clone()
    assert stats.all_reduce() is stats and torch.equal(stats.table, before)


# ----------------------------------------------------------------------------- measure_mse

def _ddpm_abar(T=50):
    return torch.cumprod(1 - torch.linspace(1e-3, 0.2, T, dtype=torch.float64), 0)


@pytest.mark.parametrize("shape", [(2, 6, 5), (3, 2, 4, 4)], ids=str)
def test_measure_mse_exact_and_null_models(shape, rng):
    abar = _ddpm_abar()
    c = 0.37
    data = [torch.full((shape[0] + i,) + shape[1:], c) for i in range(4)]

    def oracle_x0(x, t):  # knows the (constant) data: predicts x0 exactly
        return torch.full_like(x, c)

    tab = vrg.measure_mse(oracle_x0, data, abar, levels=[0, 10, 25, 49], prediction="x0",
                          progress=False)
    assert len(tab) == 4 and tab.ts.tolist() == [49, 25, 10, 0]
    assert float(tab.mse.max()) < 1e-7, tab.mse

    def zero_eps(x, t):  # predicts eps = 0: the MSE is the noise's second moment, about 1
        assert t.dtype == torch.int64
        return torch.zeros_like(x)

    many = [torch.randn((16,) + shape[1:], generator=rng) for _ in range(8)]
    tab = vrg.measure_mse(zero_eps, many, abar, levels=[3, 40], progress=True, seed=3)
    n = 8 * 16 * torch.tensor(shape[1:]).prod().item() / 2
    assert bool(((tab.mse - 1).abs() < 6 / n ** 0.5).all()), tab.mse
    with pytest.raises(ValueError, match="levels"):
        vrg.measure_mse(zero_eps, many, abar, levels=[3, 50], progress=False)
    with pytest.raises(ValueError, match="prediction"):
        vrg.measure_mse(zero_eps, many, abar, prediction="v", progress=False)
    with pytest.raises(ValueError, match="model"):
        vrg.measure_mse(lambda x, t: x[:, :1], many, abar, levels=[3, 40], progress=False)


# ----------------------------------------------------------------------------- MSETable

def test_msetable_roundtrip_and_interp(tmp_path, rng):
    a = torch.rand(30, generator=rng, dtype=torch.float64) * 0.98 + 0.01
    m = torch.rand(30, generator=rng, dtype=torch.float64)
    tab = vrg.MSETable(a, m, torch.arange(30))
    for suffix in (".txt", ".npz"):
        tab.save(tmp_path / f"t{suffix}")
        back = vrg.MSETable.load(tmp_path / f"t{suffix}")
        assert torch.equal(back.abar, tab.abar) and torch.equal(back.mse, tab.mse)
        assert torch.equal(back.ts, tab.ts)
    # exact at grid points, linear between, clamped outside
    assert torch.equal(tab(tab.abar), tab.mse)
    mid = 0.5 * (tab.abar[:-1] + tab.abar[1:])
    assert_close(tab(mid), 0.5 * (tab.mse[:-1] + tab.mse[1:]), atol=1e-12, what="midpoints")
    assert tab(0.0).item() == tab.mse[0].item() and tab(1.0).item() == tab.mse[-1].item()
    # duplicates are merged by averaging
    d = vrg.MSETable([0.5, 0.2, 0.5, 0.9], [1.0, 2.0, 3.0, 4.0])
    assert d.abar.tolist() == [0.2, 0.5, 0.9] and d.mse.tolist() == [2.0, 2.0, 4.0]
    for bad, match in (([0.5], "2 distinct"), ([0.5, 1.5], "abar"), ([0.5, float("nan")], "finite")):
        with pytest.raises(ValueError, match=match):
            vrg.MSETable(bad, [1.0] * len(bad))
    with pytest.raises(ValueError, match="mse"):
        vrg.MSETable([0.1, 0.2], [1.0])
    (tmp_path / "bad.txt").write_text("# c\n1\t0.5\n2\tx\t3\n")
    with pytest.raises(ValueError, match="bad.txt"):
        vrg.MSETable.load(tmp_path / "bad.txt")


def test_compile_fullgraph_inductor(rng):
    from diffaccel.backends import availability

    if not availability("cpu", "cpu", "vrg_error_moments")[0]:
        pytest.skip("no C++ CPU kernels")
    pred = torch.randn(5, 3, 7, generator=rng)
    target = torch.randn(5, 3, 7, generator=rng)
    bins = torch.tensor([2, 0, 2, 1, 0])
    f = torch.compile(lambda p, t, b: vrg.error_moments(p, t, b, 3, backend="cpu"), fullgraph=True)
    table, abs_sum = _oracle(pred, target, bins, 3)
    _check_table(f(pred, target, bins), table, abs_sum, "compiled error_moments")
