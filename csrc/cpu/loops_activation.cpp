// The backward's pre-pass for a fused activation (loops.h): dz = dy * act'(z) (activation_grad),
// with z the
// pre-activation recomputed from x exactly as the forward's normalize loops compute it. The
// identity-activation backward then runs on dz in place of dy. Clones as in the other
// loop files: an always-inline template per activation, a target_clones wrapper per dtype.
#include <algorithm>
#include <cstdint>

#include "loops.h"
#include "loops_half.h"
#include "simd.h"

namespace groupnorm_ext {
namespace cpu {
namespace {

using namespace simd;

template <Activation act, typename T, typename acc_t = opmath_t<T>>
GN_INLINE void activation_grad_impl(const T* dy, const T* x, T* dz, int64_t n, acc_t mean, acc_t scale,
                                    acc_t bias) {
  for (int64_t i = 0; i < n; ++i) {
    const acc_t z = (load<acc_t>(x + i) - mean) * scale + bias;
    dz[i] = static_cast<T>(activation_grad<act>(load<acc_t>(dy + i), z));
  }
}

template <Activation act, typename T, typename acc_t = opmath_t<T>>
GN_INLINE void activation_grad_rows_impl(const T* dy, const T* x, T* dz, int64_t rows, int64_t C,
                                         const acc_t* mean, const acc_t* scale, const acc_t* bias) {
  for (int64_t r = 0; r < rows; ++r, dy += C, x += C, dz += C) {
    for (int64_t i = 0; i < C; ++i) {
      const acc_t z = (load<acc_t>(x + i) - mean[i]) * scale[i] + bias[i];
      dz[i] = static_cast<T>(activation_grad<act>(load<acc_t>(dy + i), z));
    }
  }
}

// float16 on F16C (loops_half.h): dy and x pieces converted into L1, dz formed there by the
// float loop and rounded on the way out, the same bits as the emulating loop (the emulated
// conversions of three arrays took the float16 silu backward to 1.35x bfloat16's).
template <Activation act>
GN_INLINE void activation_grad_staged(const c10::Half* dy, const c10::Half* x, c10::Half* dz, int64_t n, float mean,
                                      float scale, float bias) {
  alignas(64) float sdy[kHalfStageElems], sx[kHalfStageElems], sdz[kHalfStageElems];
  for (int64_t b = 0; b < n; b += kHalfStageElems) {
    const int64_t len = std::min(kHalfStageElems, n - b);
    half_to_float_f16c(dy + b, sdy, len);
    half_to_float_f16c(x + b, sx, len);
    activation_grad_impl<act>(static_cast<const float*>(sdy), static_cast<const float*>(sx), sdz, len, mean, scale,
                              bias);
    float_to_half_f16c(sdz, dz + b, len, false);
  }
}

// The same over rows of C channels: whole rows per piece, or pieces of one row.
template <Activation act>
GN_INLINE void activation_grad_rows_staged(const c10::Half* dy, const c10::Half* x, c10::Half* dz, int64_t rows,
                                           int64_t C, const float* mean, const float* scale, const float* bias) {
  alignas(64) float sdy[kHalfStageElems], sx[kHalfStageElems], sdz[kHalfStageElems];
  for_half_stage_pieces(rows, C, [&](int64_t o, int64_t piece_rows, int64_t c0, int64_t width) GN_LAMBDA_INLINE {
    half_to_float_f16c(dy + o, sdy, piece_rows * width);
    half_to_float_f16c(x + o, sx, piece_rows * width);
    activation_grad_rows_impl<act>(static_cast<const float*>(sdy), static_cast<const float*>(sx), sdz, piece_rows,
                                   width, mean + c0, scale + c0, bias + c0);
    float_to_half_f16c(sdz, dz + o, piece_rows * width, false);
  });
}

// The public loops' bodies: the float16 ones staged where the CPU has F16C.
template <Activation act, typename T, typename acc_t>
GN_INLINE void activation_grad_run(const T* dy, const T* x, T* dz, int64_t n, acc_t mean, acc_t scale, acc_t bias) {
  if constexpr (std::is_same_v<T, c10::Half>) {
    if (f16c_loops()) return activation_grad_staged<act>(dy, x, dz, n, mean, scale, bias);
  }
  activation_grad_impl<act>(dy, x, dz, n, mean, scale, bias);
}
template <Activation act, typename T, typename acc_t>
GN_INLINE void activation_grad_rows_run(const T* dy, const T* x, T* dz, int64_t rows, int64_t C, const acc_t* mean,
                                        const acc_t* scale, const acc_t* bias) {
  if constexpr (std::is_same_v<T, c10::Half>) {
    if (f16c_loops()) return activation_grad_rows_staged<act>(dy, x, dz, rows, C, mean, scale, bias);
  }
  activation_grad_rows_impl<act>(dy, x, dz, rows, C, mean, scale, bias);
}

}  // namespace

#define GN_DEFINE_ACTIVATION_LOOPS(T)                                                                   \
  GN_CLONES void loop_activation_grad(const T* dy, const T* x, T* dz, int64_t n, opmath_t<T> mean,      \
                                      opmath_t<T> scale, opmath_t<T> bias, Activation act) {            \
    dispatch_activation(act, [&](auto a) GN_LAMBDA_INLINE {                                             \
      activation_grad_run<decltype(a)::value>(dy, x, dz, n, mean, scale, bias);                         \
    });                                                                                                 \
  }                                                                                                     \
  GN_CLONES void loop_activation_grad_runs(const T* dy, const T* x, T* dz, int64_t runs, int64_t len,   \
                                           const opmath_t<T>* mean, const opmath_t<T>* scale,           \
                                           const opmath_t<T>* bias, Activation act) {                   \
    dispatch_activation(act, [&](auto a) GN_LAMBDA_INLINE {                                             \
      for (int64_t r = 0, o = 0; r < runs; ++r, o += len) {                                             \
        activation_grad_run<decltype(a)::value>(dy + o, x + o, dz + o, len, mean[r], scale[r], bias[r]);  \
      }                                                                                                 \
    });                                                                                                 \
  }                                                                                                     \
  GN_CLONES void loop_activation_grad_rows(const T* dy, const T* x, T* dz, int64_t rows, int64_t C,     \
                                           const opmath_t<T>* mean, const opmath_t<T>* scale,           \
                                           const opmath_t<T>* bias, Activation act) {                   \
    dispatch_activation(act, [&](auto a) GN_LAMBDA_INLINE {                                             \
      activation_grad_rows_run<decltype(a)::value>(dy, x, dz, rows, C, mean, scale, bias);              \
    });                                                                                                 \
  }

GN_DEFINE_ACTIVATION_LOOPS(float)
GN_DEFINE_ACTIVATION_LOOPS(double)
GN_DEFINE_ACTIVATION_LOOPS(c10::Half)
GN_DEFINE_ACTIVATION_LOOPS(c10::BFloat16)
#undef GN_DEFINE_ACTIVATION_LOOPS

}  // namespace cpu
}  // namespace groupnorm_ext
