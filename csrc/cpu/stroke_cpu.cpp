// Stroke operator and fused stroke noising on the CPU, one (b, c) plane at a time: the plane
// (and, for noising, its freshly drawn noise) stays in cache while the block means of every
// scale are taken and the outputs written, so x and x0 are read from memory once.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../instantiate.h"
#include "stroke_kernels.h"
#include "diffaccel/philox.h"
#include "diffaccel/stroke.h"
#include "draw_loop.h"

namespace diffaccel {
namespace cpu {

namespace {

// Block grid of every scale on an H x W plane. Block means of scale j live at
// means[off[j] + I * wk[j] + J]; a scale that is a multiple of the one before it is summed from
// that scale's block sums instead of from the plane.
struct Grid {
  int J;
  int64_t H, W, k[kMaxScales], hk[kMaxScales], wk[kMaxScales], off[kMaxScales], total;
  bool from_previous[kMaxScales];
  std::vector<float> count;      // [total] elements per block
  Grid(const int64_t* scales, int J_, int64_t H_, int64_t W_) : J(J_), H(H_), W(W_), total(0) {
    for (int j = 0; j < J; ++j) {
      k[j] = scales[j];
      hk[j] = num_blocks(H, k[j]);
      wk[j] = num_blocks(W, k[j]);
      off[j] = total;
      total += hk[j] * wk[j];
      from_previous[j] = j > 0 && k[j] % k[j - 1] == 0;
    }
    count.resize(total);
    for (int j = 0; j < J; ++j) {
      for (int64_t I = 0; I < hk[j]; ++I)
        for (int64_t Jb = 0; Jb < wk[j]; ++Jb)
          count[off[j] + I * wk[j] + Jb] =
              static_cast<float>(block_extent(H, k[j], I) * block_extent(W, k[j], Jb));
    }
  }
};

// Scratch of one worker: one row of column sums / accumulators per use.
struct Scratch {
  std::vector<float> cols, row_a, row_b;
  explicit Scratch(int64_t W) : cols(W), row_a(W), row_b(W) {}
};

// Block sums of scale j straight from the plane: rows summed first (vector adds), then each
// block's columns.
template <typename T>
void sums_from_plane(const T* p, const Grid& g, int j, float* cols, float* sums) {
  const int64_t k = g.k[j], W = g.W;
  for (int64_t I = 0; I < g.hk[j]; ++I) {
    std::fill(cols, cols + W, 0.0f);
    for (int64_t r = I * k; r < I * k + block_extent(g.H, k, I); ++r) {
      const T* row = p + r * W;
#pragma omp simd
      for (int64_t c = 0; c < W; ++c) cols[c] += static_cast<float>(row[c]);
    }
    float* s = sums + g.off[j] + I * g.wk[j];
    for (int64_t Jb = 0; Jb < g.wk[j]; ++Jb) {
      float acc = 0.0f;
      for (int64_t c = Jb * k; c < Jb * k + block_extent(W, k, Jb); ++c) acc += cols[c];
      s[Jb] = acc;
    }
  }
}

// Block sums of scale j from those of scale j - 1 (k_j a multiple of k_{j-1}): r x r blocks of
// scale j - 1 each, fewer at the border (block_extent over the coarser grid).
void sums_from_previous(const Grid& g, int j, float* sums) {
  const int64_t r = g.k[j] / g.k[j - 1], ph = g.hk[j - 1], pw = g.wk[j - 1];
  const float* prev = sums + g.off[j - 1];
  float* s = sums + g.off[j];
  for (int64_t I = 0; I < g.hk[j]; ++I)
    for (int64_t Jb = 0; Jb < g.wk[j]; ++Jb) {
      float acc = 0.0f;
      for (int64_t i = I * r; i < I * r + block_extent(ph, r, I); ++i)
        for (int64_t q = Jb * r; q < Jb * r + block_extent(pw, r, Jb); ++q) acc += prev[i * pw + q];
      s[I * g.wk[j] + Jb] = acc;
    }
}

// Block means of one plane p[H, W] at every scale.
template <typename T>
void block_means(const T* p, const Grid& g, Scratch& sc, float* means) {
  for (int j = 0; j < g.J; ++j) {
    if (g.from_previous[j])
      sums_from_previous(g, j, means);
    else
      sums_from_plane(p, g, j, sc.cols.data(), means);
  }
  const float* n = g.count.data();
#pragma omp simd
  for (int64_t q = 0; q < g.total; ++q) means[q] /= n[q];
}

float keep_weight(const float* w, int J) {
  float s = 0.0f;
  for (int j = 0; j < J; ++j) s += w[j];
  return 1.0f - s;
}

// comb[c] = sum_j w_j (S_{k_j} p)[r, c]: the block-mean part of row r of A_w p. It only changes
// where r crosses a block boundary of some scale, so callers rebuild it there only.
void weighted_means_row(int64_t r, const Grid& g, const float* means, const float* w, float* comb) {
  std::fill(comb, comb + g.W, 0.0f);
  for (int j = 0; j < g.J; ++j) {
    const float* m = means + g.off[j] + (r / g.k[j]) * g.wk[j];
    const float wj = w[j];
    const int64_t k = g.k[j];
    for (int64_t Jb = 0; Jb < g.wk[j]; ++Jb) {
      const float v = wj * m[Jb];
      float* cb = comb + Jb * k;
      const int64_t e = block_extent(g.W, k, Jb);
      for (int64_t c = 0; c < e; ++c) cb[c] += v;
    }
  }
}

bool starts_block_row(int64_t r, const Grid& g) {
  for (int j = 0; j < g.J; ++j)
    if (r % g.k[j] == 0) return true;
  return false;
}

// y = A_w p for one plane, given the block means of p.
template <typename T>
void blur_plane(const T* p, const Grid& g, const float* means, const float* w, Scratch& sc, T* y) {
  const float keep = keep_weight(w, g.J);
  float* comb = sc.row_a.data();
  for (int64_t r = 0; r < g.H; ++r) {
    if (starts_block_row(r, g)) weighted_means_row(r, g, means, w, comb);
    const T* pr = p + r * g.W;
    T* yr = y + r * g.W;
#pragma omp simd
    for (int64_t c = 0; c < g.W; ++c) yr[c] = static_cast<T>(keep * static_cast<float>(pr[c]) + comb[c]);
  }
}

}  // namespace

template <typename T>
void stroke_blur(const T* x, const float* w, const int64_t* k, int J, int64_t B, int64_t C,
                 int64_t H, int64_t W, T* y) {
  const Grid g(k, J, H, W);
  const int64_t HW = H * W;
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> means(g.total);
    Scratch sc(W);
    for (int64_t plane = begin; plane < end; ++plane) {
      block_means(x + plane * HW, g, sc, means.data());
      blur_plane(x + plane * HW, g, means.data(), w + (plane / C) * J, sc, y + plane * HW);
    }
  });
}

template <typename T>
void stroke_blur_backward(const T* gr, const T* x, const float* w, const int64_t* k, int J,
                          int64_t B, int64_t C, int64_t H, int64_t W, T* grad_x, float* grad_w) {
  const Grid g(k, J, H, W);
  const int64_t HW = H * W;
  // Per-plane partial sums of grad_w, reduced over channels afterwards (no races).
  std::vector<double> partial(B * C * J);
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> mx(g.total), mg(g.total);
    Scratch sc(W);
    for (int64_t plane = begin; plane < end; ++plane) {
      const T* xp = x + plane * HW;
      const T* gp = gr + plane * HW;
      block_means(xp, g, sc, mx.data());
      block_means(gp, g, sc, mg.data());
      blur_plane(gp, g, mg.data(), w + (plane / C) * J, sc, grad_x + plane * HW);
      // <S_k x - x, g> = sum over blocks of n_blk * mean_x * mean_g  -  <x, g>
      double xg = 0.0;
      for (int64_t i = 0; i < HW; ++i) xg += double(static_cast<float>(xp[i])) * static_cast<float>(gp[i]);
      for (int j = 0; j < J; ++j) {
        double s = 0.0;
        for (int64_t I = 0; I < g.hk[j]; ++I)
          for (int64_t Jb = 0; Jb < g.wk[j]; ++Jb) {
            const int64_t q = g.off[j] + I * g.wk[j] + Jb;
            s += double(g.count[q]) * mx[q] * mg[q];
          }
        partial[plane * J + j] = s - xg;
      }
    }
  });
  for (int64_t b = 0; b < B; ++b)
    for (int j = 0; j < J; ++j) {
      double s = 0.0;
      for (int64_t c = 0; c < C; ++c) s += partial[(b * C + c) * J + j];
      grad_w[b * J + j] = static_cast<float>(s);
    }
}

template <typename T>
void stroke_noise(const T* x0, const float* alpha, const float* sigma, const float* wx,
                  const float* we, const int64_t* k, int J, int64_t B, int64_t C, int64_t H,
                  int64_t W, const int64_t* seeds, bool per_sample, uint64_t offset, int32_t dist,
                  int32_t target, T* xt, T* tgt) {
  const Grid g(k, J, H, W);
  const int64_t HW = H * W, D = C * HW;
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> eps(HW), mx(g.total), me(g.total);
    Scratch sc(W);
    float *cx = sc.row_a.data(), *ce = sc.row_b.data();
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t b = plane / C, c = plane - b * C;
      const uint64_t seed = static_cast<uint64_t>(seeds[per_sample ? b : 0]);
      const uint64_t base = offset + static_cast<uint64_t>((per_sample ? 0 : b * D) + c * HW);
      fill_draws(dist, seed, base, HW, eps.data());  // the plane's noise, kept in cache
      const T* xp = x0 + plane * HW;
      block_means(xp, g, sc, mx.data());
      block_means(eps.data(), g, sc, me.data());
      const float a = alpha[b], s = sigma[b];
      const float keep_x = keep_weight(wx + b * J, J), keep_e = keep_weight(we + b * J, J);
      for (int64_t r = 0; r < H; ++r) {
        if (starts_block_row(r, g)) {
          weighted_means_row(r, g, mx.data(), wx + b * J, cx);
          weighted_means_row(r, g, me.data(), we + b * J, ce);
        }
        const T* xr = xp + r * W;
        const float* er = eps.data() + r * W;
        T* xtr = xt + plane * HW + r * W;
        T* tr = tgt + plane * HW + r * W;
#pragma omp simd
        for (int64_t col = 0; col < W; ++col) {
          float o_xt, o_t;
          stroke_noise_outputs(keep_x * static_cast<float>(xr[col]) + cx[col],
                               keep_e * er[col] + ce[col], a, s, target, o_xt, o_t);
          xtr[col] = static_cast<T>(o_xt);
          tr[col] = static_cast<T>(o_t);
        }
      }
    }
  });
}

#define DA_INSTANTIATE(T)                                                                        \
  template void stroke_blur<T>(const T*, const float*, const int64_t*, int, int64_t, int64_t,   \
                               int64_t, int64_t, T*);                                            \
  template void stroke_blur_backward<T>(const T*, const T*, const float*, const int64_t*, int,  \
                                        int64_t, int64_t, int64_t, int64_t, T*, float*);         \
  template void stroke_noise<T>(const T*, const float*, const float*, const float*,             \
                                const float*, const int64_t*, int, int64_t, int64_t, int64_t,    \
                                int64_t, const int64_t*, bool, uint64_t, int32_t, int32_t, T*, T*);
DA_FOR_EACH_FLOAT(DA_INSTANTIATE)
#undef DA_INSTANTIATE

}  // namespace cpu
}  // namespace diffaccel
