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

// acc[0..n) -= a * v[0..n): the one inner loop; contiguous so the compiler vectorises it.
template <typename T>
inline void SubScaled(int64_t n, T a, const T* __restrict v, T* __restrict acc) {
  for (int64_t j = 0; j < n; ++j) acc[j] -= a * v[j];
}

// Solves one rectangle [h0,h1) x [w0,w1) of frame pixels of one image in raster order.
// `weights` is [k*k][C (input)][C (output)]; for the adjoint it already has the channel axes
// swapped, which makes its same-pixel block upper instead of lower triangular.
template <typename T>
void SolveTile(const SolveShape& s, const Frame& f, const T* rhs, const T* weights, bool upper,
               int64_t h0, int64_t h1, int64_t w0, int64_t w1, T* out) {
  const int64_t k = s.ksize, c = s.channels, centre_tap = k * k - 1;
  const T* centre = weights + centre_tap * c * c;
  std::vector<T> acc_buffer(c);
  T* acc = acc_buffer.data();
  for (int64_t h = h0; h < h1; ++h) {
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t pixel = f.origin + h * f.row_stride + w * f.col_stride;
      std::copy(rhs + pixel, rhs + pixel + c, acc);
      // Taps other than the same pixel: everything they read is already solved.
      for (int64_t p = std::max<int64_t>(0, k - 1 - h); p < k; ++p) {
        const int64_t hh = h + p - (k - 1);
        for (int64_t q = std::max<int64_t>(0, k - 1 - w); q < k; ++q) {
          const int64_t tap = p * k + q;
          if (tap == centre_tap) continue;
          const T* src = out + f.origin + hh * f.row_stride + (w + q - (k - 1)) * f.col_stride;
          const T* wt = weights + tap * c * c;
          for (int64_t i = 0; i < c; ++i) SubScaled(c, src[i], wt + i * c, acc);
        }
      }
      // Same pixel: a C x C triangular solve.
      T* dst = out + pixel;
      if (!upper) {
        for (int64_t i = 0; i < c; ++i) {
          const T xi = acc[i] / centre[i * c + i];
          dst[i] = xi;
          SubScaled(c - i - 1, xi, centre + i * c + i + 1, acc + i + 1);
        }
      } else {
        for (int64_t i = c - 1; i >= 0; --i) {
          const T xi = acc[i] / centre[i * c + i];
          dst[i] = xi;
          SubScaled(i, xi, centre + i * c, acc);
        }
      }
    }
  }
}

}  // namespace

template <typename T>
void CausalSolveCpu(const SolveShape& s, const T* rhs, const T* kernel, Corner corner,
                    bool adjoint, T* out, const ParallelFor& parallel_for) {
  if (s.num_pixels() == 0) return;
  const int64_t k = s.ksize, c = s.channels, image = s.height * s.width * c;
  // A^T: the frame flips (MakeFrame) and K's channel axes swap.
  std::vector<T> transposed;
  const T* weights = kernel;
  if (adjoint) {
    transposed.resize(k * k * c * c);
    for (int64_t t = 0; t < k * k; ++t)
      for (int64_t i = 0; i < c; ++i)
        for (int64_t o = 0; o < c; ++o) transposed[(t * c + o) * c + i] = kernel[(t * c + i) * c + o];
    weights = transposed.data();
  }
  const Frame f = MakeFrame(s, corner, adjoint);

  // Parallelism: whole images when the batch alone keeps the pool busy; otherwise square tiles
  // processed as a wavefront over tile anti-diagonals (tile (r,c) depends on (r-1,c-1),
  // (r-1,c) and (r,c-1) only, because tiles are at least k-1 pixels wide).
  const int64_t tile = s.batch >= 8 ? std::max(s.height, s.width) : std::max<int64_t>(k - 1, 16);
  const int64_t tile_rows = (s.height + tile - 1) / tile, tile_cols = (s.width + tile - 1) / tile;
  const int64_t cost_per_pixel = 2 * k * k * c * c;
  for (int64_t d = 0; d < tile_rows + tile_cols - 1; ++d) {
    const int64_t r0 = std::max<int64_t>(0, d - tile_cols + 1), r1 = std::min(d, tile_rows - 1);
    const int64_t per_image = r1 - r0 + 1;
    parallel_for(s.batch * per_image, cost_per_pixel * tile * tile, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / per_image, r = r0 + item % per_image, cc = d - r;
        const int64_t h0 = r * tile, w0 = cc * tile;
        SolveTile(s, f, rhs + b * image, weights, adjoint, h0, std::min(h0 + tile, s.height), w0,
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
