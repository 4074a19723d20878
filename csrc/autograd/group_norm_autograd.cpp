// Autograd for group_norm as a C++ torch::autograd::Function registered under the
// Autograd key, so it also trains inside TorchScript and C++ programs. The forward and
// backward call the dispatcher (group_norm_forward / group_norm_backward), which routes
// to the CPU or CUDA kernels, or to the fake kernels under torch.compile.
//
// Double backward: when the backward itself is being differentiated (create_graph=True)
// it is computed from differentiable ATen ops instead of the fused kernel.
#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "../activation_aten.h"
#include "../group_norm.h"

namespace groupnorm_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<Tensor, Tensor, Tensor> call_forward(const Tensor& input, int64_t num_groups,
                                                const OptionalTensor& weight,
                                                const OptionalTensor& bias, double eps,
                                                std::string_view activation) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("groupnorm_ext::group_norm_forward", "")
                       .typed<ForwardResult(const Tensor&, int64_t, const OptionalTensor&,
                                            const OptionalTensor&, double, std::string_view)>();
  return op.call(input, num_groups, weight, bias, eps, activation);
}

BackwardResult call_backward(const Tensor& grad_out, const Tensor& input, const Tensor& mean,
                             const Tensor& rstd, const OptionalTensor& weight,
                             const OptionalTensor& bias, int64_t num_groups,
                             std::string_view activation, std::array<bool, 3> mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("groupnorm_ext::group_norm_backward", "")
                       .typed<BackwardResult(const Tensor&, const Tensor&, const Tensor&,
                                             const Tensor&, const OptionalTensor&,
                                             const OptionalTensor&, int64_t, std::string_view,
                                             std::array<bool, 3>)>();
  return op.call(grad_out, input, mean, rstd, weight, bias, num_groups, activation, mask);
}

// The same gradients as group_norm_backward, from differentiable ops (statistics
// recomputed from x so that their dependence on x is part of the graph). A fused activation
// turns dy into dL/dz = dy * act'(z) first, z = xhat * w + b, by ATen's differentiable
// backward op of the activation.
BackwardResult composite_backward(const Tensor& grad_out, const Tensor& input, const Tensor& weight,
                                  const Tensor& bias, int64_t G, double eps, Activation act) {
  const auto acc_t = stats_dtype(input.scalar_type());
  const int64_t N = input.size(0), C = input.size(1);
  const Tensor x = input.to(acc_t).reshape({N, G, C / G, -1});
  const Tensor mean = x.mean(at::IntArrayRef{2, 3}, /*keepdim=*/true);
  const Tensor var = (x - mean).square().mean(at::IntArrayRef{2, 3}, /*keepdim=*/true);
  const Tensor rstd = (var + eps).rsqrt();
  const Tensor xhat = (x - mean) * rstd;
  const Tensor w = weight.defined() ? weight.to(acc_t).reshape({1, G, C / G, 1}) : Tensor();
  Tensor dy = grad_out.to(acc_t).reshape({N, G, C / G, -1});
  if (act != Activation::Identity) {
    Tensor z = w.defined() ? xhat * w : xhat;
    if (bias.defined()) z = z + bias.to(acc_t).reshape({1, G, C / G, 1});
    dy = activation_backward_aten(dy, z, act);
  }
  const Tensor dxhat = w.defined() ? dy * w : dy;
  const Tensor grad_input =
      rstd * (dxhat - dxhat.mean(at::IntArrayRef{2, 3}, true) - xhat * (dxhat * xhat).mean(at::IntArrayRef{2, 3}, true));
  return {grad_input.reshape(input.sizes()).to(input.scalar_type()),
          (dy * xhat).sum(at::IntArrayRef{0, 3}).reshape({C}), dy.sum(at::IntArrayRef{0, 3}).reshape({C})};
}

class GroupNormFunction : public torch::autograd::Function<GroupNormFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& input, int64_t num_groups,
                        const OptionalTensor& weight, const OptionalTensor& bias, double eps,
                        std::string_view activation) {
    const Tensor w = weight.has_value() ? *weight : Tensor();
    const Tensor b = bias.has_value() ? *bias : Tensor();
    ctx->saved_data["num_groups"] = num_groups;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["activation"] = std::string(activation);
    ctx->saved_data["input_needs_grad"] = input.requires_grad();
    ctx->saved_data["weight_needs_grad"] = w.defined() && w.requires_grad();
    ctx->saved_data["bias_needs_grad"] = b.defined() && b.requires_grad();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, mean, rstd] = call_forward(input, num_groups, weight, bias, eps, activation);
    // The bias's values matter to the backward only through a fused activation (z = xhat * w +
    // b). Without one it is not saved, as torch's native_group_norm does not save it: changing
    // it in place between forward and backward (an optimizer step, an EMA update) is then no
    // error. The backward gets an empty tensor of its dtype instead (for grad_bias's dtype).
    const bool save_bias = b.defined() && parse_activation("group_norm", activation) != Activation::Identity;
    ctx->saved_data["bias_dtype"] = b.defined() ? c10::IValue(b.scalar_type()) : c10::IValue();
    ctx->save_for_backward({input, mean, rstd, w, save_bias ? b : Tensor()});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &input = saved[0], &mean = saved[1], &rstd = saved[2];
    const Tensor& weight = saved[3];
    Tensor bias = saved[4];
    if (!bias.defined() && !ctx->saved_data["bias_dtype"].isNone()) {
      // Not saved (no activation): the backward reads only its dtype and presence, never its
      // values, so no fill (on CUDA a kernel launch per layer).
      bias = at::empty({input.size(1)}, input.options().dtype(ctx->saved_data["bias_dtype"].toScalarType()));
    }
    const int64_t G = ctx->saved_data["num_groups"].toInt();
    const std::string activation = ctx->saved_data["activation"].toStringRef();
    const std::array<bool, 3> mask = {ctx->saved_data["input_needs_grad"].toBool(),
                                      ctx->saved_data["weight_needs_grad"].toBool(),
                                      ctx->saved_data["bias_needs_grad"].toBool()};
    const Tensor& grad_out = grad_outputs[0];
    Tensor grad_input, grad_weight, grad_bias;
    if (grad_out.defined()) {
      if (at::GradMode::is_enabled()) {
        std::tie(grad_input, grad_weight, grad_bias) =
            composite_backward(grad_out, input, weight, bias, G, ctx->saved_data["eps"].toDouble(),
                               parse_activation("group_norm", activation));
        if (weight.defined()) grad_weight = grad_weight.to(weight.scalar_type());
        if (bias.defined()) grad_bias = grad_bias.to(bias.scalar_type());
      } else {
        std::tie(grad_input, grad_weight, grad_bias) =
            call_backward(grad_out, input, mean, rstd,
                          weight.defined() ? OptionalTensor(weight) : std::nullopt,
                          bias.defined() ? OptionalTensor(bias) : std::nullopt, G, activation, mask);
      }
    }
    if (!mask[0]) grad_input = Tensor();
    if (!mask[1]) grad_weight = Tensor();
    if (!mask[2]) grad_bias = Tensor();
    return {grad_input, Tensor(), grad_weight, grad_bias, Tensor(), Tensor()};
  }
};

bool requires_grad(const OptionalTensor& t) { return t.has_value() && t->defined() && t->requires_grad(); }

// A tangent at the (single) forward-AD level, as torch's generated code checks.
bool has_tangent(const OptionalTensor& t) { return t.has_value() && t->defined() && t->_fw_grad(0).defined(); }

// torch.func transforms (grad, vjp, jacrev, jvp, hessian, vmap...) and forward-mode AD cannot go
// through a C++ autograd::Function: torch raises for the transforms, and the Function has no
// forward derivative (a dual input's tangent would be dropped). There the op is ATen's
// group_norm, then ATen's op for the activation: derivatives of every order and mode, and vmap
// rules, that torch implements; the same values, to rounding.
// (A transform in progress keeps FuncTorchDynamicLayerFrontMode in the thread's included keys.)
bool needs_aten_derivatives(const Tensor& input, const OptionalTensor& weight, const OptionalTensor& bias) {
  return c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::FuncTorchDynamicLayerFrontMode) ||
         has_tangent(input) || has_tangent(weight) || has_tangent(bias);
}

Tensor group_norm_autograd(const Tensor& input, int64_t num_groups, const OptionalTensor& weight,
                           const OptionalTensor& bias, double eps, std::string_view activation) {
  if (needs_aten_derivatives(input, weight, bias)) {
    // The fused activation as ATen's op after it (checked first, as the kernels would).
    const Activation act = parse_activation("group_norm", activation);
    return activation_aten(at::group_norm(input, num_groups, weight, bias, eps, /*cudnn_enabled=*/true), act);
  }
  if (at::GradMode::is_enabled() && (input.requires_grad() || requires_grad(weight) || requires_grad(bias))) {
    return GroupNormFunction::apply(input, num_groups, weight, bias, eps, activation);
  }
  // Nothing to differentiate (inference, no_grad): skip the autograd node and the saved
  // tensors, straight to the kernel.
  at::AutoDispatchBelowADInplaceOrView guard;
  return std::get<0>(call_forward(input, num_groups, weight, bias, eps, activation));
}

}  // namespace

TORCH_LIBRARY_IMPL(groupnorm_ext, Autograd, m) {
  m.impl("group_norm", &group_norm_autograd);
}

}  // namespace groupnorm_ext
