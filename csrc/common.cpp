// Host-side checks and layout handling shared by every backend. Checks happen here,
// once, with messages that name the tensor, what was expected and what came.
#include "group_norm.h"

#include "cpu/output_pool.h"

#include <string>

#include <ATen/ATen.h>
#include <torch/version.h>

namespace groupnorm_ext {

Activation parse_activation(const char* op, std::string_view name) {
  const std::optional<Activation> act = activation_from_name(name);
  TORCH_CHECK(act.has_value(), op, ": unknown activation '", std::string(name),
              "'; supported activations: 'identity' (or None in Python), 'silu', 'relu', 'gelu', 'gelu_tanh'");
  return *act;
}

at::ScalarType stats_dtype(at::ScalarType input_dtype) {
  return input_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

namespace {

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 14)
constexpr bool kRejectsEmptyChannelsOrSpatial = true;
// native_group_norm_backward's grad_input: from 2.14 with the strides of the input it reads
// (size-1 dims included) when not empty, before with the standard strides of its format.
constexpr bool kGradInputKeepsInputStrides = true;
#else
constexpr bool kRejectsEmptyChannelsOrSpatial = false;
constexpr bool kGradInputKeepsInputStrides = false;
#endif

bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// Permutation that puts channels last: (0, 2, 3, ..., dim-1, 1).
std::vector<int64_t> channels_last_permutation(int64_t dim) {
  std::vector<int64_t> perm{0};
  for (int64_t d = 2; d < dim; ++d) perm.push_back(d);
  perm.push_back(1);
  return perm;
}

// Whether `t` is dense with channels innermost (channels_last, channels_last_3d, or the
// same order for any other rank): whether t.permute(channels_last_permutation) is
// contiguous, by is_contiguous's rule (dims of size 1 have any stride; an empty tensor is
// dense), read off the strides without building the view, which costs more than a small
// tensor's whole normalization.
bool is_channels_innermost_dense(const Tensor& t) {
  if (t.dim() < 3) return false;
  if (t.numel() == 0) return true;
  const auto perm = channels_last_permutation(t.dim());
  int64_t expected = 1;
  for (auto d = perm.rbegin(); d != perm.rend(); ++d) {
    const int64_t size = t.size(*d);
    if (size == 1) continue;
    if (t.stride(*d) != expected) return false;
    expected *= size;
  }
  return true;
}

// Contiguous strides, as torch computes them (a dim of size 0 counts as 1).
std::vector<int64_t> dense_contiguous_strides(at::IntArrayRef sizes) {
  std::vector<int64_t> strides(sizes.size());
  int64_t stride = 1;
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
    strides[d] = stride;
    stride *= std::max<int64_t>(sizes[d], 1);
  }
  return strides;
}

// `t` (a tensor shaped like the input) dense in the kernels' memory order for the outputs'
// `format`: channels innermost for channels_last(_3d), else contiguous; a copy only when needed.
Tensor dense_for_format(const Tensor& t, at::MemoryFormat format) {
  if (format == at::MemoryFormat::Contiguous) return t.contiguous();
  if (is_channels_innermost_dense(t)) return t;
  return t.contiguous(format);
}

Tensor check_param(const char* op, const char* name, const OptionalTensor& param,
                   const Tensor& input) {
  if (!param.has_value() || !param->defined()) return Tensor();
  const Tensor& p = *param;
  const int64_t C = input.size(1);
  TORCH_CHECK(p.layout() == at::kStrided, op, ": ", name, " must be a dense (strided) tensor, but got layout ",
              p.layout());
  TORCH_CHECK(p.dim() == 1 && p.numel() == C, "Expected ", name,
              " to be a vector of size equal to the number of channels in input, but got ", name, " of shape ",
              p.sizes(), " and input of shape ", input.sizes());
  TORCH_CHECK(p.device() == input.device(), op, ": expected all tensors to be on the same device, but ",
              name, " is on ", p.device(), " and input is on ", input.device());
  const auto in_t = input.scalar_type();
  const bool low_precision = in_t == at::kHalf || in_t == at::kBFloat16;
  TORCH_CHECK(p.scalar_type() == in_t || (low_precision && p.scalar_type() == at::kFloat), op,
              ": ", name, " has dtype ", p.scalar_type(), " but input has dtype ", in_t, "; ", name,
              " must have the input's dtype, or float32 when the input is float16 or bfloat16");
  return p.contiguous();
}

}  // namespace

ForwardProblem check_forward(const char* op, const Tensor& input, int64_t num_groups,
                             const OptionalTensor& weight, const OptionalTensor& bias,
                             std::string_view activation) {
  TORCH_CHECK(input.defined(), op, ": input is an undefined tensor");
  TORCH_CHECK(input.layout() == at::kStrided, op,
              ": expected a dense (strided) input tensor, but got layout ", input.layout());
  // The shape checks raise torch's own messages, word for word (those of
  // torch.nn.functional.group_norm and native_group_norm): code and tests written against
  // torch match on them. Checks torch words poorly or lacks name the op.
  TORCH_CHECK(input.dim() >= 2, "Expected at least 2 dimensions for input tensor but received ", input.dim());
  // NotImplementedError, as torch's group_norm raises for the same dtypes.
  TORCH_CHECK_NOT_IMPLEMENTED(is_supported_dtype(input.scalar_type()), op,
                              ": expected a floating-point input (float32, float64, float16 or bfloat16), "
                              "but got ", input.scalar_type());
  TORCH_CHECK(num_groups > 0, "Expected num groups to be greater than 0, got ", num_groups);
  const int64_t C = input.size(1);
  TORCH_CHECK(C % num_groups == 0, "Expected number of channels in input to be divisible by num_groups, but got "
              "input of shape ", input.sizes(), " and num_groups=", num_groups);

  // As torch's native_group_norm from 2.14 on: no channels, or no element per (n, c), is an
  // error even for an empty batch (an empty batch of non-empty samples is fine). Earlier
  // versions return an empty output, and so does this library when built against them.
  TORCH_CHECK(!kRejectsEmptyChannelsOrSpatial || C > 0, "Expected number of channels to be greater than 0, got ", C);
  int64_t S = 1;
  for (int64_t d = 2; d < input.dim(); ++d) S *= input.size(d);
  TORCH_CHECK(!kRejectsEmptyChannelsOrSpatial || S > 0, "Expected HxW to be greater than 0, got ", S);

  ForwardProblem p;
  p.activation = parse_activation(op, activation);
  p.weight = check_param(op, "weight", weight, input);
  p.bias = check_param(op, "bias", bias, input);
  if (p.weight.defined() && p.bias.defined()) {
    TORCH_CHECK(p.weight.scalar_type() == p.bias.scalar_type(), op,
                ": weight and bias must have the same dtype, but got ", p.weight.scalar_type(),
                " and ", p.bias.scalar_type());
  }

  // The layout torch's group_norm gives its output on the CPU: input.suggest_memory_format(),
  // channels_last(_3d) for 4-D (5-D) input whose strides torch reads as such (its rule settles
  // ambiguous ones, size-1 dims and all), contiguous for anything else: channels-innermost
  // input of another rank, (N, L, C).transpose(1, 2) say, is copied once and gives a contiguous
  // output, as torch's does, which a later .view() of it relies on. The kernels read the input
  // in place in that order; contiguous first: a tensor dense in both orders (C == 1 or S == 1)
  // runs the NCS kernels, the same memory either way. (On CUDA torch makes channels_last input
  // contiguous and returns a contiguous output; ours keeps the format there too.)
  p.format = input.suggest_memory_format();
  p.input = dense_for_format(input, p.format);
  const MemoryOrder order = p.format != at::MemoryFormat::Contiguous && !p.input.is_contiguous()
                                ? MemoryOrder::NSC
                                : MemoryOrder::NCS;
  p.shape = GroupNormShape{input.size(0), C, S, num_groups, order};
  return p;
}

BackwardProblem check_backward(const char* op, const Tensor& grad_out, const Tensor& input,
                               const Tensor& mean, const Tensor& rstd,
                               const OptionalTensor& weight, const OptionalTensor& bias,
                               int64_t num_groups, std::string_view activation) {
  BackwardProblem b;
  b.fwd = check_forward(op, input, num_groups, weight, bias, activation);
  TORCH_CHECK(grad_out.defined() && grad_out.sizes() == input.sizes(), op,
              ": expected grad_out of the input's shape ", input.sizes(), ", but got ",
              grad_out.defined() ? grad_out.sizes() : at::IntArrayRef{});
  TORCH_CHECK(grad_out.device() == input.device(), op,
              ": expected all tensors to be on the same device, but grad_out is on ",
              grad_out.device(), " and input is on ", input.device());
  TORCH_CHECK(grad_out.scalar_type() == input.scalar_type(), op, ": grad_out has dtype ",
              grad_out.scalar_type(), " but input has dtype ", input.scalar_type());
  const auto& shape = b.fwd.shape;
  const auto want = stats_dtype(input.scalar_type());
  for (const auto& [name, stat] : {std::pair<const char*, const Tensor*>{"mean", &mean},
                                   std::pair<const char*, const Tensor*>{"rstd", &rstd}}) {
    TORCH_CHECK(stat->defined() && stat->numel() == shape.N * shape.groups, op, ": expected ",
                name, " of shape (N, G) = (", shape.N, ", ", shape.groups, "), but got ",
                stat->defined() ? stat->sizes() : at::IntArrayRef{});
    TORCH_CHECK(stat->device() == input.device(), op, ": ", name, " is on ", stat->device(),
                " but input is on ", input.device());
    TORCH_CHECK(stat->scalar_type() == want, op, ": expected ", name, " of dtype ", want,
                " but got ", stat->scalar_type());
  }
  b.grad_out = shape.order == MemoryOrder::NSC ? dense_for_format(grad_out, b.fwd.format) : grad_out.contiguous();
  b.mean = mean.contiguous();
  b.rstd = rstd.contiguous();
  return b;
}

namespace {
// An uninitialised output on `like`'s device: large CPU outputs from the output pool
// (cpu/output_pool.h), the rest from at::empty_strided.
Tensor empty_output_strided(at::IntArrayRef sizes, at::IntArrayRef strides, const Tensor& like, at::ScalarType dtype) {
  if (like.is_cpu()) return cpu::empty_output(sizes, strides, dtype);
  return at::empty_strided(sizes, strides, like.options().dtype(dtype).memory_format(c10::nullopt));
}
}  // namespace

Tensor empty_in_format(const Tensor& like, at::MemoryFormat format, at::ScalarType dtype) {
  // torch's strides for the format (at::empty(..., memory_format) computes the same), so
  // that size-1 dims get torch's strides too.
  const at::IntArrayRef sizes = like.sizes();
  std::vector<int64_t> strides;
  if (format == at::MemoryFormat::ChannelsLast) {
    strides = c10::get_channels_last_strides_2d(sizes);
  } else if (format == at::MemoryFormat::ChannelsLast3d) {
    strides = c10::get_channels_last_strides_3d(sizes);
  } else {
    strides = dense_contiguous_strides(sizes);
  }
  return empty_output_strided(sizes, strides, like, dtype);
}

ForwardResult allocate_forward_outputs(const ForwardProblem& p, const Tensor& input) {
  const auto stats_opts = input.options().dtype(stats_dtype(input.scalar_type()));
  return {empty_in_format(input, p.format, input.scalar_type()),
          at::empty({p.shape.N, p.shape.groups}, stats_opts), at::empty({p.shape.N, p.shape.groups}, stats_opts)};
}

bool allocate_backward_outputs(const ForwardProblem& p, const Tensor& input,
                               std::array<bool, 3> output_mask, BackwardResult& grads) {
  Tensor& grad_input = std::get<0>(grads);
  Tensor& grad_weight = std::get<1>(grads);
  Tensor& grad_bias = std::get<2>(grads);
  // grad_input as the torch built against makes it in native_group_norm_backward: from 2.14 with
  // the strides of the input it reads (p.input: the caller's tensor when dense in its format,
  // size-1 dims with any strides, else a dense copy) unless empty, else torch's strides for
  // the format.
  if (output_mask[0]) {
    grad_input = kGradInputKeepsInputStrides && p.input.numel() > 0
                     ? empty_output_strided(p.input.sizes(), p.input.strides(), p.input, input.scalar_type())
                     : empty_in_format(input, p.format, input.scalar_type());
  }
  if (output_mask[1] && p.weight.defined()) grad_weight = at::empty_like(p.weight);
  if (output_mask[2] && p.bias.defined()) grad_bias = at::empty_like(p.bias);
  if (!grad_input.defined() && !grad_weight.defined() && !grad_bias.defined()) return false;
  if (input.numel() == 0) {  // empty batch or channels: gradients are empty or zero
    if (grad_weight.defined()) grad_weight.zero_();
    if (grad_bias.defined()) grad_bias.zero_();
    return false;
  }
  return true;
}

}  // namespace groupnorm_ext
