// float16 loops on the F16C conversions (vcvtph2ps / vcvtps2ph), for the CPUs that have them.
//
// GCC 12 cannot vectorize float16 conversions in the target_clones loops (a _Float16 cast stays
// one scalar vcvtph2ps per element, and the intrinsics cannot be inlined into the baseline
// clone), so those loops emulate them with integer arithmetic (simd.h, c10's formulas): a
// channels_last float16 forward ran at 0.45x torch's F16C kernels, over half of it in the
// rounding float -> float16 on the way out. The functions here are compiled for x86-64-v3
// (AVX2, FMA, F16C; 8 lanes) and x86-64-v4 (AVX-512; 16 lanes) in target regions
// (loops_half.cpp) and called from the clones when the CPU has one of those levels; the rest of
// the library never runs their instructions.
//
// The conversions are exact one way and round to nearest even the other, as c10's, and the
// arithmetic in between is the clones' float arithmetic, operation for operation in the same
// order: the forward gives the emulating loops' bits, and the backward the float32 loops' on
// the same values. NaNs excepted: vcvtps2ph keeps a NaN's payload where c10's software
// conversion returns 0x7E00 with the sign (the default NaN and inf - inf agree). The emulating clones' backward sums can differ from both in
// their last bits, where GCC contracts their scalar tails into fused multiply-adds in another
// order (tests/test_cpu_f16c.py compares the modes with GROUPNORM_EXT_CPU_F16C=off / v3).
#pragma once

#include <cstdint>

#include <c10/util/Half.h>

#include "loops.h"

namespace groupnorm_ext {
namespace cpu {

// Whether the float16 loops take the functions below: the CPU is x86-64-v3 or better and
// GROUPNORM_EXT_CPU_F16C is not "off" (read once; "v3" takes the 8-lane copy on any such CPU).
bool f16c_loops();
// Which copy runs ("F16C (x86-64-v4 copy)", "F16C (x86-64-v3 copy)" or "emulated"), for
// cpu_capability().
const char* f16c_loops_isa();

// dst[i] = float(src[i]), i < n.
void half_to_float_f16c(const c10::Half* src, float* dst, int64_t n);
// dst[i] = float16(src[i]) rounded to nearest even, i < n; with `stream`, streaming stores when
// dst[0, n) is whole 64-byte lines (fenced by the caller, as in the other loops).
void float_to_half_f16c(const float* src, c10::Half* dst, int64_t n, bool stream);

// Elements per staged piece for the loops that convert into an L1 buffer, run the clones' float
// code there and convert back (the fused activations): two float buffers of this size. The
// contiguous moments and gradient sums stage a whole chunk (plan.h, kChunkTargetElems).
constexpr int64_t kHalfStageElems = 2048;

// The staged pieces of `rows` contiguous rows of C channels: whole rows per piece, or pieces of
// one row when a row is longer than a piece. piece(offset, piece_rows, c0, width) covers
// elements [offset, offset + piece_rows * width), channels [c0, c0 + width) of each row.
template <typename Piece>
__attribute__((always_inline)) inline void for_half_stage_pieces(int64_t rows, int64_t C, const Piece& piece) {
  if (C <= kHalfStageElems) {
    const int64_t rows_per_piece = kHalfStageElems / C;
    for (int64_t r = 0; r < rows; r += rows_per_piece) {
      piece(r * C, rows - r < rows_per_piece ? rows - r : rows_per_piece, int64_t(0), C);
    }
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < C; c += kHalfStageElems) {
      piece(r * C + c, int64_t(1), c, C - c < kHalfStageElems ? C - c : kHalfStageElems);
    }
  }
}

// The identity normalize passes, conversions fused into the loop: loop_normalize_runs (one
// coefficient set per run of len) and loop_normalize_rows (per-channel coefficients).
void normalize_runs_f16c(const c10::Half* x, c10::Half* y, int64_t runs, int64_t len, const float* mean,
                         const float* scale, const float* bias, bool stream);
void normalize_rows_f16c(const c10::Half* x, c10::Half* y, int64_t rows, int64_t C, const float* mean,
                         const float* scale, const float* bias, bool stream);

// loop_sum_dev_rows's float pass (loops_forward.cpp, sum_dev_rows_row_order<float>): the same
// per-channel sums in the same order (column blocks for few rows, else rows eight, then four
// at a time).
void sum_dev_rows_f16c(const c10::Half* x, int64_t rows, int64_t C, int64_t ld, const reduce_t* shift, reduce_t* sum_d,
                       reduce_t* sum_d2, bool prefetch);

// The backward's loop_grad_input_runs / loop_grad_input_rows, and loop_grad_sums_rows's float
// pass (loops_backward.cpp, grad_sums_rows_as<float>), in the same order.
void grad_input_runs_f16c(const c10::Half* dy, const c10::Half* x, c10::Half* dx, int64_t runs, int64_t len,
                          const float* a, const float* mean, const float* rstd, const float* kxhat, const float* kc,
                          bool stream);
void grad_input_rows_f16c(const c10::Half* dy, const c10::Half* x, c10::Half* dx, int64_t rows, int64_t C,
                          const float* a, const float* mean, const float* rstd, const float* kxhat, const float* kc,
                          bool stream);
void grad_sums_rows_f16c(const c10::Half* dy, const c10::Half* x, int64_t rows, int64_t C, int64_t ld, const reduce_t* mean,
                         reduce_t* sum_dy, reduce_t* sum_dy_xc, bool from_memory);

}  // namespace cpu
}  // namespace groupnorm_ext
