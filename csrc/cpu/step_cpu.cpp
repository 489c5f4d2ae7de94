// The fused sampler step on the CPU: at::parallel_for over samples; each sample is processed in
// chunks that stay in L1, with vectorizable `omp simd` loops (the increment drawn by
// fill_draws, the update, the three per-sample sums, the Hutchinson dot products, the next
// probes). Sums inside a chunk are float32, across chunks float64.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>

#include "diffaccel/philox.h"
#include "diffaccel/step.h"
#include "draw_loop.h"
#include "step_kernels.h"

namespace diffaccel {
namespace cpu {

namespace {
constexpr int64_t kChunk = 512;

// One chunk of draws. Kept out of line: inlined into step_sample's probe loop, g++ left the
// Philox loop scalar (2.5x slower than the noise op); as its own function it vectorizes.
template <typename T>
__attribute__((noinline)) void draw_chunk(int32_t dist, uint64_t seed, uint64_t base, int64_t n,
                                          T* out) {
  fill_draws(dist, seed, base, n, out);
}

// Y: the y line (a.ycoef != nullptr), a separate instantiation so that the plain step's loops
// are exactly those without it.
template <typename T, bool Y>
void step_sample(const StepArgs<T>& a, int64_t b) {
  const int64_t D = a.D;
  const float* c = a.coef + b * step_coef_width(a.K);
  const bool track = step_tracks(a);
  const bool hutch = track && a.probes != nullptr && a.P > 0 && a.K > 0;
  const uint64_t seed = static_cast<uint64_t>(a.seeds[a.per_sample ? b : 0]);
  const bool has_z = a.z != nullptr || a.dist != kNoIncrement;  // else z = 0
  alignas(64) float xf[kChunk], zf[kChunk], xn[kChunk], sf[kChunk], wf[kChunk];
  alignas(64) float yf[Y ? kChunk : 1];
  const float* yc = Y ? a.ycoef + b * step_y_width(a.K) : nullptr;
  double ss = 0.0, sz = 0.0, xs = 0.0, zz = 0.0, nn = 0.0;
  double t[kMaxProbes];
  for (int p = 0; p < a.P; ++p) t[p] = 0.0;

  for (int64_t i0 = 0; i0 < D; i0 += kChunk) {
    const int n = static_cast<int>(std::min<int64_t>(kChunk, D - i0));
    const int64_t base = b * D + i0;
    // the increment
    if (a.z != nullptr) {
      const T* zp = a.z + base;
#pragma omp simd
      for (int i = 0; i < n; ++i) zf[i] = static_cast<float>(zp[i]);
    } else if (a.dist != kNoIncrement) {
      draw_chunk(a.dist, seed, step_noise_position(a.offset, a.per_sample, b, D, i0), n, zf);
    }
    // x_new and s
    const T* xp = a.x + base;
    if (has_z) {
#pragma omp simd
      for (int i = 0; i < n; ++i) {
        xf[i] = static_cast<float>(xp[i]);
        step_init(c, xf[i], zf[i], xn[i], sf[i]);
      }
    } else {
#pragma omp simd
      for (int i = 0; i < n; ++i) {
        xf[i] = static_cast<float>(xp[i]);
        step_init(c, xf[i], 0.0f, xn[i], sf[i]);
      }
    }
    if constexpr (Y) {  // the y line rides on the same reads of x and the model outputs
#pragma omp simd
      for (int i = 0; i < n; ++i) yf[i] = step_y_init(yc, xf[i]);
    }
    for (int k = 0; k < a.K; ++k) {
      const T* mp = a.models[k] + base;
      if constexpr (Y) {
#pragma omp simd
        for (int i = 0; i < n; ++i) {
          const float m = static_cast<float>(mp[i]);
          step_add_model(c, k, m, xn[i], sf[i]);
          step_y_add_model(yc, k, m, yf[i]);
        }
      } else {
#pragma omp simd
        for (int i = 0; i < n; ++i) step_add_model(c, k, static_cast<float>(mp[i]), xn[i], sf[i]);
      }
    }
    if constexpr (Y) {
      const float clip = a.clip;
#pragma omp simd
      for (int i = 0; i < n; ++i) step_y_finish(yc, clip, yf[i], xn[i], sf[i]);
      if (a.y_out != nullptr) {
        T* yp = a.y_out + base;
#pragma omp simd
        for (int i = 0; i < n; ++i) yp[i] = static_cast<T>(yf[i]);
      }
      if (track) {
        float czz = 0.0f, cnn = 0.0f;
#pragma omp simd reduction(+ : cnn)
        for (int i = 0; i < n; ++i) cnn += xn[i] * xn[i];
        if (has_z) {
#pragma omp simd reduction(+ : czz)
          for (int i = 0; i < n; ++i) czz += zf[i] * zf[i];
        }
        zz += czz;
        nn += cnn;
      }
    }
    if (track) {
      float css = 0.0f, csz = 0.0f, cxs = 0.0f;
#pragma omp simd reduction(+ : css, cxs)
      for (int i = 0; i < n; ++i) {
        css += sf[i] * sf[i];
        cxs += xf[i] * sf[i];
      }
      if (has_z) {
#pragma omp simd reduction(+ : csz)
        for (int i = 0; i < n; ++i) csz += sf[i] * zf[i];
      }
      ss += css;
      sz += csz;
      xs += cxs;
    }
    T* op = a.out + base;
#pragma omp simd
    for (int i = 0; i < n; ++i) op[i] = static_cast<T>(xn[i]);
    // Hutchinson: t_p += sum_i v_{p,i} sum_k cw_k w_{k,p,i}
    if (hutch) {
      for (int p = 0; p < a.P; ++p) {
        const int64_t pbase = (static_cast<int64_t>(p) * a.B + b) * D + i0;
        {
          const float cw = c[step_cw(0)];
          const T* wp = a.vjps[0] + pbase;
#pragma omp simd
          for (int i = 0; i < n; ++i) wf[i] = cw * static_cast<float>(wp[i]);
        }
        for (int k = 1; k < a.K; ++k) {
          const float cw = c[step_cw(k)];
          const T* wp = a.vjps[k] + pbase;
#pragma omp simd
          for (int i = 0; i < n; ++i) wf[i] += cw * static_cast<float>(wp[i]);
        }
        const T* vp = a.probes + pbase;
        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
        for (int i = 0; i < n; ++i) acc += static_cast<float>(vp[i]) * wf[i];
        t[p] += acc;
      }
    }
    // the next step's probes
    for (int p = 0; p < a.P_out; ++p) {
      T* po = a.probes_out + (static_cast<int64_t>(p) * a.B + b) * D + i0;
      draw_chunk(a.probe_dist, seed,
                 step_probe_position(a.probe_offset, a.per_sample, b, a.P_out, D, p, i0), n, po);
    }
  }
  if (track) {
    double var = 0.0;
    double inc = step_logp_increment(c, ss, sz, xs, t, hutch ? a.P : 0, var);
    if constexpr (Y) inc += step_y_logp(yc, zz, nn);
    step_accumulate(a, b, inc, var);
  }
}

}  // namespace

template <typename T>
void sample_step(const StepArgs<T>& args) {
  at::parallel_for(0, args.B, 1, [&](int64_t begin, int64_t end) {
    if (args.ycoef != nullptr) {
      for (int64_t b = begin; b < end; ++b) step_sample<T, true>(args, b);
    } else {
      for (int64_t b = begin; b < end; ++b) step_sample<T, false>(args, b);
    }
  });
}

template void sample_step<float>(const StepArgs<float>&);
template void sample_step<c10::Half>(const StepArgs<c10::Half>&);
template void sample_step<c10::BFloat16>(const StepArgs<c10::BFloat16>&);

}  // namespace cpu
}  // namespace diffaccel
