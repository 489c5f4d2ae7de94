// What the noise, stroke and VRG CUDA kernels share (csrc/cuda/{noise,stroke,vrg}.cu): the block
// size, grid sizing, grid-stride indices and the position of an element in the noise stream.
// No torch headers (nvcc time).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "diffaccel/launch_grid.h"
#include "diffaccel/philox.h"

namespace diffaccel {
namespace cuda {

constexpr int kThreads = grid::kThreads;

// Blocks of per_block threads (or units) covering n, at least 1 and at most 2^30 (grid-stride
// loops cover the rest).
template <typename I>
inline unsigned blocks_for(I n, int per_block = kThreads) {
  const int64_t b = (static_cast<int64_t>(n) + per_block - 1) / per_block;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(b, int64_t(1) << 30)));
}

// Whether 32-bit indices cover n elements (no 64-bit division per element); 64-bit ones beyond.
inline bool fits32(int64_t n) { return n < (int64_t(1) << 31); }

template <typename I>
__device__ __forceinline__ I thread_index() {
  return static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x;
}
template <typename I>
__device__ __forceinline__ I thread_stride() {
  return static_cast<I>(gridDim.x) * blockDim.x;
}

// Stream position of element (b, i) of a (B, D) layout (docs/math.md Section 1).
struct NoiseStream {
  const int64_t* seeds;
  bool per_sample;
  uint64_t offset;
  int64_t D;
  int32_t dist;
  template <typename I>
  __device__ __forceinline__ float operator()(I b, I i) const {
    const uint64_t seed = static_cast<uint64_t>(seeds[per_sample ? b : 0]);
    const uint64_t pos = offset + (per_sample ? 0 : static_cast<uint64_t>(b) * static_cast<uint64_t>(D)) + i;
    return draw_any(seed, pos, dist);
  }
};

}  // namespace cuda
}  // namespace diffaccel
