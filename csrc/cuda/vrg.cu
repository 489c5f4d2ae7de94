// VRG CUDA kernels. The formulas come from csrc/include/diffaccel/vrg.h (tested through the CPU
// kernels); what is CUDA-only here is the indexing, 16-byte loads and a fixed-order reduction
// (per-block sums, then one pass per bin), so the moment table is reproducible run to run. The
// registration is csrc/cuda/vrg_ops_cuda.cpp.
#include "../instantiate.h"
#include "common.cuh"
#include "diffaccel/launch_grid.h"
#include "diffaccel/vrg.h"
#include "vec.cuh"
#include "vrg_kernels.h"

namespace diffaccel {
namespace cuda {

namespace {

__device__ __forceinline__ double warp_sum(double v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// Block (b, c) of grid (B, splits): sum e and e^2 over elements [c chunk, (c + 1) chunk) of
// sample b (16-byte vectors when vec), float64 per thread, reduced over the block; the block's
// two sums go to its own slot of partial [B, splits, 2].
template <typename T>
__global__ void __launch_bounds__(kThreads) error_moments_kernel(const T* pred, const T* target,
                                                                 int64_t D, int64_t chunk, bool vec,
                                                                 double* partial) {
  __shared__ double sh1[kThreads / 32], sh2[kThreads / 32];
  constexpr int V = kVec<T>;
  const int64_t b = blockIdx.x;
  const int64_t start = static_cast<int64_t>(blockIdx.y) * chunk, end = min(D, start + chunk);
  const T* p = pred + b * D;
  const T* t = target + b * D;
  double s1 = 0.0, s2 = 0.0;
  if (vec) {
    for (int64_t i = start + static_cast<int64_t>(threadIdx.x) * V; i < end; i += kThreads * V) {
      float pv[V], tv[V];
      load_vec<T, V>(p + i, pv);
      load_vec<T, V>(t + i, tv);
#pragma unroll
      for (int u = 0; u < V; ++u) {
        const double e = static_cast<double>(vrg_error(pv[u], tv[u]));
        s1 += e;
        s2 += e * e;
      }
    }
  } else {
    for (int64_t i = start + threadIdx.x; i < end; i += kThreads) {
      const double e = static_cast<double>(vrg_error(static_cast<float>(p[i]), static_cast<float>(t[i])));
      s1 += e;
      s2 += e * e;
    }
  }
  s1 = warp_sum(s1);
  s2 = warp_sum(s2);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) { sh1[warp] = s1; sh2[warp] = s2; }
  __syncthreads();
  if (threadIdx.x == 0) {
    double a1 = 0.0, a2 = 0.0;
    for (int w = 0; w < kThreads / 32; ++w) { a1 += sh1[w]; a2 += sh2[w]; }
    double* slot = partial + 2 * (b * gridDim.y + blockIdx.y);
    slot[0] = a1;
    slot[1] = a2;
  }
}

// One thread per bin j: table[j] += (count, sum e, sum e^2) over the samples in bin j, in sample
// and split order (no atomics: the table is the same bits on every run).
__global__ void moments_finish_kernel(const double* partial, const int64_t* bins, int64_t B,
                                      int64_t D, int64_t splits, int64_t num_bins, double* table) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= num_bins) return;
  double n = 0.0, a1 = 0.0, a2 = 0.0;
  for (int64_t b = 0; b < B; ++b) {
    if (bins[b] != j) continue;
    n += static_cast<double>(D);
    for (int64_t c = 0; c < splits; ++c) {
      a1 += partial[2 * (b * splits + c)];
      a2 += partial[2 * (b * splits + c) + 1];
    }
  }
  table[3 * j] += n;
  table[3 * j + 1] += a1;
  table[3 * j + 2] += a2;
}

__global__ void cumulative_error_kernel(const double* abar, int64_t K, int64_t N,
                                        const double* grid, const double* mse, int64_t M,
                                        int32_t solver, double* cpe, double* grad) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < K;
       k += stride)
    cpe[k] = vrg_cpe_row(solver, abar + k * N, N, grid, mse, M, grad ? grad + k * N : nullptr);
}

}  // namespace

template <typename T>
cudaError_t vrg_error_moments(const T* pred, const T* target, const int64_t* bins, int64_t B,
                              int64_t D, int64_t num_bins, double* table, double* partial,
                              int64_t chunk, cudaStream_t stream) {
  if (B == 0 || num_bins == 0) return cudaSuccess;
  const int64_t splits = grid::splits(D, chunk);
  if (D > 0) {
    const bool vec = D % kVec<T> == 0 && aligned16(pred) && aligned16(target);
    error_moments_kernel<T><<<dim3(static_cast<unsigned>(B), static_cast<unsigned>(splits)), kThreads, 0,
                              stream>>>(pred, target, D, chunk, vec, partial);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  moments_finish_kernel<<<blocks_for(num_bins, 128), 128, 0, stream>>>(partial, bins, B, D, D > 0 ? splits : 0,
                                                                        num_bins, table);
  return cudaGetLastError();
}

cudaError_t vrg_cumulative_error(const double* abar, int64_t K, int64_t N, const double* grid,
                                 const double* mse, int64_t M, int32_t solver, double* cpe,
                                 double* grad, cudaStream_t stream) {
  if (K == 0) return cudaSuccess;
  constexpr int threads = 128;
  cumulative_error_kernel<<<blocks_for(K, threads), threads, 0, stream>>>(abar, K, N, grid, mse, M,
                                                                          solver, cpe, grad);
  return cudaGetLastError();
}

#define DA_INSTANTIATE(T)                                                                   \
  template cudaError_t vrg_error_moments<T>(const T*, const T*, const int64_t*, int64_t,    \
                                            int64_t, int64_t, double*, double*, int64_t,        \
                                            cudaStream_t);
DA_FOR_EACH_FLOAT(DA_INSTANTIATE)
#undef DA_INSTANTIATE

}  // namespace cuda
}  // namespace diffaccel
