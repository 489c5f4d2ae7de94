// CUDA kernels of the noise ops: one thread per element, grid-stride, 32-bit indices when the
// tensor has fewer than 2^31 elements (no 64-bit division per element), 64-bit ones beyond. The
// Philox stream and the laws come from csrc/include/diffaccel/philox.h, shared with (and tested
// through) the CPU kernels; the registration is csrc/cuda/noise_ops_cuda.cpp.
#include "../instantiate.h"
#include "common.cuh"
#include "diffaccel/philox.h"
#include "noise_kernels.h"

namespace diffaccel {
namespace cuda {

namespace {

template <typename I>
__global__ void philox_kernel(const int64_t* seeds, bool per_sample, I D, uint64_t offset, I n,
                              int64_t* out) {
  for (I t = thread_index<I>(); t < n; t += thread_stride<I>()) {
    const I b = t / D, i = t - b * D;
    const uint64_t seed = static_cast<uint64_t>(seeds[per_sample ? b : 0]);
    uint32_t r0, r1, r2, r3;
    philox4x32_10(seed, offset + (per_sample ? 0 : static_cast<uint64_t>(b) * D) + i, r0, r1, r2, r3);
    out[4 * static_cast<int64_t>(t) + 0] = r0;
    out[4 * static_cast<int64_t>(t) + 1] = r1;
    out[4 * static_cast<int64_t>(t) + 2] = r2;
    out[4 * static_cast<int64_t>(t) + 3] = r3;
  }
}

template <typename T, typename I>
__global__ void noise_kernel(NoiseStream ns, I D, I n, T* out) {
  for (I t = thread_index<I>(); t < n; t += thread_stride<I>()) {
    const I b = t / D;
    out[t] = static_cast<T>(ns(b, t - b * D));
  }
}

}  // namespace

cudaError_t philox_uint32(const int64_t* seeds, bool per_sample, int64_t B, int64_t D,
                          uint64_t offset, int64_t* out, cudaStream_t stream) {
  const int64_t n = B * D;
  if (n == 0) return cudaSuccess;
  if (fits32(n))
    philox_kernel<uint32_t><<<blocks_for(n), kThreads, 0, stream>>>(
        seeds, per_sample, static_cast<uint32_t>(D), offset, static_cast<uint32_t>(n), out);
  else
    philox_kernel<uint64_t><<<blocks_for(n), kThreads, 0, stream>>>(
        seeds, per_sample, static_cast<uint64_t>(D), offset, static_cast<uint64_t>(n), out);
  return cudaGetLastError();
}

template <typename T>
cudaError_t noise(const int64_t* seeds, bool per_sample, int64_t B, int64_t D, uint64_t offset,
                  int32_t dist, T* out, cudaStream_t stream) {
  const int64_t n = B * D;
  if (n == 0) return cudaSuccess;
  const NoiseStream ns{seeds, per_sample, offset, D, dist};
  if (fits32(n))
    noise_kernel<T, uint32_t><<<blocks_for(n), kThreads, 0, stream>>>(
        ns, static_cast<uint32_t>(D), static_cast<uint32_t>(n), out);
  else
    noise_kernel<T, uint64_t><<<blocks_for(n), kThreads, 0, stream>>>(
        ns, static_cast<uint64_t>(D), static_cast<uint64_t>(n), out);
  return cudaGetLastError();
}


#define DA_INSTANTIATE(T)                                                                      \
  template cudaError_t noise<T>(const int64_t*, bool, int64_t, int64_t, uint64_t, int32_t, T*, \
                                cudaStream_t);
DA_FOR_EACH_FLOAT(DA_INSTANTIATE)
#undef DA_INSTANTIATE

}  // namespace cuda
}  // namespace diffaccel
