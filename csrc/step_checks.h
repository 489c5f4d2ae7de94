// Argument checks of the fused sampler step (diffaccel::sample_step / sample_step_out), the
// raw-pointer StepArgs built from checked tensors, and the two ops' entry points (StepOps), shared
// by the CPU and CUDA registrations (csrc/step_ops.cpp, csrc/cuda/step_ops_cuda.cpp).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "checks.h"
#include "diffaccel/step.h"

namespace diffaccel {

inline void check_step_accumulator(const at::Tensor& t, const at::Tensor& x, const char* name) {
  if (t.numel() == 0) return;
  check_same_device(x, t, name);
  TORCH_CHECK((t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble) && t.dim() == 1 &&
                  t.size(0) == x.size(0) && t.is_contiguous(),
              name, ": expected an empty tensor or a contiguous float32/float64 tensor of shape (",
              x.size(0), "), got ", t.scalar_type(), " ", t.sizes());
}

inline void check_like_x(const at::Tensor& t, const at::Tensor& x, const char* name) {
  check_same_device(x, t, name);
  TORCH_CHECK(t.sizes() == x.sizes() && t.scalar_type() == x.scalar_type(), name,
              ": expected the shape and dtype of x ", x.sizes(), " ", x.scalar_type(), ", got ",
              t.sizes(), " ", t.scalar_type());
}

// [P, *x.shape] with x's dtype; returns P.
inline int64_t check_stack_like_x(const at::Tensor& t, const at::Tensor& x, const char* name) {
  check_same_device(x, t, name);
  TORCH_CHECK(t.dim() == x.dim() + 1 && t.sizes().slice(1) == x.sizes() &&
                  t.scalar_type() == x.scalar_type(),
              name, ": expected shape (P, ", x.sizes(), ") and dtype ", x.scalar_type(), ", got ",
              t.sizes(), " ", t.scalar_type());
  TORCH_CHECK(t.size(0) <= kMaxProbes, name, ": expected at most ", kMaxProbes, " probes, got ",
              t.size(0));
  return t.size(0);
}

struct StepInputs {
  std::vector<at::Tensor> models, vjps;
  at::Tensor coef, seeds;
  std::optional<at::Tensor> z, probes, ycoef;
  bool per_sample = false;
  int64_t P = 0, P_out = 0;
};

// Checks every argument; returns contiguous copies of the inputs that are only read.
inline StepInputs check_sample_step(const at::Tensor& x, const at::Tensor& out,
                                    const at::Tensor& logp, const at::Tensor& logp_var,
                                    at::TensorList models, const at::Tensor& coef,
                                    const std::optional<at::Tensor>& z, const at::Tensor& seeds,
                                    int64_t offset, int64_t dist,
                                    const std::optional<at::Tensor>& probes, at::TensorList vjps,
                                    const at::Tensor& probes_out, int64_t probe_offset,
                                    int64_t probe_dist, const std::optional<at::Tensor>& ycoef,
                                    const at::Tensor& y_out, double clip) {
  TORCH_CHECK(x.dim() >= 1, "x: expected a (B, *S) tensor, got a 0-d tensor");
  check_float_input(x, "x");
  check_like_x(out, x, "out");
  TORCH_CHECK(out.is_contiguous(), "out: expected a contiguous tensor (it is written in place)");
  check_step_accumulator(logp, x, "logp");
  check_step_accumulator(logp_var, x, "logp_var");
  TORCH_CHECK(logp_var.numel() == 0 || logp.numel() != 0, "logp_var: needs logp");
  const int64_t K = static_cast<int64_t>(models.size());
  TORCH_CHECK(K <= kMaxStepModels, "models: expected at most ", kMaxStepModels,
              " model outputs, got ", K);
  StepInputs in;
  for (const auto& m : models) {
    check_like_x(m, x, "models");
    in.models.push_back(m.contiguous());
  }
  check_same_device(x, coef, "coef");
  TORCH_CHECK(coef.scalar_type() == at::kFloat && coef.dim() == 2 && coef.size(0) == x.size(0) &&
                  coef.size(1) == step_coef_width(static_cast<int>(K)),
              "coef: expected a float32 tensor of shape (", x.size(0), ", ",
              step_coef_width(static_cast<int>(K)), "), got ", coef.scalar_type(), " ",
              coef.sizes());
  in.coef = coef.contiguous();
  if (z.has_value()) {
    check_like_x(*z, x, "z");
    in.z = z->contiguous();
  }
  check_same_device(x, seeds, "seed");
  in.per_sample = check_seeds(seeds, x.size(0));
  in.seeds = seeds.contiguous();
  check_offset(offset);
  check_offset(probe_offset);
  TORCH_CHECK(dist == kNoIncrement || (dist >= kNormal && dist <= kRademacher),
              "dist: unknown increment law code ", dist);
  TORCH_CHECK(probe_dist >= kNormal && probe_dist <= kRademacher,
              "probe_dist: unknown law code ", probe_dist);
  if (probes.has_value()) {
    in.P = check_stack_like_x(*probes, x, "probes");
    in.probes = probes->contiguous();
    TORCH_CHECK(static_cast<int64_t>(vjps.size()) == K, "vjps: expected ", K,
                " tensors (one per model output), got ", vjps.size());
    for (const auto& w : vjps) {
      TORCH_CHECK(check_stack_like_x(w, x, "vjps") == in.P, "vjps: expected ", in.P, " probes");
      in.vjps.push_back(w.contiguous());
    }
  } else {
    TORCH_CHECK(vjps.empty(), "vjps: given without probes");
  }
  if (probes_out.numel() != 0) {
    in.P_out = check_stack_like_x(probes_out, x, "probes_out");
    TORCH_CHECK(probes_out.is_contiguous(), "probes_out: expected a contiguous tensor");
    TORCH_CHECK(!in.probes.has_value() || !probes_out.is_same(*probes),
                "probes_out: must not be the probes tensor being read");
  }
  // the y line (all optional): ycoef [B, step_y_width(K)] float32, y_out like x or empty,
  // clip >= 0
  // finiteness from the bits: this file is compiled with -ffast-math, where std::isfinite folds
  uint64_t clip_bits;
  std::memcpy(&clip_bits, &clip, sizeof(clip_bits));
  const bool clip_finite = (clip_bits & 0x7ff0000000000000ull) != 0x7ff0000000000000ull;
  TORCH_CHECK(clip_finite && clip >= 0.0,
              "clip: expected a finite value >= 0 (0: no clamp), got ", clip);
  if (ycoef.has_value()) {
    check_same_device(x, *ycoef, "ycoef");
    TORCH_CHECK(ycoef->scalar_type() == at::kFloat && ycoef->dim() == 2 &&
                    ycoef->size(0) == x.size(0) && ycoef->size(1) == step_y_width(static_cast<int>(K)),
                "ycoef: expected a float32 tensor of shape (", x.size(0), ", ",
                step_y_width(static_cast<int>(K)), "), got ", ycoef->scalar_type(), " ",
                ycoef->sizes());
    in.ycoef = ycoef->contiguous();
  }
  if (y_out.numel() != 0) {
    TORCH_CHECK(ycoef.has_value(), "y_out: given without ycoef");
    check_like_x(y_out, x, "y_out");
    TORCH_CHECK(y_out.is_contiguous(), "y_out: expected a contiguous tensor (it is written in place)");
    TORCH_CHECK(y_out.data_ptr() != x.data_ptr() && y_out.data_ptr() != out.data_ptr(),
                "y_out: must not be x or out");
  }
  return in;
}

template <typename T>
StepArgs<T> make_step_args(const at::Tensor& x, const at::Tensor& out, const at::Tensor& logp,
                           const at::Tensor& logp_var, const StepInputs& in, int64_t offset,
                           int64_t dist, const at::Tensor& probes_out, int64_t probe_offset,
                           int64_t probe_dist, const at::Tensor& y_out, double clip) {
  StepArgs<T> a{};
  a.x = x.data_ptr<T>();
  a.out = out.data_ptr<T>();
  a.B = x.size(0);
  a.D = a.B == 0 ? 0 : x.numel() / a.B;
  a.K = static_cast<int>(in.models.size());
  for (int k = 0; k < a.K; ++k) a.models[k] = in.models[k].data_ptr<T>();
  a.coef = in.coef.data_ptr<float>();
  a.z = in.z.has_value() ? in.z->data_ptr<T>() : nullptr;
  a.seeds = in.seeds.data_ptr<int64_t>();
  a.per_sample = in.per_sample;
  a.offset = static_cast<uint64_t>(offset);
  a.dist = in.z.has_value() ? kNoIncrement : static_cast<int32_t>(dist);
  a.P = static_cast<int>(in.P);
  a.probes = in.probes.has_value() && in.P > 0 ? in.probes->data_ptr<T>() : nullptr;
  for (int k = 0; k < static_cast<int>(in.vjps.size()); ++k) a.vjps[k] = in.vjps[k].data_ptr<T>();
  a.P_out = static_cast<int>(in.P_out);
  a.probes_out = in.P_out > 0 ? probes_out.data_ptr<T>() : nullptr;
  a.probe_offset = static_cast<uint64_t>(probe_offset);
  a.probe_dist = static_cast<int32_t>(probe_dist);
  if (logp.numel()) {
    if (logp.scalar_type() == at::kDouble) a.logp_d = logp.data_ptr<double>();
    else a.logp_f = logp.data_ptr<float>();
  }
  if (logp_var.numel()) {
    if (logp_var.scalar_type() == at::kDouble) a.var_d = logp_var.data_ptr<double>();
    else a.var_f = logp_var.data_ptr<float>();
  }
  a.ycoef = in.ycoef.has_value() ? in.ycoef->data_ptr<float>() : nullptr;
  a.y_out = y_out.numel() != 0 ? y_out.data_ptr<T>() : nullptr;
  a.clip = static_cast<float>(clip);
  return a;
}

// One checked step call: x contiguous, out (x itself for sample_step), the accumulators and
// outputs, the checked inputs and the scalars.
struct StepCall {
  at::Tensor x, out, logp, logp_var, probes_out, y_out;
  StepInputs in;
  int64_t offset, dist, probe_offset, probe_dist;
  double clip;

  template <typename T>
  StepArgs<T> args() const {
    return make_step_args<T>(x, out, logp, logp_var, in, offset, dist, probes_out, probe_offset,
                             probe_dist, y_out, clip);
  }
};

// The entry points of the two schemas around one backend's runner: checks every argument, then
// calls Run(call) unless the batch is empty (D = 0 still runs it: logp += c0, as the reference).
template <void (*Run)(const StepCall&)>
struct StepOps {
  static void call(const at::Tensor& x, const at::Tensor& out, const at::Tensor& logp,
                   const at::Tensor& logp_var, at::TensorList models, const at::Tensor& coef,
                   const std::optional<at::Tensor>& z, const at::Tensor& seeds, int64_t offset,
                   int64_t dist, const std::optional<at::Tensor>& probes, at::TensorList vjps,
                   const at::Tensor& probes_out, int64_t probe_offset, int64_t probe_dist,
                   const std::optional<at::Tensor>& ycoef, const at::Tensor& y_out, double clip) {
    TORCH_CHECK(x.is_contiguous(), "x: expected a contiguous tensor");
    StepInputs in = check_sample_step(x, out, logp, logp_var, models, coef, z, seeds, offset, dist,
                                      probes, vjps, probes_out, probe_offset, probe_dist, ycoef,
                                      y_out, clip);
    if (x.size(0) == 0) return;
    Run(StepCall{x, out, logp, logp_var, probes_out, y_out, std::move(in), offset, dist,
                 probe_offset, probe_dist, clip});
  }

  // sample_step: x updated in place.
  static void sample_step(const at::Tensor& x, const at::Tensor& logp, const at::Tensor& logp_var,
                          at::TensorList models, const at::Tensor& coef,
                          const std::optional<at::Tensor>& z, const at::Tensor& seeds,
                          int64_t offset, int64_t dist, const std::optional<at::Tensor>& probes,
                          at::TensorList vjps, const at::Tensor& probes_out, int64_t probe_offset,
                          int64_t probe_dist, const std::optional<at::Tensor>& ycoef,
                          const at::Tensor& y_out, double clip) {
    call(x, x, logp, logp_var, models, coef, z, seeds, offset, dist, probes, vjps, probes_out,
         probe_offset, probe_dist, ycoef, y_out, clip);
  }

  // sample_step_out: the new x written to out.
  static void sample_step_out(const at::Tensor& x, const at::Tensor& out, const at::Tensor& logp,
                              const at::Tensor& logp_var, at::TensorList models,
                              const at::Tensor& coef, const std::optional<at::Tensor>& z,
                              const at::Tensor& seeds, int64_t offset, int64_t dist,
                              const std::optional<at::Tensor>& probes, at::TensorList vjps,
                              const at::Tensor& probes_out, int64_t probe_offset,
                              int64_t probe_dist, const std::optional<at::Tensor>& ycoef,
                              const at::Tensor& y_out, double clip) {
    call(x.contiguous(), out, logp, logp_var, models, coef, z, seeds, offset, dist, probes, vjps,
         probes_out, probe_offset, probe_dist, ycoef, y_out, clip);
  }
};

}  // namespace diffaccel
