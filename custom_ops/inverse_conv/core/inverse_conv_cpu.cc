// CPU core: back-substitution for the causal convolution (see inverse_conv.h): the kernels
// compiled once per instruction set, and the choice between them made once at run time.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iterator>
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

// Inverse of the masked same-pixel block M[i][o] (y_row = x_row @ M), in double precision.
// M is triangular with a nonzero diagonal, so elimination needs no pivoting. Shared by every
// instruction set's kernels (it runs once per call).
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

}  // namespace
}  // namespace tfinvconv

// The kernels, once per instruction set (inverse_conv_cpu_kernels.h). A build with an explicit
// -march (setup.py's TFINVCONV_MARCH) compiles them once, for that machine only.
#if defined(TFINVCONV_MARCH_NAME)
#define TFINVCONV_CPU_TARGET native
#if defined(__AVX512F__)
#define TFINVCONV_VECTOR_BYTES 64
#define TFINVCONV_VECTOR_REGISTERS 32
#elif defined(__AVX__)
#define TFINVCONV_VECTOR_BYTES 32
#define TFINVCONV_VECTOR_REGISTERS 16
#else
#define TFINVCONV_VECTOR_BYTES 16
#define TFINVCONV_VECTOR_REGISTERS 16
#endif
#include "inverse_conv_cpu_kernels.h"

#else  // portable: the compiler's default target, plus wider copies where GCC can target them
#define TFINVCONV_CPU_TARGET baseline
#define TFINVCONV_VECTOR_BYTES 16
#define TFINVCONV_VECTOR_REGISTERS 16
#include "inverse_conv_cpu_kernels.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TFINVCONV_X86_PATHS 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define TFINVCONV_CPU_TARGET avx2
#define TFINVCONV_VECTOR_BYTES 32
#define TFINVCONV_VECTOR_REGISTERS 16
#include "inverse_conv_cpu_kernels.h"
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
#define TFINVCONV_CPU_TARGET avx512
#define TFINVCONV_VECTOR_BYTES 64
#define TFINVCONV_VECTOR_REGISTERS 32
#include "inverse_conv_cpu_kernels.h"
#pragma GCC pop_options
#endif  // x86-64 with GCC
#endif  // TFINVCONV_MARCH_NAME

namespace tfinvconv {
namespace {

// The kernels' copies in this build, narrowest first, and whether this CPU runs each.
enum class Target { kBaseline, kAvx2, kAvx512, kNative };
struct CompiledPath {
  const char* name;
  Target target;
  bool (*runs)();
};
bool Always() { return true; }

#if defined(TFINVCONV_MARCH_NAME)
const CompiledPath kPaths[] = {{TFINVCONV_MARCH_NAME, Target::kNative, Always}};
#elif defined(TFINVCONV_X86_PATHS)
// __builtin_cpu_supports also checks that the OS saves the wide registers (XGETBV); the init
// makes it safe whenever it is first asked (libgcc otherwise fills it in a constructor).
bool RunsAvx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
bool RunsAvx512() { return RunsAvx2() && __builtin_cpu_supports("avx512f"); }
const CompiledPath kPaths[] = {{"baseline", Target::kBaseline, Always},
                               {"avx2", Target::kAvx2, RunsAvx2},
                               {"avx512", Target::kAvx512, RunsAvx512}};
#else
const CompiledPath kPaths[] = {{"baseline", Target::kBaseline, Always}};
#endif

std::string PathNames(bool runnable_only) {
  std::string names;
  for (const CompiledPath& path : kPaths)
    if (!runnable_only || path.runs()) names += (names.empty() ? "" : ", ") + std::string(path.name);
  return names;
}

// TFINVCONV_CPU_PATH if set (auto or a compiled path this CPU runs), else the widest that runs.
CpuPathChoice ChooseCpuPath() {
  const char* env = std::getenv("TFINVCONV_CPU_PATH");
  const std::string request = env && *env ? env : "auto";
  CpuPathChoice choice;
  int index = -1;
  for (int i = 0; i < static_cast<int>(std::size(kPaths)); ++i)
    if (request == "auto" ? kPaths[i].runs() : request == kPaths[i].name) index = i;
  if (index < 0) {
    choice.error = "TFINVCONV_CPU_PATH=" + request + " is not a CPU path of this build (it has: " +
                   PathNames(false) + "); set it to one of those or to auto, or unset it";
  } else if (!kPaths[index].runs()) {
    choice.error = "TFINVCONV_CPU_PATH=" + request + " needs instructions this CPU lacks (it "
                   "runs: " + PathNames(true) + "); set it to one of those or to auto, or unset it";
  } else {
    choice.name = kPaths[index].name;
    choice.index = index;
  }
  return choice;
}

}  // namespace

const CpuPathChoice& ChosenCpuPath() {
  static const CpuPathChoice choice = ChooseCpuPath();
  return choice;
}

template <typename T>
void CausalSolveCpu(const SolveShape& s, const T* rhs, const T* kernel, Corner corner,
                    bool adjoint, T* out, const ParallelFor& parallel_for) {
  const CpuPathChoice& choice = ChosenCpuPath();
  if (!choice.error.empty()) {  // callers check first; running another path silently is worse
    std::fprintf(stderr, "tfinvconv: %s\n", choice.error.c_str());
    std::abort();
  }
  switch (kPaths[choice.index].target) {
#if defined(TFINVCONV_MARCH_NAME)
    case Target::kNative:
      return native::CausalSolve(s, rhs, kernel, corner, adjoint, out, parallel_for);
#else
#if defined(TFINVCONV_X86_PATHS)
    case Target::kAvx512:
      return avx512::CausalSolve(s, rhs, kernel, corner, adjoint, out, parallel_for);
    case Target::kAvx2:
      return avx2::CausalSolve(s, rhs, kernel, corner, adjoint, out, parallel_for);
#endif
    case Target::kBaseline:
      return baseline::CausalSolve(s, rhs, kernel, corner, adjoint, out, parallel_for);
#endif
    default:
      std::abort();  // a path in kPaths without its case here
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
