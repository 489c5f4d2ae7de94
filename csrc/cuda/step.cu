// The fused sampler step on CUDA. Grid (B, splits): the blocks of sample b stride over its D
// elements, reading x and the model outputs once and writing the new x once; per-block sums
// (|s|^2, s.z, x.s, then each probe's t_p) are reduced in shared memory and added to a
// float64 scratch with atomicAdd. A one-thread-per-sample kernel then adds the increments to
// logp / logp_var (csrc/include/diffaccel/step.h holds every formula, shared with the CPU).
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>

#include "diffaccel/philox.h"
#include "diffaccel/step.h"
#include "step_kernels.h"

namespace diffaccel {
namespace cuda {

namespace {

constexpr int kThreads = 256;

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

template <typename T>
__global__ void step_main_kernel(StepArgs<T> a, double* scratch) {
  // grid (B, splits): the batch on x (up to 2^31 - 1 blocks), the splits on y (<= 1024)
  const int64_t b = blockIdx.x, D = a.D;
  const float* c = a.coef + b * step_coef_width(a.K);
  const uint64_t seed = static_cast<uint64_t>(a.seeds[a.per_sample ? b : 0]);
  const bool track = step_tracks(a);
  const int64_t start = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.y) * blockDim.x;
  const int W = 3 + a.P;
  float ss = 0.0f, sz = 0.0f, xs = 0.0f;
  for (int64_t i = start; i < D; i += stride) {
    const int64_t e = b * D + i;
    float z = 0.0f;
    if (a.z != nullptr) z = static_cast<float>(a.z[e]);
    else if (a.dist != kNoIncrement)
      z = draw_any(seed, step_noise_position(a.offset, a.per_sample, b, D, i), a.dist);
    const float x = static_cast<float>(a.x[e]);
    float xn, s;
    step_init(c, x, z, xn, s);
    for (int k = 0; k < a.K; ++k) step_add_model(c, k, static_cast<float>(a.models[k][e]), xn, s);
    a.out[e] = static_cast<T>(xn);
    ss += s * s;
    sz += s * z;
    xs += x * s;
  }
  if (track) {
    ss = block_sum(ss);
    sz = block_sum(sz);
    xs = block_sum(xs);
    if (threadIdx.x == 0) {
      atomicAdd(scratch + b * W + 0, static_cast<double>(ss));
      atomicAdd(scratch + b * W + 1, static_cast<double>(sz));
      atomicAdd(scratch + b * W + 2, static_cast<double>(xs));
    }
    if (a.probes != nullptr && a.K > 0) {
      for (int p = 0; p < a.P; ++p) {
        float t = 0.0f;
        for (int64_t i = start; i < D; i += stride) {
          const int64_t e = (static_cast<int64_t>(p) * a.B + b) * D + i;
          float acc = 0.0f;
          for (int k = 0; k < a.K; ++k) acc += c[step_cw(k)] * static_cast<float>(a.vjps[k][e]);
          t += static_cast<float>(a.probes[e]) * acc;
        }
        t = block_sum(t);
        if (threadIdx.x == 0) atomicAdd(scratch + b * W + 3 + p, static_cast<double>(t));
      }
    }
  }
  for (int p = 0; p < a.P_out; ++p) {
    for (int64_t i = start; i < D; i += stride) {
      const uint64_t pos = step_probe_position(a.probe_offset, a.per_sample, b, a.P_out, D, p, i);
      a.probes_out[(static_cast<int64_t>(p) * a.B + b) * D + i] =
          static_cast<T>(draw_any(seed, pos, a.probe_dist));
    }
  }
}

template <typename T>
__global__ void step_finish_kernel(StepArgs<T> a, const double* scratch) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= a.B) return;
  const int W = 3 + a.P;
  const double* r = scratch + b * W;
  const int P = (a.probes != nullptr && a.K > 0) ? a.P : 0;
  double var = 0.0;
  const double inc =
      step_logp_increment(a.coef + b * step_coef_width(a.K), r[0], r[1], r[2], r + 3, P, var);
  step_accumulate(a, b, inc, var);
}

}  // namespace

template <typename T>
cudaError_t sample_step(const StepArgs<T>& args, double* scratch, cudaStream_t stream) {
  if (args.B == 0) return cudaSuccess;
  if (args.D > 0) {  // with D = 0 the zeroed scratch gives logp += c0, as in the reference
    const int64_t per_sample_blocks = (args.D + kThreads * 4 - 1) / (kThreads * 4);
    const unsigned splits =
        static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(per_sample_blocks, 1024)));
    const dim3 grid(static_cast<unsigned>(args.B), splits);  // gridDim.y is capped at 65535
    step_main_kernel<T><<<grid, kThreads, 0, stream>>>(args, scratch);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  if (!step_tracks(args)) return cudaSuccess;
  const unsigned fb = static_cast<unsigned>((args.B + 127) / 128);
  step_finish_kernel<T><<<fb, 128, 0, stream>>>(args, scratch);
  return cudaGetLastError();
}

template cudaError_t sample_step<float>(const StepArgs<float>&, double*, cudaStream_t);
template cudaError_t sample_step<c10::Half>(const StepArgs<c10::Half>&, double*, cudaStream_t);
template cudaError_t sample_step<c10::BFloat16>(const StepArgs<c10::BFloat16>&, double*, cudaStream_t);

}  // namespace cuda
}  // namespace diffaccel
