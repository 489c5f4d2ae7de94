// CUDA kernels: one thread per output element (or per block mean), grid-stride loops with 64-bit
// indices. All math comes from csrc/include/diffaccel, shared with (and tested through) the CPU
// kernels; what is CUDA-only here is indexing and launch shapes, kept plain on purpose.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>

#include "cuda_kernels.h"
#include "diffaccel/philox.h"
#include "diffaccel/stroke.h"

namespace diffaccel {
namespace cuda {

namespace {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(b, int64_t(1) << 30)));
}

__device__ __forceinline__ int64_t thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t thread_stride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// Stream position of element (b, i) of a (B, D) layout (docs/math.md Section 1).
struct NoiseStream {
  const int64_t* seeds;
  bool per_sample;
  uint64_t offset;
  int64_t D;
  int32_t dist;
  __device__ __forceinline__ float operator()(int64_t b, int64_t i) const {
    const uint64_t seed = static_cast<uint64_t>(seeds[per_sample ? b : 0]);
    const uint64_t pos = offset + static_cast<uint64_t>((per_sample ? 0 : b * D) + i);
    return draw_any(seed, pos, dist);
  }
};

// Sum over rows of one scale's blocks, scale j located from the flat block index q.
__device__ __forceinline__ int scale_of(const ScaleGrid& g, int64_t q) {
  int j = 0;
  while (j + 1 < g.J && g.off[j + 1] <= q) ++j;
  return j;
}

// Mean of block q (flat over all scales) of a plane given by value(r, c).
template <typename Value>
__device__ float block_mean(const ScaleGrid& g, int64_t q, int64_t H, int64_t W, Value value) {
  const int j = scale_of(g, q);
  const int64_t local = q - g.off[j], I = local / g.wk[j], Jb = local - I * g.wk[j];
  const int64_t k = g.k[j], eh = block_extent(H, k, I), ew = block_extent(W, k, Jb);
  float s = 0.0f;
  for (int64_t r = I * k; r < I * k + eh; ++r)
    for (int64_t c = Jb * k; c < Jb * k + ew; ++c) s += value(r, c);
  return s / static_cast<float>(eh * ew);
}

// sum_j w_j (S_{k_j} p)[r, c] from the plane's block means.
__device__ __forceinline__ float weighted_means(const ScaleGrid& g, const float* m,
                                                const float* w, int64_t r, int64_t c) {
  float s = 0.0f;
  for (int j = 0; j < g.J; ++j) s += w[j] * m[g.off[j] + (r / g.k[j]) * g.wk[j] + c / g.k[j]];
  return s;
}

__device__ __forceinline__ float keep_weight(const float* w, int J) {
  float s = 0.0f;
  for (int j = 0; j < J; ++j) s += w[j];
  return 1.0f - s;
}

__global__ void philox_kernel(const int64_t* seeds, bool per_sample, int64_t D, uint64_t offset,
                              int64_t n, int64_t* out) {
  for (int64_t t = thread_index(); t < n; t += thread_stride()) {
    const int64_t b = t / D, i = t - b * D;
    const uint64_t seed = static_cast<uint64_t>(seeds[per_sample ? b : 0]);
    uint32_t r0, r1, r2, r3;
    philox4x32_10(seed, offset + static_cast<uint64_t>((per_sample ? 0 : b * D) + i), r0, r1, r2, r3);
    out[4 * t + 0] = r0; out[4 * t + 1] = r1; out[4 * t + 2] = r2; out[4 * t + 3] = r3;
  }
}

template <typename T>
__global__ void noise_kernel(NoiseStream ns, int64_t n, T* out) {
  for (int64_t t = thread_index(); t < n; t += thread_stride()) {
    const int64_t b = t / ns.D;
    out[t] = static_cast<T>(ns(b, t - b * ns.D));
  }
}

template <typename T>
__global__ void means_kernel(const T* x, ScaleGrid g, int64_t BC, int64_t H, int64_t W,
                             float* means) {
  const int64_t n = BC * g.total;
  for (int64_t t = thread_index(); t < n; t += thread_stride()) {
    const int64_t plane = t / g.total;
    const T* p = x + plane * H * W;
    means[t] = block_mean(g, t - plane * g.total, H, W,
                          [&](int64_t r, int64_t c) { return static_cast<float>(p[r * W + c]); });
  }
}

__global__ void noise_means_kernel(NoiseStream ns, ScaleGrid g, int64_t B, int64_t C, int64_t H,
                                   int64_t W, float* means) {
  const int64_t n = B * C * g.total;
  for (int64_t t = thread_index(); t < n; t += thread_stride()) {
    const int64_t plane = t / g.total, b = plane / C, c0 = (plane - b * C) * H * W;
    means[t] = block_mean(g, t - plane * g.total, H, W,
                          [&](int64_t r, int64_t c) { return ns(b, c0 + r * W + c); });
  }
}

template <typename T>
__global__ void blur_kernel(const T* x, const float* w, const float* means, ScaleGrid g,
                            int64_t C, int64_t H, int64_t W, int64_t n, T* y) {
  const int64_t HW = H * W;
  for (int64_t t = thread_index(); t < n; t += thread_stride()) {
    const int64_t plane = t / HW, rc = t - plane * HW, r = rc / W, c = rc - r * W;
    const float* wb = w + (plane / C) * g.J;
    y[t] = static_cast<T>(keep_weight(wb, g.J) * static_cast<float>(x[t]) +
                          weighted_means(g, means + plane * g.total, wb, r, c));
  }
}

template <typename T>
__global__ void stroke_noise_kernel(const T* x0, const float* alpha, const float* sigma,
                                    const float* wx, const float* we, const float* means_x,
                                    const float* means_e, ScaleGrid g, int64_t C, int64_t H,
                                    int64_t W, NoiseStream ns, int32_t target, int64_t n, T* xt,
                                    T* tgt) {
  const int64_t HW = H * W;
  for (int64_t t = thread_index(); t < n; t += thread_stride()) {
    const int64_t plane = t / HW, rc = t - plane * HW, r = rc / W, c = rc - r * W;
    const int64_t b = plane / C;
    const float* wxb = wx + b * g.J;
    const float* web = we + b * g.J;
    const float eps = ns(b, (plane - b * C) * HW + rc);
    const float ax = keep_weight(wxb, g.J) * static_cast<float>(x0[t]) +
                     weighted_means(g, means_x + plane * g.total, wxb, r, c);
    const float ae = keep_weight(web, g.J) * eps + weighted_means(g, means_e + plane * g.total, web, r, c);
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

cudaError_t philox_uint32(const int64_t* seeds, bool per_sample, int64_t B, int64_t D,
                          uint64_t offset, int64_t* out, cudaStream_t stream) {
  const int64_t n = B * D;
  if (n == 0) return cudaSuccess;
  philox_kernel<<<blocks_for(n), kThreads, 0, stream>>>(seeds, per_sample, D, offset, n, out);
  return cudaGetLastError();
}

template <typename T>
cudaError_t noise(const int64_t* seeds, bool per_sample, int64_t B, int64_t D, uint64_t offset,
                  int32_t dist, T* out, cudaStream_t stream) {
  const int64_t n = B * D;
  if (n == 0) return cudaSuccess;
  noise_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(NoiseStream{seeds, per_sample, offset, D, dist}, n, out);
  return cudaGetLastError();
}

template <typename T>
cudaError_t stroke_means(const T* x, const ScaleGrid& grid, int64_t BC, int64_t H, int64_t W,
                         float* means, cudaStream_t stream) {
  const int64_t n = BC * grid.total;
  if (n == 0) return cudaSuccess;
  means_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(x, grid, BC, H, W, means);
  return cudaGetLastError();
}

cudaError_t stroke_noise_means(const int64_t* seeds, bool per_sample, uint64_t offset,
                               int32_t dist, const ScaleGrid& grid, int64_t B, int64_t C,
                               int64_t H, int64_t W, float* means, cudaStream_t stream) {
  const int64_t n = B * C * grid.total;
  if (n == 0) return cudaSuccess;
  const NoiseStream ns{seeds, per_sample, offset, C * H * W, dist};
  noise_means_kernel<<<blocks_for(n), kThreads, 0, stream>>>(ns, grid, B, C, H, W, means);
  return cudaGetLastError();
}

template <typename T>
cudaError_t stroke_blur(const T* x, const float* w, const float* means, const ScaleGrid& grid,
                        int64_t B, int64_t C, int64_t H, int64_t W, T* y, cudaStream_t stream) {
  const int64_t n = B * C * H * W;
  if (n == 0) return cudaSuccess;
  blur_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(x, w, means, grid, C, H, W, n, y);
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
  stroke_noise_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(
      x0, alpha, sigma, wx, we, means_x, means_e, grid, C, H, W, ns, target, n, xt, tgt);
  return cudaGetLastError();
}

#define DA_INSTANTIATE(T)                                                                      \
  template cudaError_t noise<T>(const int64_t*, bool, int64_t, int64_t, uint64_t, int32_t, T*, \
                                cudaStream_t);                                                 \
  template cudaError_t stroke_means<T>(const T*, const ScaleGrid&, int64_t, int64_t, int64_t,  \
                                       float*, cudaStream_t);                                  \
  template cudaError_t stroke_blur<T>(const T*, const float*, const float*, const ScaleGrid&,  \
                                      int64_t, int64_t, int64_t, int64_t, T*, cudaStream_t);   \
  template cudaError_t stroke_noise<T>(const T*, const float*, const float*, const float*,     \
                                       const float*, const float*, const float*,               \
                                       const ScaleGrid&, int64_t, int64_t, int64_t, int64_t,   \
                                       const int64_t*, bool, uint64_t, int32_t, int32_t, T*,   \
                                       T*, cudaStream_t);
DA_INSTANTIATE(float)
DA_INSTANTIATE(c10::Half)
DA_INSTANTIATE(c10::BFloat16)
#undef DA_INSTANTIATE

}  // namespace cuda
}  // namespace diffaccel
