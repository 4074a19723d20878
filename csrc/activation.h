// Activations that can be fused after the normalization. The schema carries the
// activation as a string so that new ones are added without changing any op signature;
// the CPU loops and the CUDA apply pass see it as a template parameter (one switch per call).
//
// Formulas are torch's (F.silu, F.relu, F.gelu with approximate "none" / "tanh"), written so
// that each is accurate in relative terms over the whole range and needs only exp:
//   silu(z)      = z / (1 + exp(-z))
//   gelu(z)      = z * Phi(z), Phi(z) = erfc(-z / sqrt(2)) / 2, with erfc of a
//                  non-negative argument only (1 - erfc(|a|) / 2 for z >= 0), so the
//                  negative tail keeps its relative precision (1 + erf(a) would cancel)
//   gelu_tanh(z) = z * sigmoid(2u), u = sqrt(2 / pi) * (z + 0.044715 z^3): the same as
//                  z / 2 * (1 + tanh(u)), without the cancellation of 1 + tanh(u) < 0
// In float the exponentials come from exp_float below: arithmetic only, so that the CPU
// loops over it vectorize (a libm call does not); in double, libm.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>
#include <type_traits>

#include "plan.h"  // GN_HOST_DEVICE

// Always inlined: the CPU loops that call these are compiled once per ISA (target_clones), and
// an out-of-line copy would be compiled for the baseline ISA only and stop the loop vectorizing.
#if defined(__CUDACC__)
#define GN_ACTIVATION_FN __host__ __device__ __forceinline__
#else
#define GN_ACTIVATION_FN __attribute__((always_inline)) inline
#endif

namespace groupnorm_ext {

enum class Activation : int {
  Identity = 0,
  SiLU,
  ReLU,
  GELU,      // exact, erf-based (torch's approximate="none")
  GELUTanh,  // torch's approximate="tanh"
};

namespace activation_math {

GN_ACTIVATION_FN float float_from_bits(uint32_t bits) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
#endif
}

GN_ACTIVATION_FN int32_t bits_of_float(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_int(f);
#else
  int32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
#endif
}

// e^x in float to ~1 ulp (Cephes' expf polynomial on x - n ln2, |x - n ln2| <= ln2 / 2, then a
// scale by 2^n in two exact steps, so that results down into the subnormals round once and
// overflow gives inf). NaN gives NaN. Written without branches or float-to-int conversions:
// GCC if-converts a select on NaN by computing the polynomial twice under masks (2.5x slower).
GN_ACTIVATION_FN float exp_float(float x) {
  // Past these, e^x is 0 or inf in float; the clamp keeps n within the exponent's reach. It
  // clamps NaN to lo, then puts it back: written as `x < lo ? lo : x` (NaN passing through),
  // the clamp let GCC 12's jump threading split the caller's loop into three paths (x below,
  // inside, above), which if-conversion then ran one after another under masks: three
  // divisions per vector in silu (the constant paths fold exp to a constant but keep the
  // division), 2.5x the time of the normalization itself.
  const float lo = -104.0f, hi = 89.0f;
  float xc = x > lo ? x : lo;
  xc = xc < hi ? xc : hi;
  xc = x != x ? x : xc;
  // n = x / ln2 rounded to nearest by adding 1.5 * 2^23 (exact in the default rounding mode for
  // |n| < 2^22); the integer then sits in the sum's low mantissa bits.
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23, bits 0x4B400000
  const float big = xc * 1.44269504088896341f + kRound;
  const float n = big - kRound;
  const int32_t k = bits_of_float(big) - 0x4B400000;  // n as an integer, in [-150, 129] (NaN: any)
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;  // ln2 in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * (r * r) + r + 1.0f;
  const int32_t k1 = k >> 1, k2 = k - k1;  // each in [-75, 65]: 2^k1 and 2^k2 are normal
  return (e * float_from_bits(static_cast<uint32_t>(k1 + 127) << 23)) *
         float_from_bits(static_cast<uint32_t>(k2 + 127) << 23);
}

GN_ACTIVATION_FN float exp_acc(float x) { return exp_float(x); }
GN_ACTIVATION_FN double exp_acc(double x) { return ::exp(x); }

// erfc(a) for a >= 0 with relative error under ~1.2e-7 in exact arithmetic (the Chebyshev
// fit of Numerical Recipes' erfcc). In float, the rounding of a * a adds a relative error of
// about a^2 * 2^-24 through the exponential: a few ulps for a < 2, ~70 ulps at a ~ 8 (gelu
// of z ~ -12, a value ~ 1e-32). NaN gives NaN.
template <typename acc_t>
GN_ACTIVATION_FN acc_t erfc_nonnegative(acc_t a) {
  const acc_t t = acc_t(1) / (acc_t(1) + acc_t(0.5) * a);
  acc_t p = acc_t(0.17087277);
  p = p * t + acc_t(-0.82215223);
  p = p * t + acc_t(1.48851587);
  p = p * t + acc_t(-1.13520398);
  p = p * t + acc_t(0.27886807);
  p = p * t + acc_t(-0.18628806);
  p = p * t + acc_t(0.09678418);
  p = p * t + acc_t(0.37409196);
  p = p * t + acc_t(1.00002368);
  p = p * t + acc_t(-1.26551223);
  return t * exp_acc(p - a * a);
}
GN_ACTIVATION_FN double erfc_nonnegative(double a) { return ::erfc(a); }

// Phi(z), the standard normal CDF, from erfc of a non-negative argument.
template <typename acc_t>
GN_ACTIVATION_FN acc_t normal_cdf(acc_t z) {
  const acc_t a = ::fabs(z) * acc_t(0.70710678118654752440);
  const acc_t half_tail = acc_t(0.5) * erfc_nonnegative(a);
  return z < acc_t(0) ? half_tail : acc_t(1) - half_tail;
}

constexpr double kSqrt2OverPi = 0.79788456080286535588;
constexpr double kGeluTanhCubic = 0.044715;

}  // namespace activation_math

// Forward value of the activation at pre-activation z.
template <Activation act, typename acc_t>
GN_ACTIVATION_FN acc_t activation_forward(acc_t z) {
  using namespace activation_math;
  if constexpr (act == Activation::Identity) {
    return z;
  } else if constexpr (act == Activation::SiLU) {
    return z / (acc_t(1) + exp_acc(-z));
  } else if constexpr (act == Activation::ReLU) {
    return z < acc_t(0) ? acc_t(0) : z;  // NaN and -0 pass through, as in torch.relu
  } else if constexpr (act == Activation::GELU) {
    return z * normal_cdf(z);
  } else {
    static_assert(act == Activation::GELUTanh, "unhandled activation");
    const acc_t u = acc_t(kSqrt2OverPi) * (z + acc_t(kGeluTanhCubic) * z * z * z);
    return z / (acc_t(1) + exp_acc(acc_t(-2) * u));
  }
}

// d act(z) / dz, which turns dL/dy into dL/dz. Needs z, which the backward recomputes from x
// and the saved statistics. As torch's backward formulas (relu: 0 at z = 0).
template <Activation act, typename acc_t>
GN_ACTIVATION_FN acc_t activation_derivative(acc_t z) {
  using namespace activation_math;
  if constexpr (act == Activation::Identity) {
    return acc_t(1);
  } else if constexpr (act == Activation::SiLU) {
    const acc_t s = acc_t(1) / (acc_t(1) + exp_acc(-z));
    return s * (acc_t(1) + z * (acc_t(1) - s));
  } else if constexpr (act == Activation::ReLU) {
    return z > acc_t(0) ? acc_t(1) : acc_t(0);
  } else if constexpr (act == Activation::GELU) {
    const acc_t pdf = acc_t(0.39894228040143267794) * exp_acc(acc_t(-0.5) * z * z);
    return normal_cdf(z) + z * pdf;
  } else {
    static_assert(act == Activation::GELUTanh, "unhandled activation");
    const acc_t z2 = z * z;
    const acc_t u = acc_t(kSqrt2OverPi) * (z + acc_t(kGeluTanhCubic) * z2 * z);
    const acc_t du = acc_t(kSqrt2OverPi) * (acc_t(1) + acc_t(3 * kGeluTanhCubic) * z2);
    const acc_t s = acc_t(1) / (acc_t(1) + exp_acc(acc_t(-2) * u));
    return s + z * (acc_t(2) * du) * s * (acc_t(1) - s);
  }
}

// The schema's names: torch's function names (F.silu, F.relu; F.gelu with approximate="none"
// is "gelu", with approximate="tanh" "gelu_tanh"). nullopt for any other string.
inline std::optional<Activation> activation_from_name(std::string_view name) {
  if (name == "identity") return Activation::Identity;
  if (name == "silu") return Activation::SiLU;
  if (name == "relu") return Activation::ReLU;
  if (name == "gelu") return Activation::GELU;
  if (name == "gelu_tanh") return Activation::GELUTanh;
  return std::nullopt;
}

// dL/dz from dL/dy = dy: dy * act'(z), except relu, which selects as torch's threshold_backward
// does (dy where z > 0, else 0; NaN z passes dy), so that an Inf or NaN dy on the flat side
// gives 0, not NaN.
template <Activation act, typename acc_t>
GN_ACTIVATION_FN acc_t activation_grad(acc_t dy, acc_t z) {
  if constexpr (act == Activation::ReLU) {
    return z <= acc_t(0) ? acc_t(0) : dy;
  } else {
    return dy * activation_derivative<act>(z);
  }
}

// Whether the backward needs z at all (identity: dL/dz == dL/dy).
constexpr bool activation_needs_preactivation(Activation act) {
  return act != Activation::Identity;
}

// Calls f(std::integral_constant<Activation, act>{}) for the runtime value `act`: the one
// switch between a call's activation string and the loops compiled for it.
template <typename F>
__attribute__((always_inline)) inline decltype(auto) dispatch_activation(Activation act, const F& f) {
  switch (act) {
    case Activation::SiLU: return f(std::integral_constant<Activation, Activation::SiLU>{});
    case Activation::ReLU: return f(std::integral_constant<Activation, Activation::ReLU>{});
    case Activation::GELU: return f(std::integral_constant<Activation, Activation::GELU>{});
    case Activation::GELUTanh: return f(std::integral_constant<Activation, Activation::GELUTanh>{});
    default: return f(std::integral_constant<Activation, Activation::Identity>{});
  }
}

}  // namespace groupnorm_ext
