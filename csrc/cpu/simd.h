// Building blocks of the CPU loops (loops_forward.cpp, loops_backward.cpp): GCC vector types
// and their loads, the fixed lane reductions, software prefetch, streaming stores, and the
// block sizes of the channels-last sums. Everything here is always-inline, so each
// `target_clones` copy of a loop compiles it for that copy's ISA.
//
// Reductions keep 16 independent lane accumulators: vectorized without -ffast-math, and
// the summation order is fixed by the code, not by the thread count or the ISA picked.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <type_traits>
#include <vector>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#if defined(__x86_64__) && defined(__SSE2__)
#include <emmintrin.h>
#define GN_STREAMING_STORES 1
#endif

#include "loops.h"

namespace groupnorm_ext {
namespace cpu {
namespace simd {

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
// (16 lanes, two independent add chains) per accumulator; auto-vectorizing the equivalent
// scalar loops gave scalar code for loops with two accumulators. The AVX-512 clone keeps a
// 512-bit vector in one zmm register; the other clones would not (GCC 12 keeps a vector wider
// than the clone's registers in memory and splits every operation through the stack), so the
// hot contiguous loops run there on 256-bit halves with the same lanes (vf8x2 and vd4x2
// below).
typedef double vd8 __attribute__((vector_size(64), aligned(8)));
typedef float vf8 __attribute__((vector_size(32), aligned(4)));
typedef uint32_t vu8 __attribute__((vector_size(32), aligned(4)));
typedef uint16_t vh8 __attribute__((vector_size(16), aligned(2)));

// float16 -> float32 on a vector U of 32-bit lanes, each holding a float16's bits in its upper
// half (w = h << 16): c10's fp16_ieee_to_fp32_value (Half.h, without F16C) lane by lane, the
// same operations, so the same bits (the conversion is exact; NaNs keep their payload). Called
// per element inside the loops, c10's scalar function stayed scalar: a float16 forward ran its
// statistics at a quarter of the bfloat16 speed, 0.5x torch's.
template <typename U, typename F>
GN_INLINE F half_bits_to_float(U w) {
  const U sign = w & 0x80000000u;
  const U two_w = w + w;
  U normalized_bits = (two_w >> 4) + 0x70000000u;  // exponent rebiased by 0xE0 (then times 2^-112)
  F normalized;
  __builtin_memcpy(&normalized, &normalized_bits, sizeof(F));
  normalized *= 0x1.0p-112f;
  const U denormalized_bits = (two_w >> 17) | 0x3F000000u;  // 126 << 23: 0.5 + m * 2^-24, then minus 0.5
  F denormalized;
  __builtin_memcpy(&denormalized, &denormalized_bits, sizeof(F));
  denormalized -= 0.5f;
  U n_bits, d_bits;
  __builtin_memcpy(&n_bits, &normalized, sizeof(F));
  __builtin_memcpy(&d_bits, &denormalized, sizeof(F));
  const U result = sign | (two_w < (1u << 27) ? d_bits : n_bits);
  F f;
  __builtin_memcpy(&f, &result, sizeof(F));
  return f;
}

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
  vh8 h;
  __builtin_memcpy(&h, p, sizeof(h));
  return __builtin_convertvector(half_bits_to_float<vu8, vf8>(__builtin_convertvector(h, vu8) << 16), vd8);
}

// Fixed pairwise reduction of 16 double lanes (two vectors): lane l of the sum of halves
// each step, a + b, then 4 + 4, 2 + 2, 1 + 1. Written with vector halves rather than a loop
// over an array: GCC kept that loop rolled and went through the stack, which cost more than
// the data on short runs (the channels of small tensors).
typedef double vd4 __attribute__((vector_size(32), aligned(8)));
typedef double vd2 __attribute__((vector_size(16), aligned(8)));
GN_INLINE reduce_t reduce4d(vd4 s4) {  // the tree from its third level (4 lanes)
  const vd2 s2 = __builtin_shufflevector(s4, s4, 0, 1) + __builtin_shufflevector(s4, s4, 2, 3);
  return s2[0] + s2[1];
}
GN_INLINE reduce_t reduce_vectors(vd8 a, vd8 b) {
  const vd8 s8 = a + b;
  return reduce4d(__builtin_shufflevector(s8, s8, 0, 1, 2, 3) + __builtin_shufflevector(s8, s8, 4, 5, 6, 7));
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

// The lines of [p + ahead, p + ahead + bytes) into L1 (an elementwise row loop's input and
// output some rows ahead). Prefetching an output line to read is as good as for writing here: a
// line that no other core holds arrives exclusive, and the store that follows needs no further
// request (PREFETCHW is outside the x86-64 levels the clones target).
GN_INLINE void prefetch_l1_ahead(const void* p, int64_t bytes, int64_t ahead) {
  const uintptr_t begin = reinterpret_cast<uintptr_t>(p) + ahead;
  for (uintptr_t q = begin & ~uintptr_t(kLineBytes - 1); q < begin + bytes; q += kLineBytes) {
    __builtin_prefetch(reinterpret_cast<const void*>(q), 0, 3);
  }
}

// An elementwise loop over `units` units (elements or rows) of `unit_bytes` each, with software
// prefetch: body(u, n) for units [u, u + n) in steps of about four lines, each step first
// prefetching the inputs' bytes kPrefetchAheadBytes ahead and the output's twice as far.
template <typename Body, typename... In>
GN_INLINE void for_prefetched_steps(int64_t units, int64_t unit_bytes, const void* out, const Body& body,
                                    const In*... in) {
  const int64_t step = std::max<int64_t>(1, 4 * kLineBytes / std::max<int64_t>(1, unit_bytes));
  for (int64_t u = 0; u < units; u += step) {
    const int64_t n = std::min(step, units - u), offset = u * unit_bytes, bytes = n * unit_bytes;
    (prefetch_l1_ahead(reinterpret_cast<const char*>(in) + offset, bytes, kPrefetchAheadBytes), ...);
    prefetch_l1_ahead(reinterpret_cast<const char*>(out) + offset, bytes, 2 * kPrefetchAheadBytes);
    body(u, n);
  }
}

typedef float vf16 __attribute__((vector_size(64), aligned(4)));

GN_INLINE vf16 load16f(const float* p) {
  vf16 v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
typedef uint16_t vh16 __attribute__((vector_size(32), aligned(2)));

// Sixteen 16-bit values as the upper halves of 32-bit lanes (lane bits = h << 16), returned as
// R (a 16-lane float or uint32 vector). Written as one shuffle with zeros, which GCC 12
// compiles to a single vpermi2w on AVX-512; the widening conversion (zero-extend, then shift)
// became five instructions, two extracts and inserts around 256-bit halves (a fifth of a
// bfloat16 forward's statistics loop). Which half of a lane comes first in memory depends on
// the byte order.
template <typename R = vf16>
GN_INLINE R upper_halves(vh16 h) {
  typedef uint16_t vh32 __attribute__((vector_size(64), aligned(2)));
  const vh16 zero = {};
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  const vh32 halves = __builtin_shufflevector(h, zero, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23, 8, 24,
                                              9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
#else
  const vh32 halves = __builtin_shufflevector(zero, h, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23, 8, 24,
                                              9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
#endif
  R r;
  __builtin_memcpy(&r, &halves, sizeof(r));
  return r;
}

// bfloat16 is the upper half of a float.
GN_INLINE vf16 load16f(const c10::BFloat16* p) {
  vh16 h;
  __builtin_memcpy(&h, p, sizeof(h));
  const vf16 f = upper_halves(h);
  return f;
}
GN_INLINE vf16 load16f(const c10::Half* p) {
  typedef uint32_t vu16 __attribute__((vector_size(64), aligned(4)));
  vh16 h;
  __builtin_memcpy(&h, p, sizeof(h));
  return half_bits_to_float<vu16, vf16>(upper_halves<vu16>(h));
}

// 16 floats widened to two vectors of 8 doubles (exact), through one 16-lane conversion:
// GCC 12 lowers that to two full-width vcvtps2pd (AVX-512: 3 instructions with the extract),
// but an 8-lane float-to-double conversion to four-lane pieces, shuffles and inserts (7).
typedef double vd16 __attribute__((vector_size(128), aligned(8)));
GN_INLINE void widen16(vf16 v, vd8* lo, vd8* hi) {
  const vd16 w = __builtin_convertvector(v, vd16);
  *lo = __builtin_shufflevector(w, w, 0, 1, 2, 3, 4, 5, 6, 7);
  *hi = __builtin_shufflevector(w, w, 8, 9, 10, 11, 12, 13, 14, 15);
}

// The same tree over 16 float lanes, and the smallest lane (a < b ? a : b at each step).
typedef float vf4 __attribute__((vector_size(16), aligned(4)));
typedef float vf2 __attribute__((vector_size(8), aligned(4)));
GN_INLINE float reduce8f(vf8 s8) {  // the tree from its second level (8 lanes)
  const vf4 s4 = __builtin_shufflevector(s8, s8, 0, 1, 2, 3) + __builtin_shufflevector(s8, s8, 4, 5, 6, 7);
  const vf2 s2 = __builtin_shufflevector(s4, s4, 0, 1) + __builtin_shufflevector(s4, s4, 2, 3);
  return s2[0] + s2[1];
}
GN_INLINE float reduce16f(vf16 v) {
  return reduce8f(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                  __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15));
}

GN_INLINE float min8f(vf8 m8) {  // from the second level
  const vf4 a4 = __builtin_shufflevector(m8, m8, 0, 1, 2, 3), b4 = __builtin_shufflevector(m8, m8, 4, 5, 6, 7);
  const vf4 m4 = a4 < b4 ? a4 : b4;
  const vf2 a2 = __builtin_shufflevector(m4, m4, 0, 1), b2 = __builtin_shufflevector(m4, m4, 2, 3);
  const vf2 m2 = a2 < b2 ? a2 : b2;
  return m2[0] < m2[1] ? m2[0] : m2[1];
}
GN_INLINE float min16f(vf16 v) {
  const vf8 a8 = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7);
  const vf8 b8 = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  return min8f(a8 < b8 ? a8 : b8);
}
GN_INLINE vf16 vmin(vf16 a, vf16 b) { return a < b ? a : b; }
GN_INLINE vf16 vmax(vf16 a, vf16 b) { return a > b ? a : b; }

// The same 16 float lanes as two 8-lane halves, for the clones without AVX-512: there GCC 12
// keeps a 512-bit generic vector in memory and splits every operation through the stack (a
// contiguous float32 forward ran at 0.26-0.40x torch's AVX2 kernels on the x86-64-v3 clone),
// where 256-bit halves stay in registers. Lane for lane the same operations as vf16 (the
// reductions start at the same halving), so the same bits. Loops templated on the lane type
// take vf16 where wide_vectors() and vf8x2 elsewhere.
struct vf8x2 {
  vf8 lo, hi;
};
GN_INLINE vf8x2 operator+(vf8x2 a, vf8x2 b) { return {a.lo + b.lo, a.hi + b.hi}; }
GN_INLINE vf8x2 operator-(vf8x2 a, vf8x2 b) { return {a.lo - b.lo, a.hi - b.hi}; }
GN_INLINE vf8x2 operator*(vf8x2 a, vf8x2 b) { return {a.lo * b.lo, a.hi * b.hi}; }
GN_INLINE vf8x2 operator-(vf8x2 a, float b) { return {a.lo - b, a.hi - b}; }
GN_INLINE vf8x2 operator-(vf8x2 a) { return {-a.lo, -a.hi}; }
GN_INLINE vf8x2& operator+=(vf8x2& a, vf8x2 b) {
  a.lo += b.lo;
  a.hi += b.hi;
  return a;
}
GN_INLINE vf8x2 vmin(vf8x2 a, vf8x2 b) { return {a.lo < b.lo ? a.lo : b.lo, a.hi < b.hi ? a.hi : b.hi}; }
GN_INLINE vf8x2 vmax(vf8x2 a, vf8x2 b) { return {a.lo > b.lo ? a.lo : b.lo, a.hi > b.hi ? a.hi : b.hi}; }
GN_INLINE float reduce16f(vf8x2 v) { return reduce8f(v.lo + v.hi); }
GN_INLINE float min16f(vf8x2 v) { return min8f(v.lo < v.hi ? v.lo : v.hi); }

// The double counterpart: vd8's 8 lanes as two 4-lane halves (the wide vd8 goes with vf16).
struct vd4x2 {
  vd4 lo, hi;
};
GN_INLINE vd4x2& operator+=(vd4x2& a, vd4x2 b) {
  a.lo += b.lo;
  a.hi += b.hi;
  return a;
}
GN_INLINE reduce_t reduce_vectors(vd4x2 a, vd4x2 b) { return reduce4d((a.lo + b.lo) + (a.hi + b.hi)); }

GN_INLINE vf8 load8f(const float* p) {
  vf8 v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
// upper_halves on eight lanes: the widening conversion of eight 16-bit lanes (zero-extend, then
// shift) became two four-lane conversions and a byte shift on the AVX-512 clone, and halved the
// speed of the bfloat16 gradient sums' row loop (loops_backward.cpp, grad_rows_float).
template <typename R>
GN_INLINE R upper_halves8(vh8 h) {
  const vh8 zero = {};
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  const vh16 halves = __builtin_shufflevector(h, zero, 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
#else
  const vh16 halves = __builtin_shufflevector(zero, h, 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
#endif
  R r;
  __builtin_memcpy(&r, &halves, sizeof(r));
  return r;
}
GN_INLINE vf8 load8f(const c10::BFloat16* p) {
  vh8 h;
  __builtin_memcpy(&h, p, sizeof(h));
  return upper_halves8<vf8>(h);
}
GN_INLINE vf8 load8f(const c10::Half* p) {
  vh8 h;
  __builtin_memcpy(&h, p, sizeof(h));
  return half_bits_to_float<vu8, vf8>(upper_halves8<vu8>(h));
}
GN_INLINE void store8f(float* p, vf8 v) { __builtin_memcpy(p, &v, sizeof(v)); }

// Sixteen consecutive values as the lane type V (vf16 or vf8x2), and V with every lane v.
template <typename V, typename T>
GN_INLINE V load16(const T* p) {
  if constexpr (std::is_same_v<V, vf16>) {
    return load16f(p);
  } else {
    return {load8f(p), load8f(p + 8)};
  }
}
template <typename V>
GN_INLINE V splat(float v) {
  if constexpr (std::is_same_v<V, vf16>) {
    return v - vf16{};
  } else {
    return {v - vf8{}, v - vf8{}};
  }
}

// Whether the loader picked the AVX-512 clone of the loops (GN_CLONES, as loops_isa()): the
// 512-bit lane types pay only there. GROUPNORM_EXT_CPU_LANES=narrow takes the 8-lane halves
// anyway (read once; the tests check that both give the same bits).
inline bool wide_vectors() {
  static const bool wide = [] {
    const char* env = std::getenv("GROUPNORM_EXT_CPU_LANES");
    if (env != nullptr && std::string_view(env) == "narrow") return false;
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("x86-64-v4") != 0;
#else
    return true;
#endif
  }();
  return wide;
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
// called for consecutive ranges in order; kLines lines are computed per round of stores.
template <int kLines = 1, typename T, typename F>
GN_INLINE void write_streamed(T* dst, int64_t n, const F& compute) {
#ifdef GN_STREAMING_STORES
  const uintptr_t addr = reinterpret_cast<uintptr_t>(dst);
  if (addr % sizeof(T) == 0) {
    constexpr int64_t kLine = kLines * kLineBytes / sizeof(T);
    // Up to the first line boundary, and the last partial block: plain stores.
    const int64_t head = std::min<int64_t>(n, ((kLineBytes - addr % kLineBytes) % kLineBytes) / sizeof(T));
    if (head > 0) compute(dst, 0, head);
    int64_t i = head;
    for (; i + kLine <= n; i += kLine) {
      alignas(kLineBytes) T line[kLine];
      compute(line, i, kLine);
      char* out = reinterpret_cast<char*>(dst + i);
      const char* src = reinterpret_cast<const char*>(line);
      for (int q = 0; q < 4 * kLines; ++q) {
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

#ifdef GN_STREAMING_STORES
// Sixteen floats in lanes V (vf16, or vf8x2 on the clones without AVX-512) to the line at p
// (64-byte aligned) with four 16-byte streaming stores, straight from the registers: the float32
// row loops that write whole lines use it in place of write_streamed's line-sized local, whose
// store and reload of every element cost more than the loop's own work (loops_backward.cpp,
// grad_input_rows_streamed). SSE2 stores, as write_streamed's, so every clone inlines them.
template <typename V>
GN_INLINE void store_streamed16(float* p, V v) {
  if constexpr (std::is_same_v<V, vf16>) {
    _mm_stream_ps(p, (__m128)__builtin_shufflevector(v, v, 0, 1, 2, 3));
    _mm_stream_ps(p + 4, (__m128)__builtin_shufflevector(v, v, 4, 5, 6, 7));
    _mm_stream_ps(p + 8, (__m128)__builtin_shufflevector(v, v, 8, 9, 10, 11));
    _mm_stream_ps(p + 12, (__m128)__builtin_shufflevector(v, v, 12, 13, 14, 15));
  } else {
    _mm_stream_ps(p, (__m128)__builtin_shufflevector(v.lo, v.lo, 0, 1, 2, 3));
    _mm_stream_ps(p + 4, (__m128)__builtin_shufflevector(v.lo, v.lo, 4, 5, 6, 7));
    _mm_stream_ps(p + 8, (__m128)__builtin_shufflevector(v.hi, v.hi, 0, 1, 2, 3));
    _mm_stream_ps(p + 12, (__m128)__builtin_shufflevector(v.hi, v.hi, 4, 5, 6, 7));
  }
}
#endif

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

// float16's F16C statistics (loops_half.inc, sum_dev_rows) sum chunks of at most
// kSumColumnOrderMaxRows rows a block of kSumColumnBlock channels at a time, down all the rows: the
// block's sums then stay in registers for the whole chunk instead of being loaded and stored every
// few rows. Per channel the same additions in the same order as the row loop, so the same bits
// (the clones' float deviations are faster in row order: loops_forward.cpp, sum_dev_rows_impl).
constexpr int64_t kSumColumnBlock = 16;
constexpr int64_t kSumColumnOrderMaxRows = 64;

// The backward's channels-last gradient sums take rows one at a time into float sums of a block
// of this many rows, then add those to double sums (loops_backward.cpp, grad_sums_rows_float; the
// F16C copy in loops_half.inc), walking rows wider than kGradPieceChannels a piece at a time (the
// float sums and centres of a piece: 24 KiB of scratch).
constexpr int64_t kGradRowBlock = 32;
constexpr int64_t kGradPieceChannels = 2048;
// Whole blocks of kGradRegisterChannels channels of rows of up to that many channels, and of rows
// in cache of up to kGradRegisterRowBytes, keep those float sums in registers down a block's rows
// (loops_backward.cpp, grad_rows_in_registers).
constexpr int64_t kGradRegisterChannels = 32;
constexpr int64_t kGradRegisterRowBytes = 512;

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

// Per channel of float-formed sums: trusted(c) for each channel float_sums_trusted accepts (all of
// them, tested at once, in the common case), redo(c, end) for each run [c, end) of channels it
// rejects. Per channel, not per call: a channel's sums then depend on its own data only, and a
// strip of the rows (the strip schedules) gets the bits of the whole rows.
template <typename Trusted, typename Redo>
GN_INLINE void for_trusted_channels(const reduce_t* first, const reduce_t* second, int64_t C, reduce_t floor,
                                    const Trusted& trusted, const Redo& redo) {
  const bool all = float_sums_trusted(first, second, C, floor);
  const auto ok = [&](int64_t c) GN_LAMBDA_INLINE { return all || float_sums_trusted(first + c, second + c, 1, floor); };
  for (int64_t c = 0; c < C;) {
    if (ok(c)) {
      trusted(c++);
      continue;
    }
    int64_t end = c + 1;
    while (end < C && !ok(end)) ++end;
    redo(c, end);
    c = end;
  }
}

}  // namespace simd
}  // namespace cpu
}  // namespace groupnorm_ext
