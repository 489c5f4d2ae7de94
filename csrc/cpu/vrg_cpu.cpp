// VRG on the CPU: the fused error-moment reduction (one read of pred and target, float64
// accumulation in vector lanes) and the batched cumulative prediction error with its gradient.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../instantiate.h"
#include "diffaccel/vrg.h"
#include "vrg_kernels.h"

namespace diffaccel {
namespace cpu {

namespace {
constexpr int64_t kMomentChunk = int64_t(1) << 15;  // elements per task (fixed: deterministic)
constexpr int64_t kLanes = 16;                       // float32 / float64 accumulator lanes
constexpr int64_t kRounds = 8;                       // float32 additions per lane before folding
}  // namespace

template <typename T>
int64_t vrg_error_moments(const T* pred, const T* target, const int64_t* bins, int64_t B,
                          int64_t D, int64_t num_bins, double* table) {
  for (int64_t b = 0; b < B; ++b)
    if (bins[b] < 0 || bins[b] >= num_bins) return b;
  if (B == 0) return -1;
  const int64_t chunks = D == 0 ? 1 : (D + kMomentChunk - 1) / kMomentChunk;
  const int64_t tasks = B * chunks;
  std::vector<double> part(2 * tasks, 0.0);
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks, c = task - b * chunks;
      const int64_t i0 = c * kMomentChunk, i1 = std::min(D, i0 + kMomentChunk);
      const T* p = pred + b * D;
      const T* t = target + b * D;
      // 16 float32 lanes sum kRounds errors each, then fold into 16 float64 lanes: the float32
      // partial sums stay short (error <= kRounds ulps of the block's |e| sums) and the loops
      // vectorize without float64 conversions per element.
      double d1[kLanes] = {}, d2[kLanes] = {};
      int64_t i = i0;
      for (; i + kLanes * kRounds <= i1; i += kLanes * kRounds) {
        float f1[kLanes] = {}, f2[kLanes] = {};
        for (int64_t r = 0; r < kRounds; ++r) {
          const T* pr = p + i + r * kLanes;
          const T* tr = t + i + r * kLanes;
#pragma omp simd
          for (int64_t l = 0; l < kLanes; ++l) {
            const float e = vrg_error(static_cast<float>(pr[l]), static_cast<float>(tr[l]));
            f1[l] += e;
            f2[l] += e * e;
          }
        }
#pragma omp simd
        for (int64_t l = 0; l < kLanes; ++l) {
          d1[l] += static_cast<double>(f1[l]);
          d2[l] += static_cast<double>(f2[l]);
        }
      }
      double s1 = 0.0, s2 = 0.0;
      for (int64_t l = 0; l < kLanes; ++l) {
        s1 += d1[l];
        s2 += d2[l];
      }
      for (; i < i1; ++i) {
        const double e =
            static_cast<double>(vrg_error(static_cast<float>(p[i]), static_cast<float>(t[i])));
        s1 += e;
        s2 += e * e;
      }
      part[2 * task] = s1;
      part[2 * task + 1] = s2;
    }
  });
  for (int64_t b = 0; b < B; ++b) {
    double* row = table + 3 * bins[b];
    row[0] += static_cast<double>(D);
    for (int64_t c = 0; c < chunks; ++c) {
      row[1] += part[2 * (b * chunks + c)];
      row[2] += part[2 * (b * chunks + c) + 1];
    }
  }
  return -1;
}

void vrg_cumulative_error(const double* abar, int64_t K, int64_t N, const double* grid,
                          const double* mse, int64_t M, int32_t solver, double* cpe,
                          double* grad) {
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(N, 1));
  at::parallel_for(0, K, grain, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k)
      cpe[k] = vrg_cpe_row(solver, abar + k * N, N, grid, mse, M, grad ? grad + k * N : nullptr);
  });
}

#define DA_INSTANTIATE(T)                                                                   \
  template int64_t vrg_error_moments<T>(const T*, const T*, const int64_t*, int64_t, int64_t, \
                                        int64_t, double*);
DA_FOR_EACH_FLOAT(DA_INSTANTIATE)
#undef DA_INSTANTIATE

}  // namespace cpu
}  // namespace diffaccel
