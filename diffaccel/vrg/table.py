"""MSETable: a model's per-element eps-prediction MSE as a function of abar (docs/math.md Section 5)."""
import math
import os

import numpy as np
import torch

from ..reference import vrg as _ref


class MSETable:
    """Per-element MSE of a model's eps-prediction at noise levels ``abar``.

    The grid is stored increasing in float64 (``abar``, ``mse``, optional integer timesteps
    ``ts``). Rows with the same ``abar`` (e.g. the 6-decimal rounding of the published CIFAR-10
    table makes two timesteps share ``abar = 4.6e-5``) are merged: their MSE values are averaged,
    so the interpolant is a function. Between grid points MSE is linear in ``abar`` and exact at
    them; beyond the grid's ends it is constant (the end values), see :meth:`__call__`.
    """

    def __init__(self, abar, mse, ts=None):
        a = torch.as_tensor(abar, dtype=torch.float64).detach().cpu().flatten()
        m = torch.as_tensor(mse, dtype=torch.float64).detach().cpu().flatten()
        if a.shape != m.shape:
            raise ValueError(f"mse: expected one value per abar ({a.numel()}), got {m.numel()}")
        if ts is not None:
            t = torch.as_tensor(ts, dtype=torch.int64).detach().cpu().flatten()
            if t.shape != a.shape:
                raise ValueError(f"ts: expected one timestep per abar ({a.numel()}), got {t.numel()}")
        else:
            t = None
        if not (torch.isfinite(a).all() and torch.isfinite(m).all()):
            raise ValueError("abar, mse: expected finite values")
        if a.numel() and (a.min() < 0 or a.max() > 1):
            raise ValueError(f"abar: expected values in [0, 1], got [{a.min().item():.6g}, "
                             f"{a.max().item():.6g}]")
        if m.numel() and m.min() < 0:
            raise ValueError(f"mse: expected non-negative values, got min {m.min().item():.6g}")
        order = torch.argsort(a, stable=True)
        a, m = a[order], m[order]
        t = t[order] if t is not None else None
        uniq, inverse, counts = torch.unique_consecutive(a, return_inverse=True, return_counts=True)
        if uniq.numel() < a.numel():
            m = torch.zeros_like(uniq).index_add_(0, inverse, m) / counts.double()
            if t is not None:  # keep the first timestep of each merged group
                first = torch.cumsum(counts, 0) - counts
                t = t[first]
            a = uniq
        if a.numel() < 2:
            raise ValueError(f"abar: expected at least 2 distinct noise levels, got {a.numel()}")
        self.abar, self.mse, self.ts = a, m, t

    # ----------------------------------------------------------------------------- access

    def __len__(self):
        return self.abar.numel()

    def __repr__(self):
        return (f"MSETable({len(self)} levels, abar in [{self.abar[0].item():.6g}, "
                f"{self.abar[-1].item():.6g}], MSE in [{self.mse.min().item():.4g}, "
                f"{self.mse.max().item():.4g}])")

    @property
    def range(self):
        """(smallest, largest) abar of the grid."""
        return float(self.abar[0]), float(self.abar[-1])

    def tensors(self, device=None):
        """(grid, mse) float64 tensors on ``device`` (cached per device)."""
        device = torch.device(device or "cpu")
        cache = self.__dict__.setdefault("_cache", {})
        if device not in cache:
            cache[device] = (self.abar.to(device), self.mse.to(device))
        return cache[device]

    def __call__(self, abar):
        """MSE at ``abar`` (any shape; float64 result; differentiable in abar): linear between
        grid points, exact at them, constant beyond the grid's ends."""
        x = torch.as_tensor(abar, dtype=torch.float64)
        grid, mse = self.tensors(x.device)
        return _ref.interp_mse(x, grid, mse)

    # ----------------------------------------------------------------------------- files

    @classmethod
    def load(cls, path):
        """Read a table: ``.npz`` (arrays ``abar``, ``mse``, optional ``ts``) or the
        tab-separated text format of the VRG data (``ts  alpha_bar  MSE`` per line, ``#``
        comments; two columns ``alpha_bar  MSE`` are accepted too)."""
        path = os.fspath(path)
        if path.endswith(".npz"):
            with np.load(path) as z:
                return cls(z["abar"], z["mse"], z["ts"] if "ts" in z.files else None)
        ts, abar, mse = [], [], []
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                cols = line.split()
                try:
                    if len(cols) == 3:
                        ts.append(int(cols[0]))
                        abar.append(float(cols[1]))
                        mse.append(float(cols[2]))
                    elif len(cols) == 2:
                        abar.append(float(cols[0]))
                        mse.append(float(cols[1]))
                    else:
                        raise ValueError
                except ValueError:
                    raise ValueError(f"path: {path}:{lineno}: expected 'ts<TAB>alpha_bar<TAB>MSE', "
                                     f"got {line!r}") from None
        return cls(abar, mse, ts if len(ts) == len(abar) and ts else None)

    def save(self, path, *, comment=None):
        """Write ``.npz`` or (any other suffix) the tab-separated text format, least noisy level
        first like the published tables, full float64 precision."""
        path = os.fspath(path)
        if path.endswith(".npz"):
            arrays = {"abar": self.abar.numpy(), "mse": self.mse.numpy()}
            if self.ts is not None:
                arrays["ts"] = self.ts.numpy()
            np.savez(path, **arrays)
            return
        ts = self.ts if self.ts is not None else torch.arange(len(self) - 1, -1, -1)
        with open(path, "w") as f:
            for line in (comment or "").splitlines():
                f.write(f"# {line}\n")
            f.write("# MSE: per-element mean squared error of the eps-prediction\n")
            f.write("# ts\talpha_bar\tMSE\n")
            for i in range(len(self) - 1, -1, -1):
                f.write(f"{int(ts[i]):4d}\t{self.abar[i].item()!r}\t{self.mse[i].item()!r}\n")


def load_trajectory(path, *, drop_first=True):
    """abar values of a trajectory file (one a line, ``#`` comments, optionally
    ``value : timestep``), least noisy first, as a float64 tensor. The VRG/DPM-Solver files
    start with timestep 0, which ``drop_first`` drops (the trajectory proper starts at line 2)."""
    vals = []
    with open(os.fspath(path)) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            vals.append(float(line.split(":")[0]))
    vals = vals[1:] if drop_first else vals
    if not vals or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"path: no finite trajectory values in {path}")
    return torch.tensor(vals, dtype=torch.float64)
