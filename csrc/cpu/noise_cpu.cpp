// Counter-based noise on the CPU: the Philox stream of csrc/include/diffaccel/philox.h in
// vectorizable loops (`#pragma omp simd` with glibc's vector logf/cosf).
#include <ATen/Parallel.h>

#include "../instantiate.h"
#include "noise_kernels.h"
#include "diffaccel/philox.h"
#include "draw_loop.h"

namespace diffaccel {
namespace cpu {

namespace {
constexpr int64_t kGrain = 1 << 14;

// Calls fn(b, i0, i1) over the flat range [begin, end) of a (B, D) layout, split by sample.
template <typename Fn>
void for_each_sample_segment(int64_t D, int64_t begin, int64_t end, Fn fn) {
  int64_t n = begin;
  while (n < end) {
    const int64_t b = n / D, i0 = n - b * D;
    const int64_t i1 = std::min(D, i0 + (end - n));
    fn(b, i0, i1);
    n += i1 - i0;
  }
}

}  // namespace

void philox_uint32(const int64_t* seeds, bool per_sample, int64_t B, int64_t D, uint64_t offset,
                   int64_t* out) {
  at::parallel_for(0, B * D, kGrain, [&](int64_t begin, int64_t end) {
    for_each_sample_segment(D, begin, end, [&](int64_t b, int64_t i0, int64_t i1) {
      const uint64_t seed = static_cast<uint64_t>(seeds[per_sample ? b : 0]);
      const uint64_t base = offset + static_cast<uint64_t>(per_sample ? 0 : b * D);
      for (int64_t i = i0; i < i1; ++i) {
        uint32_t r[4];
        philox4x32_10(seed, base + i, r[0], r[1], r[2], r[3]);
        int64_t* o = out + 4 * (b * D + i);
        for (int q = 0; q < 4; ++q) o[q] = static_cast<int64_t>(r[q]);
      }
    });
  });
}

template <typename T>
void noise(const int64_t* seeds, bool per_sample, int64_t B, int64_t D, uint64_t offset,
           int32_t dist, T* out) {
  at::parallel_for(0, B * D, kGrain, [&](int64_t begin, int64_t end) {
    for_each_sample_segment(D, begin, end, [&](int64_t b, int64_t i0, int64_t i1) {
      const uint64_t seed = static_cast<uint64_t>(seeds[per_sample ? b : 0]);
      const uint64_t base = offset + static_cast<uint64_t>((per_sample ? 0 : b * D) + i0);
      fill_draws(dist, seed, base, i1 - i0, out + b * D + i0);
    });
  });
}

#define DA_INSTANTIATE(T) \
  template void noise<T>(const int64_t*, bool, int64_t, int64_t, uint64_t, int32_t, T*);
DA_FOR_EACH_FLOAT(DA_INSTANTIATE)
#undef DA_INSTANTIATE

}  // namespace cpu
}  // namespace diffaccel
