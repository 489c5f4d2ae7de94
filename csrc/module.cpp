// The Python module diffaccel._C: how the extension was built, the launch shapes of the CUDA
// kernels, and the C++ values of the codes, limits and table layouts (diffaccel._C.layout, which
// tests/build/test_layout.py compares with diffaccel/layout.py). The ops themselves are
// registered with torch by the {noise,stroke,step,vrg}_ops.cpp files (CPU) and
// cuda/*_ops_cuda.cpp (CUDA).
#include <torch/extension.h>

#include <utility>
#include <vector>

#include "diffaccel/common.h"
#include "diffaccel/launch_grid.h"
#include "diffaccel/step.h"
#include "diffaccel/vrg.h"

#ifndef DIFFACCEL_CUDA_ARCHS
#define DIFFACCEL_CUDA_ARCHS ""
#endif

namespace {

namespace py = pybind11;

// f(0), ..., f(n - 1): the per-model column formulas, as the values they take.
template <typename F>
py::tuple table(int n, F f) {
  py::list out;
  for (int k = 0; k < n; ++k) out.append(f(k));
  return py::tuple(out);
}

// Keys are the names of diffaccel/layout.py; a tuple holds a formula's values at k = 0, 1, ...
// (model k < kMaxStepModels for a column, K <= kMaxStepModels for a width).
py::dict layout() {
  using namespace diffaccel;
  const std::pair<const char*, int> values[] = {
      // codes: increment laws, no increment, stroke-noise targets, VRG solvers
      {"NORMAL", kNormal}, {"LAPLACE", kLaplace}, {"UNIFORM", kUniform}, {"RADEMACHER", kRademacher},
      {"NO_INCREMENT", kNoIncrement},
      {"TARGET_EPS", kEps}, {"TARGET_X0", kX0}, {"TARGET_V", kV},
      {"VRG_DDIM", kDdim}, {"VRG_DPM2M", kDpm2m},
      // limits
      {"MAX_SCALES", kMaxScales}, {"MAX_MODELS", kMaxStepModels}, {"MAX_PROBES", kMaxProbes},
      // the fused step's coef columns, then the y line's
      {"COEF_AX", kAx}, {"COEF_AZ", kAz}, {"COEF_SX", kSx},
      {"COEF_C0", kC0}, {"COEF_C1", kC1}, {"COEF_C2", kC2}, {"COEF_C3", kC3},
      {"COEF_HEAD", kStepHead}, {"COEF_PER_MODEL", kStepPerModel},
      {"Y_BX", kYBx}, {"Y_AY", kYAy}, {"Y_SY", kYSy}, {"Y_CZ", kYCz}, {"Y_CN", kYCn},
      {"Y_HEAD", kYHead},
  };
  py::dict d;
  for (const auto& [name, value] : values) d[name] = value;
  constexpr int K = kMaxStepModels;
  d["coef_am"] = table(K, step_am);
  d["coef_sm"] = table(K, step_sm);
  d["coef_cw"] = table(K, step_cw);
  d["coef_width"] = table(K + 1, step_coef_width);
  d["y_bm"] = table(K, step_y_bm);
  d["y_width"] = table(K + 1, step_y_width);
  return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "diffaccel compiled kernels (registered as torch.ops.diffaccel.*)";
#ifdef DIFFACCEL_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("cuda_archs") = DIFFACCEL_CUDA_ARCHS;
  m.attr("layout") = layout();
  // Launch shapes of the CUDA kernels for a given SM count (csrc/include/diffaccel/launch_grid.h),
  // so tests can check them for any GPU without one.
  m.def("launch_split_chunk", &diffaccel::grid::split_chunk, "elements per block of one sample",
        pybind11::arg("B"), pybind11::arg("D"), pybind11::arg("vec"), pybind11::arg("sm_count"));
  m.def("launch_splits", &diffaccel::grid::splits, pybind11::arg("D"), pybind11::arg("chunk"));
  m.def("launch_vec_width", &diffaccel::grid::vec_width, pybind11::arg("elem_bytes"));
  m.def("launch_stroke_tile", [](std::vector<int64_t> scales) {
    return diffaccel::grid::stroke_tile(scales.data(), static_cast<int>(scales.size()));
  }, "tile side of the one-pass stroke kernels (0: general path)", pybind11::arg("scales"));
  m.def("launch_stroke_tile_blocks", &diffaccel::grid::stroke_tile_blocks);
  m.def("launch_stroke_means", [](int64_t BC, int64_t H, int64_t W, int64_t total) {
    const auto p = diffaccel::grid::stroke_means_launch(BC, H, W, total);
    return pybind11::make_tuple(p.blocks, p.idx64);
  }, "(blocks, idx64) of the general stroke path's block-mean kernels (one warp per block mean)",
        pybind11::arg("BC"), pybind11::arg("H"), pybind11::arg("W"), pybind11::arg("total"));
  m.attr("launch_threads") = diffaccel::grid::kThreads;
  m.attr("launch_blocks_per_sm") = diffaccel::grid::kBlocksPerSm;
}
