// Bodies of the loops declared in loops.h. Each public function is a GCC
// `target_clones` wrapper around an always-inline template, so the template is compiled
// separately for every ISA in kClones and nothing else in the library changes ISA.
//
// Reductions keep 16 independent lane accumulators: vectorized without -ffast-math, and
// the summation order is fixed by the code, not by the thread count or the ISA picked.
#include "loops.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__SSE2__)
#include <emmintrin.h>
#define GN_STREAMING_STORES 1
#endif

#include "../plan.h"

namespace groupnorm_ext {
namespace cpu {
namespace {

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define GN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define GN_CLONES
#endif
#define GN_INLINE __attribute__((always_inline)) inline
// The same for the lambdas the public functions pass to write_streamed: a lambda GCC keeps out
// of line is compiled once for the baseline ISA (no clone), which costs the clone's wide
// vectors and FMA, and then rounds differently from the inlined copies.
#define GN_LAMBDA_INLINE __attribute__((always_inline))

template <typename acc_t, typename T>
GN_INLINE acc_t load(const T* p) {
  return static_cast<acc_t>(*p);
}

// The reductions are written with GCC vector types: 8 doubles per vector, two vectors
// (16 lanes, two independent add chains) per accumulator. Every clone lowers them to its
// widest registers (one zmm, two ymm, four xmm); auto-vectorizing the equivalent scalar
// loops gave scalar code for loops with two accumulators.
typedef double vd8 __attribute__((vector_size(64), aligned(8)));
typedef float vf8 __attribute__((vector_size(32), aligned(4)));
typedef uint32_t vu8 __attribute__((vector_size(32), aligned(4)));
typedef uint16_t vh8 __attribute__((vector_size(16), aligned(2)));

// Eight consecutive values as doubles.
GN_INLINE vd8 load8(const double* p) {
  vd8 v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
GN_INLINE vd8 load8(const float* p) {
  vf8 v;
  __builtin_memcpy(&v, p, sizeof(v));
  return __builtin_convertvector(v, vd8);
}
GN_INLINE vd8 load8(const c10::BFloat16* p) {  // bfloat16 = the upper half of a float
  vh8 h;
  __builtin_memcpy(&h, p, sizeof(h));
  const vu8 bits = __builtin_convertvector(h, vu8) << 16;
  vf8 f;
  __builtin_memcpy(&f, &bits, sizeof(f));
  return __builtin_convertvector(f, vd8);
}
GN_INLINE vd8 load8(const c10::Half* p) {
  float f[8];
  for (int l = 0; l < 8; ++l) f[l] = static_cast<float>(p[l]);
  return load8(f);
}

// Fixed pairwise reduction of 16 double lanes (two vectors): lane l of the sum of halves
// each step, a + b, then 4 + 4, 2 + 2, 1 + 1. Written with vector halves rather than a loop
// over an array: GCC kept that loop rolled and went through the stack, which cost more than
// the data on short runs (the channels of small tensors).
typedef double vd4 __attribute__((vector_size(32), aligned(8)));
typedef double vd2 __attribute__((vector_size(16), aligned(8)));
GN_INLINE reduce_t reduce_vectors(vd8 a, vd8 b) {
  const vd8 s8 = a + b;
  const vd4 s4 = __builtin_shufflevector(s8, s8, 0, 1, 2, 3) + __builtin_shufflevector(s8, s8, 4, 5, 6, 7);
  const vd2 s2 = __builtin_shufflevector(s4, s4, 0, 1) + __builtin_shufflevector(s4, s4, 2, 3);
  return s2[0] + s2[1];
}

constexpr int64_t kLineBytes = 64;

// Software prefetch. The hardware prefetchers of this project's machines (Xeon, 2 MiB L2,
// 260 MiB L3 shared with other guests) fall behind in two patterns of these loops, measured
// in microbenchmarks over 10-400 MB on 2 threads:
//  - the channels-last four-row loops (four streams a row apart): 8-14 GB/s against 20-40
//    GB/s for a sequential sum of the same array; prefetching the block after next restores
//    22-30 GB/s (C = 64..640). On data already near (a few MB) the extra instructions cost up
//    to 10% for long rows, so those loops prefetch only when the caller asks (see
//    software_prefetch_pays in schedule.h);
//  - the two-pass moments of a contiguous chunk: while the second pass works on the chunk in
//    L1, the first pass's stream stops, and the hardware starts it again from cold on the next
//    chunk: prefetching kPrefetchAheadBytes ahead in the first pass took 105 MB from 4.3 to
//    3.1 ms and 400 MB from 27 to 20 ms, and cost nothing on 10 MB.
// Prefetches are hints into L2: addresses past the end of the array never fault, and the
// values read do not change.
constexpr int64_t kPrefetchAheadBytes = 4096;

GN_INLINE void prefetch_line(uintptr_t address) { __builtin_prefetch(reinterpret_cast<const void*>(address), 0, 2); }

// The lines of [p, p + kBytes), kPrefetchAheadBytes ahead (a sequential loop's next data).
template <int64_t kBytes>
GN_INLINE void prefetch_ahead(const void* p) {
  const uintptr_t ahead = reinterpret_cast<uintptr_t>(p) + kPrefetchAheadBytes;
  for (int64_t off = 0; off < kBytes; off += kLineBytes) prefetch_line(ahead + off);
}

// The lines of the block of `block_bytes` that starts kPrefetchAheadBytes after the one
// following `block` (a four-row loop's block after next).
GN_INLINE void prefetch_block_ahead(const void* block, int64_t block_bytes) {
  const uintptr_t begin = reinterpret_cast<uintptr_t>(block) + block_bytes + kPrefetchAheadBytes;
  for (uintptr_t p = begin & ~uintptr_t(kLineBytes - 1); p < begin + block_bytes; p += kLineBytes) prefetch_line(p);
}

template <typename T>
GN_INLINE reduce_t sum_impl(const T* x, int64_t n) {
  vd8 acc0 = {}, acc1 = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    prefetch_ahead<16 * sizeof(T)>(x + i);
    acc0 += load8(x + i);
    acc1 += load8(x + i + 8);
  }
  reduce_t tail = 0;
  for (; i < n; ++i) tail += load<reduce_t>(x + i);
  return reduce_vectors(acc0, acc1) + tail;
}

template <typename T>
GN_INLINE void sum_dev_impl(const T* x, int64_t n, reduce_t mean, reduce_t* sum_d, reduce_t* sum_d2) {
  vd8 d0 = {}, d1 = {}, q0 = {}, q1 = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const vd8 a = load8(x + i) - mean, b = load8(x + i + 8) - mean;
    d0 += a;
    d1 += b;
    q0 += a * a;
    q1 += b * b;
  }
  reduce_t tail_d = 0, tail_d2 = 0;
  for (; i < n; ++i) {
    const reduce_t d = load<reduce_t>(x + i) - mean;
    tail_d += d;
    tail_d2 += d * d;
  }
  *sum_d = reduce_vectors(d0, d1) + tail_d;
  *sum_d2 = reduce_vectors(q0, q1) + tail_d2;
}

// Moments of a chunk of float / bfloat16 / half data. The first pass (sum, min, max) runs
// in float lanes, which needs half the vector work of double; the second pass too when
// |x| < kFloatSafeMagnitude, so that d^2 summed over a chunk cannot overflow. Otherwise
// (huge values, Inf or NaN) the second pass runs in double. A constant chunk is exact:
// mean = the constant, M2 = 0 (so eps = 0 gives rstd = inf, as torch).
constexpr float kFloatSafeMagnitude = 1e16f;
// ... and when the chunk's spread is at least kFloatMinSpread, so that its largest squared
// deviations stay far inside float's normal range (the terms under 1.2e-38 that lose digits
// then add up to < 1e-9 of M2; for |x - mean| ~ 1e-20 every d^2 would fall
// below 1.2e-38 and lose its digits); a tinier spread takes the double pass.
constexpr float kFloatMinSpread = 1e-12f;

typedef float vf16 __attribute__((vector_size(64), aligned(4)));

GN_INLINE vf16 load16f(const float* p) {
  vf16 v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
GN_INLINE vf16 load16f(const c10::BFloat16* p) {
  typedef uint16_t vh16 __attribute__((vector_size(32), aligned(2)));
  typedef uint32_t vu16 __attribute__((vector_size(64), aligned(4)));
  vh16 h;
  __builtin_memcpy(&h, p, sizeof(h));
  const vu16 bits = __builtin_convertvector(h, vu16) << 16;
  vf16 f;
  __builtin_memcpy(&f, &bits, sizeof(f));
  return f;
}
GN_INLINE vf16 load16f(const c10::Half* p) {
  float f[16];
  for (int l = 0; l < 16; ++l) f[l] = static_cast<float>(p[l]);
  return load16f(f);
}

// The same tree over 16 float lanes, and the smallest lane (a < b ? a : b at each step).
typedef float vf4 __attribute__((vector_size(16), aligned(4)));
typedef float vf2 __attribute__((vector_size(8), aligned(4)));
GN_INLINE float reduce16f(vf16 v) {
  const vf8 s8 = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                 __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const vf4 s4 = __builtin_shufflevector(s8, s8, 0, 1, 2, 3) + __builtin_shufflevector(s8, s8, 4, 5, 6, 7);
  const vf2 s2 = __builtin_shufflevector(s4, s4, 0, 1) + __builtin_shufflevector(s4, s4, 2, 3);
  return s2[0] + s2[1];
}

GN_INLINE float min16f(vf16 v) {
  const vf8 a8 = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7);
  const vf8 b8 = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const vf8 m8 = a8 < b8 ? a8 : b8;
  const vf4 a4 = __builtin_shufflevector(m8, m8, 0, 1, 2, 3), b4 = __builtin_shufflevector(m8, m8, 4, 5, 6, 7);
  const vf4 m4 = a4 < b4 ? a4 : b4;
  const vf2 a2 = __builtin_shufflevector(m4, m4, 0, 1), b2 = __builtin_shufflevector(m4, m4, 2, 3);
  const vf2 m2 = a2 < b2 ? a2 : b2;
  return m2[0] < m2[1] ? m2[0] : m2[1];
}

template <typename T>
GN_INLINE void moments_impl(const T* x, int64_t n, reduce_t* mean_out, reduce_t* m2_out) {
  if constexpr (std::is_same_v<T, double>) {
    const reduce_t mean0 = sum_impl(x, n) / static_cast<reduce_t>(n);
    reduce_t sum_d, sum_d2;
    sum_dev_impl(x, n, mean0, &sum_d, &sum_d2);
    const Moments<reduce_t> m = moments_from_deviations(static_cast<reduce_t>(n), mean0, sum_d, sum_d2);
    *mean_out = m.mean;
    *m2_out = m.m2;
  } else {
    const float first = static_cast<float>(x[0]);
    vf16 s0 = {}, s1 = {}, lo = first - vf16{}, hi = lo;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
      prefetch_ahead<32 * sizeof(T)>(x + i);
      const vf16 a = load16f(x + i), b = load16f(x + i + 16);
      s0 += a;
      s1 += b;
      lo = a < lo ? a : lo;
      hi = a > hi ? a : hi;
      lo = b < lo ? b : lo;
      hi = b > hi ? b : hi;
    }
    float sum = reduce16f(s0) + reduce16f(s1), vmin = min16f(lo), vmax = -min16f(-hi);
    for (; i < n; ++i) {
      const float v = static_cast<float>(x[i]);
      sum += v;
      vmin = v < vmin ? v : vmin;
      vmax = v > vmax ? v : vmax;
    }
    const float magnitude = vmax > -vmin ? vmax : -vmin;
    if (std::isfinite(sum) && magnitude < kFloatSafeMagnitude && vmin == vmax) {
      *mean_out = vmin;  // constant chunk
      *m2_out = 0;
      return;
    }
    const reduce_t mean0 = static_cast<reduce_t>(sum) / static_cast<reduce_t>(n);
    reduce_t sum_d, sum_d2;
    if (std::isfinite(sum) && magnitude < kFloatSafeMagnitude && vmax - vmin >= kFloatMinSpread) {
      const float mean0f = static_cast<float>(mean0);
      vf16 d0 = {}, d1 = {}, q0 = {}, q1 = {};
      i = 0;
      for (; i + 32 <= n; i += 32) {
        const vf16 a = load16f(x + i) - mean0f, b = load16f(x + i + 16) - mean0f;
        d0 += a;
        d1 += b;
        q0 += a * a;
        q1 += b * b;
      }
      float td = 0, tq = 0;
      for (; i < n; ++i) {
        const float d = static_cast<float>(x[i]) - mean0f;
        td += d;
        tq += d * d;
      }
      sum_d = static_cast<reduce_t>(reduce16f(d0) + reduce16f(d1) + td);
      sum_d2 = static_cast<reduce_t>(reduce16f(q0) + reduce16f(q1) + tq);
      const Moments<reduce_t> m = moments_from_deviations(static_cast<reduce_t>(n), static_cast<reduce_t>(mean0f), sum_d, sum_d2);
      *mean_out = m.mean;
      *m2_out = m.m2;
      return;
    }
    sum_dev_impl(x, n, mean0, &sum_d, &sum_d2);
    const Moments<reduce_t> m = moments_from_deviations(static_cast<reduce_t>(n), mean0, sum_d, sum_d2);
    *mean_out = m.mean;
    *m2_out = m.m2;
  }
}

// Streaming (non-temporal) output: each 64-byte line of the output is computed by the same
// code as the plain path into a line-sized local (a constant trip count: one vector op, kept
// in registers or at worst forwarded from the store buffer), then written with four 16-byte
// streaming stores, which skip the read-for-ownership of every destination line and leave
// the caches to the input. Into memory the caches no longer hold, that halves the cost of
// the writes (a 64 MiB float apply on 2 cores: 6 ms with plain stores, 2.5 ms streamed;
// staging 4 KiB pieces in L1 first measured 3.2-3.4 ms). SSE2 stores, so every clone can
// inline them (512-bit ones measured the same). The bytes are the plain path's.
// compute(out, begin, len) writes output elements [begin, begin + len) to out[0..len),
// called for consecutive ranges in order.
template <typename T, typename F>
GN_INLINE void write_streamed(T* dst, int64_t n, const F& compute) {
#ifdef GN_STREAMING_STORES
  const uintptr_t addr = reinterpret_cast<uintptr_t>(dst);
  if (addr % sizeof(T) == 0) {
    constexpr int64_t kLine = kLineBytes / sizeof(T);
    // Up to the first line boundary, and the last partial line: plain stores.
    const int64_t head = std::min<int64_t>(n, ((kLineBytes - addr % kLineBytes) % kLineBytes) / sizeof(T));
    if (head > 0) compute(dst, 0, head);
    int64_t i = head;
    for (; i + kLine <= n; i += kLine) {
      alignas(kLineBytes) T line[kLine];
      compute(line, i, kLine);
      char* out = reinterpret_cast<char*>(dst + i);
      const char* src = reinterpret_cast<const char*>(line);
      for (int q = 0; q < 4; ++q) {
        _mm_stream_si128(reinterpret_cast<__m128i*>(out + 16 * q), _mm_load_si128(reinterpret_cast<const __m128i*>(src + 16 * q)));
      }
    }
    if (i < n) compute(dst + i, i, n - i);
    // Streaming stores are weakly ordered; the caller fences them once per parallel task
    // (StreamingStoresFence), not here: a fence per call drains the write-combining buffers
    // after every row, which halved the speed of rows of a few hundred elements.
    return;
  }
#endif
  compute(dst, 0, n);
}

// Row loops streamed: element i of a rows x C block has channel i % C, so a line of the
// output needs the coefficients of a run of channels that may wrap into the next row. Each
// coefficient array is copied out to C + kLine entries (ext[j] = coef[j % C]): any run of
// at most kLine channels starting below C is then one contiguous slice, and the lines go
// through the flat per-element code with a running channel index (no division per line).
template <typename acc_t, int kArrays>
struct WrappedCoefficients {
  std::vector<acc_t> ext;
  int64_t width, channel = 0;  // width = C + kLine; channel = that of the next element
  WrappedCoefficients(const acc_t* const (&coef)[kArrays], int64_t C, int64_t line) : ext(kArrays * (C + line)), width(C + line) {
    for (int a = 0; a < kArrays; ++a) {
      for (int64_t j = 0, c = 0; j < width; ++j, c = c + 1 == C ? 0 : c + 1) ext[a * width + j] = coef[a][c];
    }
  }
  const acc_t* at(int a) const { return ext.data() + a * width + channel; }
  void advance(int64_t len, int64_t C) {
    channel += len;
    while (channel >= C) channel -= C;
  }
};

// Centre first, then scale: (x - mean) keeps full precision when |mean| >> std, which a
// folded x * scale + (bias - mean * scale) loses to cancellation.
template <typename T, typename acc_t = opmath_t<T>>
GN_INLINE void normalize_impl(const T* x, T* y, int64_t n, acc_t mean, acc_t scale, acc_t bias) {
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<T>((load<acc_t>(x + i) - mean) * scale + bias);
}

// Row loops take many rows per call: NSC rows can be as short as a few channels, where a
// call per row would cost more than its arithmetic.
template <typename T, typename acc_t = opmath_t<T>>
GN_INLINE void normalize_rows_impl(const T* x, T* y, int64_t rows, int64_t C, const acc_t* mean,
                                   const acc_t* scale, const acc_t* bias) {
  for (int64_t r = 0; r < rows; ++r, x += C, y += C) {
    for (int64_t i = 0; i < C; ++i) y[i] = static_cast<T>((load<acc_t>(x + i) - mean[i]) * scale[i] + bias[i]);
  }
}

// The per-channel sums live in memory (C can be thousands), so each row costs a load and a
// store of every sum: four rows at a time take a quarter of those, and the row order of the
// additions stays fixed ((r0 + r1) + (r2 + r3), then the remaining rows one by one). The
// deviations and the four-row partial sums are formed in dev_t, then added to the double
// per-channel sums. Channels [0, width) of rows `stride` apart.
template <typename dev_t, typename T>
GN_INLINE void sum_dev_rows_row_order(const T* x, int64_t rows, int64_t width, int64_t stride, const reduce_t* shift,
                                      reduce_t* sum_d, reduce_t* sum_d2, bool prefetch) {
  std::fill(sum_d, sum_d + width, reduce_t(0));
  std::fill(sum_d2, sum_d2 + width, reduce_t(0));
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4, x += 4 * stride) {
    if (prefetch) prefetch_block_ahead(x, 4 * stride * static_cast<int64_t>(sizeof(T)));
    for (int64_t i = 0; i < width; ++i) {
      const dev_t m = static_cast<dev_t>(shift[i]);
      const dev_t d0 = load<dev_t>(x + i) - m, d1 = load<dev_t>(x + stride + i) - m;
      const dev_t d2 = load<dev_t>(x + 2 * stride + i) - m, d3 = load<dev_t>(x + 3 * stride + i) - m;
      sum_d[i] += static_cast<reduce_t>((d0 + d1) + (d2 + d3));
      sum_d2[i] += static_cast<reduce_t>((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3));
    }
  }
  for (; r < rows; ++r, x += stride) {
    for (int64_t i = 0; i < width; ++i) {
      const dev_t d = load<dev_t>(x + i) - static_cast<dev_t>(shift[i]);
      sum_d[i] += static_cast<reduce_t>(d);
      sum_d2[i] += static_cast<reduce_t>(d * d);
    }
  }
}

// Chunks of few rows are summed a block of channels at a time, down all the rows: the block's
// sums then stay in registers for the whole chunk instead of being loaded and stored every
// four rows (1280 channels by 32 rows, the chunks of a 1280-channel 8x8 image, moved as many
// bytes of sums as of data). Per channel the same additions in the same order as the row
// loop, so the same bits.
constexpr int64_t kSumColumnBlock = 16;
constexpr int64_t kSumColumnOrderMaxRows = 64;

template <typename dev_t, typename T>
GN_INLINE void sum_dev_column_block(const T* x, int64_t rows, int64_t stride, const reduce_t* shift, reduce_t* sum_d,
                                    reduce_t* sum_d2) {
  reduce_t s1[kSumColumnBlock] = {}, s2[kSumColumnBlock] = {};
  dev_t m[kSumColumnBlock];
  for (int64_t j = 0; j < kSumColumnBlock; ++j) m[j] = static_cast<dev_t>(shift[j]);
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4, x += 4 * stride) {
    for (int64_t j = 0; j < kSumColumnBlock; ++j) {
      const dev_t d0 = load<dev_t>(x + j) - m[j], d1 = load<dev_t>(x + stride + j) - m[j];
      const dev_t d2 = load<dev_t>(x + 2 * stride + j) - m[j], d3 = load<dev_t>(x + 3 * stride + j) - m[j];
      s1[j] += static_cast<reduce_t>((d0 + d1) + (d2 + d3));
      s2[j] += static_cast<reduce_t>((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3));
    }
  }
  for (; r < rows; ++r, x += stride) {
    for (int64_t j = 0; j < kSumColumnBlock; ++j) {
      const dev_t d = load<dev_t>(x + j) - m[j];
      s1[j] += static_cast<reduce_t>(d);
      s2[j] += static_cast<reduce_t>(d * d);
    }
  }
  for (int64_t j = 0; j < kSumColumnBlock; ++j) {
    sum_d[j] = s1[j];
    sum_d2[j] = s2[j];
  }
}

// Calls block(c0) for the column blocks [c0, c0 + kSumColumnBlock) of a chunk that sums faster
// block by block (few rows, enough channels); returns the first channel left to the row loop.
template <typename Block>
GN_INLINE int64_t for_column_blocks(int64_t rows, int64_t C, const Block& block) {
  int64_t c = 0;
  if (rows <= kSumColumnOrderMaxRows && C >= 4 * kSumColumnBlock) {
    for (; c + kSumColumnBlock <= C; c += kSumColumnBlock) block(c);
  }
  return c;
}

template <typename dev_t, typename T>
GN_INLINE void sum_dev_rows_as(const T* x, int64_t rows, int64_t C, const reduce_t* shift, reduce_t* sum_d,
                               reduce_t* sum_d2, bool prefetch) {
  const int64_t c = for_column_blocks(rows, C, [&](int64_t c0) GN_LAMBDA_INLINE {
    sum_dev_column_block<dev_t>(x + c0, rows, C, shift + c0, sum_d + c0, sum_d2 + c0);
  });
  if (c < C) sum_dev_rows_row_order<dev_t>(x + c, rows, C - c, C, shift + c, sum_d + c, sum_d2 + c, prefetch);
}

// Float deviations for float / bfloat16 / half data: a quarter of the vector work of double
// (no widening to 8-lane halves; 4-10% of a medium channels_last forward). The shift is a
// value of the data, so d = x - shift is exact while x is within a factor 2 of it, and
// each four-term float sum adds at most ~3 roundings of 2^-24 before the double sums take
// over: far more accurate than the float lanes of moments_impl. Sums that float cannot be
// trusted with are formed again in double: Inf / NaN (overflow of d or d^2 past 3e38, or
// such data), and a channel whose mean squared deviation is under kFloatMinSquareMean,
// where some d^2 may have fallen below float's normal range (1.2e-38) and lost digits --
// unless its deviations are all exactly zero (sums 0 and 0: a constant channel).
constexpr reduce_t kFloatMinSquareMean = 1e-24;

// Whether per-channel sums formed in float lanes can be trusted: for every c, first[c] and
// second[c] finite and |second[c]| >= floor, unless both are exactly zero. On the doubles'
// bit patterns, branch-free, so that the loop vectorizes (a scalar loop of branches over C
// took a quarter of the channels-last statistics on 1280-channel rows, and GCC lowers vector
// compares of doubles, or of explicit 64-bit lanes, to scalar ones): finite = exponent not all
// ones; magnitudes of doubles order as their bit patterns with the sign cleared; +-0 is the
// pattern shifted left by one being 0.
GN_INLINE bool float_sums_trusted(const reduce_t* first, const reduce_t* second, int64_t C, reduce_t floor) {
  constexpr int64_t kExponent = 0x7ff0000000000000, kMagnitude = 0x7fffffffffffffff;
  int64_t floor_bits;
  __builtin_memcpy(&floor_bits, &floor, sizeof(floor_bits));
  int64_t untrusted = 0;
  for (int64_t i = 0; i < C; ++i) {
    int64_t a, q;
    __builtin_memcpy(&a, first + i, sizeof(a));
    __builtin_memcpy(&q, second + i, sizeof(q));
    const bool finite = ((a & kExponent) != kExponent) & ((q & kExponent) != kExponent);
    const bool resolved = ((q & kMagnitude) >= floor_bits) | (((q << 1) == 0) & ((a << 1) == 0));
    untrusted |= !(finite & resolved);
  }
  return !untrusted;
}

template <typename T>
GN_INLINE void sum_dev_rows_impl(const T* x, int64_t rows, int64_t C, const reduce_t* shift, reduce_t* sum_d,
                                 reduce_t* sum_d2, bool prefetch) {
  if constexpr (!std::is_same_v<T, double>) {
    sum_dev_rows_as<float>(x, rows, C, shift, sum_d, sum_d2, prefetch);
    const reduce_t floor = kFloatMinSquareMean * static_cast<reduce_t>(rows);
    if (float_sums_trusted(sum_d, sum_d2, C, floor)) return;
  }
  sum_dev_rows_as<reduce_t>(x, rows, C, shift, sum_d, sum_d2, prefetch);
}

// Sixteen consecutive values as two vectors of doubles, converted through one float
// vector: for bfloat16 one widening load and a shift, where load8 twice lowered to
// four-lane pieces and shuffles that cost more than the arithmetic.
template <typename T>
GN_INLINE void load16d(const T* p, vd8* lo, vd8* hi) {
  if constexpr (std::is_same_v<T, double>) {
    *lo = load8(p);
    *hi = load8(p + 8);
  } else {
    const vf16 f = load16f(p);
    *lo = __builtin_convertvector(__builtin_shufflevector(f, f, 0, 1, 2, 3, 4, 5, 6, 7), vd8);
    *hi = __builtin_convertvector(__builtin_shufflevector(f, f, 8, 9, 10, 11, 12, 13, 14, 15), vd8);
  }
}

// Gradient sums over one chunk. bfloat16 / half data sum in float lanes (32 of them, so a
// lane adds at most chunk / 32 terms, ~256 for the 8K-element chunks of the plan: error
// ~1e-5 relative, far below the data's own 2^-8 or 2^-11), with half the vector work of
// double and no widening to 8-lane halves; the chunk's totals then join the double sums.
// A chunk whose float sums overflow (or meet Inf / NaN) is summed again in double. float
// data: the terms and four-vector partial sums in float, then double sums (below); double
// data sum in double as everything else.
constexpr float kFloatSumFloor = 1e-30f;

// Adds the 16 floats of v to the 16 double lanes (lo, hi).
GN_INLINE void add_widened(vf16 v, vd8* lo, vd8* hi) {
  *lo += __builtin_convertvector(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7), vd8);
  *hi += __builtin_convertvector(__builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15), vd8);
}

// Gradient sums of float data with half the widening: dy and dy * (x - m), m = the mean
// rounded to float, formed in float, four vectors (64 elements) summed in float, then added to
// double lanes; sum_dy_xc = sum dy * (x - m) - (mean - m) * sum dy restores the exact centre
// (a float mean is off by up to 2^-24 |mean|, which a large offset in x would otherwise turn
// into an error of that size in every centred value). Each term is within 2^-23 of its
// double value (x - m is exact for x within a factor 2 of m) and a four-term float sum adds
// at most 3 roundings of 2^-24 of its terms' magnitude: the accuracy of the NSC forward's
// four-row sums. Returns false (nothing written) where float cannot be trusted, as the
// bfloat16 path: overflow, Inf / NaN, or sums small enough that products may have underflowed.
GN_INLINE bool grad_sums_float(const float* dy, const float* x, int64_t n, reduce_t mean, reduce_t* sum_dy,
                               reduce_t* sum_dy_xc) {
  const float m = static_cast<float>(mean);
  vd8 g0 = {}, g1 = {}, p0 = {}, p1 = {};
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const vf16 a0 = load16f(dy + i), a1 = load16f(dy + i + 16), a2 = load16f(dy + i + 32), a3 = load16f(dy + i + 48);
    add_widened((a0 + a1) + (a2 + a3), &g0, &g1);
    add_widened((a0 * (load16f(x + i) - m) + a1 * (load16f(x + i + 16) - m)) +
                    (a2 * (load16f(x + i + 32) - m) + a3 * (load16f(x + i + 48) - m)),
                &p0, &p1);
  }
  for (; i + 16 <= n; i += 16) {
    const vf16 a = load16f(dy + i);
    add_widened(a, &g0, &g1);
    add_widened(a * (load16f(x + i) - m), &p0, &p1);
  }
  reduce_t tail_dy = 0, tail_dy_xc = 0;
  for (; i < n; ++i) {
    tail_dy += dy[i];
    tail_dy_xc += static_cast<reduce_t>(dy[i] * (x[i] - m));
  }
  const reduce_t s_dy = reduce_vectors(g0, g1) + tail_dy;
  const reduce_t s_dy_xm = reduce_vectors(p0, p1) + tail_dy_xc;
  // A float overflow shows as Inf / NaN in the double sums; an all-zero dy or products near
  // float's underflow as a tiny sum.
  if (!(std::isfinite(s_dy) && std::isfinite(s_dy_xm) && std::fabs(s_dy_xm) >= kFloatSumFloor)) return false;
  *sum_dy = s_dy;
  *sum_dy_xc = s_dy_xm - (mean - static_cast<reduce_t>(m)) * s_dy;
  return true;
}

template <typename T>
GN_INLINE void grad_sums_impl(const T* dy, const T* x, int64_t n, reduce_t mean, reduce_t* sum_dy,
                              reduce_t* sum_dy_xc) {
  if constexpr (std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>) {
    const float m = static_cast<float>(mean);
    vf16 g0 = {}, g1 = {}, p0 = {}, p1 = {};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
      const vf16 a = load16f(dy + i), b = load16f(dy + i + 16);
      g0 += a;
      g1 += b;
      p0 += a * (load16f(x + i) - m);
      p1 += b * (load16f(x + i + 16) - m);
    }
    float tail_dy = 0, tail_dy_xc = 0;
    for (; i < n; ++i) {
      const float g = static_cast<float>(dy[i]);
      tail_dy += g;
      tail_dy_xc += g * (static_cast<float>(x[i]) - m);
    }
    const float s_dy = reduce16f(g0) + reduce16f(g1) + tail_dy;
    const float s_dy_xc = reduce16f(p0) + reduce16f(p1) + tail_dy_xc;
    if (std::isfinite(s_dy) && std::isfinite(s_dy_xc) && std::fabs(s_dy_xc) >= kFloatSumFloor) {
      *sum_dy = s_dy;
      *sum_dy_xc = s_dy_xc;
      return;
    }
    // Overflow past float's range (|dy * (x - mean)| near 3e38), Inf / NaN in the data, or
    // products that may have fallen below float's normal range (a sum under kFloatSumFloor:
    // n <= 2^13 products each under 1.2e-38 add up to less; this also catches an all-zero dy):
    // the chunk again in double, which gives the same sums as float and double inputs get.
  } else if constexpr (std::is_same_v<T, float>) {
    if (grad_sums_float(dy, x, n, mean, sum_dy, sum_dy_xc)) return;
  }
  vd8 g0 = {}, g1 = {}, p0 = {}, p1 = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    vd8 a, b, xa, xb;
    load16d(dy + i, &a, &b);
    load16d(x + i, &xa, &xb);
    g0 += a;
    g1 += b;
    p0 += a * (xa - mean);
    p1 += b * (xb - mean);
  }
  reduce_t tail_dy = 0, tail_dy_xc = 0;
  for (; i < n; ++i) {
    const reduce_t g = load<reduce_t>(dy + i);
    tail_dy += g;
    tail_dy_xc += g * (load<reduce_t>(x + i) - mean);
  }
  *sum_dy = reduce_vectors(g0, g1) + tail_dy;
  *sum_dy_xc = reduce_vectors(p0, p1) + tail_dy_xc;
}

// Four rows at a time, as sum_dev_rows_row_order; sets sum_dy[0..width) and sum_dy_xc[0..width)
// of rows `stride` apart. The terms and four-row partial sums are formed in sum_t, then added
// to the double sums, centred on centre[i] = mean[i] rounded to sum_t (the caller corrects for
// the rounding).
template <typename sum_t, typename T>
GN_INLINE void grad_sums_rows_row_order(const T* dy, const T* x, int64_t rows, int64_t width, int64_t stride,
                                        const reduce_t* mean, reduce_t* sum_dy, reduce_t* sum_dy_xc, bool prefetch) {
  std::fill(sum_dy, sum_dy + width, reduce_t(0));
  std::fill(sum_dy_xc, sum_dy_xc + width, reduce_t(0));
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4, x += 4 * stride, dy += 4 * stride) {
    if (prefetch) {
      prefetch_block_ahead(dy, 4 * stride * static_cast<int64_t>(sizeof(T)));
      prefetch_block_ahead(x, 4 * stride * static_cast<int64_t>(sizeof(T)));
    }
    for (int64_t i = 0; i < width; ++i) {
      const sum_t m = static_cast<sum_t>(mean[i]);
      const sum_t g0 = load<sum_t>(dy + i), g1 = load<sum_t>(dy + stride + i);
      const sum_t g2 = load<sum_t>(dy + 2 * stride + i), g3 = load<sum_t>(dy + 3 * stride + i);
      sum_dy[i] += static_cast<reduce_t>((g0 + g1) + (g2 + g3));
      sum_dy_xc[i] += static_cast<reduce_t>(
          (g0 * (load<sum_t>(x + i) - m) + g1 * (load<sum_t>(x + stride + i) - m)) +
          (g2 * (load<sum_t>(x + 2 * stride + i) - m) + g3 * (load<sum_t>(x + 3 * stride + i) - m)));
    }
  }
  for (; r < rows; ++r, x += stride, dy += stride) {
    for (int64_t i = 0; i < width; ++i) {
      const sum_t g = load<sum_t>(dy + i);
      sum_dy[i] += static_cast<reduce_t>(g);
      sum_dy_xc[i] += static_cast<reduce_t>(g * (load<sum_t>(x + i) - static_cast<sum_t>(mean[i])));
    }
  }
}

// grad_sums_rows_row_order for one block of kSumColumnBlock channels, down all the rows with
// the sums in registers (see sum_dev_column_block): the same additions, the same bits.
template <typename sum_t, typename T>
GN_INLINE void grad_sums_column_block(const T* dy, const T* x, int64_t rows, int64_t stride, const reduce_t* mean,
                                      reduce_t* sum_dy, reduce_t* sum_dy_xc) {
  reduce_t s1[kSumColumnBlock] = {}, s2[kSumColumnBlock] = {};
  sum_t m[kSumColumnBlock];
  for (int64_t j = 0; j < kSumColumnBlock; ++j) m[j] = static_cast<sum_t>(mean[j]);
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4, x += 4 * stride, dy += 4 * stride) {
    for (int64_t j = 0; j < kSumColumnBlock; ++j) {
      const sum_t g0 = load<sum_t>(dy + j), g1 = load<sum_t>(dy + stride + j);
      const sum_t g2 = load<sum_t>(dy + 2 * stride + j), g3 = load<sum_t>(dy + 3 * stride + j);
      s1[j] += static_cast<reduce_t>((g0 + g1) + (g2 + g3));
      s2[j] += static_cast<reduce_t>(
          (g0 * (load<sum_t>(x + j) - m[j]) + g1 * (load<sum_t>(x + stride + j) - m[j])) +
          (g2 * (load<sum_t>(x + 2 * stride + j) - m[j]) + g3 * (load<sum_t>(x + 3 * stride + j) - m[j])));
    }
  }
  for (; r < rows; ++r, x += stride, dy += stride) {
    for (int64_t j = 0; j < kSumColumnBlock; ++j) {
      const sum_t g = load<sum_t>(dy + j);
      s1[j] += static_cast<reduce_t>(g);
      s2[j] += static_cast<reduce_t>(g * (load<sum_t>(x + j) - m[j]));
    }
  }
  for (int64_t j = 0; j < kSumColumnBlock; ++j) {
    sum_dy[j] = s1[j];
    sum_dy_xc[j] = s2[j];
  }
}

template <typename sum_t, typename T>
GN_INLINE void grad_sums_rows_as(const T* dy, const T* x, int64_t rows, int64_t C, const reduce_t* mean,
                                 reduce_t* sum_dy, reduce_t* sum_dy_xc, bool prefetch) {
  const int64_t c = for_column_blocks(rows, C, [&](int64_t c0) GN_LAMBDA_INLINE {
    grad_sums_column_block<sum_t>(dy + c0, x + c0, rows, C, mean + c0, sum_dy + c0, sum_dy_xc + c0);
  });
  if (c < C) grad_sums_rows_row_order<sum_t>(dy + c, x + c, rows, C - c, C, mean + c, sum_dy + c, sum_dy_xc + c, prefetch);
}

// Float terms for float / bfloat16 / half data (half the widening of double; 20-30% of a
// channels-last backward), as grad_sums_float: each term within 2^-23 of its double value, a
// four-row float sum within 3 roundings of its terms' magnitude, then double sums, corrected
// for the float centre: sum dy * (x - mean) = sum dy * (x - m) - (mean - m) * sum dy. Channels
// float cannot be trusted with send the whole call to double: Inf / NaN (overflow of a
// product past 3e38, or such data), and a |sum of products| under kFloatSumFloor, where
// products may have fallen below float's normal range -- unless both sums are exactly zero
// (a channel whose dy is all zeros).
template <typename T>
GN_INLINE void grad_sums_rows_impl(const T* dy, const T* x, int64_t rows, int64_t C, const reduce_t* mean,
                                   reduce_t* sum_dy, reduce_t* sum_dy_xc, bool prefetch) {
  if constexpr (!std::is_same_v<T, double>) {
    grad_sums_rows_as<float>(dy, x, rows, C, mean, sum_dy, sum_dy_xc, prefetch);
    if (float_sums_trusted(sum_dy, sum_dy_xc, C, kFloatSumFloor)) {
      for (int64_t i = 0; i < C; ++i) {
        sum_dy_xc[i] -= (mean[i] - static_cast<reduce_t>(static_cast<float>(mean[i]))) * sum_dy[i];
      }
      return;
    }
  }
  grad_sums_rows_as<reduce_t>(dy, x, rows, C, mean, sum_dy, sum_dy_xc, prefetch);
}

// Parenthesised so that each multiply has exactly one add to contract with: where the clone
// has FMA, GCC then forms the same two FMAs in every copy of the loop (vector body, scalar
// tail, the streamed lines), and a value does not depend on which copy computed it.
template <typename T, typename acc_t = opmath_t<T>>
GN_INLINE void grad_input_impl(const T* dy, const T* x, T* dx, int64_t n, acc_t a, acc_t mean,
                               acc_t rstd, acc_t kxhat, acc_t kc) {
  for (int64_t i = 0; i < n; ++i) {
    const acc_t xhat = (load<acc_t>(x + i) - mean) * rstd;
    dx[i] = static_cast<T>(a * load<acc_t>(dy + i) + (xhat * kxhat + kc));
  }
}

template <typename T, typename acc_t = opmath_t<T>>
GN_INLINE void grad_input_rows_impl(const T* dy, const T* x, T* dx, int64_t rows, int64_t C, const acc_t* a,
                                    const acc_t* mean, const acc_t* rstd, const acc_t* kxhat,
                                    const acc_t* kc) {
  for (int64_t r = 0; r < rows; ++r, x += C, dy += C, dx += C) {
    for (int64_t i = 0; i < C; ++i) {
      const acc_t xhat = (load<acc_t>(x + i) - mean[i]) * rstd[i];
      dx[i] = static_cast<T>(a[i] * load<acc_t>(dy + i) + (xhat * kxhat[i] + kc[i]));
    }
  }
}

}  // namespace

#define GN_DEFINE_LOOPS(T)                                                                     \
  GN_CLONES reduce_t loop_sum(const T* x, int64_t n) { return sum_impl(x, n); }                \
  GN_CLONES void loop_sum_dev(const T* x, int64_t n, reduce_t mean, reduce_t* sum_d,           \
                             reduce_t* sum_d2) {                                               \
    sum_dev_impl(x, n, mean, sum_d, sum_d2);                                                   \
  }                                                                                            \
  GN_CLONES void loop_moments(const T* x, int64_t n, reduce_t* mean, reduce_t* m2) {           \
    moments_impl(x, n, mean, m2);                                                              \
  }                                                                                            \
  GN_CLONES void loop_normalize(const T* x, T* y, int64_t n, opmath_t<T> mean,                 \
                                opmath_t<T> scale, opmath_t<T> bias, bool stream) {            \
    if (!stream) return normalize_impl(x, y, n, mean, scale, bias);                            \
    write_streamed(y, n, [&](T* out, int64_t b, int64_t len) GN_LAMBDA_INLINE {                \
      normalize_impl(x + b, out, len, mean, scale, bias);                                      \
    });                                                                                        \
  }                                                                                            \
  GN_CLONES void loop_normalize_runs(const T* x, T* y, int64_t runs, int64_t len,               \
                                     const opmath_t<T>* mean, const opmath_t<T>* scale,        \
                                     const opmath_t<T>* bias, bool stream) {                   \
    for (int64_t r = 0; r < runs; ++r, x += len, y += len) {                                   \
      if (!stream) {                                                                           \
        normalize_impl(x, y, len, mean[r], scale[r], bias[r]);                                 \
        continue;                                                                              \
      }                                                                                        \
      write_streamed(y, len, [&](T* out, int64_t b, int64_t l) GN_LAMBDA_INLINE {              \
        normalize_impl(x + b, out, l, mean[r], scale[r], bias[r]);                             \
      });                                                                                      \
    }                                                                                          \
  }                                                                                            \
  GN_CLONES void loop_normalize_rows(const T* x, T* y, int64_t rows, int64_t C,                \
                                     const opmath_t<T>* mean, const opmath_t<T>* scale,        \
                                     const opmath_t<T>* bias, bool stream) {                   \
    if (!stream) return normalize_rows_impl(x, y, rows, C, mean, scale, bias);                 \
    WrappedCoefficients<opmath_t<T>, 3> k({mean, scale, bias}, C, kLineBytes / sizeof(T));    \
    write_streamed(y, rows * C, [&](T* out, int64_t b, int64_t len) GN_LAMBDA_INLINE {         \
      normalize_rows_impl(x + b, out, 1, len, k.at(0), k.at(1), k.at(2));                      \
      k.advance(len, C);                                                                       \
    });                                                                                        \
  }                                                                                            \
  GN_CLONES void loop_sum_dev_rows(const T* x, int64_t rows, int64_t C, const reduce_t* shift, \
                                   reduce_t* sum_d, reduce_t* sum_d2, bool prefetch) {         \
    sum_dev_rows_impl(x, rows, C, shift, sum_d, sum_d2, prefetch);                             \
  }                                                                                            \
  GN_CLONES void loop_grad_sums(const T* dy, const T* x, int64_t n, reduce_t mean,             \
                                reduce_t* sum_dy, reduce_t* sum_dy_xc) {                       \
    grad_sums_impl(dy, x, n, mean, sum_dy, sum_dy_xc);                                         \
  }                                                                                            \
  GN_CLONES void loop_grad_sums_runs(const T* dy, const T* x, int64_t runs, int64_t len,       \
                                     reduce_t mean, reduce_t* sum_dy, reduce_t* sum_dy_xc) {   \
    for (int64_t r = 0; r < runs; ++r, dy += len, x += len) {                                  \
      grad_sums_impl(dy, x, len, mean, sum_dy + r, sum_dy_xc + r);                             \
    }                                                                                          \
  }                                                                                            \
  GN_CLONES void loop_grad_sums_rows(const T* dy, const T* x, int64_t rows, int64_t C,        \
                                     const reduce_t* mean, reduce_t* sum_dy,                   \
                                     reduce_t* sum_dy_xc, bool prefetch) {                     \
    grad_sums_rows_impl(dy, x, rows, C, mean, sum_dy, sum_dy_xc, prefetch);                    \
  }                                                                                            \
  GN_CLONES void loop_grad_input(const T* dy, const T* x, T* dx, int64_t n, opmath_t<T> a,     \
                                 opmath_t<T> mean, opmath_t<T> rstd, opmath_t<T> kxhat,        \
                                 opmath_t<T> kc, bool stream) {                                \
    if (!stream) return grad_input_impl(dy, x, dx, n, a, mean, rstd, kxhat, kc);               \
    write_streamed(dx, n, [&](T* out, int64_t b, int64_t len) GN_LAMBDA_INLINE {               \
      grad_input_impl(dy + b, x + b, out, len, a, mean, rstd, kxhat, kc);                      \
    });                                                                                        \
  }                                                                                            \
  GN_CLONES void loop_grad_input_runs(const T* dy, const T* x, T* dx, int64_t runs, int64_t len, \
                                      const opmath_t<T>* a, const opmath_t<T>* mean,           \
                                      const opmath_t<T>* rstd, const opmath_t<T>* kxhat,       \
                                      const opmath_t<T>* kc, bool stream) {                    \
    for (int64_t r = 0; r < runs; ++r, dy += len, x += len, dx += len) {                       \
      if (!stream) {                                                                           \
        grad_input_impl(dy, x, dx, len, a[r], mean[r], rstd[r], kxhat[r], kc[r]);              \
        continue;                                                                              \
      }                                                                                        \
      write_streamed(dx, len, [&](T* out, int64_t b, int64_t l) GN_LAMBDA_INLINE {             \
        grad_input_impl(dy + b, x + b, out, l, a[r], mean[r], rstd[r], kxhat[r], kc[r]);       \
      });                                                                                      \
    }                                                                                          \
  }                                                                                            \
  GN_CLONES void loop_grad_input_rows(const T* dy, const T* x, T* dx, int64_t rows, int64_t C, \
                                      const opmath_t<T>* a, const opmath_t<T>* mean,           \
                                      const opmath_t<T>* rstd, const opmath_t<T>* kxhat,       \
                                      const opmath_t<T>* kc, bool stream) {                    \
    if (!stream) return grad_input_rows_impl(dy, x, dx, rows, C, a, mean, rstd, kxhat, kc);    \
    WrappedCoefficients<opmath_t<T>, 5> k({a, mean, rstd, kxhat, kc}, C, kLineBytes / sizeof(T)); \
    write_streamed(dx, rows * C, [&](T* out, int64_t b, int64_t len) GN_LAMBDA_INLINE {        \
      grad_input_rows_impl(dy + b, x + b, out, 1, len, k.at(0), k.at(1), k.at(2), k.at(3), k.at(4)); \
      k.advance(len, C);                                                                       \
    });                                                                                        \
  }

GN_DEFINE_LOOPS(float)
GN_DEFINE_LOOPS(double)
GN_DEFINE_LOOPS(c10::Half)
GN_DEFINE_LOOPS(c10::BFloat16)
#undef GN_DEFINE_LOOPS

void fence_streaming_stores() {
#ifdef GN_STREAMING_STORES
  _mm_sfence();
#endif
}

const char* loops_isa() {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
  __builtin_cpu_init();
  // Mirrors the loader's choice for GN_CLONES: the highest level this CPU supports.
  if (__builtin_cpu_supports("x86-64-v4")) return "avx512 (x86-64-v4 clone)";
  if (__builtin_cpu_supports("x86-64-v3")) return "avx2 (x86-64-v3 clone)";
#endif
  return "baseline";
}

}  // namespace cpu
}  // namespace groupnorm_ext
