// The forward's loops declared in loops.h: sums and moments of contiguous runs, the
// channels-last per-channel deviation sums, and the normalize passes. Each public function is
// a GCC `target_clones` wrapper around an always-inline template (building blocks in simd.h),
// so the template is compiled separately for every ISA and nothing else in the library changes
// ISA.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "../plan.h"
#include "loops_half.h"
#include "loops.h"
#include "simd.h"

namespace groupnorm_ext {
namespace cpu {
namespace {

using namespace simd;

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

// The float-lane moments of moments_impl, on lanes of type V (simd.h: vf16 or vf8x2).
template <typename V, typename T>
GN_INLINE void moments_float(const T* x, int64_t n, reduce_t* mean_out, reduce_t* m2_out) {
  const float first = static_cast<float>(x[0]);
  V s0 = {}, s1 = {}, lo = splat<V>(first), hi = lo;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    prefetch_ahead<32 * sizeof(T)>(x + i);
    const V a = load16<V>(x + i), b = load16<V>(x + i + 16);
    s0 += a;
    s1 += b;
    lo = vmin(a, lo);
    hi = vmax(a, hi);
    lo = vmin(b, lo);
    hi = vmax(b, hi);
  }
  float sum = reduce16f(s0) + reduce16f(s1), vmin_all = min16f(lo), vmax_all = -min16f(-hi);
  for (; i < n; ++i) {
    const float v = static_cast<float>(x[i]);
    sum += v;
    vmin_all = v < vmin_all ? v : vmin_all;
    vmax_all = v > vmax_all ? v : vmax_all;
  }
  const float magnitude = vmax_all > -vmin_all ? vmax_all : -vmin_all;
  if (std::isfinite(sum) && magnitude < kFloatSafeMagnitude && vmin_all == vmax_all) {
    *mean_out = vmin_all;  // constant chunk
    *m2_out = 0;
    return;
  }
  // A float sum past float's range (finite data near its top, e.g. a constant 1e37 over 64
  // elements) is taken again in double: its inf would make every deviation NaN.
  const bool finite_sum = std::isfinite(sum);
  const reduce_t mean0 = (finite_sum ? static_cast<reduce_t>(sum) : sum_impl(x, n)) / static_cast<reduce_t>(n);
  reduce_t sum_d, sum_d2;
  if (finite_sum && magnitude < kFloatSafeMagnitude && vmax_all - vmin_all >= kFloatMinSpread) {
    const float mean0f = static_cast<float>(mean0);
    V d0 = {}, d1 = {}, q0 = {}, q1 = {};
    i = 0;
    for (; i + 32 <= n; i += 32) {
      const V a = load16<V>(x + i) - mean0f, b = load16<V>(x + i + 16) - mean0f;
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
    if constexpr (std::is_same_v<T, c10::Half>) {
      // float16 on F16C (loops_half.h): the chunk converted into L1 once, then the float32
      // moments over it, the same operations on the same floats (the emulated conversion in
      // both passes took twice bfloat16's time).
      if (f16c_loops() && n <= kChunkTargetElems) {
        alignas(64) float staged[kChunkTargetElems];
        half_to_float_f16c(x, staged, n);
        return moments_impl(static_cast<const float*>(staged), n, mean_out, m2_out);
      }
    }
    if (wide_vectors()) {
      moments_float<vf16>(x, n, mean_out, m2_out);
    } else {
      moments_float<vf8x2>(x, n, mean_out, m2_out);
    }
  }
}

// Centre first, then scale: (x - mean) keeps full precision when |mean| >> std, which a
// folded x * scale + (bias - mean * scale) loses to cancellation.
// Then the fused activation, in acc_t (float for half / bfloat16 data) before the one rounding.
template <Activation act, typename T, typename acc_t = opmath_t<T>>
GN_INLINE void normalize_impl(const T* x, T* y, int64_t n, acc_t mean, acc_t scale, acc_t bias) {
  for (int64_t i = 0; i < n; ++i) {
    y[i] = static_cast<T>(activation_forward<act>((load<acc_t>(x + i) - mean) * scale + bias));
  }
}

// Row loops take many rows per call: NSC rows can be as short as a few channels, where a
// call per row would cost more than its arithmetic.
template <Activation act, typename T, typename acc_t = opmath_t<T>>
GN_INLINE void normalize_rows_impl(const T* x, T* y, int64_t rows, int64_t C, const acc_t* mean,
                                   const acc_t* scale, const acc_t* bias, int64_t ld = 0) {
  if (ld == 0) ld = C;
  for (int64_t r = 0; r < rows; ++r, x += ld, y += ld) {
    for (int64_t i = 0; i < C; ++i) {
      y[i] = static_cast<T>(activation_forward<act>((load<acc_t>(x + i) - mean[i]) * scale[i] + bias[i]));
    }
  }
}

// The float32 identity normalization streamed straight from the vector registers (simd.h
// store_streamed16) instead of through write_streamed's line-sized local: the expression of
// normalize_impl / normalize_rows_impl, so the same fused multiply-add and bits. False (nothing
// written) for other types and activations, and for rows that are not whole lines of a
// line-aligned y; a run streams from its first line boundary, the elements before it and after
// its last whole line with plain stores. Forward alone from memory, 2 cores: 1-2% (2x32x64^3
// channels_last_3d 2.86 -> 2.82 ms, 1x1280x128x128 channels_last 4.80 -> 4.69 ms), contiguous
// within noise; the backward's grad_input, with five coefficient loads beside, gained 23-33%.
template <Activation act, typename T, typename acc_t>
GN_INLINE bool normalize_rows_stream_lines(const T* x, T* y, int64_t rows, int64_t width, int64_t ld,
                                           const acc_t* mean, const acc_t* scale, const acc_t* bias) {
  if constexpr (act == Activation::Identity && std::is_same_v<T, float> && std::is_same_v<acc_t, float>) {
#ifdef GN_STREAMING_STORES
    if (width % 16 != 0 || ld % 16 != 0 || reinterpret_cast<uintptr_t>(y) % kLineBytes != 0) return false;
    const auto rows_in = [&](auto lanes) GN_LAMBDA_INLINE {
      using V = decltype(lanes);
      for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * ld;
        float* yr = y + r * ld;
        for (int64_t i = 0; i < width; i += 16) {
          const V v = (load16<V>(xr + i) - load16<V>(mean + i)) * load16<V>(scale + i) + load16<V>(bias + i);
          store_streamed16(yr + i, v);
        }
      }
    };
    wide_vectors() ? rows_in(vf16{}) : rows_in(vf8x2{});
    return true;
#endif
  }
  return false;
}
template <Activation act, typename T, typename acc_t>
GN_INLINE bool normalize_run_stream_lines(const T* x, T* y, int64_t n, acc_t mean, acc_t scale, acc_t bias) {
  if constexpr (act == Activation::Identity && std::is_same_v<T, float> && std::is_same_v<acc_t, float>) {
#ifdef GN_STREAMING_STORES
    const uintptr_t address = reinterpret_cast<uintptr_t>(y);
    if (address % sizeof(float) != 0) return false;
    const int64_t head = std::min<int64_t>(n, static_cast<int64_t>((kLineBytes - address % kLineBytes) % kLineBytes) /
                                                  static_cast<int64_t>(sizeof(float)));
    normalize_impl<act>(x, y, head, mean, scale, bias);
    int64_t i = head;
    const auto lines_in = [&](auto lanes) GN_LAMBDA_INLINE {
      using V = decltype(lanes);
      const V m = splat<V>(mean), s = splat<V>(scale), b = splat<V>(bias);
      for (; i + 16 <= n; i += 16) store_streamed16(y + i, (load16<V>(x + i) - m) * s + b);
    };
    wide_vectors() ? lines_in(vf16{}) : lines_in(vf8x2{});
    normalize_impl<act>(x + i, y + i, n - i, mean, scale, bias);
    return true;
#endif
  }
  return false;
}

// Lines computed per round of streaming stores (write_streamed). One for the plain
// normalization; four with an activation, whose longer loop body GCC compiled poorly for a
// single 16-float line (2x32x64^3 float32 forward, streamed: relu 14-15 ms with one line,
// 8.6-10.3 ms with four, identity 7.7-8.9 ms; sixteen no better).
template <Activation act>
constexpr int kStreamLines = act == Activation::Identity ? 1 : 4;

// float16 with a fused activation on F16C (loops_half.h): each piece of x converted into an L1
// buffer, normalized there by the float loop, converted out.
template <Activation act>
GN_INLINE void normalize_run_staged(const c10::Half* x, c10::Half* y, int64_t n, float mean, float scale, float bias,
                                    bool stream) {
  alignas(64) float in[kHalfStageElems], out[kHalfStageElems];
  for (int64_t b = 0; b < n; b += kHalfStageElems) {
    const int64_t len = std::min(kHalfStageElems, n - b);
    half_to_float_f16c(x + b, in, len);
    normalize_impl<act>(in, out, len, mean, scale, bias);
    float_to_half_f16c(out, y + b, len, stream);
  }
}

// The same over rows of C channels: whole rows per piece, or pieces of one row when a row is
// longer than a piece.
template <Activation act>
GN_INLINE void normalize_rows_staged(const c10::Half* x, c10::Half* y, int64_t rows, int64_t C, const float* mean,
                                     const float* scale, const float* bias, bool stream) {
  alignas(64) float in[kHalfStageElems], out[kHalfStageElems];
  for_half_stage_pieces(rows, C, [&](int64_t o, int64_t piece_rows, int64_t c0, int64_t width) GN_LAMBDA_INLINE {
    half_to_float_f16c(x + o, in, piece_rows * width);
    normalize_rows_impl<act>(static_cast<const float*>(in), out, piece_rows, width, mean + c0, scale + c0, bias + c0);
    float_to_half_f16c(out, y + o, piece_rows * width, stream);
  });
}

// The public normalize loops' bodies for one activation (the clones switch once per call).
// With `prefetch`, the run goes in steps of four lines, each prefetching the input
// kPrefetchAheadBytes and the output twice as far ahead (see normalize_rows: 1x32x256x256 G = 1
// float32 forward with x just written by another op 0.21 -> 0.185 ms, 2x320x64x64 0.27 -> 0.245).
template <Activation act, typename T, typename acc_t = opmath_t<T>>
GN_INLINE void normalize_run(const T* x, T* y, int64_t n, acc_t mean, acc_t scale, acc_t bias, bool stream,
                             bool prefetch) {
  if constexpr (std::is_same_v<T, c10::Half>) {
    if (f16c_loops()) {
      if constexpr (act == Activation::Identity) return normalize_runs_f16c(x, y, 1, n, &mean, &scale, &bias, stream);
      return normalize_run_staged<act>(x, y, n, mean, scale, bias, stream);
    }
  }
  if (!stream && prefetch) {
    return for_prefetched_steps(
        n, sizeof(T), y,
        [&](int64_t i, int64_t m) GN_LAMBDA_INLINE { normalize_impl<act>(x + i, y + i, m, mean, scale, bias); }, x);
  }
  if (!stream) return normalize_impl<act>(x, y, n, mean, scale, bias);
  if (normalize_run_stream_lines<act>(x, y, n, mean, scale, bias)) return;
  write_streamed<kStreamLines<act>>(y, n, [&](T* out, int64_t b, int64_t len) GN_LAMBDA_INLINE {
    normalize_impl<act>(x + b, out, len, mean, scale, bias);
  });
}

// normalize_run over `runs` consecutive runs of len, run r with the r-th coefficients; the
// float16 identity pass in one F16C call (a call per run cost more than a small slab's run).
template <Activation act, typename T, typename acc_t = opmath_t<T>>
GN_INLINE void normalize_runs(const T* x, T* y, int64_t runs, int64_t len, const acc_t* mean, const acc_t* scale,
                              const acc_t* bias, bool stream, bool prefetch) {
  if constexpr (std::is_same_v<T, c10::Half> && act == Activation::Identity) {
    if (f16c_loops()) return normalize_runs_f16c(x, y, runs, len, mean, scale, bias, stream);
  }
  for (int64_t r = 0; r < runs; ++r) {
    normalize_run<act>(x + r * len, y + r * len, len, mean[r], scale[r], bias[r], stream, prefetch);
  }
}

// With `prefetch` (data beyond the caches, see software_prefetch_pays), each step of about four
// lines of rows first prefetches the input kPrefetchAheadBytes ahead and the output twice as far:
// the output's lines then arrive before the stores that need them, instead of each store waiting
// for its line to be read (2x320x64x64 float32 channels_last forward with x just written by
// another op, 2 cores: 0.35 -> 0.28 ms; from memory: 0.55 -> 0.49 ms; the input alone ahead
// gave 0.56 -> 0.54). Streamed output needs no read, and its loop has no prefetch.
//
// Without prefetch, rows of more than kNormalizeColumnBlock channels go in blocks of
// kNormalizeBlockRows rows by kNormalizeColumnBlock channels: a row at a time ran 10-25% slower
// (2 cores, float32 channels_last forward, samples fused, x in cache: 4x1280x8x8 0.041 -> 0.034 ms,
// 4x2560x8x8 0.079 -> 0.063 ms, 4x640x16x16 0.070 -> 0.056 ms, 2x640x16x16 0.033 -> 0.028 ms,
// 1x1280x32x32 0.139 -> 0.113 ms; bfloat16 within 3%). The same arithmetic per element, so the
// same bits. With prefetch the blocks lost: 1x640x64x64, 0.24 ms prefetched by rows, 0.31 ms in
// blocks; 16x2560x8x8 with x just written, 0.33 -> 0.36 ms.
constexpr int64_t kNormalizeColumnBlock = 256;
constexpr int64_t kNormalizeBlockRows = 8;

// normalize_rows_impl over channels [0, C) of rows `ld` apart, in those blocks.
template <Activation act, typename T, typename acc_t = opmath_t<T>>
GN_INLINE void normalize_rows_blocked(const T* x, T* y, int64_t rows, int64_t C, int64_t ld, const acc_t* mean,
                                      const acc_t* scale, const acc_t* bias) {
  if (C <= kNormalizeColumnBlock) return normalize_rows_impl<act>(x, y, rows, C, mean, scale, bias, ld);
  for (int64_t r = 0; r < rows; r += kNormalizeBlockRows, x += kNormalizeBlockRows * ld, y += kNormalizeBlockRows * ld) {
    const int64_t block_rows = std::min(kNormalizeBlockRows, rows - r);
    for (int64_t c = 0; c < C; c += kNormalizeColumnBlock) {
      normalize_rows_impl<act>(x + c, y + c, block_rows, std::min(kNormalizeColumnBlock, C - c), mean + c, scale + c,
                               bias + c, ld);
    }
  }
}

template <Activation act, typename T, typename acc_t = opmath_t<T>>
GN_INLINE void normalize_whole_rows(const T* x, T* y, int64_t rows, int64_t C, const acc_t* mean, const acc_t* scale,
                                    const acc_t* bias, bool stream, bool prefetch) {
  if constexpr (std::is_same_v<T, c10::Half>) {
    if (f16c_loops()) {
      if constexpr (act == Activation::Identity) return normalize_rows_f16c(x, y, rows, C, mean, scale, bias, stream);
      return normalize_rows_staged<act>(x, y, rows, C, mean, scale, bias, stream);
    }
  }
  if (!stream && prefetch) {
    return for_prefetched_steps(
        rows, C * static_cast<int64_t>(sizeof(T)), y,
        [&](int64_t r, int64_t n) GN_LAMBDA_INLINE {
          normalize_rows_impl<act>(x + r * C, y + r * C, n, C, mean, scale, bias);
        },
        x);
  }
  if (!stream) return normalize_rows_blocked<act>(x, y, rows, C, C, mean, scale, bias);
  if (normalize_rows_stream_lines<act>(x, y, rows, C, C, mean, scale, bias)) return;
  WrappedCoefficients<acc_t, 3> k({mean, scale, bias}, C, kLineBytes / sizeof(T));
  write_streamed(y, rows * C, [&](T* out, int64_t b, int64_t len) GN_LAMBDA_INLINE {
    normalize_rows_impl<act>(x + b, out, 1, len, k.at(0), k.at(1), k.at(2));
    k.advance(len, C);
  });
}

// Rows `ld` apart, of which the loop covers C channels (ld > C: a strip, Forward::run_strips,
// whose data sit in cache: no prefetch). In the blocks of normalize_rows_blocked (strips of 640
// float32 channels, 2 cores: 8x1280x16x16 0.46 -> 0.32 ms, 2x1280x16x16 0.065 -> 0.052 ms,
// 1x1280x16x16 0.041 -> 0.030 ms, 1x2560x8x8 0.022 -> 0.017 ms); streamed, a row at a time, whose
// coefficients start at its first channel, so it needs no WrappedCoefficients.
template <Activation act, typename T, typename acc_t = opmath_t<T>>
GN_INLINE void normalize_rows(const T* x, T* y, int64_t rows, int64_t C, int64_t ld, const acc_t* mean,
                              const acc_t* scale, const acc_t* bias, bool stream, bool prefetch) {
  if (ld == C) return normalize_whole_rows<act>(x, y, rows, C, mean, scale, bias, stream, prefetch);
  bool half_f16c = false;
  if constexpr (std::is_same_v<T, c10::Half>) half_f16c = f16c_loops();
  if (!stream && !half_f16c) return normalize_rows_blocked<act>(x, y, rows, C, ld, mean, scale, bias);
  if (stream && normalize_rows_stream_lines<act>(x, y, rows, C, ld, mean, scale, bias)) return;
  for (int64_t r = 0; r < rows; ++r, x += ld, y += ld) {
    if (stream && !half_f16c) {
      write_streamed(y, C, [&](T* out, int64_t b, int64_t len) GN_LAMBDA_INLINE {
        normalize_rows_impl<act>(x + b, out, 1, len, mean + b, scale + b, bias + b);
      });
    } else {
      normalize_whole_rows<act>(x, y, 1, C, mean, scale, bias, stream, false);
    }
  }
}

// The per-channel sums live in memory (C can be thousands), so each row costs a load and a
// store of every sum: four rows at a time take a quarter of those, and the row order of the
// additions stays fixed ((r0 + r1) + (r2 + r3), then the remaining rows one by one). The
// deviations and the four-row partial sums are formed in dev_t, then added to the double
// per-channel sums. Channels [0, width) of rows `stride` apart. The shifts are converted to
// dev_t once per call (the same values: each is a value of the data): converting them every four
// rows took 10-15% of the float32 channels-last statistics (2 cores, 2x1280x16x16 to 4x640x32x32).
// Rows of 16-bit and float data go eight at a time first (((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 +
// r7))), then four, then one by one: half the widenings and double additions of four-row steps,
// which bounded the statistics' speed (2 cores, float32 channels_last forward: 2x1280x32x32
// 0.30 -> 0.26 ms, 2x640x64x64 0.98 -> 0.85 ms, 2x32x64^3 channels_last_3d 3.2 -> 2.7 ms;
// bfloat16 2x32x64^3 1.9 -> 1.6 ms). float16 too (its F16C loops, loops_half.inc, in the same
// order: float16 data give the float32 path's bits); double data keep four-row steps.
template <typename T>
constexpr bool kEightRowSums = !std::is_same_v<T, double>;

template <typename dev_t, typename T>
GN_INLINE void sum_dev_rows_row_order(const T* x, int64_t rows, int64_t width, int64_t stride,
                                      const reduce_t* shift_in, reduce_t* sum_d, reduce_t* sum_d2, bool prefetch) {
  const dev_t* shift = nullptr;
  if constexpr (std::is_same_v<dev_t, reduce_t>) {
    shift = shift_in;
  } else {
    thread_local std::vector<dev_t> converted;
    converted.assign(shift_in, shift_in + width);
    shift = converted.data();
  }
  std::fill(sum_d, sum_d + width, reduce_t(0));
  std::fill(sum_d2, sum_d2 + width, reduce_t(0));
  int64_t r = 0;
  if constexpr (kEightRowSums<T>) {
    for (; r + 8 <= rows; r += 8, x += 8 * stride) {
      if (prefetch) prefetch_block_ahead(x, 8 * stride * static_cast<int64_t>(sizeof(T)));
      for (int64_t i = 0; i < width; ++i) {
        const dev_t m = shift[i];
        dev_t d[8];
        for (int j = 0; j < 8; ++j) d[j] = load<dev_t>(x + j * stride + i) - m;
        sum_d[i] += static_cast<reduce_t>(((d[0] + d[1]) + (d[2] + d[3])) + ((d[4] + d[5]) + (d[6] + d[7])));
        sum_d2[i] += static_cast<reduce_t>(((d[0] * d[0] + d[1] * d[1]) + (d[2] * d[2] + d[3] * d[3])) +
                                           ((d[4] * d[4] + d[5] * d[5]) + (d[6] * d[6] + d[7] * d[7])));
      }
    }
  }
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

// Float deviations for float / bfloat16 / half data: a quarter of the vector work of double
// (no widening to 8-lane halves; 4-10% of a medium channels_last forward). The shift is a
// value of the data, so d = x - shift is exact while x is within a factor 2 of it, and
// each four- or eight-term float sum adds at most ~3 or ~7 roundings of 2^-24 before the double
// sums take over: far more accurate than the float lanes of moments_impl. Sums that float cannot be
// trusted with are formed again in double: Inf / NaN (overflow of d or d^2 past 3e38, or
// such data), and a channel whose mean squared deviation is under kFloatMinSquareMean,
// where some d^2 may have fallen below float's normal range (1.2e-38) and lost digits --
// unless its deviations are all exactly zero (sums 0 and 0: a constant channel).
constexpr reduce_t kFloatMinSquareMean = 1e-24;

// Float sums that cannot be trusted are formed again in double channel by channel (runs of
// such channels at a time, simd.h for_trusted_channels), not for every channel of the call.
// All in row order, also chunks of few rows over many channels (an 8x8 image's 64 rows of
// 1280): column blocks down the rows (simd.h, kSumColumnBlock) summed them slower once the
// shifts were converted once per call (2 cores: 4x1280x8x8 float32 forward 0.037 -> 0.031 ms,
// 8x1280x8x8 0.063 -> 0.057, 1x2560x8x8 0.032 -> 0.028).
template <typename T>
GN_INLINE void sum_dev_rows_impl(const T* x, int64_t rows, int64_t C, int64_t ld, const reduce_t* shift,
                                 reduce_t* sum_d, reduce_t* sum_d2, bool prefetch) {
  if constexpr (!std::is_same_v<T, double>) {
    bool done = false;
    if constexpr (std::is_same_v<T, c10::Half>) {
      if ((done = f16c_loops())) sum_dev_rows_f16c(x, rows, C, ld, shift, sum_d, sum_d2, prefetch);
    }
    if (!done) sum_dev_rows_row_order<float>(x, rows, C, ld, shift, sum_d, sum_d2, prefetch);
    const reduce_t floor = kFloatMinSquareMean * static_cast<reduce_t>(rows);
    if (float_sums_trusted(sum_d, sum_d2, C, floor)) return;
    for_trusted_channels(
        sum_d, sum_d2, C, floor, [](int64_t) GN_LAMBDA_INLINE {},
        [&](int64_t c, int64_t end) GN_LAMBDA_INLINE {
          sum_dev_rows_row_order<reduce_t>(x + c, rows, end - c, ld, shift + c, sum_d + c, sum_d2 + c, prefetch);
        });
    return;
  }
  sum_dev_rows_row_order<reduce_t>(x, rows, C, ld, shift, sum_d, sum_d2, prefetch);
}

}  // namespace

#define GN_DEFINE_FORWARD_LOOPS(T)                                                             \
  GN_CLONES reduce_t loop_sum(const T* x, int64_t n) { return sum_impl(x, n); }                \
  GN_CLONES void loop_sum_dev(const T* x, int64_t n, reduce_t mean, reduce_t* sum_d,           \
                             reduce_t* sum_d2) {                                               \
    sum_dev_impl(x, n, mean, sum_d, sum_d2);                                                   \
  }                                                                                            \
  GN_CLONES void loop_moments(const T* x, int64_t n, reduce_t* mean, reduce_t* m2) {           \
    moments_impl(x, n, mean, m2);                                                              \
  }                                                                                            \
  GN_CLONES void loop_moments_runs(const T* x, int64_t runs, int64_t len, reduce_t* mean,       \
                                   reduce_t* m2) {                                             \
    for (int64_t r = 0; r < runs; ++r, x += len) moments_impl(x, len, mean + r, m2 + r);       \
  }                                                                                            \
  GN_CLONES void loop_normalize(const T* x, T* y, int64_t n, opmath_t<T> mean,                 \
                                opmath_t<T> scale, opmath_t<T> bias, Activation act,           \
                                bool stream, bool prefetch) {                                  \
    dispatch_activation(act, [&](auto a) GN_LAMBDA_INLINE {                                    \
      normalize_run<decltype(a)::value>(x, y, n, mean, scale, bias, stream, prefetch);         \
    });                                                                                        \
  }                                                                                            \
  GN_CLONES void loop_normalize_runs(const T* x, T* y, int64_t runs, int64_t len,               \
                                     const opmath_t<T>* mean, const opmath_t<T>* scale,        \
                                     const opmath_t<T>* bias, Activation act, bool stream,     \
                                     bool prefetch) {                                          \
    dispatch_activation(act, [&](auto a) GN_LAMBDA_INLINE {                                    \
      normalize_runs<decltype(a)::value>(x, y, runs, len, mean, scale, bias, stream, prefetch); \
    });                                                                                        \
  }                                                                                            \
  GN_CLONES void loop_normalize_rows(const T* x, T* y, int64_t rows, int64_t C, int64_t ld,    \
                                     const opmath_t<T>* mean, const opmath_t<T>* scale,        \
                                     const opmath_t<T>* bias, Activation act, bool stream,     \
                                     bool prefetch) {                                          \
    dispatch_activation(act, [&](auto a) GN_LAMBDA_INLINE {                                    \
      normalize_rows<decltype(a)::value>(x, y, rows, C, ld, mean, scale, bias, stream, prefetch); \
    });                                                                                        \
  }                                                                                            \
  GN_CLONES void loop_sum_dev_rows(const T* x, int64_t rows, int64_t C, int64_t ld,            \
                                   const reduce_t* shift, reduce_t* sum_d, reduce_t* sum_d2,   \
                                   bool prefetch) {                                            \
    sum_dev_rows_impl(x, rows, C, ld, shift, sum_d, sum_d2, prefetch);                         \
  }

GN_DEFINE_FORWARD_LOOPS(float)
GN_DEFINE_FORWARD_LOOPS(double)
GN_DEFINE_FORWARD_LOOPS(c10::Half)
GN_DEFINE_FORWARD_LOOPS(c10::BFloat16)
#undef GN_DEFINE_FORWARD_LOOPS

void fence_streaming_stores() {
#ifdef GN_STREAMING_STORES
  _mm_sfence();
#endif
}

namespace {
const char* clone_isa() {
  // Which lanes the contiguous moments use (simd.h, wide_vectors) is said where it is not the
  // clone's own width.
  const bool wide = wide_vectors();
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
  __builtin_cpu_init();
  // Mirrors the loader's choice for GN_CLONES: the highest level this CPU supports.
  if (__builtin_cpu_supports("x86-64-v4")) {
    return wide ? "avx512 (x86-64-v4 clone)" : "avx512 (x86-64-v4 clone, 8-lane moments)";
  }
  if (__builtin_cpu_supports("x86-64-v3")) return "avx2 (x86-64-v3 clone)";
#endif
  return wide ? "baseline" : "baseline (8-lane moments)";
}
}  // namespace

const char* loops_isa() {
  static const std::string isa = std::string(clone_isa()) + "; float16 " + f16c_loops_isa();
  return isa.c_str();
}

}  // namespace cpu
}  // namespace groupnorm_ext
