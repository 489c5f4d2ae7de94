"""The VRG ops (docs/math.md Section 5): ``vrg_error_moments``, ``vrg_cumulative_error``,
``vrg_cumulative_error_grad``.

Schemas, fake functions, autograd, the Python mirror of their C++ argument checks
(``csrc/vrg_checks.h``, used in ``csrc/vrg_ops.cpp`` and ``csrc/cuda/vrg_ops_cuda.cpp``) and the
Triton implementations (``kernels/vrg.py``). Reference: ``diffaccel/reference/vrg.py``; public
API: ``diffaccel/vrg/``.
"""
import torch

from ..layout import VRG_DDIM, VRG_DPM2M
from ..library import define, impl_triton, kernels, register_autograd, register_fake
from ._checks import check, check_float_input, check_same_device, dtype_name, sizes

# pred, target [B, ...], bins [B] int64 -> [num_bins, 3] float64 (element count, sum e,
# sum e^2), e = pred - target
define("vrg_error_moments", "(Tensor pred, Tensor target, Tensor bins, int num_bins) -> Tensor")
# abar [K, N] float64 trajectories, MSE table grid [M] (increasing), mse [M] -> cpe [K];
# solver ddim=0, dpm2m=1 (diffaccel/vrg/trajectory.py)
define("vrg_cumulative_error", "(Tensor abar, Tensor grid, Tensor mse, int solver) -> Tensor")
# -> (cpe [K], d cpe / d abar [K, N])
define("vrg_cumulative_error_grad",
       "(Tensor abar, Tensor grid, Tensor mse, int solver) -> (Tensor, Tensor)")


# ------------------------------------------------------------------------------------ checks
# Value checks that would need a device sync (bins in range, trajectories sorted) are done by the
# Python API in eager mode, as on the C++ side.

def check_error_moments(pred, target, bins, num_bins):
    """The C++ kernels' checks of vrg_error_moments' arguments."""
    check(pred.dim() >= 1, "pred: expected a (B, ...) tensor, got a scalar")
    check_float_input(pred, "pred")
    check_same_device(pred, target, "target")
    check_same_device(pred, bins, "bins")
    check(target.shape == pred.shape, "target: expected the shape of pred ", sizes(pred),
          ", got ", sizes(target))
    check(target.dtype == pred.dtype, "target: expected the dtype of pred (",
          dtype_name(pred.dtype), "), got ", dtype_name(target.dtype))
    check(bins.dtype == torch.int64 and bins.dim() == 1 and bins.shape[0] == pred.shape[0],
          "bins: expected an int64 tensor of shape (", pred.shape[0], ",), got ",
          dtype_name(bins.dtype), " ", sizes(bins))
    check(num_bins >= 1, "num_bins: expected a positive number of bins, got ", num_bins)


def check_cumulative_error(abar, grid, mse, solver):
    """The C++ kernels' checks of vrg_cumulative_error(_grad)'s arguments."""
    check(abar.dim() == 2 and abar.dtype == torch.float64,
          "abar: expected a float64 tensor of shape (K, N), got ", dtype_name(abar.dtype), " ",
          sizes(abar))
    check_same_device(abar, grid, "grid")
    check_same_device(abar, mse, "mse")
    check(grid.dim() == 1 and grid.dtype == torch.float64 and grid.shape[0] >= 2,
          "grid: expected a float64 tensor of shape (M,), M >= 2, got ", dtype_name(grid.dtype),
          " ", sizes(grid))
    check(mse.dim() == 1 and mse.dtype == torch.float64 and mse.shape[0] == grid.shape[0],
          "mse: expected a float64 tensor of shape (", grid.shape[0], ",), got ",
          dtype_name(mse.dtype), " ", sizes(mse))
    check(solver in (VRG_DDIM, VRG_DPM2M), "solver: unknown solver code ", solver)


# ---------------------------------------------------------------------------- fake kernels

def _error_moments_fake(pred, target, bins, num_bins):
    check_error_moments(pred, target, bins, num_bins)
    return pred.new_empty((num_bins, 3), dtype=torch.float64)


def _cumulative_error_fake(abar, grid, mse, solver):
    check_cumulative_error(abar, grid, mse, solver)
    return abar.new_empty((abar.shape[0],))


def _cumulative_error_grad_fake(abar, grid, mse, solver):
    check_cumulative_error(abar, grid, mse, solver)
    return (abar.new_empty((abar.shape[0],)),
            torch.empty_like(abar, memory_format=torch.contiguous_format))


register_fake("vrg_error_moments", _error_moments_fake)
register_fake("vrg_cumulative_error", _cumulative_error_fake)
register_fake("vrg_cumulative_error_grad", _cumulative_error_grad_fake)


# -------------------------------------------------------------------------------- autograd
# d cpe / d abar is analytic in every kernel (the *_grad op); grid and mse are data, not
# differentiated (use the reference backend for gradients w.r.t. the table).

def _cpe_setup(ctx, inputs, output):
    abar, grid, mse, solver = inputs
    ctx.save_for_backward(abar, grid, mse)
    ctx.solver = solver


def _cpe_backward_for(suffix):
    def backward(ctx, grad):
        abar, grid, mse = ctx.saved_tensors
        grad_op = getattr(torch.ops.diffaccel, "vrg_cumulative_error_grad" + suffix)
        _, dabar = grad_op(abar, grid, mse, ctx.solver)
        return grad[:, None] * dabar, None, None, None
    return backward


register_autograd("vrg_cumulative_error", _cpe_backward_for, _cpe_setup)


# ------------------------------------------------------------------------- Triton kernels

@impl_triton("vrg_error_moments")
def _error_moments_triton(pred, target, bins, num_bins):
    check_error_moments(pred, target, bins, num_bins)
    return kernels("vrg").error_moments(pred.contiguous(), target.contiguous(),
                                        bins.contiguous(), num_bins)


@impl_triton("vrg_cumulative_error")
def _cumulative_error_triton(abar, grid, mse, solver):
    check_cumulative_error(abar, grid, mse, solver)
    return kernels("vrg").cumulative_error(abar.contiguous(), grid.contiguous(),
                                           mse.contiguous(), solver, False)[0]


@impl_triton("vrg_cumulative_error_grad")
def _cumulative_error_grad_triton(abar, grid, mse, solver):
    check_cumulative_error(abar, grid, mse, solver)
    return kernels("vrg").cumulative_error(abar.contiguous(), grid.contiguous(),
                                           mse.contiguous(), solver, True)
