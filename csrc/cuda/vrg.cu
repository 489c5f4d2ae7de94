// VRG CUDA kernels. The formulas come from csrc/include/diffaccel/vrg.h (tested through the CPU
// kernels); what is CUDA-only here is the indexing and a plain block reduction.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>

#include "diffaccel/vrg.h"
#include "vrg_kernels.h"

namespace diffaccel {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 8192;  // elements of one sample per block

__device__ __forceinline__ double warp_sum(double v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

template <typename T>
__global__ void error_moments_kernel(const T* pred, const T* target, const int64_t* bins,
                                     int64_t B, int64_t D, int64_t chunks, int64_t num_bins,
                                     double* table) {
  __shared__ double sh1[kThreads / 32], sh2[kThreads / 32];
  const int64_t tasks = B * chunks;
  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {
    const int64_t b = task / chunks, c = task - b * chunks;
    const int64_t start = c * kChunk, end = min(D, start + kChunk);
    const T* p = pred + b * D;
    const T* t = target + b * D;
    double s1 = 0.0, s2 = 0.0;
    for (int64_t i = start + threadIdx.x; i < end; i += kThreads) {
      const double e = static_cast<double>(
          vrg_error(static_cast<float>(p[i]), static_cast<float>(t[i])));
      s1 += e;
      s2 += e * e;
    }
    s1 = warp_sum(s1);
    s2 = warp_sum(s2);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { sh1[warp] = s1; sh2[warp] = s2; }
    __syncthreads();
    if (threadIdx.x == 0) {
      double a1 = 0.0, a2 = 0.0;
      for (int w = 0; w < kThreads / 32; ++w) { a1 += sh1[w]; a2 += sh2[w]; }
      const int64_t j = bins[b];
      if (j >= 0 && j < num_bins) {
        atomicAdd(table + 3 * j, static_cast<double>(end - start));
        atomicAdd(table + 3 * j + 1, a1);
        atomicAdd(table + 3 * j + 2, a2);
      }
    }
    __syncthreads();  // sh1/sh2 are reused by the next task
  }
}

__global__ void cumulative_error_kernel(const double* abar, int64_t K, int64_t N,
                                        const double* grid, const double* mse, int64_t M,
                                        int32_t solver, double* cpe, double* grad) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < K;
       k += stride)
    cpe[k] = vrg_cpe_row(solver, abar + k * N, N, grid, mse, M, grad ? grad + k * N : nullptr);
}

inline unsigned blocks_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(b, int64_t(1) << 30)));
}

}  // namespace

template <typename T>
cudaError_t vrg_error_moments(const T* pred, const T* target, const int64_t* bins, int64_t B,
                              int64_t D, int64_t num_bins, double* table, cudaStream_t stream) {
  if (B == 0) return cudaSuccess;
  const int64_t chunks = std::max<int64_t>(1, (D + kChunk - 1) / kChunk);
  error_moments_kernel<T><<<blocks_for(B * chunks, 1), kThreads, 0, stream>>>(
      pred, target, bins, B, D, chunks, num_bins, table);
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
                                            int64_t, int64_t, double*, cudaStream_t);
DA_INSTANTIATE(float)
DA_INSTANTIATE(c10::Half)
DA_INSTANTIATE(c10::BFloat16)
#undef DA_INSTANTIATE

}  // namespace cuda
}  // namespace diffaccel
