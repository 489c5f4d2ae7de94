// Launch shapes of the CUDA kernels, as pure functions of the problem size and the device's SM
// count (host only; also exposed to Python as diffaccel._C.launch_split_chunk, launch_splits,
// launch_vec_width, launch_stroke_tile, launch_stroke_tile_blocks, launch_stroke_means,
// launch_threads and launch_blocks_per_sm, csrc/module.cpp, so tests can check them for any GPU without one).
//
// Rule: a launch gets at least kBlocksPerSm blocks per SM, unless the tensor is too small for
// that, in which case every thread gets one unit of work (one 16-byte vector for the step and the
// error moments, one element of a tile for the stroke ops) and the grid is as wide as it can be.
#pragma once
#include <algorithm>
#include <cstdint>

#include "diffaccel/common.h"

namespace diffaccel {
namespace grid {

constexpr int kBlocksPerSm = 4;
constexpr int kThreads = 256;         // threads per block of the step, moments and stroke kernels
constexpr int64_t kMaxSplits = 65535;  // gridDim.y limit: splits of one sample

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Elements per 16-byte vector of an element of `elem_bytes` bytes (4 for float32, 8 for 16-bit).
inline int vec_width(int elem_bytes) { return 16 / elem_bytes; }

// Elements of one sample per block ("chunk") for a (B, D) launch with `vec` elements per thread
// and iteration: the smallest multiple of kThreads * vec that still gives each sample
// ceil(kBlocksPerSm * sm_count / B) blocks, so blocks = B * ceil(D / chunk).
inline int64_t split_chunk(int64_t B, int64_t D, int vec, int sm_count) {
  const int64_t unit = static_cast<int64_t>(kThreads) * vec;
  const int64_t units = std::max<int64_t>(1, cdiv(D, unit));
  const int64_t want = std::max<int64_t>(1, cdiv(static_cast<int64_t>(kBlocksPerSm) * sm_count,
                                                 std::max<int64_t>(B, 1)));
  int64_t chunk = std::max<int64_t>(1, units / want) * unit;
  if (cdiv(D, chunk) > kMaxSplits) chunk = cdiv(cdiv(D, kMaxSplits), unit) * unit;
  return chunk;
}

inline int64_t splits(int64_t D, int64_t chunk) { return std::max<int64_t>(1, cdiv(D, chunk)); }

// Side T of the square tile of the one-pass stroke kernels for a scale set, or 0 when the scale
// set needs the general path: every scale a power of two <= kMaxTile (so each divides the next
// and every block of every scale lies inside one tile), T = max(16, largest scale).
constexpr int64_t kMaxTile = 64;
inline int64_t stroke_tile(const int64_t* scales, int J) {
  int64_t T = 16;
  for (int j = 0; j < J; ++j) {
    const int64_t k = scales[j];
    if (k < 2 || k > kMaxTile || (k & (k - 1)) != 0) return 0;
    T = std::max(T, k);
  }
  return T;
}

// Blocks of the one-pass stroke kernels: one per (plane, tile).
inline int64_t stroke_tile_blocks(int64_t BC, int64_t H, int64_t W, int64_t T) {
  return BC * cdiv(H, T) * cdiv(W, T);
}

// Launch of the general stroke path's block-mean kernels (csrc/cuda/stroke.cu), one warp per
// block mean: n = BC * total block means over `elems` = BC * H * W elements. The 32-bit index
// instantiation is taken only when every index the kernel computes stays below 2^31: the
// elements, the block means and the thread index and stride (blocks * kThreads, 32 threads per
// block mean, so it is capped at 2^31 / kThreads blocks; the grid-stride loop covers the rest).
// Without that cap the thread index wrapped from 2^27 block means, and at a multiple of 2^27 the
// stride was 0 and the kernel never returned.
struct WarpLaunch {
  int64_t blocks;
  bool idx64;
};
constexpr int64_t kMaxBlocks = int64_t(1) << 30;
inline WarpLaunch stroke_means_launch(int64_t BC, int64_t H, int64_t W, int64_t total) {
  const int64_t n = BC * total, elems = BC * H * W, lim = int64_t(1) << 31;
  const int64_t warps_per_block = kThreads / 32;
  const int64_t want = std::max<int64_t>(1, cdiv(n, warps_per_block));
  const bool idx64 = !(elems < lim && n < lim);
  const int64_t cap = idx64 ? kMaxBlocks : lim / kThreads;
  return {std::min(want, cap), idx64};
}

}  // namespace grid
}  // namespace diffaccel
