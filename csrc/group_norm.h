// Public C++ declarations of the groupnorm_ext ops: what every backend implements, and
// the host-side checks and layout helpers every backend shares.
#pragma once

#include <array>
#include <optional>
#include <string_view>
#include <tuple>

#include <ATen/core/Tensor.h>

#include "activation.h"
#include "plan.h"

namespace groupnorm_ext {

using at::Tensor;
using OptionalTensor = std::optional<Tensor>;
using ForwardResult = std::tuple<Tensor, Tensor, Tensor>;   // out, mean, rstd
using BackwardResult = std::tuple<Tensor, Tensor, Tensor>;  // grad_input, grad_weight, grad_bias

// ---- backends --------------------------------------------------------------------
ForwardResult group_norm_forward_cpu(const Tensor& input, int64_t num_groups,
                                     const OptionalTensor& weight, const OptionalTensor& bias,
                                     double eps, std::string_view activation);
BackwardResult group_norm_backward_cpu(const Tensor& grad_out, const Tensor& input,
                                       const Tensor& mean, const Tensor& rstd,
                                       const OptionalTensor& weight, const OptionalTensor& bias,
                                       int64_t num_groups, std::string_view activation,
                                       std::array<bool, 3> output_mask);
#ifdef GROUPNORM_EXT_WITH_CUDA
ForwardResult group_norm_forward_cuda(const Tensor& input, int64_t num_groups,
                                      const OptionalTensor& weight, const OptionalTensor& bias,
                                      double eps, std::string_view activation);
BackwardResult group_norm_backward_cuda(const Tensor& grad_out, const Tensor& input,
                                        const Tensor& mean, const Tensor& rstd,
                                        const OptionalTensor& weight, const OptionalTensor& bias,
                                        int64_t num_groups, std::string_view activation,
                                        std::array<bool, 3> output_mask);
#endif

// ---- shared host-side checks and layout handling (common.cpp) ---------------------

// Everything a backend needs to know about a validated call.
struct ForwardProblem {
  GroupNormShape shape;
  Activation activation;
  // The outputs' (y, grad_input) memory format: torch's, input.suggest_memory_format().
  at::MemoryFormat format = at::MemoryFormat::Contiguous;
  Tensor input;   // dense in `shape.order` (the caller's tensor, or a copy for other strides)
  Tensor weight;  // undefined when absent
  Tensor bias;    // undefined when absent
};

// Validates a forward call (rank, C % G, num_groups, dtypes, devices, parameter sizes,
// activation) with messages that name the problem, and picks the memory order.
ForwardProblem check_forward(const char* op, const Tensor& input, int64_t num_groups,
                             const OptionalTensor& weight, const OptionalTensor& bias,
                             std::string_view activation);

// Validates a backward call: the forward checks plus grad_out / mean / rstd shapes.
// grad_out is returned dense in the same memory order as the input.
struct BackwardProblem {
  ForwardProblem fwd;
  Tensor grad_out;
  Tensor mean;  // (N, G), contiguous, statistics dtype
  Tensor rstd;
};
BackwardProblem check_backward(const char* op, const Tensor& grad_out, const Tensor& input,
                               const Tensor& mean, const Tensor& rstd,
                               const OptionalTensor& weight, const OptionalTensor& bias,
                               int64_t num_groups, std::string_view activation);

// Parses the schema's activation string; an unknown name is a clear error.
Activation parse_activation(const char* op, std::string_view name);

// Dtype of the saved statistics: float64 for float64 input, float32 otherwise.
at::ScalarType stats_dtype(at::ScalarType input_dtype);

// An uninitialised tensor with `like`'s sizes in memory format `format` (torch's strides for
// it, size-1 dims included).
Tensor empty_in_format(const Tensor& like, at::MemoryFormat format, at::ScalarType dtype);

// Uninitialised forward outputs: out in the problem's memory order and the input's
// dtype, mean and rstd shaped (N, G) in the statistics dtype.
ForwardResult allocate_forward_outputs(const ForwardProblem& p, const Tensor& input);

// Backward outputs as output_mask asks (undefined where not asked, or where the parameter
// is absent). Returns false when no kernel has to run: nothing was asked, or the input is
// empty (grad_weight / grad_bias are then zero-filled).
bool allocate_backward_outputs(const ForwardProblem& p, const Tensor& input,
                               std::array<bool, 3> output_mask, BackwardResult& grads);

}  // namespace groupnorm_ext
