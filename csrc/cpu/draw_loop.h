// CPU loop filling out[0..n) with draws at stream positions base + i: split where the low 32
// bits of the counter wrap, so the inner loop is pure 32-bit arithmetic and vectorizes.
#pragma once
#include <algorithm>
#include <cstdint>

#include "diffaccel/philox.h"

namespace diffaccel {
namespace cpu {

template <int32_t DIST, typename T>
void fill_draws(uint64_t seed, uint64_t base, int64_t n, T* out) {
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  int64_t done = 0;
  while (done < n) {
    const uint64_t pos = base + static_cast<uint64_t>(done);
    const uint32_t lo = static_cast<uint32_t>(pos), hi = static_cast<uint32_t>(pos >> 32);
    const int64_t run = std::min<int64_t>(n - done, (int64_t(1) << 32) - lo);
    T* o = out + done;
    const uint32_t len = static_cast<uint32_t>(run - 1);  // run <= 2^32
#pragma omp simd
    for (uint32_t i = 0; i <= len; ++i) o[i] = static_cast<T>(draw<DIST>(k0, k1, lo + i, hi));
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
