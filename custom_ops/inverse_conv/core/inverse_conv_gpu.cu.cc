// CUDA core: the causal solve on the GPU (see inverse_conv.h). One launch per anti-diagonal of
// the solve frame; one thread per (batch, pixel on that diagonal) runs the pixel's whole
// C-channel back-substitution, writing each solved channel straight to `out` and reading its
// lower channels back from there, so no scratch buffers are needed for any C.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "inverse_conv.h"

namespace tfinvconv {
namespace {

constexpr int kThreadsPerBlock = 128;

template <typename T>
__global__ void SolveDiagonalKernel(int64_t batch, int64_t height, int64_t width, int64_t channels,
                                    int64_t ksize, Frame frame, int64_t diagonal, int64_t h_first,
                                    int64_t diagonal_length, bool adjoint, const T* __restrict__ rhs,
                                    const T* __restrict__ kernel, T* __restrict__ out) {
  const int64_t item = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (item >= batch * diagonal_length) return;
  const int64_t b = item / diagonal_length;
  const int64_t h = h_first + item % diagonal_length;
  const int64_t w = diagonal - h;
  const int64_t c = channels, k = ksize, centre_tap = k * k - 1;
  const int64_t image = b * height * width * c;
  const int64_t pixel = image + frame.origin + h * frame.row_stride + w * frame.col_stride;
  // Weight for (tap, input channel i, output channel o); the adjoint reads K with i and o swapped.
  const int64_t in_stride = adjoint ? 1 : c, out_stride = adjoint ? c : 1;
  const int64_t p_first = h >= k - 1 ? 0 : k - 1 - h, q_first = w >= k - 1 ? 0 : k - 1 - w;

  for (int64_t step = 0; step < c; ++step) {
    // The forward solve goes up the channels, the adjoint (upper triangular centre) down.
    const int64_t o = adjoint ? c - 1 - step : step;
    T sum = rhs[pixel + o];
    for (int64_t p = p_first; p < k; ++p) {
      const int64_t row = image + frame.origin + (h + p - (k - 1)) * frame.row_stride;
      for (int64_t q = q_first; q < k; ++q) {
        const int64_t tap = p * k + q;
        if (tap == centre_tap) continue;
        const T* src = out + row + (w + q - (k - 1)) * frame.col_stride;
        const T* wt = kernel + tap * c * c + o * out_stride;
        for (int64_t i = 0; i < c; ++i) sum -= wt[i * in_stride] * src[i];
      }
    }
    const T* centre = kernel + centre_tap * c * c + o * out_stride;
    const int64_t i_begin = adjoint ? o + 1 : 0, i_end = adjoint ? c : o;
    for (int64_t i = i_begin; i < i_end; ++i) sum -= centre[i * in_stride] * out[pixel + i];
    out[pixel + o] = sum / centre[o * in_stride];
  }
}

}  // namespace

template <typename T>
int CausalSolveGpu(const SolveShape& s, const T* rhs, const T* kernel, Corner corner, bool adjoint,
                   T* out, void* stream) {
  if (s.num_pixels() == 0) return 0;
  cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);
  const Frame frame = MakeFrame(s, corner, adjoint);
  for (int64_t d = 0; d < s.height + s.width - 1; ++d) {
    const int64_t h_first = std::max<int64_t>(0, d - (s.width - 1));
    const int64_t h_last = std::min<int64_t>(d, s.height - 1);
    const int64_t length = h_last - h_first + 1;
    const int64_t items = s.batch * length;
    const int64_t blocks = (items + kThreadsPerBlock - 1) / kThreadsPerBlock;
    SolveDiagonalKernel<T><<<blocks, kThreadsPerBlock, 0, cuda_stream>>>(
        s.batch, s.height, s.width, s.channels, s.ksize, frame, d, h_first, length, adjoint, rhs,
        kernel, out);
  }
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int FindSingularChannelGpu(const SolveShape& s, const T* kernel, void* stream, int64_t* channel) {
  const int64_t c = s.channels, k = s.ksize;
  T* diagonal = new T[c];
  // The diagonal of the same-pixel tap: C entries, (C + 1) elements apart.
  cudaError_t err = cudaMemcpy2DAsync(diagonal, sizeof(T), kernel + (k * k - 1) * c * c,
                                      (c + 1) * sizeof(T), sizeof(T), c, cudaMemcpyDeviceToHost,
                                      static_cast<cudaStream_t>(stream));
  if (err == cudaSuccess) err = cudaStreamSynchronize(static_cast<cudaStream_t>(stream));
  *channel = -1;
  for (int64_t i = 0; err == cudaSuccess && i < c; ++i) {
    if (!(std::abs(diagonal[i]) > T(0))) {  // NaN counts as singular too
      *channel = i;
      break;
    }
  }
  delete[] diagonal;
  return static_cast<int>(err);
}

#define TFINVCONV_INSTANTIATE_GPU(T)                                                           \
  template int CausalSolveGpu<T>(const SolveShape&, const T*, const T*, Corner, bool, T*,     \
                                 void*);                                                       \
  template int FindSingularChannelGpu<T>(const SolveShape&, const T*, void*, int64_t*);
TFINVCONV_INSTANTIATE_GPU(float)
TFINVCONV_INSTANTIATE_GPU(double)
#undef TFINVCONV_INSTANTIATE_GPU

}  // namespace tfinvconv
