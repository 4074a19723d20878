// A fused activation by ATen's own ops, for the paths that have no kernel of their own for it:
// the CUDA backward's dL/dz pass (an elementwise pass before the plain backward kernels), the
// autograd's composite double backward and the torch.func path (these ops are differentiable).
// Header-only, so that the CPU tests call the very code the CUDA path runs
// (csrc/python/module.cpp).
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

// (N, G) statistics, or a (C) parameter, shaped to broadcast against an (N, C, *) input.
inline at::Tensor per_group_to_channels(const at::Tensor& stat, int64_t C, int64_t dim) {
  const int64_t N = stat.size(0), G = stat.size(1);
  std::vector<int64_t> shape(dim, 1);
  shape[0] = N;
  shape[1] = C;
  return stat.reshape({N, G, 1}).expand({N, G, C / G}).reshape(shape);
}
inline at::Tensor per_channel(const at::Tensor& param, int64_t dim) {
  std::vector<int64_t> shape(dim, 1);
  shape[1] = param.numel();
  return param.reshape(shape);
}

// The pre-activation z = (x - mean) * (rstd * w) + b in the statistics' dtype, from the
// forward's saved (N, G) statistics; weight and bias may be undefined.
inline at::Tensor preactivation_aten(const at::Tensor& input, const at::Tensor& mean, const at::Tensor& rstd,
                                     const at::Tensor& weight, const at::Tensor& bias) {
  const int64_t C = input.size(1), dim = input.dim();
  const at::ScalarType acc = mean.scalar_type();
  at::Tensor scale = per_group_to_channels(rstd, C, dim);
  if (weight.defined()) scale = scale * per_channel(weight.to(acc), dim);
  at::Tensor z = (input.to(acc) - per_group_to_channels(mean, C, dim)) * scale;
  if (bias.defined()) z = z + per_channel(bias.to(acc), dim);
  return z;
}

// dL/dz for the whole input, in grad_out's dtype and layout (dense like grad_out).
inline at::Tensor activation_grad_aten(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& mean,
                                       const at::Tensor& rstd, const at::Tensor& weight, const at::Tensor& bias,
                                       Activation act) {
  const at::Tensor z = preactivation_aten(input, mean, rstd, weight, bias);
  at::Tensor grad_z = at::empty_like(grad_out);
  grad_z.copy_(activation_backward_aten(grad_out.to(z.scalar_type()), z, act));
  return grad_z;
}

}  // namespace groupnorm_ext
