// The fused sampler step on CUDA. Grid (B, splits): block (b, c) owns the contiguous elements
// [c chunk, (c + 1) chunk) of sample b (csrc/include/diffaccel/launch_grid.h sizes chunk from the
// SM count). It reads x and the model outputs once, 16-byte vectors per thread where aligned,
// with the 7 + 3K coefficients held in registers (K is a template parameter), writes the new x
// once, and stores its block's sums (|s|^2, s.z, x.s, then each probe's t_p) in its own row of a
// float64 scratch (with the y line, template bool Y: also |z|^2 and |x_new|^2). A
// one-thread-per-sample kernel adds those rows up in a fixed order and adds
// the increments to logp / logp_var: no atomics, so results are reproducible run to run
// (csrc/include/diffaccel/step.h holds every formula, shared with the CPU).
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>

#include "diffaccel/launch_grid.h"
#include "diffaccel/philox.h"
#include "diffaccel/step.h"
#include "step_kernels.h"
#include "vec.cuh"

namespace diffaccel {
namespace cuda {

namespace {

constexpr int kThreads = grid::kThreads;

// Sum over the block; the result is valid in thread 0. Every thread must call it.
__device__ float block_sum(float v) {
  __shared__ float warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  __syncthreads();  // the previous call's readers are done
  if (lane == 0) warp_sums[w] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? warp_sums[lane] : 0.0f;
  if (w == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// Pointers of one sample, offset to its row; the read-only ones restrict-qualified (x may be out:
// each element is read before the same thread writes it, and never read again).
template <typename T, int K>
struct Row {
  const T* x;
  T* out;
  const T* __restrict__ z;
  const T* __restrict__ m[K > 0 ? K : 1];
  T* y_out;  // the y line's output row, or nullptr
};

// x_new and the three sums over [i0, end) in steps of V elements per thread; with Y also the y
// line (yc: its 5 + K coefficients), y_out and the sums |z|^2 (zz) and |x_new|^2 (nn).
template <typename T, int K, int V, bool Y>
__device__ __forceinline__ void step_range(const StepArgs<T>& a, const Row<T, K>& r,
                                           const float (&c)[kStepHead + kStepPerModel * K],
                                           const float (&yc)[Y ? kYHead + K : 1],
                                           uint64_t seed, int64_t b, int64_t i0, int64_t end,
                                           float& ss, float& sz, float& xs, float& zz, float& nn) {
  for (int64_t i = i0 + static_cast<int64_t>(threadIdx.x) * V; i < end;
       i += static_cast<int64_t>(kThreads) * V) {
    float xv[V], zv[V], xn[V], s[V], y[Y ? V : 1];
    load_vec<T, V>(r.x + i, xv);
    if (r.z != nullptr) {
      load_vec<T, V>(r.z + i, zv);
    } else {
#pragma unroll
      for (int u = 0; u < V; ++u)
        zv[u] = a.dist == kNoIncrement
                    ? 0.0f
                    : draw_any(seed, step_noise_position(a.offset, a.per_sample, b, a.D, i + u), a.dist);
    }
#pragma unroll
    for (int u = 0; u < V; ++u) step_init(c, xv[u], zv[u], xn[u], s[u]);
    if constexpr (Y) {
#pragma unroll
      for (int u = 0; u < V; ++u) y[u] = step_y_init(yc, xv[u]);
    }
#pragma unroll
    for (int k = 0; k < K; ++k) {
      float mv[V];
      load_vec<T, V>(r.m[k] + i, mv);
#pragma unroll
      for (int u = 0; u < V; ++u) step_add_model(c, k, mv[u], xn[u], s[u]);
      if constexpr (Y) {
#pragma unroll
        for (int u = 0; u < V; ++u) step_y_add_model(yc, k, mv[u], y[u]);
      }
    }
    if constexpr (Y) {
#pragma unroll
      for (int u = 0; u < V; ++u) step_y_finish(yc, a.clip, y[u], xn[u], s[u]);
      if (r.y_out != nullptr) store_vec<T, V>(r.y_out + i, y);
#pragma unroll
      for (int u = 0; u < V; ++u) {
        zz += zv[u] * zv[u];
        nn += xn[u] * xn[u];
      }
    }
    store_vec<T, V>(r.out + i, xn);
#pragma unroll
    for (int u = 0; u < V; ++u) {
      ss += s[u] * s[u];
      sz += s[u] * zv[u];
      xs += xv[u] * s[u];
    }
  }
}

// Probe p's t_p = sum_i v_i sum_k cw_k w_{k,i} over [i0, end) of sample b.
template <typename T, int K, int V>
__device__ __forceinline__ float probe_range(const StepArgs<T>& a,
                                             const float (&c)[kStepHead + kStepPerModel * K],
                                             int64_t base, int64_t i0, int64_t end) {
  float t = 0.0f;
  for (int64_t i = i0 + static_cast<int64_t>(threadIdx.x) * V; i < end;
       i += static_cast<int64_t>(kThreads) * V) {
    float acc[V] = {}, v[V];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      float w[V];
      load_vec<T, V>(a.vjps[k] + base + i, w);
#pragma unroll
      for (int u = 0; u < V; ++u) acc[u] += c[step_cw(k)] * w[u];
    }
    load_vec<T, V>(a.probes + base + i, v);
#pragma unroll
    for (int u = 0; u < V; ++u) t += v[u] * acc[u];
  }
  return t;
}

template <typename T, int V>
__device__ __forceinline__ void draw_probes(const StepArgs<T>& a, uint64_t seed, int64_t b,
                                            int p, int64_t i0, int64_t end) {
  T* dst = a.probes_out + (static_cast<int64_t>(p) * a.B + b) * a.D;
  for (int64_t i = i0 + static_cast<int64_t>(threadIdx.x) * V; i < end;
       i += static_cast<int64_t>(kThreads) * V) {
    float v[V];
#pragma unroll
    for (int u = 0; u < V; ++u)
      v[u] = draw_any(seed, step_probe_position(a.probe_offset, a.per_sample, b, a.P_out, a.D, p, i + u),
                      a.probe_dist);
    store_vec<T, V>(dst + i, v);
  }
}

template <typename T, int K, bool Y>
__global__ void __launch_bounds__(kThreads, 2) step_main_kernel(const StepArgs<T> a, double* partial,
                                                             int64_t chunk, bool vec) {
  constexpr int V = kVec<T>;
  constexpr int CW = kStepHead + kStepPerModel * K;
  // grid (B, splits): the batch on x (up to 2^31 - 1 blocks), the splits on y
  const int64_t b = blockIdx.x, D = a.D;
  float c[CW];
  const float* __restrict__ cb = a.coef + b * CW;
#pragma unroll
  for (int i = 0; i < CW; ++i) c[i] = cb[i];
  float yc[Y ? kYHead + K : 1];
  if constexpr (Y) {
    const float* __restrict__ yb = a.ycoef + b * (kYHead + K);
#pragma unroll
    for (int i = 0; i < kYHead + K; ++i) yc[i] = yb[i];
  }
  const uint64_t seed = static_cast<uint64_t>(a.seeds[a.per_sample ? b : 0]);
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * chunk;
  const int64_t end = min(D, i0 + chunk);
  Row<T, K> r;
  r.x = a.x + b * D;
  r.out = a.out + b * D;
  r.z = a.z != nullptr ? a.z + b * D : nullptr;
#pragma unroll
  for (int k = 0; k < K; ++k) r.m[k] = a.models[k] + b * D;
  r.y_out = Y && a.y_out != nullptr ? a.y_out + b * D : nullptr;
  float ss = 0.0f, sz = 0.0f, xs = 0.0f, zz = 0.0f, nn = 0.0f;
  if (vec) step_range<T, K, V, Y>(a, r, c, yc, seed, b, i0, end, ss, sz, xs, zz, nn);
  else step_range<T, K, 1, Y>(a, r, c, yc, seed, b, i0, end, ss, sz, xs, zz, nn);
  if (partial != nullptr) {  // logp is tracked: this block's row of the scratch
    const int Ph = (a.probes != nullptr && K > 0) ? a.P : 0;
    const int RW = 3 + Ph + (Y ? 2 : 0);
    double* row = partial + (b * gridDim.y + blockIdx.y) * RW;
    ss = block_sum(ss);
    sz = block_sum(sz);
    xs = block_sum(xs);
    if (threadIdx.x == 0) {
      row[0] = ss;
      row[1] = sz;
      row[2] = xs;
    }
    if (K > 0 && a.probes != nullptr) {
      for (int p = 0; p < a.P; ++p) {
        const int64_t base = (static_cast<int64_t>(p) * a.B + b) * D;
        float t = vec ? probe_range<T, K, V>(a, c, base, i0, end) : probe_range<T, K, 1>(a, c, base, i0, end);
        t = block_sum(t);
        if (threadIdx.x == 0) row[3 + p] = t;
      }
    }
    if constexpr (Y) {
      zz = block_sum(zz);
      nn = block_sum(nn);
      if (threadIdx.x == 0) {
        row[3 + Ph] = zz;
        row[4 + Ph] = nn;
      }
    }
  }
  for (int p = 0; p < a.P_out; ++p) {
    if (vec) draw_probes<T, V>(a, seed, b, p, i0, end);
    else draw_probes<T, 1>(a, seed, b, p, i0, end);
  }
}

// Sample b: its blocks' rows added into its first row in split order (float64), then the
// increments from that row.
template <typename T>
__global__ void step_finish_kernel(StepArgs<T> a, double* partial, int64_t splits) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= a.B) return;
  const int P = (a.probes != nullptr && a.K > 0) ? a.P : 0;
  const bool y = a.ycoef != nullptr;
  const int RW = 3 + P + (y ? 2 : 0);
  double* r = partial + b * splits * RW;
  for (int64_t c = 1; c < splits; ++c)
    for (int q = 0; q < RW; ++q) r[q] += r[c * RW + q];
  double var = 0.0;
  double inc = splits == 0
      ? step_logp_increment(a.coef + b * step_coef_width(a.K), 0.0, 0.0, 0.0, nullptr, 0, var)
      : step_logp_increment(a.coef + b * step_coef_width(a.K), r[0], r[1], r[2], r + 3, P, var);
  if (y && splits != 0) inc += step_y_logp(a.ycoef + b * step_y_width(a.K), r[3 + P], r[4 + P]);
  step_accumulate(a, b, inc, var);
}

template <typename T, int K>
cudaError_t launch_main(const StepArgs<T>& a, double* partial, int64_t chunk, int64_t splits,
                        bool vec, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(a.B), static_cast<unsigned>(splits));
  if (a.ycoef != nullptr)
    step_main_kernel<T, K, true><<<grid, kThreads, 0, stream>>>(a, partial, chunk, vec);
  else
    step_main_kernel<T, K, false><<<grid, kThreads, 0, stream>>>(a, partial, chunk, vec);
  return cudaGetLastError();
}

}  // namespace

template <typename T>
bool step_vectorizable(const StepArgs<T>& a) {
  constexpr int V = kVec<T>;
  if (a.D % V != 0) return false;
  bool ok = aligned16(a.x) && aligned16(a.out) && (a.z == nullptr || aligned16(a.z)) &&
            (a.probes == nullptr || aligned16(a.probes)) &&
            (a.probes_out == nullptr || aligned16(a.probes_out)) &&
            (a.y_out == nullptr || aligned16(a.y_out));
  for (int k = 0; k < a.K; ++k) ok = ok && aligned16(a.models[k]) && (a.probes == nullptr || aligned16(a.vjps[k]));
  return ok;
}

template <typename T>
cudaError_t sample_step(const StepArgs<T>& args, double* partial, int64_t chunk,
                        cudaStream_t stream) {
  if (args.B == 0) return cudaSuccess;
  const int64_t splits = grid::splits(args.D, chunk);
  if (args.D > 0) {  // with D = 0 the finish kernel gives logp += c0, as in the reference
    const bool vec = step_vectorizable(args);
    cudaError_t err = cudaSuccess;
    switch (args.K) {
      case 0: err = launch_main<T, 0>(args, partial, chunk, splits, vec, stream); break;
      case 1: err = launch_main<T, 1>(args, partial, chunk, splits, vec, stream); break;
      case 2: err = launch_main<T, 2>(args, partial, chunk, splits, vec, stream); break;
      case 3: err = launch_main<T, 3>(args, partial, chunk, splits, vec, stream); break;
      case 4: err = launch_main<T, 4>(args, partial, chunk, splits, vec, stream); break;
      case 5: err = launch_main<T, 5>(args, partial, chunk, splits, vec, stream); break;
      case 6: err = launch_main<T, 6>(args, partial, chunk, splits, vec, stream); break;
      case 7: err = launch_main<T, 7>(args, partial, chunk, splits, vec, stream); break;
      case 8: err = launch_main<T, 8>(args, partial, chunk, splits, vec, stream); break;
      default: return cudaErrorInvalidValue;
    }
    if (err != cudaSuccess) return err;
  }
  if (!step_tracks(args)) return cudaSuccess;
  const unsigned fb = static_cast<unsigned>((args.B + 127) / 128);
  step_finish_kernel<T><<<fb, 128, 0, stream>>>(args, partial, args.D > 0 ? splits : 0);
  return cudaGetLastError();
}

template cudaError_t sample_step<float>(const StepArgs<float>&, double*, int64_t, cudaStream_t);
template cudaError_t sample_step<c10::Half>(const StepArgs<c10::Half>&, double*, int64_t, cudaStream_t);
template cudaError_t sample_step<c10::BFloat16>(const StepArgs<c10::BFloat16>&, double*, int64_t, cudaStream_t);

}  // namespace cuda
}  // namespace diffaccel
