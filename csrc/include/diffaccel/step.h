// The fused sampler step, docs/math.md Section 3.1: one formula per line, shared by the CPU loops
// (csrc/cpu/step_cpu.cpp) and the CUDA kernels (csrc/cuda/step.cu). The PyTorch contract is
// diffaccel/reference/step.py.
//
// Per sample b with coefficients c = coef[b] (7 + 3K floats):
//   x_new     = ax x + az z + sum_k am_k M_k
//   s         = sx x + sum_k sm_k M_k                        (score at the old x)
//   t_p       = sum_i v_{p,i} sum_k cw_k w_{k,p,i}            (Hutchinson, probe p)
//   logp     += c0 + c1 |s|^2 + c2 (s . z) + c3 (x . s) + mean_p t_p
//   logp_var += sum_p (t_p - mean)^2 / (P (P - 1))            (P >= 2)
//
// The optional y line (ycoef = yc[b], 5 + K floats: bx, ay, sy, cz, cn, bm_0 .. bm_{K-1}), e.g.
// a sampler's predicted x0, clamped and returned beside the step in the same pass:
//   y      = bx x + sum_k bm_k M_k,   yc = clamp(y, -clip, clip) (clip > 0) else y
//   x_new += ay yc,   s += sy yc,   logp += cz |z|^2 + cn |x_new|^2,   y_out = yc
#pragma once
#include <cstdint>
#include <cstring>

#include "diffaccel/common.h"

namespace diffaccel {

constexpr int kStepHead = 7;      // ax, az, sx, c0, c1, c2, c3
constexpr int kStepPerModel = 3;  // am_k, sm_k, cw_k
constexpr int kMaxStepModels = 8;
constexpr int kMaxProbes = 64;
constexpr int32_t kNoIncrement = -1;  // dist code: no increment (z = 0)

enum StepCoef : int { kAx = 0, kAz = 1, kSx = 2, kC0 = 3, kC1 = 4, kC2 = 5, kC3 = 6 };

constexpr int kYHead = 5;  // bx, ay, sy, cz, cn (then bm_k)
enum StepYCoef : int { kYBx = 0, kYAy = 1, kYSy = 2, kYCz = 3, kYCn = 4 };
DA_HOST_DEVICE int step_y_width(int K) { return kYHead + K; }
DA_HOST_DEVICE int step_y_bm(int k) { return kYHead + k; }

DA_HOST_DEVICE int step_coef_width(int K) { return kStepHead + kStepPerModel * K; }
DA_HOST_DEVICE int step_am(int k) { return kStepHead + kStepPerModel * k; }
DA_HOST_DEVICE int step_sm(int k) { return kStepHead + kStepPerModel * k + 1; }
DA_HOST_DEVICE int step_cw(int k) { return kStepHead + kStepPerModel * k + 2; }

// Stream position of the increment of element i of sample b (docs/math.md Section 1 layout).
DA_HOST_DEVICE uint64_t step_noise_position(uint64_t offset, bool per_sample, int64_t b,
                                            int64_t D, int64_t i) {
  return offset + static_cast<uint64_t>((per_sample ? 0 : b * D) + i);
}

// Stream position of next-step probe p, element i, sample b: the (B, P, D) noise layout.
DA_HOST_DEVICE uint64_t step_probe_position(uint64_t probe_offset, bool per_sample, int64_t b,
                                            int P, int64_t D, int p, int64_t i) {
  return probe_offset + static_cast<uint64_t>((per_sample ? 0 : b * P * D) + p * D + i);
}

// The deterministic part of the new x and of the score from x and z (the model terms are added
// by step_add_model).
DA_HOST_DEVICE void step_init(const float* c, float x, float z, float& xn, float& s) {
  xn = c[kAx] * x + c[kAz] * z;
  s = c[kSx] * x;
}

DA_HOST_DEVICE void step_add_model(const float* c, int k, float m, float& xn, float& s) {
  xn += c[step_am(k)] * m;
  s += c[step_sm(k)] * m;
}

// The y line: y = bx x, then y += bm_k M_k per model output, then step_y_finish.
DA_HOST_DEVICE float step_y_init(const float* yc, float x) { return yc[kYBx] * x; }

DA_HOST_DEVICE void step_y_add_model(const float* yc, int k, float m, float& y) {
  y += yc[step_y_bm(k)] * m;
}

// NaN test on the bits: the CPU build uses -ffast-math, under which y != y and std::isnan may
// fold to false.
DA_HOST_DEVICE bool step_is_nan(float v) {
  uint32_t u;
#if defined(__CUDA_ARCH__)
  u = __float_as_uint(v);
#else
  std::memcpy(&u, &v, sizeof(u));
#endif
  return (u & 0x7fffffffu) > 0x7f800000u;
}

// clamp(y, -clip, clip) for clip > 0 (clip is never NaN), as torch.clamp: NaN stays NaN, where
// fminf/fmaxf (and min/max instructions the compiler may pick) would replace it by a bound.
DA_HOST_DEVICE float step_clip(float y, float clip) {
  if (!(clip > 0.0f)) return y;
  const float c = y > clip ? clip : (y < -clip ? -clip : y);
  return step_is_nan(y) ? y : c;
}

// Clamps y (in place: it becomes yc) and adds its terms to the new x and the score.
DA_HOST_DEVICE void step_y_finish(const float* yc, float clip, float& y, float& xn, float& s) {
  y = step_clip(y, clip);
  xn += yc[kYAy] * y;
  s += yc[kYSy] * y;
}

// The y line's log-density terms from the sums |z|^2 and |x_new|^2.
DA_HOST_DEVICE double step_y_logp(const float* yc, double zz, double nn) {
  return static_cast<double>(yc[kYCz]) * zz + static_cast<double>(yc[kYCn]) * nn;
}

// The per-sample log-density increment from the three sums and the probes' estimates t[0..P).
// Returns the increment; var receives the estimate's variance (0 for P < 2).
DA_HOST_DEVICE double step_logp_increment(const float* c, double ss, double sz, double xs,
                                          const double* t, int P, double& var) {
  double inc = static_cast<double>(c[kC0]) + c[kC1] * ss + c[kC2] * sz + c[kC3] * xs;
  var = 0.0;
  if (P > 0) {
    double mean = 0.0;
    for (int p = 0; p < P; ++p) mean += t[p];
    mean /= P;
    inc += mean;
    if (P > 1) {
      double m2 = 0.0;
      for (int p = 0; p < P; ++p) m2 += (t[p] - mean) * (t[p] - mean);
      var = m2 / (static_cast<double>(P) * (P - 1));
    }
  }
  return inc;
}

// Raw-pointer arguments of one fused step (contiguous tensors; T = float, Half or BFloat16).
template <typename T>
struct StepArgs {
  const T* x;            // [B, D]
  T* out;                // [B, D] (may equal x)
  int64_t B, D;
  const T* models[kMaxStepModels];  // K x [B, D]
  int K;
  const float* coef;     // [B, 7 + 3K]
  const T* z;            // [B, D] or nullptr (then drawn, or zero when dist == kNoIncrement)
  const int64_t* seeds;  // [B] or [1]
  bool per_sample;
  uint64_t offset;
  int32_t dist;
  const T* probes;       // [P, B, D] or nullptr
  int P;
  const T* vjps[kMaxStepModels];  // K x [P, B, D]
  T* probes_out;         // [P_out, B, D] or nullptr
  int P_out;
  uint64_t probe_offset;
  int32_t probe_dist;
  float* logp_f;         // [B] accumulators: one of logp_f / logp_d, or neither (not tracked)
  double* logp_d;
  float* var_f;          // [B] variance accumulators, or neither
  double* var_d;
  const float* ycoef;    // [B, 5 + K] or nullptr (no y line)
  T* y_out;              // [B, D] receives yc, or nullptr
  float clip;            // > 0: yc = clamp(y, -clip, clip); 0: yc = y
};

// Adds the increments into the caller's accumulators.
template <typename T>
DA_HOST_DEVICE void step_accumulate(const StepArgs<T>& a, int64_t b, double inc, double var) {
  if (a.logp_f) a.logp_f[b] = static_cast<float>(static_cast<double>(a.logp_f[b]) + inc);
  if (a.logp_d) a.logp_d[b] += inc;
  if (a.var_f) a.var_f[b] = static_cast<float>(static_cast<double>(a.var_f[b]) + var);
  if (a.var_d) a.var_d[b] += var;
}

template <typename T>
DA_HOST_DEVICE bool step_tracks(const StepArgs<T>& a) {
  return a.logp_f != nullptr || a.logp_d != nullptr;
}

}  // namespace diffaccel
