// CUDA kernels of the stroke ops (registration: csrc/cuda/stroke_ops_cuda.cpp). All math comes
// from csrc/include/diffaccel/stroke.h and philox.h, shared with (and tested through) the CPU
// kernels; what is CUDA-only here is indexing and launch shapes.
//
// - power-of-two scales <= 64 (launch_grid.h stroke_tile): one block per (plane, T x T tile).
//   The tile of x0 (and its noise, drawn once per element) goes to shared memory; the block sums
//   of the finest scale are taken from it and each coarser scale's from the one before, several
//   lanes per block sum with a warp-shuffle reduction; then each element is written once from
//   the shared tile and the weighted block means. x0 is read once.
// - any other scale set (the general path): block means of every scale into a float32 buffer
//   (one warp per block mean, lanes over its elements; the noise redrawn), then one thread per
//   element gathers them.
#include <algorithm>

#include "../instantiate.h"
#include "common.cuh"
#include "diffaccel/launch_grid.h"
#include "diffaccel/philox.h"
#include "diffaccel/stroke.h"
#include "stroke_kernels.h"

namespace diffaccel {
namespace cuda {

namespace {

__device__ __forceinline__ float keep_weight(const float* w, int J) {
  float s = 0.0f;
  for (int j = 0; j < J; ++j) s += w[j];
  return 1.0f - s;
}

// --------------------------------------------------------------------------- tile path

// Shape of the tile path for one scale set (power-of-two scales, T = max(16, k_max)); block
// sums live in shared memory per field, scale after scale: [off[j] + I * n[j] + J], n = T / k.
struct TileGrid {
  int J, T, logT, cells;
  int k[kMaxScales], logk[kMaxScales], off[kMaxScales];
  int src[kMaxScales];  // the scale whose sums add up to this one's (-1: the elements)
  int logm[kMaxScales];  // log2(k / k_src)
};

TileGrid make_tile_grid(const int64_t* scales, int J, int64_t T) {
  TileGrid g{};
  g.J = J;
  g.T = static_cast<int>(T);
  while ((1 << g.logT) < g.T) ++g.logT;
  g.cells = 0;
  for (int j = 0; j < J; ++j) {
    g.k[j] = static_cast<int>(scales[j]);
    while ((1 << g.logk[j]) < g.k[j]) ++g.logk[j];
    g.off[j] = g.cells;
    g.cells += (g.T / g.k[j]) * (g.T / g.k[j]);
    g.src[j] = -1;
    for (int i = 0; i < j; ++i)  // the largest earlier scale dividing k_j
      if (g.k[j] % g.k[i] == 0 && (g.src[j] < 0 || g.k[i] > g.k[g.src[j]])) g.src[j] = i;
    g.logm[j] = g.logk[j] - (g.src[j] < 0 ? 0 : g.logk[g.src[j]]);
  }
  return g;
}

inline size_t tile_smem_bytes(const TileGrid& g, int fields) {
  return sizeof(float) * static_cast<size_t>(fields) * (static_cast<size_t>(g.T) * g.T + g.cells);
}

// Block sums of every scale of NF fields: tile[f * T*T + r * T + c] (zero outside the plane)
// into sums[f * cells + ...]. A sum over m x m cells of its source scale is shared by
// G = min(m, 32) lanes (rows a = lane, lane + G, ...), reduced with shuffles. Ends synced.
template <int NF>
__device__ void tile_block_sums(const TileGrid& g, const float* tile, float* sums) {
  const int TT = g.T * g.T;
  for (int j = 0; j < g.J; ++j) {
    const int s = g.src[j];
    const int logn = g.logT - g.logk[j], logm = g.logm[j], m = 1 << logm;
    const int logns = s < 0 ? g.logT : g.logT - g.logk[s];
    const float* from = s < 0 ? tile : sums + g.off[s];
    const int fstride = s < 0 ? TT : g.cells;
    const int logG = logm < 5 ? logm : 5, G = 1 << logG;
    const int tasks = (1 << (2 * logn)) << logG;
    for (int base = 0; base < tasks; base += kThreads) {  // uniform trip count: shuffles are safe
      const int task = base + static_cast<int>(threadIdx.x);
      const int cell = task >> logG, lane = task & (G - 1);
      const int I = cell >> logn, Jc = cell & ((1 << logn) - 1);
      float acc[NF];
#pragma unroll
      for (int f = 0; f < NF; ++f) acc[f] = 0.0f;
      if (task < tasks) {
        for (int a = lane; a < m; a += G) {
          const int row = (((I << logm) + a) << logns) + (Jc << logm);
          for (int c = 0; c < m; ++c)
#pragma unroll
            for (int f = 0; f < NF; ++f) acc[f] += from[f * fstride + row + c];
        }
      }
      for (int o = G >> 1; o > 0; o >>= 1)
#pragma unroll
        for (int f = 0; f < NF; ++f) acc[f] += __shfl_xor_sync(0xffffffffu, acc[f], o);
      if (task < tasks && lane == 0)
#pragma unroll
        for (int f = 0; f < NF; ++f) sums[f * g.cells + g.off[j] + cell] = acc[f];
    }
    __syncthreads();
  }
}

// sums -> w_j * (block mean): divided by the block's real size (partial border blocks) and
// weighted, in place, so each output needs one add per scale. Ends synced.
template <int NF>
__device__ void tile_weighted_means(const TileGrid& g, float* sums, const float* const (&w)[NF],
                                    int r0, int c0, int64_t H, int64_t W) {
  for (int q = threadIdx.x; q < g.cells; q += kThreads) {
    int j = 0;
    while (j + 1 < g.J && g.off[j + 1] <= q) ++j;
    const int logn = g.logT - g.logk[j], local = q - g.off[j];
    const int64_t k = g.k[j];
    const int64_t I = (r0 >> g.logk[j]) + (local >> logn), Jb = (c0 >> g.logk[j]) + (local & ((1 << logn) - 1));
    const int64_t eh = block_extent(H, k, I), ew = block_extent(W, k, Jb);
    const float n = eh > 0 && ew > 0 ? static_cast<float>(eh * ew) : 0.0f;
#pragma unroll
    for (int f = 0; f < NF; ++f)
      sums[f * g.cells + q] = n > 0.0f ? w[f][j] * (sums[f * g.cells + q] / n) : 0.0f;
  }
  __syncthreads();
}

// sum_j w_j (S_{k_j} v)[rr, cc] at tile position (rr, cc) from the weighted means.
__device__ __forceinline__ float tile_gather(const TileGrid& g, const float* wm, int rr, int cc) {
  float s = 0.0f;
  for (int j = 0; j < g.J; ++j) {
    const int logn = g.logT - g.logk[j];
    s += wm[g.off[j] + ((rr >> g.logk[j]) << logn) + (cc >> g.logk[j])];
  }
  return s;
}

// Grid (tiles across, tiles down, planes): planes beyond gridDim.z loop (uniform per block).
template <typename T>
__global__ void __launch_bounds__(kThreads) stroke_blur_tile_kernel(
    const T* x, const float* w, TileGrid g, uint32_t C, uint32_t BC, int64_t H, int64_t W, T* y) {
  extern __shared__ float smem[];
  float* tile = smem;
  float* sums = smem + g.T * g.T;
  const int r0 = blockIdx.y * g.T, c0 = blockIdx.x * g.T, TT = g.T * g.T;
  for (uint32_t plane = blockIdx.z; plane < BC; plane += gridDim.z) {
    const uint32_t b = plane / C;
    const int64_t base = static_cast<int64_t>(plane) * H * W;
#pragma unroll 1  // one load per element and iteration (tests/build/test_gpu_codegen.py counts them)
    for (int e = threadIdx.x; e < TT; e += kThreads) {
      const int64_t r = r0 + (e >> g.logT), c = c0 + (e & (g.T - 1));
      tile[e] = r < H && c < W ? static_cast<float>(x[base + r * W + c]) : 0.0f;
    }
    __syncthreads();
    tile_block_sums<1>(g, tile, sums);
    const float* wb = w + static_cast<int64_t>(b) * g.J;
    const float* const ws[1] = {wb};
    tile_weighted_means<1>(g, sums, ws, r0, c0, H, W);
    const float keep = keep_weight(wb, g.J);
    for (int e = threadIdx.x; e < TT; e += kThreads) {
      const int rr = e >> g.logT, cc = e & (g.T - 1);
      const int64_t r = r0 + rr, c = c0 + cc;
      if (r < H && c < W) y[base + r * W + c] = static_cast<T>(keep * tile[e] + tile_gather(g, sums, rr, cc));
    }
    __syncthreads();  // the next plane reuses the shared tile
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) stroke_noise_tile_kernel(
    const T* x0, const float* alpha, const float* sigma, const float* wx, const float* we,
    TileGrid g, uint32_t C, uint32_t BC, int64_t H, int64_t W, NoiseStream ns, int32_t target,
    T* xt, T* tgt) {
  extern __shared__ float smem[];
  const int TT = g.T * g.T;
  float* tile = smem;  // [2][T*T]: x0, then the noise
  float* sums = smem + 2 * TT;
  const int r0 = blockIdx.y * g.T, c0 = blockIdx.x * g.T;
  const int64_t HW = H * W;
  for (uint32_t plane = blockIdx.z; plane < BC; plane += gridDim.z) {
    const uint32_t b = plane / C;
    const int64_t base = static_cast<int64_t>(plane) * HW;
    const int64_t nbase = static_cast<int64_t>(plane - b * C) * HW;  // within the sample
    const uint64_t seed = static_cast<uint64_t>(ns.seeds[ns.per_sample ? b : 0]);
    const uint64_t pos0 = ns.offset + static_cast<uint64_t>(ns.per_sample ? nbase : base);
#pragma unroll 1  // one load and one draw per element and iteration (tests/build/test_gpu_codegen.py counts them)
    for (int e = threadIdx.x; e < TT; e += kThreads) {
      const int64_t r = r0 + (e >> g.logT), c = c0 + (e & (g.T - 1));
      const bool in = r < H && c < W;
      tile[e] = in ? static_cast<float>(x0[base + r * W + c]) : 0.0f;
      tile[TT + e] = in ? draw_any(seed, pos0 + static_cast<uint64_t>(r * W + c), ns.dist) : 0.0f;
    }
    __syncthreads();
    tile_block_sums<2>(g, tile, sums);
    const float* wxb = wx + static_cast<int64_t>(b) * g.J;
    const float* web = we + static_cast<int64_t>(b) * g.J;
    const float* const ws[2] = {wxb, web};
    tile_weighted_means<2>(g, sums, ws, r0, c0, H, W);
    const float kx = keep_weight(wxb, g.J), ke = keep_weight(web, g.J);
    const float a = alpha[b], s = sigma[b];
    for (int e = threadIdx.x; e < TT; e += kThreads) {
      const int rr = e >> g.logT, cc = e & (g.T - 1);
      const int64_t r = r0 + rr, c = c0 + cc;
      if (r < H && c < W) {
        const float ax = kx * tile[e] + tile_gather(g, sums, rr, cc);
        const float ae = ke * tile[TT + e] + tile_gather(g, sums + g.cells, rr, cc);
        float o_xt, o_t;
        stroke_noise_outputs(ax, ae, a, s, target, o_xt, o_t);
        xt[base + r * W + c] = static_cast<T>(o_xt);
        tgt[base + r * W + c] = static_cast<T>(o_t);
      }
    }
    __syncthreads();
  }
}

// Launch shape of the tile kernels, or false when the tile path cannot take the call.
bool tile_launch(const int64_t* scales, int J, int64_t B, int64_t C, int64_t H, int64_t W,
                 TileGrid& g, dim3& grid_out) {
  const int64_t T = grid::stroke_tile(scales, J);
  if (T == 0 || !fits32(B * C) || grid::cdiv(H, T) > 65535 || grid::cdiv(W, T) >= (int64_t(1) << 31))
    return false;
  g = make_tile_grid(scales, J, T);
  if (tile_smem_bytes(g, 2) > 48 * 1024) return false;  // e.g. many repeated small scales
  grid_out = dim3(static_cast<unsigned>(grid::cdiv(W, T)), static_cast<unsigned>(grid::cdiv(H, T)),
                  static_cast<unsigned>(std::min<int64_t>(B * C, 65535)));
  return true;
}

// ------------------------------------------------------------------------ general path

template <typename I>
__device__ __forceinline__ int scale_of(const ScaleGrid& g, I q) {
  int j = 0;
  while (j + 1 < g.J && static_cast<I>(g.off[j + 1]) <= q) ++j;
  return j;
}

// Mean of block q (flat over all scales) of a plane given by value(r, c), by one warp: the lanes
// take its elements in turn, then a shuffle reduction (valid in every lane).
template <typename I, typename Value>
__device__ float warp_block_mean(const ScaleGrid& g, I q, I H, I W, Value value) {
  const int j = scale_of(g, q);
  const I wk = static_cast<I>(g.wk[j]), k = static_cast<I>(g.k[j]);
  const I local = q - static_cast<I>(g.off[j]), Ib = local / wk, Jb = local - Ib * wk;
  const I eh = static_cast<I>(block_extent(H, k, Ib)), ew = static_cast<I>(block_extent(W, k, Jb));
  float s = 0.0f;
  for (I idx = threadIdx.x & 31; idx < eh * ew; idx += 32) {
    const I dr = idx / ew;
    s += value(Ib * k + dr, Jb * k + idx - dr * ew);
  }
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  return s / static_cast<float>(eh * ew);
}

// sum_j w_j (S_{k_j} p)[r, c] from the plane's block means.
template <typename I>
__device__ __forceinline__ float weighted_means(const ScaleGrid& g, const float* m, const float* w,
                                                I r, I c) {
  float s = 0.0f;
  for (int j = 0; j < g.J; ++j) {
    const I k = static_cast<I>(g.k[j]);
    s += w[j] * m[static_cast<I>(g.off[j]) + (r / k) * static_cast<I>(g.wk[j]) + c / k];
  }
  return s;
}

// One warp per (plane, block): warps stride over BC * total block means.
template <typename T, typename I>
__global__ void means_kernel(const T* x, ScaleGrid g, I BC, I H, I W, float* means) {
  const I n = BC * static_cast<I>(g.total), total = static_cast<I>(g.total);
  const I warps = thread_stride<I>() / 32;
  for (I t = thread_index<I>() / 32; t < n; t += warps) {
    const I plane = t / total;
    const T* p = x + static_cast<int64_t>(plane) * H * W;
    const float m = warp_block_mean(g, t - plane * total, H, W,
                                    [&](I r, I c) { return static_cast<float>(p[r * W + c]); });
    if ((threadIdx.x & 31) == 0) means[t] = m;
  }
}

template <typename I>
__global__ void noise_means_kernel(NoiseStream ns, ScaleGrid g, I B, I C, I H, I W, float* means) {
  const I total = static_cast<I>(g.total), n = B * C * total;
  const I warps = thread_stride<I>() / 32;
  for (I t = thread_index<I>() / 32; t < n; t += warps) {
    const I plane = t / total, b = plane / C, c0 = (plane - b * C) * H * W;
    const float m = warp_block_mean(g, t - plane * total, H, W,
                                    [&](I r, I c) { return ns(b, c0 + r * W + c); });
    if ((threadIdx.x & 31) == 0) means[t] = m;
  }
}

template <typename T, typename I>
__global__ void blur_kernel(const T* x, const float* w, const float* means, ScaleGrid g, I C, I H,
                            I W, I n, T* y) {
  const I HW = H * W;
  for (I t = thread_index<I>(); t < n; t += thread_stride<I>()) {
    const I plane = t / HW, rc = t - plane * HW, r = rc / W, c = rc - r * W;
    const float* wb = w + (plane / C) * g.J;
    y[t] = static_cast<T>(keep_weight(wb, g.J) * static_cast<float>(x[t]) +
                          weighted_means(g, means + static_cast<int64_t>(plane) * g.total, wb, r, c));
  }
}

template <typename T, typename I>
__global__ void stroke_noise_kernel(const T* x0, const float* alpha, const float* sigma,
                                    const float* wx, const float* we, const float* means_x,
                                    const float* means_e, ScaleGrid g, I C, I H, I W,
                                    NoiseStream ns, int32_t target, I n, T* xt, T* tgt) {
  const I HW = H * W;
  for (I t = thread_index<I>(); t < n; t += thread_stride<I>()) {
    const I plane = t / HW, rc = t - plane * HW, r = rc / W, c = rc - r * W;
    const I b = plane / C;
    const float* wxb = wx + b * g.J;
    const float* web = we + b * g.J;
    const float eps = ns(b, (plane - b * C) * HW + rc);
    const int64_t m0 = static_cast<int64_t>(plane) * g.total;
    const float ax = keep_weight(wxb, g.J) * static_cast<float>(x0[t]) +
                     weighted_means(g, means_x + m0, wxb, r, c);
    const float ae = keep_weight(web, g.J) * eps + weighted_means(g, means_e + m0, web, r, c);
    float o_xt, o_t;
    stroke_noise_outputs(ax, ae, alpha[b], sigma[b], target, o_xt, o_t);
    xt[t] = static_cast<T>(o_xt);
    tgt[t] = static_cast<T>(o_t);
  }
}

}  // namespace

ScaleGrid make_grid(const int64_t* scales, int J, int64_t H, int64_t W) {
  ScaleGrid g{};
  g.J = J;
  g.total = 0;
  for (int j = 0; j < J; ++j) {
    g.k[j] = scales[j];
    g.hk[j] = num_blocks(H, scales[j]);
    g.wk[j] = num_blocks(W, scales[j]);
    g.off[j] = g.total;
    g.total += g.hk[j] * g.wk[j];
  }
  return g;
}

bool stroke_tile_path(const int64_t* scales, int J, int64_t B, int64_t C, int64_t H, int64_t W) {
  TileGrid g;
  dim3 grid;
  return tile_launch(scales, J, B, C, H, W, g, grid);
}

template <typename T>
cudaError_t stroke_means(const T* x, const ScaleGrid& grid, int64_t BC, int64_t H, int64_t W,
                         float* means, cudaStream_t stream) {
  const int64_t n = BC * grid.total;
  if (n == 0) return cudaSuccess;
  const grid::WarpLaunch plan = grid::stroke_means_launch(BC, H, W, grid.total);
  const unsigned blocks = static_cast<unsigned>(plan.blocks);  // one warp per block mean
  if (!plan.idx64)
    means_kernel<T, uint32_t><<<blocks, kThreads, 0, stream>>>(x, grid, static_cast<uint32_t>(BC),
                                                               static_cast<uint32_t>(H), static_cast<uint32_t>(W), means);
  else
    means_kernel<T, uint64_t><<<blocks, kThreads, 0, stream>>>(x, grid, static_cast<uint64_t>(BC),
                                                               static_cast<uint64_t>(H), static_cast<uint64_t>(W), means);
  return cudaGetLastError();
}

cudaError_t stroke_noise_means(const int64_t* seeds, bool per_sample, uint64_t offset,
                               int32_t dist, const ScaleGrid& grid, int64_t B, int64_t C,
                               int64_t H, int64_t W, float* means, cudaStream_t stream) {
  const int64_t n = B * C * grid.total;
  if (n == 0) return cudaSuccess;
  const NoiseStream ns{seeds, per_sample, offset, C * H * W, dist};
  const grid::WarpLaunch plan = grid::stroke_means_launch(B * C, H, W, grid.total);
  const unsigned blocks = static_cast<unsigned>(plan.blocks);  // one warp per block mean
  if (!plan.idx64)
    noise_means_kernel<uint32_t><<<blocks, kThreads, 0, stream>>>(
        ns, grid, static_cast<uint32_t>(B), static_cast<uint32_t>(C), static_cast<uint32_t>(H),
        static_cast<uint32_t>(W), means);
  else
    noise_means_kernel<uint64_t><<<blocks, kThreads, 0, stream>>>(
        ns, grid, static_cast<uint64_t>(B), static_cast<uint64_t>(C), static_cast<uint64_t>(H),
        static_cast<uint64_t>(W), means);
  return cudaGetLastError();
}

template <typename T>
cudaError_t stroke_blur(const T* x, const float* w, const float* means, const ScaleGrid& grid,
                        int64_t B, int64_t C, int64_t H, int64_t W, T* y, cudaStream_t stream) {
  const int64_t n = B * C * H * W;
  if (n == 0) return cudaSuccess;
  if (fits32(n))
    blur_kernel<T, uint32_t><<<blocks_for(n), kThreads, 0, stream>>>(
        x, w, means, grid, static_cast<uint32_t>(C), static_cast<uint32_t>(H),
        static_cast<uint32_t>(W), static_cast<uint32_t>(n), y);
  else
    blur_kernel<T, uint64_t><<<blocks_for(n), kThreads, 0, stream>>>(
        x, w, means, grid, static_cast<uint64_t>(C), static_cast<uint64_t>(H),
        static_cast<uint64_t>(W), static_cast<uint64_t>(n), y);
  return cudaGetLastError();
}

template <typename T>
cudaError_t stroke_blur_tile(const T* x, const float* w, const int64_t* scales, int J, int64_t B,
                             int64_t C, int64_t H, int64_t W, T* y, cudaStream_t stream) {
  if (B * C * H * W == 0) return cudaSuccess;
  TileGrid g;
  dim3 grid;
  if (!tile_launch(scales, J, B, C, H, W, g, grid)) return cudaErrorInvalidValue;
  stroke_blur_tile_kernel<T><<<grid, kThreads, tile_smem_bytes(g, 1), stream>>>(
      x, w, g, static_cast<uint32_t>(C), static_cast<uint32_t>(B * C), H, W, y);
  return cudaGetLastError();
}

template <typename T>
cudaError_t stroke_noise(const T* x0, const float* alpha, const float* sigma, const float* wx,
                         const float* we, const float* means_x, const float* means_e,
                         const ScaleGrid& grid, int64_t B, int64_t C, int64_t H, int64_t W,
                         const int64_t* seeds, bool per_sample, uint64_t offset, int32_t dist,
                         int32_t target, T* xt, T* tgt, cudaStream_t stream) {
  const int64_t n = B * C * H * W;
  if (n == 0) return cudaSuccess;
  const NoiseStream ns{seeds, per_sample, offset, C * H * W, dist};
  if (fits32(n))
    stroke_noise_kernel<T, uint32_t><<<blocks_for(n), kThreads, 0, stream>>>(
        x0, alpha, sigma, wx, we, means_x, means_e, grid, static_cast<uint32_t>(C),
        static_cast<uint32_t>(H), static_cast<uint32_t>(W), ns, target, static_cast<uint32_t>(n), xt, tgt);
  else
    stroke_noise_kernel<T, uint64_t><<<blocks_for(n), kThreads, 0, stream>>>(
        x0, alpha, sigma, wx, we, means_x, means_e, grid, static_cast<uint64_t>(C),
        static_cast<uint64_t>(H), static_cast<uint64_t>(W), ns, target, static_cast<uint64_t>(n), xt, tgt);
  return cudaGetLastError();
}

template <typename T>
cudaError_t stroke_noise_tile(const T* x0, const float* alpha, const float* sigma,
                              const float* wx, const float* we, const int64_t* scales, int J,
                              int64_t B, int64_t C, int64_t H, int64_t W, const int64_t* seeds,
                              bool per_sample, uint64_t offset, int32_t dist, int32_t target,
                              T* xt, T* tgt, cudaStream_t stream) {
  if (B * C * H * W == 0) return cudaSuccess;
  TileGrid g;
  dim3 grid;
  if (!tile_launch(scales, J, B, C, H, W, g, grid)) return cudaErrorInvalidValue;
  const NoiseStream ns{seeds, per_sample, offset, C * H * W, dist};
  stroke_noise_tile_kernel<T><<<grid, kThreads, tile_smem_bytes(g, 2), stream>>>(
      x0, alpha, sigma, wx, we, g, static_cast<uint32_t>(C), static_cast<uint32_t>(B * C), H, W,
      ns, target, xt, tgt);
  return cudaGetLastError();
}

#define DA_INSTANTIATE(T)                                                                      \
  template cudaError_t stroke_means<T>(const T*, const ScaleGrid&, int64_t, int64_t, int64_t,  \
                                       float*, cudaStream_t);                                  \
  template cudaError_t stroke_blur<T>(const T*, const float*, const float*, const ScaleGrid&,  \
                                      int64_t, int64_t, int64_t, int64_t, T*, cudaStream_t);   \
  template cudaError_t stroke_blur_tile<T>(const T*, const float*, const int64_t*, int,        \
                                           int64_t, int64_t, int64_t, int64_t, T*,             \
                                           cudaStream_t);                                      \
  template cudaError_t stroke_noise<T>(const T*, const float*, const float*, const float*,     \
                                       const float*, const float*, const float*,               \
                                       const ScaleGrid&, int64_t, int64_t, int64_t, int64_t,   \
                                       const int64_t*, bool, uint64_t, int32_t, int32_t, T*,   \
                                       T*, cudaStream_t);                                      \
  template cudaError_t stroke_noise_tile<T>(const T*, const float*, const float*, const float*, \
                                            const float*, const int64_t*, int, int64_t,        \
                                            int64_t, int64_t, int64_t, const int64_t*, bool,   \
                                            uint64_t, int32_t, int32_t, T*, T*, cudaStream_t);
DA_FOR_EACH_FLOAT(DA_INSTANTIATE)
#undef DA_INSTANTIATE

}  // namespace cuda
}  // namespace diffaccel
