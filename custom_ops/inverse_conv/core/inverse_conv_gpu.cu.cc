// CUDA core: the causal solve on the GPU (see inverse_conv_gpu.h for the plan and the entry
// point, inverse_conv_gpu_kernel.h for the per-thread work, which the host emulator also runs).
// Two launches per call, no host synchronisation: a small kernel prepares the weights and the
// centre inverse, then the solve kernel walks every diagonal of its tile in one launch.
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <string>

#include "inverse_conv_gpu.h"
#include "inverse_conv_gpu_kernel.h"

namespace tfinvconv {
namespace {

template <typename U>
struct SharedArray {
  U* data;
  __device__ U load(int64_t i) const { return data[i]; }
  __device__ gpu::Vec16<U> load16(int64_t i) const {
    return *reinterpret_cast<const gpu::Vec16<U>*>(data + i);
  }
  __device__ void store(int64_t i, U v) const { data[i] = v; }
};

// The executor the programs run on inside a kernel: threads are real, barriers are real.
struct DeviceBlock {
  unsigned char* arena;  // dynamic shared memory
  unsigned char* work;   // this block's slice of global scratch (fallback plans)
  template <typename U>
  __device__ SharedArray<U> shared(int64_t byte_offset, int64_t /*count*/) const {
    return {reinterpret_cast<U*>(arena + byte_offset)};
  }
  template <typename U>
  __device__ SharedArray<U> work_array(int64_t byte_offset, int64_t /*count*/) const {
    return {reinterpret_cast<U*>(work + byte_offset)};
  }
  template <class Stretch>
  __device__ void run(Stretch stretch) const { stretch(static_cast<int>(threadIdx.x)); }
  __device__ void barrier() const { __syncthreads(); }
  __device__ int threads() const { return static_cast<int>(blockDim.x); }
  __device__ int64_t index() const { return blockIdx.x; }
  template <typename U>
  __device__ U uniform(const SharedArray<U>& a, int64_t i) const { return a.load(i); }
};

template <typename T>
__global__ void __launch_bounds__(kPrepareThreads, 1) PrepareKernel(gpu::PrepareArgs<T> args) {
  extern __shared__ __align__(16) unsigned char arena[];
  DeviceBlock block{arena, nullptr};
  gpu::PrepareProgram(block, args);
}

template <typename T, bool kWeightsInShared, bool kTileInShared, int kVectors>
__global__ void __launch_bounds__(kMaxSolveThreads, 1) SolveKernel(gpu::SolveArgs<T> args) {
  extern __shared__ __align__(16) unsigned char arena[];
  DeviceBlock block{arena, args.work + blockIdx.x * args.plan.block_work_bytes};
  gpu::SolveProgram<kWeightsInShared, kTileInShared, kVectors>(block, args);
}

template <typename T, bool kWeightsInShared, bool kTileInShared, int kVectors>
cudaError_t LaunchSolve(const gpu::SolveArgs<T>& args, cudaStream_t stream) {
  const GpuSolvePlan& plan = args.plan;
  auto* kernel = SolveKernel<T, kWeightsInShared, kTileInShared, kVectors>;
  if (plan.shared_bytes > kDefaultSharedLimit) {  // opt-in, or the launch fails
    cudaError_t err = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(plan.shared_bytes));
    if (err != cudaSuccess) return err;
  }
  kernel<<<static_cast<unsigned>(plan.grid), plan.threads, plan.shared_bytes, stream>>>(args);
  return cudaGetLastError();
}

template <typename T>
struct SolveLaunch {
  const gpu::SolveArgs<T>& args;
  cudaStream_t stream;
  template <bool kWeightsInShared, bool kTileInShared, int kVectors>
  cudaError_t Run() const {
    return LaunchSolve<T, kWeightsInShared, kTileInShared, kVectors>(args, stream);
  }
};

}  // namespace

// The attribute queries behind QueryGpuLimits, for one device.
static cudaError_t ReadGpuLimits(int device, GpuLimits* limits) {
  int value = 0;
  cudaError_t err = cudaSuccess;
  const struct {
    cudaDeviceAttr attribute;
    void (*set)(GpuLimits*, int);
  } fields[] = {
      {cudaDevAttrMaxThreadsPerBlock, [](GpuLimits* l, int v) { l->max_threads_per_block = v; }},
      {cudaDevAttrMaxSharedMemoryPerBlockOptin,
       [](GpuLimits* l, int v) { l->max_shared_per_block = v; }},
      {cudaDevAttrMaxSharedMemoryPerMultiprocessor,
       [](GpuLimits* l, int v) { l->shared_per_sm = v; }},
      {cudaDevAttrMaxThreadsPerMultiProcessor,
       [](GpuLimits* l, int v) { l->max_threads_per_sm = v; }},
      {cudaDevAttrMultiProcessorCount, [](GpuLimits* l, int v) { l->sm_count = v; }},
  };
  for (const auto& field : fields) {
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&value, field.attribute, device);
    if (err == cudaSuccess) field.set(limits, value);
  }
  return err;
}

std::string DescribeGpuError(int err) {
  const auto error = static_cast<cudaError_t>(err);
  std::string text = std::string(cudaGetErrorName(error)) + ": " + cudaGetErrorString(error);
  if (error == cudaErrorInsufficientDriver) {
    text += " (the kernels were built with CUDA " + std::to_string(CUDART_VERSION / 1000) + "." +
            std::to_string(CUDART_VERSION % 1000 / 10) + "; update the NVIDIA driver to one "
            "that supports it, or rebuild the op with the CUDA toolkit this driver supports)";
  }
  return text;
}

int QueryGpuLimits(GpuLimits* limits) {
  // Read once per device: every solve call plans with them, and five attribute queries per call
  // would sit on the launch path.
  static std::mutex mutex;
  static std::map<int, GpuLimits> known;
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return static_cast<int>(err);
  std::lock_guard<std::mutex> lock(mutex);
  auto found = known.find(device);
  if (found == known.end()) {
    GpuLimits read;
    err = ReadGpuLimits(device, &read);
    if (err != cudaSuccess) return static_cast<int>(err);
    found = known.emplace(device, read).first;
  }
  *limits = found->second;
  return cudaSuccess;
}

template <typename T>
int CausalSolveGpu(const SolveShape& s, const GpuSolvePlan& plan, const T* rhs, const T* kernel,
                   Corner corner, bool adjoint, T* out, void* scratch, void* stream) {
  if (s.num_pixels() == 0) return cudaSuccess;
  if (!plan.feasible) return cudaErrorInvalidValue;
  cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);
  const gpu::LaunchArgs<T> args =
      gpu::MakeLaunchArgs(s, plan, rhs, kernel, corner, adjoint, out, scratch);
  const auto prepare_grid = static_cast<unsigned>(PrepareGrid(s.channels, s.ksize));
  PrepareKernel<T><<<prepare_grid, kPrepareThreads, plan.prepare_shared_bytes, cuda_stream>>>(
      args.prepare);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  if (plan.tiled()) {  // tile flags and the tile counter start at zero
    err = cudaMemsetAsync(args.solve.flags, 0, gpu::TileStateBytes(plan), cuda_stream);
    if (err != cudaSuccess) return err;
  }
  return static_cast<int>(gpu::WithPlacement(plan, SolveLaunch<T>{args.solve, cuda_stream}));
}

#define TFINVCONV_INSTANTIATE_GPU(T)                                                        \
  template int CausalSolveGpu<T>(const SolveShape&, const GpuSolvePlan&, const T*, const T*, \
                                 Corner, bool, T*, void*, void*);
TFINVCONV_INSTANTIATE_GPU(float)
TFINVCONV_INSTANTIATE_GPU(double)
#undef TFINVCONV_INSTANTIATE_GPU

}  // namespace tfinvconv
