"""Error statistics of a model's predictions per noise level (docs/math.md Section 5).

For bin ``j`` keep the element count, ``sum e`` and ``sum e^2`` (``e = eps_hat - eps``) in
float64; merging batches or ranks is addition and ``MSE_j = sum e^2 / n_j``.
"""
import numbers

import torch

from .. import _validate, backends
from .._dist import all_reduce
from ..library import op
from ..reference import vrg as _ref
from .table import MSETable

_FAST = (torch.float32, torch.float16, torch.bfloat16)


def _check_pair(pred, target):
    for name, t in (("pred", pred), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")
        if t.dim() < 1:
            raise ValueError(f"{name}: expected a (B, ...) tensor, got a scalar")
    if pred.shape != target.shape:
        raise ValueError(f"target: expected the shape of pred {tuple(pred.shape)}, "
                         f"got {tuple(target.shape)}")
    if pred.device != target.device:
        raise ValueError(f"target: expected a tensor on {pred.device}, got {target.device}")


def _check_bins(bins, B, num_bins, device):
    if isinstance(num_bins, bool) or not isinstance(num_bins, numbers.Integral) or num_bins < 1:
        raise ValueError(f"num_bins: expected a positive int, got {num_bins!r}")
    if isinstance(bins, numbers.Integral) and not isinstance(bins, bool):
        bins = torch.full((B,), int(bins), dtype=torch.int64, device=device)
    if not isinstance(bins, torch.Tensor):
        raise TypeError(f"bins: expected an int or an integer tensor of shape ({B},), "
                        f"got {type(bins).__name__}")
    if bins.is_floating_point() or bins.is_complex() or bins.dtype == torch.bool:
        raise TypeError(f"bins: expected an integer tensor, got {bins.dtype}")
    if bins.dim() == 0:
        bins = bins.expand(B)
    if tuple(bins.shape) != (B,):
        raise ValueError(f"bins: expected shape ({B},) (one bin per sample), got {tuple(bins.shape)}")
    if bins.device != device:
        raise ValueError(f"bins: expected a tensor on {device}, got {bins.device}")
    bins = bins.to(torch.int64)
    if not torch.compiler.is_compiling() and B:
        lo, hi = int(bins.min()), int(bins.max())
        if lo < 0 or hi >= num_bins:
            raise ValueError(f"bins: expected values in [0, {num_bins}), got range [{lo}, {hi}]")
    return bins


def error_moments(pred, target, bins, num_bins, *, out=None, backend=None):
    """Fused per-bin error moments: a ``(num_bins, 3)`` float64 table of element count,
    ``sum e`` and ``sum e^2`` with ``e = pred - target``.

    pred, target: ``(B, ...)`` tensors of the same shape (float32, float16, bfloat16; float64
    runs on the reference backend); bins: ``(B,)`` integer tensor (or an int for the whole batch)
    with values in ``[0, num_bins)``. ``e`` is formed in float32 (float64 for float64 inputs)
    and summed in float64. With ``out`` (a float64 ``(num_bins, 3)`` tensor) the moments are
    added into it and it is returned.
    """
    _check_pair(pred, target)
    B = pred.shape[0]
    bins = _check_bins(bins, B, num_bins, pred.device)
    if out is not None:
        if not isinstance(out, torch.Tensor) or out.dtype != torch.float64 or \
                tuple(out.shape) != (num_bins, 3) or out.device != pred.device:
            raise ValueError(f"out: expected a float64 tensor of shape ({num_bins}, 3) on "
                             f"{pred.device}")
    if pred.dtype != target.dtype:
        common = torch.promote_types(pred.dtype, target.dtype)
        pred, target = pred.to(common), target.to(common)
    req = backends.requested(backend)
    if pred.dtype not in _FAST:
        if req not in ("auto", "reference"):
            raise TypeError(f"pred: {pred.dtype} is supported by the reference backend only "
                            f"(backend {req!r} takes float32, float16 or bfloat16)")
        name = "reference"
    else:
        name = backends.select(backend, pred.device, "vrg_error_moments")
    if name == "reference":
        table = _ref.error_moments(pred, target, bins, num_bins)
    else:
        table = op("vrg_error_moments", name)(pred, target, bins, int(num_bins))
    if out is not None:
        return out.add_(table)
    return table


class ErrorStats:
    """Accumulator of error moments per noise level.

    ``abar``: the noise levels of the bins (e.g. a schedule's ``alphas_cumprod``, one bin per
    training timestep). ``update(pred, target, abar_or_t)`` adds a batch: ``abar_or_t`` is an
    integer (tensor) of bin indices / timesteps into ``abar``, or a float (tensor) of abar values,
    each sent to the bin of the nearest level. ``merge`` and ``all_reduce`` add tables;
    ``mse_table()`` gives the :class:`MSETable` of the bins that saw data.
    """

    def __init__(self, abar, *, device=None, backend=None):
        a = torch.as_tensor(abar, dtype=torch.float64).detach().flatten()
        if a.numel() < 1 or not bool(torch.isfinite(a).all()) or a.min() < 0 or a.max() > 1:
            raise ValueError("abar: expected a non-empty 1-d tensor of noise levels in [0, 1]")
        device = torch.device(device) if device is not None else a.device
        self.abar = a.to(device)
        self.device = device
        self.backend = backend
        self.table = torch.zeros(a.numel(), 3, dtype=torch.float64, device=device)
        order = torch.argsort(self.abar)
        self._sorted, self._order = self.abar[order], order

    @property
    def num_bins(self):
        return self.abar.numel()

    def bins_of(self, abar_or_t, B):
        """(B,) int64 bin indices of integer timesteps or float abar values (nearest level)."""
        v = abar_or_t
        if isinstance(v, bool):
            raise TypeError("abar_or_t: expected an int, a float or a tensor, got a bool")
        if isinstance(v, numbers.Integral):
            return _check_bins(int(v), B, self.num_bins, self.device)
        if isinstance(v, numbers.Real):
            v = torch.full((B,), float(v), dtype=torch.float64, device=self.device)
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"abar_or_t: expected an int, a float or a tensor, got {type(v).__name__}")
        v = v.to(self.device)
        if v.dim() == 0:
            v = v.expand(B)
        if tuple(v.shape) != (B,):
            raise ValueError(f"abar_or_t: expected shape ({B},), got {tuple(v.shape)}")
        if not v.is_floating_point():
            return _check_bins(v, B, self.num_bins, self.device)
        v = v.double()
        if B and _validate.eager() and not bool(torch.isfinite(v).all() & (v.min() >= 0) & (v.max() <= 1)):
            raise ValueError("abar_or_t: expected abar values in [0, 1]")
        g = self._sorted
        i = torch.searchsorted(g, v).clamp(1, max(g.numel() - 1, 1)) if g.numel() > 1 \
            else torch.zeros_like(v, dtype=torch.int64)
        if g.numel() > 1:
            i = torch.where((v - g[i - 1]).abs() <= (g[i] - v).abs(), i - 1, i)
        return self._order[i]

    def update(self, pred, target, abar_or_t):
        """Add the errors ``pred - target`` of a batch ``(B, ...)`` at its noise levels."""
        _check_pair(pred, target)
        if pred.device != self.device:
            raise ValueError(f"pred: expected a tensor on {self.device}, got {pred.device}")
        bins = self.bins_of(abar_or_t, pred.shape[0])
        error_moments(pred.detach(), target.detach(), bins, self.num_bins, out=self.table,
                      backend=self.backend)
        return self

    def _check_other(self, other):
        if not isinstance(other, ErrorStats):
            raise TypeError(f"other: expected an ErrorStats, got {type(other).__name__}")
        if other.num_bins != self.num_bins or not torch.equal(other.abar.cpu(), self.abar.cpu()):
            raise ValueError("other: expected an ErrorStats over the same noise levels")

    def merge(self, other):
        """Add ``other``'s moments into this accumulator (in place; returns self)."""
        self._check_other(other)
        self.table += other.table.to(self.device)
        return self

    def all_reduce(self, group=None, *, state=None):
        """Sum the moments over the ranks of ``group`` (``torch.distributed``), or of an
        accelerate ``PartialState`` / ``Accelerator`` ``state``; in place. In a single process
        (torch.distributed not initialized, or a state of one process) there is nothing to add
        and the table is left as it is, so the same script runs with and without torchrun; a
        process launched as one of several (``WORLD_SIZE`` > 1) without torch.distributed set up
        gets a RuntimeError instead of a silently partial table. Equal to one process's table up
        to float64 rounding (the order of the sums differs;
        :func:`diffaccel.distributed.measure_mse` gives the bit-identical table)."""
        all_reduce(self.table, state, group)
        return self

    @property
    def count(self):
        return self.table[:, 0]

    def mean(self):
        """Mean error per bin (NaN where empty)."""
        return self.table[:, 1] / self.table[:, 0]

    def mse(self):
        """Per-element MSE per bin (NaN where empty)."""
        return self.table[:, 2] / self.table[:, 0]

    def mse_table(self, *, min_count=1, ts=True):
        """The :class:`MSETable` of the bins with at least ``min_count`` elements (timesteps =
        bin indices when ``ts``)."""
        keep = (self.table[:, 0] >= max(min_count, 1)).cpu()
        if int(keep.sum()) < 2:
            raise ValueError(f"min_count: fewer than 2 bins have at least {max(min_count, 1)} "
                             "elements; measure more data")
        idx = torch.nonzero(keep).flatten()
        return MSETable(self.abar.cpu()[idx], self.mse().cpu()[idx], idx if ts else None)

    def state_dict(self):
        return {"abar": self.abar.cpu(), "table": self.table.cpu()}

    @classmethod
    def from_state_dict(cls, state, *, device=None):
        s = cls(state["abar"], device=device)
        s.table.copy_(state["table"])
        return s


def _schedule_abar(schedule):
    a = getattr(schedule, "alphas_cumprod", schedule)
    a = torch.as_tensor(a, dtype=torch.float64).detach().cpu().flatten()
    if a.numel() < 2 or not bool(torch.isfinite(a).all()) or a.min() <= 0 or a.max() >= 1:
        raise ValueError("schedule: expected abar values in (0, 1) per timestep (a tensor, or an "
                         "object with .alphas_cumprod such as a diffusers scheduler)")
    return a


class _Measure:
    """One measure_mse run's settings; :meth:`batch_table` noises a batch whose first sample is
    number ``n0`` of the data stream and returns its moment table (what ``update`` adds)."""

    def __init__(self, schedule, levels, prediction, seed, timestep_fn, model_kwargs, backend):
        if prediction not in ("eps", "x0"):
            raise ValueError(f"prediction: expected 'eps' or 'x0', got {prediction!r}")
        self.abar = _schedule_abar(schedule)
        T = self.abar.numel()
        lv = torch.arange(T) if levels is None else torch.as_tensor(levels).flatten()
        if lv.is_floating_point() or lv.numel() < 2:
            raise ValueError("levels: expected at least 2 integer timesteps")
        lv = lv.to(torch.int64)
        if int(lv.min()) < 0 or int(lv.max()) >= T:
            raise ValueError(f"levels: expected timesteps in [0, {T}), got "
                             f"[{int(lv.min())}, {int(lv.max())}]")
        self.levels, self.prediction, self.seed = lv, prediction, int(seed)
        self.timestep_fn, self.kwargs, self.backend = timestep_fn, model_kwargs or {}, backend

    @property
    def num_bins(self):
        return self.abar.numel()

    def errors(self, model, x0, n0):
        """(eps_hat, eps, t) of the batch ``x0`` (B, ...), samples ``n0 .. n0 + B - 1``."""
        from .. import random as _random
        from .. import stroke as _stroke

        if not isinstance(x0, torch.Tensor) or x0.dim() < 1:
            raise TypeError("data: expected batches of (B, ...) tensors")
        lv, backend = self.levels, self.backend
        B = x0.shape[0]
        pos = (n0 + torch.arange(B)) % lv.numel()
        t = lv[pos].to(x0.device)
        ab = self.abar.to(x0.device)[t]
        a, s = ab.sqrt(), (1 - ab).sqrt()
        seeds = (torch.arange(B, device=x0.device) + n0) * 1000003 + self.seed
        work = x0 if x0.dtype in _FAST else x0.float()
        if work.dim() == 4:
            zeros = torch.zeros(B, 1, dtype=torch.float32, device=x0.device)
            xt, eps = _stroke.stroke_noise(work, a.float(), s.float(), scales=(2,),
                                           data_weights=zeros, noise_weights=zeros,
                                           seed=seeds, backend=backend)
        else:
            eps = _random.noise(tuple(work.shape), seed=seeds, device=x0.device, backend=backend)
            shape = (B,) + (1,) * (work.dim() - 1)
            xt = (a.view(shape) * work.double() + s.view(shape) * eps.double()).to(work.dtype)
        with torch.no_grad():
            tin = self.timestep_fn(t) if self.timestep_fn is not None else t
            out = model(xt, tin, **self.kwargs)
        if not isinstance(out, torch.Tensor) or out.shape != xt.shape:
            raise ValueError(f"model: expected an output of shape {tuple(xt.shape)}, got "
                             f"{getattr(out, 'shape', type(out).__name__)}")
        if self.prediction == "x0":
            shape = (B,) + (1,) * (xt.dim() - 1)
            out = ((xt.double() - a.view(shape) * out.double()) / s.view(shape)).float()
        return out, eps, t

    def batch_table(self, model, x0, n0):
        out, eps, t = self.errors(model, x0, n0)
        return error_moments(out, eps, t, self.num_bins, backend=self.backend)


def measure_mse(model, data, schedule, *, levels=None, prediction="eps", seed=0, passes=1,
                device=None, progress=True, timestep_fn=None, model_kwargs=None, backend=None):
    """Measure a model's per-element eps-prediction MSE at noise levels of ``schedule``.

    model: called as ``model(x_t, t, **model_kwargs)`` with ``t`` a ``(B,)`` int64 tensor of
    timesteps (or ``timestep_fn(t)`` when given, e.g. to pass sigmas or continuous times);
    it predicts eps (``prediction="eps"``) or x0 (``"x0"``, converted to
    ``eps_hat = (x_t - sqrt(abar) x0_hat) / sqrt(1 - abar)``).
    data: an iterable of ``(B, ...)`` clean-sample tensors (or tuples whose first item is one).
    schedule: ``abar`` per timestep (tensor, or an object with ``.alphas_cumprod``).
    levels: timesteps to measure (default: all); sample ``n`` of the data stream is noised at
    ``levels[n % len(levels)]`` (round robin: one model call per sample per pass), with noise
    from ``diffaccel.noise`` at per-sample seeds ``(seed, n)`` (``stroke_noise`` with zero
    stroke weights, i.e. the plain noising ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps``, for
    images). ``passes`` iterates ``data`` that many times (levels keep rotating).
    Returns the :class:`MSETable` (timesteps in ``ts``). Across processes:
    :func:`diffaccel.distributed.measure_mse`.
    """
    run = _Measure(schedule, levels, prediction, seed, timestep_fn, model_kwargs, backend)
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(f"passes: expected a positive int, got {passes!r}")
    stats = None
    n_seen = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc="measure_mse", unit="sample")
    try:
        for _ in range(passes):
            for batch in data:
                x0 = batch[0] if isinstance(batch, (tuple, list)) else batch
                if not isinstance(x0, torch.Tensor) or x0.dim() < 1:
                    raise TypeError("data: expected batches of (B, ...) tensors")
                if device is not None:
                    x0 = x0.to(device)
                if stats is None:
                    stats = ErrorStats(run.abar, device=x0.device, backend=backend)
                stats.update(*run.errors(model, x0, n_seen))
                n_seen += x0.shape[0]
                if bar is not None:
                    bar.update(x0.shape[0])
    finally:
        if bar is not None:
            bar.close()
    if stats is None:
        raise ValueError("data: no batches")
    return stats.mse_table()
