// Shared by the C++ CPU kernels and the CUDA kernels: one formula, one place. The codes and
// limits here, in step.h and in vrg.h have their Python twins in diffaccel/layout.py; the
// extension exports them (diffaccel._C.layout, csrc/module.cpp) and tests/build/test_layout.py
// compares the two.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define DA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DA_HOST_DEVICE inline
#endif

namespace diffaccel {

// Increment laws of docs/math.md Sections 1 and 3.4 (the integer codes the Python side passes).
enum Dist : int32_t { kNormal = 0, kLaplace = 1, kUniform = 2, kRademacher = 3 };

// Stroke-noise targets of docs/math.md Section 2.
enum Target : int32_t { kEps = 0, kX0 = 1, kV = 2 };

// At most this many stroke scales per op (checked on the Python and C++ sides).
constexpr int kMaxScales = 8;

}  // namespace diffaccel
