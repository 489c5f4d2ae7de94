// CPU loop filling out[0..n) with draws at stream positions base + i: split where the low 32
// bits of the counter wrap, so the inner loop is pure 32-bit arithmetic and vectorizes. Every
// element goes through the same vector code (the ragged end through a full-width chunk), so a
// draw depends only on its (seed, offset), not on where it falls in a loop: glibc's vector and
// scalar logf/cosf differ in the last bit.
#pragma once
#include <algorithm>
#include <cstdint>

#include "diffaccel/philox.h"

namespace diffaccel {
namespace cpu {

constexpr int kChunk = 16;

template <int32_t DIST, typename T>
void fill_draws(uint64_t seed, uint64_t base, int64_t n, T* out) {
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  int64_t done = 0;
  while (done < n) {
    const uint64_t pos = base + static_cast<uint64_t>(done);
    const uint32_t lo = static_cast<uint32_t>(pos), hi = static_cast<uint32_t>(pos >> 32);
    const int64_t run = std::min<int64_t>(n - done, (int64_t(1) << 32) - lo);
    T* o = out + done;
    const int64_t body = run - run % kChunk;
    for (int64_t start = 0; start < body; start += kChunk) {
      const uint32_t c = lo + static_cast<uint32_t>(start);
#pragma omp simd
      for (int i = 0; i < kChunk; ++i) o[start + i] = static_cast<T>(draw<DIST>(k0, k1, c + i, hi));
    }
    if (body < run) {
      float tail[kChunk];
      const uint32_t c = lo + static_cast<uint32_t>(body);
#pragma omp simd
      for (int i = 0; i < kChunk; ++i) tail[i] = draw<DIST>(k0, k1, c + i, hi);  // may run past the wrap: discarded
      for (int64_t i = 0; i < run - body; ++i) o[body + i] = static_cast<T>(tail[i]);
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
