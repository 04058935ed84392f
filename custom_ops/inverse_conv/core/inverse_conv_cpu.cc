// CPU core: back-substitution for the causal convolution (see inverse_conv.h).
#include <algorithm>
#include <cmath>
#include <vector>

#include "inverse_conv.h"

namespace tfinvconv {

bool ParseCorner(const std::string& name, Corner* corner) {
  if (name == "top_left") *corner = Corner::kTopLeft;
  else if (name == "top_right") *corner = Corner::kTopRight;
  else if (name == "bottom_left") *corner = Corner::kBottomLeft;
  else if (name == "bottom_right") *corner = Corner::kBottomRight;
  else return false;
  return true;
}

std::string ValidateShape(const SolveShape& s) {
  if (s.batch < 0 || s.height < 0 || s.width < 0 || s.channels < 0)
    return "negative dimension";
  if (s.ksize < 1) return "kernel size must be at least 1, got " + std::to_string(s.ksize);
  if (s.ksize > kMaxKernelSize)
    return "kernel size " + std::to_string(s.ksize) + " is larger than the maximum allowed (" +
           std::to_string(kMaxKernelSize) + ")";
  if (s.channels < 1) return "the number of channels must be at least 1";
  return "";
}

template <typename T>
int64_t FindSingularChannel(const SolveShape& s, const T* kernel) {
  const int64_t c = s.channels;
  const T* centre = kernel + ((s.ksize - 1) * s.ksize + (s.ksize - 1)) * c * c;
  for (int64_t i = 0; i < c; ++i) {
    // Written so that NaN counts as singular too.
    if (!(std::abs(centre[i * c + i]) > T(0))) return i;
  }
  return -1;
}

namespace {

// One SIMD register's worth of T (GCC/Clang vector extension: AVX-512 with -march=native,
// split into narrower registers by the compiler elsewhere).
// (Spelled per type: GCC ignores vector_size on an alias template's dependent type.)
template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(64)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(64)));
};
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
constexpr int64_t kLanes = 64 / sizeof(T);
constexpr int kPixelsPerBlock = 4;  // pixels of one row accumulated together (reuses each weight)
constexpr int kMaxVecs = 4;         // output-channel vectors held in registers per pixel

template <typename T>
inline Vec<T> Load(const T* p) {
  Vec<T> v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void Store(T* p, const Vec<T>& v) {
  __builtin_memcpy(p, &v, sizeof(v));
}

// Everything the tile solves share, prepared once per call. Output channels are padded to whole
// vectors ("padded") with zero weights, so every inner loop runs on full registers.
template <typename T>
struct Plan {
  SolveShape s;
  Frame f;
  int64_t padded = 0;
  std::vector<T> weights;         // [k*k][C in][padded out]; the same-pixel tap is not used
  std::vector<T> centre_inverse;  // [C][padded]: solved pixel = accumulated row @ inverse
};

// Inverse of the masked same-pixel block M[i][o] (y_row = x_row @ M), in double precision.
// M is triangular with a nonzero diagonal, so elimination needs no pivoting.
template <typename T>
std::vector<double> TriangularInverse(const T* block, int64_t c, bool upper_mask_i_ge_o) {
  std::vector<double> m(c * c), inv(c * c, 0.0);
  for (int64_t i = 0; i < c; ++i) {
    inv[i * c + i] = 1.0;
    for (int64_t o = 0; o < c; ++o) {
      const bool kept = upper_mask_i_ge_o ? i >= o : i <= o;
      m[i * c + o] = kept ? static_cast<double>(block[i * c + o]) : 0.0;
    }
  }
  // Gauss-Jordan on [m | inv]; m is triangular so rows only ever combine in one direction.
  for (int64_t col = 0; col < c; ++col) {
    const double pivot = m[col * c + col];
    for (int64_t j = 0; j < c; ++j) {
      m[col * c + j] /= pivot;
      inv[col * c + j] /= pivot;
    }
    for (int64_t row = 0; row < c; ++row) {
      const double factor = m[row * c + col];
      if (row == col || factor == 0.0) continue;
      for (int64_t j = 0; j < c; ++j) {
        m[row * c + j] -= factor * m[col * c + j];
        inv[row * c + j] -= factor * inv[col * c + j];
      }
    }
  }
  return inv;
}

template <typename T>
Plan<T> MakePlan(const SolveShape& s, const T* kernel, Corner corner, bool adjoint) {
  Plan<T> plan;
  plan.s = s;
  plan.f = MakeFrame(s, corner, adjoint);
  const int64_t k = s.ksize, c = s.channels, lanes = kLanes<T>;
  plan.padded = (c + lanes - 1) / lanes * lanes;
  plan.weights.assign(k * k * c * plan.padded, T(0));
  // The adjoint reads K with its channel axes swapped (A^T), which also turns the same-pixel
  // block from "input <= output" into "input >= output".
  for (int64_t t = 0; t < k * k; ++t)
    for (int64_t i = 0; i < c; ++i)
      for (int64_t o = 0; o < c; ++o)
        plan.weights[(t * c + i) * plan.padded + o] =
            adjoint ? kernel[(t * c + o) * c + i] : kernel[(t * c + i) * c + o];
  std::vector<T> centre(c * c);
  for (int64_t i = 0; i < c; ++i)
    for (int64_t o = 0; o < c; ++o)
      centre[i * c + o] = plan.weights[((k * k - 1) * c + i) * plan.padded + o];
  const std::vector<double> inverse = TriangularInverse(centre.data(), c, adjoint);
  plan.centre_inverse.assign(c * plan.padded, T(0));
  for (int64_t i = 0; i < c; ++i)
    for (int64_t o = 0; o < c; ++o)
      plan.centre_inverse[i * plan.padded + o] = static_cast<T>(inverse[i * c + o]);
  return plan;
}

// acc rows of P consecutive frame pixels (h, w..w+P-1), output vectors [v0, v0+NV):
//   acc -= sum_{p in [p0,p1), q in [q0,q1), i} x(h+p-k+1, w+j+q-k+1, i) * W[p,q,i,:]
// The caller guarantees every pixel read is inside the image and already solved.
template <typename T, int P, int NV>
void AccumulateTaps(const Plan<T>& plan, const T* image, int64_t h, int64_t w, int64_t p0,
                    int64_t p1, int64_t q0, int64_t q1, int64_t v0, T* acc_rows) {
  const int64_t k = plan.s.ksize, c = plan.s.channels, padded = plan.padded;
  constexpr int64_t L = kLanes<T>;
  Vec<T> acc[P][NV];
  for (int j = 0; j < P; ++j)
    for (int v = 0; v < NV; ++v) acc[j][v] = Load(acc_rows + j * padded + (v0 + v) * L);
  for (int64_t p = p0; p < p1; ++p) {
    const T* row = image + plan.f.origin + (h + p - (k - 1)) * plan.f.row_stride;
    for (int64_t q = q0; q < q1; ++q) {
      const T* src[P];
      for (int j = 0; j < P; ++j) src[j] = row + (w + j + q - (k - 1)) * plan.f.col_stride;
      const T* wt = plan.weights.data() + (p * k + q) * c * padded + v0 * L;
      for (int64_t i = 0; i < c; ++i) {
        Vec<T> wv[NV];
        for (int v = 0; v < NV; ++v) wv[v] = Load(wt + i * padded + v * L);
        for (int j = 0; j < P; ++j) {
          const T a = src[j][i];
          for (int v = 0; v < NV; ++v) acc[j][v] -= a * wv[v];
        }
      }
    }
  }
  for (int j = 0; j < P; ++j)
    for (int v = 0; v < NV; ++v) Store(acc_rows + j * padded + (v0 + v) * L, acc[j][v]);
}

// AccumulateTaps over all output vectors, in register-sized groups.
template <typename T, int P>
void AccumulateAllVectors(const Plan<T>& plan, const T* image, int64_t h, int64_t w, int64_t p0,
                          int64_t p1, int64_t q0, int64_t q1, T* acc_rows) {
  if (p0 >= p1 || q0 >= q1) return;
  const int64_t vectors = plan.padded / kLanes<T>;
  for (int64_t v0 = 0; v0 < vectors; v0 += kMaxVecs) {
    switch (std::min<int64_t>(kMaxVecs, vectors - v0)) {
      case 1: AccumulateTaps<T, P, 1>(plan, image, h, w, p0, p1, q0, q1, v0, acc_rows); break;
      case 2: AccumulateTaps<T, P, 2>(plan, image, h, w, p0, p1, q0, q1, v0, acc_rows); break;
      case 3: AccumulateTaps<T, P, 3>(plan, image, h, w, p0, p1, q0, q1, v0, acc_rows); break;
      default: AccumulateTaps<T, P, 4>(plan, image, h, w, p0, p1, q0, q1, v0, acc_rows); break;
    }
  }
}

// Solves frame rows [h0,h1) x columns [w0,w1) of one image, row by row. Per row ("row
// blocking", math note): first everything the rows above contribute, several pixels at a time
// (independent work, like a GEMM); then, pixel by pixel, the same-row taps and the same-pixel
// triangular block, applied as a multiply by its precomputed inverse.
template <typename T>
void SolveTile(const Plan<T>& plan, const T* rhs, int64_t h0, int64_t h1, int64_t w0,
               int64_t w1, T* image) {
  const int64_t k = plan.s.ksize, c = plan.s.channels, padded = plan.padded;
  constexpr int64_t L = kLanes<T>;
  std::vector<T> acc_rows((w1 - w0) * padded, T(0));
  std::vector<T> solved(padded);
  for (int64_t h = h0; h < h1; ++h) {
    for (int64_t w = w0; w < w1; ++w) {
      const T* src = rhs + plan.f.origin + h * plan.f.row_stride + w * plan.f.col_stride;
      std::copy(src, src + c, acc_rows.data() + (w - w0) * padded);
    }
    // Rows above: taps p < k-1. Pixels near the left edge lose the taps that fall outside.
    const int64_t p0 = std::max<int64_t>(0, k - 1 - h);
    int64_t w = w0;
    for (; w < w1 && w < k - 1; ++w)
      AccumulateAllVectors<T, 1>(plan, image, h, w, p0, k - 1, k - 1 - w, k,
                                 acc_rows.data() + (w - w0) * padded);
    for (; w + kPixelsPerBlock <= w1; w += kPixelsPerBlock)
      AccumulateAllVectors<T, kPixelsPerBlock>(plan, image, h, w, p0, k - 1, 0, k,
                                               acc_rows.data() + (w - w0) * padded);
    for (; w < w1; ++w)
      AccumulateAllVectors<T, 1>(plan, image, h, w, p0, k - 1, 0, k,
                                 acc_rows.data() + (w - w0) * padded);
    // Same row, in order: taps q < k-1 of row p = k-1, then the same pixel.
    for (w = w0; w < w1; ++w) {
      T* acc = acc_rows.data() + (w - w0) * padded;
      AccumulateAllVectors<T, 1>(plan, image, h, w, k - 1, k, std::max<int64_t>(0, k - 1 - w),
                                 k - 1, acc);
      for (int64_t v = 0; v < padded; v += L) {
        Vec<T> sum = {};
        for (int64_t i = 0; i < c; ++i) sum += acc[i] * Load(plan.centre_inverse.data() + i * padded + v);
        Store(solved.data() + v, sum);
      }
      T* dst = image + plan.f.origin + h * plan.f.row_stride + w * plan.f.col_stride;
      std::copy(solved.data(), solved.data() + c, dst);
    }
  }
}

}  // namespace

template <typename T>
void CausalSolveCpu(const SolveShape& s, const T* rhs, const T* kernel, Corner corner,
                    bool adjoint, T* out, const ParallelFor& parallel_for) {
  if (s.num_pixels() == 0) return;
  const int64_t k = s.ksize, c = s.channels, image = s.height * s.width * c;
  const Plan<T> plan = MakePlan(s, kernel, corner, adjoint);

  // Parallelism: whole images when the batch alone keeps the pool busy; otherwise square tiles
  // processed as a wavefront over tile anti-diagonals (tile (r,c) depends on (r-1,c-1),
  // (r-1,c) and (r,c-1) only, because tiles are at least k-1 pixels wide).
  const int64_t tile = s.batch >= 8 ? std::max(s.height, s.width) : std::max<int64_t>(k - 1, 16);
  const int64_t tile_rows = (s.height + tile - 1) / tile, tile_cols = (s.width + tile - 1) / tile;
  // Cost hint for the thread pool, in double and clamped: it can exceed int64 for huge inputs.
  const double cost = 2.0 * k * k * c * plan.padded * std::min(tile, s.height) *
                      std::min(tile, s.width);
  const int64_t cost_per_tile = static_cast<int64_t>(std::min(cost, 1e15));
  for (int64_t d = 0; d < tile_rows + tile_cols - 1; ++d) {
    const int64_t r0 = std::max<int64_t>(0, d - tile_cols + 1), r1 = std::min(d, tile_rows - 1);
    const int64_t per_image = r1 - r0 + 1;
    parallel_for(s.batch * per_image, cost_per_tile, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / per_image, r = r0 + item % per_image, cc = d - r;
        const int64_t h0 = r * tile, w0 = cc * tile;
        SolveTile(plan, rhs + b * image, h0, std::min(h0 + tile, s.height), w0,
                  std::min(w0 + tile, s.width), out + b * image);
      }
    });
  }
}

template <typename T>
void CausalConvReference(const SolveShape& s, const T* x, const T* kernel, Corner corner, T* y) {
  const int64_t k = s.ksize, c = s.channels, image = s.height * s.width * c;
  const Frame f = MakeFrame(s, corner, /*adjoint=*/false);
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.height; ++h)
      for (int64_t w = 0; w < s.width; ++w)
        for (int64_t o = 0; o < c; ++o) {
          T sum = 0;
          for (int64_t p = 0; p < k; ++p)
            for (int64_t q = 0; q < k; ++q) {
              const int64_t hh = h + p - (k - 1), ww = w + q - (k - 1);
              if (hh < 0 || ww < 0) continue;
              const bool centre = p == k - 1 && q == k - 1;
              for (int64_t i = 0; i < c; ++i) {
                if (centre && i > o) continue;  // the mask
                sum += kernel[((p * k + q) * c + i) * c + o] *
                       x[b * image + f.origin + hh * f.row_stride + ww * f.col_stride + i];
              }
            }
          y[b * image + f.origin + h * f.row_stride + w * f.col_stride + o] = sum;
        }
}

#define TFINVCONV_INSTANTIATE_CPU(T)                                                          \
  template int64_t FindSingularChannel<T>(const SolveShape&, const T*);                       \
  template void CausalSolveCpu<T>(const SolveShape&, const T*, const T*, Corner, bool, T*,    \
                                  const ParallelFor&);                                        \
  template void CausalConvReference<T>(const SolveShape&, const T*, const T*, Corner, T*);
TFINVCONV_INSTANTIATE_CPU(float)
TFINVCONV_INSTANTIATE_CPU(double)
#undef TFINVCONV_INSTANTIATE_CPU

}  // namespace tfinvconv
