// The backward's loops declared in loops.h: the gradient sums (sum dy, sum dy * (x - mean))
// of contiguous runs and of channels-last rows, and the grad_input passes. GCC
// `target_clones` wrappers around always-inline templates, as loops_forward.cpp.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../plan.h"
#include "loops.h"
#include "loops_half.h"
#include "simd.h"

namespace groupnorm_ext {
namespace cpu {
namespace {

using namespace simd;

// Sixteen consecutive values as two vectors of doubles, converted through one float
// vector: for bfloat16 one widening load and a shift, where load8 twice lowered to
// four-lane pieces and shuffles that cost more than the arithmetic.
template <typename T>
GN_INLINE void load16d(const T* p, vd8* lo, vd8* hi) {
  if constexpr (std::is_same_v<T, double>) {
    *lo = load8(p);
    *hi = load8(p + 8);
  } else {
    widen16(load16f(p), lo, hi);
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
  vd8 l, h;
  widen16(v, &l, &h);
  *lo += l;
  *hi += h;
}
GN_INLINE void add_widened(vf8x2 v, vd4x2* lo, vd4x2* hi) {
  *lo += vd4x2{__builtin_convertvector(__builtin_shufflevector(v.lo, v.lo, 0, 1, 2, 3), vd4),
               __builtin_convertvector(__builtin_shufflevector(v.lo, v.lo, 4, 5, 6, 7), vd4)};
  *hi += vd4x2{__builtin_convertvector(__builtin_shufflevector(v.hi, v.hi, 0, 1, 2, 3), vd4),
               __builtin_convertvector(__builtin_shufflevector(v.hi, v.hi, 4, 5, 6, 7), vd4)};
}

// The double lanes that go with float lanes V (simd.h): vd8 with vf16, vd4x2 with vf8x2.
template <typename V>
using double_lanes_t = std::conditional_t<std::is_same_v<V, vf16>, vd8, vd4x2>;

// Gradient sums of float data with half the widening: dy and dy * (x - m), m = the mean
// rounded to float, formed in float, four vectors (64 elements) summed in float, then added to
// double lanes; sum_dy_xc = sum dy * (x - m) - (mean - m) * sum dy restores the exact centre
// (a float mean is off by up to 2^-24 |mean|, which a large offset in x would otherwise turn
// into an error of that size in every centred value). Each term is within 2^-23 of its
// double value (x - m is exact for x within a factor 2 of m) and a four-term float sum adds
// at most 3 roundings of 2^-24 of its terms' magnitude: the accuracy of the NSC forward's
// four-row sums. Returns false (nothing written) where float cannot be trusted, as the
// bfloat16 path: overflow, Inf / NaN, or sums small enough that products may have underflowed.
template <typename V>
GN_INLINE bool grad_sums_float(const float* dy, const float* x, int64_t n, reduce_t mean, reduce_t* sum_dy,
                               reduce_t* sum_dy_xc) {
  const float m = static_cast<float>(mean);
  double_lanes_t<V> g0 = {}, g1 = {}, p0 = {}, p1 = {};
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const V a0 = load16<V>(dy + i), a1 = load16<V>(dy + i + 16), a2 = load16<V>(dy + i + 32), a3 = load16<V>(dy + i + 48);
    add_widened((a0 + a1) + (a2 + a3), &g0, &g1);
    // Products named in order: of the two products an add can contract with, GCC fuses the one
    // it meets first, and the operands of an overloaded + (vf8x2) would be evaluated in another
    // order than those of a built-in one (vf16).
    const V t0 = a0 * (load16<V>(x + i) - m);
    const V t1 = a1 * (load16<V>(x + i + 16) - m);
    const V t2 = a2 * (load16<V>(x + i + 32) - m);
    const V t3 = a3 * (load16<V>(x + i + 48) - m);
    add_widened((t0 + t1) + (t2 + t3), &p0, &p1);
  }
  for (; i + 16 <= n; i += 16) {
    const V a = load16<V>(dy + i);
    add_widened(a, &g0, &g1);
    add_widened(a * (load16<V>(x + i) - m), &p0, &p1);
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

// The float-lane sums of bfloat16 / half data (lanes V, as moments_float); false (nothing
// written) where float cannot be trusted.
template <typename V, typename T>
GN_INLINE bool grad_sums_half_float(const T* dy, const T* x, int64_t n, reduce_t mean, reduce_t* sum_dy,
                                    reduce_t* sum_dy_xc) {
  const float m = static_cast<float>(mean);
  V g0 = {}, g1 = {}, p0 = {}, p1 = {};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const V a = load16<V>(dy + i), b = load16<V>(dy + i + 16);
    g0 += a;
    g1 += b;
    p0 += a * (load16<V>(x + i) - m);
    p1 += b * (load16<V>(x + i + 16) - m);
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
    return true;
  }
  // Overflow past float's range (|dy * (x - mean)| near 3e38), Inf / NaN in the data, or
  // products that may have fallen below float's normal range (a sum under kFloatSumFloor:
  // n <= 2^13 products each under 1.2e-38 add up to less; this also catches an all-zero dy):
  // the caller sums the chunk again in double, which gives the same sums as float and double
  // inputs get.
  return false;
}

template <typename T>
GN_INLINE void grad_sums_impl(const T* dy, const T* x, int64_t n, reduce_t mean, reduce_t* sum_dy,
                              reduce_t* sum_dy_xc) {
  if constexpr (std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>) {
    bool staged = false;
    if constexpr (std::is_same_v<T, c10::Half>) {
      // float16 on F16C (loops_half.h): dy and x converted into L1 once, then the same float
      // lanes over the same floats (the emulated conversions took 3x bfloat16's time).
      if ((staged = f16c_loops() && n <= kChunkTargetElems)) {
        alignas(64) float staged_dy[kChunkTargetElems], staged_x[kChunkTargetElems];
        half_to_float_f16c(dy, staged_dy, n);
        half_to_float_f16c(x, staged_x, n);
        const float* sdy = staged_dy;
        const float* sx = staged_x;
        if (wide_vectors() ? grad_sums_half_float<vf16>(sdy, sx, n, mean, sum_dy, sum_dy_xc)
                           : grad_sums_half_float<vf8x2>(sdy, sx, n, mean, sum_dy, sum_dy_xc)) {
          return;
        }
      }
    }
    if (!staged && (wide_vectors() ? grad_sums_half_float<vf16>(dy, x, n, mean, sum_dy, sum_dy_xc)
                                   : grad_sums_half_float<vf8x2>(dy, x, n, mean, sum_dy, sum_dy_xc))) {
      return;
    }
  } else if constexpr (std::is_same_v<T, float>) {
    if (wide_vectors() ? grad_sums_float<vf16>(dy, x, n, mean, sum_dy, sum_dy_xc)
                       : grad_sums_float<vf8x2>(dy, x, n, mean, sum_dy, sum_dy_xc)) {
      return;
    }
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

// Channels-last gradient sums, a row at a time: the float terms of a block of kGradRowBlock rows
// are added row by row into float sums of the block's channels (scratch in L1), which then join
// the double sums; from memory, the next row is the next address, so the hardware prefetchers
// see one sequential stream per tensor (dy, x). Four-row sums added pairwise over sixteen rows,
// eight streams a row apart, read memory slower on this project's AMD EPYC machines: 2 cores,
// float32 channels_last, these loops alone in one process, that order (with its software prefetch
// on rows of up to 1280 bytes) -> this one: 1x1280x64x64 0.58 -> 0.50 ms, 2x640x64x64 0.63 -> 0.49,
// 16x128x64x64 1.32 -> 0.98, 2x32x64x64x64 channels_last_3d 2.66 -> 2.24, 1x32x512x512 1.09 ->
// 0.93; float16 2x1280x64x64 0.87 -> 0.61; torch's whole float sums 0.47, 0.48, -, 2.38, -. Not
// everywhere: bfloat16 rows of 64-128 channels from memory went 0.39 -> 0.46-0.51 ms
// (16x128x64x64), where the loads and stores of the float sums bound the loop (rows of up to 32
// channels keep them in registers: grad_rows_in_registers).
// 256-bit lanes: 512-bit ones were 10-20% slower from memory (and faster on samples in L1/L2).
//
// Per channel: f = g for a block's first row, then f = f + g in row order, and the same for
// dy * (x - m) as f = f + g * (x - m) (one product per add: each copy of the loop, vector body or
// scalar tail, forms the same fused multiply-add where the clone has one), m the mean rounded to
// float; each block's f then added to the double sum. A channel's sums depend on its own column
// only: a strip of the rows gets the bits of the whole rows. A block's float sum of 32 terms is
// within 31 roundings of 2^-24 of their magnitude (torch sums a sample's rows in float).

// Rows [0, R) `ld` apart added to the float sums, per channel in row order: f = f + g and
// f = f + g * (x - m) from f = 0, one product per add (every copy forms the same fused
// multiply-add). R only sets how many rows share a load and store of the sums, not the
// additions: any R, the same bits. Eight-lane vectors written out: auto-vectorized, the AVX-512
// clone took 512-bit lanes (above).
template <int R, typename T>
GN_INLINE void grad_rows_float(const T* dy, const T* x, int64_t ld, int64_t w, const float* m, float* f_dy,
                               float* f_dy_xc) {
  int64_t i = 0;
  for (; i + 8 <= w; i += 8) {
    const vf8 mi = load8f(m + i);
    vf8 s_dy = load8f(f_dy + i), s_dy_xc = load8f(f_dy_xc + i);
    for (int r = 0; r < R; ++r) {
      const vf8 g = load8f(dy + r * ld + i);
      s_dy = s_dy + g;
      s_dy_xc = s_dy_xc + g * (load8f(x + r * ld + i) - mi);
    }
    store8f(f_dy + i, s_dy);
    store8f(f_dy_xc + i, s_dy_xc);
  }
  for (; i < w; ++i) {
    float s_dy = f_dy[i], s_dy_xc = f_dy_xc[i];
    for (int r = 0; r < R; ++r) {
      const float g = load<float>(dy + r * ld + i);
      s_dy = s_dy + g;
      s_dy_xc = s_dy_xc + g * (load<float>(x + r * ld + i) - m[i]);
    }
    f_dy[i] = s_dy;
    f_dy_xc[i] = s_dy_xc;
  }
}

// grad_rows_float for the V vectors of channels [0, 8 V) down `rows` rows, their sums in
// registers for the whole block (the same additions, so the same bits): no loads and stores of
// sums, which bound the L1 loop, bfloat16's most. Rows of up to kGradRegisterChannels channels go
// this way, and in cache rows of up to kGradRegisterRowBytes, kGradRegisterChannels channels at a
// time (a block's rows of x and dy stay in L1 from the first column block to the last); from
// memory such column walks were slower than the L1 sums (registers_take). 2 cores, these loops
// alone, L1 sums -> registers: 2x32x64x64x64 channels_last_3d float32 1.96 -> 1.33 ms, bfloat16
// 1.19 -> 0.71, float16 0.95 -> 0.65; 2x128x64x64 0.058 -> 0.054, 8x64x8x8 0.0051 -> 0.0045; but
// from memory 16x128x64x64 0.85 -> 1.39. Whole blocks of kGradRegisterChannels only: GCC 13
// compiled a block of one 8-lane vector (V = 1, the last 8 of 40 channels) without the fused
// multiply-add the L1 loop forms, and 7 of 40 sums came out an ulp apart between the two walks
// (test_software_prefetch on the H100 machine's CPU; GCC 12 here agreed).
GN_INLINE bool registers_take(int64_t w, int64_t elem_bytes, bool from_memory) {
  return w <= kGradRegisterChannels || (!from_memory && w * elem_bytes <= kGradRegisterRowBytes);
}

template <int V, typename T>
GN_INLINE void grad_rows_in_registers(const T* dy, const T* x, int64_t ld, int64_t rows, const float* m, float* f_dy,
                                      float* f_dy_xc) {
  vf8 mv[V], s_dy[V], s_dy_xc[V];
  for (int h = 0; h < V; ++h) {
    mv[h] = load8f(m + 8 * h);
    s_dy[h] = s_dy_xc[h] = vf8{};
  }
  for (int64_t r = 0; r < rows; ++r, dy += ld, x += ld) {
    for (int h = 0; h < V; ++h) {
      const vf8 g = load8f(dy + 8 * h);
      s_dy[h] = s_dy[h] + g;
      s_dy_xc[h] = s_dy_xc[h] + g * (load8f(x + 8 * h) - mv[h]);
    }
  }
  for (int h = 0; h < V; ++h) {
    store8f(f_dy + 8 * h, s_dy[h]);
    store8f(f_dy_xc + 8 * h, s_dy_xc[h]);
  }
}

// The float pass of grad_sums_rows_impl: sums of dy and dy * (x - m), m = float(mean), into the
// double sums (set, not added to). Narrow rows keep their whole vectors' sums in registers
// (grad_rows_in_registers). Otherwise, rows from memory
// (from_memory) whose walk is contiguous (whole rows: the piece is the row) go one per pass over
// the float sums: the hardware prefetchers then see one stream per tensor. Elsewhere four rows
// share a pass, a quarter of the loads and stores of the sums, which bound the loop on data in
// cache. 2 cores, float32, these loops alone, one row / four rows a pass: 1x1280x64x64 0.51 /
// 0.63 ms, 2x32x64x64x64 channels_last_3d 2.36 / 3.09; 4x1280x8x8 0.025 / 0.022, 4x320x32x32
// 0.086 / 0.072, 8x2560x16x16 (pieces of 2048 channels down 64-row chunks) 1.21 / 0.71.
template <typename T>
GN_INLINE void grad_sums_rows_float(const T* dy, const T* x, int64_t rows, int64_t width, int64_t ld,
                                    const reduce_t* mean, reduce_t* sum_dy, reduce_t* sum_dy_xc, bool from_memory) {
  for (int64_t c0 = 0; c0 < width; c0 += kGradPieceChannels) {
    const int64_t w = std::min(kGradPieceChannels, width - c0);
    const bool one_row_per_pass = from_memory && w == ld;
    const int64_t in_registers =
        registers_take(w, sizeof(T), from_memory) ? w / kGradRegisterChannels * kGradRegisterChannels : 0;
    alignas(64) float m[kGradPieceChannels], f_dy[kGradPieceChannels], f_dy_xc[kGradPieceChannels];
    reduce_t* const s_dy = sum_dy + c0;
    reduce_t* const s_dy_xc = sum_dy_xc + c0;
    for (int64_t i = 0; i < w; ++i) {
      m[i] = static_cast<float>(mean[c0 + i]);
      s_dy[i] = s_dy_xc[i] = 0;
    }
    const T* pdy = dy + c0;
    const T* px = x + c0;
    for (int64_t r0 = 0; r0 < rows; r0 += kGradRowBlock) {
      const int64_t r1 = std::min(rows, r0 + kGradRowBlock);
      const T* bdy = pdy + r0 * ld;
      const T* bx = px + r0 * ld;
      for (int64_t c = 0; c < in_registers; c += kGradRegisterChannels) {
        grad_rows_in_registers<kGradRegisterChannels / 8>(bdy + c, bx + c, ld, r1 - r0, m + c, f_dy + c, f_dy_xc + c);
      }
      if (in_registers < w) {  // the rest of the piece: sums in L1
        const int64_t c = in_registers, n = w - in_registers;
        std::fill(f_dy + c, f_dy + w, 0.0f);
        std::fill(f_dy_xc + c, f_dy_xc + w, 0.0f);
        int64_t r = r0;
        if (!one_row_per_pass) {
          for (; r + 4 <= r1; r += 4) grad_rows_float<4>(pdy + r * ld + c, px + r * ld + c, ld, n, m + c, f_dy + c, f_dy_xc + c);
        }
        for (; r < r1; ++r) grad_rows_float<1>(pdy + r * ld + c, px + r * ld + c, ld, n, m + c, f_dy + c, f_dy_xc + c);
      }
      for (int64_t i = 0; i < w; ++i) {
        s_dy[i] += static_cast<reduce_t>(f_dy[i]);
        s_dy_xc[i] += static_cast<reduce_t>(f_dy_xc[i]);
      }
    }
  }
}

// The same sums in double, row by row into the double sums: float64 data, and the channels whose
// float sums cannot be trusted (grad_sums_rows_impl).
template <typename T>
GN_INLINE void grad_sums_rows_double(const T* dy, const T* x, int64_t rows, int64_t width, int64_t ld,
                                     const reduce_t* mean, reduce_t* __restrict sum_dy,
                                     reduce_t* __restrict sum_dy_xc) {
  for (int64_t i = 0; i < width; ++i) sum_dy[i] = sum_dy_xc[i] = 0;
  for (int64_t r = 0; r < rows; ++r, dy += ld, x += ld) {
    for (int64_t i = 0; i < width; ++i) {
      const reduce_t g = load<reduce_t>(dy + i);
      sum_dy[i] = sum_dy[i] + g;
      sum_dy_xc[i] = sum_dy_xc[i] + g * (load<reduce_t>(x + i) - mean[i]);
    }
  }
}

// Float terms for float / bfloat16 / half data (grad_sums_rows_float; float16 on F16C in
// loops_half.inc, the same order), then double sums corrected for the float centre:
// sum dy * (x - mean) = sum dy * (x - m) - (mean - m) * sum dy. Channels float cannot be trusted
// with are summed again in double, a run of such channels at a time (simd.h
// for_trusted_channels): Inf / NaN (overflow of a product past 3e38, or such data), and a |sum of
// products| under kFloatSumFloor, where products may have fallen below float's normal range --
// unless both sums are exactly zero (a channel whose dy is all zeros).
template <typename T>
GN_INLINE void grad_sums_rows_impl(const T* dy, const T* x, int64_t rows, int64_t C, int64_t ld, const reduce_t* mean,
                                   reduce_t* sum_dy, reduce_t* sum_dy_xc, bool from_memory) {
  if constexpr (!std::is_same_v<T, double>) {
    bool done = false;
    if constexpr (std::is_same_v<T, c10::Half>) {
      if ((done = f16c_loops())) grad_sums_rows_f16c(dy, x, rows, C, ld, mean, sum_dy, sum_dy_xc, from_memory);
    }
    if (!done) grad_sums_rows_float(dy, x, rows, C, ld, mean, sum_dy, sum_dy_xc, from_memory);
    for_trusted_channels(
        sum_dy, sum_dy_xc, C, kFloatSumFloor,
        [&](int64_t c) GN_LAMBDA_INLINE {
          sum_dy_xc[c] -= (mean[c] - static_cast<reduce_t>(static_cast<float>(mean[c]))) * sum_dy[c];
        },
        [&](int64_t c, int64_t end) GN_LAMBDA_INLINE {
          grad_sums_rows_double(dy + c, x + c, rows, end - c, ld, mean + c, sum_dy + c, sum_dy_xc + c);
        });
    return;
  }
  grad_sums_rows_double(dy, x, rows, C, ld, mean, sum_dy, sum_dy_xc);
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

// float32 rows streamed straight from the vector registers, 16 channels at a time (lanes V: vf16,
// or vf8x2 on the clones without AVX-512; simd.h store_streamed16): where the rows of dx are whole
// 64-byte lines. write_streamed's line-sized local cost a store and a reload of every
// element besides the five coefficient loads; from registers, grad_input alone from memory
// (2 cores, flushed cache): 1x1280x64x64 1.41 -> 0.95 ms, 2x640x64x64 1.22 -> 0.84, 4x320x64x64
// 0.90 -> 0.69. The expression of grad_input_rows_impl, so the same fused multiply-adds and bits.
#ifdef GN_STREAMING_STORES
template <typename V>
GN_INLINE void grad_input_rows_streamed(const float* dy, const float* x, float* dx, int64_t rows, int64_t width,
                                        int64_t ld, const float* a, const float* mean, const float* rstd,
                                        const float* kxhat, const float* kc) {
  for (int64_t r = 0; r < rows; ++r, x += ld, dy += ld, dx += ld) {
    for (int64_t i = 0; i < width; i += 16) {
      const V xhat = (load16<V>(x + i) - load16<V>(mean + i)) * load16<V>(rstd + i);
      const V out = load16<V>(a + i) * load16<V>(dy + i) + (xhat * load16<V>(kxhat + i) + load16<V>(kc + i));
      store_streamed16(dx + i, out);
    }
  }
}
#endif

// grad_input_rows_streamed where it applies (float32, rows of `width` channels `ld` apart, each
// whole lines: width and ld multiples of 16, dx line-aligned); false (nothing written) elsewhere.
template <typename T, typename acc_t>
GN_INLINE bool grad_input_rows_stream_lines(const T* dy, const T* x, T* dx, int64_t rows, int64_t width, int64_t ld,
                                            const acc_t* a, const acc_t* mean, const acc_t* rstd, const acc_t* kxhat,
                                            const acc_t* kc) {
  if constexpr (std::is_same_v<T, float> && std::is_same_v<acc_t, float>) {
#ifdef GN_STREAMING_STORES
    if (width % 16 == 0 && ld % 16 == 0 && reinterpret_cast<uintptr_t>(dx) % kLineBytes == 0) {
      wide_vectors() ? grad_input_rows_streamed<vf16>(dy, x, dx, rows, width, ld, a, mean, rstd, kxhat, kc)
                     : grad_input_rows_streamed<vf8x2>(dy, x, dx, rows, width, ld, a, mean, rstd, kxhat, kc);
      return true;
    }
#endif
  }
  return false;
}

// float16 on F16C (loops_half.h) where the CPU has it: true when done there.
template <typename T, typename acc_t>
GN_INLINE bool grad_input_runs_on_f16c(const T* dy, const T* x, T* dx, int64_t runs, int64_t len, const acc_t* a,
                                       const acc_t* mean, const acc_t* rstd, const acc_t* kxhat, const acc_t* kc,
                                       bool stream) {
  if constexpr (std::is_same_v<T, c10::Half>) {
    if (f16c_loops()) {
      grad_input_runs_f16c(dy, x, dx, runs, len, a, mean, rstd, kxhat, kc, stream);
      return true;
    }
  }
  return false;
}
template <typename T, typename acc_t>
GN_INLINE bool grad_input_rows_on_f16c(const T* dy, const T* x, T* dx, int64_t rows, int64_t C, const acc_t* a,
                                       const acc_t* mean, const acc_t* rstd, const acc_t* kxhat, const acc_t* kc,
                                       bool stream) {
  if constexpr (std::is_same_v<T, c10::Half>) {
    if (f16c_loops()) {
      grad_input_rows_f16c(dy, x, dx, rows, C, a, mean, rstd, kxhat, kc, stream);
      return true;
    }
  }
  return false;
}

}  // namespace

#define GN_DEFINE_BACKWARD_LOOPS(T)                                                            \
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
  GN_CLONES void loop_grad_sums_slabs(const T* dy, const T* x, int64_t slabs, int64_t runs,    \
                                      int64_t len, const opmath_t<T>* mean, reduce_t* sum_dy,  \
                                      reduce_t* sum_dy_xc) {                                   \
    for (int64_t s = 0, i = 0; s < slabs; ++s) {                                               \
      const reduce_t m = mean[s];                                                              \
      for (int64_t r = 0; r < runs; ++r, ++i, dy += len, x += len) {                           \
        grad_sums_impl(dy, x, len, m, sum_dy + i, sum_dy_xc + i);                              \
      }                                                                                        \
    }                                                                                          \
  }                                                                                            \
  GN_CLONES void loop_grad_sums_rows(const T* dy, const T* x, int64_t rows, int64_t C,        \
                                     int64_t ld, const reduce_t* mean, reduce_t* sum_dy,       \
                                     reduce_t* sum_dy_xc, bool from_memory) {                  \
    grad_sums_rows_impl(dy, x, rows, C, ld, mean, sum_dy, sum_dy_xc, from_memory);             \
  }                                                                                            \
  GN_CLONES void loop_grad_input(const T* dy, const T* x, T* dx, int64_t n, opmath_t<T> a,     \
                                 opmath_t<T> mean, opmath_t<T> rstd, opmath_t<T> kxhat,        \
                                 opmath_t<T> kc, bool stream) {                                \
    if (grad_input_runs_on_f16c(dy, x, dx, 1, n, &a, &mean, &rstd, &kxhat, &kc, stream)) return; \
    if (!stream) return grad_input_impl(dy, x, dx, n, a, mean, rstd, kxhat, kc);               \
    write_streamed(dx, n, [&](T* out, int64_t b, int64_t len) GN_LAMBDA_INLINE {               \
      grad_input_impl(dy + b, x + b, out, len, a, mean, rstd, kxhat, kc);                      \
    });                                                                                        \
  }                                                                                            \
  GN_CLONES void loop_grad_input_runs(const T* dy, const T* x, T* dx, int64_t runs, int64_t len, \
                                      const opmath_t<T>* a, const opmath_t<T>* mean,           \
                                      const opmath_t<T>* rstd, const opmath_t<T>* kxhat,       \
                                      const opmath_t<T>* kc, bool stream) {                    \
    if (grad_input_runs_on_f16c(dy, x, dx, runs, len, a, mean, rstd, kxhat, kc, stream)) return; \
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
                                      int64_t ld, const opmath_t<T>* a, const opmath_t<T>* mean, \
                                      const opmath_t<T>* rstd, const opmath_t<T>* kxhat,       \
                                      const opmath_t<T>* kc, bool stream, bool prefetch) {     \
    if (ld != C) { /* a strip (Backward::run_strips): in cache, no prefetch; a row at a time,    \
                      streamed with coefficients from its first channel */                    \
      if (stream && grad_input_rows_stream_lines(dy, x, dx, rows, C, ld, a, mean, rstd, kxhat, kc)) return; \
      for (int64_t r = 0; r < rows; ++r, dy += ld, x += ld, dx += ld) {                        \
        if (grad_input_rows_on_f16c(dy, x, dx, 1, C, a, mean, rstd, kxhat, kc, stream)) continue; \
        if (!stream) {                                                                         \
          grad_input_rows_impl(dy, x, dx, 1, C, a, mean, rstd, kxhat, kc);                     \
          continue;                                                                            \
        }                                                                                      \
        write_streamed(dx, C, [&](T* out, int64_t b, int64_t len) GN_LAMBDA_INLINE {           \
          grad_input_rows_impl(dy + b, x + b, out, 1, len, a + b, mean + b, rstd + b, kxhat + b, kc + b); \
        });                                                                                    \
      }                                                                                        \
      return;                                                                                  \
    }                                                                                          \
    if (grad_input_rows_on_f16c(dy, x, dx, rows, C, a, mean, rstd, kxhat, kc, stream)) return; \
    if (!stream && prefetch) {                                                                 \
      /* steps of about four lines, inputs 4 KiB and output 8 KiB ahead (see normalize_rows): \
         2x320x64x64 float32 channels_last fwd+bwd, x just written, 1.02 -> 0.90 ms */        \
      return for_prefetched_steps(                                                             \
          rows, C * static_cast<int64_t>(sizeof(T)), dx,                                       \
          [&](int64_t r, int64_t n) GN_LAMBDA_INLINE {                                         \
            grad_input_rows_impl(dy + r * C, x + r * C, dx + r * C, n, C, a, mean, rstd, kxhat, kc); \
          },                                                                                   \
          dy, x);                                                                              \
    }                                                                                          \
    if (!stream) return grad_input_rows_impl(dy, x, dx, rows, C, a, mean, rstd, kxhat, kc);    \
    if (grad_input_rows_stream_lines(dy, x, dx, rows, C, C, a, mean, rstd, kxhat, kc)) return;  \
    WrappedCoefficients<opmath_t<T>, 5> k({a, mean, rstd, kxhat, kc}, C, kLineBytes / sizeof(T)); \
    write_streamed(dx, rows * C, [&](T* out, int64_t b, int64_t len) GN_LAMBDA_INLINE {        \
      grad_input_rows_impl(dy + b, x + b, out, 1, len, k.at(0), k.at(1), k.at(2), k.at(3), k.at(4)); \
      k.advance(len, C);                                                                       \
    });                                                                                        \
  }

GN_DEFINE_BACKWARD_LOOPS(float)
GN_DEFINE_BACKWARD_LOOPS(double)
GN_DEFINE_BACKWARD_LOOPS(c10::Half)
GN_DEFINE_BACKWARD_LOOPS(c10::BFloat16)
#undef GN_DEFINE_BACKWARD_LOOPS

}  // namespace cpu
}  // namespace groupnorm_ext
