// Standalone GPU self-test of the causal solve: no TensorFlow. Runs the CUDA core on random data
// against the CPU core (and checks A x == y with the serial reference convolution), for many
// channel counts, kernel sizes, corners and both directions, then times the GPU solve and adjoint
// at the benchmark shapes next to a plain causal convolution of the same shape on the same GPU.
// Exit status 0 only when every error is within tolerance.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <vector>

#include "../core/inverse_conv.h"

using tfinvconv::Corner;
using tfinvconv::SolveShape;

#define CHECK_CUDA(call)                                                              \
  do {                                                                                \
    cudaError_t e = (call);                                                           \
    if (e != cudaSuccess) {                                                           \
      std::fprintf(stderr, "CUDA error %s at %s:%d\n", cudaGetErrorString(e), __FILE__, \
                   __LINE__);                                                         \
      std::exit(2);                                                                   \
    }                                                                                 \
  } while (0)

namespace {

const char* kCornerNames[] = {"top_left", "top_right", "bottom_left", "bottom_right"};

void SerialFor(int64_t total, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
  fn(0, total);
}

template <typename T>
std::vector<T> RandomKernel(std::mt19937& rng, int64_t k, int64_t c) {
  std::normal_distribution<double> normal(0.0, 0.3 / k);
  std::uniform_real_distribution<double> diag(0.5, 1.5);
  std::vector<T> kernel(k * k * c * c);
  for (auto& v : kernel) v = static_cast<T>(normal(rng));
  T* centre = kernel.data() + (k * k - 1) * c * c;
  for (int64_t i = 0; i < c; ++i) centre[i * c + i] = static_cast<T>((i % 2 ? -1 : 1) * diag(rng));
  return kernel;
}

// A plain causal convolution (one thread per output value), the GPU's physical reference: the
// same multiply-adds as the solve but with no dependent steps.
template <typename T>
__global__ void CausalConvKernel(SolveShape s, const T* x, const T* kernel, T* y) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t c = s.channels, k = s.ksize;
  if (idx >= s.batch * s.height * s.width * c) return;
  const int64_t o = idx % c, pix = idx / c, w = pix % s.width, h = (pix / s.width) % s.height;
  const int64_t b = pix / (s.width * s.height);
  T sum = 0;
  for (int64_t p = 0; p < k; ++p) {
    const int64_t hh = h + p - (k - 1);
    if (hh < 0) continue;
    for (int64_t q = 0; q < k; ++q) {
      const int64_t ww = w + q - (k - 1);
      if (ww < 0) continue;
      const T* src = x + ((b * s.height + hh) * s.width + ww) * c;
      const T* wt = kernel + (p * k + q) * c * c + o;
      for (int64_t i = 0; i < c; ++i) sum += wt[i * c] * src[i];
    }
  }
  y[idx] = sum;
}

template <typename T>
double MaxAbsDiff(const std::vector<T>& a, const std::vector<T>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::fmax(m, std::fabs(double(a[i]) - double(b[i])));
  return m;
}

// Returns the worst error over: GPU vs CPU solve, and A * solve(y) vs y (forward direction).
template <typename T>
double CheckOne(std::mt19937& rng, const SolveShape& s, Corner corner, bool adjoint) {
  const int64_t n = s.num_pixels() * s.channels;
  std::vector<T> rhs(n), cpu(n), gpu(n), back(n);
  std::normal_distribution<double> normal;
  for (auto& v : rhs) v = static_cast<T>(normal(rng));
  std::vector<T> kernel = RandomKernel<T>(rng, s.ksize, s.channels);
  tfinvconv::CausalSolveCpu(s, rhs.data(), kernel.data(), corner, adjoint, cpu.data(), SerialFor);
  T *d_rhs, *d_kernel, *d_out;
  CHECK_CUDA(cudaMalloc(&d_rhs, n * sizeof(T)));
  CHECK_CUDA(cudaMalloc(&d_kernel, kernel.size() * sizeof(T)));
  CHECK_CUDA(cudaMalloc(&d_out, n * sizeof(T)));
  CHECK_CUDA(cudaMemcpy(d_rhs, rhs.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_kernel, kernel.data(), kernel.size() * sizeof(T),
                        cudaMemcpyHostToDevice));
  CHECK_CUDA(static_cast<cudaError_t>(tfinvconv::CausalSolveGpu(
      s, d_rhs, d_kernel, corner, adjoint, d_out, nullptr)));
  CHECK_CUDA(cudaMemcpy(gpu.data(), d_out, n * sizeof(T), cudaMemcpyDeviceToHost));
  int64_t singular = 0;
  CHECK_CUDA(static_cast<cudaError_t>(
      tfinvconv::FindSingularChannelGpu(s, d_kernel, nullptr, &singular)));
  CHECK_CUDA(cudaFree(d_rhs));
  CHECK_CUDA(cudaFree(d_kernel));
  CHECK_CUDA(cudaFree(d_out));
  double err = MaxAbsDiff(cpu, gpu);
  if (singular != -1) err = INFINITY;  // the diagonal is nonzero by construction
  if (!adjoint) {
    tfinvconv::CausalConvReference(s, gpu.data(), kernel.data(), corner, back.data());
    err = std::fmax(err, MaxAbsDiff(back, rhs));
  }
  return err;
}

template <typename T>
float TimeMs(int repeats, const std::function<void()>& fn) {
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  fn();  // warm-up
  std::vector<float> times;
  for (int r = 0; r < repeats; ++r) {
    CHECK_CUDA(cudaEventRecord(start));
    fn();
    CHECK_CUDA(cudaEventRecord(stop));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms);
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

void TimeShape(int64_t batch, int64_t size, int64_t c, int64_t k) {
  using T = float;
  SolveShape s{batch, size, size, c, k};
  const int64_t n = s.num_pixels() * c;
  std::mt19937 rng(7);
  std::vector<T> host(n);
  std::normal_distribution<double> normal;
  for (auto& v : host) v = static_cast<T>(normal(rng));
  std::vector<T> kernel = RandomKernel<T>(rng, k, c);
  T *d_in, *d_kernel, *d_out;
  CHECK_CUDA(cudaMalloc(&d_in, n * sizeof(T)));
  CHECK_CUDA(cudaMalloc(&d_out, n * sizeof(T)));
  CHECK_CUDA(cudaMalloc(&d_kernel, kernel.size() * sizeof(T)));
  CHECK_CUDA(cudaMemcpy(d_in, host.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_kernel, kernel.data(), kernel.size() * sizeof(T),
                        cudaMemcpyHostToDevice));
  const int64_t blocks = (n + 127) / 128;
  float conv = TimeMs<T>(20, [&] { CausalConvKernel<T><<<blocks, 128>>>(s, d_in, d_kernel, d_out); });
  float solve = TimeMs<T>(20, [&] {
    tfinvconv::CausalSolveGpu(s, d_in, d_kernel, Corner::kTopLeft, false, d_out, nullptr);
  });
  float adjoint = TimeMs<T>(20, [&] {
    tfinvconv::CausalSolveGpu(s, d_in, d_kernel, Corner::kTopLeft, true, d_out, nullptr);
  });
  std::printf("| %5lld | %4lld | %3lld | %2lld | %10.4f | %10.4f | %10.4f | %6.2f | %6.2f |\n",
              (long long)batch, (long long)size, (long long)c, (long long)k, conv, solve, adjoint,
              solve / conv, adjoint / conv);
  CHECK_CUDA(cudaFree(d_in));
  CHECK_CUDA(cudaFree(d_out));
  CHECK_CUDA(cudaFree(d_kernel));
}

}  // namespace

int main() {
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s (sm_%d%d)\n\n", prop.name, prop.major, prop.minor);
  std::mt19937 rng(1234);
  bool ok = true;
  std::printf("correctness (max |gpu - cpu|, and |A x - y| for the forward solve)\n");
  std::printf("| dtype  |  C |  k | corner       | solve err | adjoint err |\n");
  for (int64_t c : {1, 2, 3, 5, 8, 12, 48}) {
    for (int64_t k : {1, 2, 3, 4, 5, 7}) {
      for (int corner = 0; corner < 4; ++corner) {
        SolveShape s{3, 9, 13, c, k};  // non-square, batch 3
        double es = CheckOne<double>(rng, s, static_cast<Corner>(corner), false);
        double ea = CheckOne<double>(rng, s, static_cast<Corner>(corner), true);
        double fs = CheckOne<float>(rng, s, static_cast<Corner>(corner), false);
        double fa = CheckOne<float>(rng, s, static_cast<Corner>(corner), true);
        const bool good = es < 1e-9 && ea < 1e-9 && fs < 1e-3 && fa < 1e-3;
        ok = ok && good;
        if (!good || corner == 0)
          std::printf("| f64/32 | %2lld | %2lld | %-12s | %.1e/%.1e | %.1e/%.1e |%s\n",
                      (long long)c, (long long)k, kCornerNames[corner], es, fs, ea, fa,
                      good ? "" : "  <-- FAIL");
      }
    }
  }
  std::printf("\ntimings (float32, median of 20, ms): plain causal conv vs solve vs adjoint solve\n");
  std::printf("| batch | size |   C |  k |       conv |      solve |    adjoint | solve/conv | adj/conv |\n");
  for (int64_t size : {16, 32, 64, 128, 256})
    for (int64_t c : {12, 48}) TimeShape(16, size, c, 3);
  for (int64_t k : {2, 3, 5, 7, 9, 11}) TimeShape(16, 32, 12, k);
  // Batch 1 and a large kernel: the CPU reference runs its tiled wavefront ((k-1)-pixel tiles).
  const double tiled = CheckOne<double>(rng, SolveShape{1, 40, 37, 2, 20}, Corner::kTopLeft,
                                        false);
  std::printf("\ntiled CPU path vs GPU (1x40x37x2, k=20): max error %.1e\n", tiled);
  ok = ok && tiled < 1e-9;
  std::printf("\n%s\n", ok ? "SELFTEST PASSED" : "SELFTEST FAILED");
  return ok ? 0 : 1;
}
