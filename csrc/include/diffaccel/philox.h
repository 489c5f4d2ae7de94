// Counter-based noise, docs/math.md Section 1: Triton's Philox4x32-10 (`tl.randint4x`) bit for bit,
// and the four increment laws built on it. Host and device share every line here.
#pragma once
#include <cmath>
#include "diffaccel/common.h"

namespace diffaccel {

DA_HOST_DEVICE uint32_t umulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// Philox4x32 with ten rounds, key (k0, k1), counter (c0, c1, 0, 0). The round order and
// constants are those of triton/language/random.py:philox_impl. All-32-bit arguments let CPU
// loops vectorize at 8 lanes per AVX2 register.
DA_HOST_DEVICE void philox4x32_10(uint32_t k0, uint32_t k1, uint32_t c0, uint32_t c1,
                                  uint32_t& o0, uint32_t& o1, uint32_t& o2, uint32_t& o3) {
  uint32_t c2 = 0u, c3 = 0u;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    const uint32_t p0 = c0, p2 = c2;
    c0 = umulhi32(0xCD9E8D57u, p2) ^ c1 ^ k0;
    c2 = umulhi32(0xD2511F53u, p0) ^ c3 ^ k1;
    c1 = 0xCD9E8D57u * p2;
    c3 = 0xD2511F53u * p0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  o0 = c0; o1 = c1; o2 = c2; o3 = c3;
}

// The same at 64-bit (seed, offset): key = (seed lo, seed hi), counter = (offset lo, offset hi).
DA_HOST_DEVICE void philox4x32_10(uint64_t seed, uint64_t offset, uint32_t& o0, uint32_t& o1,
                                  uint32_t& o2, uint32_t& o3) {
  philox4x32_10(static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32),
                static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32), o0, o1, o2, o3);
}

// Triton's uint_to_uniform_float: bitcast to int32, fold negatives with ~x, scale into [0, 1).
DA_HOST_DEVICE float uint_to_uniform(uint32_t i) {
  int32_t s = static_cast<int32_t>(i);
  s = s < 0 ? ~s : s;
  return static_cast<float>(s) * 4.6566127342e-10f;
}

// Triton's randn (Box-Muller, cosine branch) from the first two Philox outputs.
DA_HOST_DEVICE float normal_from(uint32_t i1, uint32_t i2) {
  float u1 = uint_to_uniform(i1);
  u1 = u1 > 1.0e-7f ? u1 : 1.0e-7f;
  const float th = 6.283185307179586f * uint_to_uniform(i2);
  return sqrtf(-2.0f * logf(u1)) * cosf(th);
}

// Zero-mean, unit-variance Laplace: -sign(u - 1/2) ln(max(1e-7, 1 - 2|u - 1/2|)) / sqrt(2).
DA_HOST_DEVICE float laplace_from(uint32_t i1) {
  const float d = uint_to_uniform(i1) - 0.5f;
  float t = 1.0f - 2.0f * fabsf(d);
  t = t > 1.0e-7f ? t : 1.0e-7f;
  const float mag = -logf(t) * 0.7071067811865476f;  // |ln t| / sqrt(2)
  return d > 0.0f ? mag : (d < 0.0f ? -mag : 0.0f);
}

// Zero-mean, unit-variance uniform on [-sqrt(3), sqrt(3)).
DA_HOST_DEVICE float centered_uniform_from(uint32_t i1) {
  return (uint_to_uniform(i1) - 0.5f) * 3.4641016151377544f;
}

DA_HOST_DEVICE float rademacher_from(uint32_t i1) { return (i1 & 1u) ? 1.0f : -1.0f; }

// The law DIST from the first two Philox outputs. DIST is a template argument so that CPU loops
// over it stay branch-free and vectorize.
template <int32_t DIST>
DA_HOST_DEVICE float law_from(uint32_t i1, uint32_t i2) {
  if (DIST == kLaplace) return laplace_from(i1);
  if (DIST == kUniform) return centered_uniform_from(i1);
  if (DIST == kRademacher) return rademacher_from(i1);
  return normal_from(i1, i2);
}

// One draw of law DIST at stream position (key, counter).
template <int32_t DIST>
DA_HOST_DEVICE float draw(uint32_t k0, uint32_t k1, uint32_t c0, uint32_t c1) {
  uint32_t i1, i2, i3, i4;
  philox4x32_10(k0, k1, c0, c1, i1, i2, i3, i4);
  return law_from<DIST>(i1, i2);
}

template <int32_t DIST>
DA_HOST_DEVICE float draw(uint64_t seed, uint64_t offset) {
  return draw<DIST>(static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32),
                    static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32));
}

// The same with the law as a runtime code: GPU kernels, where the branch is uniform across a
// warp (CPU loops dispatch once, outside, to the template above).
DA_HOST_DEVICE float draw_any(uint64_t seed, uint64_t offset, int32_t dist) {
  switch (dist) {
    case kLaplace: return draw<kLaplace>(seed, offset);
    case kUniform: return draw<kUniform>(seed, offset);
    case kRademacher: return draw<kRademacher>(seed, offset);
    default: return draw<kNormal>(seed, offset);
  }
}

}  // namespace diffaccel
