"""Registration of the VRG ops' fake functions, autograd and Triton implementations.

The schemas are in ``diffaccel/library.py`` (``SCHEMAS``; defined at import, before the extension
adds its CPU/CUDA kernels). Imported by ``diffaccel.vrg``.
"""
import torch

from ..library import TRITON_SUFFIX, _both, _impl_triton, _kernels, _lib


def _register_fake(name, fn):
    for qualname in _both(name):
        torch.library.register_fake(qualname, fn, lib=_lib)


_register_fake("vrg_error_moments",
               lambda pred, target, bins, num_bins:
               pred.new_empty((num_bins, 3), dtype=torch.float64))
_register_fake("vrg_cumulative_error",
               lambda abar, grid, mse, solver: abar.new_empty((abar.shape[0],)))
_register_fake("vrg_cumulative_error_grad",
               lambda abar, grid, mse, solver:
               (abar.new_empty((abar.shape[0],)),
                torch.empty_like(abar, memory_format=torch.contiguous_format)))


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


for _suffix in ("", TRITON_SUFFIX):
    torch.library.register_autograd(f"diffaccel::vrg_cumulative_error{_suffix}",
                                    _cpe_backward_for(_suffix), setup_context=_cpe_setup, lib=_lib)


# ------------------------------------------------------------------------- Triton kernels

@_impl_triton("vrg_error_moments")
def _error_moments_triton(pred, target, bins, num_bins):
    return _kernels("vrg").error_moments(pred.contiguous(), target.contiguous(),
                                         bins.contiguous(), num_bins)


@_impl_triton("vrg_cumulative_error")
def _cumulative_error_triton(abar, grid, mse, solver):
    return _kernels("vrg").cumulative_error(abar.contiguous(), grid.contiguous(),
                                            mse.contiguous(), solver, False)[0]


@_impl_triton("vrg_cumulative_error_grad")
def _cumulative_error_grad_triton(abar, grid, mse, solver):
    return _kernels("vrg").cumulative_error(abar.contiguous(), grid.contiguous(),
                                            mse.contiguous(), solver, True)
