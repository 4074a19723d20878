// Activations that can be fused after the normalization. The schema carries the
// activation as a string so that new ones are added without changing any op signature;
// kernels see it as a template parameter (see dispatch.h).
#pragma once

#include <string_view>

#include "plan.h"  // GN_HOST_DEVICE

namespace groupnorm_ext {

enum class Activation : int {
  Identity = 0,
};

// Forward value of the activation at pre-activation z.
template <Activation act, typename acc_t>
GN_HOST_DEVICE acc_t activation_forward(acc_t z) {
  static_assert(act == Activation::Identity, "unhandled activation");
  return z;
}

// d act(z) / dz, used by the backward to turn dL/dy into dL/dz. Needs z, which the
// backward recomputes from x and the saved statistics.
template <Activation act, typename acc_t>
GN_HOST_DEVICE acc_t activation_derivative(acc_t /*z*/) {
  static_assert(act == Activation::Identity, "unhandled activation");
  return acc_t(1);
}

// Whether the backward needs z at all (identity: dL/dz == dL/dy).
constexpr bool activation_needs_preactivation(Activation act) {
  return act != Activation::Identity;
}

}  // namespace groupnorm_ext
