// The backward's pre-pass for a fused activation (loops.h): dz = dy * act'(z) (activation_grad),
// with z the
// pre-activation recomputed from x exactly as the forward's normalize loops compute it. The
// identity-activation backward then runs on dz in place of dy. Clones as in the other
// loop files: an always-inline template per activation, a target_clones wrapper per dtype.
#include <cstdint>

#include "loops.h"
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

}  // namespace

#define GN_DEFINE_ACTIVATION_LOOPS(T)                                                                   \
  GN_CLONES void loop_activation_grad(const T* dy, const T* x, T* dz, int64_t n, opmath_t<T> mean,      \
                                      opmath_t<T> scale, opmath_t<T> bias, Activation act) {            \
    dispatch_activation(act, [&](auto a) GN_LAMBDA_INLINE {                                             \
      activation_grad_impl<decltype(a)::value>(dy, x, dz, n, mean, scale, bias);                        \
    });                                                                                                 \
  }                                                                                                     \
  GN_CLONES void loop_activation_grad_runs(const T* dy, const T* x, T* dz, int64_t runs, int64_t len,   \
                                           const opmath_t<T>* mean, const opmath_t<T>* scale,           \
                                           const opmath_t<T>* bias, Activation act) {                   \
    dispatch_activation(act, [&](auto a) GN_LAMBDA_INLINE {                                             \
      for (int64_t r = 0, o = 0; r < runs; ++r, o += len) {                                             \
        activation_grad_impl<decltype(a)::value>(dy + o, x + o, dz + o, len, mean[r], scale[r], bias[r]); \
      }                                                                                                 \
    });                                                                                                 \
  }                                                                                                     \
  GN_CLONES void loop_activation_grad_rows(const T* dy, const T* x, T* dz, int64_t rows, int64_t C,     \
                                           const opmath_t<T>* mean, const opmath_t<T>* scale,           \
                                           const opmath_t<T>* bias, Activation act) {                   \
    dispatch_activation(act, [&](auto a) GN_LAMBDA_INLINE {                                             \
      activation_grad_rows_impl<decltype(a)::value>(dy, x, dz, rows, C, mean, scale, bias);             \
    });                                                                                                 \
  }

GN_DEFINE_ACTIVATION_LOOPS(float)
GN_DEFINE_ACTIVATION_LOOPS(double)
GN_DEFINE_ACTIVATION_LOOPS(c10::Half)
GN_DEFINE_ACTIVATION_LOOPS(c10::BFloat16)
#undef GN_DEFINE_ACTIVATION_LOOPS

}  // namespace cpu
}  // namespace groupnorm_ext
