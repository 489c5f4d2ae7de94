// Argument checks of the VRG ops and their entry points, shared by the CPU and CUDA
// registrations (csrc/vrg_ops.cpp, csrc/cuda/vrg_ops_cuda.cpp). Value checks that would need a
// device sync (bins in range on CUDA, trajectories sorted) are done by the Python API in eager
// mode; the kernels stay in bounds regardless.
#pragma once
#include <ATen/ATen.h>

#include <tuple>

#include "checks.h"
#include "diffaccel/vrg.h"

namespace diffaccel {

// pred, target [B, ...] of one float dtype and shape; bins [B] int64. Returns D.
inline int64_t check_error_moments(const at::Tensor& pred, const at::Tensor& target,
                                   const at::Tensor& bins, int64_t num_bins) {
  TORCH_CHECK(pred.dim() >= 1, "pred: expected a (B, ...) tensor, got a scalar");
  check_float_input(pred, "pred");
  check_same_device(pred, target, "target");
  check_same_device(pred, bins, "bins");
  TORCH_CHECK(target.sizes() == pred.sizes(), "target: expected the shape of pred ",
              pred.sizes(), ", got ", target.sizes());
  TORCH_CHECK(target.scalar_type() == pred.scalar_type(), "target: expected the dtype of pred (",
              pred.scalar_type(), "), got ", target.scalar_type());
  TORCH_CHECK(bins.scalar_type() == at::kLong && bins.dim() == 1 && bins.size(0) == pred.size(0),
              "bins: expected an int64 tensor of shape (", pred.size(0), ",), got ",
              bins.scalar_type(), " ", bins.sizes());
  TORCH_CHECK(num_bins >= 1, "num_bins: expected a positive number of bins, got ", num_bins);
  return pred.size(0) == 0 ? 0 : pred.numel() / pred.size(0);
}

// abar [K, N] float64, grid [M] and mse [M] float64 with M >= 2, known solver.
inline void check_cumulative_error(const at::Tensor& abar, const at::Tensor& grid,
                                   const at::Tensor& mse, int64_t solver) {
  TORCH_CHECK(abar.dim() == 2 && abar.scalar_type() == at::kDouble,
              "abar: expected a float64 tensor of shape (K, N), got ", abar.scalar_type(), " ",
              abar.sizes());
  check_same_device(abar, grid, "grid");
  check_same_device(abar, mse, "mse");
  TORCH_CHECK(grid.dim() == 1 && grid.scalar_type() == at::kDouble && grid.size(0) >= 2,
              "grid: expected a float64 tensor of shape (M,), M >= 2, got ", grid.scalar_type(),
              " ", grid.sizes());
  TORCH_CHECK(mse.dim() == 1 && mse.scalar_type() == at::kDouble && mse.size(0) == grid.size(0),
              "mse: expected a float64 tensor of shape (", grid.size(0), ",), got ",
              mse.scalar_type(), " ", mse.sizes());
  TORCH_CHECK(solver == kDdim || solver == kDpm2m, "solver: unknown solver code ", solver);
}

// vrg_error_moments' inputs, checked and contiguous, D, and the zeroed table [num_bins, 3] float64.
struct MomentsCall {
  at::Tensor pred, target, bins, table;
  int64_t D;
};

inline MomentsCall prepare_error_moments(const at::Tensor& pred, const at::Tensor& target,
                                         const at::Tensor& bins, int64_t num_bins) {
  const int64_t D = check_error_moments(pred, target, bins, num_bins);
  return {pred.contiguous(), target.contiguous(), bins.contiguous(),
          at::zeros({num_bins, 3}, pred.options().dtype(at::kDouble)), D};
}

// vrg_cumulative_error(_grad)'s inputs, checked and contiguous, and outputs: cpe [K] and, for
// the _grad op, grad [K, N] (undefined otherwise).
struct CpeCall {
  at::Tensor abar, grid, mse, cpe, grad;
  int32_t solver;
};

// The entry points of the two cumulative-error schemas around one backend's Run(call), which
// fills call.cpe (and call.grad when defined).
template <void (*Run)(const CpeCall&)>
struct CpeOps {
  static CpeCall call(const at::Tensor& abar, const at::Tensor& grid, const at::Tensor& mse,
                      int64_t solver, bool with_grad) {
    check_cumulative_error(abar, grid, mse, solver);
    CpeCall c{abar.contiguous(), grid.contiguous(), mse.contiguous(), at::Tensor(), at::Tensor(),
              static_cast<int32_t>(solver)};
    c.cpe = at::empty({c.abar.size(0)}, c.abar.options());
    if (with_grad) c.grad = at::empty_like(c.abar);
    Run(c);
    return c;
  }

  static at::Tensor cumulative_error(const at::Tensor& abar, const at::Tensor& grid,
                                     const at::Tensor& mse, int64_t solver) {
    return call(abar, grid, mse, solver, false).cpe;
  }

  static std::tuple<at::Tensor, at::Tensor> cumulative_error_grad(const at::Tensor& abar,
                                                                  const at::Tensor& grid,
                                                                  const at::Tensor& mse,
                                                                  int64_t solver) {
    const CpeCall c = call(abar, grid, mse, solver, true);
    return {c.cpe, c.grad};
  }
};

}  // namespace diffaccel
