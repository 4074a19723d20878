// A fused activation by ATen's own ops, for the paths that need differentiable ops: the
// autograd's composite double backward and the torch.func path.
#pragma once

#include <vector>

#include <ATen/ATen.h>

#include "activation.h"

namespace groupnorm_ext {

// act(z), out of place (differentiable in every mode: torch.func transforms, forward AD).
inline at::Tensor activation_aten(const at::Tensor& z, Activation act) {
  switch (act) {
    case Activation::SiLU: return at::silu(z);
    case Activation::ReLU: return at::relu(z);
    case Activation::GELU: return at::gelu(z, "none");
    case Activation::GELUTanh: return at::gelu(z, "tanh");
    case Activation::Identity: break;
  }
  return z;
}

// dL/dz = grad * act'(z), by ATen's backward op of the activation. Differentiable when grad
// mode is on (the composite double backward): silu_backward has no derivative, so there silu's
// derivative is written out, as torch's own silu double backward does.
inline at::Tensor activation_backward_aten(const at::Tensor& grad, const at::Tensor& z, Activation act) {
  switch (act) {
    case Activation::SiLU: {
      if (!at::GradMode::is_enabled()) return at::silu_backward(grad, z);
      const at::Tensor s = at::sigmoid(z);
      return grad * s * (1 + z * (1 - s));
    }
    case Activation::ReLU: return at::threshold_backward(grad, z, 0);
    case Activation::GELU: return at::gelu_backward(grad, z, "none");
    case Activation::GELUTanh: return at::gelu_backward(grad, z, "tanh");
    case Activation::Identity: break;
  }
  return grad;
}

}  // namespace groupnorm_ext
