// CPU loop filling out[0..n) with draws at stream positions base + i: split where the low 32
// bits of the counter wrap, so the inner loop is pure 32-bit arithmetic and vectorizes. Every
// element goes through the same vector code (the ragged end through a full-width chunk), so a
// draw depends only on its (seed, offset), not on where it falls in a loop: glibc's vector and
// scalar logf/cosf differ in the last bit.
#pragma once
#include <algorithm>
#include <cstdint>

#include "diffaccel/philox.h"
#include "philox_x32.h"

namespace diffaccel {
namespace cpu {

constexpr int kDrawChunk = kPhiloxLanes;

// Draws of law DIST at counters (c0 + i, hi), i < kDrawChunk, into out[0..kDrawChunk).
template <int32_t DIST>
inline void draw_chunk(uint32_t k0, uint32_t k1, uint32_t c0, uint32_t hi, float* out) {
  alignas(32) uint32_t i1[kDrawChunk], i2[kDrawChunk];
  philox_x32(k0, k1, c0, hi, i1, i2);
#pragma omp simd
  for (int i = 0; i < kDrawChunk; ++i) out[i] = law_from<DIST>(i1[i], i2[i]);
}

template <int32_t DIST, typename T>
void fill_draws(uint64_t seed, uint64_t base, int64_t n, T* out) {
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  alignas(32) float buf[kDrawChunk];
  int64_t done = 0;
  while (done < n) {
    const uint64_t pos = base + static_cast<uint64_t>(done);
    const uint32_t lo = static_cast<uint32_t>(pos), hi = static_cast<uint32_t>(pos >> 32);
    const int64_t run = std::min<int64_t>(n - done, (int64_t(1) << 32) - lo);
    for (int64_t start = 0; start < run; start += kDrawChunk) {
      // a ragged last chunk is drawn whole (past the counter wrap too) and cut
      draw_chunk<DIST>(k0, k1, lo + static_cast<uint32_t>(start), hi, buf);
      const int64_t m = std::min<int64_t>(kDrawChunk, run - start);
      T* o = out + done + start;
      for (int64_t i = 0; i < m; ++i) o[i] = static_cast<T>(buf[i]);
    }
    done += run;
  }
}

// Runtime law -> compile-time law.
template <typename T>
void fill_draws(int32_t dist, uint64_t seed, uint64_t base, int64_t n, T* out) {
  switch (dist) {
    case kLaplace: return fill_draws<kLaplace>(seed, base, n, out);
    case kUniform: return fill_draws<kUniform>(seed, base, n, out);
    case kRademacher: return fill_draws<kRademacher>(seed, base, n, out);
    default: return fill_draws<kNormal>(seed, base, n, out);
  }
}

}  // namespace cpu
}  // namespace diffaccel
