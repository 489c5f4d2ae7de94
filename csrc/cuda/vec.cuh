// 16-byte vector loads and stores of V elements (float32: 4, float16 / bfloat16: 8), converted
// to and from float; V = 1 gives plain scalar accesses. Callers guarantee 16-byte alignment
// whenever V * sizeof(T) == 16.
#pragma once
#include <cuda_runtime.h>

namespace diffaccel {
namespace cuda {

template <typename T>
constexpr int kVec = 16 / static_cast<int>(sizeof(T));

template <typename T, int V>
__device__ __forceinline__ void load_vec(const T* p, float (&out)[V]) {
  if constexpr (V * sizeof(T) == 16) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int u = 0; u < V; ++u) out[u] = static_cast<float>(e[u]);
  } else {
#pragma unroll
    for (int u = 0; u < V; ++u) out[u] = static_cast<float>(p[u]);
  }
}

// The 32 bits holding elements 2w, 2w + 1 (16-bit T) or element w (float) of a vector.
template <typename T, int V>
__device__ __forceinline__ uint32_t pack_word(const float (&in)[V], int w) {
  if constexpr (sizeof(T) == 4) {
    return __float_as_uint(in[w]);
  } else {  // c10::Half / c10::BFloat16: the bits are the member x (round to nearest even)
    return static_cast<uint32_t>(static_cast<T>(in[2 * w]).x) |
           (static_cast<uint32_t>(static_cast<T>(in[2 * w + 1]).x) << 16);
  }
}

template <typename T, int V>
__device__ __forceinline__ void store_vec(T* p, const float (&in)[V]) {
  if constexpr (V * sizeof(T) == 16) {
    // one 128-bit store, spelled out: nvcc split a plain uint4 store into four in the step kernel
    asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(pack_word<T, V>(in, 0)),
                 "r"(pack_word<T, V>(in, 1)), "r"(pack_word<T, V>(in, 2)), "r"(pack_word<T, V>(in, 3))
                 : "memory");
  } else {
#pragma unroll
    for (int u = 0; u < V; ++u) p[u] = static_cast<T>(in[u]);
  }
}

// True when p is 16-byte aligned (host side: decides whether a launch may use load_vec).
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace cuda
}  // namespace diffaccel
