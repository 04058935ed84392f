// C interface to the framework-free core, for the GPU benchmark (benchmarks/bench_ops_gpu.py
// drives it through ctypes with PyTorch tensors; GPU machines have no TensorFlow). Built by
// `make gpu-bench` as build/gpu_bench/libtfinvconv_core.so. Thin: no solve logic here.
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>

#include "custom_ops/inverse_conv/core/inverse_conv.h"
#include "custom_ops/inverse_conv/core/inverse_conv_gpu.h"

namespace {

tfinvconv::SolveShape Shape(int64_t b, int64_t h, int64_t w, int64_t c, int64_t k) {
  return tfinvconv::SolveShape{b, h, w, c, k};
}

void SerialFor(int64_t total, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
  fn(0, total);
}

// The unit of the solve's dependency-chain floor: each iteration is one dependent shared-memory
// round trip (a value another thread wrote before the last barrier) and one block-wide barrier,
// the least a diagonal of any one-block wavefront costs. Double-buffered, so one barrier is
// enough; benchmark-only, not part of the solve.
__global__ void BarrierChainKernel(int iterations, float* sink) {
  extern __shared__ float cells[];  // two rows of blockDim.x
  const int t = threadIdx.x, n = blockDim.x;
  cells[t] = static_cast<float>(t);
  __syncthreads();
  for (int i = 0; i < iterations; ++i) {
    const float* from = cells + (i & 1) * n;
    float* to = cells + ((i + 1) & 1) * n;
    to[t] = from[(t + 1) % n] + 1.0f;
    __syncthreads();
  }
  if (t == 0) sink[blockIdx.x] = cells[0];
}

}  // namespace

extern "C" {

// One block of `threads` threads running BarrierChainKernel on `stream` (time it with events).
int tfinvconv_barrier_chain(int threads, int iterations, void* sink, void* stream) {
  BarrierChainKernel<<<1, threads, 2 * threads * sizeof(float),
                       static_cast<cudaStream_t>(stream)>>>(iterations, static_cast<float*>(sink));
  return static_cast<int>(cudaGetLastError());
}


// The plan for this device: returns 0 and fills the fields, or a CUDA error / -1 (infeasible).
int tfinvconv_gpu_plan(int elem, int64_t b, int64_t h, int64_t w, int64_t c, int64_t k,
                       int64_t* scratch_bytes, int64_t* shared_bytes, int64_t* tile_h,
                       int64_t* tile_w, int* threads, int* weights_in_shared,
                       int* unrolled_vectors) {
  tfinvconv::GpuLimits limits;
  const int err = tfinvconv::QueryGpuLimits(&limits);
  if (err) return err;
  const tfinvconv::GpuSolvePlan p = tfinvconv::PlanGpuSolve(Shape(b, h, w, c, k), elem, limits);
  if (!p.feasible) return -1;
  *scratch_bytes = p.scratch_bytes;
  *shared_bytes = p.shared_bytes;
  *tile_h = p.tile_h;
  *tile_w = p.tile_w;
  *threads = p.threads;
  *weights_in_shared = p.weights_in_shared;
  *unrolled_vectors = p.unrolled_vectors;
  return 0;
}

// CausalSolveGpu on device pointers; elem 4 = float32, 8 = float64. generic != 0 runs the
// generic channel loops even where the plan has an unrolled kernel (to compare the two). Returns
// a cudaError_t.
int tfinvconv_gpu_solve(int elem, int64_t b, int64_t h, int64_t w, int64_t c, int64_t k,
                        const void* rhs, const void* kernel, int corner, int adjoint, void* out,
                        void* scratch, void* stream, int generic) {
  tfinvconv::GpuLimits limits;
  const int err = tfinvconv::QueryGpuLimits(&limits);
  if (err) return err;
  const tfinvconv::SolveShape s = Shape(b, h, w, c, k);
  tfinvconv::GpuSolvePlan p = tfinvconv::PlanGpuSolve(s, elem, limits);
  if (generic) p.unrolled_vectors = 0;
  const auto cr = static_cast<tfinvconv::Corner>(corner);
  if (elem == 4)
    return tfinvconv::CausalSolveGpu(s, p, static_cast<const float*>(rhs),
                                     static_cast<const float*>(kernel), cr, adjoint != 0,
                                     static_cast<float*>(out), scratch, stream);
  return tfinvconv::CausalSolveGpu(s, p, static_cast<const double*>(rhs),
                                   static_cast<const double*>(kernel), cr, adjoint != 0,
                                   static_cast<double*>(out), scratch, stream);
}

// The CPU core in float64 on host pointers (the reference the GPU result is checked against).
void tfinvconv_cpu_solve_f64(int64_t b, int64_t h, int64_t w, int64_t c, int64_t k,
                             const double* rhs, const double* kernel, int corner, int adjoint,
                             double* out) {
  tfinvconv::CausalSolveCpu(Shape(b, h, w, c, k), rhs, kernel,
                            static_cast<tfinvconv::Corner>(corner), adjoint != 0, out, SerialFor);
}

}  // extern "C"
