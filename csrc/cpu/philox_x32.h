// Thirty-two consecutive Philox4x32-10 counters at once on the CPU: the first two outputs of
// counters (c0 + i, hi), i = 0..31, under key (k0, k1). With AVX2, four interleaved 8-lane
// states; the high words of the 32x32-bit products come from two vpmuludq (even and odd lanes),
// the low words from one vpmulld, where compiler auto-vectorization of the scalar code in
// philox.h spends about twice the instructions on shuffles. Four states, not two: a round is a
// chain of dependent multiplies, shifts and xors, and with two states the loop waits on that
// chain (measured on the project's AMD EPYC VM: 21 cycles per counter with two states, 6.3
// with four, 6.5-7 with six or eight; vpmulld for the low words instead of shifting and
// blending the 64-bit products: 5.6).
// Without AVX2, the scalar code.
// Bit-identity with philox.h is what the noise tests check (integers exactly, laws to ulps).
#pragma once
#include <cstdint>

#include "diffaccel/philox.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace diffaccel {
namespace cpu {

constexpr int kPhiloxLanes = 32;  // counters per philox_x32 call

#if defined(__AVX2__)
namespace detail {
// (hi, lo) 32-bit words of m * x per 32-bit lane.
inline void mul_hi_lo(__m256i m, __m256i x, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(m, x);                         // 64-bit products, lanes 0, 2, ..
  const __m256i odd = _mm256_mul_epu32(m, _mm256_srli_epi64(x, 32));  // lanes 1, 3, ..
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_mullo_epi32(m, x);
}
}  // namespace detail
#endif

inline void philox_x32(uint32_t k0, uint32_t k1, uint32_t c0, uint32_t hi, uint32_t* i1,
                       uint32_t* i2) {
#if defined(__AVX2__)
  constexpr int S = kPhiloxLanes / 8;  // independent 8-lane states
  const __m256i ma = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m256i mb = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256i x0[S], x1[S], x2[S], x3[S];
  for (int s = 0; s < S; ++s) {
    x0[s] = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(c0 + 8u * s)), lane);
    x1[s] = _mm256_set1_epi32(static_cast<int>(hi));
    x2[s] = _mm256_setzero_si256();
    x3[s] = _mm256_setzero_si256();
  }
  for (int r = 0; r < 10; ++r) {
    const __m256i key0 = _mm256_set1_epi32(static_cast<int>(k0 + 0x9E3779B9u * r));
    const __m256i key1 = _mm256_set1_epi32(static_cast<int>(k1 + 0xBB67AE85u * r));
    for (int s = 0; s < S; ++s) {
      __m256i h0, l0, h2, l2;
      detail::mul_hi_lo(mb, x2[s], h0, l0);
      detail::mul_hi_lo(ma, x0[s], h2, l2);
      x0[s] = _mm256_xor_si256(_mm256_xor_si256(h0, x1[s]), key0);
      x2[s] = _mm256_xor_si256(_mm256_xor_si256(h2, x3[s]), key1);
      x1[s] = l0;
      x3[s] = l2;
    }
  }
  for (int s = 0; s < S; ++s) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(i1 + 8 * s), x0[s]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(i2 + 8 * s), x1[s]);
  }
#else
  for (int i = 0; i < kPhiloxLanes; ++i) {
    uint32_t o2, o3;
    philox4x32_10(k0, k1, c0 + static_cast<uint32_t>(i), hi, i1[i], i2[i], o2, o3);
  }
#endif
}

}  // namespace cpu
}  // namespace diffaccel
