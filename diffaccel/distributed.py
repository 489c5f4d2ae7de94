"""Sampling, likelihoods and VRG error statistics across processes (data parallelism).

Launch one process per device with ``torchrun`` or ``accelerate launch``; no DDP wrapper (the
model is only evaluated). ``torch.distributed`` does the communication: pass ``state=`` an
``accelerate.PartialState`` or ``Accelerator`` (anything with ``process_index``,
``num_processes`` and ``device``), or initialize ``torch.distributed`` yourself; without either,
everything runs in one process.

How the work is split. The N samples (or data points) are cut into global batches of
``batch_size`` consecutive indices, ``[0, bs), [bs, 2 bs), ...``, and each rank takes a
contiguous block of batches (the first ``nb % world`` ranks one more, like accelerate's
``split_between_processes``). Sample ``i`` draws all its randomness (starting noise, the
sampler's increments, the Hutchinson probes) from its own Philox stream, seeded with
``sample_seeds(seed, i)``. The batches are therefore the same whatever the number of processes,
and so are the results, bit for bit (given a deterministic model), on 1, 2 or 8 processes. With
the per-sample streams, the samplers' and solvers' result for sample ``i`` (the adaptive
``dopri5`` included: it steps each sample on its own) does not depend on the other samples of
its batch either, so it does not depend on ``batch_size`` (up to the model's own batch
dependence).

No collective runs inside a sampler or solver: each rank runs its batches on its own (adaptive
solvers take as many steps as each sample needs; ranks never wait for each other mid-solve) and
one gather at the end puts the results in global order.
"""
import math
import numbers

import numpy as np
import torch

from ._dist import Ranks, _dist, all_reduce, ranks
from .random import noise as _noise

__all__ = ["Ranks", "ranks", "sample_seeds", "split", "local_batches", "gather", "all_reduce",
           "sample", "log_likelihood", "measure_mse", "START_OFFSET"]

# The starting noise of sample i is its stream at this offset: far above the samplers' step
# increments (offset step * D) and Hutchinson probes (2^52 + step * P * D), so they never overlap.
START_OFFSET = 1 << 62


# ------------------------------------------------------------------------------ seeds

_U64 = np.uint64


def _splitmix64(z):
    """SplitMix64's finalizer (Steele, Lea & Flood 2014) on a uint64 array (wrapping)."""
    z = z + _U64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


def sample_seeds(seed, index, device=None):
    """(n,) int64 per-sample seeds of the global sample indices ``index`` (an int, a range, a
    sequence or an integer tensor of indices >= 0) under the run's ``seed`` (a 64-bit int):
    ``splitmix64(splitmix64(seed) + i)`` (mod 2^64, as int64 bits). A hash rather than
    ``seed + i``: runs with seeds ``s`` and ``s + 1`` share no streams. Pass them as ``seed=`` to
    any diffaccel sampler or ``log_likelihood`` to reproduce sample ``i`` alone."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or \
            not -(2 ** 63) <= int(seed) < 2 ** 64:
        raise TypeError(f"seed: expected a 64-bit int, got {seed!r}")
    if isinstance(index, numbers.Integral) and not isinstance(index, bool):
        index = [int(index)]
    if isinstance(index, torch.Tensor):
        if index.is_floating_point() or index.dtype == torch.bool:
            raise TypeError(f"index: expected integer indices, got {index.dtype}")
        idx = index.detach().cpu().to(torch.int64).reshape(-1).numpy()
    else:
        try:
            idx = np.asarray(list(index), dtype=np.int64).reshape(-1)
        except (TypeError, ValueError, OverflowError):
            raise TypeError(f"index: expected integer sample indices, got {index!r}") from None
    if idx.size and idx.min() < 0:
        raise ValueError(f"index: expected indices >= 0, got {int(idx.min())}")
    with np.errstate(over="ignore"):
        base = _splitmix64(np.array([int(seed) % 2 ** 64], dtype=_U64))
        s = _splitmix64(base + idx.astype(_U64))
    return torch.from_numpy(s.view(np.int64).copy()).to(device or "cpu")


# ------------------------------------------------------------------------------ splitting

def _check_count(n, name):
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"{name}: expected an int >= 0, got {n!r}")
    return int(n)


def split(n, batch_size, world_size, rank):
    """The global batches (ranges of sample indices) of ``rank`` out of ``world_size``:
    ``ceil(n / batch_size)`` batches of ``batch_size`` consecutive indices (the last one
    shorter), a contiguous block of them per rank, the first ``nb % world_size`` ranks one more."""
    n = _check_count(n, "n")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or \
            batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    nb = math.ceil(n / batch_size)
    q, r = divmod(nb, world_size)
    first = rank * q + min(rank, r)
    count = q + (rank < r)
    return [range(b * batch_size, min(n, (b + 1) * batch_size))
            for b in range(first, first + count)]


def local_batches(n, batch_size, state=None, group=None):
    """This process's global batches of :func:`split` (list of ranges of sample indices)."""
    rk = ranks(state, group)
    return split(n, batch_size, rk.world_size, rk.rank)


# ------------------------------------------------------------------------------ collectives

def gather(tensor, state=None, group=None):
    """Concatenate every rank's ``(n_r, *S)`` tensor along dim 0 in rank order (= global order for
    the blocks of :func:`split`); ``n_r`` may differ between ranks (0 included), the trailing
    shape and dtype may not. Every rank gets the result, on ``tensor``'s device. Exact copies:
    no arithmetic."""
    if not isinstance(tensor, torch.Tensor) or tensor.dim() < 1:
        raise TypeError("tensor: expected a (n, ...) tensor")
    rk = ranks(state, group)
    if rk.world_size == 1:
        return tensor
    dist = _dist()
    t = tensor.detach().to(rk.device).contiguous()
    sizes = [torch.zeros(1, dtype=torch.int64, device=rk.device) for _ in range(rk.world_size)]
    dist.all_gather(sizes, torch.tensor([t.shape[0]], dtype=torch.int64, device=rk.device),
                    group=rk.group)
    sizes = [int(s) for s in sizes]
    m = max(max(sizes), 1)  # equal shapes for all_gather; never an empty tensor
    pad = torch.zeros((m, *t.shape[1:]), dtype=t.dtype, device=rk.device)
    pad[:t.shape[0]] = t
    parts = [torch.empty_like(pad) for _ in range(rk.world_size)]
    dist.all_gather(parts, pad, group=rk.group)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(tensor.device)


_gather = gather  # the functions below take a ``gather`` flag


def _load(data, rows, device):
    """The batch ``data[rows]`` of a (N, ...) tensor or an indexable dataset (items: tensors, or
    tuples / lists whose first item is one, as ``TensorDataset`` and labelled datasets give)."""
    if isinstance(data, torch.Tensor):
        x = data[rows.start:rows.stop]
    else:
        items = []
        for i in rows:
            it = data[i]
            it = it[0] if isinstance(it, (tuple, list)) else it
            if not isinstance(it, torch.Tensor):
                raise TypeError(f"data: expected items that are tensors (or tuples starting with "
                                f"one), got {type(it).__name__} at index {i}")
            items.append(it)
        x = torch.stack(items)
    return x if device is None else x.to(device)


def _length(data):
    if isinstance(data, torch.Tensor):
        if data.dim() < 1:
            raise TypeError("data: expected a (N, ...) tensor or an indexable dataset")
        return data.shape[0]
    try:
        return len(data)
    except TypeError:
        raise TypeError(f"data: expected a (N, ...) tensor or an indexable dataset with len(), "
                        f"got {type(data).__name__}") from None


def _device(device, rk, state):
    if device is not None:
        return torch.device(device)
    return rk.device if state is not None else None


# ------------------------------------------------------------------------------ sampling

def sample(sampler, model, n, shape, sigmas, *, seed, batch_size, extra_args=None,
           dtype=torch.float32, device=None, gather=True, state=None, group=None, **kwargs):
    """Draw ``n`` samples of event ``shape`` with ``sampler`` (a diffaccel sampler, or any
    callable ``sampler(model, x, sigmas, extra_args=, disable=, seed=, **kwargs)`` taking
    per-sample ``(B,)`` seeds), split across processes.

    Sample ``i`` starts from ``sigmas[0] * z_i``, ``z_i`` standard normal from its stream
    (``sample_seeds(seed, i)``, offset :data:`START_OFFSET`), and the sampler draws its noise and
    probes from the same stream. ``kwargs`` go to the sampler (``logp=True``, ``probes``,
    ``eta``, ``dist``, ...). Returns ``x`` ``(n, *shape)``, or ``(x, logp)`` when the sampler
    returns a log-density, in global order on every rank; with ``gather=False`` only this rank's
    rows (``local_batches(n, batch_size)``). ``device``: where to sample (default: the state's
    device, else CPU); ``dtype`` of x."""
    if not callable(sampler):
        raise TypeError(f"sampler: expected a sampler function, got {type(sampler).__name__}")
    n = _check_count(n, "n")
    try:
        shape = (int(shape),) if isinstance(shape, numbers.Integral) else \
            tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise TypeError(f"shape: expected the event shape as a tuple of ints, got {shape!r}") \
            from None
    sample_seeds(seed, [])  # every rank checks the seed, also those without a batch
    sig = torch.as_tensor(sigmas).reshape(-1)
    if sig.numel() < 2:
        raise ValueError(f"sigmas: expected at least 2 noise levels, got {sig.numel()}")
    sig0 = float(sig[0])
    rk = ranks(state, group)
    device = _device(device, rk, state) or torch.device("cpu")
    xs, lps = [], []
    for rows in split(n, batch_size, rk.world_size, rk.rank):
        seeds = sample_seeds(seed, rows, device)
        z = _noise((len(rows), *shape), seed=seeds, offset=START_OFFSET, device=device)
        out = sampler(model, z.to(dtype) * sig0, sigmas, extra_args=extra_args, disable=True,
                      seed=seeds, **kwargs)
        x, lp = out if isinstance(out, tuple) else (out, None)
        xs.append(x)
        if lp is not None:
            lps.append(lp)
    x = torch.cat(xs) if xs else torch.empty((0, *shape), dtype=dtype, device=device)
    track = kwargs.get("logp") not in (None, False)
    lp = (torch.cat(lps) if lps else torch.empty(0, dtype=torch.float64, device=device)) \
        if track else None
    if gather:
        x = _gather(x, state, group)
        lp = None if lp is None else _gather(lp, state, group)
    return x if lp is None else (x, lp)


# ------------------------------------------------------------------------------ likelihood

def log_likelihood(model, data, sigma_min, sigma_max, *, seed, batch_size, device=None,
                   gather=True, state=None, group=None, **kwargs):
    """``(logp, info)`` of :func:`diffaccel.sampling.log_likelihood` over a dataset split across
    processes: ``data`` is a ``(N, ...)`` tensor or an indexable dataset (items tensors, or
    tuples starting with one); data point ``i`` gets the probes of seed
    ``sample_seeds(seed, i)``; ``kwargs`` go to the solver (``steps``, ``solver``, ``probes``,
    ``atol``, ...). Each rank solves its batches on its own, with no collective inside the
    solver (adaptive solvers take different step counts per rank and per point); then ``logp``
    (N,) and ``info["stderr"]`` (N,) are gathered in global order. ``info["steps"]`` (N,) is
    the number of accepted steps of each point, ``info["nfe"]`` and ``info["vjps"]`` the (batched)
    model evaluations and vector-Jacobian products over all ranks, ``info["local_nfe"]`` and
    ``info["local_vjps"]`` this rank's, ``info["indices"]`` this rank's batches. A point that is non-finite (or makes the model return non-finite values)
    gets NaN, as in the one-process solver, without stopping the others. With
    ``gather=False``, ``logp`` and the per-point entries cover this rank's rows only."""
    from .sampling.likelihood import log_likelihood as _ll

    N = _length(data)
    sample_seeds(seed, [])  # every rank checks the seed, also those without a batch
    rk = ranks(state, group)
    device = _device(device, rk, state)
    batches = split(N, batch_size, rk.world_size, rk.rank)
    lps, ses, steps, nfe, vjps = [], [], [], 0, 0
    for rows in batches:
        x = _load(data, rows, device)
        lp, info = _ll(model, x, sigma_min, sigma_max, seed=sample_seeds(seed, rows, x.device),
                       **kwargs)
        lps.append(lp)
        ses.append(info["stderr"])
        st = info["steps"]  # an int, or dopri5's (B,) accepted steps per sample
        steps.append(st.to(device=lp.device, dtype=torch.int64) if isinstance(st, torch.Tensor)
                     else torch.full((len(rows),), int(st), dtype=torch.int64, device=lp.device))
        nfe += int(info["nfe"])
        vjps += int(info["vjps"])
    dev = lps[0].device if lps else (device or torch.device("cpu"))
    cat = (lambda ts, dt: torch.cat(ts) if ts else torch.empty(0, dtype=dt, device=dev))
    lp, se, st = cat(lps, torch.float64), cat(ses, torch.float64), cat(steps, torch.int64)
    info = {"local_nfe": nfe, "local_vjps": vjps, "indices": batches}
    if gather:
        lp, se, st = _gather(lp, state, group), _gather(se, state, group), _gather(st, state, group)
        total = all_reduce(torch.tensor([nfe, vjps], dtype=torch.int64), state, group)
        info["nfe"], info["vjps"] = int(total[0]), int(total[1])
    else:
        info["nfe"] = info["vjps"] = None
    info.update(stderr=se, steps=st)
    return lp, info


# ------------------------------------------------------------------------------ VRG

def measure_mse(model, data, schedule, *, batch_size, levels=None, prediction="eps", seed=0,
                passes=1, device=None, timestep_fn=None, model_kwargs=None, backend=None,
                state=None, group=None):
    """:func:`diffaccel.vrg.measure_mse` over a dataset split across processes; the same
    :class:`~diffaccel.vrg.MSETable` on every rank.

    ``data``: a ``(N, ...)`` tensor or an indexable dataset. Data point ``i`` in pass ``p`` is
    noised exactly as in the single-process ``measure_mse`` reading the global batches in order
    (level ``levels[(p N + i) % L]``, noise seed ``(seed, p N + i)``). Each rank keeps one moment
    table per batch; they are gathered and added in global batch order, so the table is
    bit-identical to the single-process one over the same batches, whatever the number of
    processes (memory: ``passes * ceil(N / batch_size)`` tables of ``T x 3`` float64 on every
    rank; for a sum that is only equal to float64 rounding, use ``ErrorStats.all_reduce``)."""
    from .vrg import moments as _m

    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(f"passes: expected a positive int, got {passes!r}")
    N = _length(data)
    rk = ranks(state, group)
    device = _device(device, rk, state)
    run = _m._Measure(schedule, levels, prediction, seed, timestep_fn, model_kwargs, backend)
    T = run.num_bins
    tables, keys = [], []
    batches = split(N, batch_size, rk.world_size, rk.rank)
    for p in range(passes):
        for rows in batches:
            x0 = _load(data, rows, device)
            tables.append(run.batch_table(model, x0, p * N + rows.start).cpu())
            keys.append(p * N + rows.start)
    tab = torch.stack(tables) if tables else torch.empty((0, T, 3), dtype=torch.float64)
    key = torch.tensor(keys, dtype=torch.int64) if keys else torch.empty(0, dtype=torch.int64)
    tab, key = gather(tab, state, group), gather(key, state, group)
    if tab.shape[0] == 0:
        raise ValueError("data: no batches")
    total = torch.zeros(T, 3, dtype=torch.float64)
    for j in torch.argsort(key).tolist():  # the single-process order: pass by pass, batch by batch
        total.add_(tab[j])
    stats = _m.ErrorStats(run.abar)
    stats.table.copy_(total)
    return stats.mse_table()
