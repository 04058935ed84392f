// The GPU solve's per-thread work, written once for two executors:
// - inverse_conv_gpu.cu.cc runs the programs below inside __global__ kernels (DeviceBlock:
//   run(f) is f(threadIdx.x), barrier() is __syncthreads()).
// - emulator/emulate.cc, built with g++ from this same header, runs them on the CPU (HostBlock:
//   run(f) queues f; barrier() runs every queued stretch thread by thread in shuffled order,
//   through shared-memory accessors that report two threads touching one address inside one
//   stretch, i.e. a missing barrier).
// A "program" is the sequence of stretches and barriers of one thread block; a "stretch" is the
// per-thread code between two barriers. Shared memory is only touched through the accessors the
// block hands out (load/store), global memory directly.
//
// Math (inverse_conv.h, math note): in the solve frame, pixel (h,w) needs the solved pixels
// (h-a, w-b), a,b in [0,k-1], and its own lower channels through the triangular same-pixel block
// M. With M^{-1} precomputed, x_pixel = (rhs_pixel - off-centre taps) @ M^{-1}, so each of a
// pixel's C output channels is one independent thread once the accumulators of that pixel exist.
#ifndef TFINVCONV_CORE_INVERSE_CONV_GPU_KERNEL_H_
#define TFINVCONV_CORE_INVERSE_CONV_GPU_KERNEL_H_

#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>

#include "inverse_conv.h"
#include "inverse_conv_gpu.h"

#if defined(__CUDACC__)
#include <cuda/atomic>
#endif

// Hooks the host emulator defines before including this header (no-ops on the GPU): a bounds
// check of every global pixel offset, and a check made while spinning on a flag (so that a block
// that failed cannot leave its neighbours waiting forever).
#ifndef TFINVCONV_CHECK_GLOBAL_OFFSET
#define TFINVCONV_CHECK_GLOBAL_OFFSET(offset, end)
#endif
#ifndef TFINVCONV_WHILE_SPINNING
#define TFINVCONV_WHILE_SPINNING()
#endif
#if defined(__CUDACC__)
#define TFINVCONV_UNROLL _Pragma("unroll")
#else
#define TFINVCONV_UNROLL
#endif
#ifndef TFINVCONV_CHECK_ALIGNED16
#define TFINVCONV_CHECK_ALIGNED16(pointer)
#endif

namespace tfinvconv {
namespace gpu {

// ---- Cross-block primitives (device: CUDA atomics; host: the same protocol with GCC atomics).

// Takes the next tile index (tiles are handed out in dependency order).
TFINVCONV_HD inline int TakeTile(int* counter) {
#if defined(__CUDA_ARCH__)
  return atomicAdd(counter, 1);
#else
  return __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
#endif
}

// Spins until a neighbour tile is published; acquire: its pixels are visible afterwards.
TFINVCONV_HD inline void WaitForFlag(int* flag) {
#if defined(__CUDA_ARCH__)
  cuda::atomic_ref<int, cuda::thread_scope_device> ref(*flag);
  while (ref.load(cuda::memory_order_acquire) == 0) __nanosleep(32);
#else
  while (__atomic_load_n(flag, __ATOMIC_ACQUIRE) == 0) {
    TFINVCONV_WHILE_SPINNING();
    std::this_thread::yield();
  }
#endif
}

// Publishes a finished tile; release: everything the block wrote before the barrier that
// precedes this call happens-before a matching WaitForFlag.
TFINVCONV_HD inline void PublishFlag(int* flag) {
#if defined(__CUDA_ARCH__)
  __threadfence();  // belt and braces: the other threads' writes were ordered by the barrier
  cuda::atomic_ref<int, cuda::thread_scope_device> ref(*flag);
  ref.store(1, cuda::memory_order_release);
#else
  __atomic_store_n(flag, 1, __ATOMIC_RELEASE);
#endif
}

// Reads another block's output at L2 (never a stale L1 line).
template <typename T>
TFINVCONV_HD inline T LoadPublished(const T* p) {
#if defined(__CUDA_ARCH__)
  return __ldcg(p);
#else
  return *p;
#endif
}

// Consecutive elements read with one 16-byte load: four floats or two doubles.
template <typename T>
struct alignas(16) Vec16 {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

// Read-only global memory (the prepared weights when they are not in shared memory).
template <typename T>
struct GlobalReader {
  const T* data;
  TFINVCONV_HD T load(int64_t i) const {
#if defined(__CUDA_ARCH__)
    return __ldg(data + i);
#else
    return data[i];
#endif
  }
  TFINVCONV_HD Vec16<T> load16(int64_t i) const {
    TFINVCONV_CHECK_ALIGNED16(data + i);
    Vec16<T> q;
#if defined(__CUDA_ARCH__)
    const float4 raw = __ldg(reinterpret_cast<const float4*>(data + i));
    memcpy(&q, &raw, 16);
#else
    memcpy(&q, data + i, 16);
#endif
    return q;
  }
};

// ---- Arguments (passed to the kernels by value).

template <typename T>
struct PrepareArgs {
  int64_t channels = 0, ksize = 0;
  int64_t row = 0;            // GpuSolvePlan::weight_row
  bool adjoint = false;
  bool matrices_in_shared = false;  // centre and inverse in the block's shared memory
  const T* kernel = nullptr;  // [k][k][C][C], HWIO as the user gave it
  // Global scratch for the two [C][C] double matrices when they are not in shared memory: the
  // masked same-pixel block M (adjoint: transposed) and M^{-1}, built column by column.
  double* centre = nullptr;
  double* inverse = nullptr;
  T* prepared = nullptr;      // [k*k][C out][row]: K transposed per tap (adjoint: not), so an
                              // output channel's weights are contiguous; the centre tap holds
                              // M^{-1} transposed; the row's padding is never read
};

template <typename T>
struct SolveArgs {
  int64_t batch = 0, height = 0, width = 0, channels = 0, ksize = 0;
  Frame frame{};
  GpuSolvePlan plan;
  const T* rhs = nullptr;
  T* out = nullptr;
  const T* prepared = nullptr;
  int* flags = nullptr;    // tiled path: one "done" flag per tile
  int* counter = nullptr;  // tiled path: next tile to take
  unsigned char* work = nullptr;  // fallback: block b's work area is work + b * block_work_bytes
};

// ---- The prepare program: block 0 builds the centre inverse (two stretches); the other blocks
// copy the off-centre taps, kPrepareElementsPerBlock each, so the copy is not one block's serial
// stream of global loads (one block took 64 us at C = 48 on an H100, longer than the solve).

// The prepare program's double-precision matrices (centre block and its inverse) when they live
// in global scratch; otherwise they are the block's shared memory (plan.prepare_shared_bytes).
struct GlobalDoubles {
  double* data;
  TFINVCONV_HD double load(int64_t i) const { return data[i]; }
  TFINVCONV_HD void store(int64_t i, double v) const { data[i] = v; }
};

// K[tap][i][o] as the solve reads it: the user's HWIO kernel, channel axes swapped for the
// adjoint. Indices are int: the plan keeps k*k*C*row below 2^31.
template <typename T>
TFINVCONV_HD inline T KernelEntry(const PrepareArgs<T>& a, int tap, int i, int o) {
  const int c = static_cast<int>(a.channels), e = (tap * c + i) * c + o;
  return a.adjoint ? a.kernel[(tap * c + o) * c + i] : a.kernel[e];
}

// Blocks 1..: copy their share of the off-centre taps into the solve's layout, [tap][o][row].
template <typename T>
TFINVCONV_HD void CopyOffCentreTaps(int t, int threads, int64_t block, const PrepareArgs<T>& a) {
  const int c = static_cast<int>(a.channels), kk = static_cast<int>(a.ksize * a.ksize);
  const int row = static_cast<int>(a.row);
  const int begin = static_cast<int>((block - 1) * kPrepareElementsPerBlock);
  const int end = std::min((kk - 1) * c * c, begin + static_cast<int>(kPrepareElementsPerBlock));
  for (int e = begin + t; e < end; e += threads) {
    const int o = e % c, i = (e / c) % c, tap = e / (c * c);
    a.prepared[(tap * c + o) * row + i] = KernelEntry(a, tap, i, o);
  }
}

// Block 0, stretch 1: the masked centre block into `centre` (double): y = x @ M with M[i][o]
// kept for i <= o (adjoint: i >= o).
template <typename T, class Doubles>
TFINVCONV_HD void LoadCentre(int t, int threads, const PrepareArgs<T>& a, Doubles centre) {
  const int c = static_cast<int>(a.channels), tap = static_cast<int>(a.ksize * a.ksize) - 1;
  for (int e = t; e < c * c; e += threads) {
    const int o = e % c, i = e / c;
    const bool kept = a.adjoint ? i >= o : i <= o;
    centre.store(i * c + o, kept ? static_cast<double>(KernelEntry(a, tap, i, o)) : 0.0);
  }
}

// Stretch 2: column o of M^{-1} solves M v = e_o by substitution (M is triangular), in double.
// A zero or NaN on M's diagonal poisons the column with NaN (no host round trip to report it).
template <typename T, class Doubles>
TFINVCONV_HD void InvertCentreColumns(int t, int threads, const PrepareArgs<T>& a, Doubles centre,
                                      Doubles inverse) {
  const int c = static_cast<int>(a.channels), row = static_cast<int>(a.row);
  const int base = static_cast<int>((a.ksize * a.ksize - 1) * a.channels) * row;
  bool singular = false;
  for (int i = 0; i < c; ++i) singular |= !(std::fabs(centre.load(i * c + i)) > 0.0);
  for (int o = t; o < c; o += threads) {
    for (int step = 0; step < c; ++step) {
      // Upper triangular (forward solve): from the last row up; lower (adjoint): top down.
      const int i = a.adjoint ? step : c - 1 - step;
      double v = i == o ? 1.0 : 0.0;
      const int m_begin = a.adjoint ? 0 : i + 1, m_end = a.adjoint ? i : c;
      for (int m = m_begin; m < m_end; ++m) v -= centre.load(i * c + m) * inverse.load(m * c + o);
      inverse.store(i * c + o, v / centre.load(i * c + i));
    }
    for (int i = 0; i < c; ++i) {
      const T value = static_cast<T>(inverse.load(i * c + o));
      a.prepared[base + o * row + i] = singular ? static_cast<T>(NAN) : value;
    }
  }
}

template <class Block, typename T, class Doubles>
TFINVCONV_HD void PrepareStretches(Block& block, const PrepareArgs<T>& a, Doubles centre,
                                   Doubles inverse) {
  const int threads = block.threads();
  block.run([=](int t) { LoadCentre(t, threads, a, centre); });
  block.barrier();
  block.run([=](int t) { InvertCentreColumns(t, threads, a, centre, inverse); });
}

// The matrices in shared memory when the plan gave the block room for them: each column's
// substitution is a chain of dependent loads, ~10x shorter from shared memory than from L2.
template <class Block, typename T>
TFINVCONV_HD void PrepareProgram(Block& block, const PrepareArgs<T>& a) {
  const int64_t cc = a.channels * a.channels, index = block.index();
  if (index > 0) {  // block-uniform: only block 0 has barriers
    const int threads = block.threads();
    block.run([=](int t) { CopyOffCentreTaps(t, threads, index, a); });
  } else if (a.matrices_in_shared) {
    PrepareStretches(block, a, block.template shared<double>(0, cc),
                     block.template shared<double>(cc * 8, cc));
  } else {
    PrepareStretches(block, a, GlobalDoubles{a.centre}, GlobalDoubles{a.inverse});
  }
}

// ---- The solve program: one block per tile.

// Where a tile lies. Pixel (r, col) of the tile is buffer pixel (r + halo, col + halo).
struct TileCoords {
  int64_t image = 0;         // element offset of the tile's image
  int64_t h0 = 0, w0 = 0;    // first frame pixel
  int64_t rows = 0, cols = 0;  // pixels of the tile inside the image
  int64_t flag = 0;          // index of the tile's done flag
  int64_t row = 0, col = 0;  // tile row and column
};

// Tile `index` in wavefront order: by tile anti-diagonal, then image, then tile row, so every
// tile's top, left and top-left neighbours come before it.
template <typename T>
TFINVCONV_HD TileCoords LocateTile(const SolveArgs<T>& a, int64_t index) {
  const GpuSolvePlan& p = a.plan;
  int64_t diagonal = 0, first_row = 0, length = 1;
  for (;; ++diagonal) {
    first_row = diagonal - (p.tiles_w - 1) > 0 ? diagonal - (p.tiles_w - 1) : 0;
    const int64_t last_row = diagonal < p.tiles_h - 1 ? diagonal : p.tiles_h - 1;
    length = last_row - first_row + 1;
    if (index < a.batch * length) break;
    index -= a.batch * length;
  }
  TileCoords tc;
  const int64_t b = index / length;
  tc.row = first_row + index % length;
  tc.col = diagonal - tc.row;
  tc.image = b * a.height * a.width * a.channels;
  tc.h0 = tc.row * p.tile_h;
  tc.w0 = tc.col * p.tile_w;
  tc.rows = a.height - tc.h0 < p.tile_h ? a.height - tc.h0 : p.tile_h;
  tc.cols = a.width - tc.w0 < p.tile_w ? a.width - tc.w0 : p.tile_w;
  tc.flag = b * p.tiles_per_image() + tc.row * p.tiles_w + tc.col;
  return tc;
}

// Offset of frame pixel (h, w) of the tile's image in rhs/out.
template <typename T>
TFINVCONV_HD inline int64_t PixelOffset(const SolveArgs<T>& a, const TileCoords& tc, int64_t h,
                                        int64_t w) {
  const int64_t offset =
      tc.image + a.frame.origin + h * a.frame.row_stride + w * a.frame.col_stride;
  TFINVCONV_CHECK_GLOBAL_OFFSET(offset, (a.batch * a.height * a.width - 1) * a.channels + 1);
  return offset;
}

// Stretch (thread 0 only): wait until the tiles above, left and above-left are published.
template <typename T>
TFINVCONV_HD void WaitForNeighbours(const SolveArgs<T>& a, const TileCoords& tc) {
  const int64_t w = a.plan.tiles_w;
  if (tc.row > 0) WaitForFlag(a.flags + tc.flag - w);
  if (tc.col > 0) WaitForFlag(a.flags + tc.flag - 1);
  if (tc.row > 0 && tc.col > 0) WaitForFlag(a.flags + tc.flag - w - 1);
}

// Stretch: the tile buffer filled in one coalesced sweep: the halo (k-1 rows above, k-1 columns
// left) with the neighbours' solution, the tile itself with rhs (each pixel is overwritten by its
// solution on its diagonal; reading rhs here keeps global-memory latency off the diagonal loop),
// zeros outside the image. The prepared weights into shared memory when the plan puts them there.
template <typename T, class Buffer, class Weights>
TFINVCONV_HD void StageTile(int t, const SolveArgs<T>& a, const TileCoords& tc, Buffer buffer,
                            bool weights_in_shared, Weights shared_weights) {
  const GpuSolvePlan& p = a.plan;
  const int64_t c = a.channels, halo = p.halo, bw = p.buffer_w;
  const int64_t n = (p.tile_h + halo) * bw * c;
  for (int64_t e = t; e < n; e += p.threads) {
    const int64_t ch = e % c, pixel = e / c, r = pixel / bw, col = pixel % bw;
    const int64_t h = tc.h0 + r - halo, w = tc.w0 + col - halo;
    const bool own = r >= halo && col >= halo;
    T v = T(0);
    if (h >= 0 && w >= 0 && h < a.height && w < a.width) {
      const int64_t offset = PixelOffset(a, tc, h, w) + ch;
      v = own ? a.rhs[offset] : LoadPublished(a.out + offset);
    }
    buffer.store(e, v);
  }
  if (!weights_in_shared) return;
  const int64_t weights = p.prepared_elements(a.ksize, c);
  for (int64_t e = t; e < weights; e += p.threads) shared_weights.store(e, a.prepared[e]);
}

// Pixels of tile diagonal d (local rows first..first+count-1, column d - row).
struct DiagonalRange {
  int64_t first = 0, count = 0;
};
TFINVCONV_HD inline DiagonalRange TileDiagonal(const TileCoords& tc, int64_t d) {
  DiagonalRange r;
  r.first = d - (tc.cols - 1) > 0 ? d - (tc.cols - 1) : 0;
  const int64_t last = d < tc.rows - 1 ? d : tc.rows - 1;
  r.count = last - r.first + 1;
  return r;
}

// Partial sums of a dot product, one per vector lane, so consecutive multiply-adds do not wait on
// each other; summed once at the end of all taps.
template <typename T>
struct PartialSums {
  static constexpr int kSize = Vec16<T>::kSize;
  T part[kSize] = {};
  TFINVCONV_HD T total() const {
    T sum = part[0];
    for (int r = 1; r < kSize; ++r) sum += part[r];
    return sum;
  }
};

// sums += x[x0 + i] * w[w0 + i] over i < n: a pixel's channels (shared by the threads of the
// pixel) against one output channel's weight row. Both are read 16 bytes at a time when n is a
// multiple of the vector size (x0 and w0 are then 16-byte aligned): two vector loads per 4 float
// multiply-adds. kVectors > 0: n is kVectors vectors, known at compile time (no loop overhead).
template <int kVectors, typename T, class Xs, class Ws>
TFINVCONV_HD void AddProducts(PartialSums<T>& sums, const Xs& x, int x0, const Ws& w, int w0,
                              int n) {
  constexpr int kSize = Vec16<T>::kSize;
  const int vectors = kVectors > 0 ? kVectors : (n % kSize ? 0 : n / kSize);
  TFINVCONV_UNROLL
  for (int v = 0; v < vectors; ++v) {
    const Vec16<T> q = x.load16(x0 + v * kSize), u = w.load16(w0 + v * kSize);
    for (int r = 0; r < kSize; ++r) sums.part[r] += q.v[r] * u.v[r];
  }
  if constexpr (kVectors == 0) {  // else n is exactly kVectors vectors
    for (int i = vectors * kSize; i < n; ++i) sums.part[0] += x.load(x0 + i) * w.load(w0 + i);
  }
}

// Channels per pixel: known at compile time in the unrolled kernels, so the work-item index
// splits into (pixel, channel) by a multiply and shift; 64-bit division by a run-time value is
// a long instruction sequence on a GPU and it sat in every work item of every diagonal.
template <int kVectors, typename T>
TFINVCONV_HD inline int PixelChannels(int64_t channels) {
  return kVectors > 0 ? kVectors * Vec16<T>::kSize : static_cast<int>(channels);
}

// Stretch: acc[j][o] = rhs - every off-centre tap, for pixel j of diagonal d, channel o.
// Tile-local indices are int: the plan keeps the tile buffer and the weights below 2^31.
template <int kVectors, typename T, class Buffer, class Acc, class Weights>
TFINVCONV_HD void AccumulateDiagonal(int t, const SolveArgs<T>& a, const TileCoords& tc,
                                     int64_t d, Buffer buffer, Acc acc, Weights weights) {
  const int c = PixelChannels<kVectors, T>(a.channels), k = static_cast<int>(a.ksize);
  const int bw = static_cast<int>(a.plan.buffer_w), row = static_cast<int>(a.plan.weight_row);
  const DiagonalRange range = TileDiagonal(tc, d);
  const int first = static_cast<int>(range.first), di = static_cast<int>(d);
  const int items = static_cast<int>(range.count) * c;
  for (int e = t; e < items; e += a.plan.threads) {
    const int o = e % c, j = e / c, r = first + j, col = di - r;
    // Tap (p, q) reads frame pixel (r + p - (k-1), col + q - (k-1)) = buffer pixel (r+p, col+q);
    // the centre tap's buffer pixel still holds rhs.
    const T own_rhs = buffer.load(((r + k - 1) * bw + col + k - 1) * c + o);
    PartialSums<T> taps_sum;
    for (int p = 0; p < k; ++p) {
      const int taps = p == k - 1 ? k - 1 : k;  // the centre tap is applied in FinishDiagonal
      for (int q = 0; q < taps; ++q) {
        const int src = ((r + p) * bw + col + q) * c;
        const int wt = ((p * k + q) * c + o) * row;
        AddProducts<kVectors>(taps_sum, buffer, src, weights, wt, c);
      }
    }
    acc.store(e, own_rhs - taps_sum.total());
  }
}

// Stretch: x[j][o] = sum_i acc[j][i] * M^{-1}[i][o], into the tile buffer and `out`.
template <int kVectors, typename T, class Buffer, class Acc, class Weights>
TFINVCONV_HD void FinishDiagonal(int t, const SolveArgs<T>& a, const TileCoords& tc, int64_t d,
                                 Buffer buffer, Acc acc, Weights weights) {
  const int c = PixelChannels<kVectors, T>(a.channels), k = static_cast<int>(a.ksize);
  const int halo = static_cast<int>(a.plan.halo), bw = static_cast<int>(a.plan.buffer_w);
  const int row = static_cast<int>(a.plan.weight_row), centre = (k * k - 1) * c * row;
  const DiagonalRange range = TileDiagonal(tc, d);
  const int first = static_cast<int>(range.first), di = static_cast<int>(d);
  const int items = static_cast<int>(range.count) * c;
  for (int e = t; e < items; e += a.plan.threads) {
    const int o = e % c, j = e / c, r = first + j, col = di - r;
    PartialSums<T> sums;
    AddProducts<kVectors>(sums, acc, j * c, weights, centre + o * row, c);
    const T x = sums.total();
    buffer.store(((r + halo) * bw + col + halo) * c + o, x);
    a.out[PixelOffset(a, tc, tc.h0 + r, tc.w0 + col) + o] = x;
  }
}

// The weights the inner loops read: shared memory or global memory.
template <bool kInShared>
struct PickWeights {
  template <class S, class G>
  TFINVCONV_HD static S From(S shared, G) { return shared; }
};
template <>
struct PickWeights<false> {
  template <class S, class G>
  TFINVCONV_HD static G From(S, G global) { return global; }
};

// An array of the block's work area: shared memory, or the block's slice of global scratch.
template <bool kInShared>
struct WorkArray {
  template <typename U, class Block>
  TFINVCONV_HD static auto Get(Block& block, int64_t byte_offset, int64_t count) {
    return block.template shared<U>(byte_offset, count);
  }
};
template <>
struct WorkArray<false> {
  template <typename U, class Block>
  TFINVCONV_HD static auto Get(Block& block, int64_t byte_offset, int64_t count) {
    return block.template work_array<U>(byte_offset, count);
  }
};

// f.template Run<true, true, v>() for v = p.unrolled_vectors when the list holds it, else v = 0.
template <class F>
auto WithUnrolled(const GpuSolvePlan&, const F& f, VectorCounts<>) {
  return f.template Run<true, true, 0>();
}
template <class F, int kFirst, int... kRest>
auto WithUnrolled(const GpuSolvePlan& p, const F& f, VectorCounts<kFirst, kRest...>) {
  if (p.unrolled_vectors == kFirst) return f.template Run<true, true, kFirst>();
  return WithUnrolled(p, f, VectorCounts<kRest...>{});
}

// Calls f.template Run<kWeightsInShared, kTileInShared, kVectors>() for the placement and the
// unrolling the plan chose (a tile in global memory never has its weights in shared memory).
template <class F>
auto WithPlacement(const GpuSolvePlan& p, const F& f) {
  if (!p.tile_in_shared) return f.template Run<false, false, 0>();
  if (!p.weights_in_shared) return f.template Run<false, true, 0>();
  return WithUnrolled(p, f, UnrolledVectorCounts{});
}

// One block: the whole image (blockIdx = image), or persistent over tiles (tiled plans).
template <bool kWeightsInShared, bool kTileInShared, int kVectors, class Block, typename T>
TFINVCONV_HD void SolveProgram(Block& block, const SolveArgs<T>& a) {
  const GpuSolvePlan& p = a.plan;
  const int64_t c = a.channels, k = a.ksize;
  auto buffer = WorkArray<kTileInShared>::template Get<T>(block, p.tile_offset,
                                                          (p.tile_h + p.halo) * p.buffer_w * c);
  auto acc = WorkArray<kTileInShared>::template Get<T>(
      block, p.acc_offset, (p.tile_h < p.tile_w ? p.tile_h : p.tile_w) * c);
  auto shared_weights =
      block.template shared<T>(p.weights_offset, kWeightsInShared ? p.prepared_elements(k, c) : 0);
  auto slot = block.template shared<int>(p.slot_offset, 1);
  const auto weights =
      PickWeights<kWeightsInShared>::From(shared_weights, GlobalReader<T>{a.prepared});
  const int64_t tiles = a.batch * p.tiles_per_image();
  for (;;) {
    int64_t index = block.index();
    if (p.tiled()) {
      block.run([=](int t) { if (t == 0) slot.store(0, TakeTile(a.counter)); });
      block.barrier();
      index = block.uniform(slot, 0);
      if (index >= tiles) return;
    }
    const TileCoords tc = LocateTile(a, index);
    if (p.tiled()) {
      block.run([=](int t) { if (t == 0) WaitForNeighbours(a, tc); });
      block.barrier();
    }
    block.run([=](int t) { StageTile(t, a, tc, buffer, kWeightsInShared, shared_weights); });
    block.barrier();
    for (int64_t d = 0; d < tc.rows + tc.cols - 1; ++d) {
      block.run([=](int t) { AccumulateDiagonal<kVectors>(t, a, tc, d, buffer, acc, weights); });
      block.barrier();
      block.run([=](int t) { FinishDiagonal<kVectors>(t, a, tc, d, buffer, acc, weights); });
      block.barrier();
    }
    if (!p.tiled()) return;
    block.run([=](int t) { if (t == 0) PublishFlag(a.flags + tc.flag); });
  }
}

// The arguments of one call's two launches; `scratch` is plan.scratch_bytes of device memory.
template <typename T>
struct LaunchArgs {
  PrepareArgs<T> prepare;
  SolveArgs<T> solve;
};

template <typename T>
LaunchArgs<T> MakeLaunchArgs(const SolveShape& s, const GpuSolvePlan& plan, const T* rhs,
                             const T* kernel, Corner corner, bool adjoint, T* out, void* scratch) {
  auto* bytes = static_cast<unsigned char*>(scratch);
  LaunchArgs<T> l;
  l.prepare.channels = s.channels;
  l.prepare.ksize = s.ksize;
  l.prepare.row = plan.weight_row;
  l.prepare.matrices_in_shared = plan.prepare_shared_bytes > 0;
  l.prepare.adjoint = adjoint;
  l.prepare.kernel = kernel;
  l.prepare.centre = reinterpret_cast<double*>(bytes + plan.centre_offset);
  l.prepare.inverse = reinterpret_cast<double*>(bytes + plan.inverse_offset);
  l.prepare.prepared = reinterpret_cast<T*>(bytes + plan.prepared_offset);
  l.solve.batch = s.batch;
  l.solve.height = s.height;
  l.solve.width = s.width;
  l.solve.channels = s.channels;
  l.solve.ksize = s.ksize;
  l.solve.frame = MakeFrame(s, corner, adjoint);
  l.solve.plan = plan;
  l.solve.rhs = rhs;
  l.solve.out = out;
  l.solve.prepared = l.prepare.prepared;
  l.solve.flags = reinterpret_cast<int*>(bytes + plan.flags_offset);
  l.solve.counter = reinterpret_cast<int*>(bytes + plan.counter_offset);
  l.solve.work = bytes + plan.work_offset;
  return l;
}

// Bytes from the first tile flag to the end of the counter: zeroed before a tiled solve.
inline int64_t TileStateBytes(const GpuSolvePlan& plan) {
  return plan.counter_offset + static_cast<int64_t>(sizeof(int)) - plan.flags_offset;
}

}  // namespace gpu
}  // namespace tfinvconv

#endif  // TFINVCONV_CORE_INVERSE_CONV_GPU_KERNEL_H_
