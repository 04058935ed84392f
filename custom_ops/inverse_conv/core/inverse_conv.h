// Framework-free core of the inverse causal convolution (Inverse-Flow).
//
// The masked ("causal") k x k convolution, corner top_left, NHWC data, HWIO kernel K[p][q][i][o]:
//   y[b,h,w,o] = sum_{p,q<k} sum_i K[p,q,i,o] * x[b, h+p-k+1, w+q-k+1, i]   (zero outside the image)
// The same-pixel tap K[k-1,k-1] is read only where i <= o (lower triangular over channels).
// Other corners are the same map on the image flipped along H and/or W.
//
// Solve      : x = A^{-1} y   (back-substitution; dependencies run towards the corner).
// Adjoint    : u = A^{-T} g   (same recurrence, flipped frame, channel axes of K swapped).
// Nothing here knows about TensorFlow: raw pointers, sizes, a parallel-for callback (CPU) or a CUDA
// stream (GPU), so the same code runs inside the TF op, the GPU emulator and the GPU benchmark.
#ifndef TFINVCONV_CORE_INVERSE_CONV_H_
#define TFINVCONV_CORE_INVERSE_CONV_H_

#include <cstdint>
#include <functional>
#include <string>

namespace tfinvconv {

// Kernels above this size are refused: k^2 C^2 work per pixel in a dependent order makes larger
// taps impractical, and the bound keeps every tap index comfortably inside int32 on the GPU.
constexpr int kMaxKernelSize = 32;

enum class Corner : int { kTopLeft = 0, kTopRight = 1, kBottomLeft = 2, kBottomRight = 3 };

// Parses "top_left" etc.; returns false for anything else.
bool ParseCorner(const std::string& name, Corner* corner);

struct SolveShape {
  int64_t batch = 0;
  int64_t height = 0;
  int64_t width = 0;
  int64_t channels = 0;
  int64_t ksize = 0;
  int64_t num_pixels() const { return batch * height * width; }
};

// Returns an empty string when the shape can be solved, else a message naming the problem.
std::string ValidateShape(const SolveShape& shape);

// Index of the first zero on the same-pixel diagonal K[k-1,k-1,c,c], or -1 when there is none.
// `kernel` is host memory.
template <typename T>
int64_t FindSingularChannel(const SolveShape& shape, const T* kernel);

// The image seen in the "solve frame": frame pixel (0,0) has no dependencies and every dependency
// of frame pixel (h,w) lies at (h-a, w-b), a,b in [0,k-1]. Corner flips (and the adjoint's extra
// flip of both axes) are folded into signed strides, so no data is copied to change corners.
struct Frame {
  int64_t row_stride;  // elements between frame rows (negative when flipped)
  int64_t col_stride;  // elements between frame columns
  int64_t origin;      // offset of frame pixel (0,0) inside one image
};

inline Frame MakeFrame(const SolveShape& s, Corner corner, bool adjoint) {
  bool flip_h = corner == Corner::kBottomLeft || corner == Corner::kBottomRight;
  bool flip_w = corner == Corner::kTopRight || corner == Corner::kBottomRight;
  if (adjoint) {  // A^T runs the same recurrence towards the opposite corner.
    flip_h = !flip_h;
    flip_w = !flip_w;
  }
  const int64_t row = s.width * s.channels, col = s.channels;
  Frame f;
  f.row_stride = flip_h ? -row : row;
  f.col_stride = flip_w ? -col : col;
  f.origin = (flip_h ? (s.height - 1) * row : 0) + (flip_w ? (s.width - 1) * col : 0);
  return f;
}

// Runs fn(begin, end) over [0, total) split into chunks; `cost_per_unit` is a hint in cycles.
// TensorFlow passes its intra-op thread pool here; the self-test passes a serial loop.
using ParallelFor =
    std::function<void(int64_t total, int64_t cost_per_unit,
                       const std::function<void(int64_t, int64_t)>& fn)>;

// The CPU kernels are compiled for several instruction sets (inverse_conv_cpu.cc: baseline, avx2,
// avx512; or one "native" copy in a -march build). The one that runs is chosen once per process:
// TFINVCONV_CPU_PATH if set (auto, or a path name), else the widest this CPU supports. `error`
// is empty, or says why the requested path cannot run (then `name` is empty).
struct CpuPathChoice {
  std::string name;
  std::string error;
  int index = -1;
};
const CpuPathChoice& ChosenCpuPath();

// CPU: out = A^{-1} rhs (adjoint=false) or A^{-T} rhs (adjoint=true). rhs and out are
// [batch, height, width, channels] and must not overlap. Requires a valid shape, a nonsingular
// kernel and a CPU path without error (checked by the caller with the functions above; a path
// error aborts here).
template <typename T>
void CausalSolveCpu(const SolveShape& shape, const T* rhs, const T* kernel, Corner corner,
                    bool adjoint, T* out, const ParallelFor& parallel_for);

// Plain serial reference of the same map (forward direction, y = A x), used by the self-test.
template <typename T>
void CausalConvReference(const SolveShape& shape, const T* x, const T* kernel, Corner corner,
                         T* y);

// The GPU solve is declared in inverse_conv_gpu.h.

}  // namespace tfinvconv

#endif  // TFINVCONV_CORE_INVERSE_CONV_H_
