// CPU kernels of the noise ops over raw pointers (csrc/cpu/noise_cpu.cpp; the math lives in
// csrc/include/diffaccel/philox.h). T is float, c10::Half or c10::BFloat16.
#pragma once
#include <cstdint>

namespace diffaccel {
namespace cpu {

// out[n, 4] = the four uint32 Philox outputs (as int64) for element n of a (B, D) layout.
// seeds: [B] (per-sample) or [1] (one seed).
void philox_uint32(const int64_t* seeds, bool per_sample, int64_t B, int64_t D, uint64_t offset,
                   int64_t* out);

// out[B, D] = draws of law `dist` (docs/math.md Section 1 layout).
template <typename T>
void noise(const int64_t* seeds, bool per_sample, int64_t B, int64_t D, uint64_t offset,
           int32_t dist, T* out);

}  // namespace cpu
}  // namespace diffaccel
