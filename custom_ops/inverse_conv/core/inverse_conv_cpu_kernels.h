// The CPU solve's kernels, written once and compiled once per instruction set: inverse_conv_cpu.cc
// includes this file several times, each time under another `#pragma GCC target`, with
//   TFINVCONV_CPU_TARGET         the namespace of this copy (baseline, avx2, avx512, native)
//   TFINVCONV_VECTOR_BYTES       one SIMD register of that instruction set (16, 32 or 64)
//   TFINVCONV_VECTOR_REGISTERS   how many it has (16, or 32 with AVX-512)
// and undefines the three at its end. Deliberately no include guard. Everything here lives in
// tfinvconv::<target>::(anonymous), so the copies never meet; the dispatcher in
// inverse_conv_cpu.cc calls <target>::CausalSolve.

namespace tfinvconv {
namespace TFINVCONV_CPU_TARGET {
namespace {

constexpr int kVectorBytes = TFINVCONV_VECTOR_BYTES;

// One SIMD register's worth of T (GCC/Clang vector extension).
// (Spelled per type: GCC ignores vector_size on an alias template's dependent type.)
template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(kVectorBytes)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(kVectorBytes)));
};
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
constexpr int64_t kLanes = kVectorBytes / sizeof(T);
constexpr int kPixelsPerBlock = 4;  // pixels of one row accumulated together (reuses each weight)
// Output-channel vectors held in registers per pixel: kPixelsPerBlock accumulators and one weight
// per vector, plus the broadcast input, must fit in the register file (4 with 32, 3 with 16).
constexpr int kMaxVecs = TFINVCONV_VECTOR_REGISTERS >= 32 ? 4 : 3;

template <typename T>
inline Vec<T> Load(const T* p) {
  Vec<T> v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void Store(T* p, const Vec<T>& v) {
  __builtin_memcpy(p, &v, sizeof(v));
}

// Everything the tile solves share, prepared once per call. Output channels are padded to whole
// vectors ("padded") with zero weights, so every inner loop runs on full registers.
template <typename T>
struct Plan {
  SolveShape s;
  Frame f;
  int64_t padded = 0;
  std::vector<T> weights;         // [k*k][C in][padded out]; the same-pixel tap is not used
  std::vector<T> centre_inverse;  // [C][padded]: solved pixel = accumulated row @ inverse
};

template <typename T>
Plan<T> MakePlan(const SolveShape& s, const T* kernel, Corner corner, bool adjoint) {
  Plan<T> plan;
  plan.s = s;
  plan.f = MakeFrame(s, corner, adjoint);
  const int64_t k = s.ksize, c = s.channels, lanes = kLanes<T>;
  plan.padded = (c + lanes - 1) / lanes * lanes;
  plan.weights.assign(k * k * c * plan.padded, T(0));
  // The adjoint reads K with its channel axes swapped (A^T), which also turns the same-pixel
  // block from "input <= output" into "input >= output".
  for (int64_t t = 0; t < k * k; ++t)
    for (int64_t i = 0; i < c; ++i)
      for (int64_t o = 0; o < c; ++o)
        plan.weights[(t * c + i) * plan.padded + o] =
            adjoint ? kernel[(t * c + o) * c + i] : kernel[(t * c + i) * c + o];
  std::vector<T> centre(c * c);
  for (int64_t i = 0; i < c; ++i)
    for (int64_t o = 0; o < c; ++o)
      centre[i * c + o] = plan.weights[((k * k - 1) * c + i) * plan.padded + o];
  const std::vector<double> inverse = TriangularInverse(centre.data(), c, adjoint);
  plan.centre_inverse.assign(c * plan.padded, T(0));
  for (int64_t i = 0; i < c; ++i)
    for (int64_t o = 0; o < c; ++o)
      plan.centre_inverse[i * plan.padded + o] = static_cast<T>(inverse[i * c + o]);
  return plan;
}

// acc rows of P consecutive frame pixels (h, w..w+P-1), output vectors [v0, v0+NV):
//   acc -= sum_{p in [p0,p1), q in [q0,q1), i} x(h+p-k+1, w+j+q-k+1, i) * W[p,q,i,:]
// The caller guarantees every pixel read is inside the image and already solved.
template <typename T, int P, int NV>
void AccumulateTaps(const Plan<T>& plan, const T* image, int64_t h, int64_t w, int64_t p0,
                    int64_t p1, int64_t q0, int64_t q1, int64_t v0, T* acc_rows) {
  const int64_t k = plan.s.ksize, c = plan.s.channels, padded = plan.padded;
  constexpr int64_t L = kLanes<T>;
  Vec<T> acc[P][NV];
  for (int j = 0; j < P; ++j)
    for (int v = 0; v < NV; ++v) acc[j][v] = Load(acc_rows + j * padded + (v0 + v) * L);
  for (int64_t p = p0; p < p1; ++p) {
    const T* row = image + plan.f.origin + (h + p - (k - 1)) * plan.f.row_stride;
    for (int64_t q = q0; q < q1; ++q) {
      const T* src[P];
      for (int j = 0; j < P; ++j) src[j] = row + (w + j + q - (k - 1)) * plan.f.col_stride;
      const T* wt = plan.weights.data() + (p * k + q) * c * padded + v0 * L;
      for (int64_t i = 0; i < c; ++i) {
        Vec<T> wv[NV];
        for (int v = 0; v < NV; ++v) wv[v] = Load(wt + i * padded + v * L);
        for (int j = 0; j < P; ++j) {
          const T a = src[j][i];
          for (int v = 0; v < NV; ++v) acc[j][v] -= a * wv[v];
        }
      }
    }
  }
  for (int j = 0; j < P; ++j)
    for (int v = 0; v < NV; ++v) Store(acc_rows + j * padded + (v0 + v) * L, acc[j][v]);
}

// AccumulateTaps for `count` vectors from v0 on, NV <= kMaxVecs of them held in registers.
template <typename T, int P, int NV = kMaxVecs>
void AccumulateGroup(const Plan<T>& plan, const T* image, int64_t h, int64_t w, int64_t p0,
                     int64_t p1, int64_t q0, int64_t q1, int64_t v0, int64_t count,
                     T* acc_rows) {
  if constexpr (NV > 1) {
    if (count < NV) {
      AccumulateGroup<T, P, NV - 1>(plan, image, h, w, p0, p1, q0, q1, v0, count, acc_rows);
      return;
    }
  }
  AccumulateTaps<T, P, NV>(plan, image, h, w, p0, p1, q0, q1, v0, acc_rows);
}

// AccumulateTaps over all output vectors, in register-sized groups.
template <typename T, int P>
void AccumulateAllVectors(const Plan<T>& plan, const T* image, int64_t h, int64_t w, int64_t p0,
                          int64_t p1, int64_t q0, int64_t q1, T* acc_rows) {
  if (p0 >= p1 || q0 >= q1) return;
  const int64_t vectors = plan.padded / kLanes<T>;
  for (int64_t v0 = 0; v0 < vectors; v0 += kMaxVecs)
    AccumulateGroup<T, P>(plan, image, h, w, p0, p1, q0, q1, v0,
                          std::min<int64_t>(kMaxVecs, vectors - v0), acc_rows);
}

// Solves frame rows [h0,h1) x columns [w0,w1) of one image, row by row. Per row ("row
// blocking", math note): first everything the rows above contribute, several pixels at a time
// (independent work, like a GEMM); then, pixel by pixel, the same-row taps and the same-pixel
// triangular block, applied as a multiply by its precomputed inverse.
template <typename T>
void SolveTile(const Plan<T>& plan, const T* rhs, int64_t h0, int64_t h1, int64_t w0,
               int64_t w1, T* image) {
  const int64_t k = plan.s.ksize, c = plan.s.channels, padded = plan.padded;
  constexpr int64_t L = kLanes<T>;
  std::vector<T> acc_rows((w1 - w0) * padded, T(0));
  std::vector<T> solved(padded);
  for (int64_t h = h0; h < h1; ++h) {
    for (int64_t w = w0; w < w1; ++w) {
      const T* src = rhs + plan.f.origin + h * plan.f.row_stride + w * plan.f.col_stride;
      std::copy(src, src + c, acc_rows.data() + (w - w0) * padded);
    }
    // Rows above: taps p < k-1. Pixels near the left edge lose the taps that fall outside.
    const int64_t p0 = std::max<int64_t>(0, k - 1 - h);
    int64_t w = w0;
    for (; w < w1 && w < k - 1; ++w)
      AccumulateAllVectors<T, 1>(plan, image, h, w, p0, k - 1, k - 1 - w, k,
                                 acc_rows.data() + (w - w0) * padded);
    for (; w + kPixelsPerBlock <= w1; w += kPixelsPerBlock)
      AccumulateAllVectors<T, kPixelsPerBlock>(plan, image, h, w, p0, k - 1, 0, k,
                                               acc_rows.data() + (w - w0) * padded);
    for (; w < w1; ++w)
      AccumulateAllVectors<T, 1>(plan, image, h, w, p0, k - 1, 0, k,
                                 acc_rows.data() + (w - w0) * padded);
    // Same row, in order: taps q < k-1 of row p = k-1, then the same pixel.
    for (w = w0; w < w1; ++w) {
      T* acc = acc_rows.data() + (w - w0) * padded;
      AccumulateAllVectors<T, 1>(plan, image, h, w, k - 1, k, std::max<int64_t>(0, k - 1 - w),
                                 k - 1, acc);
      for (int64_t v = 0; v < padded; v += L) {
        Vec<T> sum = {};
        for (int64_t i = 0; i < c; ++i) sum += acc[i] * Load(plan.centre_inverse.data() + i * padded + v);
        Store(solved.data() + v, sum);
      }
      T* dst = image + plan.f.origin + h * plan.f.row_stride + w * plan.f.col_stride;
      std::copy(solved.data(), solved.data() + c, dst);
    }
  }
}

// CausalSolveCpu (inverse_conv.h) for this instruction set.
template <typename T>
void CausalSolve(const SolveShape& s, const T* rhs, const T* kernel, Corner corner, bool adjoint,
                 T* out, const ParallelFor& parallel_for) {
  if (s.num_pixels() == 0) return;
  const int64_t k = s.ksize, c = s.channels, image = s.height * s.width * c;
  const Plan<T> plan = MakePlan(s, kernel, corner, adjoint);

  // Parallelism: whole images when the batch alone keeps the pool busy; otherwise square tiles
  // processed as a wavefront over tile anti-diagonals (tile (r,c) depends on (r-1,c-1),
  // (r-1,c) and (r,c-1) only, because tiles are at least k-1 pixels wide).
  const int64_t tile = s.batch >= 8 ? std::max(s.height, s.width) : std::max<int64_t>(k - 1, 16);
  const int64_t tile_rows = (s.height + tile - 1) / tile, tile_cols = (s.width + tile - 1) / tile;
  // Cost hint for the thread pool, in double and clamped: it can exceed int64 for huge inputs.
  const double cost = 2.0 * k * k * c * plan.padded * std::min(tile, s.height) *
                      std::min(tile, s.width);
  const int64_t cost_per_tile = static_cast<int64_t>(std::min(cost, 1e15));
  for (int64_t d = 0; d < tile_rows + tile_cols - 1; ++d) {
    const int64_t r0 = std::max<int64_t>(0, d - tile_cols + 1), r1 = std::min(d, tile_rows - 1);
    const int64_t per_image = r1 - r0 + 1;
    parallel_for(s.batch * per_image, cost_per_tile, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / per_image, r = r0 + item % per_image, cc = d - r;
        const int64_t h0 = r * tile, w0 = cc * tile;
        SolveTile(plan, rhs + b * image, h0, std::min(h0 + tile, s.height), w0,
                  std::min(w0 + tile, s.width), out + b * image);
      }
    });
  }
}

template void CausalSolve<float>(const SolveShape&, const float*, const float*, Corner, bool,
                                 float*, const ParallelFor&);
template void CausalSolve<double>(const SolveShape&, const double*, const double*, Corner, bool,
                                  double*, const ParallelFor&);

}  // namespace
}  // namespace TFINVCONV_CPU_TARGET
}  // namespace tfinvconv

#undef TFINVCONV_CPU_TARGET
#undef TFINVCONV_VECTOR_BYTES
#undef TFINVCONV_VECTOR_REGISTERS
