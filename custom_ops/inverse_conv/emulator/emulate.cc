// Host emulator of the GPU solve: runs the very programs of inverse_conv_gpu_kernel.h, built with
// g++, and checks them against independent references. No GPU needed (`make gpu-emulate`).
//
// - Threads of a block run one at a time, in a fresh shuffled order at every barrier; each
//   thread runs all the stretches queued since the last barrier before the next thread starts
//   (what a GPU may do when a barrier is missing).
// - Shared memory is reached only through checked accessors: out-of-bounds indices and two
//   threads touching one address inside one stretch (a write and any other access) are errors.
// - Tiled plans run persistent blocks on std::threads with the kernel's own release/acquire flags.
// - The output starts as NaN, so reading a pixel before it is solved poisons the result.
// - Every result is compared with the CPU core and with the serial reference convolution
//   (A x = rhs), or its transpose for the adjoint (A^T u = rhs), in the same precision.
// Also checks the launch plan against the limits of real devices (sm_70 ... sm_90).
//
//   emulate           the full matrix (CI)
//   emulate --quick   a few cases of each path (mutation tests)
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "custom_ops/inverse_conv/core/inverse_conv.h"
#include "custom_ops/inverse_conv/core/inverse_conv_gpu.h"

// Global memory is checked too: every pixel offset inside [0, end), and a block that failed
// stops the blocks spinning on its flags.
namespace tfinvconv {
std::atomic<bool> g_emulation_failed{false};
}  // namespace tfinvconv
#define TFINVCONV_CHECK_GLOBAL_OFFSET(offset, end)                                        \
  if ((offset) < 0 || (offset) >= (end))                                                  \
    throw std::runtime_error("global pixel offset " + std::to_string(offset) + " outside [0, " + \
                             std::to_string(end) + ")");
#define TFINVCONV_WHILE_SPINNING()                                                         \
  if (::tfinvconv::g_emulation_failed.load())                                              \
    throw std::runtime_error("a neighbour tile's block failed");
#define TFINVCONV_CHECK_ALIGNED16(pointer)                                                 \
  if (reinterpret_cast<uintptr_t>(pointer) % 16)                                           \
    throw std::runtime_error("misaligned 16-byte load from global memory");
#include "custom_ops/inverse_conv/core/inverse_conv_gpu_kernel.h"

namespace tfinvconv {
namespace {

// Who touched each shared-memory byte address in the current stretch.
class AccessTracker {
 public:
  explicit AccessTracker(int64_t bytes)
      : writer_(bytes, -1), reader_(bytes, -1), write_epoch_(bytes, -1), read_epoch_(bytes, -1) {}

  void Read(int64_t address, int thread) {
    if (write_epoch_[address] == epoch_ && writer_[address] != thread)
      Conflict("read after another thread's write", address);
    if (read_epoch_[address] != epoch_) {
      read_epoch_[address] = epoch_;
      reader_[address] = thread;
    } else if (reader_[address] != thread) {
      reader_[address] = kManyReaders;
    }
  }

  void Write(int64_t address, int thread) {
    if (write_epoch_[address] == epoch_ && writer_[address] != thread)
      Conflict("two threads wrote", address);
    if (read_epoch_[address] == epoch_ && reader_[address] != thread)
      Conflict("write after another thread's read", address);
    write_epoch_[address] = epoch_;
    writer_[address] = thread;
  }

  void NextStretch() { ++epoch_; }
  int64_t conflicts() const { return conflicts_; }
  const std::string& first_conflict() const { return first_; }

 private:
  static constexpr int kManyReaders = -2;
  void Conflict(const char* what, int64_t address) {
    if (conflicts_++ == 0)
      first_ = std::string(what) + " at shared byte " + std::to_string(address) + " in stretch " +
               std::to_string(epoch_);
  }
  std::vector<int> writer_, reader_;
  std::vector<int64_t> write_epoch_, read_epoch_;
  int64_t epoch_ = 0, conflicts_ = 0;
  std::string first_;
};

template <typename U>
struct CheckedShared {
  unsigned char* arena;
  int64_t offset, count;
  AccessTracker* tracker;
  const int* thread;  // the thread the block is running now

  int64_t Address(int64_t i) const {
    if (i < 0 || i >= count)
      throw std::runtime_error("shared-memory index " + std::to_string(i) + " outside [0, " +
                               std::to_string(count) + ")");
    return offset + i * static_cast<int64_t>(sizeof(U));
  }
  U load(int64_t i) const {
    const int64_t address = Address(i);
    tracker->Read(address, *thread);
    U v;
    std::memcpy(&v, arena + address, sizeof(U));
    return v;
  }
  // The GPU's 16-byte vector load: it must be 16-byte aligned or the hardware faults.
  gpu::Vec16<U> load16(int64_t i) const {
    constexpr int kSize = gpu::Vec16<U>::kSize;
    const int64_t address = Address(i);
    Address(i + kSize - 1);
    if (reinterpret_cast<uintptr_t>(arena + address) % 16)
      throw std::runtime_error("misaligned 16-byte load at byte " + std::to_string(address));
    gpu::Vec16<U> q;
    for (int r = 0; r < kSize; ++r) q.v[r] = load(i + r);
    return q;
  }
  void store(int64_t i, U v) const {
    const int64_t address = Address(i);
    tracker->Write(address, *thread);
    std::memcpy(arena + address, &v, sizeof(U));
  }
};

// The executor the programs run on here (see the file comment).
class HostBlock {
 public:
  // `work` is this block's slice of global scratch (work_bytes; fallback plans only).
  HostBlock(int64_t shared_bytes, unsigned char* work, int64_t work_bytes, int threads,
            int64_t index, uint32_t seed)
      : arena_(shared_bytes + 1, 0xAB),  // junk, as on a GPU
        tracker_(shared_bytes + 1),
        work_tracker_(work_bytes + 1),
        work_(work),
        threads_(threads),
        index_(index),
        rng_(seed),
        shared_bytes_(shared_bytes),
        work_bytes_(work_bytes) {}

  template <typename U>
  CheckedShared<U> shared(int64_t byte_offset, int64_t count) {
    CheckRegion("shared memory", byte_offset, count * sizeof(U), shared_bytes_);
    return {arena_.data(), byte_offset, count, &tracker_, &current_};
  }
  // Checked like shared memory: only this block touches its slice, and only between barriers.
  template <typename U>
  CheckedShared<U> work_array(int64_t byte_offset, int64_t count) {
    CheckRegion("the work slice", byte_offset, count * sizeof(U), work_bytes_);
    return {work_, byte_offset, count, &work_tracker_, &current_};
  }
  template <class Stretch>
  void run(Stretch stretch) { queued_.emplace_back(stretch); }
  void barrier() {
    std::vector<int> order(threads_);
    for (int t = 0; t < threads_; ++t) order[t] = t;
    std::shuffle(order.begin(), order.end(), rng_);
    for (int t : order) {
      current_ = t;
      for (const auto& stretch : queued_) stretch(t);
    }
    queued_.clear();
    tracker_.NextStretch();
    work_tracker_.NextStretch();
  }
  int threads() const { return threads_; }
  int64_t index() const { return index_; }
  template <typename U>
  U uniform(const CheckedShared<U>& a, int64_t i) {
    U v;
    std::memcpy(&v, arena_.data() + a.Address(i), sizeof(U));
    return v;
  }
  int64_t conflicts() const { return tracker_.conflicts() + work_tracker_.conflicts(); }
  std::string first_conflict() const {
    return tracker_.conflicts() ? tracker_.first_conflict() : work_tracker_.first_conflict();
  }

 private:
  static void CheckRegion(const char* where, int64_t offset, int64_t bytes, int64_t limit) {
    if (offset < 0 || offset + bytes > limit)
      throw std::runtime_error(std::string("array at byte ") + std::to_string(offset) + " of " +
                               where + " runs past the plan's " + std::to_string(limit) + " bytes");
  }
  std::vector<unsigned char> arena_;
  AccessTracker tracker_, work_tracker_;
  unsigned char* work_;
  std::vector<std::function<void(int)>> queued_;
  int threads_;
  int64_t index_;
  std::mt19937 rng_;
  int64_t shared_bytes_, work_bytes_;
  int current_ = -1;
};

struct Emulation {
  std::string error;  // empty when the run itself went through
  int64_t conflicts = 0;
  std::string first_conflict;
  GpuSolvePlan plan;
};

// Runs one block program to its end (the kernel's exit is a barrier too).
template <class Program>
void RunBlock(HostBlock& block, Program program, Emulation* e, std::atomic<int64_t>* conflicts,
              std::string* first) {
  try {
    program(block);
    block.barrier();
  } catch (const std::exception& ex) {
    static std::mutex mutex;
    std::lock_guard<std::mutex> lock(mutex);
    if (!g_emulation_failed.exchange(true)) e->error = ex.what();
  }
  if (block.conflicts() > 0 && conflicts->fetch_add(block.conflicts()) == 0)
    *first = block.first_conflict();
}

template <typename T>
struct ProgramRun {
  HostBlock& block;
  const gpu::SolveArgs<T>& args;
  template <bool kWeightsInShared, bool kTileInShared, int kVectors>
  int Run() const {
    gpu::SolveProgram<kWeightsInShared, kTileInShared, kVectors>(block, args);
    return 0;
  }
};

// Emulates CausalSolveGpu: the same plan, arguments, launches and scratch layout.
template <typename T>
Emulation EmulateSolve(const SolveShape& s, const GpuLimits& limits, const T* rhs, const T* kernel,
                       Corner corner, bool adjoint, T* out, uint32_t seed) {
  Emulation e;
  e.plan = PlanGpuSolve(s, sizeof(T), limits);
  if (!e.plan.feasible) {
    e.error = "no feasible plan";
    return e;
  }
  std::vector<double> scratch(e.plan.scratch_bytes / sizeof(double) + 1, NAN);
  const gpu::LaunchArgs<T> args =
      gpu::MakeLaunchArgs(s, e.plan, rhs, kernel, corner, adjoint, out, scratch.data());
  std::atomic<int64_t> conflicts{0};
  std::string first;
  g_emulation_failed = false;
  std::vector<int64_t> prepare_order(PrepareGrid(s.channels, s.ksize));
  for (size_t i = 0; i < prepare_order.size(); ++i) prepare_order[i] = static_cast<int64_t>(i);
  std::shuffle(prepare_order.begin(), prepare_order.end(), std::mt19937(seed));
  for (int64_t index : prepare_order) {  // independent blocks, in shuffled order
    HostBlock block(e.plan.prepare_shared_bytes, nullptr, 0, kPrepareThreads, index, seed);
    RunBlock(block, [&](HostBlock& b) { gpu::PrepareProgram(b, args.prepare); }, &e, &conflicts,
             &first);
  }
  if (e.plan.tiled()) std::memset(args.solve.flags, 0, gpu::TileStateBytes(e.plan));
  const GpuSolvePlan& p = e.plan;
  auto solve_block = [&](int64_t index) {
    HostBlock block(p.shared_bytes, args.solve.work + index * p.block_work_bytes,
                    p.block_work_bytes, p.threads, index, seed + 1 + static_cast<uint32_t>(index));
    RunBlock(block, [&](HostBlock& b) { gpu::WithPlacement(p, ProgramRun<T>{b, args.solve}); },
             &e, &conflicts, &first);
  };
  if (p.tiled()) {  // a few persistent blocks, truly concurrent
    std::vector<std::thread> blocks;
    for (int64_t i = 0; i < std::min<int64_t>(p.grid, 3); ++i) blocks.emplace_back(solve_block, i);
    for (auto& b : blocks) b.join();
  } else {  // one block per image, in shuffled order
    std::vector<int64_t> order(p.grid);
    for (int64_t i = 0; i < p.grid; ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), std::mt19937(seed));
    for (int64_t i : order) solve_block(i);
  }
  e.conflicts = conflicts;
  e.first_conflict = first;
  return e;
}

// ---- References.

// A^T applied to u: the transpose of CausalConvReference, written as its scatter.
template <typename T>
void CausalConvTransposeReference(const SolveShape& s, const T* u, const T* kernel, Corner corner,
                                  T* z) {
  const int64_t k = s.ksize, c = s.channels, image = s.height * s.width * c;
  const Frame f = MakeFrame(s, corner, /*adjoint=*/false);
  std::fill(z, z + s.num_pixels() * c, T(0));
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.height; ++h)
      for (int64_t w = 0; w < s.width; ++w)
        for (int64_t o = 0; o < c; ++o) {
          const T g = u[b * image + f.origin + h * f.row_stride + w * f.col_stride + o];
          for (int64_t p = 0; p < k; ++p)
            for (int64_t q = 0; q < k; ++q) {
              const int64_t hh = h + p - (k - 1), ww = w + q - (k - 1);
              if (hh < 0 || ww < 0) continue;
              for (int64_t i = 0; i < c; ++i) {
                if (p == k - 1 && q == k - 1 && i > o) continue;  // the mask
                z[b * image + f.origin + hh * f.row_stride + ww * f.col_stride + i] +=
                    kernel[((p * k + q) * c + i) * c + o] * g;
              }
            }
        }
}

template <typename T>
std::vector<T> RandomKernel(std::mt19937& rng, int64_t k, int64_t c) {
  std::normal_distribution<double> normal(0.0, 0.3 / (k * std::sqrt(static_cast<double>(c))));
  std::uniform_real_distribution<double> diagonal(0.6, 1.4);
  std::vector<T> kernel(k * k * c * c);
  for (auto& v : kernel) v = static_cast<T>(normal(rng));
  T* centre = kernel.data() + (k * k - 1) * c * c;
  for (int64_t i = 0; i < c; ++i)
    centre[i * c + i] = static_cast<T>((i % 2 ? -1 : 1) * diagonal(rng));
  return kernel;
}

double RelativeError(const std::vector<double>& a, const std::vector<double>& b) {
  double diff = 0, scale = 1;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::fmax(diff, std::fabs(a[i] - b[i]));  // NaN makes fmax pick the other: test it
    if (std::isnan(a[i]) || std::isnan(b[i])) return INFINITY;
    scale = std::fmax(scale, std::fabs(b[i]));
  }
  return diff / scale;
}

template <typename T>
std::vector<double> AsDouble(const std::vector<T>& v) {
  return std::vector<double>(v.begin(), v.end());
}

const char* kCornerNames[] = {"top_left", "top_right", "bottom_left", "bottom_right"};

enum class Path { kWholeImage, kTiled, kGlobalFallback };

Path PathOf(const GpuSolvePlan& p) {
  return !p.tile_in_shared ? Path::kGlobalFallback : p.tiled() ? Path::kTiled : Path::kWholeImage;
}

struct Case {
  SolveShape shape;
  Corner corner;
  bool adjoint;
  GpuLimits limits;
  Path expect;
};

struct Totals {
  int cases = 0, failures = 0, tiled = 0, whole = 0, fallback = 0, shared_weights = 0;
  double worst_cpu = 0, worst_reference = 0;
  std::set<int> unrolled;  // the kernels' compile-time vectors per pixel that ran
  int tiled_unrolled = 0;
  int prepare_global = 0;  // cases whose prepare kernel kept its matrices in global memory
};

// Runs one case; prints a line when it fails (or always with verbose).
template <typename T>
void RunCase(const Case& cs, uint32_t seed, double tolerance, Totals* totals) {
  const SolveShape& s = cs.shape;
  std::mt19937 rng(seed);
  const int64_t n = s.num_pixels() * s.channels;
  std::vector<T> rhs(n), cpu(n), back(n);
  std::vector<T> emulated(n, static_cast<T>(NAN));
  std::normal_distribution<double> normal;
  for (auto& v : rhs) v = static_cast<T>(normal(rng));
  const std::vector<T> kernel = RandomKernel<T>(rng, s.ksize, s.channels);
  const Emulation e = EmulateSolve(s, cs.limits, rhs.data(), kernel.data(), cs.corner, cs.adjoint,
                                   emulated.data(), seed);
  CausalSolveCpu(s, rhs.data(), kernel.data(), cs.corner, cs.adjoint, cpu.data(),
                 [](int64_t total, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
                   fn(0, total);
                 });
  if (cs.adjoint)
    CausalConvTransposeReference(s, emulated.data(), kernel.data(), cs.corner, back.data());
  else
    CausalConvReference(s, emulated.data(), kernel.data(), cs.corner, back.data());
  const double err_cpu = RelativeError(AsDouble(emulated), AsDouble(cpu));
  const double err_ref = RelativeError(AsDouble(back), AsDouble(rhs));
  std::string problem = e.error;
  if (problem.empty() && e.conflicts > 0)
    problem = std::to_string(e.conflicts) + " shared-memory conflicts (missing barrier?): " +
              e.first_conflict;
  if (problem.empty() && e.plan.feasible && PathOf(e.plan) != cs.expect)
    problem = "the plan took another path than the case is meant to test";
  if (problem.empty() && !(err_cpu <= tolerance && err_ref <= tolerance))
    problem = "error vs CPU core " + std::to_string(err_cpu) + ", vs reference " +
              std::to_string(err_ref) + " (tolerance " + std::to_string(tolerance) + ")";
  ++totals->cases;
  const Path path = PathOf(e.plan);
  (path == Path::kTiled ? totals->tiled : path == Path::kWholeImage ? totals->whole
                                                                     : totals->fallback) += 1;
  totals->shared_weights += e.plan.weights_in_shared;
  if (e.plan.unrolled_vectors) totals->unrolled.insert(e.plan.unrolled_vectors);
  totals->tiled_unrolled += path == Path::kTiled && e.plan.unrolled_vectors;
  totals->prepare_global += e.plan.prepare_shared_bytes == 0;
  if (problem.empty()) {
    totals->worst_cpu = std::fmax(totals->worst_cpu, err_cpu);
    totals->worst_reference = std::fmax(totals->worst_reference, err_ref);
    return;
  }
  ++totals->failures;
  if (totals->failures <= 20)
    std::printf("FAIL %s B=%lld H=%lld W=%lld C=%lld k=%lld %s%s tiles=%lldx%lld: %s\n",
                sizeof(T) == 4 ? "float32" : "float64", (long long)s.batch, (long long)s.height,
                (long long)s.width, (long long)s.channels, (long long)s.ksize,
                kCornerNames[static_cast<int>(cs.corner)], cs.adjoint ? " adjoint" : "",
                (long long)e.plan.tiles_h, (long long)e.plan.tiles_w, problem.c_str());
}

// ---- Devices (CUDA programming guide, compute capability tables; SM counts of common parts).
struct Device {
  const char* name;
  GpuLimits limits;
};
std::vector<Device> Devices() {
  auto make = [](int64_t optin_kb, int64_t per_sm_kb, int threads_per_sm, int sms) {
    GpuLimits l;
    l.max_threads_per_block = 1024;
    l.max_shared_per_block = optin_kb * 1024;
    l.shared_per_sm = per_sm_kb * 1024;
    l.max_threads_per_sm = threads_per_sm;
    l.sm_count = sms;
    return l;
  };
  return {{"sm_70 V100", make(96, 96, 2048, 80)},    {"sm_75 T4", make(64, 64, 1024, 40)},
          {"sm_80 A100", make(163, 164, 2048, 108)}, {"sm_86 A40", make(99, 100, 1536, 84)},
          {"sm_89 L40", make(99, 100, 1536, 142)},   {"sm_90 H100", make(227, 228, 2048, 132)}};
}

// Limits under which the plan must tile an image with tiles of `side` pixels.
GpuLimits LimitsForTile(const SolveShape& s, int64_t elem, int64_t side) {
  GpuSolvePlan p;
  GpuLimits l = Devices().back().limits;
  l.max_shared_per_block = plan_detail::LayoutShared(s, elem, side, side, false, true, &p);
  return l;
}

// Limits under which not even the smallest tile fits: the global-memory fallback.
GpuLimits LimitsForFallback() {
  GpuLimits l = Devices().back().limits;
  l.max_shared_per_block = 16;  // the tile index slot only
  return l;
}

// ---- The plan against device limits.
int CheckPlans() {
  int failures = 0;
  auto fail = [&](const std::string& what, const Device& d, const SolveShape& s, int64_t elem) {
    if (failures++ < 20)
      std::printf("PLAN FAIL %s: %s B=%lld H=%lld W=%lld C=%lld k=%lld elem=%lld\n", d.name,
                  what.c_str(), (long long)s.batch, (long long)s.height, (long long)s.width,
                  (long long)s.channels, (long long)s.ksize, (long long)elem);
  };
  int plans = 0;
  const int64_t sizes[][2] = {{1, 1}, {5, 3}, {8, 8}, {16, 16}, {32, 32}, {64, 64},
                              {128, 128}, {256, 256}, {17, 300}, {300, 17}};
  for (const Device& d : Devices())
    for (int64_t elem : {4, 8})
      for (int64_t b : {1, 64, 100})
        for (const auto& hw : sizes)
          for (int64_t c : {1, 3, 12, 24, 48, 96})
            for (int64_t k : {1, 2, 3, 5, 11, 32}) {
              const SolveShape s{b, hw[0], hw[1], c, k};
              const GpuSolvePlan p = PlanGpuSolve(s, elem, d.limits);
              ++plans;
              if (!p.feasible) {
                fail("infeasible", d, s, elem);
                continue;
              }
              if (p.threads % 32 || p.threads < 32 || p.threads > d.limits.max_threads_per_block ||
                  p.threads > kMaxSolveThreads)
                fail("threads " + std::to_string(p.threads), d, s, elem);
              if (p.shared_bytes > d.limits.max_shared_per_block)
                fail("shared bytes " + std::to_string(p.shared_bytes), d, s, elem);
              const int64_t buffer = (p.tile_h + p.halo) * (p.tile_w + p.halo) * c * elem;
              const int64_t work_end = p.acc_offset + std::min(p.tile_h, p.tile_w) * c * elem;
              const int64_t weights =
                  p.weights_in_shared ? p.prepared_elements(k, c) * elem : 0;
              if (p.prepare_shared_bytes > kDefaultSharedLimit ||
                  (p.prepare_shared_bytes && p.prepare_shared_bytes < 2 * c * c * 8))
                fail("prepare shared bytes " + std::to_string(p.prepare_shared_bytes), d, s, elem);
              if (p.weight_row < c || p.weight_row * elem % 32 != 16)
                fail("weight row " + std::to_string(p.weight_row), d, s, elem);
              if (p.acc_offset < buffer ||
                  (p.tile_in_shared ? p.weights_offset < work_end
                                    : p.block_work_bytes < work_end || p.weights_in_shared) ||
                  p.slot_offset < p.weights_offset + weights || p.slot_offset + 4 > p.shared_bytes ||
                  (p.acc_offset | p.weights_offset | p.slot_offset | p.block_work_bytes) % 16)
                fail("work/shared layout overlaps or misaligned", d, s, elem);
              if (!p.tile_in_shared && p.tiled()) fail("global fallback must not tile", d, s, elem);
              if (p.tiles_h * p.tile_h < s.height || (p.tiles_h - 1) * p.tile_h >= s.height ||
                  p.tiles_w * p.tile_w < s.width || (p.tiles_w - 1) * p.tile_w >= s.width)
                fail("tiles do not cover the image exactly", d, s, elem);
              if ((p.tiles_h > 1 && p.tile_h < k - 1) || (p.tiles_w > 1 && p.tile_w < k - 1))
                fail("tile narrower than k-1", d, s, elem);
              if (p.grid < 1 || p.grid > b * p.tiles_per_image())
                fail("grid " + std::to_string(p.grid), d, s, elem);
              if (p.inverse_offset < c * c * 8 || p.prepared_offset < p.inverse_offset + c * c * 8 ||
                  p.flags_offset < p.prepared_offset + p.prepared_elements(k, c) * elem ||
                  p.counter_offset < p.flags_offset + (p.tiled() ? b * p.tiles_per_image() * 4 : 0) ||
                  p.work_offset < p.counter_offset + 4 ||
                  p.scratch_bytes < p.work_offset + p.grid * p.block_work_bytes ||
                  (p.flags_offset | p.work_offset) % 16)
                fail("scratch layout", d, s, elem);
            }
  // Every Glow CIFAR-10 level and Inverse-Flow's 16..64 images take the whole-image path on
  // every device (float32); 256^2 is tiled everywhere.
  for (const Device& d : Devices()) {
    const SolveShape whole[] = {{64, 32, 32, 12, 3}, {64, 16, 16, 24, 3}, {64, 8, 8, 48, 3},
                                {100, 16, 16, 12, 3}, {100, 32, 32, 12, 3}, {100, 16, 16, 12, 11}};
    for (const SolveShape& s : whole)
      if (PathOf(PlanGpuSolve(s, 4, d.limits)) != Path::kWholeImage)
        fail("expected the whole-image path", d, s, 4);
    const SolveShape big{100, 256, 256, 12, 3};
    if (PathOf(PlanGpuSolve(big, 4, d.limits)) != Path::kTiled)
      fail("expected the tiled path", d, big, 4);
  }
  std::printf("launch plans: %d checked against %zu devices, %d failures\n", plans,
              Devices().size(), failures);
  return failures;
}

// ---- The solve matrix.
std::vector<Case> Cases(bool quick) {
  std::vector<Case> cases;
  const GpuLimits h100 = Devices().back().limits;
  // 56: the prepare kernel's matrices no longer fit its shared memory (global path).
  const int64_t channels[] = {1, 2, 3, 5, 8, 12, 16, 48, 56};
  const int64_t ksizes[] = {1, 2, 3, 4, 5, 7, 11};
  // --quick (the mutation tests): a sample that still runs every path and every unrolled kernel
  // (2 and 12 vectors: C = 8 and 48; tiled and unrolled: C = 2, k = 1), so a broken copy of the
  // kernel fails on its results, never on the coverage check alone.
  const std::set<std::pair<int64_t, int64_t>> quick_pairs = {
      {1, 1}, {2, 1}, {2, 3}, {3, 5}, {5, 11}, {8, 3}, {12, 2}, {16, 4}, {48, 2}, {48, 7}};
  int n = 0;
  for (int64_t c : channels)
    for (int64_t k : ksizes) {
      ++n;
      if ((quick && !quick_pairs.count({c, k})) || (c > 48 && k > 2)) continue;
      const bool big = c * c * k * k > 2000;
      // Whole image: non-square, batch 1 or several; every corner and direction for small
      // problems, two corners per direction for big ones.
      const SolveShape whole{1 + n % 3, big ? k + 1 : k + 3, big ? k + 2 : k + 5, c, k};
      for (int corner = 0; corner < 4; ++corner)
        for (bool adjoint : {false, true}) {
          if (big && (corner + adjoint + n) % 2) continue;
          cases.push_back({whole, static_cast<Corner>(corner), adjoint, h100, Path::kWholeImage});
        }
      // Global-memory fallback: one corner per direction.
      for (bool adjoint : {false, true})
        cases.push_back({whole, static_cast<Corner>((n + 2 * adjoint) % 4), adjoint,
                         LimitsForFallback(), Path::kGlobalFallback});
      // Tiled: forced by a shared-memory limit that only fits a small tile (>= k-1 wide).
      if (c > 12 || k > 7) continue;
      const int64_t side = std::max<int64_t>(k - 1, 2);
      const SolveShape tiled{1 + (n + 1) % 2, 3 * side + 1, 2 * side + 3, c, k};
      const GpuLimits limits = LimitsForTile(tiled, 8, side);
      for (int corner = 0; corner < 4; ++corner)
        cases.push_back({tiled, static_cast<Corner>(corner), corner % 2 == 1, limits, Path::kTiled});
    }
  return cases;
}

// A zero or NaN on the same-pixel diagonal cannot be reported without a host round trip: the
// whole output must be NaN instead (never a plausible-looking answer).
int CheckSingularKernels() {
  int failures = 0;
  const SolveShape s{2, 5, 4, 3, 2};
  std::mt19937 rng(5);
  for (double bad : {0.0, static_cast<double>(NAN)})
    for (bool adjoint : {false, true}) {
      std::vector<double> kernel = RandomKernel<double>(rng, 2, 3);
      kernel[(4 - 1) * 9 + 1 * 3 + 1] = bad;  // centre tap, channel 1's diagonal
      std::vector<double> rhs(s.num_pixels() * 3, 1.0), out(rhs.size(), 0.0);
      const Emulation e = EmulateSolve(s, Devices().back().limits, rhs.data(), kernel.data(),
                                       Corner::kTopLeft, adjoint, out.data(), 3);
      const bool all_nan = std::all_of(out.begin(), out.end(), [](double v) { return std::isnan(v); });
      if (!e.error.empty() || !all_nan) {
        ++failures;
        std::printf("FAIL singular kernel (diagonal %g, adjoint %d): output not all NaN\n", bad,
                    adjoint);
      }
    }
  return failures;
}

int Main(bool quick) {
  const CpuPathChoice& cpu_path = ChosenCpuPath();
  if (!cpu_path.error.empty()) {
    std::printf("%s\n", cpu_path.error.c_str());
    return 2;
  }
  std::printf("CPU core path: %s\n", cpu_path.name.c_str());  // the one compared against
  int failures = (quick ? 0 : CheckPlans()) + CheckSingularKernels();
  const std::vector<Case> cases = Cases(quick);
  Totals t64, t32;
  uint32_t seed = 1;
  for (const Case& cs : cases) RunCase<double>(cs, seed++, 1e-10, &t64);
  // float32: the same cases; the plan is recomputed for 4-byte elements (tiled cases keep their
  // limits, which only grow the tile).
  for (const Case& cs : cases) {
    if (cs.shape.channels > 16 && cs.expect != Path::kWholeImage) continue;
    Case c32 = cs;
    if (cs.expect == Path::kTiled)
      c32.limits = LimitsForTile(cs.shape, 4, std::max<int64_t>(cs.shape.ksize - 1, 2));
    RunCase<float>(c32, seed++, 2e-4, &t32);
  }
  for (const auto& [name, t] : {std::pair<const char*, Totals&>{"float64", t64}, {"float32", t32}})
    std::printf("%s: %d cases (%d whole-image, %d tiled, %d global fallback, %d with weights in "
                "shared memory), %d failures; worst relative error vs CPU core %.2e, vs "
                "reference %.2e\n",
                name, t.cases, t.whole, t.tiled, t.fallback, t.shared_weights, t.failures,
                t.worst_cpu, t.worst_reference);
  failures += t64.failures + t32.failures;
  // Every unrolled kernel must have run here, or a wrong one could ship untested.
  std::string missing;
  for (int v : UnrolledVectorCounts::kValues)
    if (!t64.unrolled.count(v) && !t32.unrolled.count(v)) missing += " " + std::to_string(v);
  std::printf("unrolled channel loops emulated for %zu + %zu vector counts (float64 + float32), "
              "%d tiled cases; prepare matrices in global memory: %d cases%s\n",
              t64.unrolled.size(), t32.unrolled.size(), t64.tiled_unrolled + t32.tiled_unrolled,
              t64.prepare_global + t32.prepare_global,
              missing.empty() ? "" : (", NOT for:" + missing).c_str());
  failures += !missing.empty() || t64.tiled_unrolled + t32.tiled_unrolled == 0 ||
              (!quick && t64.prepare_global + t32.prepare_global == 0);
  std::printf(failures ? "GPU EMULATION FAILED\n" : "GPU emulation passed\n");
  return failures ? 1 : 0;
}

}  // namespace
}  // namespace tfinvconv

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  return tfinvconv::Main(quick);
}
