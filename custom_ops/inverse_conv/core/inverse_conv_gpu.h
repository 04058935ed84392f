// The GPU solve: its launch plan and entry points. The plan (which path, tile size, threads per
// block, shared-memory layout, grid) is chosen from the shape and the device's limits by one pure
// host function. The real launch
// (inverse_conv_gpu.cu.cc) and the host emulator (emulator/emulate.cc) both use it, so the plan
// the emulator checks is the plan the GPU runs.
//
// The solve frame (inverse_conv.h) is cut into tiles of tile_h x tile_w pixels. One thread block
// solves one tile by walking its anti-diagonals, with the tile and a (k-1)-pixel halo above and to
// the left of it in shared memory (zeros outside the image, so no edge cases in the inner loop).
// - Whole-image path: one tile per image, one block per image, no cross-block traffic.
// - Tiled path: tiles at least k-1 pixels wide, so a tile needs only its top, left and top-left
//   neighbours. Persistent blocks take tiles from an atomic counter in wavefront order and wait on
//   their neighbours' release/acquire "done" flags (tile order makes waiting deadlock-free
//   whatever the number of resident blocks: a block only waits on tiles taken before its own).
#ifndef TFINVCONV_CORE_INVERSE_CONV_GPU_H_
#define TFINVCONV_CORE_INVERSE_CONV_GPU_H_

#include <algorithm>
#include <cstdint>
#include <string>

#include "inverse_conv.h"

// Code shared by the device and the host emulator / planner.
#if defined(__CUDACC__)
#define TFINVCONV_HD __host__ __device__
#else
#define TFINVCONV_HD
#endif

namespace tfinvconv {

// What a device allows (cudaDeviceProp / cudaDevAttr*); the plan never assumes a particular GPU.
struct GpuLimits {
  int max_threads_per_block = 1024;
  int64_t max_shared_per_block = 48 * 1024;  // cudaDevAttrMaxSharedMemoryPerBlockOptin
  int64_t shared_per_sm = 100 * 1024;        // cudaDevAttrMaxSharedMemoryPerMultiprocessor
  int max_threads_per_sm = 2048;
  int sm_count = 1;
};

// Above this, dynamic shared memory needs cudaFuncSetAttribute before the launch.
constexpr int64_t kDefaultSharedLimit = 48 * 1024;
// Upper bound on threads per block; the kernel is compiled with __launch_bounds__ of it. 512
// leaves 128 registers per thread (float64 spills at 1024 threads / 64 registers); a diagonal
// with more work items than threads takes several passes (the block is issue-bound by then).
constexpr int kMaxSolveThreads = 512;

// Elements per row of the prepared weights [k*k][C out][row] (a row holds one output channel's
// C input weights, padded): a multiple of 16 bytes, so a thread reads its weights 16 bytes at a
// time, and an odd number of 16-byte units, so the 8 output channels of a quarter warp hit
// distinct shared-memory banks with those loads.
inline int64_t PreparedWeightRow(int64_t channels, int64_t elem) {
  const int64_t units = (channels * elem + 15) / 16;
  return (units % 2 ? units : units + 1) * 16 / elem;
}

// Pixels of these numbers of 16-byte vectors (C * sizeof(T) / 16) get kernels with the channel
// loops fully unrolled, when the tile and the weights are in shared memory (every Glow level);
// other channel counts and placements use the generic loops (kernel parameter 0).
template <int... kVectors>
struct VectorCounts {
  static constexpr int kValues[] = {kVectors...};
  static constexpr bool Contains(int64_t v) { return ((v == kVectors) || ...); }
};
using UnrolledVectorCounts = VectorCounts<1, 2, 3, 4, 6, 8, 12>;

// Plain data (it is passed to the kernel by value).
struct GpuSolvePlan {
  bool feasible = false;   // false: a tile buffer or the weights would overflow int indices
  bool weights_in_shared = false;
  // The tile buffer and accumulators live in shared memory, or (fallback, when not even a
  // (2k-2)^2-pixel tile fits) in a slice of global scratch per block, with a whole image per block.
  bool tile_in_shared = false;
  int64_t tile_h = 0, tile_w = 0;    // tile size in frame pixels
  int64_t tiles_h = 0, tiles_w = 0;  // tiles per image along H and W
  int64_t halo = 0;                  // k - 1
  int64_t weight_row = 0;            // PreparedWeightRow
  int unrolled_vectors = 0;          // the kernel's compile-time vectors per pixel, 0 = generic
  int64_t buffer_w = 0;              // tile_w + halo: row length of the tile buffer, in pixels
  int threads = 0;                   // per block, a multiple of 32
  int64_t grid = 0;                  // blocks launched
  // Byte offsets in the block's work area (shared memory, or its slice of global scratch):
  // tile buffer (T) and one diagonal's accumulators (T).
  int64_t tile_offset = 0, acc_offset = 0;
  // Byte offsets in dynamic shared memory: prepared weights when weights_in_shared (T), the tile
  // index broadcast slot (int).
  int64_t weights_offset = 0, slot_offset = 0;
  int64_t shared_bytes = 0;
  // The prepare kernel's dynamic shared memory: its two C x C double matrices when they fit in
  // the default 48 KB (C <= 55), else 0 (they stay in global scratch).
  int64_t prepare_shared_bytes = 0;
  // Global scratch, byte offsets: centre block and its inverse in double (C*C each), prepared
  // weights (T, prepared_elements), tile done flags (int, batch*tiles), the tile counter (int),
  // and the blocks' work slices when the tile is not in shared memory (grid x block_work_bytes).
  int64_t centre_offset = 0, inverse_offset = 0, prepared_offset = 0, flags_offset = 0,
          counter_offset = 0, work_offset = 0, block_work_bytes = 0, scratch_bytes = 0;

  TFINVCONV_HD int64_t tiles_per_image() const { return tiles_h * tiles_w; }
  TFINVCONV_HD int64_t prepared_elements(int64_t ksize, int64_t channels) const {
    return ksize * ksize * channels * weight_row;
  }
  TFINVCONV_HD bool tiled() const { return tiles_h * tiles_w > 1; }
};

namespace plan_detail {

inline int64_t RoundUp(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Fills the work-area and shared-memory layout for a th x tw tile; returns the shared bytes.
inline int64_t LayoutShared(const SolveShape& s, int64_t elem, int64_t th, int64_t tw,
                            bool weights_in_shared, bool tile_in_shared, GpuSolvePlan* p) {
  const int64_t c = s.channels, halo = s.ksize - 1;
  p->tile_offset = 0;
  p->acc_offset = RoundUp((th + halo) * (tw + halo) * c * elem, 16);
  const int64_t work = RoundUp(p->acc_offset + std::min(th, tw) * c * elem, 16);
  p->block_work_bytes = tile_in_shared ? 0 : work;
  p->weights_offset = tile_in_shared ? work : 0;
  p->slot_offset =
      RoundUp(p->weights_offset +
                  (weights_in_shared ? p->prepared_elements(s.ksize, c) * elem : 0), 16);
  return p->slot_offset + 16;
}

inline bool TryTile(const SolveShape& s, int64_t elem, const GpuLimits& lim, int64_t th,
                    int64_t tw, bool tile_in_shared, bool weights_in_shared, GpuSolvePlan* p) {
  GpuSolvePlan q = *p;
  const int64_t bytes = LayoutShared(s, elem, th, tw, weights_in_shared, tile_in_shared, &q);
  if (bytes > lim.max_shared_per_block) return false;
  q.weights_in_shared = weights_in_shared;
  q.tile_in_shared = tile_in_shared;
  q.shared_bytes = bytes;
  q.tile_h = th;
  q.tile_w = tw;
  *p = q;
  return true;
}

// The whole image when it fits in shared memory, else the largest square tile that does (at
// least k-1 wide). Tiling never shortens the critical path (H+W-1 diagonals at best; more with
// several tiles, which wait for whole neighbour tiles), it only makes big images fit, so the
// biggest tile wins.
inline bool LargestTile(const SolveShape& s, int64_t elem, const GpuLimits& lim,
                        bool weights_in_shared, GpuSolvePlan* p) {
  const int64_t min_side = std::max<int64_t>(s.ksize - 1, 1);
  for (int64_t side = std::max({s.height, s.width, min_side}); side >= min_side; --side)
    if (TryTile(s, elem, lim, std::min(side, s.height), std::min(side, s.width),
                /*tile_in_shared=*/true, weights_in_shared, p))
      return true;
  return false;
}

}  // namespace plan_detail

// `elem` is sizeof(T). Pure: no CUDA calls, so it is unit-tested on the CPU for many devices.
inline GpuSolvePlan PlanGpuSolve(const SolveShape& s, int64_t elem, const GpuLimits& lim) {
  using plan_detail::RoundUp;
  GpuSolvePlan p;
  const int64_t c = s.channels, k = s.ksize;
  p.halo = k - 1;
  p.weight_row = PreparedWeightRow(c, elem);
  const int64_t vectors = c * elem % 16 ? 0 : c * elem / 16;
  // Weights in shared memory when they take at most half of it and that does not turn a whole
  // image into tiles: the unrolled kernels need them there (on an H200, 64x8x8x48 k=3 took 178 us
  // with the weights read through L1 by the generic loops and 154 us from shared memory with
  // unrolled loops; 100x16x16x12 k=11 813 and 317 us), and a smaller tile costs little.
  const auto whole_image = [&](const GpuSolvePlan& q) {
    return q.tile_h == s.height && q.tile_w == s.width;
  };
  GpuSolvePlan global_weights = p;
  const bool fits_global = plan_detail::LargestTile(s, elem, lim, false, &global_weights);
  const int64_t weight_bytes = p.prepared_elements(k, c) * elem;
  bool found = weight_bytes * 2 <= lim.max_shared_per_block &&
               plan_detail::LargestTile(s, elem, lim, true, &p) &&
               (whole_image(p) || !fits_global || !whole_image(global_weights));
  if (!found && fits_global) {
    p = global_weights;
    found = true;
  }
  if (!found)  // the fallback: whole images, their buffers in global memory
    found = plan_detail::TryTile(s, elem, lim, s.height, s.width, /*tile_in_shared=*/false,
                                 /*weights_in_shared=*/false, &p);
  // Weight and buffer indices are int in the kernel.
  const int64_t buffer = (p.tile_h + p.halo) * (p.tile_w + p.halo) * c;
  if (!found || p.prepared_elements(k, c) >= (int64_t{1} << 31) || buffer >= (int64_t{1} << 31))
    return p;
  p.feasible = true;
  if (p.tile_in_shared && p.weights_in_shared && UnrolledVectorCounts::Contains(vectors))
    p.unrolled_vectors = static_cast<int>(vectors);
  p.tile_h = std::max<int64_t>(p.tile_h, 1);
  p.tile_w = std::max<int64_t>(p.tile_w, 1);
  p.tiles_h = (s.height + p.tile_h - 1) / p.tile_h;
  p.tiles_w = (s.width + p.tile_w - 1) / p.tile_w;
  p.buffer_w = p.tile_w + p.halo;
  const int64_t items = std::min(p.tile_h, p.tile_w) * c;  // longest diagonal x channels
  const int64_t max_threads = std::min<int64_t>(lim.max_threads_per_block, kMaxSolveThreads);
  p.threads = static_cast<int>(std::min(RoundUp(std::max<int64_t>(items, 1), 32), max_threads));
  const int64_t tiles = s.batch * p.tiles_per_image();
  if (p.tiled()) {
    // As many persistent blocks as can be resident at once (more would only queue).
    const int64_t by_shared = lim.shared_per_sm / std::max<int64_t>(p.shared_bytes, 1);
    const int64_t by_threads = lim.max_threads_per_sm / p.threads;
    const int64_t per_sm = std::max<int64_t>(1, std::min(by_shared, by_threads));
    p.grid = std::min(tiles, per_sm * lim.sm_count);
  } else {
    p.grid = s.batch;
  }
  const int64_t matrix_bytes = c * c * 8;  // the centre block or its inverse, in double
  p.prepare_shared_bytes = 2 * matrix_bytes <= kDefaultSharedLimit ? 2 * matrix_bytes : 0;
  p.centre_offset = 0;
  p.inverse_offset = matrix_bytes;
  p.prepared_offset = 2 * matrix_bytes;
  p.flags_offset = RoundUp(p.prepared_offset + p.prepared_elements(k, c) * elem, 16);
  p.counter_offset = p.flags_offset + (p.tiled() ? tiles : 0) * 4;
  p.work_offset = RoundUp(p.counter_offset + 4, 16);
  p.scratch_bytes = p.work_offset + p.grid * p.block_work_bytes;
  return p;
}

// The per-call kernel that prepares the weights: block 0 inverts the centre block, each further
// block copies this many off-centre tap elements (a few loads in flight per thread).
constexpr int kPrepareThreads = 256;
constexpr int64_t kPrepareElementsPerBlock = 4 * kPrepareThreads;

// Blocks of the prepare kernel for C channels and k x k taps.
inline int64_t PrepareGrid(int64_t channels, int64_t ksize) {
  const int64_t off_centre = (ksize * ksize - 1) * channels * channels;
  return 1 + (off_centre + kPrepareElementsPerBlock - 1) / kPrepareElementsPerBlock;
}

#if defined(GOOGLE_CUDA) || defined(__CUDACC__)
// A cudaError_t value in words (its name and CUDA's description), for the wrappers' messages.
// When the driver is older than the CUDA runtime these kernels were built with, it says which
// CUDA that is and what to do.
std::string DescribeGpuError(int err);

// Fills `limits` for the current device (attribute queries, made once per device and cached;
// no synchronisation). Returns a cudaError_t value (0 on success).
int QueryGpuLimits(GpuLimits* limits);

// out = A^{-1} rhs (adjoint=false) or A^{-T} rhs (adjoint=true) on device pointers, launched on
// `stream` (a cudaStream_t) with a feasible plan from PlanGpuSolve(shape, sizeof(T), limits of
// this device). `scratch` is device memory of plan.scratch_bytes (16-byte aligned). Never
// synchronises with the host. A singular same-pixel diagonal (zero or NaN) cannot be reported
// without a host round trip, so it makes every output NaN instead. Returns a cudaError_t value:
// every launch is checked; faults inside a kernel surface at the stream's next synchronisation.
template <typename T>
int CausalSolveGpu(const SolveShape& shape, const GpuSolvePlan& plan, const T* rhs,
                   const T* kernel, Corner corner, bool adjoint, T* out, void* scratch,
                   void* stream);
#endif

}  // namespace tfinvconv

#endif  // TFINVCONV_CORE_INVERSE_CONV_GPU_H_
